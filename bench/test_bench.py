"""pytest-benchmark: the workloads of ``python -m pyexec.bench``, smaller, per pool.

Each test is parametrized over the pools (pyexec and concurrent.futures by
default) and grouped by workload, so pytest-benchmark prints them side by side.
Every round runs on an already warmed-up pool and checks its results.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from pyexec.bench import workloads
from pyexec.bench.pools import POOL_CLASSES, Pool

ROUNDS = 5
TINY = 2_000
CHUNKED = 20_000
LATENCY_ROUNDS = 300
PAYLOAD_TASKS = 8
SCALE = 20_000
BIG_TASKS = 8
ARRAY_TRIPS = 10
MAP_ITEMS = 20_000


def _rounds(benchmark, fn: Callable[[], object], rounds: int = ROUNDS) -> None:
    """Time fn for a fixed number of rounds, after one untimed warm-up round."""
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="tiny-submit")
def test_tiny_submit(benchmark, pool: Pool) -> None:
    """TINY submits, then every result."""
    benchmark.extra_info["tasks"] = TINY
    _rounds(benchmark, lambda: workloads.run_tiny_submit(pool, TINY))


@pytest.mark.benchmark(group="tiny-map")
def test_tiny_map(benchmark, pool: Pool) -> None:
    """map over TINY items, chunksize 1."""
    benchmark.extra_info["items"] = TINY
    _rounds(benchmark, lambda: workloads.run_tiny_map(pool, TINY))


@pytest.mark.benchmark(group="chunked-map")
def test_chunked_map(benchmark, pool: Pool) -> None:
    """map over CHUNKED items in 8 chunks."""
    benchmark.extra_info["items"] = CHUNKED
    benchmark.extra_info["chunksize"] = workloads.chunk_of(CHUNKED)
    _rounds(benchmark, lambda: workloads.run_chunked_map(pool, CHUNKED))


@pytest.mark.benchmark(group="latency")
def test_latency(benchmark, pool: Pool) -> None:
    """One submit(identity, 1).result() round trip."""

    def trip() -> None:
        assert pool.result(pool.submit(workloads.identity, 1)) == 1

    benchmark.pedantic(trip, rounds=LATENCY_ROUNDS, iterations=1, warmup_rounds=10)


@pytest.mark.benchmark(group="latency")
def test_latency_floor_pipe(benchmark, echo: tuple[int, int]) -> None:
    """The floor under every pool: one byte there and back between two Python processes."""
    out, back = echo

    def trip() -> None:
        os.write(out, b"x")
        assert os.read(back, 1) == b"x"

    benchmark.pedantic(trip, rounds=LATENCY_ROUNDS * 10, iterations=1, warmup_rounds=100)


@pytest.mark.benchmark(group="payload")
def test_payload(benchmark, pool: Pool) -> None:
    """PAYLOAD_TASKS calls that send and return 8 MiB each."""
    benchmark.extra_info["tasks"] = PAYLOAD_TASKS
    benchmark.extra_info["bytes_each_way"] = workloads.PAYLOAD_BYTES
    _rounds(benchmark, lambda: workloads.run_payload(pool, PAYLOAD_TASKS), rounds=3)


@pytest.mark.benchmark(group="scale")
def test_scale(benchmark, pool: Pool) -> None:
    """map over SCALE tiny items with default arguments."""
    benchmark.extra_info["items"] = SCALE

    def run() -> None:
        assert sum(pool.map(workloads.identity, range(SCALE), None)) == SCALE * (SCALE - 1) // 2

    _rounds(benchmark, run, rounds=3)


@pytest.mark.benchmark(group="startup")
def test_startup(benchmark, pool_name: str, start: tuple[int, str]) -> None:
    """Construct, first result, shut down."""
    cls = POOL_CLASSES[pool_name]
    _rounds(benchmark, lambda: workloads.run_startup(cls, *start))


# ---- issue 16: big payloads ----------------------------------------------------
# payload-rss (the parent's peak RSS) is not a timing: it lives in `python -m pyexec.bench` only.


@pytest.mark.benchmark(group="big-array")
def test_big_array(benchmark, pool: Pool) -> None:
    """BIG_TASKS calls sending and returning an 8 MiB float64 array, all submitted at once."""
    pytest.importorskip("numpy", reason=workloads.NUMPY[1])
    benchmark.extra_info["tasks"] = BIG_TASKS
    benchmark.extra_info["bytes_each_way"] = workloads.BIG_BYTES
    _rounds(benchmark, lambda: workloads.run_big_array(pool, BIG_TASKS), rounds=3)


@pytest.mark.benchmark(group="big-bytes")
def test_big_bytes(benchmark, pool: Pool) -> None:
    """BIG_TASKS calls sending and returning 8 MiB of bytes, all submitted at once."""
    benchmark.extra_info["tasks"] = BIG_TASKS
    benchmark.extra_info["bytes_each_way"] = workloads.BIG_BYTES
    _rounds(benchmark, lambda: workloads.run_big_bytes(pool, BIG_TASKS), rounds=3)


@pytest.mark.benchmark(group="array-roundtrip")
def test_array_roundtrip(benchmark, pool: Pool) -> None:
    """ARRAY_TRIPS sequential round trips of an 8 MiB float64 array."""
    pytest.importorskip("numpy", reason=workloads.NUMPY[1])
    benchmark.extra_info["trips"] = ARRAY_TRIPS
    _rounds(benchmark, lambda: workloads.run_array_roundtrip(pool, ARRAY_TRIPS), rounds=3)


@pytest.mark.parametrize("nbytes", workloads.SWEEP_SIZES, ids=workloads.sweep_name)
def test_payload_sweep(benchmark, pool: Pool, nbytes: int) -> None:
    """One round trip of a float64 array of each size: where shared memory starts to pay."""
    pytest.importorskip("numpy", reason=workloads.NUMPY[1])
    benchmark.group = f"payload-sweep {workloads.sweep_name(nbytes)}"
    arr = workloads.big_array(nbytes)

    def trip() -> None:
        assert pool.result(pool.submit(workloads.identity, arr)).shape == arr.shape

    rounds = max(3, min(30, (64 << 20) // nbytes))
    benchmark.pedantic(trip, rounds=rounds, iterations=1, warmup_rounds=1)


# ---- issue 17: the map family, default arguments ----------------------------------


@pytest.mark.benchmark(group="map-default")
def test_map_default(benchmark, map_pool: Pool) -> None:
    """list(map(identity, range(MAP_ITEMS))) with the pool's default arguments."""
    benchmark.extra_info["items"] = MAP_ITEMS
    _rounds(benchmark, lambda: workloads.run_map_default(map_pool, MAP_ITEMS), rounds=3)


@pytest.mark.benchmark(group="map-unordered")
def test_map_unordered(benchmark, map_pool: Pool) -> None:
    """identity over range(MAP_ITEMS) in completion order (where the pool has it)."""
    missing = map_pool.unordered_missing()
    if missing:
        pytest.skip(missing)  # a feature the pool lacks, not a failure: nothing to time
    benchmark.extra_info["items"] = MAP_ITEMS
    _rounds(benchmark, lambda: workloads.run_map_unordered(map_pool, MAP_ITEMS), rounds=3)
