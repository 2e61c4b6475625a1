"""The manager thread: its state, its start (``prepare``: the launcher chosen,
the zygote forked first under fork), its loop, the requests of other
threads, shutdown.

What the loop does in between is split by direction, as mixins of Manager
(the state stays the manager thread's; a call between them is a method
call as before): _dispatch sends (pending calls to workers, starting
workers), _outcomes receives (results, deaths, a broken pool), _timers acts
as time passes (deadlines, stranded calls), _handoff holds the two paths
callers' threads run themselves, _copier copies big bytes results in
threads of its own.

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

A worker whose head call runs long (or which cannot run at all: stopped by
SIGSTOP) while another idles gives back the calls queued behind that head:
the manager revokes them on the worker's claim word, which the worker checks
before each call, and sends them elsewhere (_timers' _unstrand, _lanes).
The long call itself keeps running.

The parent knows which calls each worker holds, so a dead worker loses only
its own calls: with ``on_crash="break"`` (the default, the standard library's
behaviour) the whole pool breaks; with ``on_crash="restart"`` only the call
that was running fails, the calls queued behind it go to other workers.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import _base
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import _fds
from ._copier import Copier
from ._dispatch import Dispatch
from ._errors import BROKEN_PREFIX
from ._handoff import HandOff
from ._lanes import Kill, Lane, State, Window
from ._launch import Launcher, ProcessLauncher
from ._outcomes import EXIT_STATUS_WAIT, Outcomes
from ._tasks import ChunkTask, Task
from ._timers import Timers
from ._waiter import READABLE, Waiter
from ._zygote import ZygoteLauncher

if TYPE_CHECKING:
    from ._executor import ProcessPoolExecutor

UP, DEAD = State.UP, State.DEAD

# Every manager of this process (the executor's interpreter-exit hook and
# the zygote's start, which parks the others, go through them).
managers: weakref.WeakSet = weakref.WeakSet()

# One fork pool at a time parks the other managers, forks its zygote and
# unparks them (see forking): two doing it at once unparked one manager twice
# (two threads on one manager's state). The threads waiting for it, by
# ident: park() does not wait for a manager whose thread, or whose hand-off's
# thread, is one of them (it could not reach its safe point: a deadlock).
_fork_lock = threading.Lock()
_fork_waiters: set[int] = set()


@contextmanager
def forking() -> Iterator[list[Manager]]:
    """Park every other manager of this process for the block (taking the
    fork lock), unpark them after; yields the list of those parked."""
    me = threading.get_ident()
    _fork_waiters.add(me)
    try:
        _fork_lock.acquire()
    finally:
        _fork_waiters.discard(me)
    parked: list[Manager] = []
    try:
        for m in list(managers):
            if m.pid == os.getpid() and m.park():
                parked.append(m)
        yield parked
    finally:
        try:
            for m in parked:
                m.unpark()
        finally:
            _fork_lock.release()


def prepare(executor: ProcessPoolExecutor) -> Manager:
    """A pool's manager, with its launcher, not started yet (the executor's
    lock held). Under fork, the first worker and the zygote are forked first,
    while no pyexec thread of this pool runs."""
    # Made before any fork: what it writes then costs no copy-on-write
    # fault afterwards, in the parent, while the first worker starts.
    mgr = Manager(executor)
    try:
        if executor._start_method == "fork":
            # One worker forked at once for the first call; more as the backlog
            # asks (forking all of them up front made startup 1.5x slower).
            # Other pools' manager threads are parked around the forks,
            # one pool at a time.
            with forking():
                launcher: Launcher = ZygoteLauncher(executor._config)
        else:
            launcher = ProcessLauncher(executor._mp_context, executor._config)
    except BaseException:
        mgr.close_fds()
        raise
    mgr.attach(launcher)
    return mgr


class Manager(Dispatch, Outcomes, Timers, HandOff):
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
        self.arena_size = executor._arena_size  # each worker's, per direction
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
        # Results whose big bytes the copier copies (see _copier): taken from
        # inflight, not settled yet; the manager finishes them when woken.
        self.copier = Copier(self.wake)
        self.copying = 0
        self.submitted = self.completed = self.failed = self.replaced = 0
        self.cancelled = 0  # calls dropped unrun (see _dispatch, _break)
        self.starting = self.started_workers = 0
        self.early_deaths = 0  # workers in a row dead before READY (see _worker_died)
        self.start_after = 0.0  # no worker is started before then (monotonic)
        init = executor._config.initializer
        self.initializer_name = "" if init is None else getattr(init, "__qualname__", repr(init))
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
        self.park_lock = threading.Lock()  # parking -> parked, or park() giving up
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

        Called under the fork lock (see forking). Nor when its thread, or
        the thread in its hand-off, waits for that lock (a done-callback or a
        signal handler starting a fork pool): it cannot reach its safe point.
        """
        t = self.thread
        if (
            t is threading.current_thread()
            or self.helper == threading.get_ident()  # see _handoff's no-wait rule
            or self.parking
            or self.parked
            or not t.is_alive()
            or self.launcher.thread_bound
        ):
            return False
        self.parking = True
        self.wake()
        while t.is_alive():
            if t.ident in _fork_waiters or (self.helper and self.helper in _fork_waiters):
                # It will take the fork lock after us: leave it running,
                # unless it has just reached its safe point.
                with self.park_lock:
                    if not self.parked:
                        self.parking = False
                        return False
                t.join()  # parked: its thread is ending
                break
            t.join(0.01)  # returns as soon as the thread ends
        _wait_thread_gone(t.native_id)
        return self.parked

    def unpark(self) -> None:
        """Start a new thread for a parked manager (once: a no-op otherwise)."""
        if not self.parked or self.thread.is_alive():
            return
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

    def counters(self) -> tuple[int, int, int, int, int, int, int]:
        """(submitted, completed, failed, running, workers alive, replaced,
        cancelled) as of now; racy by design (no lock), each one exact.

        Alive: the workers that take calls or still run some (one asked to
        exit is done once its calls are: its replacement may be starting).
        """
        workers = list(self.workers)
        # A chunk of a map counts its items (list() copies a deque in one C call).
        running = sum(
            t.count if t.__class__ is ChunkTask else 1 for w in workers for t in list(w.inflight)
        )
        alive = sum(1 for w in workers if w.state is UP or (w.state is not DEAD and w.inflight))
        return (
            self.submitted,
            self.completed,
            self.failed,
            running,
            alive,
            self.replaced,
            self.cancelled,
        )

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
                for native_id in self.copier.stop():  # no pyexec thread at the fork
                    _wait_thread_gone(native_id)
                with self.park_lock:  # against park() giving up meanwhile
                    if self.parking:
                        self.parked = True  # a safe point: run() keeps everything open
                        return
            for w in self.launcher.take_ready():
                self.starting -= 1
                self._add_worker(w)
            if self.launcher.failure is not None:
                failure, self.launcher.failure = self.launcher.failure, None
                self.starting -= 1
                self._break(
                    f"{BROKEN_PREFIX}: a new worker could not be started: {failure}", cause=failure
                )
            if self.handed_back:
                self._take_back()  # from an interrupted help (see _handoff)
            if self.copier.done:
                self._finish_copies()
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
            stranded = self._unstrand()
            if stranded is not None and (timeout is None or stranded < timeout):
                timeout = stranded
            if self.start_after:
                pause = self.start_after - time.monotonic()
                if pause <= 0:
                    self.start_after = 0.0
                    timeout = 0.0
                elif timeout is None or pause < timeout:
                    timeout = pause
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
        if self.copying:
            return False  # results the copier holds are settled first, even when broken
        live = any(w.state is not DEAD for w in self.workers) or self.starting
        if self.broken is not None:
            return not live
        return self.stop and not self.pending and not live

    # ---- the end --------------------------------------------------------------

    def _close(self) -> None:
        """Kill what is left, close every fd, reap the zygote."""
        for native_id in self.copier.stop():
            _wait_thread_gone(native_id)
        self._finish_copies()  # only after a failure of the manager: see _finished
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
