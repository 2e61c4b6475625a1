"""The frame decoder and writer through cffi: one test per edge case, as hiredis tests its reader.

These go through ``pyexec._frames`` (Decoder, Writer), the same objects the
executor and the worker use, over real pipes where a pipe matters.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest

from pyexec import _fds, _native
from pyexec import _frames as ch
from pyexec._frames import ChannelError, Decoder, Writer, encode
from pyexec._native import ffi, lib

pytestmark = pytest.mark.timeout(60)

KINDS = list(range(1, lib.PX_KIND_MAX + 1))  # every kind the decoder accepts


def payload(n: int, seed: int = 0) -> bytes:
    """n bytes that differ by position and seed (a shifted frame cannot pass)."""
    return bytes((i * 131 + seed * 7 + 1) & 0xFF for i in range(n))


def mixed_frames() -> list[tuple[int, int, int, bytes]]:
    """Frames with lengths around the header size, every kind and flag, extreme ids."""
    lens = [0, 1, 23, 24, 25, 0, 100, 1000, 4095, 0, 7]
    out = []
    for i, n in enumerate(lens):
        tid = 2**64 - 1 if i == 3 else i * 0x0101010101
        out.append((KINDS[i % len(KINDS)], i % 2, tid, payload(n, i)))
    return out


def stream(frames: list[tuple[int, int, int, bytes]]) -> bytes:
    """The bytes of frames, back to back."""
    return b"".join(encode(k, t, p, f) for k, f, t, p in frames)


def drain(dec: Decoder) -> list[tuple[int, int, int, bytes]]:
    """Every frame now complete in dec (one C call per frame)."""
    return dec.frames()


def take_all(dec: Decoder) -> list[tuple[int, int, int, bytes]]:
    """Every frame now complete in dec, through take() (many frames per C call)."""
    out = []
    while True:
        meta, view = dec.take()
        if not meta:
            return out
        assert len(meta) % 4 == 0 and len(meta) // 4 <= ch.TAKE_MAX
        for i in range(0, len(meta), 4):
            kf, tid, off, n = meta[i : i + 4]
            out.append((kf & 0xFF, kf >> 8, tid, bytes(view[off : off + n])))
        del view


DRAINS = {"frames": drain, "take": take_all}


@pytest.fixture
def pipe():
    """A plain blocking pipe, closed after the test."""
    r, w = os.pipe()
    fds = {"r": r, "w": w}
    yield fds
    for fd in fds.values():
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def close(fds: dict, end: str) -> None:
    """Close one end of a pipe fixture early."""
    os.close(fds[end])
    fds[end] = None


# ---- decoding ---------------------------------------------------------------


@pytest.mark.parametrize("drain", list(DRAINS.values()), ids=list(DRAINS))
def test_byte_by_byte(drain):
    """Each frame appears exactly when its last byte arrives, never before."""
    frames = mixed_frames()
    data = stream(frames)
    ends = []
    off = 0
    for *_, p in frames:
        off += ch.HEADER_SIZE + len(p)
        ends.append(off)
    dec = Decoder()
    got = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        got += drain(dec)
        due = sum(1 for e in ends if e <= i + 1)
        assert len(got) == due
        assert dec.buffered == i + 1 - (ends[due - 1] if due else 0)
    assert got == frames
    assert dec.buffered == 0


@pytest.mark.parametrize("drain", list(DRAINS.values()), ids=list(DRAINS))
def test_every_two_way_split(drain):
    """The stream cut in two at every byte boundary decodes the same."""
    frames = mixed_frames()
    data = stream(frames)
    for cut in range(len(data) + 1):
        dec = Decoder()
        dec.feed(data[:cut])
        got = drain(dec)
        dec.feed(data[cut:])
        got += drain(dec)
        assert got == frames, cut
        assert dec.buffered == 0


@pytest.mark.parametrize("drain", list(DRAINS.values()), ids=list(DRAINS))
def test_many_frames_in_one_feed(drain):
    """Thousands of frames in one feed come out in order (take: a batch at a time)."""
    frames = [(KINDS[i % len(KINDS)], 0, i, payload(i % 50, i)) for i in range(10_000)]
    dec = Decoder(max_payload=1000)
    dec.feed(stream(frames))
    assert drain(dec) == frames
    assert dec.buffered == 0


def test_zero_length_payload():
    """A frame with no payload is complete with its header alone."""
    dec = Decoder()
    frame = encode(ch.KIND_EXIT, 5)
    assert len(frame) == ch.HEADER_SIZE
    dec.feed(frame[:-1])
    assert drain(dec) == []
    dec.feed(frame[-1:])
    assert drain(dec) == [(ch.KIND_EXIT, 0, 5, b"")]
    dec.feed(b"")
    assert drain(dec) == []


def test_maximum_length_payload():
    """A payload exactly at the limit is accepted."""
    dec = Decoder(max_payload=1000)
    body = payload(1000)
    frame = encode(ch.KIND_RESULT, 9, body)
    dec.feed(frame[:-1])
    assert drain(dec) == []
    dec.feed(frame[-1:])
    assert drain(dec) == [(ch.KIND_RESULT, 0, 9, body)]


def test_one_byte_over_maximum():
    """One byte over the limit: EMSGSIZE from the header alone, naming both lengths."""
    dec = Decoder(max_payload=1000)
    dec.feed(ch.HEADER.pack(ch.MAGIC, ch.KIND_RESULT, 0, 0, 9, 1001))
    with pytest.raises(ChannelError) as info:
        drain(dec)
    assert info.value.errno == errno.EMSGSIZE
    assert "1001" in str(info.value) and "1000" in str(info.value)
    assert "1001" in dec.error
    with pytest.raises(ChannelError) as again:
        drain(dec)
    assert again.value.errno == errno.EMSGSIZE


def test_limit_bounds():
    """The limit may be at most PX_MAX_PAYLOAD_LIMIT."""
    Decoder(max_payload=lib.PX_MAX_PAYLOAD_LIMIT)
    with pytest.raises(OSError) as info:
        Decoder(max_payload=lib.PX_MAX_PAYLOAD_LIMIT + 1)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("length", [2**64 - 1, 2**63, ch.MAX_PAYLOAD + 1])
def test_absurd_length(length):
    """A garbage length far beyond the limit is refused, not allocated."""
    dec = Decoder()
    dec.feed(ch.HEADER.pack(ch.MAGIC, ch.KIND_RESULT, 0, 0, 1, length))
    with pytest.raises(ChannelError) as info:
        drain(dec)
    assert info.value.errno == errno.EMSGSIZE
    assert str(length) in str(info.value)


GARBAGE = {
    "bad magic": (0, ch.KIND_CALL, 0, 0, "magic"),
    "magic off by one": (ch.MAGIC + 1, ch.KIND_CALL, 0, 0, "magic"),
    "nonzero reserved": (ch.MAGIC, ch.KIND_CALL, 0, 1, "reserved"),
    "high reserved bit": (ch.MAGIC, ch.KIND_CALL, 0, 1 << 31, "reserved"),
    "kind zero": (ch.MAGIC, 0, 0, 0, "kind"),
    "unknown kind": (ch.MAGIC, lib.PX_KIND_MAX + 1, 0, 0, "kind"),
    "kind 255": (ch.MAGIC, 255, 0, 0, "kind"),
    # The lowest bit no flag uses yet.
    "unknown flag": (ch.MAGIC, ch.KIND_CALL, lib.PX_FLAGS_KNOWN + 1, 0, "flags"),
    "high flag": (ch.MAGIC, ch.KIND_CALL, 0x8000, 0, "flags"),
}


@pytest.mark.parametrize("case", list(GARBAGE), ids=list(GARBAGE))
def test_garbage_header(case):
    """A malformed header is a sticky EBADMSG that says what is wrong."""
    magic, kind, flags, reserved, word = GARBAGE[case]
    dec = Decoder()
    good = encode(ch.KIND_RESULT, 1, b"fine")
    dec.feed(good + ch.HEADER.pack(magic, kind, flags, reserved, 2, 0))
    # The good frame before the garbage is still handed out.
    assert dec.frames() == [(ch.KIND_RESULT, 0, 1, b"fine")]
    with pytest.raises(ChannelError) as info:
        dec.frames()
    assert info.value.errno == errno.EBADMSG
    assert word in dec.error
    with pytest.raises(ChannelError) as again:
        drain(dec)
    assert again.value.errno == errno.EBADMSG


def test_take_hands_out_frames_before_garbage_then_raises():
    """take() returns the good frames ahead of a bad header, then raises, and keeps raising."""
    good = [(ch.KIND_RESULT, 0, i, payload(i, i)) for i in range(5)]
    dec = Decoder()
    dec.feed(stream(good) + ch.HEADER.pack(ch.MAGIC, 99, 0, 0, 9, 0))
    meta, view = dec.take()
    assert len(meta) == 4 * len(good)
    got = [
        (
            meta[i] & 0xFF,
            meta[i] >> 8,
            meta[i + 1],
            bytes(view[meta[i + 2] : meta[i + 2] + meta[i + 3]]),
        )
        for i in range(0, len(meta), 4)
    ]
    assert got == good
    del view
    for _ in range(2):
        with pytest.raises(ChannelError) as info:
            dec.take()
        assert info.value.errno == errno.EBADMSG
        assert "kind" in str(info.value)


def test_failed_flag_says_an_error_follows_the_frames_taken():
    """take() sets ``failed`` when the frames it returned stand before a bad
    header: a reader that stops at a short batch still learns of the error
    (the manager would otherwise wait for a read that never comes)."""
    dec = Decoder()
    dec.feed(encode(ch.KIND_RESULT, 1, b"a"))
    assert dec.take()[0] and dec.failed is False
    dec.feed(encode(ch.KIND_RESULT, 2, b"b") + b"\xff" * ch.HEADER_SIZE)
    meta, _view = dec.take()
    assert meta[1] == 2 and len(meta) == 4
    assert dec.failed is True
    with pytest.raises(ChannelError):
        dec.take()


def test_read_frames_reads_then_takes():
    """read_frames: what read returns (-1 empty, bytes, 0 at end of file) and
    the frames take would return, from one call into the core."""
    r, w = _fds.make_pipe(True, False)
    try:
        dec = Decoder()
        assert dec.read_frames(r) == (-1, (), None)
        frames = [(ch.KIND_RESULT, i % 2, i, payload(50, i)) for i in range(ch.TAKE_MAX + 3)]
        data = stream(frames)
        os.write(w, data)
        n, meta, view = dec.read_frames(r)
        assert n == len(data) and len(meta) == 4 * ch.TAKE_MAX and not dec.failed
        got = [
            (kf & 0xFF, kf >> 8, tid, bytes(view[off : off + size]))
            for kf, tid, off, size in zip(*[iter(meta)] * 4, strict=True)
        ]
        del view
        assert got + take_all(dec) == frames  # a full batch: the rest by take
        os.close(w)
        w = None
        assert dec.read_frames(r) == (0, (), None)
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


def test_read_frames_raises_on_garbage_and_bad_fd():
    """Garbage read by read_frames raises (and stays raised); a failed read(2)
    raises its errno and leaves the decoder usable, as read does."""
    dec = Decoder()
    fd = os.open("/", os.O_RDONLY)  # read(2) fails: EISDIR
    try:
        with pytest.raises(OSError) as info:
            dec.read_frames(fd)
        assert info.value.errno == errno.EISDIR and dec.error == ""
    finally:
        os.close(fd)
    r, w = _fds.make_pipe(True, False)
    try:
        os.write(w, b"\xff" * ch.HEADER_SIZE)
        for _ in range(2):
            with pytest.raises(ChannelError) as info:
                dec.read_frames(r)
            assert info.value.errno == errno.EBADMSG
    finally:
        os.close(r)
        os.close(w)


def test_error_is_sticky():
    """After an error, feeds, reads and takes all fail the same and change nothing."""
    dec = Decoder()
    dec.feed(ch.HEADER.pack(0, ch.KIND_CALL, 0, 0, 1, 0))
    with pytest.raises(ChannelError):
        drain(dec)
    msg, held = dec.error, dec.buffered
    assert msg
    r, w = os.pipe()
    try:
        os.write(w, encode(ch.KIND_CALL, 2))
        for _ in range(3):
            with pytest.raises(ChannelError) as info:
                dec.feed(encode(ch.KIND_CALL, 2))
            assert info.value.errno == errno.EBADMSG
            with pytest.raises(ChannelError):
                dec.read(r)
            with pytest.raises(ChannelError):
                drain(dec)
            assert dec.error == msg
            assert dec.buffered == held
        # The sticky read consumed nothing from the pipe.
        assert os.read(r, 100) == encode(ch.KIND_CALL, 2)
    finally:
        os.close(r)
        os.close(w)


def test_truncated_payload_then_eof(pipe):
    """The peer stops mid-payload: end of file with bytes still buffered."""
    frame = encode(ch.KIND_RESULT, 1, payload(500))
    os.write(pipe["w"], frame[:-100])
    close(pipe, "w")
    dec = Decoder()
    total = 0
    while (n := dec.read(pipe["r"])) > 0:
        total += n
    assert n == 0
    assert total == len(frame) - 100
    assert drain(dec) == []
    assert dec.buffered == len(frame) - 100
    assert dec.error == ""


def test_read_pipe_eagain_and_eof():
    """A non-blocking read: -1 when empty, bytes when there, 0 at end of file."""
    r, w = _fds.make_pipe(True, False)
    try:
        dec = Decoder()
        assert dec.read(r) == -1
        frames = [(ch.KIND_RESULT, 0, i, payload(100, i)) for i in range(10)]
        data = stream(frames)
        os.write(w, data)
        assert dec.read(r) == len(data)
        assert drain(dec) == frames
        assert dec.read(r) == -1
        os.close(w)
        w = None
        assert dec.read(r) == 0
        assert dec.buffered == 0
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


def test_read_bad_fd_is_not_sticky():
    """A failed read(2) raises its errno but leaves the decoder usable."""
    dec = Decoder()
    with pytest.raises(OSError) as info:
        dec.read(-1)
    assert info.value.errno == errno.EBADF
    assert dec.error == ""
    dec.feed(encode(ch.KIND_CALL, 1, b"x"))
    assert drain(dec) == [(ch.KIND_CALL, 0, 1, b"x")]


def _write_in_thread(fd: int, data: bytes) -> threading.Thread:
    """Write data to a blocking fd from a thread, then close it."""

    def run():
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_large_frames_through_pipe_interleaved():
    """8 MiB frames between small ones, through a real pipe, arrive intact."""
    big = os.urandom(8 << 20)
    frames = []
    for i in range(3):
        frames.append((ch.KIND_RESULT, 0, 10 * i + 1, b"small"))
        frames.append((ch.KIND_RESULT, 0, 10 * i + 2, big[: len(big) - i]))
        frames.append((ch.KIND_ERROR, 0, 10 * i + 3, b""))
    r, w = os.pipe()
    t = _write_in_thread(w, stream(frames))
    try:
        dec = Decoder()
        got = []
        while dec.read(r) > 0:
            got += drain(dec)
    finally:
        t.join()
        os.close(r)
    assert len(got) == len(frames)
    for g, f in zip(got, frames, strict=True):
        assert g == f
    assert dec.buffered == 0


def test_decoder_shrinks_back_after_large_frame():
    """After a large frame the buffer returns to its small size: decoders that each
    passed a 8 MiB frame and are kept alive do not keep 8 MiB each."""
    if _native.rss() < 0:
        pytest.skip("resident memory is not measurable on this platform")
    big = encode(ch.KIND_RESULT, 1, bytes(8 << 20))
    small = encode(ch.KIND_RESULT, 2, b"after")
    decoders = []
    before = _native.rss()
    for _ in range(16):
        dec = Decoder()
        dec.feed(big)
        got = drain(dec)
        assert len(got) == 1 and len(got[0][3]) == 8 << 20
        del got
        # The next feed finds the decoder empty and shrinks it.
        for i in range(0, len(small), 3):
            dec.feed(small[i : i + 3])
        assert drain(dec) == [(ch.KIND_RESULT, 0, 2, b"after")]
        decoders.append(dec)
    grown = _native.rss() - before
    # Kept at 8 MiB each, 16 decoders would hold 128 MiB.
    assert grown < 64 << 20, f"resident memory grew by {grown >> 20} MiB"


def test_take_points_into_decoder():
    """take hands out offsets into one view of the decoder's buffer: no copy."""
    dec = Decoder()
    dec.feed(encode(ch.KIND_RESULT, 1, b"abc") + encode(ch.KIND_RESULT, 2, b""))
    meta, view = dec.take()
    assert meta[0] == ch.KIND_RESULT and meta[1] == 1 and meta[4 + 1] == 2
    assert bytes(view[meta[2] : meta[2] + meta[3]]) == b"abc"
    assert meta[4 + 3] == 0 and meta[2] + meta[3] <= len(view)
    assert dec.take() == ((), None)


def test_each_splits_meta_into_frames():
    """Decoder.each: one (word, id, offset, length) per frame, for one frame
    (returned as it is) and for several."""
    for count in (1, 3):
        dec = Decoder()
        for i in range(count):
            dec.feed(encode(ch.KIND_RESULT, 10 + i, b"x" * i, flags=i % 2))
        meta, view = dec.take()
        frames = [tuple(f) for f in Decoder.each(meta)]
        assert [(w & 0xFF, w >> 8, tid, size) for w, tid, _off, size in frames] == [
            (ch.KIND_RESULT, i % 2, 10 + i, i) for i in range(count)
        ]
        assert all(bytes(view[off : off + size]) == b"x" * size for _w, _t, off, size in frames)


def test_take_keeps_its_view_until_the_buffer_moves():
    """The view take returns is made once per buffer: the same object while the
    core's buffer stays put, a new one (right bytes included) once it grew."""
    dec = Decoder()
    dec.feed(encode(ch.KIND_RESULT, 1, b"abc"))
    meta, first = dec.take()
    dec.feed(encode(ch.KIND_RESULT, 2, b"def"))
    meta, again = dec.take()
    assert again is first and bytes(again[meta[2] : meta[2] + meta[3]]) == b"def"
    big = payload(4 * ch.lib.PX_DECODER_INITIAL, 3)  # more than the buffer holds
    dec.feed(encode(ch.KIND_RESULT, 3, big))
    meta, grown = dec.take()
    assert grown is not first and len(grown) >= len(big)
    assert bytes(grown[meta[2] : meta[2] + meta[3]]) == big


# ---- writing ---------------------------------------------------------------


class _CountingLib:
    """Stands in for the core's lib: records each px_writev call's buffers."""

    def __init__(self, real):
        self._real = real
        self.calls: list[list[tuple[int, int]]] = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def px_writev(self, fd, iov, n):
        self.calls.append([(int(ffi.cast("uintptr_t", iov[i].base)), iov[i].len) for i in range(n)])
        return self._real.px_writev(fd, iov, n)


def read_frames(fd: int, count: int, max_payload: int = ch.MAX_PAYLOAD) -> list:
    """Read from a blocking fd until count frames were decoded."""
    dec = Decoder(max_payload)
    got = []
    while len(got) < count:
        assert dec.read(fd) > 0
        got += drain(dec)
    return got


def test_writer_coalesces_small_frames(monkeypatch):
    """A burst of small frames leaves in one writev of one buffer."""
    spy = _CountingLib(lib)
    monkeypatch.setattr(ch, "lib", spy)
    r, w = _fds.make_pipe(False, True)
    try:
        wr = Writer(w)
        frames = [(ch.KIND_CALL, 0, i, payload(i % 40, i)) for i in range(1000)]
        for k, f, t, p in frames:
            wr.push(k, t, p, f)
        assert wr.pending
        assert wr.flush() is True
        assert not wr.pending
        assert len(spy.calls) == 1 and len(spy.calls[0]) == 1
        assert spy.calls[0][0][1] == len(stream(frames))
        assert read_frames(r, len(frames)) == frames
    finally:
        os.close(r)
        os.close(w)


def test_writer_sends_big_payload_from_its_own_buffer(monkeypatch):
    """A payload of 64 KiB or more is written from the caller's buffer, not copied."""
    spy = _CountingLib(lib)
    monkeypatch.setattr(ch, "lib", spy)
    big = os.urandom(max(ch.BIG_PAYLOAD, 256 << 10))
    big_addr = int(ffi.cast("uintptr_t", ffi.from_buffer(big)))
    r, w = os.pipe()  # blocking both ends: the writer finishes in one flush
    reader_out: list = []
    t = threading.Thread(target=lambda: reader_out.extend(read_frames(r, 3)))
    t.start()
    try:
        wr = Writer(w)
        wr.push(ch.KIND_RESULT, 1, b"before")
        wr.push(ch.KIND_RESULT, 2, big)
        wr.push(ch.KIND_RESULT, 3, b"after")
        assert wr.flush() is True
    finally:
        t.join()
        os.close(r)
        os.close(w)
    assert reader_out == [
        (ch.KIND_RESULT, 0, 1, b"before"),
        (ch.KIND_RESULT, 0, 2, big),
        (ch.KIND_RESULT, 0, 3, b"after"),
    ]
    first = spy.calls[0]
    assert (big_addr, len(big)) in first, first


def test_writer_full_pipe_then_completes():
    """A full non-blocking pipe: flush returns False, then completes as the reader drains."""
    r, w = _fds.make_pipe(False, True)
    try:
        wr = Writer(w)
        frames = [(ch.KIND_RESULT, 0, i, os.urandom(100_000 + i)) for i in range(40)]
        frames += [(ch.KIND_RESULT, 0, 100 + i, b"s" * i) for i in range(100)]
        for k, f, t, p in frames:
            wr.push(k, t, p, f)
        total = len(stream(frames))
        assert wr.flush() is False
        assert wr.pending
        dec = Decoder()
        got = []
        read = 0
        flushes = 1
        done = False
        while not done:
            n = dec.read(r)
            assert n > 0
            read += n
            got += drain(dec)
            done = wr.flush()
            flushes += 1
        while read < total:
            n = dec.read(r)
            assert n > 0
            read += n
            got += drain(dec)
        assert not wr.pending
        assert flushes > 2
        assert got == frames
    finally:
        os.close(r)
        os.close(w)


def test_writer_epipe_when_reader_closed():
    """Writing to a pipe whose reader is gone raises OSError(EPIPE)."""
    r, w = _fds.make_pipe(False, True)
    os.close(r)
    try:
        wr = Writer(w)
        wr.push(ch.KIND_CALL, 1, b"lost")
        with pytest.raises(OSError) as info:
            wr.flush()
        assert info.value.errno == errno.EPIPE
    finally:
        os.close(w)


def test_writer_send_writes_a_small_frame_at_once(monkeypatch):
    """send() of a small frame behind nothing queued: one write, no writev;
    behind queued bytes, or a big payload, it pushes and flushes in order."""
    spy = _CountingLib(lib)
    monkeypatch.setattr(ch, "lib", spy)
    r, w = os.pipe()
    reader_out: list = []
    big = os.urandom(ch.BIG_PAYLOAD)
    t = threading.Thread(target=lambda: reader_out.extend(read_frames(r, 4)))
    t.start()
    try:
        wr = Writer(w)
        assert wr.send(ch.KIND_RESULT, 1, b"one", ch.FLAG_RECYCLE) is True
        assert spy.calls == [] and not wr.pending
        wr.push(ch.KIND_RESULT, 2, b"two")
        assert wr.send(ch.KIND_RESULT, 3, b"three") is True  # after the queued one
        assert wr.send(ch.KIND_RESULT, 4, big) is True
        assert len(spy.calls) == 2 and not wr.pending
    finally:
        t.join()
        os.close(r)
        os.close(w)
    assert reader_out == [
        (ch.KIND_RESULT, ch.FLAG_RECYCLE, 1, b"one"),
        (ch.KIND_RESULT, 0, 2, b"two"),
        (ch.KIND_RESULT, 0, 3, b"three"),
        (ch.KIND_RESULT, 0, 4, big),
    ]


def test_writer_send_to_a_full_pipe_keeps_the_rest():
    """send() into a full non-blocking pipe (or one with room for part of the
    frame): False, the rest queued, and flush completes it once the reader
    drains."""
    r, w = _fds.make_pipe(True, True)
    try:
        filled = 0
        while True:
            try:
                filled += os.write(w, b"f" * 4096)
            except BlockingIOError:
                break
        out = bytearray(os.read(r, 8192))  # room for part of the frame
        wr = Writer(w)
        frame = payload(30_000, 3)
        assert wr.send(ch.KIND_RESULT, 9, frame) is False
        assert wr.pending

        def drain_pipe() -> None:
            while True:
                try:
                    out.extend(os.read(r, 1 << 16))
                except BlockingIOError:
                    return

        drain_pipe()
        assert wr.flush() is True and not wr.pending
        drain_pipe()
        assert out[:filled] == b"f" * filled
        assert bytes(out[filled:]) == encode(ch.KIND_RESULT, 9, frame)
    finally:
        os.close(r)
        os.close(w)


def test_writev_buffer_count_bounds():
    """px_writev takes 1..PX_IOV_MAX buffers."""
    r, w = _fds.make_pipe(True, True)
    try:
        iov = ffi.new("px_iov[]", ch.IOV_MAX + 1)
        data = ffi.new("char[]", b"x")
        for i in range(ch.IOV_MAX + 1):
            iov[i].base = data
            iov[i].len = 1
        assert lib.px_writev(w, iov, 0) == -errno.EINVAL
        assert lib.px_writev(w, iov, ch.IOV_MAX + 1) == -errno.EINVAL
        assert lib.px_writev(w, iov, ch.IOV_MAX) == ch.IOV_MAX
        assert os.read(r, 1000) == b"x" * ch.IOV_MAX
    finally:
        os.close(r)
        os.close(w)


def test_writer_many_flushes_keep_order():
    """Frames pushed between partial flushes arrive in push order."""
    r, w = _fds.make_pipe(True, True)
    try:
        wr = Writer(w)
        dec = Decoder()
        want = []
        got = []
        for i in range(300):
            p = os.urandom(70_000) if i % 10 == 0 else payload(i % 300, i)
            wr.push(ch.KIND_RESULT, i, p)
            want.append((ch.KIND_RESULT, 0, i, p))
            wr.flush()
            if i % 3 == 0:
                while dec.read(r) > 0:
                    got += drain(dec)
        while not wr.flush():
            while dec.read(r) > 0:
                got += drain(dec)
        while dec.read(r) > 0:
            got += drain(dec)
        assert got == want
    finally:
        os.close(r)
        os.close(w)
