"""ProcessPoolExecutor: the API, pending work, dispatch, the manager thread, shutdown.

Data flow::

    submit() --pickle--> pending deque --(manager thread)--> worker's call pipe
                         (cancel() still works here)          (window of a few calls)
    Future <--settle-- unpickle <--decode-- worker's result pipe <-- worker runs call

One manager thread per executor owns all dispatch state: the workers, what
each holds in flight, the deadlines. It waits in C (GIL released) on a wake
pipe, every worker's result pipe and sentinel, and, while a call pipe is full,
that pipe. ``submit`` pickles in the caller's thread, appends to the pending
deque and writes to the wake pipe only if the manager sleeps: one wake per
burst. The manager holds the executor only through a weakref, whose callback
wakes it, so a dropped executor shuts down as if ``shutdown()`` was called.

The parent knows which calls each worker holds, so a dead worker loses only
its own calls: with ``on_crash="break"`` (the default, the standard library's
behaviour) the whole pool breaks; with ``on_crash="restart"`` only the call
that was running fails, the calls queued behind it go to other workers.
"""

from __future__ import annotations

import itertools
import marshal
import math
import multiprocessing
import os
import pickle
import select
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Executor, InvalidStateError, _base
from concurrent.futures import TimeoutError as FuturesTimeoutError
from concurrent.futures.process import _RemoteTraceback
from dataclasses import dataclass
from functools import partial
from queue import Empty, SimpleQueue
from types import BuiltinFunctionType, FunctionType, ModuleType
from typing import Any

from . import _channel as ch
from ._errors import BrokenProcessPool, TaskTerminated, TaskTimeout, WorkerDied, describe_exit
from ._future import Future, settle_fast, start_fast
from ._launch import ProcessLauncher, Worker, ZygoteLauncher
from ._worker import WorkerConfig

# Calls a worker may hold beyond the one it runs. The window adapts to how
# long calls take: WINDOW_SECONDS of queued work per worker, between 1 and
# WINDOW_MAX calls. Small windows keep long calls spread over every worker
# and keep cancel() working; large ones let a burst of tiny calls travel in
# few writes. A window of 1 wastes a round trip per call, which only matters
# for calls shorter than that round trip.
WINDOW_SECONDS = 0.002
WINDOW_MAX = 256
WINDOW_PAIR = 0.05
# submit() writes a call straight to an idle worker when the manager sleeps,
# if its pickle is smaller than this (an idle worker's empty pipe takes it
# whole); larger calls, and calls with a deadline, go through the manager.
DIRECT_MAX = 32 * 1024
# How long the manager waits for a dead worker's exit status.
EXIT_STATUS_WAIT = 1.0
# How long a worker asked to exit may take before it is killed (seconds),
# counted from the moment its last call is done.
EXIT_GRACE = 5.0

_BROKEN_PREFIX = (
    "A process in the process pool was terminated abruptly while the future was running or pending"
)

_global_shutdown = False
_managers: weakref.WeakSet = weakref.WeakSet()


def _python_exit() -> None:
    """At interpreter exit: every pool finishes its work, then stops (as the stdlib does)."""
    global _global_shutdown
    _global_shutdown = True
    mgrs = [m for m in list(_managers) if m.pid == os.getpid()]
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


class _Task:
    """One call: a future (submit) or a place in a map (job, index).

    A submitted call is pickled by submit and the pickle kept until the call
    is done, to be sent again if the worker holding it dies before running it.
    A map item keeps its arguments instead: it is pickled with its neighbours
    into one BATCH frame at dispatch.
    """

    __slots__ = (
        "args",
        "future",
        "index",
        "job",
        "kill",
        "owner",
        "payload",
        "started",
        "t0",
        "tid",
        "timeout",
        "where",
    )

    def __init__(
        self,
        tid: int,
        future: Future | None,
        payload: bytes | None,
        timeout: float | None,
        job: _MapJob | None = None,
        index: int = 0,
        args: tuple = (),
        owner: _Manager | None = None,
    ) -> None:
        self.tid = tid
        self.future = future
        self.payload = payload
        self.timeout = timeout
        self.job = job
        self.index = index
        self.args = args
        self.started = False  # RUNNING already (a requeued call)
        self.kill: str | None = None  # "terminate" once terminate_task asked
        self.t0 = 0.0  # when its worker said it started (calls with a deadline)
        self.owner = owner  # the pool's manager (a submitted call): terminate_task checks it
        self.where: Worker | None = None  # the worker submit wrote it to itself (direct)

    def start(self) -> bool:
        """Mark it running, as the stdlib does at dispatch; False if it was cancelled."""
        if self.started:
            return True
        future = self.future
        if future is None:
            if self.job.cancelled:
                return False
        elif not future.set_running_or_notify_cancel():
            future._pyexec_task = None  # see settle
            return False
        self.started = True
        return True

    def settle(self, value: Any = None, exc: BaseException | None = None) -> None:
        """Deliver the outcome; a future settled meanwhile is left as it is.

        terminate_task and a broken pool may race with a result arriving: the
        InvalidStateError of the loser is expected and ignored.
        """
        future = self.future
        if future is None:
            self.job.queue.put((self.index, value, exc))
            return
        try:
            if exc is None:
                future.set_result(value)
            else:
                future.set_exception(exc)
        except InvalidStateError:
            pass
        # The future and its task refer to each other: break that cycle, so
        # both go when the caller drops the future, without the collector.
        future._pyexec_task = None

    def watch(self) -> None:
        """Someone waits on this call other than through wait_here: make sure the
        manager watches its worker's results (see _Manager.help)."""
        w = self.where
        if w is not None and w in self.owner.masked:
            self.owner.unmask(w)

    def wait_here(self, end: float | None) -> None:
        """Wait for the result in the calling thread if the manager is idle (see
        _Manager.help); return when settled, or at once when that cannot be."""
        if self.where is not None:
            self.owner.help(self, self.where, end)

    def cancel(self) -> bool:
        """Cancel a call that has not started; False if it is running."""
        if self.started:
            return False
        if self.future is None:
            self.job.queue.put((self.index, None, CancelledError()))
            return True
        if not self.future.cancel():
            return False
        self.future._pyexec_task = None  # see settle
        return True


class _MapJob:
    """One map call: its items not yet dispatched, and where their outcomes go.

    Map's results are reachable only through its iterator, so its items need
    no Future: the manager puts (index, value, exception) on a SimpleQueue (no
    lock in Python) and the iterator puts them back in order. Items wait here
    as bare argument tuples and become _Tasks only when dispatched, so a map
    over a million items costs a million tuples, not a million objects more.
    The job stands in the pending deque at most once (``queued``). Items are
    added and taken under the executor's lock.
    """

    __slots__ = ("cancelled", "fn", "items", "next_index", "queue", "queued", "star", "timeout")

    def __init__(self, fn: Callable, star: bool, timeout: float | None) -> None:
        self.fn = fn
        self.star = star  # items are argument tuples: fn(*item); else fn(item)
        self.timeout = timeout
        self.queue: SimpleQueue = SimpleQueue()
        self.items: deque[tuple] = deque()
        self.next_index = 0
        self.queued = False
        self.cancelled = False

    def take(self, n: int, ids: Iterator[int]) -> list[_Task]:
        """The next n items (fewer if there are fewer) as tasks (lock held)."""
        items = self.items
        n = min(n, len(items))
        index = self.next_index
        self.next_index += n
        timeout = self.timeout
        return [
            _Task(next(ids), None, None, timeout, self, index + j, items.popleft())
            for j in range(n)
        ]


def _drain_pending(pending: deque, lock: Any, ids: Iterator[int]) -> list[_Task]:
    """Empty the pending deque into a list of tasks, map items included."""
    out: list[_Task] = []
    while True:
        try:
            entry = pending.popleft()
        except IndexError:
            return out
        if entry.__class__ is _MapJob:
            with lock:
                out.extend(entry.take(len(entry.items), ids))
                entry.queued = False
        else:
            out.append(entry)


# Pickles of module-level functions (which pickle by reference: module and
# name), kept for the next call: pickling one imports its module and looks the
# name up each time, the largest single cost of a tiny submit. An entry is used
# only while the module's name still names that function, as pickle checks.
# Bounded: a process that submits ever new functions only clears it more often.
_fn_refs: dict[Callable, tuple[bytes, ModuleType, str]] = {}
_FN_REFS_MAX = 256
_BY_NAME = (FunctionType, BuiltinFunctionType)


def _dump_call(fn: Callable, args: tuple, kwargs: dict) -> bytes:
    """The pickle of one call: (fn, args, kwargs); for a function its module
    names, fn's own pickle (bytes) in fn's place, and no kwargs when there are
    none (the worker resolves that name the same way: _worker._load_call).
    The common call, a named function with positional arguments, pickles as
    a pair: a third less work than a 4-tuple holding an empty dict."""
    if fn.__class__ in _BY_NAME:
        entry = _fn_refs.get(fn) or _fn_ref(fn)
        if entry is not None and getattr(entry[1], entry[2], None) is fn:
            call = (entry[0], args, kwargs) if kwargs else (entry[0], args)
            return pickle.dumps(call, pickle.HIGHEST_PROTOCOL)
    return pickle.dumps((fn, args, kwargs), pickle.HIGHEST_PROTOCOL)


def _fn_ref(fn: Callable) -> tuple[bytes, ModuleType, str] | None:
    """Cache and return (pickle, module, name) of a function its module names
    at top level; None for others (methods, nested or replaced functions)."""
    name = fn.__qualname__
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is None or "." in name or getattr(module, name, None) is not fn:
        return None
    entry = (pickle.dumps(fn, pickle.HIGHEST_PROTOCOL), module, name)
    if len(_fn_refs) >= _FN_REFS_MAX:
        _fn_refs.clear()
    _fn_refs[fn] = entry
    return entry


def _settle_all(outcomes: list) -> None:
    """Settle (task, value, exception) outcomes: the futures no thread waits on
    under one lock (settle_fast), the others one by one."""
    for task, value, exc in settle_fast(outcomes):
        task.settle(value, exc)


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
    resident memory after which a worker is recycled).
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
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._start_method = mp_context.get_start_method(allow_none=False)
        self._config = WorkerConfig(initializer, tuple(initargs), max_memory_per_child)
        self._max_tasks_per_child = max_tasks_per_child
        self._on_crash = on_crash
        self._task_timeout = task_timeout
        self._pid = os.getpid()
        # Changes in every forked child (see _channel): cheaper than getpid().
        self._fork_generation = ch.fork_generation
        # Guards _shutdown, _broken, starting the manager and the wake pipe.
        # Appending to _pending needs no lock (a deque append is atomic), but
        # is done under it so that no call slips in after shutdown. Reentrant:
        # the weakref callback that wakes the manager may run, through the
        # garbage collector, in a thread that already holds it.
        self._lock = threading.RLock()
        self._pending: deque[_Task] = deque()
        self._shutdown = False
        self._broken: str | None = None
        self._mgr: _Manager | None = None
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
        if self._fork_generation != ch.fork_generation:
            self._check_owner()  # raises
        future: Future = Future()
        failure: BaseException | None = None
        try:
            payload = _dump_call(fn, args, kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # that call alone fails, as in the stdlib
            payload, failure = b"", exc
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
            task = _Task(next(self._ids), future, payload, timeout, owner=mgr)
            future._pyexec_task = task  # for terminate_task
            mgr.submitted += 1
            if (
                mgr.sleeping
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
        job = _MapJob(fn, star, self._task_timeout)
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

    def _submit_items(self, job: _MapJob, start: int, items: Iterable[tuple]) -> int:
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
        keep = []
        for task in _drain_pending(self._pending, self._lock, self._ids):
            if not task.cancel():
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
        pending = sum(len(e.items) if e.__class__ is _MapJob else 1 for e in queued)
        if mgr is None:
            return PoolStats(0, 0, 0, pending, 0, 0, 0)
        return mgr.stats(pending)

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
        if self._fork_generation != ch.fork_generation:
            raise RuntimeError(
                f"this ProcessPoolExecutor belongs to process {self._pid}; "
                "a forked child cannot use its parent's pool: create a new one in the child"
            )

    def _start(self) -> _Manager:
        """Start the manager (under self._lock). Under fork, fork the first worker
        and the zygote first, while no pyexec thread runs."""
        # Made before any fork: what it writes then costs no copy-on-write
        # fault afterwards, in the parent, while the first worker starts.
        mgr = _Manager(self)
        try:
            if self._start_method == "fork":
                # One worker forked at once for the first call; more as the backlog
                # asks (forking all of them up front made startup 1.5x slower).
                # Other pools' manager threads are parked around the forks.
                parked = [m for m in list(_managers) if m.pid == os.getpid() and m.park()]
                try:
                    launcher: Any = ZygoteLauncher(self._config)
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


class _Manager:
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
        self.launcher: Any = None
        self.executor_ref = weakref.ref(executor, lambda _r: self.request_stop())
        self.waiter: Any = ch.Waiter()
        self.waiter_fd = self.waiter.fd  # -1 on the poll backend: help() does nothing
        if self.waiter_fd >= 0:
            ch.own_fd(self.waiter_fd)  # not for the processes forked from here
        self.wake_r, self.wake_w = ch.make_pipe(True, True)
        ch.own_fd(self.wake_r)
        ch.own_fd(self.wake_w)
        self.waiter.add(self.wake_r, ch.READABLE)
        self.sleeping = False
        self.sleep_until: float | None = None  # when a sleeping manager wakes anyway
        self.generation = ch.fork_generation
        self.help_poll: Any = None  # help()'s poll object, made on first use
        self.spin = ch.Spin()  # whether help() polls before it sleeps
        self.wake_sent = False
        self.closed = False
        self.stop = False
        self.signal_all: int | None = None
        self.terminate_requests: deque[_Task] = deque()
        self.workers: list[Worker] = []
        self.by_fd: dict[int, Worker] = {}
        self.broken: str | None = None
        self.window = 1
        self.service_time = 0.0  # EWMA of seconds per call; 0: not known yet
        self.submitted = self.completed = self.failed = self.replaced = 0
        self.starting = self.started_workers = 0
        # Workers to keep whatever the backlog: a worker killed or crashed is
        # replaced at once (the pool stays whole), not when work next asks.
        self.keep = 0
        self._writers: set[int] = set()  # call fds watched while their pipe is full
        # Workers whose result fd help() took out of the waiter and left out:
        # the manager puts them back before it next sleeps (see help).
        self.masked: set[Worker] = set()
        # Held by the manager whenever it is not waiting. submit() takes it,
        # without blocking, only while the manager sleeps, to hand a call to an
        # idle worker itself: one thread hop less on the round trip.
        self.dispatch_lock = threading.Lock()
        self.wake_lock = threading.Lock()
        self.parking = self.parked = False  # see park()
        self.ended = threading.Event()  # set when the manager has closed everything
        self.thread = threading.Thread(target=self.run, name="pyexec-manager", daemon=True)

    def attach(self, launcher: Any) -> None:
        """Take the launcher, once its processes are forked."""
        self.launcher = launcher
        if launcher.fd >= 0:
            self.waiter.add(launcher.fd, ch.READABLE)
        # Workers forked unasked at the start (fork), already on their way.
        self.starting = self.started_workers = getattr(launcher, "initial", 0)
        _managers.add(self)

    def close_fds(self) -> None:
        """Close the fds __init__ opened (at the end, or when no launcher came)."""
        with self.wake_lock:
            self.closed = True
            ch.close_fd(self.wake_r)
            ch.close_fd(self.wake_w)
        if self.waiter_fd >= 0:
            ch.disown_fd(self.waiter_fd)
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

    def direct(self, task: _Task) -> bool:
        """Write a call straight to an idle worker (submit's thread, dispatch_lock held).

        False when no worker is idle: the call then goes through pending.
        """
        for w in self.workers:
            if (
                w.state == "up"
                and not w.inflight
                and w.quota != 0
                and not w.recycle
                and not w.writer.pending
            ):
                if not task.start():
                    return True
                w.inflight.append(task)
                task.where = w
                w.mark = time.monotonic()
                if w.quota is not None:
                    w.quota -= 1
                try:
                    done = w.writer.send(ch.KIND_CALL, task.tid, task.payload)
                except OSError:
                    done = False  # the worker is gone: the manager will see it
                if not done or w.quota == 0:
                    self.wake()  # the manager finishes the write or the exit
                return True
        return False

    def unmask(self, w: Worker) -> None:
        """Watch w's results again (help left them masked), from any thread:
        at once if the manager sleeps, else before it next sleeps."""
        if self.pid != os.getpid():
            return
        if not self.dispatch_lock.acquire(False):
            self.wake()
            return
        try:
            if w in self.masked:  # not forgotten meanwhile: its fd is open
                self._rearm(w)
        finally:
            self.dispatch_lock.release()

    def help(self, task: _Task, w: Worker, end: float | None) -> None:
        """Read task's result in the calling thread (result(), dispatch_lock free).

        A round trip through the manager costs two thread hops and the GIL
        passed back and forth. When the manager sleeps, the caller instead
        takes dispatch_lock, masks w's result fd in the manager's waiter and
        reads that fd itself: first for ch.SPIN without sleeping (unless
        ch.Spin says it does not pay), then by polling it alongside the
        waiter's own fd. Whatever else becomes ready (a wake, a death, another
        worker's results, a deadline) ends the help, and the manager takes
        over. epoll only: the poll backend's set cannot change under a
        waiting thread.

        The fd stays masked after the help while w holds no other call, so
        that a loop of submit().result() makes no epoll_ctl at all. Calls that
        direct() then hands to w are seen by no one but their own result()'s
        help; any other wait on them (a Condition made: callbacks, wait(),
        as_completed; or done()) calls _Task.watch, which unmasks the fd. The
        manager too unmasks every fd before it sleeps.
        """
        if (
            not self.sleeping
            or self.waiter_fd < 0
            or w.state != "up"
            or self.generation != ch.fork_generation
            or not self.dispatch_lock.acquire(False)
        ):
            return
        settled: list = []
        try:
            if self.sleeping and not self.closed and task in w.inflight:
                until = self.sleep_until
                if until is not None and (end is None or until < end):
                    end = until
                self._read_for(task, w, end, settled)
        finally:
            self.dispatch_lock.release()
            _settle_all(settled)

    def _read_for(self, task: _Task, w: Worker, end: float | None, settled: list) -> None:
        """help's wait: read w's results until task's is among them (dispatch_lock held)."""
        poll = self.help_poll
        if poll is None:
            poll = self.help_poll = select.poll()
            poll.register(self.waiter_fd, select.POLLIN)
        fd, inflight = w.result_fd, w.inflight
        if w not in self.masked:
            self.waiter.modify(fd, 0)
            self.masked.add(w)
        read_frames = w.reader.read_frames
        spin = self.spin
        spin_ns = ch.SPIN_NS if spin.first() else 0  # see ch.Spin
        if spin_ns and end is not None:
            spin_ns = min(spin_ns, max(0, int((end - time.monotonic()) * 1e9)))
        polling = False
        try:
            while task in inflight:
                n, meta, view = read_frames(fd, spin_ns)
                if n < 0 and not meta:  # nothing yet: sleep on it
                    if spin_ns:
                        spin.missed()
                        spin_ns = 0
                    if not polling:
                        poll.register(fd, select.POLLIN)
                        polling = True
                    ms = -1 if end is None else max(0, math.ceil((end - time.monotonic()) * 1000))
                    ready = poll.poll(ms)
                    if len(ready) != 1 or ready[0][0] != fd:
                        return  # time is up, or the manager has work
                    continue
                if spin_ns:
                    spin.found()
                    spin_ns = 0
                self._decode(w, settled, meta, view)
                if n == 0:
                    return  # end of file: the manager sees it too
        except ch.ChannelError as exc:
            self._protocol_error(w, str(exc))
        finally:
            if polling:
                poll.unregister(fd)
            if inflight:  # calls no one may wait on here: the manager's again
                self._rearm(w)
            if settled and (self.pending or w.recycle or w.quota == 0):
                self.wake()  # work to dispatch, or a worker to retire

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

    def request_terminate(self, task: _Task) -> None:
        """Kill the worker running task (from terminate_task)."""
        self.terminate_requests.append(task)
        self.wake()

    def stats(self, pending: int) -> PoolStats:
        """Counters as of now; racy by design (no lock), each one exact."""
        running = sum(len(w.inflight) for w in list(self.workers))
        alive = sum(1 for w in list(self.workers) if w.state != "dead")
        return PoolStats(
            self.submitted, self.completed, self.failed, pending, running, alive, self.replaced
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
                self.parked = True  # a safe point: run() keeps everything open
                return
            for w in self.launcher.take_ready():
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
                self._rearm_masked()
            timeout = self._next_timeout()
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
                                f"{_BROKEN_PREFIX}: pyexec's fork zygote "
                                f"(pid {self.launcher.pid}) died"
                            )
                    continue
                w = by_fd.get(fd)
                if w is None or w.state == "dead":
                    continue
                if fd == w.result_fd:
                    self._read_results(w)
                elif fd == w.sentinel:
                    self._worker_died(w)
                elif fd == w.call_fd:
                    self._flush(w)
            self._check_deadlines()

    def _rearm_masked(self) -> None:
        """Watch again the result fds that help() left out of the waiter."""
        for w in list(self.masked):
            self._rearm(w)

    def _rearm(self, w: Worker) -> None:
        """Put w's result fd, masked by help(), back in the waiter (dispatch_lock held)."""
        self.waiter.modify(w.result_fd, ch.READABLE)
        self.masked.discard(w)

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
                if w.state != "dead":
                    self._signal(w, sig)
        while self.terminate_requests:
            task = self.terminate_requests.popleft()
            task.kill = "terminate"
        if not self.stop and self.executor_ref() is None:
            self.stop = True

    def _no_more_workers(self) -> bool:
        """Stopping, nothing left to run or to start: no worker is needed again."""
        return (
            (self.stop or _global_shutdown)
            and not self.pending
            and not self.starting
            and all(w.state != "up" and not w.inflight for w in self.workers)
        )

    def _finished(self) -> bool:
        live = any(w.state != "dead" for w in self.workers) or self.starting
        if self.broken is not None:
            return not live
        stopping = self.stop or _global_shutdown
        return stopping and not self.pending and not live

    # ---- workers ------------------------------------------------------------

    def _adjust_workers(self) -> None:
        """Start workers while there is more work than live workers can take."""
        alive = sum(1 for w in self.workers if w.state == "up") + self.starting
        inflight = sum(len(w.inflight) for w in self.workers)
        want = max(self.keep, min(self.max_workers, self._backlog(self.max_workers) + inflight))
        stopping = self.stop or _global_shutdown
        if stopping and not self.pending:
            want = 0
        while alive < want:
            if self.started_workers >= self.max_workers:
                self.replaced += 1
            self.started_workers += 1
            if isinstance(self.launcher, ZygoteLauncher):
                try:
                    self.launcher.request()
                except OSError as exc:
                    self._break(
                        f"{_BROKEN_PREFIX}: pyexec's fork zygote (pid {self.launcher.pid}) is gone",
                        cause=exc,
                    )
                    return
                self.starting += 1
            else:
                self._add_worker(self.launcher.start())
            alive += 1

    def _add_worker(self, w: Worker) -> None:
        if isinstance(self.launcher, ZygoteLauncher):
            self.starting -= 1
        w.inflight = deque()
        w.quota = self.max_tasks
        self.workers.append(w)
        self.by_fd[w.result_fd] = w
        self.by_fd[w.sentinel] = w
        self.by_fd[w.call_fd] = w
        self.waiter.add(w.result_fd, ch.READABLE)
        self.waiter.add(w.sentinel, ch.READABLE)
        if self.broken is not None:
            self._signal(w, signal.SIGKILL)

    def _signal(self, w: Worker, sig: int) -> None:
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
                count += len(entry.items) if entry.__class__ is _MapJob else 1
                if count >= limit:
                    return limit
        except IndexError:
            pass
        return count

    def _room(self, w: Worker, now: float) -> int:
        """How many more calls w may hold. None when it is over its memory limit
        (it drains its window and exits), and none behind a head call that has
        run longer than WINDOW_PAIR: the window was sized for short calls, and
        this one may be long (a worker on its way, or one that frees up, takes
        them)."""
        inflight = w.inflight
        if w.recycle or (inflight and now - w.mark > WINDOW_PAIR):
            return 0
        return self.window - len(inflight)

    def _has_room(self) -> bool:
        now = time.monotonic()
        return any(w.state == "up" and self._room(w, now) > 0 for w in self.workers)

    def _dispatch(self) -> None:
        """Hand pending calls to workers with room, many frames per write."""
        pending = self.pending
        stopping = self.stop or _global_shutdown
        now = time.monotonic()
        # Least loaded first: an idle worker takes the next call before a busy
        # one queues it behind a call that may be long.
        workers = self.workers
        share = 0
        if pending:
            if len(workers) > 1:
                workers = sorted(workers, key=lambda w: len(w.inflight))
            # Spread a short burst evenly over the workers.
            ups = sum(1 for x in workers if x.state == "up") or 1
            share = -(-self._backlog(self.window * ups) // ups)
        for w in workers:
            if w.state != "up":
                continue
            inflight = w.inflight
            room = self._room(w, now)
            if pending and room > 0:
                room = min(room, share)
                if w.quota is not None:
                    room = min(room, w.quota)
                idle = not inflight
                push = w.writer.push
                KIND_CALL = ch.KIND_CALL
                sent = 0
                while sent < room:
                    try:
                        task = pending.popleft()
                    except IndexError:
                        break
                    if task.__class__ is _MapJob:
                        sent += self._push_batch(w, task, room - sent)
                    elif task.job is None:
                        # A run of submitted calls, marked running together.
                        run = [task]
                        while (
                            len(run) < room - sent
                            and pending
                            and pending[0].__class__ is _Task
                            and pending[0].job is None
                        ):
                            run.append(pending.popleft())
                        for task in start_fast(run):  # cancelled ones are left out
                            report = ch.FLAG_STARTED if task.timeout is not None else 0
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
            if w.state == "up" and (
                w.quota == 0 or w.recycle or (stopping and not pending and not inflight)
            ):
                self._ask_exit(w, now)

    def _push_batch(self, w: Worker, job: _MapJob, room: int, batch: list | None = None) -> int:
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
            flags = ch.FLAG_STARTED
        else:
            flags = ch.FLAG_HOLD if self.on_crash == "break" else 0
        w.writer.push(ch.KIND_BATCH, batch[0].tid, payload, flags)
        w.inflight.extend(batch)
        return len(batch)

    def _ask_exit(self, w: Worker, now: float) -> None:
        """Queue the exit frame: the worker finishes its window, acks and exits."""
        w.state = "exiting"
        w.exit_at = now
        w.writer.push(ch.KIND_EXIT, 0)
        self._flush(w)

    def _flush(self, w: Worker) -> None:
        try:
            done = w.writer.flush()
        except OSError:
            return  # the worker is gone: its sentinel and result pipe tell the rest
        watching = w.call_fd in self._writers
        if not done and not watching:
            self.waiter.add(w.call_fd, ch.WRITABLE)
            self._writers.add(w.call_fd)
        elif done and watching:
            self.waiter.remove(w.call_fd)
            self._writers.discard(w.call_fd)

    # ---- results ------------------------------------------------------------

    def _read_results(self, w: Worker) -> bool:
        """Read and settle what the worker sent. False at end of file."""
        reader = w.reader
        while True:
            settled: list = []
            malformed = None
            try:
                n, meta, view = reader.read_frames(w.result_fd)
                self._decode(w, settled, meta, view)
            except ch.ChannelError as exc:
                malformed = str(exc)
            if settled:
                # Futures are settled with no lock held: callbacks run here.
                self.dispatch_lock.release()
                try:
                    _settle_all(settled)
                finally:
                    self.dispatch_lock.acquire()
            del settled
            if malformed is not None:
                self._protocol_error(w, malformed)
                return False
            if n == 0:
                self._worker_died(w)
                return False
            if n < ch.READ_CHUNK:
                # Drained (a short read), or would block: the waiter reports
                # the rest. One syscall less per wake: each one hands the GIL
                # away, and getting it back from a busy submitter costs up to
                # the interpreter's switch interval.
                return True

    def _decode(self, w: Worker, out: list, meta: tuple[int, ...], view: Any) -> None:
        """Unpickle every complete frame now, those of (meta, view) that a read
        took first (see Decoder.read_frames), appending (task, value,
        exception) to out, to settle later outside any loop state. What was
        decoded before a malformed frame (ChannelError) is in out all the same."""
        inflight = w.inflight
        loads, marshal_loads = pickle.loads, marshal.loads
        MARSHAL = ch.FLAG_MARSHAL << 8
        KIND_RESULT, KIND_ERROR, KIND_STARTED = ch.KIND_RESULT, ch.KIND_ERROR, ch.KIND_STARTED
        FLAG_RECYCLE = ch.FLAG_RECYCLE
        k = failed = 0
        try:
            each = ch.Decoder.each
            while meta:
                for word, tid, off, size in each(meta):
                    kind = word & 0xFF
                    buf = view[off : off + size]
                    if kind == KIND_RESULT or kind == KIND_ERROR:
                        if not inflight or inflight[0].tid != tid:
                            raise ch.ChannelError(
                                0, f"result for call {tid}, which it does not hold"
                            )
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
                        if word >> 8 & FLAG_RECYCLE:
                            w.recycle = True
                    elif kind == KIND_STARTED:
                        if inflight and inflight[0].tid == tid:
                            inflight[0].t0 = time.monotonic()
                    elif kind == ch.KIND_READY:
                        w.ready = True
                        w.mark = time.monotonic()  # the head call starts now
                    elif kind == ch.KIND_EXIT_ACK:
                        w.acked = True
                    elif kind == ch.KIND_FATAL:
                        w.fatal = str(loads(buf))
                    else:
                        raise ch.ChannelError(0, f"unexpected frame kind {kind} from worker")
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
            sample = (now - w.mark) / k
            w.mark = now
            st = self.service_time
            # A worker that still holds calls was busy since the mark. One
            # whose window ran dry may have idled meanwhile (the manager was
            # late to refill it): its sample overstates the calls, and would
            # shrink the window and starve the worker further. Such a sample
            # may only lower the estimate.
            if st == 0.0 or inflight or sample < st:
                st = sample if st == 0.0 else st + 0.2 * (sample - st)
                self.service_time = st
            per = int(WINDOW_SECONDS / st) if st > 0 else WINDOW_MAX
            # Calls shorter than WINDOW_PAIR keep one more queued behind the one
            # running, so a worker does not idle while its next call is pickled
            # and sent; for longer calls the round trip is noise and one call
            # per worker spreads them best.
            least = 2 if st < WINDOW_PAIR else 1
            # Not max(least, min(WINDOW_MAX, per)): the builtins parse their
            # keywords on every call, 0.4 us against 0.1 here, each result.
            per = per if per < WINDOW_MAX else WINDOW_MAX
            self.window = per if per > least else least

    def _protocol_error(self, w: Worker, why: str) -> None:
        """A malformed stream: the worker counts as dead."""
        w.fatal = f"it sent a malformed frame ({why})"
        self._signal(w, signal.SIGKILL)

    # ---- deaths ---------------------------------------------------------------

    def _worker_died(self, w: Worker) -> None:
        """The worker's sentinel fired or its result pipe ended: settle its calls."""
        if w.state == "dead":
            return
        if w.fatal is None:
            try:
                while True:  # read what it wrote before dying
                    n, meta, view = w.reader.read_frames(w.result_fd)
                    out: list = []
                    try:
                        self._decode(w, out, meta, view)
                    finally:
                        _settle_all(out)
                    if n <= 0:
                        break
            except ch.ChannelError as exc:
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
        if w.state == "exiting" and not w.inflight and w.fatal is None:
            return  # asked to exit, had nothing: however it ended, nothing is lost
        how = describe_exit(exitcode)
        reason = w.kill_reason
        up = sum(1 for x in self.workers if x.state == "up") + self.starting + 1  # w too
        self.keep = min(self.max_workers, max(self.keep, up))
        if reason in ("timeout", "terminate"):
            if not w.inflight or w.inflight[0] is not w.kill_target:
                self._requeue(w.inflight)  # its call finished just before the kill
                return
            head = w.inflight.popleft()
            if reason == "timeout":
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
        msg = f"{_BROKEN_PREFIX}: {detail}."
        self._break(msg, lost=w.inflight)

    def _requeue(self, tasks: deque) -> None:
        """Calls a dead worker held but had not started go first in line again."""
        for task in tasks:
            task.t0 = 0.0
        self.pending.extendleft(reversed(tasks))
        tasks.clear()

    def _forget(self, w: Worker) -> None:
        w.state = "dead"
        self.masked.discard(w)
        for fd in (w.result_fd, w.sentinel, w.call_fd):
            self.by_fd.pop(fd, None)
        self.waiter.remove(w.result_fd)
        self.waiter.remove(w.sentinel)
        if w.call_fd in self._writers:
            self.waiter.remove(w.call_fd)
            self._writers.discard(w.call_fd)
        ch.close_fd(w.call_fd)
        ch.close_fd(w.result_fd)
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
        doomed += _drain_pending(self.pending, self.lock, self.ids)
        for w in self.workers:
            doomed.extend(w.inflight)
            w.inflight.clear()
        now = time.monotonic()
        for w in self.workers:
            if w.state != "dead":
                w.state = "exiting"  # killed outright if SIGTERM is not enough
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
            task.settle(exc=BrokenProcessPool(msg or _BROKEN_PREFIX))
        tasks.clear()

    # ---- deadlines ------------------------------------------------------------

    def _next_timeout(self) -> float | None:
        """Seconds until the next deadline of a running call, or an exit grace."""
        best = None
        now = time.monotonic()
        for w in self.workers:
            if w.state == "dead":
                continue
            due = None
            if w.inflight:
                head = w.inflight[0]
                if head.kill is not None:
                    due = now
                elif head.t0:
                    due = head.t0 + head.timeout
            elif w.state == "exiting":
                due = w.exit_at + EXIT_GRACE
            if due is not None and (best is None or due < best):
                best = due
        return None if best is None else max(0.0, best - now)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.state == "dead" or w.kill_reason is not None:
                continue
            if w.inflight:
                head = w.inflight[0]
                if head.kill is not None:
                    w.kill_reason = head.kill
                elif head.t0 and now >= head.t0 + head.timeout:
                    w.kill_reason = "timeout"
                else:
                    continue
                w.kill_target = head
                self._signal(w, signal.SIGKILL)
            elif w.state == "exiting" and now >= w.exit_at + EXIT_GRACE:
                w.kill_reason = "exit-grace"
                self._signal(w, signal.SIGKILL)

    # ---- the end --------------------------------------------------------------

    def _close(self) -> None:
        """Kill what is left, close every fd, reap the zygote."""
        for w in list(self.workers):
            if w.state != "dead":
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
