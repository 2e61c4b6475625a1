"""Big buffers through shared memory (pyexec._buffers): round trips in one process
over two arenas, and across a fork; ownership of slots; overflow; fd passing.

A "link" is one direction: a Sender and a Receiver over one arena. In one process
two links make a round trip (there and back), as a worker's two arenas would.
"""

from __future__ import annotations

import gc
import os
import pickle
import resource
import socket
import struct
import warnings
from pickle import PickleBuffer

import pytest

np = pytest.importorskip("numpy")

from pyexec import _buffers as B  # noqa: E402
from pyexec._native import ffi, lib  # noqa: E402

MIB = 1 << 20


class Link:
    """One direction in one process: what a Sender writes, a Receiver reads."""

    def __init__(self, size: int = 4 * MIB, **kw) -> None:
        fd = B.create_arena(size)
        try:
            self.sender = B.Sender(fd, size, **kw)
            self.receiver = B.Receiver(fd, size)
        finally:
            os.close(fd)
        self.last: B.Encoded | None = None
        self.nfds = 0  # fds the last message passed (enc.fds is empty once closed)

    def send(self, obj):
        """obj through the arena; the receiver gets its own copies of the fds, as
        SCM_RIGHTS would give it."""
        enc = self.last = self.sender.dumps(obj)
        self.nfds = len(enc.fds)
        try:
            return self.receiver.loads(enc.payload, enc.descriptors, [os.dup(f) for f in enc.fds])
        finally:
            enc.close()

    def pump(self) -> None:
        """The release message back to the sender."""
        gc.collect()
        self.sender.on_release(self.receiver.take_releases())

    def live(self) -> int:
        return self.sender.stats()[0]

    def close(self) -> None:
        self.receiver.close()
        self.sender.close()


@pytest.fixture
def pair():
    """Two links, there and back: two arenas, as a worker has."""
    there, back = Link(), Link()
    yield there, back
    there.close()
    back.close()


def _same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.flags.c_contiguous == b.flags.c_contiguous
        assert a.flags.f_contiguous == b.flags.f_contiguous
        assert np.array_equal(a, b)
    else:
        assert a == b


def _layouts():
    big = np.arange(64 * 1024, dtype=np.float64)  # 512 KiB
    yield "c", big.reshape(256, 256)
    yield "fortran", np.asfortranarray(big.reshape(256, 256))
    yield "slice", big.reshape(256, 256)[::2, 1::3]  # not contiguous: pickled in-band
    yield "0d", np.array(3.5)
    yield "empty", np.zeros((0, 7))
    rec = np.zeros(20000, dtype=[("a", "<i4"), ("b", "<f8"), ("c", "S5")])
    rec["a"] = np.arange(20000)
    rec["c"] = b"xy"
    yield "structured", rec
    yield "bool", np.arange(100000) % 3 == 0
    yield "readonly", _readonly(np.arange(30000, dtype=np.int64))


def _readonly(a):
    a.flags.writeable = False
    return a


LAYOUTS = list(_layouts())


@pytest.mark.parametrize("threshold", [B.THRESHOLD, 1])
@pytest.mark.parametrize(("name", "arr"), LAYOUTS, ids=[n for n, _ in LAYOUTS])
def test_numpy_layouts_round_trip(name, arr, threshold) -> None:
    """Every layout comes back as the stdlib's pickle gives it back (equal, same dtype,
    shape, order and writability), there and back."""
    want = pickle.loads(pickle.dumps(arr, protocol=5))
    there, back = Link(threshold=threshold), Link(threshold=threshold)
    try:
        got = there.send(arr)
        _same(got, want)
        assert got.flags.writeable == want.flags.writeable
        out_of_band = arr.nbytes >= max(threshold, 1) and (
            arr.flags.c_contiguous or arr.flags.f_contiguous
        )
        assert bool(there.last.descriptors) == out_of_band, name
        again = back.send(got)  # a view of arena 1 sent through arena 2
        _same(again, want)
        del got, again
        there.pump()
        back.pump()
        assert there.live() == back.live() == 0
    finally:
        there.close()
        back.close()


def test_bytes_like_copied_out_and_released_at_once(pair) -> None:
    """bytes, bytearray and PickleBuffer come back as the stdlib gives them, copied out:
    their slots are released without waiting for any object to die."""
    there, back = pair
    data = bytes(range(256)) * 1024  # 256 KiB
    cases = [
        data,
        bytearray(data),
        PickleBuffer(bytearray(data)),  # writable: a bytearray, as in-band pickle 5 gives
        PickleBuffer(data),  # read-only: bytes
        [data, bytearray(data), {"k": (data,)}],
    ]
    expect = [data, bytearray(data), bytearray(data), data, [data, bytearray(data), {"k": (data,)}]]
    for obj, want in zip(cases, expect, strict=True):
        got = there.send(obj)
        assert there.last.descriptors, "went in-band"
        assert type(got) is type(want) and got == want
        # Released already: the ids are queued, nothing to collect first.
        there.sender.on_release(there.receiver.take_releases())
        assert there.live() == 0
        got2 = back.send(got)
        assert got2 == want
        back.sender.on_release(back.receiver.take_releases())
        assert back.live() == 0


def test_same_bytes_twice_is_sent_once_and_stays_one_object(pair) -> None:
    """pickle's memo: one object met twice is one buffer, and one object again."""
    there, _ = pair
    data = os.urandom(100_000)
    got = there.send([data, data, (data,)])
    assert got[0] == data and got[0] is got[1] is got[2][0]
    assert len(there.last.descriptors) == 8 + 24  # the header and one entry


def test_small_payloads_stay_in_band(pair) -> None:
    """Under the threshold nothing touches shared memory: no descriptors, no slot."""
    there, _ = pair
    for obj in [1, "x", b"y" * 100, np.arange(100), [np.zeros(1000)] * 3, bytearray(65535)]:
        got = there.send(obj)
        assert there.last.descriptors == b"" and there.nfds == 0 and there.last.slots == []
        _same(got, obj) if not isinstance(obj, list) else None
    assert there.live() == 0


def test_held_value_unchanged_after_many_reuses() -> None:
    """A held array keeps its slot: hundreds of later buffers through a small arena
    never land on it, while the slots of dropped ones are reused."""
    link = Link(size=2 * MIB)
    try:
        held = link.send(np.full(100_000, 7, dtype=np.int64))  # 800 KiB of 2 MiB
        first_live = link.live()
        for i in range(300):
            got = link.send(np.full(90_000, i, dtype=np.int64))
            assert link.nfds == 0, "an arena slot was expected"
            assert got[0] == i and got[-1] == i
            del got
            link.pump()
            assert link.live() == first_live  # only the held one
        assert np.all(held == 7)
        del held
        link.pump()
        assert link.live() == 0
    finally:
        link.close()


def test_writing_to_a_received_array_corrupts_nothing(pair) -> None:
    """A received array is writable (as the stdlib's is); writes land in its own slot
    only: not in the sender's array, not in other received arrays."""
    there, _ = pair
    src = np.arange(200_000, dtype=np.int32)
    a = there.send(src)
    b = there.send(src)
    assert a.flags.writeable
    a[:] = -1
    assert np.array_equal(src, np.arange(200_000, dtype=np.int32))
    assert np.array_equal(b, src)
    c = there.send(src)
    assert np.array_equal(c, src)
    assert np.all(a == -1)


def _arena_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum("pyexec-arena" in line for line in f)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_views_survive_close_and_unmap_with_the_last() -> None:
    """Views held past close() of both ends stay valid; the arena is unmapped when the
    last of them dies (slices included: the exporter is what numpy keeps)."""
    before = _arena_maps()
    link = Link()
    arr = np.arange(300_000, dtype=np.float32)
    got = link.send(arr)
    part = got[1000:2000]  # numpy collapses bases: the slice keeps the exporter
    big = link.send(np.ones(3 * MIB, dtype=np.uint8))  # overflow: its own segment
    assert link.nfds == 1 and struct.unpack_from("<Q", link.last.descriptors)[0] >= 3 * MIB
    del got
    link.close()
    gc.collect()
    assert _arena_maps() > before
    assert np.array_equal(part, arr[1000:2000])
    assert big.sum() == 3 * MIB
    del part, big
    gc.collect()
    assert _arena_maps() == before


def test_release_protocol(pair) -> None:
    """A slot is live until its release arrives; releases come once; a release of an
    id that is not live is refused."""
    there, _ = pair
    got = there.send(np.zeros(100_000))
    (slot,) = there.last.slots
    assert there.receiver.take_releases() == b""
    del got
    gc.collect()
    blob = there.receiver.take_releases()
    assert struct.unpack("<I", blob) == (slot,)
    assert there.receiver.take_releases() == b""
    assert there.live() == 1  # not before the sender hears of it
    there.sender.on_release(blob)
    assert there.live() == 0
    with pytest.raises(ValueError, match="not live"):
        there.sender.on_release(blob)  # double release
    with pytest.raises(ValueError, match="not live"):
        there.sender.on_release(struct.pack("<I", 12345))


def test_reset_forgets_every_slot(pair) -> None:
    """After the receiver's death the sender starts afresh; late releases are refused."""
    there, _ = pair
    got = there.send(np.zeros(100_000))
    del got
    gc.collect()
    blob = there.receiver.take_releases()
    there.sender.reset()
    assert there.live() == 0
    with pytest.raises(ValueError):
        there.sender.on_release(blob)


def test_overflow_one_segment_a_message() -> None:
    """Over half the arena, or no free slot: the message's own sealed segment, one fd
    however many buffers, never the pipe."""
    link = Link(size=1 * MIB, max_slots=2)
    try:
        arrays = [np.full(200_000, i, dtype=np.uint8) for i in range(5)]  # 5 x 195 KiB
        arrays.append(np.full(600_000, 9, dtype=np.uint8))  # over half
        got = link.send(arrays)
        assert link.nfds == 1
        assert len(link.last.slots) == 2  # two slots, then none free
        assert len(link.last.payload) < 10_000
        for a, b in zip(arrays, got, strict=True):
            _same(b, a)
        del got
        link.pump()
        assert link.live() == 0
    finally:
        link.close()


def test_sender_without_arena_uses_segments() -> None:
    """No arena (it could not be made): every big buffer goes through a segment."""
    sender = B.Sender(None)
    receiver = B.Receiver(None)
    enc = sender.dumps(np.arange(100_000))
    try:
        assert len(enc.fds) == 1 and enc.slots == []
        got = receiver.loads(enc.payload, enc.descriptors, [os.dup(enc.fds[0])])
    finally:
        enc.close()
    assert np.array_equal(got, np.arange(100_000))
    assert receiver.take_releases() == b""


def test_arena_that_cannot_be_made_warns() -> None:
    """try_create_arena says clearly that big buffers go through the pipe."""
    with pytest.warns(RuntimeWarning, match="through the pipe"):
        assert B.try_create_arena(0) is None


def test_unpicklable_holds_nothing(pair) -> None:
    """An object that fails to pickle takes no slot and keeps no export of its buffers."""
    there, _ = pair
    buf = bytearray(200_000)
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        there.sender.dumps([buf, np.zeros(100_000), lambda: 0])
    assert there.live() == 0
    buf.extend(b"x")  # no memoryview of it is left (a live export would refuse this)


def test_discard_frees_slots_and_fds(pair) -> None:
    """A message never sent: its slots are free again and its fd closed."""
    there, _ = pair
    enc = there.sender.dumps([np.zeros(100_000), np.zeros(3 * MIB)])
    assert there.live() == 1 and len(enc.fds) == 1
    there.sender.discard(enc)
    assert there.live() == 0 and enc.fds == []


def test_malformed_descriptors_refused_and_fds_closed(pair) -> None:
    """Descriptors that do not fit what arrived: UnpicklingError, and the fds given
    are closed all the same."""
    there, _ = pair
    enc = there.sender.dumps(np.zeros(100_000))
    (kind, sid, off, n) = struct.unpack_from("<BxxxIQQ", enc.descriptors, 8)
    bad = [
        enc.descriptors + b"\0",  # not whole entries
        enc.descriptors[:8] + struct.pack("<BxxxIQQ", kind, sid, 4 * MIB, n),  # past the end
        enc.descriptors[:8] + struct.pack("<BxxxIQQ", kind, sid, off, 4 * MIB + 1),
        enc.descriptors[:8] + struct.pack("<BxxxIQQ", 3, sid, off, n),  # unknown kind
        struct.pack("<Q", 4096) + enc.descriptors[8:],  # a segment, but no fd
    ]
    for d in bad:
        with pytest.raises(pickle.UnpicklingError):
            there.receiver.loads(enc.payload, d, [])
    r, w = os.pipe()
    with pytest.raises(pickle.UnpicklingError):
        there.receiver.loads(enc.payload, enc.descriptors, [r])  # an fd with no segment
    os.close(w)
    with pytest.raises(OSError):
        os.fstat(r)  # closed by loads
    there.sender.discard(enc)


def test_fd_passing_over_the_per_message_limit() -> None:
    """send_fds/recv_fds cut many fds into messages of at most FDS_MAX (253)."""
    a, b = socket.socketpair()
    seg = B.create_arena(4096)
    try:
        out = []
        import threading

        t = threading.Thread(target=lambda: out.extend(B.recv_fds(b.fileno(), 300)))
        t.start()
        B.send_fds(a.fileno(), [seg] * 300)
        t.join(30)
        assert len(out) == 300
        st = os.fstat(seg)
        assert all(os.fstat(fd).st_ino == st.st_ino for fd in out)
        for fd in out:
            os.close(fd)
        a.close()
        with pytest.raises(OSError):
            B.recv_fds(b.fileno(), 1)  # the sender is gone
    finally:
        os.close(seg)
        a.close()
        b.close()


# ---- across a fork ------------------------------------------------------------

# The only other thread is pytest-timeout's timer; the children take no lock it holds.
_FORK_OK = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def _send_msg(data_fd: int, sock: int, enc: B.Encoded, releases: bytes) -> None:
    head = struct.pack("<QQQI", len(enc.payload), len(enc.descriptors), len(releases), len(enc.fds))
    _write_all(data_fd, head + enc.payload + enc.descriptors + releases)
    if enc.fds:
        B.send_fds(sock, enc.fds)
    enc.close()


def _recv_msg(data_fd: int, sock: int) -> tuple[bytes, bytes, bytes, list[int]]:
    head = _read_exact(data_fd, 28)
    if not head:
        raise EOFError
    np_, nd, nr, nf = struct.unpack("<QQQI", head)
    body = _read_exact(data_fd, np_ + nd + nr)
    fds = B.recv_fds(sock, nf) if nf else []
    return body[:np_], body[np_ : np_ + nd], body[np_ + nd :], fds


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            return b""
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _echo_child(down_fd, up_fd, size, data_in, data_out, sock) -> None:
    """The child: receive on the down arena, send the same object back on the up one
    (a view of one arena written into the other), drop it, pass on releases."""
    receiver = B.Receiver(down_fd, size)
    sender = B.Sender(up_fd, size)
    while True:
        try:
            payload, desc, releases, fds = _recv_msg(data_in, sock)
        except EOFError:
            return
        sender.on_release(releases)
        obj = receiver.loads(payload, desc, fds)
        enc = sender.dumps(obj)
        del obj
        gc.collect()
        _send_msg(data_out, sock, enc, receiver.take_releases())


@_FORK_OK
@pytest.mark.timeout(60)
def test_round_trip_across_fork() -> None:
    """Parent -> child -> parent over two arenas made by the parent, with the fds of
    overflow segments over a Unix socket; held results stay unchanged to the end, after
    the child is gone and both ends are closed."""
    size = 4 * MIB
    down_fd, up_fd = B.create_arena(size), B.create_arena(size)
    p2c_r, p2c_w = os.pipe()
    c2p_r, c2p_w = os.pipe()
    sa, sb = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(p2c_w)
            os.close(c2p_r)
            sa.close()
            _echo_child(down_fd, up_fd, size, p2c_r, c2p_w, sb.fileno())
            code = 0
        finally:
            os._exit(code)
    os.close(p2c_r)
    os.close(c2p_w)
    sb.close()
    sender = B.Sender(down_fd, size)
    receiver = B.Receiver(up_fd, size)
    os.close(down_fd)
    os.close(up_fd)
    held = []
    try:
        for i in range(120):
            if i % 3 == 0:
                obj = np.full((300, 200), i, dtype=np.float64)  # 469 KiB: a slot
            elif i % 3 == 1:
                obj = {"b": bytes([i]) * 150_000, "a": np.full(3 * MIB // 8, i)}  # overflow
            else:
                obj = np.asfortranarray(np.full((128, 128), i, dtype=np.int64))
            _send_msg(p2c_w, sa.fileno(), sender.dumps(obj), receiver.take_releases())
            payload, desc, releases, fds = _recv_msg(c2p_r, sa.fileno())
            sender.on_release(releases)
            got = receiver.loads(payload, desc, fds)
            if i % 3 == 1:
                assert got["b"] == bytes([i]) * 150_000
                assert np.all(got["a"] == i)
            else:
                _same(got, obj)
            if i % 10 == 0:
                held.append((i, got))
            del got
            gc.collect()
    finally:
        os.close(p2c_w)
        _, status = os.waitpid(pid, 0)
        os.close(c2p_r)
        sa.close()
    assert os.waitstatus_to_exitcode(status) == 0
    sender.close()
    receiver.close()
    gc.collect()
    for i, got in held:
        if i % 3 == 1:
            assert np.all(got["a"] == i)
        else:
            assert np.all(got == i)


@_FORK_OK
@pytest.mark.timeout(60)
def test_thousands_of_held_arrays_under_a_low_fd_limit() -> None:
    """Each overflow segment's fd is closed once mapped: 1,000 held overflow arrays in
    a process limited to 64 fds (run in a forked child, which reports by exit status)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            link = Link(size=1 * MIB)
            held = [link.send(np.full(70_000, i % 251, dtype=np.uint8)) for i in range(1000)]
            ok = all(h[0] == i % 251 and h[-1] == i % 251 for i, h in enumerate(held))
            link.close()
            code = 0 if ok and len(os.listdir("/proc/self/fd")) < 64 else 2
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_gil_released_copy_is_the_core() -> None:
    """px_copy copies (the placement path relies on it)."""
    src = bytearray(b"abc" * 1000)
    dst = bytearray(len(src))
    lib.px_copy(ffi.from_buffer(dst), ffi.from_buffer(src), len(src))
    assert dst == src


def test_warning_free_round_trip(pair) -> None:
    """The ordinary path warns about nothing."""
    there, _ = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        there.send([np.zeros(100_000), b"x" * 100_000])


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_nothing_left_in_dev_shm() -> None:
    """Arenas and overflow segments are memfds: /dev/shm never sees a name."""
    before = set(os.listdir("/dev/shm"))
    link = Link(size=1 * MIB)
    got = link.send([np.zeros(100_000), np.ones(MIB)])
    assert link.nfds == 1
    assert set(os.listdir("/dev/shm")) == before
    del got
    link.close()


@pytest.mark.timeout(60)
def test_threads_place_through_one_sender() -> None:
    """Several threads pickling and placing at once get distinct slots; every message
    reads back right."""
    import threading

    there = Link(size=16 * MIB)
    out: dict[int, B.Encoded] = {}

    def work(t: int) -> None:
        for i in range(20):
            out[t * 100 + i] = there.sender.dumps(np.full(20_000, t * 100 + i, dtype=np.int64))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        slots = [s for enc in out.values() for s in enc.slots]
        assert len(slots) == len(set(slots)) == 80  # 80 x 160 KB: all in the arena
        for key, enc in out.items():
            got = there.receiver.loads(enc.payload, enc.descriptors, [])
            assert np.all(got == key)
        del got
        gc.collect()
        there.pump()
        assert there.live() == 0
    finally:
        for enc in out.values():
            enc.close()
        there.close()


def test_segment_mappings_are_bounded(monkeypatch) -> None:
    """Past MAX_SEGMENT_MAPS held segments, new overflow views are private copies: the
    process's mappings stay bounded (vm.max_map_count), the values right."""
    link = Link(size=1 * MIB)
    limit = len(B._segment_maps) + 3
    monkeypatch.setattr(B, "MAX_SEGMENT_MAPS", limit)
    try:
        held = [link.send(np.full(MIB, i, dtype=np.uint8)) for i in range(10)]
        assert link.nfds == 1
        assert len(B._segment_maps) == limit
        assert all(h[0] == i and h[-1] == i for i, h in enumerate(held))
        held[-1][:] = 0  # a private copy is writable as well
        del held
        gc.collect()
        assert len(B._segment_maps) == limit - 3
    finally:
        link.close()


def test_prefault_in_a_thread() -> None:
    """Arenas mapped without faulting in, faulted in by threads meanwhile, then used."""
    import threading

    fd = B.create_arena(4 * MIB)
    try:
        sender = B.Sender(fd, 4 * MIB, populate=False)
        receiver = B.Receiver(fd, 4 * MIB, populate=False)
    finally:
        os.close(fd)
    threads = [threading.Thread(target=x.prefault) for x in (sender, receiver)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    enc = sender.dumps(np.arange(200_000))
    got = receiver.loads(enc.payload, enc.descriptors, enc.fds)
    assert np.array_equal(got, np.arange(200_000))
    receiver.close()
    sender.close()


def _rss_shmem() -> int:
    """This process's resident shared-memory pages, in bytes (RssShmem)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssShmem in /proc/self/status")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_overflow_segment_is_mapped_lazily() -> None:
    """A received overflow segment is not faulted in at map time (its pages exist: a
    read maps them 16 at a time for less than populating costs); a view costs memory
    here only as far as it is read, and reads right."""
    link = Link(size=1 * MIB)
    try:
        want = np.arange(8 * MIB // 8, dtype=np.float64)
        before = _rss_shmem()
        got = link.send(want)
        assert link.nfds == 1  # over half the arena: its message's own segment
        assert _rss_shmem() - before < 2 * MIB  # 8 MiB when populated at map time
        assert got[0] == 0 and got[-1] == want[-1]
        assert _rss_shmem() - before < 2 * MIB  # two pages read, not all of them
        assert np.array_equal(got, want)  # every page read: all there
        assert _rss_shmem() - before >= 7 * MIB
        del got
    finally:
        link.close()


@pytest.mark.timeout(60)
def test_big_bytes_copied_out_are_exact_and_their_own(pair) -> None:
    """A big bytes is copied out of the arena into a new bytes object (the copy runs
    with the GIL released): exact type, equal, hashed as its equal, and unchanged when
    its slot is written again after the release."""
    there, _ = pair
    data = bytes(range(256)) * (MIB // 256)
    got = there.send(data)
    assert type(got) is bytes and got == data and hash(got) == hash(data)
    assert got is not data
    there.pump()
    assert there.live() == 0
    other = there.send(b"\xff" * MIB)  # the same slot, written again
    assert got == data and other == b"\xff" * MIB
    assert B._copy_bytes(ffi.from_buffer(data), len(data)) == data
