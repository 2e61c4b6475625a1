"""Big pickle buffers through shared memory: zero-copy on the receiving side.

The interface the manager and the worker use (one direction of one worker; the
other direction is the same with the roles swapped)::

    fd = create_arena(size)              # the parent, before the worker starts:
                                         # one segment per direction (memfd)
    sender = Sender(fd, size)            # the process that writes this direction
    receiver = Receiver(fd, size)        # the process that reads it

    enc = sender.dumps(obj)              # Encoded: .payload (bytes, the pickle),
                                         # .descriptors (bytes, b"" when every
                                         # buffer stayed in-band), .fds (0 or 1 fd)
    # -> one frame carries payload and descriptors; enc.fds go with
    #    send_fds(sock, enc.fds) (SCM_RIGHTS); then enc.close() closes them.
    # A call pickled in the caller's thread before its worker is known:
    #    pickled = pickle_oob(obj) there, enc = sender.place(pickled) at dispatch.
    # Never sent after all: sender.discard(enc) frees its slots and fds.

    obj = receiver.loads(payload, descriptors, fds)   # takes ownership of fds
    blob = receiver.take_releases()      # slot ids whose views died: bytes that
                                         # ride on the next message the other way
    sender.on_release(blob)              # those slots may be written again

    receiver.close(); sender.close()     # views still held stay valid

What travels where: buffers under THRESHOLD stay in the pickle. Larger ones
(pickle protocol 5 out-of-band buffers, e.g. numpy arrays; exact bytes,
bytearray and PickleBuffer objects, which the C pickler never shows to a
reducer hook and so go through ``persistent_id``) are copied into a slot of
the arena; a buffer over half the arena, or one that finds no free slot, goes
into the message's overflow segment: one fresh sealed memfd per message,
whatever the number of buffers, passed as an fd (never through the pipe).

Ownership: every slot the receiver hands out as a view is wrapped in its own
exporter (a cffi pointer with a destructor, under a cffi buffer); numpy keeps
that object alive as the base of every array made from it, however sliced.
When it dies its slot id is queued for release; the sender never writes a
slot again before that release arrives, so a held array never changes. Bytes,
bytearray and PickleBuffer objects are copied out on receipt (the type the
standard library gives back), and their slots released at once. The arena's
mapping, and an overflow segment's, are unmapped when the last view of them
dies, whatever was closed before. A segment's fd is closed as soon as it is
mapped (thousands of held views cost no fd), and past MAX_SEGMENT_MAPS held
segments new overflow views are private copies (vm.max_map_count).

Threads: a Sender may be used from several threads (its slot table is under a
lock: ``place`` runs in whichever thread dispatches). A Receiver's ``loads``
runs in one thread at a time; exporters die on any thread, in the garbage
collector too, so the release queue is a deque (append and popleft are atomic)
rather than a lock a finalizer could deadlock on.
"""

from __future__ import annotations

import errno
import functools
import io
import marshal
import os
import pickle
import struct
import threading
import warnings
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pickle import PickleBuffer
from typing import Any

from ._native import ffi, lib

# Buffers smaller than this stay in the pickle: below it a slot, its
# descriptor and its release cost more than copying the bytes through the pipe.
THRESHOLD = 1 << 16
# A direction's arena: large enough for a few big arguments or results in
# flight at once (what does not fit goes through an overflow segment, which
# costs a memfd and fresh page faults), small enough to pre-fault at start.
DEFAULT_ARENA_SIZE = 64 << 20
# Slots one arena may have live (the receiver holding that many views).
DEFAULT_MAX_SLOTS = 4096
# Within an overflow segment, each buffer starts on a page, so the pages of a
# view that died can be given back while the rest is still held.
_PAGE = os.sysconf("SC_PAGESIZE") if hasattr(os, "sysconf") else 4096
FDS_MAX = lib.PX_FDS_MAX
# Overflow segments mapped in this process at once (a held view keeps its
# message's segment mapped): bounded well under vm.max_map_count (65530 by
# default), which counts every other mapping of the process too. Past it, a
# segment's views are copied into private memory and the segment unmapped.
MAX_SEGMENT_MAPS = 16384

# The descriptors: a header (overflow segment size, 0 when none), then one
# entry per out-of-band buffer, in the order the pickle meets them.
_HEADER = struct.Struct("<Q")
_ENTRY = struct.Struct("<BxxxIQQ")  # kind, slot id (0 in the segment), offset, length
# Entry kind: what the receiver makes of it (low bits) | where it is.
_VIEW = 0  # a zero-copy view (an out-of-band PickleBuffer of the pickle)
_BYTES = 1  # copied out into bytes (persistent id)
_BYTEARRAY = 2  # copied out into a bytearray (persistent id)
_WHAT = 3
_IN_SEGMENT = 4  # in the message's overflow segment, not in an arena slot

# The pre-scan that decides whether a pickle needs the persistent_id hook (a
# Python call per pickled object: 4x slower on many small objects, so only
# when a big bytes-like object is near the top, where arguments and results
# sit). Deeper bytes and bytearrays stay in-band: correct, only slower. A bare
# PickleBuffer deeper down goes out of band as a view and arrives as a cffi
# buffer object instead of the bytearray or bytes the stdlib would give.
_SCAN_DEPTH = 4
_SCAN_ITEMS = 64  # containers longer than this: only their first _SCAN_HEAD items
_SCAN_HEAD = 8
_SCAN_BUDGET = 512


def _check(rc: int, what: str) -> int:
    """rc if >= 0, else the OSError for -rc."""
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


def create_arena(size: int = DEFAULT_ARENA_SIZE) -> int:
    """A new anonymous shared-memory segment of size bytes, sealed against resizing:
    its fd (inheritable by a fork only; CLOEXEC). Raises OSError."""
    return _check(lib.px_shm_new(size), "creating a shared-memory arena")


def try_create_arena(size: int = DEFAULT_ARENA_SIZE) -> int | None:
    """create_arena, or None with a RuntimeWarning saying big buffers will go through
    the pipe (no memfd or /dev/shm here, or no memory for it)."""
    try:
        return create_arena(size)
    except OSError as exc:
        warnings.warn(
            f"pyexec: cannot create a shared-memory arena ({exc}); big arguments and "
            "results will be copied through the pipe instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def _map(fd: int, size: int, flags: int) -> Any:
    """A mapping of fd as a cffi ``char *`` that unmaps itself when it dies."""
    out = ffi.new("void **")
    _check(lib.px_map(fd, size, flags, out), "mapping shared memory")
    return ffi.gc(ffi.cast("char *", out[0]), functools.partial(_unmap, size))


def _flags(populate: bool) -> int:
    """px_map flags for an arena: always sealed; faulted in now, or left for prefault().
    Faulting costs about 1 ms a MiB on a VM (92 ms for 64 MiB measured here), so a
    process that starts while its arenas fill can map without and prefault in a thread."""
    return lib.PX_MAP_SEALED | (lib.PX_MAP_POPULATE if populate else 0)


def _prefault(base: Any, size: int) -> None:
    """px_populate over a whole arena mapping (held by the caller meanwhile)."""
    if base is not None:
        _check(lib.px_populate(base, size), "faulting an arena in")


def _unmap(size: int, ptr: Any) -> None:
    lib.px_unmap(ptr, size)


# One token per live segment mapping: len() is their count. A deque, not a counter
# under a lock: the unmapping runs in a finalizer, on any thread.
_segment_maps: deque[None] = deque()


def _map_segment(fd: int, size: int) -> Any:
    """A received overflow segment, mapped (it must be sealed) and counted.

    Not faulted in at map time: its pages exist (the sender wrote them), and a read
    fault maps 16 of them at once (fault-around), so reading a whole 8 MiB view
    through lazy faults costs less here (1.3 ms) than MAP_POPULATE (0.9 ms) plus the
    read (0.9 ms); a view read only in part costs only what is read."""
    out = ffi.new("void **")
    _check(lib.px_map(fd, size, lib.PX_MAP_SEALED, out), "mapping a segment")
    _segment_maps.append(None)
    return ffi.gc(ffi.cast("char *", out[0]), functools.partial(_unmap_segment, size))


def _unmap_segment(size: int, ptr: Any) -> None:
    lib.px_unmap(ptr, size)
    try:
        _segment_maps.pop()
    except IndexError:  # pragma: no cover - one token per mapping
        pass


# ---- the pickling side ------------------------------------------------------


@dataclass
class Pickled:
    """A pickle whose big buffers are not in it yet: ``buffers`` are (kind, raw view)
    pairs, in the order the pickle refers to them. It holds the views until placed."""

    payload: bytes
    buffers: list[tuple[int, memoryview]] = field(default_factory=list)

    def release(self) -> None:
        """Let go of the views (their objects may be resized again)."""
        for _, view in self.buffers:
            view.release()
        self.buffers = []


class _PidPickler(pickle.Pickler):
    """Protocol 5 with exact bytes, bytearray and PickleBuffer objects over the
    threshold taken out as persistent ids (the C pickler shows them to no other hook)."""

    def __init__(self, file: io.BytesIO, threshold: int, buffers: list) -> None:
        super().__init__(file, protocol=5, buffer_callback=self._callback)
        self._threshold = threshold
        self._buffers = buffers
        self._seen: dict[int, int] = {}  # id(obj) -> its persistent id: same object, one copy

    def _callback(self, buf: PickleBuffer) -> bool:
        return _take_buffer(buf, self._threshold, self._buffers)

    def persistent_id(self, obj: Any) -> int | None:
        t = type(obj)
        if t is bytes or t is bytearray:
            if len(obj) < self._threshold:
                return None
            kind = _BYTES if t is bytes else _BYTEARRAY
        elif t is PickleBuffer:
            try:
                view = obj.raw()
            except BufferError:  # not contiguous: let pickle say so, as it would
                return None
            if view.nbytes < self._threshold:
                view.release()
                return None
            kind = _BYTES if view.readonly else _BYTEARRAY
            view.release()
        else:
            return None
        pid = self._seen.get(id(obj))
        if pid is None:
            pid = self._seen[id(obj)] = len(self._buffers)
            view = obj.raw() if t is PickleBuffer else memoryview(obj).cast("B")
            self._buffers.append((kind, view))
        return pid


def _take_buffer(buf: PickleBuffer, threshold: int, buffers: list) -> bool:
    """The buffer_callback: False (out of band, noted in buffers) for a big contiguous
    buffer; True (in-band) otherwise, and for one pickle itself must refuse."""
    try:
        view = buf.raw()
    except BufferError:
        return True
    if view.nbytes < max(threshold, 1):
        view.release()
        return True
    buffers.append((_VIEW, view))
    return False


def _needs_pid(obj: Any, threshold: int) -> bool:
    """Whether a big bytes, bytearray or PickleBuffer sits near the top of obj."""
    stack = [(obj, 0)]
    budget = _SCAN_BUDGET
    while stack and budget > 0:
        o, depth = stack.pop()
        budget -= 1
        t = type(o)
        if t is bytes or t is bytearray:
            if len(o) >= threshold:
                return True
        elif t is PickleBuffer:
            try:
                with memoryview(o) as view:
                    if view.nbytes >= threshold:
                        return True
            except (BufferError, ValueError):
                pass
        elif depth < _SCAN_DEPTH and (t is tuple or t is list or t is dict):
            items: Iterable = o.values() if t is dict else o
            if len(o) > _SCAN_ITEMS:
                items = list(items)[:_SCAN_HEAD] if t is dict else o[:_SCAN_HEAD]
            stack.extend((x, depth + 1) for x in items)
    return False


def pickle_oob(obj: Any, threshold: int = THRESHOLD) -> Pickled:
    """Pickle obj (protocol 5) with its big buffers kept apart, not yet copied anywhere.

    Runs in the caller's thread (an unpicklable object fails here); a Sender places
    the buffers later. Raises what pickling raises."""
    buffers: list[tuple[int, memoryview]] = []
    try:
        if _needs_pid(obj, threshold):
            f = io.BytesIO()
            _PidPickler(f, threshold, buffers).dump(obj)
            payload = f.getvalue()
        else:
            payload = pickle.dumps(
                obj,
                protocol=5,
                buffer_callback=functools.partial(
                    _take_buffer, threshold=threshold, buffers=buffers
                ),
            )
    except BaseException:
        for _, view in buffers:
            view.release()
        raise
    return Pickled(payload, buffers)


@dataclass
class Encoded:
    """One message's pickle, ready to send: payload and descriptors go in the frame,
    fds (at most one: the overflow segment) with SCM_RIGHTS. ``slots`` are the arena
    slots it took (for discard)."""

    payload: bytes
    descriptors: bytes
    fds: list[int]
    slots: list[int]

    def close(self) -> None:
        """Close the fds (once they are sent: the receiver has its own copies)."""
        fds, self.fds = self.fds, []
        for fd in fds:
            lib.px_close(fd)


class Sender:
    """The writing side of one direction: owns the arena's slot table and a mapping.

    fd None: no arena (see try_create_arena); every big buffer then goes through an
    overflow segment, and when even that cannot be made, in-band."""

    def __init__(
        self,
        fd: int | None,
        size: int = DEFAULT_ARENA_SIZE,
        *,
        threshold: int = THRESHOLD,
        max_slots: int = DEFAULT_MAX_SLOTS,
        populate: bool = True,
        mapped: bool = True,
    ) -> None:
        """mapped False: the arena is not mapped here; place() writes with pwrite()
        through a dup of fd (the pages then never count in this process's RSS).
        Mapped, place() still writes pages never written before with pwrite()
        (half the cost of faulting them in through the mapping, measured here),
        and copies into the mapping once they exist. close() closes the dup."""
        self.threshold = threshold
        self._lock = threading.Lock()
        self._size = size if fd is not None else 0
        self._base = None
        self._fd = -1
        self._touched = 0  # the arena's bytes below this were written once
        self._slots = ffi.NULL
        if fd is not None:
            if mapped:
                self._base = _map(fd, size, _flags(populate))
            self._fd = os.dup(fd)
            out = ffi.new("px_slots **")
            _check(lib.px_slots_new(out, size, max_slots), "creating a slot table")
            self._slots = ffi.gc(out[0], lib.px_slots_free)

    def prefault(self) -> None:
        """Fault the arena in now (made with populate=False): from a thread of its own,
        the GIL released, while the process does other things."""
        _prefault(self._base, self._size)

    def dumps(self, obj: Any) -> Encoded:
        """pickle_oob then place: obj pickled, its big buffers in shared memory (in the
        pickle, with a RuntimeWarning, when no shared memory can be had at all)."""
        pickled = pickle_oob(obj, self.threshold)
        if not pickled.buffers:
            return Encoded(pickled.payload, b"", [], [])
        try:
            return self.place(pickled)
        except OSError as exc:
            warnings.warn(
                f"pyexec: no shared memory for a big buffer ({exc}); sent through the pipe",
                RuntimeWarning,
                stacklevel=2,
            )
            return Encoded(pickle.dumps(obj, protocol=5), b"", [], [])

    def place(self, pickled: Pickled) -> Encoded:
        """Copy pickled's buffers into arena slots (or this message's overflow segment)
        and describe where they are. Releases pickled's views. Raises OSError when no
        shared memory can be had at all (then nothing is held)."""
        buffers = pickled.buffers
        if not buffers:
            return Encoded(pickled.payload, b"", [], [])
        entries: list[tuple[int, int, int, int]] = []  # kind, slot id, offset, length
        overflow: list[tuple[int, memoryview]] = []  # index in entries, view
        slots: list[int] = []
        sid = ffi.new("uint32_t *")
        off = ffi.new("uint64_t *")
        # Held here: a close() in another thread must not unmap it under a copy
        # (an unmapped Sender's fd must not be closed under place(): one thread).
        base, table, wfd = self._base, self._slots, self._fd
        try:
            for kind, view in buffers:
                n = view.nbytes
                rc = -errno.ENOSPC
                if table != ffi.NULL:
                    with self._lock:
                        rc = lib.px_slots_alloc(table, n, sid, off)
                if rc == 0:
                    slots.append(sid[0])
                    at = off[0]
                    if base is not None and at + n <= self._touched:
                        lib.px_copy(base + at, ffi.from_buffer(view), n)
                    else:
                        _pwrite_all(wfd, view, at)
                        if at + n > self._touched:
                            self._touched = at + n
                    entries.append((kind, sid[0], off[0], n))
                else:
                    overflow.append((len(entries), view))
                    entries.append((kind | _IN_SEGMENT, 0, 0, n))
            fds: list[int] = []
            seg_size = 0
            if overflow:
                seg_size, fd = self._overflow(overflow, entries)
                fds.append(fd)
        except BaseException:
            self._release_ids(slots)
            pickled.release()
            raise
        pickled.release()
        descriptors = _HEADER.pack(seg_size) + b"".join(_ENTRY.pack(*e) for e in entries)
        return Encoded(pickled.payload, descriptors, fds, slots)

    def _overflow(self, overflow: list, entries: list) -> tuple[int, int]:
        """One sealed segment for all of overflow, each buffer on its own pages; fills
        in their offsets. Returns (segment size, its fd)."""
        at = 0
        for i, _view in overflow:
            kind, _, _, n = entries[i]
            entries[i] = (kind, 0, at, n)
            at += (n + _PAGE - 1) // _PAGE * _PAGE
        fd = _check(lib.px_shm_new(at), "creating an overflow segment")
        try:
            # Written through the fd, not a mapping: fresh pages cost half as much
            # that way here, and never count in this process's RSS.
            for i, view in overflow:
                _pwrite_all(fd, view, entries[i][2])
        except BaseException:
            lib.px_close(fd)
            raise
        return at, fd

    @property
    def active(self) -> bool:
        """True when it has an arena (else every big buffer takes an overflow segment)."""
        return self._slots != ffi.NULL

    def on_release(self, blob: bytes) -> None:
        """The receiver is done with these slots (a take_releases blob). Raises
        ValueError for ids that were not live (a protocol error; the rest are freed)."""
        if not blob or self._slots == ffi.NULL:
            return
        ids = array("I")
        ids.frombytes(blob)
        self._release_ids(ids)

    def _release_ids(self, ids: Iterable[int]) -> None:
        ids = array("I", ids)
        with self._lock:
            if not ids or self._slots == ffi.NULL:  # closed: nothing to free
                return
            bad = lib.px_slots_release_many(
                self._slots, ffi.from_buffer("uint32_t[]", ids), len(ids)
            )
        if bad:
            raise ValueError(f"{bad} released slot id(s) were not live")

    def discard(self, enc: Encoded) -> None:
        """A message that will never be sent: free its slots, close its fds."""
        slots, enc.slots = enc.slots, []
        enc.close()
        self._release_ids(slots)

    def reset(self) -> None:
        """The receiver is gone (its process died): every slot is free again, and any
        release of an earlier id is refused from now on."""
        with self._lock:
            if self._slots != ffi.NULL:
                lib.px_slots_reset(self._slots)

    def stats(self) -> tuple[int, int, int]:
        """(live slots, bytes they cover, largest free gap)."""
        out = ffi.new("uint64_t[3]")
        with self._lock:
            lib.px_slots_stats(self._slots, out)
        return out[0], out[1], out[2]

    def close(self) -> None:
        """Unmap the arena and drop the slot table (the receiver's views are its own).
        A place() running meanwhile finishes on what it holds."""
        with self._lock:
            self._base = None
            self._slots = ffi.NULL
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


@functools.cache
def _uninitialized_bytes() -> Callable[[None, int], bytes] | None:
    """PyBytes_FromStringAndSize(NULL, n) through ctypes: a bytes object of n bytes
    whose memory is malloc'ed but not written yet (None where ctypes cannot give it).
    Looked up at the first big bytes received: ctypes is not imported before."""
    try:
        import ctypes

        make = ctypes.pythonapi.PyBytes_FromStringAndSize
    except (ImportError, AttributeError, OSError):  # pragma: no cover - not CPython
        return None
    make.restype = ctypes.py_object
    make.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    return make


def _copy_bytes(ptr: Any, n: int) -> bytes:
    """A new bytes object holding the n bytes at ptr.

    Written with the GIL released: most of what a big copy costs is the page faults of
    memory never touched before (5 to 7 ms for 8 MiB on a VM, against 1 ms for the
    copy), and ``bytes(buffer)`` pays them holding the GIL, so the receiving thread
    stalled every other thread of the process for as long. The new object is ours
    alone until returned: nothing else can see it, nor its hash, while it is filled."""
    make = _uninitialized_bytes()
    if make is None:  # pragma: no cover - not CPython
        return bytes(ffi.buffer(ptr, n))
    out = make(None, n)
    lib.px_copy_fresh(ffi.from_buffer(out), ptr, n)
    return out


def _pwrite_all(fd: int, view: memoryview, off: int) -> None:
    """Write all of view at offset off of fd (os.pwrite releases the GIL)."""
    n = view.nbytes
    done = os.pwrite(fd, view, off)
    if done < n:
        with memoryview(view).cast("B") as flat:
            while done < n:
                done += os.pwrite(fd, flat[done:], off + done)


# ---- the receiving side -----------------------------------------------------


class _State:
    """What an exporter's destructor needs: the queue, and whether anyone still reads it."""

    __slots__ = ("closed", "releases")

    def __init__(self) -> None:
        self.releases: deque[int] = deque()
        self.closed = False


def _slot_done(state: _State, sid: int, mapping: Any, _ptr: Any) -> None:
    """An arena view died: queue its slot for release (any thread, maybe the GC's).
    mapping is held here so the arena stays mapped while the view lives."""
    if not state.closed:
        state.releases.append(sid)


def _segment_done(mapping: Any, length: int, ptr: Any) -> None:
    """A view of an overflow segment died: give its pages back at once (the segment
    itself goes when its last view does)."""
    lib.px_discard(ptr, length)


class _Unpickler(pickle.Unpickler):
    """Unpickling with the copied-out buffers (persistent ids) at hand."""

    def __init__(self, file: io.BytesIO, buffers: Iterable, copied: Callable[[int], Any]) -> None:
        super().__init__(file, buffers=buffers)
        self._copied = copied

    def persistent_load(self, pid: Any) -> Any:
        return self._copied(pid)


class Load:
    """One received message between Receiver.prepare and its object: copy() fills
    the bytes objects its big bytes become (the GIL released: 8 MiB into fresh
    memory costs about 4 ms here, mostly page faults), finish() unpickles. copy()
    may run in another thread than the one that prepared it (the parent's copier,
    see _copier); nothing else sees the bytes objects before finish(). Holds the
    mappings its buffers are in, so they stay mapped until it is done."""

    __slots__ = ("_maps", "_state", "copies", "done", "fresh", "marshalled", "payload", "views")

    def __init__(
        self,
        payload: bytes | memoryview,
        state: _State | None = None,
        maps: tuple = (),
        marshalled: bool = False,
    ) -> None:
        """state None: a message without buffers (marshal data when marshalled)."""
        self.payload = payload
        self.marshalled = marshalled
        self._state = state
        self._maps = maps
        self.views: list = []
        self.copies: dict[int, tuple[int, Any, int]] = {}  # pid -> kind, pointer, length
        self.done: list[int] = []  # slots of copied-out buffers: released by finish()
        self.fresh: dict[int, bytes] = {}  # pid -> its bytes object, once copy() made it

    def keep(self) -> None:
        """Copy the payload out of the buffer it was read into (before that is reused)."""
        self.payload = bytes(self.payload)

    @property
    def copy_bytes(self) -> int:
        """How many bytes copy() copies."""
        return sum(n for kind, _ptr, n in self.copies.values() if kind & _WHAT == _BYTES)

    def copy(self) -> None:
        """Make the bytes objects of the big bytes and fill them (any thread)."""
        for pid, (kind, _ptr, _n) in self.copies.items():
            if kind & _WHAT == _BYTES:
                self._copied(pid)

    def finish(self) -> Any:
        """The message's object; its copied-out slots released, whatever happens."""
        if self._state is None:  # no buffers: nothing to let go
            return (marshal.loads if self.marshalled else pickle.loads)(self.payload)
        try:
            if not self.copies:
                return pickle.loads(self.payload, buffers=self.views)
            return _Unpickler(io.BytesIO(self.payload), self.views, self._copied).load()
        finally:
            self.abandon()

    def _copied(self, pid: Any) -> Any:
        """persistent_load: the copied-out buffer pid (one object however often named),
        made now unless copy() made it."""
        obj = self.fresh.get(pid) if type(pid) is int else None
        if obj is not None:
            return obj
        if type(pid) is not int or pid not in self.copies:
            raise pickle.UnpicklingError(f"unknown buffer {pid!r}")
        kind, ptr, n = self.copies[pid]
        if kind & _WHAT == _BYTES:
            obj = _copy_bytes(ptr, n)
        else:
            obj = bytearray(ffi.buffer(ptr, n))
        self.fresh[pid] = obj
        return obj

    def abandon(self) -> None:
        """Let go of everything: the slots queued for release, the segment pages of
        copied-out buffers given back, the views dropped (once; finish() does it)."""
        self.views = []
        self.fresh = {}
        if self._state is not None and not self._state.closed:
            self._state.releases.extend(self.done)
        self.done = []
        for kind, ptr, n in self.copies.values():
            if kind & _IN_SEGMENT:  # copied (or never will be): its pages go back now
                lib.px_discard(ptr, n)
        self.copies = {}
        self._maps = ()


class Receiver:
    """The reading side of one direction: maps the arena, makes views, queues releases."""

    def __init__(
        self, fd: int | None, size: int = DEFAULT_ARENA_SIZE, *, populate: bool = True
    ) -> None:
        self._size = size if fd is not None else 0
        self._base = _map(fd, size, _flags(populate)) if fd is not None else None
        self._state = _State()

    def prefault(self) -> None:
        """Fault the arena in now (made with populate=False), as Sender.prefault."""
        _prefault(self._base, self._size)

    def loads(self, payload: bytes | memoryview, descriptors: bytes, fds: list[int]) -> Any:
        """Unpickle payload with its buffers as described. Takes ownership of fds (all
        closed before returning, whatever happens). Raises pickle.UnpicklingError for
        descriptors that do not fit what arrived, or what unpickling raises."""
        load = self.prepare(payload, descriptors, fds)
        load.copy()
        return load.finish()

    def prepare(self, payload: bytes | memoryview, descriptors: bytes, fds: list[int]) -> Load:
        """The first half of loads, which must run in the order messages arrive
        (the arena this message's slots are in): its segment mapped, its views
        made. The Load's copy() may then run in any thread, and its finish()
        after. Takes ownership of fds (closed before returning)."""
        try:
            if not descriptors:
                return Load(payload)
            return self._prepare(payload, descriptors, fds)
        finally:
            for fd in fds:
                lib.px_close(fd)

    def _prepare(self, payload: bytes | memoryview, descriptors: bytes, fds: list[int]) -> Load:
        (seg_size,) = _HEADER.unpack_from(descriptors)
        count, rest = divmod(len(descriptors) - _HEADER.size, _ENTRY.size)
        if rest or (seg_size and len(fds) != 1) or (not seg_size and fds):
            raise pickle.UnpicklingError("malformed buffer descriptors")
        # Too many segments held already: this one's views become private copies.
        private = len(_segment_maps) >= MAX_SEGMENT_MAPS
        segment = _map_segment(fds[0], seg_size) if seg_size else None
        load = Load(payload, self._state, (self._base, segment))
        views, copies, done = load.views, load.copies, load.done
        for i in range(count):
            kind, sid, off, n = _ENTRY.unpack_from(descriptors, _HEADER.size + i * _ENTRY.size)
            if kind & _IN_SEGMENT:
                base, limit = segment, seg_size
            else:
                base, limit = self._base, self._size
            if base is None or n == 0 or off > limit or n > limit - off or (kind & _WHAT) == 3:
                load.abandon()
                raise pickle.UnpicklingError("buffer descriptor outside its shared memory")
            ptr = base + off
            if kind & _WHAT != _VIEW:
                copies[i] = (kind, ptr, n)
                if not kind & _IN_SEGMENT:
                    done.append(sid)
            elif kind & _IN_SEGMENT and private:
                views.append(bytearray(ffi.buffer(ptr, n)))
            elif kind & _IN_SEGMENT:
                owner = ffi.gc(ptr, functools.partial(_segment_done, segment, n))
                views.append(ffi.buffer(owner, n))
            else:
                owner = ffi.gc(ptr, functools.partial(_slot_done, self._state, sid, base))
                views.append(ffi.buffer(owner, n))
        return load

    def discard(self, descriptors: bytes, fds: list[int]) -> None:
        """A message that will never be loaded (a call its worker may not run):
        its arena slots are queued for release at once, as if its views had
        died; its segment fds are closed (all of fds, whatever happens)."""
        try:
            count = (len(descriptors) - _HEADER.size) // _ENTRY.size
            state = self._state
            for i in range(max(count, 0)):
                kind, sid, _off, _n = _ENTRY.unpack_from(
                    descriptors, _HEADER.size + i * _ENTRY.size
                )
                if not kind & _IN_SEGMENT and not state.closed:
                    state.releases.append(sid)
        finally:
            for fd in fds:
                lib.px_close(fd)

    def take_releases(self) -> bytes:
        """Slot ids whose views died since the last call, for the sender's on_release
        (b"" when none)."""
        q = self._state.releases
        if not q:
            return b""
        ids = array("I")
        try:
            while True:
                ids.append(q.popleft())
        except IndexError:
            pass
        return ids.tobytes()

    def close(self) -> None:
        """Stop queuing releases and let go of the arena: it is unmapped now, or when
        the last view still held dies."""
        self._state.closed = True
        self._state.releases.clear()
        self._base = None


# ---- fd passing -------------------------------------------------------------


def send_fds(sock: int, fds: list[int], data: bytes = b"F") -> None:
    """Send fds over the Unix socket sock (SCM_RIGHTS), FDS_MAX a message, each with
    data (one byte by default; the receiver reads the same amount). Blocking."""
    for i in range(0, len(fds), FDS_MAX):
        chunk = fds[i : i + FDS_MAX]
        buf = ffi.new("int[]", chunk)
        _check(lib.px_send_fds(sock, buf, len(chunk), data, len(data)), "sending fds")


def recv_fds(sock: int, count: int, size: int = 1) -> list[int]:
    """Receive count fds sent by send_fds (size bytes of data each message). Raises
    OSError (EMSGSIZE: fds were dropped; EOF as ECONNRESET); no fd left open then."""
    out: list[int] = []
    buf = ffi.new("char[]", max(size, 1))
    fds = ffi.new("int[]", FDS_MAX)
    n = ffi.new("int *")
    try:
        while len(out) < count:
            want = min(FDS_MAX, count - len(out))
            got = lib.px_recv_fds(sock, buf, size, fds, want, n)
            if got == 0:
                raise OSError(errno.ECONNRESET, "the fd sender is gone")
            _check(got, "receiving fds")
            out.extend(fds[k] for k in range(n[0]))
    except BaseException:
        for fd in out:
            lib.px_close(fd)
        raise
    return out
