"""Big payloads in the pool: one worker's shared-memory channel, both ends.

Each worker has a unix socketpair beside its pipes (made with the pipes, one
syscall; pipes cannot carry fds). Nothing else exists until a payload has a
buffer of THRESHOLD bytes or more: then its sender creates its direction's
arena (a sealed memfd of ``arena_size`` bytes; the parent makes the calls'
arena, the worker the results'), sends its fd over the socket and places the
buffers in it (see _buffers). A frame flagged FLAG_OOB carries, before its
pickle::

    _OOB header: new arena size (0: none), releases, descriptors, fd count
    releases      slot ids of the other direction's arena whose views died
    descriptors   where this message's buffers are (_buffers.Receiver.loads)
    payload       the pickle (or marshal data, with FLAG_MARSHAL)

and its fds (the new arena's first, then the overflow segment's) were sent
on the socket before the frame was written, so the reader finds them there.
Releases also ride on small frames, whenever some are waiting.

Who calls what: the parent's dispatch (``encode`` for a call, in the manager
thread or a hand-off under dispatch_lock) and outcomes (``loads`` for a
result); the worker's loop (``loads`` for a call, ``discard`` for a call it
may not run, see _lanes' claim word; ``encode`` and ``wrap`` for a result).
One Channel per end, used by one thread at a time. ``close`` when the worker
is gone: the parent's views of its results stay valid (each keeps
its mapping), its calls' arena goes, and a replacement gets a new Channel.
"""

from __future__ import annotations

import os
import pickle
import struct
import warnings
from itertools import islice
from typing import Any

from . import _fds
from ._buffers import (
    Load,
    Pickled,
    Receiver,
    Sender,
    _needs_pid,
    create_arena,
    pickle_oob,
    recv_fds,
    send_fds,
)

# Buffers (numpy arrays, PickleBuffer users; exact bytes and bytearray near the
# top of a call's arguments or a result) of at least this many bytes travel
# through shared memory: below about 64 KiB the arena saves nothing, at 256 KiB
# it is 3x faster than the pipe here.
THRESHOLD = 128 << 10
# Bytes of one direction's arena (a pool reserves at most two per worker,
# created on first use; pages are taken only as buffers are written).
DEFAULT_ARENA_SIZE = 64 << 20
ARENA_ENV = "PYEXEC_ARENA_SIZE"

_OOB = struct.Struct("<QIII")  # new arena size, releases, descriptors (bytes), fds
# big_bytes_at_top looks at this many items of a container: a long list of
# small objects costs no scan of its own (has_big_bytes still finds the rest).
_TOP_ITEMS = 8


def arena_size(value: int | None) -> int:
    """The arena size a pool uses: value, else $PYEXEC_ARENA_SIZE (bytes; a K, M or G
    suffix allowed), else DEFAULT_ARENA_SIZE. 0: no shared memory, the pipe only."""
    if value is None:
        text = os.environ.get(ARENA_ENV, "").strip()
        if not text:
            return DEFAULT_ARENA_SIZE
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        try:
            value = int(text[:-1] if scale > 1 else text) * scale
        except ValueError:
            raise ValueError(  # noqa: B904 - the text says it all
                f"{ARENA_ENV} must be a size in bytes (K, M, G allowed), not {text!r}"
            )
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"arena_size must be a number of bytes >= 0, not {value!r}")
    if 0 < value < 2 * THRESHOLD:
        raise ValueError(f"arena_size must be 0 or at least {2 * THRESHOLD} bytes")
    return value


def has_big_bytes(obj: Any, pickled: bytes) -> bool:
    """Whether obj, whose in-band pickle is pickled, has big bytes, bytearray or
    PickleBuffer objects near its top (only looked for when the pickle is big)."""
    return len(pickled) >= THRESHOLD and _needs_pid(obj, THRESHOLD)


def big_bytes_at_top(obj: Any) -> bool:
    """Whether obj is, or directly holds (a tuple's or list's items, a dict's
    values; the first _TOP_ITEMS of them), an exact bytes or bytearray of
    THRESHOLD bytes or more. Such an object goes to pickle_big at once: an
    in-band pickle first would copy it whole into fresh memory (8 MiB: about
    7 ms of page faults, the GIL held) only for has_big_bytes to find it there."""
    cls = obj.__class__
    if cls is tuple or cls is list:
        items = obj if len(obj) <= _TOP_ITEMS else obj[:_TOP_ITEMS]
    elif cls is dict:
        items = islice(obj.values(), _TOP_ITEMS)
    else:
        items = (obj,)
    for x in items:
        cls = x.__class__
        if (cls is bytes or cls is bytearray) and len(x) >= THRESHOLD:
            return True
    return False


def pickle_big(obj: Any) -> Pickled | bytes:
    """obj pickled with its big buffers kept apart (referenced, not copied): a
    Pickled, or plain pickle bytes when it has none after all."""
    p = pickle_oob(obj, THRESHOLD)
    return p if p.buffers else p.payload


class Channel:
    """One end of one worker's shared-memory channel (see the module's docstring)."""

    __slots__ = ("_announce", "_mapped", "blocked", "releases", "rx", "size", "sock", "tx")

    def __init__(self, sock: int, size: int, mapped: bool) -> None:
        """sock: this end of the socketpair (owned: closed by close()); size: the
        arena size (0: never any shared memory); mapped: see _buffers.Sender."""
        self.sock = sock
        self.size = size
        self._mapped = mapped
        self.tx: Sender | None = None  # made on the first big payload sent
        self.rx: Receiver | None = None  # made when the other end announces its arena
        # rx's queue of slots to release (empty until rx exists): truthy when some
        # wait, one attribute for the hot paths to test.
        self.releases: Any = ()
        self._announce: tuple[int, int] | None = None  # (fd, size) of our arena, unsent
        # The parent held a big call back for want of room (see budget): set by
        # the dispatch, cleared when releases come.
        self.blocked = False

    @property
    def enabled(self) -> bool:
        """False when the pool has no shared memory (arena_size 0): all in-band."""
        return self.size > 0

    def releasing(self) -> bool:
        """True when views of the other direction died and their slots wait to be told."""
        return bool(self.releases)

    def _receiver(self, fd: int | None, size: int = 0) -> Receiver:
        """A new receiving side (the old one retired: its views stay valid)."""
        if self.rx is not None:
            self.rx.close()
        self.rx = rx = Receiver(fd, size, populate=False) if fd is not None else Receiver(None)
        self.releases = rx._state.releases
        return rx

    def budget(self) -> int:
        """Bytes of big buffers the other end may still be sent before some of its
        slots come back: a quarter of the arena, less what it holds. Placing more
        would overflow into fresh segments (fresh memory costs as much as the
        pipe), and keeps that much less of the arena touched."""
        quarter = self.size // 4
        tx = self.tx
        if tx is None or not tx.active:
            return quarter
        return quarter - tx.stats()[1]

    def _sender(self) -> Sender:
        tx = self.tx
        if tx is None:
            try:
                fd = create_arena(self.size)
            except OSError as exc:
                warnings.warn(
                    f"pyexec: cannot create a shared-memory arena ({exc}); big arguments "
                    "and results take one fresh segment each, or the pipe",
                    RuntimeWarning,
                    stacklevel=3,
                )
                tx = Sender(None)
            else:
                try:
                    tx = Sender(fd, self.size, populate=False, mapped=self._mapped)
                except BaseException:
                    os.close(fd)
                    raise
                if tx._fd >= 0:
                    _fds.own_fd(tx._fd)  # not for processes forked later
                self._announce = (fd, self.size)
            self.tx = tx
        return tx

    def encode(self, pickled: Pickled | None, payload: bytes | None = None) -> bytes:
        """An OOB frame's payload: pickled's buffers placed in shared memory (their
        fds sent now), the releases waiting. pickled None: payload wrapped for the
        releases alone. Raises OSError when no shared memory can be had (nothing
        is held then; the caller sends the object in-band)."""
        desc = b""
        fds: list[int] = []
        enc = None
        if pickled is not None:
            enc = self._sender().place(pickled)
            payload, desc, fds = enc.payload, enc.descriptors, enc.fds
        new = 0
        if self._announce is not None:
            fd, new = self._announce
            fds = [fd, *fds]
        rel = self.rx.take_releases() if self.rx is not None else b""
        try:
            if fds:
                send_fds(self.sock, fds)
        except BaseException:
            if enc is not None:
                self.tx.discard(enc)  # type: ignore[union-attr]
            raise
        if new:
            os.close(fds[0])
            self._announce = None
        if enc is not None:
            enc.close()
        return _OOB.pack(new, len(rel), len(desc), len(fds)) + rel + desc + payload  # type: ignore[operator]

    def wrap(self, payload: bytes, oob: bool) -> bytes:
        """payload (an OOB frame's when oob) with the releases waiting now added."""
        if not oob:
            return self.encode(None, payload)
        new, nrel, ndesc, nfds = _OOB.unpack_from(payload)
        rel = self.rx.take_releases() if self.rx is not None else b""
        at = _OOB.size
        return _OOB.pack(new, nrel + len(rel), ndesc, nfds) + rel + payload[at:]

    def loads(self, buf: Any, marshalled: bool = False) -> Any:
        """The object of an OOB frame's payload (a bytes-like), its fds taken from
        the socket, its releases applied. Raises what unpickling raises, or
        pickle.UnpicklingError for a malformed header."""
        load = self.prepare(buf, marshalled)
        load.copy()
        return load.finish()

    def prepare(self, buf: Any, marshalled: bool = False) -> Load:
        """loads up to its copies (see _buffers.Load): the part that must run as
        frames arrive, in their order. Raises as loads."""
        desc, inner, fds = self._open(buf)
        if desc:
            rx = self.rx if self.rx is not None else self._receiver(None)
            return rx.prepare(inner, desc, fds)
        for fd in fds:
            os.close(fd)
        return Load(inner, marshalled=marshalled)

    def discard(self, buf: Any) -> None:
        """An OOB frame's payload that will never be loaded (a call revoked from
        this worker, see _lanes): its fds are taken from the socket, its
        releases applied, and its buffers' slots released at once, so the
        channel stays in step and the other end gets its arena back. Raises
        pickle.UnpicklingError for a malformed header (the channel is broken)."""
        desc, _inner, fds = self._open(buf)
        if desc:
            rx = self.rx if self.rx is not None else self._receiver(None)
            rx.discard(desc, fds)
        else:
            for fd in fds:
                os.close(fd)

    def _open(self, buf: Any) -> tuple[bytes, Any, list[int]]:
        """An OOB frame's header applied (its fds received, a new arena of the
        other end taken, its releases done): (descriptors, the payload after the
        header, the fds left for the descriptors: the caller's to close)."""
        try:
            new, nrel, ndesc, nfds = _OOB.unpack_from(buf)
        except struct.error:
            raise pickle.UnpicklingError("truncated shared-memory header") from None
        at = _OOB.size
        end = at + nrel + ndesc
        if end > len(buf) or nfds > 2 or (new and not nfds):
            raise pickle.UnpicklingError("malformed shared-memory header")
        fds = recv_fds(self.sock, nfds) if nfds else []
        try:
            if new:
                fd = fds.pop(0)
                try:
                    self._receiver(fd, new)
                finally:
                    os.close(fd)
            if nrel and self.tx is not None:
                self.tx.on_release(bytes(buf[at : at + nrel]))
                self.blocked = False
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return bytes(buf[at + nrel : end]), buf[end:], fds

    def lost(self) -> None:
        """The other end is gone: no release will come, every slot is free again."""
        if self.tx is not None:
            self.tx.reset()

    def close(self) -> None:
        """The other end is gone: drop our arena, retire the other's (held views stay
        valid, each keeps its mapping), close the socket."""
        if self._announce is not None:
            os.close(self._announce[0])
            self._announce = None
        if self.tx is not None:
            if self.tx._fd >= 0:
                _fds.disown_fd(self.tx._fd)  # closed by close(): its number is reused
            self.tx.close()
            self.tx = None
        if self.rx is not None:
            self.rx.close()
            self.rx = None
            self.releases = ()
        sock, self.sock = self.sock, -1
        if sock >= 0:
            _fds.close_fd(sock)
