"""A call's record (Task), a map job (MapJob), how a call is pickled, and
the pending queue's rules.

A call is in one place at a time: the executor's pending deque (submit,
under the executor's lock; the manager pops without it), a lane's
``inflight`` (the manager thread, or a caller's thread in a hand-off holding
dispatch_lock: see _handoff), or settled. A Task's fields are written by
whoever holds it there; ``kill`` by the manager thread alone. A MapJob's
``items``, ``next_index`` and ``queued`` change under the executor's lock.
"""

from __future__ import annotations

import pickle
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, InvalidStateError
from queue import SimpleQueue
from types import BuiltinFunctionType, FunctionType, ModuleType
from typing import TYPE_CHECKING, Any

from ._buffers import Pickled
from ._future import Future, settle_fast
from ._payloads import THRESHOLD, has_big_bytes, pickle_big

if TYPE_CHECKING:
    from ._lanes import Kill, Lane


class Task:
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
        "oob",
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
        # A call with big buffers: its pickle without them (payload holds its
        # bytes) and views of them, placed in its worker's arena at dispatch;
        # args then holds (fn, args, kwargs), for an in-band pickle if need be.
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

    def take(self, n: int, ids: Iterator[int]) -> list[Task]:
        """The next n items (fewer if there are fewer) as tasks (lock held)."""
        items = self.items
        n = min(n, len(items))
        index = self.next_index
        self.next_index += n
        timeout = self.timeout
        return [
            Task(next(ids), None, None, timeout, self, index + j, items.popleft()) for j in range(n)
        ]


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


# Pickles of module-level functions (which pickle by reference: module and
# name), kept for the next call: pickling one imports its module and looks the
# name up each time, the largest single cost of a tiny submit. An entry is used
# only while the module's name still names that function, as pickle checks.
# Bounded: a process that submits ever new functions only clears it more often.
_fn_refs: dict[Callable, tuple[bytes, ModuleType, str]] = {}
_FN_REFS_MAX = 256
_BY_NAME = (FunctionType, BuiltinFunctionType)


def dump_call(fn: Callable, args: tuple, kwargs: dict) -> bytes | Pickled:
    """The pickle of one call: (fn, args, kwargs); for a function its module
    names, fn's own pickle (bytes) in fn's place, and no kwargs when there are
    none (the worker resolves that name the same way: _worker._load_call).
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
        call = (fn, args, kwargs)
    # Scalars and strings only (the common tiny call): no buffer can hide there.
    for a in args:
        if a.__class__ not in _SCALARS:
            break
    else:
        if not kwargs:
            return pickle.dumps(call, pickle.HIGHEST_PROTOCOL)
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
