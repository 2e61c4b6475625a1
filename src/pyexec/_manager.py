"""The manager thread: its loop, dispatch, results, deaths, deadlines, shutdown.

Data flow::

    submit() --pickle--> pending deque --(manager thread)--> worker's call pipe
       |                 (cancel() still works here)          (window of a few calls)
       +--direct(), manager asleep: straight to an idle worker's call pipe (_handoff)
    Future <--settle-- unpickle <--decode-- worker's result pipe <-- worker runs call
       ^--help(), manager asleep: result() reads its own result (_handoff)

One manager thread per executor owns the dispatch state: the lanes (the
workers, what each holds in flight, their deadlines), the window, the
waiter, the launcher. It holds ``dispatch_lock`` whenever it is not asleep in
its wait (C, GIL released) on a wake pipe, every worker's result pipe and
sentinel, and, while a call pipe is full, that pipe. The only other threads
that touch that state are the hand-offs, under that lock, while the manager
sleeps (see _handoff, whose rule is stated there). Other threads only ask:
``wake``, ``request_stop``, ``request_signal``, ``request_terminate`` set a
field or queue an entry and write to the wake pipe; ``submitted`` is counted
under the executor's lock. The manager holds the executor only through a
weakref, whose callback wakes it, so a dropped executor shuts down as if
``shutdown()`` was called.

The parent knows which calls each worker holds, so a dead worker loses only
its own calls: with ``on_crash="break"`` (the default, the standard library's
behaviour) the whole pool breaks; with ``on_crash="restart"`` only the call
that was running fails, the calls queued behind it go to other workers.
"""

from __future__ import annotations

import marshal
import os
import pickle
import signal
import threading
import time
import weakref
from collections import deque
from concurrent.futures import _base
from concurrent.futures.process import _RemoteTraceback
from typing import TYPE_CHECKING, Any

from . import _fds
from . import _frames as frames
from ._errors import BrokenProcessPool, TaskTerminated, TaskTimeout, WorkerDied, describe_exit
from ._frames import FLAG_SHIFT, KIND_MASK, READ_CHUNK, ChannelError
from ._future import start_fast
from ._handoff import HandOff
from ._lanes import WINDOW_PAIR, Kill, Lane, State, Window
from ._launch import Launcher, LauncherGone
from ._tasks import MapJob, Task, drain_pending, settle_all
from ._waiter import READABLE, WRITABLE, Waiter

if TYPE_CHECKING:
    from ._executor import ProcessPoolExecutor

UP, EXITING, DEAD = State.UP, State.EXITING, State.DEAD
# How long the manager waits for a dead worker's exit status.
EXIT_STATUS_WAIT = 1.0
# How long a worker asked to exit may take before it is killed (seconds),
# counted from the moment its last call is done.
EXIT_GRACE = 5.0

BROKEN_PREFIX = (
    "A process in the process pool was terminated abruptly while the future was running or pending"
)

# Every manager of this process (the executor's interpreter-exit hook and
# the zygote's start, which parks the others, go through them).
managers: weakref.WeakSet = weakref.WeakSet()


class Manager(HandOff):
    """The manager thread's state. It never holds a strong ref to the executor."""

    def __init__(self, executor: ProcessPoolExecutor) -> None:
        """Everything but the launcher (see attach)."""
        self.pid = os.getpid()
        self.lock = executor._lock
        self.pending = executor._pending
        self.ids = executor._ids
        self.max_workers = executor._max_workers
        self.max_tasks = executor._max_tasks_per_child
        self.on_crash = executor._on_crash
        self.launcher: Launcher = None  # type: ignore[assignment]  # see attach
        self.executor_ref = weakref.ref(executor, lambda _r: self.request_stop())
        self.waiter: Any = Waiter()
        self.waiter_fd = self.waiter.fd  # -1 on the poll backend: help() does nothing
        if self.waiter_fd >= 0:
            _fds.own_fd(self.waiter_fd)  # not for the processes forked from here
        self.wake_r, self.wake_w = _fds.make_pipe(True, True)
        _fds.own_fd(self.wake_r)
        _fds.own_fd(self.wake_w)
        self.waiter.add(self.wake_r, READABLE)
        self.sleeping = False
        self.sleep_until: float | None = None  # when a sleeping manager wakes anyway
        self.generation = _fds.fork_generation
        self.wake_sent = False
        self.closed = False
        self.stop = False
        self.signal_all: int | None = None
        self.terminate_requests: deque[Task] = deque()
        self.workers: list[Lane] = []
        self.by_fd: dict[int, Lane] = {}
        self.broken: str | None = None
        self.window = Window()  # how many calls each worker may hold
        self.submitted = self.completed = self.failed = self.replaced = 0
        self.starting = self.started_workers = 0
        # Workers to keep whatever the backlog: a worker killed or crashed is
        # replaced at once (the pool stays whole), not when work next asks.
        self.keep = 0
        self._writers: set[int] = set()  # call fds watched while their pipe is full
        self.init_handoff()  # masked, help_poll, spin: see _handoff
        # Held by the manager whenever it is not waiting. submit() takes it,
        # without blocking, only while the manager sleeps, to hand a call to an
        # idle worker itself: one thread hop less on the round trip.
        self.dispatch_lock = threading.Lock()
        self.wake_lock = threading.Lock()
        self.parking = self.parked = False  # see park()
        self.ended = threading.Event()  # set when the manager has closed everything
        self.thread = threading.Thread(target=self.run, name="pyexec-manager", daemon=True)

    def attach(self, launcher: Launcher) -> None:
        """Take the launcher, once its processes are forked."""
        self.launcher = launcher
        if launcher.fd >= 0:
            self.waiter.add(launcher.fd, READABLE)
        # Workers forked unasked at the start (fork), already on their way.
        self.starting = self.started_workers = launcher.initial
        managers.add(self)

    def close_fds(self) -> None:
        """Close the fds __init__ opened (at the end, or when no launcher came)."""
        with self.wake_lock:
            self.closed = True
            _fds.close_fd(self.wake_r)
            _fds.close_fd(self.wake_w)
        if self.waiter_fd >= 0:
            _fds.disown_fd(self.waiter_fd)
        self.waiter = None  # its fd is closed as it is freed

    # ---- called from other threads ----------------------------------------

    def wake(self) -> None:
        """Wake the manager, from any thread.

        wake_lock keeps the write off a wake fd that _close is closing (its
        number could be reused). It is taken last, never held while taking
        another lock: callers may hold an executor's lock.
        """
        if self.wake_sent or self.closed or self.pid != os.getpid():
            return
        with self.wake_lock:
            if self.closed:
                return
            self.wake_sent = True
            try:
                os.write(self.wake_w, b"\0")
            except OSError:
                pass

    def park(self) -> bool:
        """Stop the manager's thread at a safe point, keeping all its state.

        Another pool is about to fork its zygote: with no pyexec thread alive,
        that fork is safe (and Python 3.12 has nothing to warn about). False
        when the thread has ended, or is the calling thread (a done-callback
        starting a new pool: that fork cannot avoid this thread), or when the
        workers die with it (spawn: the fork then happens beside it, as the
        standard library's would).
        """
        t = self.thread
        if t is threading.current_thread() or not t.is_alive() or self.launcher.thread_bound:
            return False
        self.parking = True
        self.wake()
        t.join()
        _wait_thread_gone(t.native_id)
        return self.parked

    def unpark(self) -> None:
        """Start a new thread for a parked manager."""
        self.parking = self.parked = False
        self.thread = threading.Thread(target=self.run, name="pyexec-manager", daemon=True)
        self.thread.start()

    def join(self) -> None:
        """Wait until the manager has really ended (not merely parked)."""
        self.ended.wait()
        self.thread.join()

    def request_stop(self) -> None:
        """Shut down once the pending work is done."""
        if self.pid != os.getpid():
            return  # a forked child's copy: the wake pipe is not ours
        self.stop = True
        self.wake()

    def request_signal(self, sig: int) -> None:
        """Send sig to every worker (terminate_workers, kill_workers)."""
        self.signal_all = sig
        self.wake()

    def request_terminate(self, task: Task) -> None:
        """Kill the worker running task (from terminate_task)."""
        self.terminate_requests.append(task)
        self.wake()

    def counters(self) -> tuple[int, int, int, int, int, int]:
        """(submitted, completed, failed, running, workers alive, replaced) as of
        now; racy by design (no lock), each one exact."""
        running = sum(len(w.inflight) for w in list(self.workers))
        alive = sum(1 for w in list(self.workers) if w.state is not DEAD)
        return self.submitted, self.completed, self.failed, running, alive, self.replaced

    # ---- the loop ---------------------------------------------------------

    def run(self) -> None:
        """The manager thread: wait, read, settle, handle deaths, dispatch."""
        self.dispatch_lock.acquire()
        closing = True
        try:
            self._loop()
            closing = not self.parked
        except BaseException as exc:  # a bug in pyexec: break the pool loudly
            _base.LOGGER.critical("pyexec manager thread failed", exc_info=True)
            self._break(f"pyexec's manager thread failed: {exc!r}", cause=exc)
            for w in list(self.workers):
                self.launcher.kill(w)
        finally:
            if closing:
                self._close()
            self.dispatch_lock.release()
            if closing:
                self.ended.set()

    def _loop(self) -> None:
        waiter = self.waiter
        by_fd = self.by_fd
        while True:
            if self.parking:
                self.parked = True  # a safe point: run() keeps everything open
                return
            for w in self.launcher.take_ready():
                self.starting -= 1
                self._add_worker(w)
            self._control()
            if self.broken is None:
                self._adjust_workers()
                self._dispatch()
                if self._no_more_workers():
                    self.launcher.quit()  # the zygote exits beside the last workers
            if self._finished():
                return
            # "Sleeping" is said before the last look at pending: a submit that
            # appends after that look sees it and wakes the manager; one that
            # appended before is seen by the look. Said after the look, a submit
            # could append in between, see the manager awake and not wake it,
            # and its call waited for the next event (a deadline, or forever).
            self.sleeping = True
            if self.masked:
                self.rearm_masked()
            timeout = self._deadlines()
            if self.pending and self.broken is None and self._has_room():
                timeout = 0.0
            self.sleep_until = None if timeout is None else time.monotonic() + timeout
            self.dispatch_lock.release()
            try:
                events = waiter.wait(timeout)
            finally:
                self.dispatch_lock.acquire()
                self.sleeping = False
            for fd, _ev in events:
                if fd == self.wake_r:
                    self._drain_wake()
                    continue
                if fd == self.launcher.fd:
                    if not self.launcher.receive():
                        self.waiter.remove(fd)
                        if not self.launcher.quitting:  # else it exited as told
                            self.starting = 0
                            self._break(
                                f"{BROKEN_PREFIX}: pyexec's fork zygote "
                                f"(pid {self.launcher.pid}) died"
                            )
                    continue
                w = by_fd.get(fd)
                if w is None or w.state is DEAD:
                    continue
                if fd == w.result_fd:
                    self._read_results(w)
                elif fd == w.sentinel:
                    self._worker_died(w)
                elif fd == w.call_fd:
                    self._flush(w)

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self.wake_sent = False

    def _control(self) -> None:
        """Act on what other threads asked for."""
        sig = self.signal_all
        if sig is not None:
            self.signal_all = None
            self._break(
                "the pool's workers were stopped by terminate_workers() or kill_workers()",
                cancelled=True,
            )
            for w in self.workers:
                if w.state is not DEAD:
                    self._signal(w, sig)
        while self.terminate_requests:
            task = self.terminate_requests.popleft()
            task.kill = Kill.TERMINATE
        if not self.stop and self.executor_ref() is None:
            self.stop = True

    def _no_more_workers(self) -> bool:
        """Stopping, nothing left to run or to start: no worker is needed again."""
        return (
            self.stop
            and not self.pending
            and not self.starting
            and all(w.state is not UP and not w.inflight for w in self.workers)
        )

    def _finished(self) -> bool:
        live = any(w.state is not DEAD for w in self.workers) or self.starting
        if self.broken is not None:
            return not live
        return self.stop and not self.pending and not live

    # ---- workers ------------------------------------------------------------

    def _adjust_workers(self) -> None:
        """Start workers while there is more work than live workers can take."""
        alive = sum(1 for w in self.workers if w.state is UP) + self.starting
        inflight = sum(len(w.inflight) for w in self.workers)
        want = max(self.keep, min(self.max_workers, self._backlog(self.max_workers) + inflight))
        if self.stop and not self.pending:
            want = 0
        while alive < want:
            if self.started_workers >= self.max_workers:
                self.replaced += 1
            self.started_workers += 1
            try:
                w = self.launcher.start()
            except LauncherGone as exc:
                self._break(f"{BROKEN_PREFIX}: {exc.strerror}", cause=exc.__cause__)
                return
            if w is None:
                self.starting += 1  # on its way: see take_ready
            else:
                self._add_worker(w)
            alive += 1

    def _add_worker(self, w: Lane) -> None:
        w.quota = self.max_tasks
        self.workers.append(w)
        self.by_fd[w.result_fd] = w
        self.by_fd[w.sentinel] = w
        self.by_fd[w.call_fd] = w
        self.waiter.add(w.result_fd, READABLE)
        self.waiter.add(w.sentinel, READABLE)
        if self.broken is not None:
            self._signal(w, signal.SIGKILL)

    def _signal(self, w: Lane, sig: int) -> None:
        self.launcher.kill(w, sig)

    def _backlog(self, limit: int) -> int:
        """Calls waiting in pending, counted up to limit (map items included)."""
        pending = self.pending
        n = len(pending)
        if n >= limit:
            return limit  # an entry is at least one call (an emptied map job is rare)
        # By index, not by iterator: submit appends from other threads, which an
        # iterator reports as an error (and a lock here would stall submit).
        # Only this thread pops, but for shutdown's cancel: an entry gone
        # meanwhile ends the count early, which this estimate tolerates.
        count = 0
        try:
            for i in range(n):
                entry = pending[i]
                count += len(entry.items) if entry.__class__ is MapJob else 1
                if count >= limit:
                    return limit
        except IndexError:
            pass
        return count

    def _room(self, w: Lane, now: float) -> int:
        """How many more calls w may hold. None when it is over its memory limit
        (it drains its window and exits), and none behind a head call that has
        run longer than WINDOW_PAIR: the window was sized for short calls, and
        this one may be long (a worker on its way, or one that frees up, takes
        them)."""
        inflight = w.inflight
        if w.recycle or (inflight and now - w.mark > WINDOW_PAIR):
            return 0
        return self.window.size - len(inflight)

    def _has_room(self) -> bool:
        now = time.monotonic()
        return any(w.state is UP and self._room(w, now) > 0 for w in self.workers)

    def _dispatch(self) -> None:
        """Hand pending calls to workers with room, many frames per write."""
        pending = self.pending
        stopping = self.stop
        now = time.monotonic()
        # Least loaded first: an idle worker takes the next call before a busy
        # one queues it behind a call that may be long.
        workers = self.workers
        share = 0
        if pending:
            if len(workers) > 1:
                workers = sorted(workers, key=lambda w: len(w.inflight))
            # Spread a short burst evenly over the workers.
            ups = sum(1 for x in workers if x.state is UP) or 1
            share = -(-self._backlog(self.window.size * ups) // ups)
        for w in workers:
            if w.state is not UP:
                continue
            inflight = w.inflight
            room = self._room(w, now)
            if pending and room > 0:
                room = min(room, share)
                if w.quota is not None:
                    room = min(room, w.quota)
                idle = not inflight
                push = w.writer.push
                KIND_CALL = frames.KIND_CALL
                sent = 0
                while sent < room:
                    try:
                        task = pending.popleft()
                    except IndexError:
                        break
                    if task.__class__ is MapJob:
                        sent += self._push_batch(w, task, room - sent)
                    elif task.job is None:
                        # A run of submitted calls, marked running together.
                        run = [task]
                        while (
                            len(run) < room - sent
                            and pending
                            and pending[0].__class__ is Task
                            and pending[0].job is None
                        ):
                            run.append(pending.popleft())
                        for task in start_fast(run):  # cancelled ones are left out
                            report = frames.FLAG_STARTED if task.timeout is not None else 0
                            push(KIND_CALL, task.tid, task.payload, report)
                            inflight.append(task)
                            sent += 1
                    elif task.start():  # a map item sent again after a restart
                        sent += self._push_batch(w, task.job, room - sent, [task])
                if sent:
                    if idle:
                        w.mark = now
                    if w.quota is not None:
                        w.quota -= sent
                    self._flush(w)
            if w.state is UP and (
                w.quota == 0 or w.recycle or (stopping and not pending and not inflight)
            ):
                self._ask_exit(w, now)

    def _push_batch(self, w: Lane, job: MapJob, room: int, batch: list | None = None) -> int:
        """Send up to room items of a map in one BATCH frame (job was popped from pending).

        batch: items already taken (requeued ones); the rest come from the job.
        """
        pending = self.pending
        batch = batch or []
        if batch:  # requeued items of this map come first, in order
            while len(batch) < room and pending and getattr(pending[0], "job", None) is job:
                batch.append(pending.popleft())
        else:
            with self.lock:
                if job.cancelled:
                    job.items.clear()
                else:
                    batch = job.take(room, self.ids)
                if job.items:
                    pending.appendleft(job)  # the rest goes first next time
                else:
                    job.queued = False
        if not batch:
            return 0
        for task in batch:
            task.started = True
        # Each item's arguments are pickled on their own, so one that cannot
        # be pickled here, or unpickled in the worker, fails alone.
        dumps, proto = pickle.dumps, pickle.HIGHEST_PROTOCOL
        try:
            fn_pickle = dumps(job.fn, proto)
        except BaseException as exc:
            for task in batch:
                self.failed += 1
                task.settle(exc=exc)
            return 0
        good, pickles = [], []
        for task in batch:
            try:
                pickles.append(dumps(task.args, proto))
            except BaseException as exc:
                self.failed += 1
                task.settle(exc=exc)
            else:
                good.append(task)
        if not good:
            return 0
        batch = good
        payload = dumps(([t.tid for t in batch], fn_pickle, pickles, job.star), proto)
        # Held-back results die with a worker: allow it only where losing one
        # changes nothing (a crash breaks the pool; no deadline to enforce).
        if job.timeout is not None:
            flags = frames.FLAG_STARTED
        else:
            flags = frames.FLAG_HOLD if self.on_crash == "break" else 0
        w.writer.push(frames.KIND_BATCH, batch[0].tid, payload, flags)
        w.inflight.extend(batch)
        return len(batch)

    def _ask_exit(self, w: Lane, now: float) -> None:
        """Queue the exit frame: the worker finishes its window, acks and exits."""
        w.state = EXITING
        w.exit_at = now
        w.writer.push(frames.KIND_EXIT, 0)
        self._flush(w)

    def _flush(self, w: Lane) -> None:
        try:
            done = w.writer.flush()
        except OSError:
            return  # the worker is gone: its sentinel and result pipe tell the rest
        watching = w.call_fd in self._writers
        if not done and not watching:
            self.waiter.add(w.call_fd, WRITABLE)
            self._writers.add(w.call_fd)
        elif done and watching:
            self.waiter.remove(w.call_fd)
            self._writers.discard(w.call_fd)

    # ---- results ------------------------------------------------------------

    def _read_results(self, w: Lane) -> bool:
        """Read and settle what the worker sent. False at end of file."""
        while True:
            try:
                n = self._read_once(w)
            except ChannelError as exc:
                self._protocol_error(w, str(exc))
                return False
            if n == 0:
                self._worker_died(w)
                return False
            if n < READ_CHUNK:
                # Drained (a short read), or would block: the waiter reports
                # the rest. One syscall less per wake: each one hands the GIL
                # away, and getting it back from a busy submitter costs up to
                # the interpreter's switch interval.
                return True

    def _read_once(self, w: Lane) -> int:
        """One read of w's result pipe, decoded and settled: what the read
        returned (0 at end of file, -1 when it would block). A malformed
        stream raises ChannelError, once the calls before it are settled."""
        settled: list = []
        try:
            n, meta, view = w.reader.read_frames(w.result_fd)
            self._decode(w, settled, meta, view)
        finally:
            if settled:
                # Futures are settled with no lock held: callbacks run here.
                self.dispatch_lock.release()
                try:
                    settle_all(settled)
                finally:
                    self.dispatch_lock.acquire()
        return n

    def _decode(self, w: Lane, out: list, meta: tuple[int, ...], view: Any) -> None:
        """Unpickle every complete frame now, those of (meta, view) that a read
        took first (see Decoder.read_frames), appending (task, value,
        exception) to out, to settle later outside any loop state. What was
        decoded before a malformed frame (ChannelError) is in out all the same."""
        inflight = w.inflight
        loads, marshal_loads = pickle.loads, marshal.loads
        MASK, SHIFT = KIND_MASK, FLAG_SHIFT
        MARSHAL = frames.FLAG_MARSHAL << SHIFT
        KIND_RESULT, KIND_ERROR = frames.KIND_RESULT, frames.KIND_ERROR
        KIND_STARTED, FLAG_RECYCLE = frames.KIND_STARTED, frames.FLAG_RECYCLE
        k = failed = 0
        try:
            each = frames.Decoder.each
            while meta:
                for word, tid, off, size in each(meta):
                    kind = word & MASK
                    buf = view[off : off + size]
                    if kind == KIND_RESULT or kind == KIND_ERROR:
                        if not inflight or inflight[0].tid != tid:
                            raise ChannelError(0, f"result for call {tid}, which it does not hold")
                        task = inflight.popleft()
                        k += 1
                        try:
                            obj = marshal_loads(buf) if word & MARSHAL else loads(buf)
                        except BaseException as err:
                            what = "result" if kind == KIND_RESULT else "exception"
                            exc = pickle.UnpicklingError(
                                f"the {what} of call {tid} could not be unpickled: {err!r}"
                            )
                            exc.__cause__ = err
                            out.append((task, None, exc))
                            failed += 1
                        else:
                            if kind == KIND_RESULT:
                                out.append((task, obj, None))
                            else:
                                exc, tb = obj
                                exc.__cause__ = _RemoteTraceback(f'\n"""\n{tb}"""')
                                out.append((task, None, exc))
                                failed += 1
                        task.payload = None
                        if word >> SHIFT & FLAG_RECYCLE:
                            w.recycle = True
                    elif kind == KIND_STARTED:
                        if inflight and inflight[0].tid == tid:
                            inflight[0].t0 = time.monotonic()
                    elif kind == frames.KIND_READY:
                        w.mark = time.monotonic()  # the head call starts now
                    elif kind == frames.KIND_EXIT_ACK:
                        w.acked = True
                    elif kind == frames.KIND_FATAL:
                        w.fatal = str(loads(buf))
                    else:
                        raise ChannelError(0, f"unexpected frame kind {kind} from worker")
                if w.reader.drained(meta):
                    break
                meta, view = w.reader.take()  # more, or the malformed one's error
        finally:
            self.completed += k - failed
            self.failed += failed
        if k:
            now = time.monotonic()
            if not inflight:
                w.exit_at = now
            self.window.observe((now - w.mark) / k, bool(inflight))
            w.mark = now

    def _protocol_error(self, w: Lane, why: str) -> None:
        """A malformed stream: the worker counts as dead."""
        w.fatal = f"it sent a malformed frame ({why})"
        self._signal(w, signal.SIGKILL)

    # ---- deaths ---------------------------------------------------------------

    def _worker_died(self, w: Lane) -> None:
        """The worker's sentinel fired or its result pipe ended: settle its calls."""
        if w.state is DEAD:
            return
        if w.fatal is None:
            try:
                while self._read_once(w) > 0:  # what it wrote before dying
                    pass
            except ChannelError as exc:
                w.fatal = f"it sent a malformed frame ({exc})"
            except OSError:
                pass
            if w.reader.buffered and w.fatal is None:
                w.fatal = "it stopped in the middle of a frame"
        exitcode = self.launcher.exitcode(w, EXIT_STATUS_WAIT)
        if exitcode is None:
            self.launcher.kill(w)
            exitcode = self.launcher.exitcode(w, EXIT_STATUS_WAIT)
        self._forget(w)
        graceful = w.acked and not w.inflight and exitcode == 0
        if graceful or self.broken is not None:
            self._fail_all(w.inflight, self.broken or "")
            return
        if w.state is EXITING and not w.inflight and w.fatal is None:
            return  # asked to exit, had nothing: however it ended, nothing is lost
        how = describe_exit(exitcode)
        reason = w.kill_reason
        up = sum(1 for x in self.workers if x.state is UP) + self.starting + 1  # w too
        self.keep = min(self.max_workers, max(self.keep, up))
        if reason is Kill.TIMEOUT or reason is Kill.TERMINATE:
            if not w.inflight or w.inflight[0] is not w.kill_target:
                self._requeue(w.inflight)  # its call finished just before the kill
                return
            head = w.inflight.popleft()
            if reason is Kill.TIMEOUT:
                exc: BaseException = TaskTimeout(
                    f"call {head.tid} ran past its deadline of {head.timeout} s; "
                    f"its worker (pid {w.pid}) was killed and replaced"
                )
            else:
                exc = TaskTerminated(
                    f"call {head.tid} was stopped by terminate_task(); "
                    f"its worker (pid {w.pid}) was killed and replaced"
                )
            self.failed += 1
            self._requeue(w.inflight)
            head.settle(exc=exc)
            return
        detail = f"worker pid {w.pid} died with {how}"
        if w.fatal:
            detail = f"worker pid {w.pid} failed: {w.fatal}; it ended with {how}"
        if self.on_crash == "restart" and not (w.fatal and "initializer" in w.fatal):
            if w.inflight:
                head = w.inflight.popleft()
                self.failed += 1
                self._requeue(w.inflight)
                head.settle(
                    exc=WorkerDied(
                        f"{detail} while running call {head.tid}; a new worker takes its place",
                        w.pid,
                        exitcode,
                    ),
                )
            return
        msg = f"{BROKEN_PREFIX}: {detail}."
        self._break(msg, lost=w.inflight)

    def _requeue(self, tasks: deque) -> None:
        """Calls a dead worker held but had not started go first in line again."""
        for task in tasks:
            task.t0 = 0.0
        self.pending.extendleft(reversed(tasks))
        tasks.clear()

    def _forget(self, w: Lane) -> None:
        w.state = DEAD
        self.masked.discard(w)
        for fd in (w.result_fd, w.sentinel, w.call_fd):
            self.by_fd.pop(fd, None)
        self.waiter.remove(w.result_fd)
        self.waiter.remove(w.sentinel)
        if w.call_fd in self._writers:
            self.waiter.remove(w.call_fd)
            self._writers.discard(w.call_fd)
        _fds.close_fd(w.call_fd)
        _fds.close_fd(w.result_fd)
        self.launcher.release(w)
        self.workers.remove(w)

    def _break(
        self,
        msg: str,
        cause: BaseException | None = None,
        cancelled: bool = False,
        lost: deque | None = None,
    ) -> None:
        """The pool is broken: every pending and running call fails, workers stop.

        lost: the calls of a worker already forgotten (the one that died).
        """
        if self.broken is not None:
            return
        self.broken = msg
        executor = self.executor_ref()
        if executor is not None:
            with executor._lock:
                executor._broken = msg
            del executor
        doomed = list(lost or ())
        if lost:
            lost.clear()
        doomed += drain_pending(self.pending, self.lock, self.ids)
        for w in self.workers:
            doomed.extend(w.inflight)
            w.inflight.clear()
        now = time.monotonic()
        for w in self.workers:
            if w.state is not DEAD:
                w.state = EXITING  # killed outright if SIGTERM is not enough
                w.exit_at = now
                self._signal(w, signal.SIGTERM)
        for task in doomed:
            if cancelled and task.cancel():
                continue
            self.failed += 1
            err = BrokenProcessPool(msg)
            err.__cause__ = cause
            task.settle(exc=err)

    def _fail_all(self, tasks: deque, msg: str) -> None:
        for task in tasks:
            self.failed += 1
            task.settle(exc=BrokenProcessPool(msg or BROKEN_PREFIX))
        tasks.clear()

    # ---- deadlines ------------------------------------------------------------

    def _deadlines(self) -> float | None:
        """Kill every worker whose deadline has passed; return the seconds until
        the next deadline (None: there is none).

        A worker's deadline: its head call's (when the call said it started,
        plus its timeout), now for a head call terminate_task() asked to stop,
        or, for a worker asked to exit that holds nothing, EXIT_GRACE after
        its last call was done. A worker already killed has none.
        """
        best = None
        now = time.monotonic()
        for w in self.workers:
            if w.state is DEAD or w.kill_reason is not None:
                continue
            head = None
            if w.inflight:
                head = w.inflight[0]
                if head.kill is not None:
                    reason, due = head.kill, now
                elif head.t0:
                    reason, due = Kill.TIMEOUT, head.t0 + head.timeout
                else:
                    continue
            elif w.state is EXITING:
                reason, due = Kill.EXIT_GRACE, w.exit_at + EXIT_GRACE
            else:
                continue
            if now >= due:
                w.kill_reason = reason
                w.kill_target = head
                self._signal(w, signal.SIGKILL)
            elif best is None or due < best:
                best = due
        return None if best is None else best - now

    # ---- the end --------------------------------------------------------------

    def _close(self) -> None:
        """Kill what is left, close every fd, reap the zygote."""
        for w in list(self.workers):
            if w.state is not DEAD:
                self.launcher.kill(w)
                self.launcher.exitcode(w, EXIT_STATUS_WAIT)  # reaps it
                self._fail_all(w.inflight, self.broken or "")
                self._forget(w)
        self.close_fds()
        self.launcher.close()


def _wait_thread_gone(native_id: int | None, limit: float = 0.1) -> None:
    """Wait (briefly) until the OS has reaped a joined thread.

    Before 3.13, join() returns when the thread's Python state is done, a
    moment before the OS thread exits; CPython counts OS threads when it
    decides whether fork() must warn. Linux shows them in /proc/self/task.
    """
    path = f"/proc/self/task/{native_id}"
    deadline = time.monotonic() + limit
    while native_id is not None and os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.0001)
