"""A call's record (Task), a map job (MapJob), how a call is pickled, and
the pending queue's rules.

A call is in one place at a time: the executor's pending deque (submit,
under the executor's lock; the manager pops without it), a lane's
``inflight`` (the manager thread, or a caller's thread in a hand-off holding
dispatch_lock: see _handoff), or settled. A Task's fields are written by
whoever holds it there; ``kill`` by the manager thread alone. A MapJob's
``items``, ``next_index`` and ``queued`` change under the executor's lock;
its pickle_items and pickle_blocks run in map()'s thread and change none of
its fields. count_pending may run on any thread; cancel_pending runs in
shutdown()'s.
"""

from __future__ import annotations

import pickle
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, InvalidStateError
from queue import SimpleQueue
from types import BuiltinFunctionType, FunctionType, ModuleType
from typing import TYPE_CHECKING, Any

from ._buffers import Pickled
from ._errors import CallUnpicklingError
from ._future import Future, settle_fast
from ._payloads import THRESHOLD, big_bytes_at_top, has_big_bytes, pickle_big

if TYPE_CHECKING:
    from ._lanes import Kill, Lane


class Task:
    """One call: a future (submit) or a place in a map (job, index).

    A submitted call is pickled by submit and the pickle kept until the call
    is done, to be sent again if the worker holding it dies before running it.
    A map item keeps the pickle of its arguments instead (made in the
    caller's thread), sent with its neighbours in one BATCH frame.
    """

    __slots__ = (
        "args",
        "future",
        "index",
        "job",
        "kill",
        "oob",
        "owner",
        "payload",
        "seq",
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
        job: MapJob | None = None,
        index: int = 0,
        args: tuple = (),
        owner: Any = None,
    ) -> None:
        self.tid = tid
        self.future = future
        self.payload = payload
        self.timeout = timeout
        self.job = job
        self.index = index
        self.args = args
        self.started = False  # RUNNING already (a requeued call)
        self.kill: Kill | None = None  # Kill.TERMINATE once terminate_task asked
        self.t0 = 0.0  # when its worker said it started (calls with a deadline)
        self.owner = owner  # the pool's manager (a submitted call): terminate_task checks it
        self.where: Lane | None = None  # the worker submit wrote it to itself (direct)
        self.seq = 0  # its frame's number on the lane that holds it (see _lanes)
        # A call with big buffers: its pickle without them (payload holds its
        # bytes) and views of them, placed in its worker's arena at dispatch;
        # args then holds (None, fn, args, kwargs), for an in-band pickle if need be.
        self.oob: Pickled | None = None

    @property
    def oob_bytes(self) -> int:
        """Bytes of its big buffers (0: none)."""
        oob = self.oob
        return 0 if oob is None else sum(v.nbytes for _, v in oob.buffers)

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
            job = self.job
            job.queue.put((self.index, value, exc))
            if job.progress is not None:
                job.note(len(value) if job.lists and value.__class__ is list else 1)
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
        manager watches its worker's results (see _handoff, the masked-fd rule)."""
        w = self.where
        if w is not None and w in self.owner.masked:
            self.owner.unmask(w)

    def wait_here(self, end: float | None) -> None:
        """Wait for the result in the calling thread if the manager is idle (see
        _handoff.HandOff.help); return when settled, or at once when that cannot be."""
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


class MapJob:
    """One map call: its items not yet dispatched, and where their outcomes go.

    Map's results are reachable only through its iterator, so its items need
    no Future: the manager puts (index, value, exception) on a SimpleQueue (no
    lock in Python) and the iterator puts them back in order. The caller's
    thread pickles the items (map(), or the iterator with buffersize), never
    the manager: a slow ``__reduce__`` stalls no one else.

    Two kinds. Per item (``chunked`` False: an explicit chunksize, a deadline,
    on_crash="restart", max_tasks_per_child): ``items`` holds one pickle per
    item (or the exception pickling it raised), made a Task only when
    dispatched; the worker sends one result frame per item. Chunked (the
    default map): ``items`` holds blocks ``(start, count, pickle of the
    items)`` and the manager sends several blocks as one chunk, sized from
    the time items take (``take_chunk``); the worker runs the chunk and sends
    its results as one list (see ChunkTask). The outcome on the queue is then
    (start, list of results, exception after them or None).

    The job stands in the pending deque at most once (``queued``). Items are
    added and taken under the executor's lock.
    """

    __slots__ = (
        "cancelled",
        "chunked",
        "dumps",
        "fn",
        "fn_pickle",
        "item_time",
        "items",
        "lists",
        "measured",
        "next_index",
        "progress",
        "queue",
        "queued",
        "star",
        "timeout",
        "waiting",
    )

    def __init__(
        self,
        fn: Callable,
        star: bool,
        timeout: float | None,
        dumps: Callable = pickle.dumps,
        chunked: bool = False,
        progress: Any = None,
    ) -> None:
        self.fn = fn
        # fn's pickle, made once here, in map()'s thread (a failure fails each
        # item at its turn).
        try:
            self.fn_pickle: Any = dumps(fn, pickle.HIGHEST_PROTOCOL)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            self.fn_pickle = exc
        self.dumps = dumps  # the executor's serializer
        self.star = star  # items are argument tuples: fn(*item); else fn(item)
        self.timeout = timeout
        self.chunked = chunked
        self.progress = progress  # a Progress, or None
        self.queue: SimpleQueue = SimpleQueue()
        self.items: deque = deque()
        self.next_index = 0
        self.waiting = 0  # items not yet dispatched (stats().pending)
        self.item_time = 0.0  # chunked: EWMA of a worker's seconds per item (0: unknown)
        self.measured = 0  # chunked: the most items one answered chunk held
        self.lists = False  # each call's result is a list of item results (explicit chunksize)
        self.queued = False
        self.cancelled = False

    def take(self, n: int, ids: Iterator[int]) -> list[Task]:
        """The next n entries (fewer if there are fewer) as tasks (lock held)."""
        items = self.items
        n = min(n, len(items))
        if self.chunked:
            out: list[Task] = []
            for _ in range(n):
                start, count, data = items.popleft()
                self.waiting -= count
                out.append(ChunkTask(next(ids), self, start, count, [data]))
            return out
        index = self.next_index
        self.next_index += n
        self.waiting -= n
        timeout = self.timeout
        return [
            Task(next(ids), None, None, timeout, self, index + j, items.popleft()) for j in range(n)
        ]

    def take_chunk(self, ids: Iterator[int], workers: int) -> ChunkTask | None:
        """The next chunk (lock held): blocks worth CHUNK_SECONDS of work, one
        block while that is not known yet, at most GROWTH times the largest
        chunk measured, and never more than a 1/(2 workers) share of what waits, so
        the last chunks end together. A block that
        could not be pickled travels alone (its task fails at once), and so does
        one left for the manager to pickle (RawBlock)."""
        items = self.items
        if not items:
            return None
        start, count, data = items.popleft()
        blocks = [data]
        if data.__class__ is bytes and self.item_time:
            want = CHUNK_SECONDS / self.item_time
            share = self.waiting // (2 * workers)
            if want > share:
                want = share
            # At most GROWTH times the largest chunk measured: a few fast
            # items first do not send a big chunk of slow ones.
            if want > GROWTH * self.measured:
                want = GROWTH * self.measured
            while items and count < want and items[0][2].__class__ is bytes:
                _, n, data = items.popleft()
                blocks.append(data)
                count += n
        self.waiting -= count
        return ChunkTask(next(ids), self, start, count, blocks)

    def pickle_items(self, items: Iterable[Any]) -> list:
        """Each item's pickle (one call each), made in map()'s thread; an item
        that cannot be pickled (every item, when fn could not be) has the
        exception instead, and fails alone, at its turn."""
        fn_error = self.fn_pickle if self.fn_pickle.__class__ is not bytes else None
        pickles: list = []
        dumps, proto = self.dumps, pickle.HIGHEST_PROTOCOL
        for item in items:
            if fn_error is not None:
                pickles.append(fn_error)
                continue
            try:
                pickles.append(dumps(item, proto))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # that item alone fails, at its turn
                pickles.append(exc)
        return pickles

    def pickle_blocks(self, start: int, seq: Any, bmax: int) -> Iterator[tuple[list, int]]:
        """The items of seq (a range, list or tuple) from index start, as blocks
        pickled in map()'s thread: 1, 1, 2, 2, 4, ... items, at most bmax. Yields
        (blocks, items in them) every BLOCKS_PER_QUEUE blocks, to be queued at
        once: the workers start while the rest is pickled."""
        n = len(seq)
        fn_error = self.fn_pickle if self.fn_pickle.__class__ is not bytes else None
        dumps, proto = self.dumps, pickle.HIGHEST_PROTOCOL
        blocks: list = []
        i, size, queued, ahead = 0, 1, 0, 0
        while i < n:
            part = seq[i : i + size]
            if fn_error is not None:
                blocks.append((start + i, len(part), fn_error))
            elif ahead > PICKLE_AHEAD:
                # Enough pickles held at once: the manager pickles the rest as
                # it sends them (big items are not all copied up front).
                blocks.append((start + i, len(part), RawBlock(part)))
            else:
                try:
                    data = dumps(part, proto)
                except KeyboardInterrupt:
                    raise
                except BaseException:  # find the item: it alone fails, at its turn
                    blocks.extend(split_block(dumps, part, start + i))
                else:
                    ahead += len(data)
                    blocks.append((start + i, len(part), data))
                    del data
            i += len(part)
            if size < bmax and len(blocks) % 2 == 0:
                size = min(bmax, size * 2)
            if len(blocks) >= BLOCKS_PER_QUEUE:
                yield blocks, i - queued
                queued, blocks = i, []
        if blocks:
            yield blocks, n - queued

    def note(self, n: int) -> None:
        """n more items are done: tell the progress bar, if any."""
        progress = self.progress
        if progress is not None:
            progress.advance(n)


def split_block(dumps: Callable, part: Any, start: int) -> list:
    """A block that could not be pickled, as blocks: the items before the
    first bad one, then that one alone as its exception, then the rest."""
    proto = pickle.HIGHEST_PROTOCOL
    out: list = []
    for j in range(len(part)):
        try:
            dumps(part[j], proto)
        except BaseException as exc:
            if j:
                out.append((start, j, dumps(part[:j], proto)))
            out.append((start + j, 1, exc))
            rest = part[j + 1 :]
            if len(rest):
                try:
                    out.append((start + j + 1, len(rest), dumps(rest, proto)))
                except BaseException:
                    out.extend(split_block(dumps, rest, start + j + 1))
            return out
    out.append((start, len(part), dumps(part, proto)))  # pickled on a second try
    return out


# map() pickles at most about this many bytes of a map's items itself; the
# manager pickles the rest as it sends them (RawBlock).
PICKLE_AHEAD = 32 * 1024 * 1024
# map() hands the default map's blocks to the manager this many at a time.
BLOCKS_PER_QUEUE = 64


class RawBlock:
    """Items of a chunked map that map() left for the manager to pickle as it
    sends them (beyond what map() pickles ahead: see PICKLE_AHEAD)."""

    __slots__ = ("items",)

    def __init__(self, items: Any) -> None:
        self.items = items


# A chunk of the default map carries about this much work (seconds of a
# worker's time): long enough that its round trip and its frames cost
# nothing per item, short enough that the last chunks end together.
CHUNK_SECONDS = 0.01
# A chunk holds at most this many times the items of the largest chunk
# answered so far: tiny items reach full chunks in a few round trips.
GROWTH = 8


class ChunkTask(Task):
    """Several consecutive items of a chunked map, sent and answered as one call.

    The worker answers (results, exception pickle or None, seconds): the
    results of the items from ``index`` on, in order, up to the first that
    raised. settle() updates the job's item time and the pool's counters
    (its frame was counted as one call) and queues the outcome.
    """

    __slots__ = ("count",)

    def __init__(self, tid: int, job: MapJob, start: int, count: int, blocks: list) -> None:
        super().__init__(tid, None, None, None, job, start, blocks)
        self.count = count

    def settle(self, value: Any = None, exc: BaseException | None = None) -> None:
        job = self.job
        if exc is None and value is not None:
            values, err, seconds = value
            done = len(values)
            if done > job.measured:
                job.measured = done
            if done and seconds > 0:
                t = seconds / done
                job.item_time = (
                    t if not job.item_time else job.item_time + 0.3 * (t - job.item_time)
                )
            if err is not None:
                exc = _load_remote_exception(err, self.tid)
            counts = self.owner
            if counts is not None:
                # The frame counted as one completed call.
                counts.completed += done - 1
                counts.failed += exc is not None
        else:
            values = []
        job.queue.put((self.index, values, exc))
        if job.progress is not None:
            job.note(len(values) + (exc is not None))

    def cancel(self) -> bool:
        if self.started:
            return False
        self.job.queue.put((self.index, [], CancelledError()))
        return True


def _load_remote_exception(err: Any, tid: int) -> BaseException:
    """The exception a worker pickled (see _worker._dumps_exception), with its traceback text."""
    from concurrent.futures.process import _RemoteTraceback

    if isinstance(err, BaseException):
        return err
    try:
        exc, tb = pickle.loads(err)
    except BaseException as e:
        out = CallUnpicklingError(f"the exception of call {tid} could not be unpickled: {e!r}")
        out.__cause__ = e
        return out
    exc.__cause__ = _RemoteTraceback(f'\n"""\n{tb}"""')
    return exc


def drain_pending(pending: deque, lock: Any, ids: Iterator[int]) -> list[Task]:
    """Empty the pending deque into a list of tasks, map items included."""
    out: list[Task] = []
    while True:
        try:
            entry = pending.popleft()
        except IndexError:
            return out
        if entry.__class__ is MapJob:
            with lock:
                out.extend(entry.take(len(entry.items), ids))
                entry.queued = False
        else:
            out.append(entry)


def cancel_pending(pending: deque, lock: Any, ids: Iterator[int], room: int) -> int:
    """shutdown(cancel_futures=True): cancel the pending calls but the first
    room (those the stdlib's call queue would hold, marked running) and those
    already running (requeued after a restart); return how many items were
    dropped (a chunk of a map counts its items)."""
    keep = []
    dropped = 0
    for task in drain_pending(pending, lock, ids):
        if room > 0 and task.start():
            keep.append(task)
            room -= 1
        elif task.cancel():
            dropped += getattr(task, "count", 1)  # a chunk of a map: its items
        else:
            keep.append(task)  # already running (requeued after a restart)
    pending.extendleft(reversed(keep))
    return dropped


def count_pending(pending: deque) -> tuple[int, int]:
    """For stats(), from any thread: (calls waiting, items of dropped maps not
    yet discarded). A dropped map's items leave at once and count as
    cancelled at once (the manager counts them when it discards them)."""
    # A copy made in one C call, which no other thread interleaves with:
    # the manager takes from the deque without the executor's lock, and
    # iterating it in Python while it did raised "deque mutated".
    queued = tuple(pending)
    waiting = sum((0 if e.cancelled else e.waiting) if e.__class__ is MapJob else 1 for e in queued)
    dropped = sum(e.waiting for e in queued if e.__class__ is MapJob and e.cancelled)
    return waiting, dropped


# Pickles of module-level functions (which pickle by reference: module and
# name), kept for the next call: pickling one imports its module and looks the
# name up each time, the largest single cost of a tiny submit. An entry is used
# only while the module's name still names that function, as pickle checks.
# Bounded: a process that submits ever new functions only clears it more often.
_fn_refs: dict[Callable, tuple[bytes, ModuleType, str]] = {}
_FN_REFS_MAX = 256
_BY_NAME = (FunctionType, BuiltinFunctionType)


def dump_call(fn: Callable, args: tuple, kwargs: dict) -> bytes | Pickled:
    """The pickle of one call, in one of two forms told apart by length (the
    worker's _load_call): by reference, for a function its module names,
    (fn's own pickle, args) or (fn's own pickle, args, kwargs) -- the worker
    resolves that name the same way; or by value, (None, fn, args, kwargs).
    The length, not the type of the first item, says which: a bytes object
    submitted as the function is sent by value, and fails as not callable.
    The common call, a named function with positional arguments, pickles as
    a pair: a third less work than a 4-tuple holding an empty dict.

    A call with big buffers (out-of-band ones, or big bytes among its
    arguments) comes back as a Pickled: its buffers referenced, not copied,
    until dispatch places them in shared memory (see _payloads)."""
    call: tuple | None = None
    if fn.__class__ in _BY_NAME:
        entry = _fn_refs.get(fn) or _fn_ref(fn)
        if entry is not None and getattr(entry[1], entry[2], None) is fn:
            call = (entry[0], args, kwargs) if kwargs else (entry[0], args)
    if call is None:
        call = (None, fn, args, kwargs)
    # Scalars and strings only (the common tiny call): no buffer can hide there.
    for a in args:
        if a.__class__ not in _SCALARS:
            break
    else:
        if not kwargs:
            return pickle.dumps(call, pickle.HIGHEST_PROTOCOL)
    if big_bytes_at_top(args) or (kwargs and big_bytes_at_top(kwargs)):
        return pickle_big(call)
    # Every out-of-band buffer left out (its NEXT_BUFFER opcode in its place):
    # then pickled again with the big ones apart, the small ones in-band.
    payload = pickle.dumps(call, pickle.HIGHEST_PROTOCOL, buffer_callback=_out_of_band)
    if _NEXT_BUFFER in payload or (len(payload) >= THRESHOLD and has_big_bytes(call, payload)):
        return pickle_big(call)
    return payload


_SCALARS = frozenset((int, float, str, bool, type(None), complex))
_NEXT_BUFFER = pickle.NEXT_BUFFER[0]  # 0x97: a buffer left out (or a byte of data)


def _out_of_band(_buf: pickle.PickleBuffer) -> bool:
    """dump_call's buffer_callback: every buffer out of band, no list to make per call."""
    return False


# serializer="cloudpickle": each function's cloudpickle, made once per
# function object (a function pickled by value keeps the globals it had then).
# Plain functions only (a dict hit is then the same object): a bound method
# equals every other binding of its object, and a partial or a callable
# object carries state the caller may change between calls, so those are
# pickled at each call, as the standard library's pickle does.
_cloud_fns: dict[Callable, bytes] = {}


def dump_call_with(dumps: Callable, fn: Callable, args: tuple, kwargs: dict) -> bytes:
    """The pickle of one call made with dumps (cloudpickle's), fn's own pickle
    in fn's place, cached for a plain function, as dump_call does for
    functions named by module."""
    if fn.__class__ is not FunctionType:
        ref = dumps(fn, pickle.HIGHEST_PROTOCOL)
    elif (ref := _cloud_fns.get(fn)) is None:
        ref = dumps(fn, pickle.HIGHEST_PROTOCOL)
        if len(_cloud_fns) >= _FN_REFS_MAX:
            _cloud_fns.clear()
        _cloud_fns[fn] = ref
    call = (ref, args, kwargs) if kwargs else (ref, args)
    return dumps(call, pickle.HIGHEST_PROTOCOL)


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


def settle_all(outcomes: list) -> None:
    """Settle (task, value, exception) outcomes: the futures no thread waits on
    under one lock (settle_fast), the others one by one."""
    for task, value, exc in settle_fast(outcomes):
        task.settle(value, exc)
