"""The worker process's loop.

Read what the call pipe has, decode every complete frame, run each call in
order, pickle the result or the exception (with its traceback text) and write
the results back, several in one write when they come quickly. A chunk of
the default map is answered by one frame: its results as one list. Each call
frame is claimed on the worker's claim word before it runs (see _lanes): one
the parent took back meanwhile is skipped, never run. An EXIT frame
is answered with EXIT_ACK and a normal exit; end of file on the call pipe
means the parent is gone, and the worker exits at once.

Runs in the worker process. Its state (its pipes' decoder and writer, the
claim word, the caches ``_fn_by_ref`` and ``_flusher``) is the process's
main thread's. The one other thread, ``_Flusher`` (started at the first
result held back, see _run_batch), may write held results only while the
main thread runs a call, through the handshake on its ``state``.
"""

from __future__ import annotations

import itertools
import marshal
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import _base
from dataclasses import dataclass
from time import monotonic
from typing import Any

from . import _frames as frames
from ._errors import CallUnpicklingError
from ._lanes import SEQ_MASK, map_claim
from ._native import lib, rss
from ._payloads import (
    DEFAULT_ARENA_SIZE,
    THRESHOLD,
    Channel,
    big_bytes_at_top,
    has_big_bytes,
    pickle_big,
)

# A result is held back to leave in one write with the next ones only when its
# call took less than TINY_CALL and another call is already here, and never
# longer than FLUSH_DELAY (seconds). The cost: a tiny call's result may wait
# for the call queued right behind it in the same window.
TINY_CALL = 0.00002
FLUSH_DELAY = 0.0005
# How often the worker's flusher thread looks for held results behind a long
# call (see _Flusher): they leave at most two ticks after the call began.
FLUSH_TICK = 0.02
# Results of exactly these types travel as marshal data (FLAG_MARSHAL): the
# same value back, dumped and loaded in about half a pickle's instructions.
# Any other value, a subclass or a container, is pickled. (Calls stay
# pickles: with the type checks of their arguments, marshal saved nothing.)
PLAIN = frozenset((int, float, str, bytes, bool, type(None)))
# marshal's format 2: binary floats, no back-references. Plain values share
# nothing, and without the references' table a dump takes half the time.
MARSHAL_VERSION = 2


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of one executor is started with."""

    initializer: Any = None
    initargs: tuple = ()
    max_memory: int | None = None
    serializer: str = "pickle"  # or "cloudpickle": how results are pickled
    arena_size: int = DEFAULT_ARENA_SIZE  # its results' arena (0: none)


class InheritFd:
    """An fd handed to a worker: inherited under fork, passed by spawn/forkserver."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self):
        from multiprocessing import reduction

        return (_rebuild_fd, (reduction.DupFd(self.fd),))


def _rebuild_fd(dup) -> InheritFd:
    return InheritFd(dup.detach())


def _dumps_exception(exc: BaseException) -> bytes:
    """(exception, traceback text), or the reason it cannot be pickled instead."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    try:
        return pickle.dumps((exc, tb), pickle.HIGHEST_PROTOCOL)
    except BaseException as err:  # the exception itself cannot be pickled
        note = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        err.__traceback__ = None
        try:
            return pickle.dumps((err, note + "\nwhile pickling:\n" + tb), pickle.HIGHEST_PROTOCOL)
        except BaseException:
            fallback = RuntimeError(
                f"the task raised {type(exc).__name__}, which could not be pickled: {err!r}"
            )
            return pickle.dumps((fallback, tb), pickle.HIGHEST_PROTOCOL)


def _die_with_parent(deathsig: bool) -> None:
    """Die when the pool's process dies, even while busy in a long call (Linux).

    An idle worker sees end of file on its call pipe; a busy one does not
    read it. So the kernel is asked to kill the worker when the process that
    forked it dies: the pool's process (spawn), the zygote (fork; it kills
    its workers and exits when the pool's process is gone) or the forkserver.
    The forkserver exits when no process holds its "alive" pipe, and every
    process it forks inherits that pipe: the worker closes its copy so a busy
    worker does not keep the forkserver, and so itself, alive. macOS has no
    such signal: there a busy worker finishes its call, then sees end of file.
    deathsig False: the parent is a thread that may end first; the zygote
    kills this worker instead (see _launch).
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        try:
            os.close(server._forkserver_alive_fd)
        except OSError:
            pass
        server._forkserver_alive_fd = None
    if deathsig:
        lib.px_parent_death_signal(signal.SIGKILL, os.getppid())


def main(
    call: InheritFd,
    result: InheritFd,
    config: WorkerConfig,
    deathsig: bool = True,
    side: InheritFd | None = None,
    claim: InheritFd | None = None,
) -> None:
    """Entry point of a worker process (the target of its Process). side: its
    end of the socket that carries shared-memory fds (see _payloads); claim:
    its claim word's segment (see _lanes)."""
    call_fd, result_fd = call.fd, result.fd
    for fd in (call_fd, result_fd):
        os.set_inheritable(fd, False)
        os.set_blocking(fd, True)
    chan = None
    if side is not None:
        os.set_inheritable(side.fd, False)
        os.set_blocking(side.fd, True)
        chan = Channel(side.fd, config.arena_size, mapped=True)
    claims = None
    if claim is not None:
        try:
            claims = Claims(map_claim(claim.fd))
        finally:
            os.close(claim.fd)
    _die_with_parent(deathsig)
    out = frames.Writer(result_fd)
    try:
        if config.initializer is not None:
            try:
                config.initializer(*config.initargs)
            except BaseException as exc:
                _base.LOGGER.critical("Exception in initializer:", exc_info=True)
                text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                out.push(frames.KIND_FATAL, 0, pickle.dumps(f"its initializer raised {text}"))
                out.flush()
                sys.exit(1)
        out.push(frames.KIND_READY, 0)
        out.flush()
        dumps = pickle.dumps
        if config.serializer == "cloudpickle":
            import cloudpickle

            dumps = cloudpickle.dumps
        _loop(call_fd, out, config.max_memory, chan, dumps, claims)
    except BrokenPipeError:
        # Our result pipe has no reader: the parent is gone, or never took our
        # fds (it had none free). Nothing is listening; exit without a traceback.
        os._exit(0)


class Claims:
    """This worker's claim word (see _lanes) and the number of the last call
    frame read: a call runs only once claimed (main thread only)."""

    __slots__ = ("seq", "word")

    def __init__(self, word: Any) -> None:
        self.word = word
        self.seq = 0


def _loop(
    call_fd: int,
    out: frames.Writer,
    max_memory: int | None,
    chan: Channel | None,
    dumps: Callable = pickle.dumps,
    claims: Claims | None = None,
) -> None:
    """Read, run and answer calls until an exit frame (dumps pickles the results;
    chan: the worker's shared memory, None where there is none; claims: its
    claim word, None where there is none: every call runs)."""
    dec = frames.Decoder()
    loads, proto = pickle.loads, pickle.HIGHEST_PROTOCOL
    take, read_frames = dec.take, dec.read_frames
    # Out of calls, the worker reads on for frames.SPIN before it sleeps in poll
    # (see frames.Spin); where there is no poll, it sleeps in read at once.
    spin = frames.Spin() if hasattr(select, "poll") else None
    if spin is not None:
        os.set_blocking(call_fd, False)
        poller = select.poll()
        poller.register(call_fd, select.POLLIN)
        sleep = poller.poll
    while True:
        spun = spin is not None and spin.first()
        n, meta, view = read_frames(call_fd, frames.SPIN_NS if spun else 0)
        if n < 0 and not meta and spin is not None:
            if spun:
                spin.missed()
            while n < 0 and not meta:
                sleep()
                n, meta, view = read_frames(call_fd)
        elif spun:
            spin.found()
        if n == 0:
            os._exit(0)  # the parent is gone
        while meta:
            if _run_frames(meta, view, out, loads, dumps, proto, rss, max_memory, chan, claims):
                return
            if dec.drained(meta):
                break
            meta, view = take()  # more, or the malformed one's error
        out.flush()


def _run_frames(
    meta, view, out, loads, dumps, proto, rss, max_memory, chan=None, claims=None
) -> bool:
    """Run every call of one batch of frames; True when an exit frame came.

    Each call's result is written at once: a result held back would die with
    the worker if the next call crashed, and the parent would then blame the
    wrong call. Only map batches flagged HOLD may hold results back.

    Each call is claimed first (see _lanes): a CALL frame, a chunk's BATCH
    frame, each item of a per-item BATCH frame (see _run_batch). One the parent
    took back is skipped, with nothing sent for it (a STARTED frame neither);
    its big buffers' slots, if any, are released.
    """
    KIND_CALL, KIND_BATCH = frames.KIND_CALL, frames.KIND_BATCH
    MASK, SHIFT = frames.KIND_MASK, frames.FLAG_SHIFT
    OOB = frames.FLAG_OOB
    send = out.send
    claim = lib.px_claim
    for word, tid, off, size in frames.Decoder.each(meta):
        kind = word & MASK
        if claims is not None and kind == KIND_CALL:
            claims.seq = seq = (claims.seq + 1) & SEQ_MASK
            if not claim(claims.word, seq):
                if word >> SHIFT & OOB and chan is not None:
                    chan.discard(view[off : off + size])
                continue
        if kind == KIND_CALL:
            buf = view[off : off + size]
            if word >> SHIFT & frames.FLAG_STARTED:
                send(frames.KIND_STARTED, tid)
            try:
                oob = chan if word >> SHIFT & OOB else None
                fn, args, kwargs = _load_call(loads, buf, tid, oob)
            except BaseException as exc:
                fn, args, kwargs = _reraise, exc, None  # the call fails with it
                del exc
            del buf
            payload, rkind, flags = _run(fn, args, kwargs, dumps, proto, rss, max_memory, chan)
            del fn, args, kwargs
            if chan is not None and chan.releases:  # its arguments' slots, now free
                payload = chan.wrap(payload, bool(flags & OOB))
                flags |= OOB
            send(rkind, tid, payload, flags)
            del payload
        elif kind == KIND_BATCH:
            buf = view[off : off + size]
            call = loads(buf)
            del buf
            if len(call) == 3:  # a chunk of the default map: one result for all
                if claims is not None:  # one call: one claim
                    claims.seq = seq = (claims.seq + 1) & SEQ_MASK
                    if not claim(claims.word, seq):
                        del call
                        continue
                payload, rflags = _run_chunk(call, tid, dumps, proto, rss, max_memory)
                del call
                send(frames.KIND_RESULT, tid, payload, rflags)
                del payload
            else:
                _run_batch(
                    call, word >> SHIFT, out.push, out.flush, dumps, proto, rss, max_memory, claims
                )
                del call
        elif kind == frames.KIND_EXIT:
            send(frames.KIND_EXIT_ACK, tid)
            return True
        else:
            raise frames.ChannelError(0, f"unexpected frame kind {kind} from the parent")
    return False


def _run(fn, args, kwargs, dumps, proto, rss, max_memory, chan=None) -> tuple[bytes, int, int]:
    """The one body every call runs, a submitted call or a map item: call
    fn(*args, **kwargs) (kwargs None: fn(args), a map item's single argument),
    then dump its result or its exception: (payload, result kind, flags),
    flagged RECYCLE when this worker is over max_memory."""
    try:
        r = fn(args) if kwargs is None else fn(*args, **kwargs)
    except BaseException as exc:
        payload, rkind, flags = _dumps_exception(exc), frames.KIND_ERROR, 0
        del exc
    else:
        payload, rkind, flags = _dumps_result(r, dumps, proto, chan)
        del r
    if max_memory is not None and rss() > max_memory:
        flags |= frames.FLAG_RECYCLE
    return payload, rkind, flags


def _reraise(exc: BaseException) -> None:
    """Stands in for a call whose function or arguments could not be loaded."""
    raise exc


# Map items are claimed in groups (see _run_batch): a group twice the last
# one's size, up to CLAIM_GROUP_MAX items, once the last ran within this.
CLAIM_GROUP_SECONDS = 0.001
CLAIM_GROUP_MAX = 32

# A map item's keyword arguments (none; shared: ** unpacking copies it).
_NO_KWARGS: dict = {}


def _load_args(loads, data, tid: int):
    """Unpickle a call's function and arguments, saying which call failed."""
    try:
        return loads(data)
    except BaseException as exc:  # SystemExit from a __reduce__ included
        raise CallUnpicklingError(
            f"the function or arguments of call {tid} could not be unpickled in worker "
            f"pid {os.getpid()}: {exc!r}"
        ) from exc


# Functions sent by name (see _tasks.dump_call): their pickle -> (module,
# name), looked up again per call as unpickling would, minus the import and
# the pickle machinery.
_fn_by_ref: dict[bytes, tuple[Any, str]] = {}
_FN_REFS_MAX = 256


def _load_call(loads, data, tid: int, chan: Channel | None = None) -> tuple:
    """(fn, args, kwargs) of one CALL frame (see _tasks.dump_call: four
    items, by value; two or three, by reference); chan: the frame is flagged
    OOB, its big buffers are in shared memory."""
    call = _load_args(loads if chan is None else chan.loads, data, tid)
    if len(call) == 4:
        return call[1], call[2], call[3]
    ref = call[0]
    where = _fn_by_ref.get(ref)
    fn = None if where is None else getattr(where[0], where[1], None)
    if fn is None:
        fn = _load_args(loads, ref, tid)
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        name = getattr(fn, "__qualname__", None)
        # Only a function its module names (pickled by reference): one that
        # cloudpickle sent by value (a redefined __main__ function, whose old
        # version a forked worker still names) or a partial is loaded each time.
        if module is not None and name is not None and getattr(module, name, None) is fn:
            if len(_fn_by_ref) >= _FN_REFS_MAX:
                _fn_by_ref.clear()
            _fn_by_ref[ref] = (module, name)
    return fn, call[1], call[2] if len(call) == 3 else {}


def _dumps_result(r, dumps, proto, chan=None) -> tuple[bytes, int, int]:
    """(payload, RESULT, frame flags): marshal data for a plain value
    (PLAIN), else a pickle (also for a plain value marshal refuses, as it
    does a str over 2 GiB); or the pickling error as (pickle, ERROR, 0).
    With chan (its shared memory enabled), big buffers go there (FLAG_OOB)."""
    cls = r.__class__
    try:
        if cls in PLAIN:
            if cls is bytes and chan is not None and len(r) >= THRESHOLD and chan.size:
                return _dumps_big(r, dumps, proto, chan)
            try:
                return marshal.dumps(r, MARSHAL_VERSION), frames.KIND_RESULT, frames.FLAG_MARSHAL
            except Exception:  # e.g. a str over 2 GiB: pickle takes it (protocol 4+)
                pass
        if chan is None or not chan.size:
            return dumps(r, proto), frames.KIND_RESULT, 0
        if big_bytes_at_top(r):
            return _dumps_big(r, dumps, proto, chan)
        bufs: list = []
        payload = dumps(r, proto, buffer_callback=bufs.append)
        if bufs or (len(payload) >= THRESHOLD and has_big_bytes(r, payload)):
            return _dumps_big(r, dumps, proto, chan)
        return payload, frames.KIND_RESULT, 0
    except BaseException as exc:
        return _dumps_exception(exc), frames.KIND_ERROR, 0


def _dumps_big(r, dumps, proto, chan: Channel) -> tuple[bytes, int, int]:
    """A result with big buffers: placed in this worker's results arena (made now
    if need be), or in-band when no shared memory can be had."""
    pickled = pickle_big(r)
    if pickled.__class__ is bytes:
        return pickled, frames.KIND_RESULT, 0  # type: ignore[return-value]
    try:
        return chan.encode(pickled), frames.KIND_RESULT, frames.FLAG_OOB  # type: ignore[arg-type]
    except OSError:
        return dumps(r, proto), frames.KIND_RESULT, 0


# One function (76 lines of code): its per-item loop shares the claim group,
# the hold and the flusher's handshake, and a helper would cost a call per
# tiny item (one cffi call per item cost a quarter of tiny-map's throughput).
def _run_batch(call, flags, push, flush, dumps, proto, rss, max_memory, claims=None) -> None:
    """Run the items of one map batch in order, one result frame each.

    The function and each item's arguments are separate pickles: one that
    cannot be unpickled fails its own items, not the worker. With hold set, a
    tiny item's result may wait (at most FLUSH_DELAY) to leave with the next.
    Each item is a call of its own on the claim word (claims, see _lanes),
    claimed in groups: one item at first, then twice as many each time a group
    ran within CLAIM_GROUP_SECONDS (at most CLAIM_GROUP_MAX). A claim is a cffi
    call; one per tiny item cost a quarter of tiny-map's throughput. So an item
    that hangs holds only the items claimed with it, which followed a run of
    fast ones. Once the parent took items back, the rest of the batch is
    theirs too (it was sent whole): the results held are sent, and it ends.
    """
    tids, fn_pickle, arg_pickles, star = call
    loads = pickle.loads
    hold = flags & frames.FLAG_HOLD
    report = flags & frames.FLAG_STARTED
    fn = fn_error = None
    loaded = False  # fn is unpickled for the first item that runs
    claim = lib.px_claim
    held_since = 0.0
    flusher = _flusher
    last = len(tids) - 1
    kwargs = _NO_KWARGS if star else None
    claimed = group = base = 0  # items claimed so far; the last group's size
    group_start = 0.0
    if claims is not None:
        base = claims.seq  # the parent numbered every item: the batch is base+1..
        claims.seq = (base + len(tids)) & SEQ_MASK
    else:
        claimed = len(tids)
    for j, tid in enumerate(tids):
        if j == claimed:
            now = monotonic()
            fast = group and now - group_start < CLAIM_GROUP_SECONDS
            group = min(group * 2, CLAIM_GROUP_MAX) if fast else 1
            group_start = now
            claimed = min(j + group, last + 1)
            if not claim(claims.word, (base + claimed) & SEQ_MASK):
                if held_since:  # no item comes after them in this batch
                    flush()
                    flusher.period += 1
                break
        if not loaded:
            loaded = True
            try:
                fn = _load_args(loads, fn_pickle, tid)
            except BaseException as exc:
                fn_error = exc
                del exc
        if report:
            push(frames.KIND_STARTED, tid)
            flush()
        start = monotonic()
        if held_since:
            flusher.state = IN_CALL  # the flusher may write what is held meanwhile
        if fn_error is not None:
            f, args, kw = _reraise, fn_error, None
        else:
            try:
                f, args, kw = fn, _load_args(loads, arg_pickles[j], tid), kwargs
            except BaseException as exc:
                f, args, kw = _reraise, exc, None
                del exc
        payload, rkind, rflags = _run(f, args, kw, dumps, proto, rss, max_memory)
        del f, args
        arg_pickles[j] = None
        if held_since:
            if flusher.state != IN_CALL:  # it took the writer: wait until it is done
                flusher.busy.acquire()
                flusher.busy.release()
                held_since = 0.0
            flusher.state = IDLE
        push(rkind, tid, payload, rflags)
        del payload
        if hold and j < last:
            now = monotonic()
            if now - start < TINY_CALL:
                if not held_since:
                    held_since = now
                    if flusher is None:
                        flusher = _start_flusher(flush)
                    flusher.hold()
                if now - held_since < FLUSH_DELAY:
                    continue
        flush()
        if held_since:
            flusher.period += 1  # the hold is over: even
            held_since = 0.0


IDLE, IN_CALL, TAKEN = 0, 1, 2


class _Flusher:
    """A thread of the worker that writes held results (see _run_batch) when
    the call after them runs long (a hold outlasting FLUSH_TICK): a result
    must not wait behind a call of unknown length (map(sleep, [0, 0, 6],
    timeout=5) gets its first two results within two ticks).

    The worker's main thread alone uses the writer, but for this: while a
    call runs with results held, ``state`` is IN_CALL, and the flusher may
    switch it to TAKEN and write them. Both test and set
    ``state`` with no call in between, which no other Python thread can
    interleave with (the interpreter switches threads only at calls and
    loops). A main thread that finds TAKEN after its call waits on ``busy``
    until the write is done. ``period`` is odd while results are held (set by
    hold, ended by whoever writes them); ``arm``, held while the flusher has
    nothing to watch, is released by hold. Started at the first hold: a
    worker that runs no map of tiny items has no such thread.
    """

    __slots__ = ("arm", "busy", "flush", "period", "state")

    def __init__(self, flush) -> None:
        self.flush = flush
        self.arm = threading.Lock()
        self.arm.acquire()
        self.busy = threading.Lock()
        self.period = 0
        self.state = IDLE
        threading.Thread(target=self._run, name="pyexec-flusher", daemon=True).start()

    def hold(self) -> None:
        """Results are held from now on (main thread)."""
        self.period += 1  # odd
        if self.arm.locked():
            self.arm.release()

    def _run(self) -> None:
        # It looks every FLUSH_TICK while holds happen (each look takes the GIL
        # from the main thread: not once per hold), and goes back to waiting
        # on arm after a tick with no hold. One hold seen at two looks in a
        # row has lasted a tick: a call behind it runs long.
        while True:
            self.arm.acquire()
            seen = -1
            while True:
                time.sleep(FLUSH_TICK)
                period = self.period
                if period != seen:
                    seen = period
                    continue
                if not period & 1:
                    break  # nothing held for a whole tick
                with self.busy:
                    if self.state == IN_CALL and self.period == period:
                        self.state = TAKEN
                        self.period += 1
                        try:
                            self.flush()
                        except OSError:
                            pass  # the parent is gone: the main thread sees it


_flusher: _Flusher | None = None


def _start_flusher(flush) -> _Flusher:
    global _flusher
    if _flusher is None:
        _flusher = _Flusher(flush)
    return _flusher


def _run_chunk(call, tid, dumps, proto, rss, max_memory) -> tuple[bytes, int]:
    """Run one chunk of a chunked map: (fn pickle, pickled blocks of items,
    star). Answer (payload, flags): the pickle of (results, exception or None,
    seconds) -- the results in order up to the first item that raised, the
    exception as _dumps_exception makes it, the seconds the items took.

    A block that cannot be unpickled fails at its first item. A result that
    cannot be pickled fails at its own item: the results before it go back.
    """
    fn_pickle, blocks, star = call
    loads = pickle.loads
    results: list = []
    err = None
    t0 = monotonic()
    try:
        fn = _load_args(loads, fn_pickle, tid)
        extend = results.extend
        for j in range(len(blocks)):
            items = _load_args(loads, blocks[j], tid)
            blocks[j] = None
            # extend() keeps the results made before an exception.
            extend(itertools.starmap(fn, items) if star else map(fn, items))
            del items
    except BaseException as exc:
        err = _dumps_exception(exc)
        del exc
    seconds = monotonic() - t0
    flags = 0
    if max_memory is not None and rss() > max_memory:
        flags |= frames.FLAG_RECYCLE
    try:
        return dumps((results, err, seconds), proto), flags
    except BaseException:
        pass
    # Some result cannot be pickled: find the first, send those before it.
    for j, r in enumerate(results):
        try:
            dumps(r, proto)
        except BaseException as exc:
            del results[j:]
            err = _dumps_exception(exc)
            del exc
            break
    try:
        return dumps((results, err, seconds), proto), flags
    except BaseException as exc:  # the list as a whole (too deep...): fail at its start
        return dumps(([], _dumps_exception(exc), seconds), proto), flags
