"""Fixtures of the pytest-benchmark suite: a warmed-up pool of each kind.

Run it with ``python -m pytest bench/ --benchmark-only`` (see docs/BENCH.md).
It is not part of the test suite: pyproject.toml's ``testpaths`` names only
``tests``. The start method is multiprocessing's default unless
``PYEXEC_BENCH_START_METHOD`` says otherwise; ``PYEXEC_BENCH_POOLS`` (a comma
list, default ``pyexec,concurrent.futures``) picks the pools.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pyexec.bench import floor, pools, workloads

WORKERS = 2
METHOD = os.environ.get("PYEXEC_BENCH_START_METHOD") or multiprocessing.get_start_method()
POOLS = [
    pools.ALIASES.get(p.strip(), p.strip())
    for p in os.environ.get("PYEXEC_BENCH_POOLS", "pyexec,concurrent.futures").split(",")
    if p.strip()
]


@pytest.fixture(scope="session", autouse=True)
def _forkserver() -> None:
    """Start the forkserver once, outside every timing (it is shared, as in the stdlib)."""
    if METHOD == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


@pytest.fixture
def start() -> tuple[int, str]:
    """(workers, start method) of every pool in this run."""
    return WORKERS, METHOD


# The map family's rows (issue 17) are measured against multiprocessing.Pool's
# map and imap_unordered: that pool is in them even when PYEXEC_BENCH_POOLS
# leaves it out.
MAP_POOLS = POOLS + [p for p in ("multiprocessing.Pool",) if p not in POOLS]


@pytest.fixture(params=POOLS)
def pool_name(request) -> str:
    """Each pool under comparison in turn (skipped when its package is missing)."""
    if not pools.available(request.param):
        pytest.skip(f"{request.param} is not installed")
    return request.param


def _warm_pool(name: str) -> Iterator[pools.Pool]:
    p = pools.POOL_CLASSES[name](WORKERS, METHOD)
    try:
        workloads.warm(p)
        yield p
    finally:
        p.close()


@pytest.fixture
def pool(pool_name: str) -> Iterator[pools.Pool]:
    """A fresh pool of that kind that has already returned a result."""
    yield from _warm_pool(pool_name)


@pytest.fixture(params=MAP_POOLS)
def map_pool(request) -> Iterator[pools.Pool]:
    """As pool, over POOLS and multiprocessing.Pool (the map family's baseline)."""
    if not pools.available(request.param):
        pytest.skip(f"{request.param} is not installed")
    yield from _warm_pool(request.param)


@pytest.fixture
def echo() -> Iterator[tuple[int, int]]:
    """A Python process echoing single bytes over two pipes: (write fd, read fd)."""
    child = subprocess.Popen(
        [sys.executable, "-c", floor.ECHO_PY], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        yield child.stdin.fileno(), child.stdout.fileno()
    finally:
        child.stdin.close()
        child.stdout.close()
        child.wait(timeout=30)
