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
