"""Frames over pipes: the frame words, the decoder, the writer, the reader's spin.

A frame is a 24-byte header (magic, kind, flags, id, payload length; see
csrc/pyexec.h) and a payload. ``Decoder`` takes bytes (from an fd or fed)
and gives frames out in batches; ``Writer`` queues frames for one fd and
writes them without blocking. Each Decoder and Writer belongs to one
reader or writer at a time: the manager thread, or a caller's thread in a
hand-off that holds the manager's dispatch_lock (see _handoff).
"""

from __future__ import annotations

import errno
import os
import struct
from collections import deque
from collections.abc import Iterable

from ._native import check, ffi, lib

HEADER = struct.Struct("<BBHIQQ")
HEADER_SIZE = lib.PX_HEADER_SIZE
assert HEADER.size == HEADER_SIZE
MAGIC = lib.PX_MAGIC
KIND_CALL = lib.PX_KIND_CALL
KIND_EXIT = lib.PX_KIND_EXIT
KIND_RESULT = lib.PX_KIND_RESULT
KIND_ERROR = lib.PX_KIND_ERROR
KIND_EXIT_ACK = lib.PX_KIND_EXIT_ACK
KIND_FATAL = lib.PX_KIND_FATAL
KIND_BATCH = lib.PX_KIND_BATCH
KIND_READY = lib.PX_KIND_READY
KIND_STARTED = lib.PX_KIND_STARTED
FLAG_RECYCLE = lib.PX_FLAG_RECYCLE
FLAG_HOLD = lib.PX_FLAG_HOLD
FLAG_STARTED = lib.PX_FLAG_STARTED
FLAG_MARSHAL = lib.PX_FLAG_MARSHAL
FLAG_OOB = lib.PX_FLAG_OOB
IOV_MAX = lib.PX_IOV_MAX
READ_CHUNK = lib.PX_READ_CHUNK
# A frame's first word, as the decoder gives it: kind | flags << FLAG_SHIFT.
KIND_MASK = 0xFF
FLAG_SHIFT = 8

# Frames whose payload is at least this long are written from the pickle's own
# buffer; smaller ones are copied into one coalesced buffer, so a burst of
# small frames leaves in one writev.
BIG_PAYLOAD = 64 * 1024
# The decoder's payload limit: far above any sensible pickle, small enough
# that a garbage length cannot make it allocate the machine.
MAX_PAYLOAD = 1 << 36


def _spin_from_env() -> float:
    """PYEXEC_SPIN_US in seconds: how long a reader polls before it sleeps."""
    text = os.environ.get("PYEXEC_SPIN_US", "").strip()
    try:
        us = 20.0 if text == "" else float(text)
    except ValueError:
        us = -1.0
    if not 0 <= us <= 1_000_000:
        raise ValueError(f"PYEXEC_SPIN_US must be microseconds from 0 to 1000000, not {text!r}")
    return us / 1e6


# A reader about to sleep on a pipe polls it for this long first (a worker
# that ran out of calls; result() reading its own call's result): the answer
# of a short call usually comes sooner, and the round trip then pays no sleep
# and wake-up on that side (45 -> 20 us here). The price: at most this much
# CPU each time a worker goes idle or a result() waits. PYEXEC_SPIN_US=0 turns
# it off.
SPIN = _spin_from_env()
SPIN_NS = round(SPIN * 1e9)
# After the second empty poll in a row, the next wait sleeps at once; after
# each further one, twice as many, up to this many (see Spin).
SPIN_SKIP_MAX = 64


class Spin:
    """Whether a reader's next wait polls first (for SPIN): only while polling pays.

    The poll itself is Decoder.read_frames(fd, SPIN_NS): reads again and
    again in the core, the GIL released, until bytes come or the time is up.

    A poll that comes up empty means the other side was not running beside
    this one: it shares this CPU (both pay the whole poll, taking turns: a
    round trip took 60 us instead of 20 on a fresh pool here, until the
    scheduler moved one of them), or its answers are slow. A single empty poll
    may be bad luck (a late answer; the other side preempted), and a wait that
    does not poll costs a sleep and a wake-up: from the second empty poll in
    a row on, the next waits sleep at once, 1, 2, 4, ... up to SPIN_SKIP_MAX
    of them; a poll that finds data starts afresh. Racy by design when
    threads share one: it only steers.
    """

    __slots__ = ("backoff", "skip")

    def __init__(self) -> None:
        self.skip = 0  # waits left that sleep without polling
        self.backoff = 0  # what skip becomes at the next empty poll

    def first(self) -> bool:
        """True if this wait polls first (counts a skipped one otherwise)."""
        if self.skip:
            self.skip -= 1
            return False
        return SPIN > 0

    def found(self) -> None:
        """The poll found data."""
        self.backoff = 0

    def missed(self) -> None:
        """The poll came up empty."""
        self.skip = self.backoff
        self.backoff = min(SPIN_SKIP_MAX, 2 * self.backoff or 1)


class ChannelError(OSError):
    """A channel's byte stream is malformed or its fd failed."""


def encode(kind: int, tid: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """One whole frame as bytes (for small frames and tests)."""
    return HEADER.pack(MAGIC, kind, flags, 0, tid, len(payload)) + payload


# px_decoder_rewind's offset for "every frame of the last take".
_ALL = (1 << 64) - 1
# Frames taken per px_decoder_next_many call.
TAKE_MAX = 256

# What px_decoder_read_many leaves in its px_read_status and meta array, read
# with one struct call each: unpacking the meta of n frames this way costs a
# third of ffi.unpack, the first cost of every result a reader takes. The
# status's fields, in order: read, error, buf, cap (checked here, once).
_STATUS_FIELDS = ("read", "error", "buf", "cap")
_STATUS_STRUCT = struct.Struct("=4q")
assert ffi.sizeof("px_read_status") == _STATUS_STRUCT.size
assert [ffi.offsetof("px_read_status", f) for f in _STATUS_FIELDS] == [0, 8, 16, 24]
_STATUS = _STATUS_STRUCT.unpack_from
_META = [struct.Struct(f"={4 * n}Q").unpack_from for n in range(TAKE_MAX + 1)]


class Decoder:
    """An incremental frame decoder: bytes in (from an fd or fed), frames out."""

    __slots__ = (
        "_base",
        "_buf",
        "_d",
        "_meta",
        "_meta_buf",
        "_status",
        "_status_buf",
        "_view",
        "failed",
        "taken",
    )

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        out = ffi.new("px_decoder **")
        check(lib.px_decoder_new(out, max_payload))
        self._d = ffi.gc(out[0], lib.px_decoder_free)
        self._meta = ffi.new("uint64_t[]", 4 * TAKE_MAX)
        self._meta_buf = ffi.buffer(self._meta)
        self._base = ffi.new("char **")
        self._status = ffi.new("px_read_status *")
        self._status_buf = ffi.buffer(self._status)
        # A view of the core's whole buffer, kept while the buffer stays where
        # it is: (its address, its capacity) and the view.
        self._buf: tuple[int, int] = (0, 0)
        self._view: memoryview | None = None
        # True when the frames just taken were followed by a malformed one:
        # the next take raises.
        self.failed = False
        # The meta of the frames the last take handed out (see rewind).
        self.taken: tuple[int, ...] = ()

    def feed(self, data: bytes) -> None:
        """Append bytes."""
        self._raise_for(lib.px_decoder_feed(self._d, data, len(data)))

    def read(self, fd: int) -> int:
        """One read from fd: bytes read, 0 at end of file, -1 when it would block.

        EINTR is retried here after Python has run its signal handlers.
        """
        while True:
            rc = lib.px_decoder_read(self._d, fd)
            if rc != -errno.EINTR:
                return self._read_result(rc)

    def _read_result(self, rc: int) -> int:
        """A core read's result as read returns it; raises for a failure."""
        if rc >= 0:
            return rc
        if rc != -errno.EAGAIN and rc != -errno.EINTR:
            self._raise_for(rc)
        return -1

    def read_frames(
        self, fd: int, spin_ns: int = 0
    ) -> tuple[int, tuple[int, ...], memoryview | None]:
        """read, then take, in one call into the core: (what read returns,
        then take's two values). Until ``drained`` says so, take before
        reading again. With spin_ns, an empty non-blocking fd is read again
        for up to that many nanoseconds, in the core (see Spin)."""
        while True:
            try:
                n = lib.px_decoder_read_many(
                    self._d, fd, self._meta, TAKE_MAX, self._base, self._status, spin_ns
                )
                rc, error, buf, cap = _STATUS(self._status_buf)
                if rc != -errno.EINTR or n:  # else: signal handlers have run, read again
                    got = self._read_result(rc)
                    meta, view = self._frames(n, error, buf, cap)
                    self.taken = meta
                    return got, meta, view
            except BaseException:
                self._give_back_all()
                raise

    @staticmethod
    def each(meta: tuple[int, ...]) -> Iterable[tuple[int, ...]]:
        """The frames of a take's meta, as (kind | flags << 8, id, offset,
        length) each. A single frame, the usual case on a round trip, costs
        no zip (a third of a microsecond, half again with strict=True)."""
        if len(meta) == 4:
            return (meta,)
        it = iter(meta)
        return zip(it, it, it, it)  # noqa: B905 - the core gives 4 values per frame

    def drained(self, meta: tuple[int, ...]) -> bool:
        """True when the frames just taken (meta) were the last complete ones:
        fewer than TAKE_MAX, and no malformed frame behind them."""
        return len(meta) < 4 * TAKE_MAX and not self.failed

    def take(self) -> tuple[tuple[int, ...], memoryview | None]:
        """Up to TAKE_MAX complete frames: a flat tuple (kind | flags << 8, id,
        offset, length per frame) and a view of the buffer the offsets point
        into. The view is valid until the next read or feed: slice it, use the
        slices, drop them. ((), None) when no frame is complete.
        """
        try:
            n = lib.px_decoder_read_many(
                self._d, -1, self._meta, TAKE_MAX, self._base, self._status, 0
            )
            _rc, error, buf, cap = _STATUS(self._status_buf)
            meta, view = self._frames(n, error, buf, cap)
            self.taken = meta
            return meta, view
        except BaseException:
            self._give_back_all()
            raise

    def _give_back_all(self) -> None:
        """An exception (a signal handler's, the only kind a KeyboardInterrupt
        can come from here) after the core took frames and before they were
        returned: give them all back, to come out of the next take."""
        self.taken = ()
        lib.px_decoder_rewind(self._d, _ALL)

    def rewind(self, offset: int) -> bool:
        """Give back frames the last take handed out, from the one whose
        payload starts at offset (its meta's offset) on: the next take hands
        them out again. For a reader interrupted before it used them all."""
        self.taken = ()
        return lib.px_decoder_rewind(self._d, offset - HEADER_SIZE) == 0

    def _frames(
        self, n: int, error: int, buf: int, cap: int
    ) -> tuple[tuple[int, ...], memoryview | None]:
        """What take returns, for n frames left in _meta by the core (or its
        error); error, buf, cap: the core's px_read_status fields."""
        self.failed = error != 0
        if n <= 0:
            self._raise_for(n)
            return (), None
        where = buf, cap
        if where != self._buf:  # the buffer moved or grew: a view of it anew
            self._view = memoryview(ffi.buffer(self._base[0], cap))
            self._buf = where
        return _META[n](self._meta_buf), self._view

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        """Every complete frame now buffered, as (kind, flags, id, payload copy).

        Frames before a malformed one come out first; the error on the next call.
        """
        out: list[tuple[int, int, int, bytes]] = []
        while True:
            try:
                meta, view = self.take()
            except ChannelError:
                if out:
                    return out  # the error is sticky: the next call raises it
                raise
            if not meta:
                return out
            for i in range(0, len(meta), 4):
                off = meta[i + 2]
                out.append(
                    (
                        meta[i] & KIND_MASK,
                        meta[i] >> FLAG_SHIFT,
                        meta[i + 1],
                        bytes(view[off : off + meta[i + 3]]),
                    )
                )

    @property
    def buffered(self) -> int:
        """Bytes held that do not make a whole frame yet."""
        return lib.px_decoder_buffered(self._d)

    @property
    def error(self) -> str:
        """The sticky error's text, or ''."""
        return ffi.string(lib.px_decoder_error(self._d)).decode()

    def _raise_for(self, rc: int) -> None:
        if rc >= 0:
            return
        msg = self.error or os.strerror(-rc)
        raise ChannelError(-rc, msg)


# ---- the writer -----------------------------------------------------------


class Writer:
    """Frames queued for one fd, sent without blocking and without copying big payloads."""

    __slots__ = ("_fd", "_iov", "_off", "_segs", "_tail")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._segs: deque = deque()  # buffers to send, in order
        self._off = 0  # bytes of _segs[0] already sent
        self._tail = bytearray()  # small frames not yet in _segs
        self._iov = ffi.new("px_iov[]", IOV_MAX)

    def push(self, kind: int, tid: int, payload: bytes = b"", flags: int = 0) -> None:
        """Queue one frame."""
        n = len(payload)
        if n < BIG_PAYLOAD:
            tail = self._tail
            tail += HEADER.pack(MAGIC, kind, flags, 0, tid, n)
            if n:
                tail += payload
        else:
            self._tail += HEADER.pack(MAGIC, kind, flags, 0, tid, n)
            self._segs.append(self._tail)
            self._segs.append(payload)
            self._tail = bytearray()

    def send(self, kind: int, tid: int, payload: bytes = b"", flags: int = 0) -> bool:
        """push, then flush: one small frame behind nothing queued is written
        at once, as one buffer. True when everything queued is written."""
        n = len(payload)
        if n >= BIG_PAYLOAD or self._segs or self._tail:
            self.push(kind, tid, payload, flags)
            return self.flush()
        frame = HEADER.pack(MAGIC, kind, flags, 0, tid, n) + payload
        rc = lib.px_write(self._fd, frame, len(frame))
        if rc == len(frame):
            return True
        if rc == -errno.EAGAIN:
            rc = 0
        check(rc)
        self._tail = bytearray(frame[rc:])  # the pipe is full: the rest waits
        return False

    @property
    def pending(self) -> bool:
        """True while some queued bytes are not written."""
        return bool(self._segs) or bool(self._tail)

    def flush(self) -> bool:
        """Write what the fd takes now. True when everything queued is written.

        Raises OSError (EPIPE when the reader is gone).
        """
        segs = self._segs
        if self._tail:
            segs.append(self._tail)
            self._tail = bytearray()
        iov = self._iov
        while segs:
            keep = []
            n = 0
            for seg in segs:
                buf = ffi.from_buffer(seg)
                keep.append(buf)
                if n == 0 and self._off:
                    iov[0].base = buf + self._off
                    iov[0].len = len(seg) - self._off
                else:
                    iov[n].base = buf
                    iov[n].len = len(seg)
                n += 1
                if n == IOV_MAX:
                    break
            rc = lib.px_writev(self._fd, iov, n)
            if rc == -errno.EAGAIN:
                return False
            check(rc)
            total = rc + self._off
            while segs and total >= len(segs[0]):
                total -= len(segs.popleft())
            self._off = total
            if total:
                return False
        return True
