"""ProcessPoolExecutor: the public API -- arguments, submit, map, shutdown, the
map iterators. Everything else is the manager's (see _manager).

Owns the executor's own fields: ``_pending`` (appended by submit and map
under ``_lock``, popped by the manager thread without it), ``_shutdown`` and
``_broken`` (under ``_lock``; the manager sets ``_broken``), ``_mgr``
(started under ``_lock``). Any thread may call the API; a forked child may
not use its parent's pool.

Module layout, from the top::

    _executor  the API            _tasks    a call's record, a map job, pending
    _manager   the manager's loop _dispatch its sending, _outcomes its receiving
    _handoff   caller-thread fast paths (direct, help) and the masked-fd rule
    _lanes     one worker         _launch   starting workers (_zygote under fork)
    _worker    a worker's loop    _frames, _waiter, _fds, _native: the C core's face
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, _base
from concurrent.futures import TimeoutError as FuturesTimeoutError
from dataclasses import dataclass
from functools import partial
from queue import Empty
from typing import Any

from . import _fds, _payloads
from ._errors import BrokenProcessPool
from ._future import Future
from ._launch import Launcher, ProcessLauncher
from ._manager import Manager, managers
from ._tasks import MapJob, Task, drain_pending, dump_call
from ._worker import WorkerConfig
from ._zygote import ZygoteLauncher

# submit() writes a call straight to an idle worker when the manager sleeps,
# if its pickle is smaller than this (an idle worker's empty pipe takes it
# whole); larger calls, and calls with a deadline, go through the manager
# (see _handoff).
DIRECT_MAX = 32 * 1024

_global_shutdown = False


def _python_exit() -> None:
    """At interpreter exit: every pool finishes its work, then stops (as the stdlib does)."""
    global _global_shutdown
    _global_shutdown = True
    mgrs = [m for m in list(managers) if m.pid == os.getpid()]
    for m in mgrs:
        m.request_stop()
    for m in mgrs:
        if m.thread is not threading.current_thread():
            m.join()


threading._register_atexit(_python_exit)


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of an executor's counters (``executor.stats()``)."""

    submitted: int
    completed: int
    failed: int
    pending: int
    running: int
    workers_alive: int
    workers_replaced: int


def _process_chunk(fn: Callable, star: bool, chunk: Iterable) -> list:
    """Run fn over one chunk of map's items (in the worker)."""
    return list(itertools.starmap(fn, chunk) if star else map(fn, chunk))


def _batched(iterable: Iterable, n: int) -> Iterator[tuple]:
    it = iter(iterable)
    while batch := tuple(itertools.islice(it, n)):
        yield batch


def _sliced(seq: range | list | tuple, n: int) -> Iterator[range | list | tuple]:
    """A range, list or tuple in chunks of n, by slicing: a range's chunks are
    ranges (a few bytes to pickle; the worker makes the ints), a list's are
    made by one copy instead of an iterator step per item."""
    return (seq[i : i + n] for i in range(0, len(seq), n))


def _result_or_cancel(fut: Future, timeout: float | None = None) -> Any:
    try:
        try:
            return fut.result(timeout)
        finally:
            fut.cancel()
    finally:
        del fut  # break the cycle through the exception's traceback


def _default_workers() -> int:
    count = getattr(os, "process_cpu_count", os.cpu_count)
    return count() or 1


class ProcessPoolExecutor(Executor):
    """A drop-in ``concurrent.futures.ProcessPoolExecutor``, faster, with opt-in extras.

    The extras, all off by default: ``on_crash="restart"`` (a dead worker
    fails only its running call and is replaced), ``task_timeout`` (seconds;
    per-call deadline, see ``schedule``), ``max_memory_per_child`` (bytes of
    resident memory after which a worker is recycled). ``arena_size``: bytes of
    shared memory per worker and direction for big arguments and results
    (default $PYEXEC_ARENA_SIZE or 64 MiB; 0: none, everything through the pipe).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple = (),
        *,
        max_tasks_per_child: int | None = None,
        on_crash: str = "break",
        task_timeout: float | None = None,
        max_memory_per_child: int | None = None,
        arena_size: int | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = _default_workers()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if mp_context is None:
            mp_context = multiprocessing.get_context()
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if on_crash not in ("break", "restart"):
            raise ValueError(f"on_crash must be 'break' or 'restart', not {on_crash!r}")
        if task_timeout is not None and not task_timeout > 0:
            raise ValueError(f"task_timeout must be None or > 0, not {task_timeout!r}")
        if max_memory_per_child is not None and max_memory_per_child <= 0:
            raise ValueError("max_memory_per_child must be None or > 0 (bytes)")
        self._arena_size = arena_size = _payloads.arena_size(arena_size)
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._start_method = mp_context.get_start_method(allow_none=False)
        self._config = WorkerConfig(initializer, tuple(initargs), max_memory_per_child, arena_size)
        self._max_tasks_per_child = max_tasks_per_child
        self._on_crash = on_crash
        self._task_timeout = task_timeout
        self._pid = os.getpid()
        # Changes in every forked child (see _fds): cheaper than getpid().
        self._fork_generation = _fds.fork_generation
        # Guards _shutdown, _broken, starting the manager and the wake pipe.
        # Appending to _pending needs no lock (a deque append is atomic), but
        # is done under it so that no call slips in after shutdown. Reentrant:
        # the weakref callback that wakes the manager may run, through the
        # garbage collector, in a thread that already holds it.
        self._lock = threading.RLock()
        self._pending: deque[Task | MapJob] = deque()
        self._shutdown = False
        self._broken: str | None = None
        self._mgr: Manager | None = None
        self._ids = itertools.count(1)

    # ---- the standard API -------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule fn(*args, **kwargs); return its Future."""
        return self._submit(fn, args, kwargs, self._task_timeout)

    submit.__doc__ = _base.Executor.submit.__doc__

    def schedule(
        self,
        fn: Callable[..., Any],
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        timeout: float | None = None,
    ) -> Future:
        """Like submit, with a per-call deadline in seconds (default: task_timeout).

        A call still running ``timeout`` seconds after it started has its worker
        killed and replaced; its future raises ``pyexec.TaskTimeout``.
        """
        if timeout is None:
            timeout = self._task_timeout
        elif not timeout > 0:
            raise ValueError(f"timeout must be None or > 0, not {timeout!r}")
        return self._submit(fn, tuple(args), dict(kwargs or {}), timeout)

    def _submit(self, fn: Callable, args: tuple, kwargs: dict, timeout: float | None) -> Future:
        if self._fork_generation != _fds.fork_generation:
            self._check_owner()  # raises
        future: Future = Future()
        failure: BaseException | None = None
        oob = None
        try:
            payload = dump_call(fn, args, kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # that call alone fails, as in the stdlib
            payload, failure = b"", exc
        if payload.__class__ is not bytes:  # big buffers: placed at dispatch
            oob = payload
            payload = oob.payload
        # acquire/release, not `with`: on 3.11 `with` looks up and binds
        # __enter__ and __exit__ each time, about a twentieth of a tiny submit.
        lock = self._lock
        lock.acquire()
        try:
            if self._broken or self._shutdown or _global_shutdown:
                self._check_accepting()  # raises
            if failure is not None:
                future.set_exception(failure)
                return future
            mgr = self._mgr or self._start()
            task = Task(next(self._ids), future, payload, timeout, owner=mgr)
            if oob is not None:
                task.oob = oob
                task.args = (fn, args, kwargs)
            future._pyexec_task = task  # for terminate_task
            mgr.submitted += 1
            if (
                mgr.sleeping
                and oob is None
                and timeout is None
                and not self._pending
                and len(payload) < DIRECT_MAX
                and mgr.dispatch_lock.acquire(False)
            ):
                try:
                    if mgr.sleeping and mgr.direct(task):
                        return future
                finally:
                    mgr.dispatch_lock.release()
            self._pending.append(task)
            if mgr.sleeping:
                mgr.wake()
        finally:
            lock.release()
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """Return an iterator equivalent to map(fn, *iterables), as Python 3.14's does.

        chunksize groups items into one call; buffersize bounds how many calls
        are submitted ahead of the results consumed; timeout counts from this call.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        # One iterable: its items travel as they are and the worker calls
        # fn(item), as multiprocessing.Pool does; no one-tuple per item to
        # build, pickle and unpickle. Several: argument tuples, fn(*args).
        if len(iterables) == 1:
            items, star = iter(iterables[0]), False
        else:
            items, star = zip(*iterables, strict=False), True
        if chunksize == 1:
            return self._map(fn, star, items, timeout, buffersize)
        chunks: Iterator[Any]
        seq = iterables[0]
        if not star and buffersize is None and type(seq) in (range, list, tuple):
            # Sliced now, as a whole: the stdlib also takes every item before
            # map returns, so a list changed afterwards changes nothing.
            chunks = _sliced(seq, chunksize)
        else:
            chunks = _batched(items, chunksize)
        chunker = partial(_process_chunk, fn, star)
        results = self._map(chunker, False, chunks, timeout, buffersize)
        return itertools.chain.from_iterable(results)

    def _map(
        self,
        fn: Callable,
        star: bool,
        argtuples: Iterator[Any],
        timeout: float | None,
        buffersize: int | None,
    ) -> Iterator[Any]:
        """map's engine: items are argument tuples (star) or single arguments."""
        end_time = None if timeout is None else timeout + time.monotonic()
        job = MapJob(fn, star, self._task_timeout)
        items = itertools.islice(argtuples, buffersize) if buffersize else argtuples
        total = self._submit_items(job, 0, items)
        executor_weakref = weakref.ref(self)

        def result_iterator() -> Iterator[Any]:
            nonlocal total
            got: dict[int, tuple] = {}
            get = job.queue.get
            nxt = 0
            try:
                while nxt < total:
                    if buffersize and (executor := executor_weakref()):
                        total += executor._submit_items(job, total, itertools.islice(argtuples, 1))
                        del executor
                    while nxt not in got:
                        if end_time is None:
                            index, value, exc = get()
                        else:
                            try:
                                index, value, exc = get(timeout=max(0, end_time - time.monotonic()))
                            except Empty:
                                raise FuturesTimeoutError() from None
                        got[index] = (value, exc)
                    value, exc = got.pop(nxt)
                    nxt += 1
                    if exc is not None:
                        try:
                            raise exc
                        finally:
                            exc = None
                    yield value
            finally:
                job.cancelled = True  # calls not yet dispatched are dropped

        return result_iterator()

    def _submit_items(self, job: MapJob, start: int, items: Iterable[tuple]) -> int:
        """Queue map items (argument tuples) from index start; return how many."""
        self._check_owner()
        items = list(items)
        if not items:
            return 0
        with self._lock:
            self._check_accepting()
            mgr = self._mgr or self._start()
            job.items.extend(items)
            if not job.queued:
                job.queued = True
                self._pending.append(job)
            mgr.submitted += len(items)
            if mgr.sleeping:
                mgr.wake()
        return len(items)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; finish (or cancel) what is pending; stop the workers.

        With wait=True, return once every worker has exited and every fd is
        closed. Safe to call more than once, from any thread, and from a
        done-callback (which runs in the manager thread: it then does not wait).
        """
        if self._pid != os.getpid():
            return  # a forked child's copy: the parent owns the pool
        with self._lock:
            self._shutdown = True
            mgr = self._mgr
        if cancel_futures:
            self._cancel_pending()
        if mgr is None:
            return
        mgr.request_stop()
        if wait and mgr.thread is not threading.current_thread():
            mgr.join()

    def _cancel_pending(self) -> None:
        """Cancel what is pending, but for what the stdlib's call queue would hold.

        The stdlib moves up to max_workers + 1 calls to its call queue, marked
        running, as soon as they are submitted; shutdown(cancel_futures=True)
        leaves those to run. So does pyexec, counting the calls its workers hold.
        """
        mgr = self._mgr
        held = sum(len(w.inflight) for w in list(mgr.workers)) if mgr is not None else 0
        room = self._max_workers + 1 - held
        keep = []
        for task in drain_pending(self._pending, self._lock, self._ids):
            if room > 0 and task.start():
                keep.append(task)
                room -= 1
            elif not task.cancel():
                keep.append(task)  # already running (requeued after a restart)
        self._pending.extendleft(reversed(keep))

    def terminate_workers(self) -> None:
        """Terminate every worker (SIGTERM) and shut down; pending calls are cancelled.

        The pool is broken afterwards, as in Python 3.14.
        """
        self._force_shutdown(signal.SIGTERM)

    def kill_workers(self) -> None:
        """Kill every worker (SIGKILL) and shut down; pending calls are cancelled."""
        self._force_shutdown(signal.SIGKILL)

    def _force_shutdown(self, sig: int) -> None:
        self._check_owner()
        with self._lock:
            mgr = self._mgr
        self.shutdown(wait=False, cancel_futures=True)
        if mgr is not None:
            mgr.request_signal(sig)

    # ---- beyond the standard library ----------------------------------------

    def terminate_task(self, future: Future) -> bool:
        """Stop one call. A pending one is cancelled; a running one has its worker
        killed and replaced, and its future raises ``pyexec.TaskTerminated``.

        Returns False when the future had already finished, True otherwise.
        Raises ValueError, and changes nothing, for a future this executor did
        not return.
        """
        self._check_owner()
        task = getattr(future, "_pyexec_task", None)
        if task is None:
            if future.done():
                return False  # settled (which drops the task)
            raise ValueError("that future does not belong to a pyexec executor")
        with self._lock:
            mgr = self._mgr
        if task.owner is not mgr:
            raise ValueError("that future belongs to another pyexec executor")
        if future.cancel():
            return True
        if future.done():
            return False
        mgr.request_terminate(task)
        return True

    def stats(self) -> PoolStats:
        """A cheap snapshot of the counters, for monitoring."""
        mgr = self._mgr
        # A copy made in one C call, which no other thread interleaves with:
        # the manager takes from the deque without the executor's lock, and
        # iterating it in Python while it did raised "deque mutated".
        queued = tuple(self._pending)
        pending = sum(len(e.items) if e.__class__ is MapJob else 1 for e in queued)
        if mgr is None:
            return PoolStats(0, 0, 0, pending, 0, 0, 0)
        submitted, completed, failed, running, alive, replaced = mgr.counters()
        return PoolStats(submitted, completed, failed, pending, running, alive, replaced)

    # ---- internals ----------------------------------------------------------

    def _check_accepting(self) -> None:
        """Raise, as the stdlib does, when no new call may be queued (self._lock held)."""
        if self._broken:
            raise BrokenProcessPool(self._broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _check_owner(self) -> None:
        if self._fork_generation != _fds.fork_generation:
            raise RuntimeError(
                f"this ProcessPoolExecutor belongs to process {self._pid}; "
                "a forked child cannot use its parent's pool: create a new one in the child"
            )

    def _start(self) -> Manager:
        """Start the manager (under self._lock). Under fork, fork the first worker
        and the zygote first, while no pyexec thread runs."""
        # Made before any fork: what it writes then costs no copy-on-write
        # fault afterwards, in the parent, while the first worker starts.
        mgr = Manager(self)
        try:
            if self._start_method == "fork":
                # One worker forked at once for the first call; more as the backlog
                # asks (forking all of them up front made startup 1.5x slower).
                # Other pools' manager threads are parked around the forks.
                parked = [m for m in list(managers) if m.pid == os.getpid() and m.park()]
                try:
                    launcher: Launcher = ZygoteLauncher(self._config)
                finally:
                    for m in parked:
                        m.unpark()
            else:
                launcher = ProcessLauncher(self._mp_context, self._config)
        except BaseException:
            mgr.close_fds()
            raise
        mgr.attach(launcher)
        self._mgr = mgr
        mgr.thread.start()
        return mgr
