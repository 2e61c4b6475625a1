"""No leaks over many pool lifetimes; correct results under load.

The leak tests count the parent's open fds, threads and child processes and
its resident memory across many create/submit/shutdown cycles; the autouse
no_leaks fixture checks the end state as well.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import threading
import time

import faults_funcs as ff
import psutil
import pytest

import pyexec

MiB = 1 << 20
# Tiny tasks the soak test runs (a million in a soak run; bounded by default).
SOAK_N = int(os.environ.get("PYEXEC_SOAK_N", "50000"))


def _snapshot() -> tuple[int, int, int, int]:
    """(open fds, threads, live child processes, RSS bytes) of this process."""
    gc.collect()
    me = psutil.Process()
    kids = [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    return (
        len(os.listdir("/proc/self/fd")),
        threading.active_count(),
        len(kids),
        me.memory_info().rss,
    )


def _settled_snapshot(base: tuple, timeout: float = 10.0) -> tuple:
    """A snapshot, retried briefly while fds/threads/children differ from base (exits race)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = _snapshot()
        if snap[:3] == base[:3] or time.monotonic() > deadline:
            return snap
        time.sleep(0.05)


def _cycles(ctx, n: int, warmup: int) -> tuple[tuple, tuple]:
    """Run n create/submit/shutdown cycles; snapshots after warmup and at the end."""
    base = None
    for i in range(n):
        ex = pyexec.ProcessPoolExecutor(2, mp_context=ctx)
        futs = [ex.submit(ff.square, k) for k in range(4)]
        assert [f.result(timeout=30) for f in futs] == [0, 1, 4, 9]
        assert list(ex.map(ff.square, range(8))) == [k * k for k in range(8)]
        ex.shutdown(wait=True)
        del ex, futs
        if i + 1 == warmup:
            base = _settled_snapshot(_snapshot())
    return base, _settled_snapshot(base)


def _assert_flat(base: tuple, end: tuple, n: int, rss_slack: int) -> None:
    fds0, threads0, kids0, rss0 = base
    fds1, threads1, kids1, rss1 = end
    assert fds1 == fds0, f"open fds grew from {fds0} to {fds1} over {n} cycles"
    assert threads1 == threads0, f"threads grew from {threads0} to {threads1}"
    assert kids1 == kids0, f"child processes grew from {kids0} to {kids1}"
    assert rss1 - rss0 < rss_slack, f"RSS grew by {(rss1 - rss0) / MiB:.1f} MiB over {n} cycles"


@pytest.mark.timeout(120)
def test_no_leaks_200_cycles_fork():
    """200 pools under fork: fds, threads and children flat, RSS roughly flat."""
    base, end = _cycles(multiprocessing.get_context("fork"), 200, warmup=20)
    _assert_flat(base, end, 200, rss_slack=8 * MiB)


@pytest.mark.timeout(120)
def test_no_leaks_20_cycles_spawn():
    """20 pools under spawn: the same, fewer cycles (each starts an interpreter)."""
    base, end = _cycles(multiprocessing.get_context("spawn"), 20, warmup=4)
    _assert_flat(base, end, 20, rss_slack=8 * MiB)


@pytest.mark.timeout(120)
def test_no_leaks_after_broken_pools():
    """Pools broken by a dying worker leak nothing either (fork, 30 cycles)."""
    ctx = multiprocessing.get_context("fork")
    base = None
    for i in range(30):
        ex = pyexec.ProcessPoolExecutor(2, mp_context=ctx)
        assert ex.submit(ff.square, 3).result(timeout=30) == 9
        exc = ex.submit(ff.os_exit_now, 5).exception(timeout=30)
        assert isinstance(exc, pyexec.BrokenProcessPool), repr(exc)
        ex.shutdown(wait=True)
        del ex, exc
        if i + 1 == 5:
            base = _settled_snapshot(_snapshot())
    _assert_flat(base, _settled_snapshot(base), 30, rss_slack=8 * MiB)


# ---- load -----------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_eight_threads_submit_at_once(ctx):
    """Eight threads submit at the same moment: every result is right."""
    per = 250
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        go = threading.Barrier(8)
        results: list = [None] * 8
        errors: list = []

        def submitter(k: int) -> None:
            try:
                go.wait()
                futs = [ex.submit(ff.square, k * per + i) for i in range(per)]
                results[k] = [f.result(timeout=60) for f in futs]
            except BaseException as exc:  # reported below, with the thread's number
                errors.append((k, exc))

        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(80)
        assert not errors, errors
        for k in range(8):
            assert results[k] == [(k * per + i) ** 2 for i in range(per)], k
        assert ex.stats().completed >= 8 * per


@pytest.mark.timeout(90)
@pytest.mark.parametrize("chunksize", [1, 7])
def test_map_random_sizes_and_durations(ctx, chunksize):
    """map over calls of random result size (0 to 4 MiB) and duration: right and in order."""
    rng = random.Random(20240601 + chunksize)
    n = 150
    sizes = [rng.choice([0, 1, 100, 5000, 70_000, 300_000, 4 * MiB]) for _ in range(n)]
    waits = [rng.choice([0, 0, 0, 0.001, 0.003]) for _ in range(n)]
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        got = ex.map(ff.sized, sizes, waits, range(n), chunksize=chunksize)
        for i, (tag, size, data) in enumerate(got):
            assert (tag, size) == (i, sizes[i])
            assert data == bytes([i % 256]) * size, i


@pytest.mark.timeout(90)
def test_large_arguments_and_results_interleaved(ctx):
    """Calls with large arguments and results interleaved with tiny ones: all correct."""
    rng = random.Random(7)
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        blobs = [bytes([i]) * rng.choice([10, 200_000, 3 * MiB]) for i in range(40)]
        futs = [(b, ex.submit(ff.ident, b)) for b in blobs]
        futs += [(i, ex.submit(ff.ident, i)) for i in range(200)]
        for want, f in futs:
            assert f.result(timeout=60) == want


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_soak_tiny_tasks_rss_flat():
    """PYEXEC_SOAK_N tiny tasks (a million in a soak run): RSS flat once results are consumed."""
    rounds = 10
    per = max(1, SOAK_N // rounds)
    rss = []
    with pyexec.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
        for r in range(rounds):
            total = 0
            for x in ex.map(ff.ident, range(per), buffersize=4096):
                total += x
            assert total == per * (per - 1) // 2, r
            futs = [ex.submit(ff.ident, i) for i in range(min(per, 2000))]
            assert [f.result(timeout=60) for f in futs] == list(range(len(futs)))
            del futs
            gc.collect()
            rss.append(psutil.Process().memory_info().rss)
        stats = ex.stats()
    assert stats.completed >= rounds * per
    # Memory after the first rounds (allocator warm-up) must not keep growing.
    growth = rss[-1] - rss[1]
    assert growth < 16 * MiB, f"RSS grew {growth / MiB:.1f} MiB: {[x // MiB for x in rss]} MiB"


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_soak_random_size_and_duration_in_order():
    """PYEXEC_SOAK_N calls (a million in a soak run) of random result size (0 to 2 KiB) and
    duration (mostly none, 1 in 1000 sleeps 1 ms), through map and submit: every result
    right, map's in order, and the parent's RSS flat once results are consumed."""
    rng = random.Random(1_000_003)
    n = SOAK_N
    sizes = [rng.choice([0, 1, 16, 200, 2048]) for _ in range(n)]
    waits = [0.001 if rng.random() < 0.001 else 0 for _ in range(n)]
    rss = []
    with pyexec.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
        step = max(1, n // 10)
        for start in range(0, n, step):
            idx = range(start, min(n, start + step))
            got = ex.map(ff.sized, [sizes[i] for i in idx], [waits[i] for i in idx], idx)
            for i, (tag, size, data) in zip(idx, got, strict=True):
                assert (tag, size) == (i, sizes[i]) and data == bytes([i % 256]) * size, i
            some = [ex.submit(ff.sized, sizes[i], 0, i) for i in idx[:500]]
            assert [f.result(timeout=60)[0] for f in some] == list(idx[:500])
            del some, got
            gc.collect()
            rss.append(psutil.Process().memory_info().rss)
    growth = rss[-1] - rss[min(2, len(rss) - 1)]
    assert growth < 16 * MiB, f"RSS grew {growth / MiB:.1f} MiB: {[x // MiB for x in rss]} MiB"
