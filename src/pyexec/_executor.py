"""ProcessPoolExecutor: the public API -- arguments, submit, map, shutdown, the
map iterators. Everything else is the manager's (see _manager).

Owns the executor's own fields: ``_pending`` (appended by submit and map
under ``_lock``, popped by the manager thread without it), ``_shutdown`` and
``_broken`` (under ``_lock``; the manager sets ``_broken``), ``_mgr``
(started under ``_lock``). Any thread may call the API; a forked child may
not use its parent's pool.

Module layout, from the top::

    _executor  the API            _tasks    a call's record, a map job, pending
    _manager   the manager's loop _dispatch its sending, _outcomes its receiving,
                                  _timers   its deadlines and stranded calls
    _handoff   caller-thread fast paths (direct, help) and the masked-fd rule
    _lanes     one worker         _launch   starting workers (_zygote under fork)
    _worker    a worker's loop    _frames, _waiter, _fds, _native: the C core's face
    _payloads, _buffers: big buffers through shared memory; _future, _errors;
    _build, _version: the build; dask (DaskExecutor) and bench stand apart
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
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
from queue import Empty, SimpleQueue
from typing import Any

from . import _fds, _payloads
from ._errors import BrokenProcessPool
from ._future import Future
from ._manager import Manager, managers, prepare
from ._tasks import MapJob, Task, cancel_pending, count_pending, dump_call, dump_call_with
from ._worker import WorkerConfig

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
    cancelled: int = 0  # calls that never ran: cancelled, or left by an abandoned map


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


# The default map's blocks (items pickled together by map()'s thread, see
# MapJob.pickle_blocks) hold at most this many items.
BLOCK_MAX = 1024
_END = object()  # closes a list drained by _drain


def _drain(values: list) -> Iterator[Any]:
    """values in order, each let go of as it is yielded (bpo-14406: a user
    iterating over big results must not hold them all)."""
    values.append(_END)
    values.reverse()
    return iter(values.pop, _END)


class _MapState:
    """What a map's result iterator reads: its job, how many units were
    submitted (items, or explicit chunks), its deadline, its order."""

    __slots__ = ("end_time", "job", "total", "unordered")

    def __init__(self, job: MapJob, total: int, end_time: float | None, unordered: bool) -> None:
        self.job = job
        self.total = total
        self.end_time = end_time
        self.unordered = unordered


def _entries(state: _MapState) -> Iterator[list]:
    """A map's outcomes as lists of results, in order (or as they finish), each
    followed by raising its exception if it has one. Closing it (the map's
    iterator dropped) drops the items not yet dispatched."""
    job = state.job
    get = job.queue.get
    chunked = job.chunked
    lists = job.lists
    got: dict[int, tuple] = {}
    nxt = 0
    try:
        while nxt < state.total:
            if state.unordered:
                entry = None
            else:
                entry = got.pop(nxt, None)
            while entry is None:
                end_time = state.end_time
                if end_time is None:
                    entry = get()
                else:
                    try:
                        entry = get(timeout=max(0, end_time - time.monotonic()))
                    except Empty:
                        raise FuturesTimeoutError() from None
                if not state.unordered and entry[0] != nxt:
                    got[entry[0]] = entry
                    entry = None
            _, values, exc = entry
            entry = None
            if exc is None:
                if chunked:
                    nxt += len(values)
                else:
                    nxt += 1
                    if not lists:
                        values = [values]
            else:
                values = values if chunked else []
            yield values
            del values
            if exc is not None:
                try:
                    raise exc
                finally:
                    exc = None
    finally:
        job.cancelled = True  # calls not yet dispatched are dropped
        if job.progress is not None:
            job.progress.finish()


def _result_iterator(
    state: _MapState, refill: Callable[[], None] | None, refill_per_item: bool
) -> Iterator[Any]:
    """The iterator map returns. Without buffersize, C-level chaining of the
    drained outcome lists; with it, submit one more call per step, as 3.14 does."""
    entries = _entries(state)
    if refill is None:
        return _chained(entries)
    return _refilling(entries, refill, refill_per_item)


class _Chained(itertools.chain):
    """map's iterator without buffersize: every result, by C-level chaining of
    the drained outcome lists (no Python frame per item), with the close()
    of the generator the stdlib's map returns."""

    _entries: Any

    def close(self) -> None:
        """Stop: the calls not yet sent are dropped, as when the iterator is
        dropped, and nothing more is yielded (the results at hand are let go)."""
        self._entries.close()
        deque(self, 0)


def _chained(entries: Iterator[list]) -> Iterator[Any]:
    it = _Chained.from_iterable(map(_drain, entries))
    it._entries = entries
    return it


def _refilling(
    entries: Iterator[list], refill: Callable[[], None], per_item: bool
) -> Iterator[Any]:
    """Each step first submits one more call (per item, or per explicit chunk), then yields."""
    cur: list = []
    try:
        while True:
            if per_item or not cur:
                refill()
            while not cur:
                try:
                    cur = next(entries)
                except StopIteration:
                    return
                cur.reverse()
            yield cur.pop()
    finally:
        entries.close()


class _Progress:
    """map's progress= argument: a tqdm bar of its own (True), or the
    caller's object with update(n), advanced as items finish."""

    __slots__ = ("bar", "lock", "own", "total")

    def __init__(self, bar: Any, own: bool) -> None:
        self.bar = bar
        self.own = own
        self.lock = threading.Lock()

    @classmethod
    def check(cls, progress: Any) -> _Progress | None:
        """Validate progress=; for True, import tqdm now (before any work is sent)."""
        if progress is None or progress is False:
            return None
        if progress is True:
            try:
                import tqdm  # noqa: F401
            except ImportError as exc:
                raise ImportError(
                    "map(progress=True) needs tqdm: pip install 'pyexec[progress]'"
                ) from exc
            return cls(None, True)
        if not callable(getattr(progress, "update", None)):
            raise TypeError(
                f"progress must be None, True or an object with an update(n) method, "
                f"not {type(progress).__name__}"
            )
        return cls(progress, False)

    def known(self, total: int) -> None:
        """The number of items is known (and the bar, if ours, is drawn)."""
        if self.own and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total)

    def advance(self, n: int) -> None:
        """n more items finished (the manager's thread): errors in update are ignored."""
        bar = self.bar
        if bar is None:
            self.known(None)
            bar = self.bar
        try:
            bar.update(n)
        except Exception:
            pass

    def finish(self) -> None:
        """The map's iterator ended: close the bar if it is ours."""
        if self.own and self.bar is not None:
            self.bar.close()


def _map_via_submit(
    ex: ProcessPoolExecutor,
    fn: Callable,
    iterables: tuple,
    timeout: float | None,
    chunksize: int,
    buffersize: int | None,
    unordered: bool,
    bar: _Progress | None,
) -> Iterator[Any]:
    """map through ex.submit, the stdlib's way: one submit per chunk (per item
    for chunksize 1), for a subclass's or a wrapper's submit to see every call."""
    end_time = None if timeout is None else timeout + time.monotonic()
    zipped: Iterator[Any] = zip(*iterables, strict=False)
    if chunksize == 1:

        def call(args: tuple) -> Future:
            return ex.submit(fn, *args)

        weight: Callable[[Any], int] = lambda _f: 1  # noqa: E731
    else:
        zipped = _batched(zipped, chunksize)
        chunk_fn = partial(_process_chunk, fn, True)

        def call(args: tuple) -> Future:
            return ex.submit(chunk_fn, args)

        def weight(f: Any) -> int:
            return len(f.result()) if f.exception() is None else 1

    done: SimpleQueue = SimpleQueue()

    def submit(args: tuple) -> Future:
        f = call(args)
        if bar is not None:
            f.add_done_callback(lambda f: bar.advance(weight(f)))
        if unordered:
            f.add_done_callback(done.put)
        return f

    first: Iterable = itertools.islice(zipped, buffersize) if buffersize else zipped
    if bar is not None and chunksize == 1 and not buffersize:
        first = list(first)
        bar.known(len(first))  # before any call can finish
    # Unordered: a set, each future taken out as it finishes.
    fs: Any = (set if unordered else deque)(map(submit, first))
    add = fs.add if unordered else fs.append
    ex_ref = weakref.ref(ex)

    def result_iterator() -> Iterator[Any]:
        try:
            while fs:
                if buffersize and (e := ex_ref()) is not None and (args := next(zipped, None)):
                    add(submit(args))
                    del e
                remaining = None if end_time is None else end_time - time.monotonic()
                if unordered:
                    try:
                        f = done.get(timeout=None if remaining is None else max(0, remaining))
                    except Empty:
                        raise FuturesTimeoutError() from None
                    fs.discard(f)
                else:
                    f = fs.popleft()
                if chunksize == 1:
                    yield _result_or_cancel(f, remaining)
                else:
                    yield from _drain(_result_or_cancel(f, remaining))
                del f
        finally:
            for f in fs:
                f.cancel()
            if bar is not None:
                bar.finish()

    return result_iterator()


def _check_arguments(
    max_workers: int | None,
    initializer: Callable[..., object] | None,
    max_tasks_per_child: int | None,
    on_crash: str,
    task_timeout: float | None,
    max_memory_per_child: int | None,
    serializer: str,
) -> None:
    """Raise ValueError or TypeError for a bad argument of ProcessPoolExecutor()
    (with the stdlib's messages for the stdlib's arguments)."""
    if max_workers is not None and max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
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
    if not isinstance(serializer, str):
        raise TypeError(f"serializer must be 'pickle' or 'cloudpickle', not {serializer!r}")
    if serializer not in ("pickle", "cloudpickle"):
        raise ValueError(f"serializer must be 'pickle' or 'cloudpickle', not {serializer!r}")


class ProcessPoolExecutor(Executor):
    """A drop-in ``concurrent.futures.ProcessPoolExecutor``, faster, with opt-in extras.

    The extras, all off by default: ``on_crash="restart"`` (a dead worker
    fails only its running call and is replaced), ``task_timeout`` (seconds;
    per-call deadline, see ``schedule``), ``max_memory_per_child`` (bytes of
    resident memory after which a worker is recycled), ``serializer="cloudpickle"``
    (calls and results pickled with cloudpickle: lambdas and closures work).
    ``arena_size``: bytes of shared memory per worker and direction for big
    arguments and results (default $PYEXEC_ARENA_SIZE or 64 MiB; 0: none,
    everything through the pipe).
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
        serializer: str = "pickle",
        arena_size: int | None = None,
    ) -> None:
        _check_arguments(
            max_workers,
            initializer,
            max_tasks_per_child,
            on_crash,
            task_timeout,
            max_memory_per_child,
            serializer,
        )
        if max_workers is None:
            max_workers = _default_workers()
        if mp_context is None:
            mp_context = multiprocessing.get_context()
        self._dumps: Callable = pickle.dumps
        if serializer == "cloudpickle":
            try:
                import cloudpickle
            except ImportError as exc:
                raise ImportError(
                    "serializer='cloudpickle' needs cloudpickle: pip install 'pyexec[cloudpickle]'"
                ) from exc
            self._dumps = cloudpickle.dumps
        self._serializer = serializer
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._start_method = mp_context.get_start_method(allow_none=False)
        self._arena_size = arena_size = _payloads.arena_size(arena_size)
        self._config = WorkerConfig(
            initializer, tuple(initargs), max_memory_per_child, serializer, arena_size
        )
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
        self._broken_cause: BaseException | None = None  # what broke it, if known
        self._mgr: Manager | None = None
        self._ids = itertools.count(1)
        # Counted here, under _lock, not by the manager: calls that failed in
        # submit (they could not be pickled) and calls shutdown() cancelled.
        self._unpickled = 0
        self._cancelled = 0

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
            if self._serializer == "pickle":
                payload = dump_call(fn, args, kwargs)
            else:
                payload = dump_call_with(self._dumps, fn, args, kwargs)
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
                self._unpickled += 1
                future.set_exception(failure)
                return future
            mgr = self._mgr or self._start()
            task = Task(next(self._ids), future, payload, timeout, owner=mgr)
            if oob is not None:
                task.oob = oob
                task.args = (None, fn, args, kwargs)  # by value, tagged: see dump_call
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
        chunksize: int | None = None,
        buffersize: int | None = None,
        unordered: bool = False,
        progress: Any = None,
    ) -> Iterator[Any]:
        """Return an iterator equivalent to map(fn, *iterables), as Python 3.14's does.

        Without chunksize, items travel in chunks sized as they run (results
        still per item: see the README); chunksize groups items into one call;
        buffersize bounds how many calls are submitted ahead of the results
        consumed; timeout counts from this call. unordered=True yields results
        as they finish; progress=True draws a tqdm bar, or give an object with
        an update(n) method.
        """
        if chunksize is not None:
            if not isinstance(chunksize, int):
                raise TypeError(f"chunksize must be an integer or None, not {chunksize!r}")
            if chunksize < 1:
                raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        if unordered is not True and unordered is not False:
            raise TypeError(f"unordered must be True or False, not {unordered!r}")
        bar = _Progress.check(progress)  # raises before any work is sent
        if type(self).submit is not ProcessPoolExecutor.submit or "submit" in self.__dict__:
            # submit is overridden or wrapped (tqdm's process_map wraps it on the
            # instance): its calls go through it, one per chunk, as the stdlib's do.
            return _map_via_submit(
                self, fn, iterables, timeout, chunksize or 1, buffersize, unordered, bar
            )
        self._check_owner()
        end_time = None if timeout is None else timeout + time.monotonic()
        # One iterable: its items travel as they are and the worker calls
        # fn(item), as multiprocessing.Pool does; no one-tuple per item to
        # build, pickle and unpickle. Several: argument tuples, fn(*args).
        star = len(iterables) != 1
        items = zip(*iterables, strict=False) if star else iter(iterables[0])
        if chunksize is None:
            if (
                self._task_timeout is None
                and self._on_crash == "break"
                and self._max_tasks_per_child is None
            ):
                return self._map_chunked(
                    fn, star, iterables, items, end_time, buffersize, bar, unordered
                )
            # A deadline, or a crash that must fail only the running call:
            # one call per item.
            chunksize = 1
        if chunksize == 1:
            job = MapJob(fn, star, self._task_timeout, self._dumps, False, bar)
            return self._map(job, items, end_time, buffersize, unordered, per_item=True)
        chunks: Iterator[Any]
        seq = iterables[0]
        if not star and buffersize is None and type(seq) in (range, list, tuple):
            # Sliced now, as a whole: the stdlib also takes every item before
            # map returns, so a list changed afterwards changes nothing.
            chunks = _sliced(seq, chunksize)
        else:
            chunks = _batched(items, chunksize)
        chunk_fn = partial(_process_chunk, fn, star)
        job = MapJob(chunk_fn, False, self._task_timeout, self._dumps, False, bar)
        job.lists = True
        return self._map(job, chunks, end_time, buffersize, unordered, per_item=False)

    def _map(
        self,
        job: MapJob,
        calls: Iterator[Any],
        end_time: float | None,
        buffersize: int | None,
        unordered: bool,
        per_item: bool,
    ) -> Iterator[Any]:
        """map with one call per item (per_item) or per explicit chunk (a list of results)."""
        total = self._submit_items(
            job,
            itertools.islice(calls, buffersize) if buffersize else calls,
            announce=per_item and not buffersize,
        )
        state = _MapState(job, total, end_time, unordered)
        refill = None
        if buffersize:
            executor_weakref = weakref.ref(self)

            def refill() -> None:
                if executor := executor_weakref():
                    state.total += executor._submit_items(job, itertools.islice(calls, 1))

        return _result_iterator(state, refill, refill_per_item=False)

    def _map_chunked(
        self,
        fn: Callable,
        star: bool,
        iterables: tuple,
        items: Iterator[Any],
        end_time: float | None,
        buffersize: int | None,
        bar: _Progress | None,
        unordered: bool,
    ) -> Iterator[Any]:
        """The default map: items pickled here in blocks, sent in chunks sized as they run."""
        job = MapJob(fn, star, self._task_timeout, self._dumps, True, bar)
        state = _MapState(job, 0, end_time, unordered)
        refill = None
        if buffersize:
            state.total = self._submit_blocks(job, 0, list(itertools.islice(items, buffersize)), 1)
            executor_weakref = weakref.ref(self)

            def refill() -> None:
                if (executor := executor_weakref()) is not None:
                    state.total += executor._submit_blocks(
                        job, state.total, list(itertools.islice(items, 1)), 1
                    )

        else:
            seq = iterables[0]
            if star or type(seq) not in (range, list, tuple):
                seq = list(items)  # taken now, as the stdlib does
            n = len(seq)
            if bar is not None:
                bar.known(n)
            # Blocks of at most a 64th of a worker's share: a chunk is one
            # block while items are slow, so what is left to the end is small.
            bmax = max(1, min(BLOCK_MAX, n // (64 * self._max_workers)))
            state.total = self._submit_blocks(job, 0, seq, bmax)
        return _result_iterator(state, refill, refill_per_item=True)

    def _submit_items(self, job: MapJob, items: Iterable[Any], announce: bool = False) -> int:
        """Queue map items (one call each), each pickled here; return how many.
        announce: the count is the map's total (a progress bar's)."""
        self._check_owner()
        pickles = job.pickle_items(items)
        if announce and job.progress is not None:
            job.progress.known(len(pickles))  # before any item can finish
        if pickles:
            self._queue_entries(job, pickles, len(pickles))
        return len(pickles)

    def _submit_blocks(self, job: MapJob, start: int, seq: Any, bmax: int) -> int:
        """Queue the items of seq (a range, list or tuple) from index start, in
        blocks pickled here (see MapJob.pickle_blocks); return how many."""
        self._check_owner()
        for blocks, count in job.pickle_blocks(start, seq, bmax):
            self._queue_entries(job, blocks, count)
        return len(seq)

    def _queue_entries(self, job: MapJob, entries: list, count: int) -> None:
        """Append a job's entries (count items) and make sure the manager sees them."""
        with self._lock:
            self._check_accepting()
            mgr = self._mgr or self._start()
            job.items.extend(entries)
            job.waiting += count
            if not job.queued:
                job.queued = True
                self._pending.append(job)
            mgr.submitted += count
            if mgr.sleeping:
                mgr.wake()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; finish (or cancel) what is pending; stop the workers.

        With wait=True, return once every worker has exited and every fd is
        closed. Safe to call more than once, from any thread, from a
        done-callback (which runs in the manager thread: it then does not wait),
        and from a signal handler that interrupted result() or submit() (their
        thread then holds the manager's lock: it does not wait either, see
        _handoff's no-wait rule).
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
        if (
            wait
            and mgr.thread is not threading.current_thread()
            and mgr.helper != threading.get_ident()
        ):
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
        dropped = cancel_pending(self._pending, self._lock, self._ids, room)
        with self._lock:
            self._cancelled += dropped

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
        pending, dropped = count_pending(self._pending)
        early, dropped = self._unpickled, self._cancelled + dropped
        if mgr is None:
            return PoolStats(early, 0, early, pending, 0, 0, 0, dropped)
        submitted, completed, failed, running, alive, replaced, cancelled = mgr.counters()
        return PoolStats(
            submitted + early,
            completed,
            failed + early,
            pending,
            running,
            alive,
            replaced,
            cancelled + dropped,
        )

    # ---- internals ----------------------------------------------------------

    def _check_accepting(self) -> None:
        """Raise, as the stdlib does, when no new call may be queued (self._lock held)."""
        if self._broken:
            raise BrokenProcessPool(self._broken) from self._broken_cause
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
        """Start the manager (under self._lock): see _manager.prepare."""
        mgr = prepare(self)
        self._mgr = mgr
        mgr.thread.start()
        return mgr
