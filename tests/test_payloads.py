"""Big payloads through the pool's shared-memory arenas (issue 16): both directions,
every start method, ownership of what the user receives, bounded resources, fallback."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
from helpers import ident
from payload_funcs import big_bytes, big_bytes_and_unloadable, die, fill, nbytes_of, pid_and

import pyexec
from pyexec import _copier, _outcomes, _payloads

np = pytest.importorskip("numpy")

BIG = 1 << 20  # over the threshold
assert BIG >= _payloads.THRESHOLD


def layouts():
    a = np.arange(BIG // 8, dtype=np.float64)
    return {
        "c": a,
        "fortran": np.asfortranarray(a.reshape(256, -1)),
        "2d": a.reshape(512, -1),
        "int8": np.arange(BIG, dtype=np.int8),
        "structured": np.zeros(BIG // 16, dtype=[("x", "f8"), ("y", "i8")]),
        "strided": a[::2],  # not contiguous: copied once
        "transposed": a.reshape(512, -1).T,
        "readonly": np.frombuffer(a.tobytes(), dtype=np.float64),
    }


def _uses_arena(ex) -> bool:
    return any(w.chan is not None and w.chan.tx is not None for w in ex._mgr.workers)


@pytest.mark.timeout(120)
def test_arrays_and_bytes_both_directions(ctx):
    """Every layout comes back equal (dtype, shape, order), bytes and bytearray too,
    and the contiguous ones went through the arena."""
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        for name, arr in layouts().items():
            out = ex.submit(ident, arr).result(timeout=60)
            assert out.dtype == arr.dtype and out.shape == arr.shape, name
            assert np.array_equal(out, arr), name
            if arr.flags.f_contiguous and not arr.flags.c_contiguous:
                assert out.flags.f_contiguous, name
        assert _uses_arena(ex)
        data = bytes(range(256)) * (BIG // 256)
        out = ex.submit(ident, data).result(timeout=60)
        assert type(out) is bytes and out == data
        ba = bytearray(data)
        out = ex.submit(ident, ba).result(timeout=60)
        assert type(out) is bytearray and out == ba
        # Keyword arguments, nested containers, several buffers in one call.
        out = ex.submit(pid_and, x={"a": [layouts()["c"], data]}).result(timeout=60)
        assert np.array_equal(out[1]["a"][0], layouts()["c"]) and out[1]["a"][1] == data
        assert ex.submit(nbytes_of, data).result(timeout=60) == BIG


@pytest.mark.timeout(120)
def test_held_results_unchanged_after_many_calls():
    """A held result never changes while the arena is reused for later calls, and
    writing into a received array (or the worker into its argument) corrupts nothing."""
    with pyexec.ProcessPoolExecutor(1) as ex:
        a = np.arange(BIG // 8, dtype=np.float64)
        held = ex.submit(ident, a).result(timeout=60)
        copy = held.copy()
        held[:10] = -1  # ours to write
        copy[:10] = -1
        for i in range(50):
            b = np.full(BIG // 8, float(i))
            assert ex.submit(fill, b, i + 0.5).result(timeout=60) == (i + 0.5) * b.size
            assert (b == i).all()  # the caller's array is not the worker's view
            out = ex.submit(ident, b).result(timeout=60)
            assert (out == i).all()
        assert np.array_equal(held, copy)


@pytest.mark.timeout(120)
def test_held_results_survive_worker_death_and_shutdown(ctx):
    ex = pyexec.ProcessPoolExecutor(1, mp_context=ctx, on_crash="restart")
    a = np.arange(BIG // 8, dtype=np.float64)
    pid, held = ex.submit(pid_and, a).result(timeout=60)
    with pytest.raises(pyexec.WorkerDied):
        ex.submit(die, a).result(timeout=60)
    pid2, again = ex.submit(pid_and, a * 2).result(timeout=60)  # a replacement, new arenas
    assert pid2 != pid
    assert np.array_equal(held, a) and np.array_equal(again, a * 2)
    ex.shutdown()
    assert np.array_equal(held, a) and np.array_equal(again, a * 2)
    held[:] = 0  # still ours, still mapped
    assert held.sum() == 0


TESTS = os.path.dirname(os.path.abspath(__file__))


def _script(code: str) -> str:
    return f"import sys; sys.path.insert(0, {TESTS!r})\n" + textwrap.dedent(code)


def _run_script(code: str, timeout: float = 120, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-c", _script(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.timeout(180)
def test_thousands_held_under_rlimit_nofile_256():
    """3,000 received arrays held at once (far more than the arena holds: overflow
    segments) with RLIMIT_NOFILE 256: no fd is kept per view."""
    r = _run_script(
        """
        import resource, numpy as np, pyexec
        from helpers import ident
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        a = np.arange(200_000 // 8, dtype=np.float64)  # over the threshold
        with pyexec.ProcessPoolExecutor(2, arena_size=8 << 20) as ex:
            held = [f.result(timeout=60) for f in [ex.submit(ident, a) for _ in range(3000)]]
        assert all(h[-1] == a[-1] and h[7] == 7 for h in held)
        assert len(__import__("os").listdir("/proc/self/fd")) < 64
        print("ok", len(held))
        """
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ok 3000" in r.stdout


def _shm_names() -> set[str]:
    """pyexec's names in /dev/shm (its shm_open fallback's; memfds have none)."""
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("pyexec")}
    except FileNotFoundError:
        return set()


@pytest.mark.timeout(120)
def test_nothing_left_after_sigkill_of_the_parent():
    before = _shm_names()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _script(
                """
                import sys, numpy as np, pyexec
                from helpers import ident, sleep_then
                ex = pyexec.ProcessPoolExecutor(2)
                a = np.arange(1 << 18, dtype=np.float64)
                held = [ex.submit(ident, a).result() for _ in range(20)]
                ex.submit(sleep_then, 60)
                print("ready", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.kill()
        proc.wait(30)
    finally:
        proc.kill()
        proc.stdin.close()
        proc.stdout.close()
    assert _shm_names() <= before


def _no_memfd(size):
    raise OSError(28, "No space left on device (forced by the test)")


@pytest.mark.timeout(120)
def test_fallback_warns_when_no_arena_can_be_made(monkeypatch):
    """No arena: a clear RuntimeWarning, and big calls still work (in the parent's
    direction through fresh segments or the pipe)."""
    monkeypatch.setattr(_payloads, "create_arena", _no_memfd)
    a = np.arange(BIG // 8, dtype=np.float64)
    with pyexec.ProcessPoolExecutor(1) as ex:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = ex.submit(ident, a).result(timeout=60)
        assert np.array_equal(out, a)
        ex.shutdown()
    assert any("shared-memory arena" in str(w.message) for w in caught)


@pytest.mark.timeout(120)
def test_arena_size_zero_is_the_pipe_only(monkeypatch):
    monkeypatch.setenv(_payloads.ARENA_ENV, "0")
    a = np.arange(BIG // 8, dtype=np.float64)
    with pyexec.ProcessPoolExecutor(1) as ex:
        assert np.array_equal(ex.submit(ident, a).result(timeout=60), a)
        assert not _uses_arena(ex)
    with pytest.raises(ValueError):
        pyexec.ProcessPoolExecutor(1, arena_size=-1)
    assert _payloads.arena_size(None) == 0
    monkeypatch.setenv(_payloads.ARENA_ENV, "16M")
    assert _payloads.arena_size(None) == 16 << 20


class Unpicklable:
    def __reduce__(self):
        raise TypeError("not this one")


@pytest.mark.timeout(60)
def test_unpicklable_big_argument_fails_its_own_future():
    a = np.arange(BIG // 8, dtype=np.float64)
    with pyexec.ProcessPoolExecutor(1) as ex:
        bad = ex.submit(ident, (a, Unpicklable()))
        good = ex.submit(ident, a)
        with pytest.raises(TypeError, match="not this one"):
            bad.result(timeout=60)
        assert np.array_equal(good.result(timeout=60), a)


@pytest.mark.timeout(60)
def test_big_argument_is_referenced_until_dispatch_not_copied():
    """submit keeps views of a big argument, not a copy (the stdlib pickles later too)."""
    from pyexec._tasks import dump_call

    a = np.arange(BIG // 8, dtype=np.float64)
    call = dump_call(ident, (a,), {})
    assert not isinstance(call, bytes) and len(call.payload) < 4096
    small = dump_call(ident, (np.arange(10),), {})
    assert isinstance(small, bytes) and pickle.loads(small)[1][0].sum() == 45


@pytest.mark.timeout(60)
def test_big_bytes_are_never_copied_into_an_in_band_pickle():
    """Big bytes or a bytearray among a call's arguments, or in a result, go to
    shared memory at once: an in-band pickle made first would copy them whole
    (8 MiB of fresh memory, the GIL held) only to be thrown away."""
    import socket
    import tracemalloc

    from pyexec import _frames
    from pyexec._tasks import dump_call
    from pyexec._worker import _dumps_result

    big = bytes(8 << 20)
    big_array = bytearray(big)
    calls = [((big,), {}), ((1, big_array), {}), ((), {"data": big})]
    results = [(os.getpid(), big), big_array, {"data": big}, [big]]
    a, b = socket.socketpair()
    chan = _payloads.Channel(os.dup(a.fileno()), 64 << 20, mapped=True)
    tracemalloc.start()
    try:
        for args, kwargs in calls:
            tracemalloc.reset_peak()
            call = dump_call(ident, args, kwargs)
            assert not isinstance(call, bytes), (args, kwargs)
            assert tracemalloc.get_traced_memory()[1] < BIG, (args, kwargs)
            call.release()
        for r in results:
            tracemalloc.reset_peak()
            _payload, kind, flags = _dumps_result(r, pickle.dumps, 5, chan)
            assert kind == _frames.KIND_RESULT and flags & _frames.FLAG_OOB, type(r)
            assert tracemalloc.get_traced_memory()[1] < BIG, type(r)
    finally:
        tracemalloc.stop()
        chan.close()
        a.close()
        b.close()


@pytest.mark.timeout(120)
def test_threads_submit_big_calls_at_once():
    a = np.arange(BIG // 8, dtype=np.float64)
    errors = []
    with pyexec.ProcessPoolExecutor(2) as ex:

        def run():
            try:
                for _ in range(10):
                    assert np.array_equal(ex.submit(ident, a).result(timeout=60), a)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors


def _count_copier_puts(monkeypatch) -> list:
    """Record the results handed to the copier threads (in the parent, any start method)."""
    puts: list = []
    put = _copier.Copier.put

    def counting(self, task, load):
        puts.append(task.tid)
        return put(self, task, load)

    monkeypatch.setattr(_copier.Copier, "put", counting)
    return puts


@pytest.mark.timeout(120)
def test_big_bytes_results_are_copied_apart_and_all_settled_by_shutdown(ctx, monkeypatch):
    """Results whose big bytes the copier threads copy (not the manager) come back right,
    are all settled when shutdown(wait=True) returns, and leave no thread behind."""
    puts = _count_copier_puts(monkeypatch)
    threads = set(threading.enumerate())
    n = 2 * _outcomes.COPY_APART
    ex = pyexec.ProcessPoolExecutor(2, mp_context=ctx)
    futures = [ex.submit(big_bytes, i, n) for i in range(12)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    for i, f in enumerate(futures):
        out = f.result()
        assert type(out) is bytes and out == big_bytes(i, n)
    assert len(puts) == 12  # all left to the copier: no result() read one itself (help())
    stats = ex.stats()
    assert (stats.completed, stats.failed) == (12, 0)
    assert [t.name for t in threading.enumerate() if t not in threads and t.is_alive()] == []


@pytest.mark.timeout(120)
def test_a_result_copied_apart_that_cannot_unpickle_fails_its_own_future(monkeypatch):
    puts = _count_copier_puts(monkeypatch)
    n = 2 * _outcomes.COPY_APART
    with pyexec.ProcessPoolExecutor(1) as ex:
        bad = ex.submit(big_bytes_and_unloadable, n)
        good = ex.submit(big_bytes, 3, n)
        # wait(), not result(): a result() may read its own call's result (help()).
        assert not concurrent.futures.wait([bad, good], timeout=60).not_done
        with pytest.raises(pickle.UnpicklingError, match="loads only in the process"):
            bad.result(timeout=60)
        assert isinstance(bad.exception(), pyexec.BrokenProcessPool)  # as the stdlib's type
        assert good.result(timeout=60) == big_bytes(3, n)
        assert ex.submit(big_bytes, 4, 10).result(timeout=60) == big_bytes(4, 10)
        stats = ex.stats()
    assert len(puts) == 2 and (stats.completed, stats.failed) == (2, 1)


_FORKS: list = []


def _threads_at_fork() -> None:
    if _FORKS and _FORKS[-1] is None:
        _FORKS[-1] = sorted(t.name for t in threading.enumerate() if t.name.startswith("pyexec"))


os.register_at_fork(before=_threads_at_fork)


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12's note, if the test fails
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_no_copier_thread_runs_when_a_fork_pool_forks(method):
    """A new fork pool parks the other pools' managers before it forks its zygote: their
    copier threads end too, with the copies they had (and the calls then finish). Not
    under spawn, whose workers die with the thread that started them: see park()."""
    n = 2 * _outcomes.COPY_APART
    with pyexec.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method)) as first:
        futures = [first.submit(big_bytes, i, n) for i in range(40)]
        while not any(f.done() for f in futures):
            futures[0].exception(timeout=60)  # results flow: copies are under way
        _FORKS.append(None)
        with pyexec.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as new:
            assert new.submit(ident, 5).result(timeout=60) == 5
        assert _FORKS[-1] == []
        for i, f in enumerate(futures):
            assert f.result(timeout=60) == big_bytes(i, n)


@pytest.mark.timeout(120)
def test_results_are_copied_by_the_manager_when_no_copier_thread_starts(monkeypatch):
    start = threading.Thread.start

    def refuse_copiers(self):
        if self.name == "pyexec-copier":
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse_copiers)
    n = 2 * _outcomes.COPY_APART
    with pyexec.ProcessPoolExecutor(1) as ex:
        futures = [ex.submit(big_bytes, i, n) for i in range(4)]
        assert not concurrent.futures.wait(futures, timeout=60).not_done  # the manager reads
        assert [f.result(timeout=60) for f in futures] == [big_bytes(i, n) for i in range(4)]
