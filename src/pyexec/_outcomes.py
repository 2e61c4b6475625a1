"""Outcomes: what comes back from the workers, and what their ends mean.

The manager's side that receives: read and decode result frames, settle
futures (outside dispatch_lock), notice a worker's death (a kill by
_timers' deadlines included) and fail, requeue or break accordingly, and
break the pool. A mixin of Manager: these methods run in the
manager thread (``_decode`` and ``_protocol_error`` also in a hand-off, under
dispatch_lock, see _handoff). They write the lanes' ``inflight`` (pop),
``state`` (to DEAD; to EXITING when the pool breaks), ``mark``, ``ready``,
``exit_at``, ``recycle``, ``acked``, ``fatal`` and ``stalled``;
``completed``, ``failed``, ``cancelled``, ``keep``, ``early_deaths``,
``start_after``, ``broken``, ``workers`` and ``by_fd`` (a dead lane leaves
them), the window, and ``pending`` (requeued calls go first). A result frame
flagged OOB is decoded by its lane's channel (_payloads: big buffers in shared
memory); one with big bytes to copy out is left to the copier threads
(``copying`` counts them) and finished here when they are done
(_finish_copies); a dead lane's channel is closed with its fds (held views
stay valid).
"""

from __future__ import annotations

import marshal
import pickle
import signal
import threading
import time
from collections import deque
from concurrent.futures.process import _RemoteTraceback
from typing import Any

from . import _fds
from . import _frames as frames
from ._errors import (
    BROKEN_PREFIX,
    BrokenProcessPool,
    CallUnpicklingError,
    TaskTerminated,
    TaskTimeout,
    WorkerDied,
    describe_exit,
)
from ._frames import FLAG_SHIFT, KIND_MASK, READ_CHUNK, ChannelError
from ._lanes import Kill, Lane, State
from ._tasks import drain_pending, settle_all

UP, EXITING, DEAD = State.UP, State.EXITING, State.DEAD
# A result with at least this many bytes to copy out of shared memory (big
# exact bytes) is copied by the copier thread, not the manager (see _copier).
COPY_APART = 1 << 20
_LATER = object()  # _decode's value of a result left to the copier
# How long the manager waits for a dead worker's exit status.
EXIT_STATUS_WAIT = 1.0
# on_crash="restart": workers in a row that may die before they are ready (the
# initializer, or the worker's start, ended them) before the pool breaks, and
# the pause before the first replacement (doubled after each such death).
EARLY_DEATHS_MAX = 4
EARLY_DEATH_PAUSE = 0.05


def _unpickling_error(kind: int, tid: int, err: BaseException) -> CallUnpicklingError:
    what = "result" if kind == frames.KIND_RESULT else "exception"
    exc = CallUnpicklingError(f"the {what} of call {tid} could not be unpickled: {err!r}")
    exc.__cause__ = err
    return exc


def from_signal_handler(exc: BaseException) -> bool:
    """True when exc (not an Exception) was raised by this process's own signal
    handler, which ran in the main thread while it unpickled, rather than by
    the pickle (a hostile __reduce__ raising SystemExit fails only its call).

    Handlers run in the main thread alone; there, exc comes from one if its
    traceback passes through a handler installed now, or if it is the
    KeyboardInterrupt of the default SIGINT handler (a C function, no frame).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    codes = set()
    for sig in signal.valid_signals():
        try:
            handler = signal.getsignal(sig)
        except (OSError, ValueError):
            continue
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if code is not None:
            codes.add(code)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return (
        isinstance(exc, KeyboardInterrupt)
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )


class Outcomes:
    """Manager methods that receive results and handle ends (see the module's docstring)."""

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
        OOB = frames.FLAG_OOB << SHIFT
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
                        task = inflight[0]
                        # The outcome is appended before the call leaves
                        # inflight, and nothing between can be interrupted
                        # but after each: see _handoff's give_back.
                        try:
                            if word & OOB:  # big buffers in shared memory (_payloads)
                                load = w.chan.prepare(buf, bool(word & MARSHAL))
                                if (
                                    kind == KIND_RESULT
                                    and load.copies
                                    and self.helper != threading.get_ident()  # help() copies itself
                                    and load.copy_bytes >= COPY_APART
                                    and self._copy_apart(task, load)
                                ):
                                    obj = _LATER  # see _finish_copies
                                else:
                                    load.copy()
                                    obj = load.finish()
                            else:
                                obj = marshal_loads(buf) if word & MARSHAL else loads(buf)
                        except BaseException as err:
                            if not isinstance(err, Exception) and from_signal_handler(err):
                                raise  # the frame is given back (see help)
                            k += 1
                            failed += 1
                            out.append((task, None, _unpickling_error(kind, tid, err)))
                        else:
                            k += 1
                            if kind == KIND_RESULT:
                                if obj is not _LATER:
                                    out.append((task, obj, None))
                            else:
                                exc, tb = obj
                                exc.__cause__ = _RemoteTraceback(f'\n"""\n{tb}"""')
                                failed += 1
                                out.append((task, None, exc))
                        inflight.popleft()
                        task.payload = task.oob = None
                        if word >> SHIFT & FLAG_RECYCLE:
                            w.recycle = True
                    elif kind == KIND_STARTED:
                        if inflight and inflight[0].tid == tid:
                            inflight[0].t0 = time.monotonic()
                    elif kind == frames.KIND_READY:
                        w.mark = time.monotonic()  # the head call starts now
                        w.ready = True
                        w.stalled = False
                        self.early_deaths = 0
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
            w.stalled = False  # it answers: see _lanes
            if not inflight:
                w.exit_at = now
            self.window.observe((now - w.mark) / k, bool(inflight))
            w.mark = now

    def _copy_apart(self, task: Any, load: Any) -> bool:
        """Leave load's copies to the copier (False when it cannot take them)."""
        load.keep()
        if not self.copier.put(task, load):
            return False
        self.copying += 1
        return True

    def _finish_copies(self) -> None:
        """Unpickle and settle the results the copier has copied (see _copier);
        counted as completed when they arrived, moved to failed if that fails."""
        settled: list = []
        done = self.copier.done
        try:
            while done:
                task, load = done.popleft()
                self.copying -= 1
                try:
                    settled.append((task, load.finish(), None))
                except Exception as err:
                    self.completed -= 1
                    self.failed += 1
                    exc = _unpickling_error(frames.KIND_RESULT, task.tid, err)
                    settled.append((task, None, exc))
        finally:
            if settled:
                self.dispatch_lock.release()  # callbacks run here, as in _read_once
                try:
                    settle_all(settled)
                finally:
                    self.dispatch_lock.acquire()

    def _take_back(self) -> None:
        """What an interrupted hand-off gave back (see _handoff's give_back):
        read the lanes whose frames it gave back, settle what it had decoded."""
        self.handed_back = False
        reread, self.reread = self.reread, set()
        for w in reread:
            if w.state is not DEAD:
                self._read_results(w)
        orphans = self.orphans
        if orphans:
            batch = []
            while orphans:
                batch.append(orphans.popleft())
            self.dispatch_lock.release()
            try:
                settle_all(batch)
            finally:
                self.dispatch_lock.acquire()

    def _protocol_error(self, w: Lane, why: str) -> None:
        """A malformed stream: the worker counts as dead."""
        w.fatal = f"it sent a malformed frame ({why})"
        self._signal(w, signal.SIGKILL)

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
                # The call it was killed for finished just before the kill: the
                # next one may have started, and must not run again elsewhere.
                self._settle_lost(
                    w,
                    f"worker pid {w.pid} was killed for call {w.kill_target.tid}, "
                    f"which finished just before",
                    exitcode,
                )
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
            if w.ready:
                self._settle_lost(w, detail, exitcode)
                return
            # Dead before it was ready: it ran none of its calls. A worker that
            # cannot start (its initializer exits it, say) is replaced after a
            # growing pause, and after EARLY_DEATHS_MAX in a row the pool breaks.
            self.early_deaths += 1
            if self.early_deaths < EARLY_DEATHS_MAX:
                self._requeue(w.inflight)
                pause = EARLY_DEATH_PAUSE * 2 ** (self.early_deaths - 1)
                self.start_after = time.monotonic() + pause
                return
            why = f"; its initializer is {self.initializer_name}" if self.initializer_name else ""
            detail = (
                f"{self.early_deaths} workers in a row died before they were ready{why}; "
                f"the last: {detail}"
            )
        msg = f"{BROKEN_PREFIX}: {detail}."
        self._break(msg, lost=w.inflight)

    def _settle_lost(self, w: Lane, detail: str, exitcode: int | None) -> None:
        """w died holding calls: the head fails with WorkerDied, unless it
        certainly never started; the calls behind it go first in line again.

        A call runs at most once. A worker runs its calls in order and writes
        each result as soon as the call ends (results held back, FLAG_HOLD, only
        where a death breaks the pool), and its pipe was read to the end: so
        only the head may have started. It certainly had not when it asked to
        report its start (a call with a deadline) and no STARTED frame came.
        """
        inflight = w.inflight
        if not inflight:
            return
        head = inflight[0]
        if head.timeout is not None and not head.t0:
            self._requeue(inflight)  # it never started: it may run elsewhere
            return
        inflight.popleft()
        self.failed += 1
        self._requeue(inflight)
        head.settle(
            exc=WorkerDied(
                f"{detail} while running call {head.tid}; a new worker takes its place",
                w.pid,
                exitcode,
            ),
        )

    def _requeue(self, tasks: deque) -> None:
        """Calls a dead worker held but had not started go first in line again."""
        for task in tasks:
            task.t0 = 0.0
        self.pending.extendleft(reversed(tasks))
        tasks.clear()

    def _forget(self, w: Lane) -> None:
        w.state = DEAD
        if w.chan is not None:
            w.chan.close()  # views of its results held stay valid
        self.drop(w)  # see _handoff
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
                executor._broken_cause = cause
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
            if _cancelled(task) or (cancelled and task.cancel()):
                self.cancelled += 1
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


def _cancelled(task: Any) -> bool:
    """A call cancelled while it waited (its future, or its map abandoned)."""
    if task.started:
        return False
    return task.job.cancelled if task.future is None else task.future.cancelled()
