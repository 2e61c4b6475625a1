"""The workloads: what one timed run of a pool does, and the registry of them all.
The registry (``WORKLOADS``) is read-only; a run uses only what it is given.

Adding a workload is one function plus one ``Workload`` entry in ``WORKLOADS``
(its place there is its row in the table). Three kinds, by how a run is made:

- ``"pool"``: ``run(pool, n) -> value`` on a fresh pool that has already
  returned one result per worker (warmed up); ``n`` is the workload's count.
- ``"startup"``: ``run(cls, workers, method) -> value``; the run makes its own pool.
- ``"process"``: ``run(pool, n) -> seconds`` on a warmed-up pool in a fresh
  interpreter per pool, once (no repeats), which then reports its peak RSS: the
  pool's parent side alone. The cell is n / seconds; the pools of
  ``SLOW_AT_SCALE`` run n // ``SCALE_REDUCTION`` items unless ``--full``.

Every run checks its results, so a pool that is fast and wrong fails.

Rows with ``default=False`` run only when ``--workloads`` names them (the
payload and map rows of issues 16 and 17); ``GROUPS`` names a set of rows at
once (``payload-sweep``). A row may not apply to a pool (``applies``), or need
a package (``needs``, e.g. numpy): its cell then reads n/a, with the reason.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyexec.bench.pools import POOL_CLASSES, Pool

MiB = 1 << 20
# Smaller --size shrinks every count, never below MIN_COUNT.
MIN_COUNT = 4
# chunked-map uses count // CHUNKS items per chunk (12,500 at --size 1).
CHUNKS = 8
PAYLOAD_BYTES = 8 * MiB
# Calls in flight per worker in the payload workload (bounds parent memory).
PAYLOAD_WINDOW = 2
# Pools whose scale run takes minutes at a million items (map with chunksize 1
# through a feeder thread): they map a twentieth of the items unless --full.
SLOW_AT_SCALE = frozenset({"concurrent.futures", "loky", "pebble"})
SCALE_REDUCTION = 20
SCALE_TIMEOUT = 1800.0
# big-array, big-bytes, array-roundtrip and payload-rss: 8 MiB each way per call.
BIG_BYTES = 8 * MiB
# payload-sweep: one row per array size, sequential round trips; each row moves
# about SWEEP_VOLUME bytes each way at --size 1 (at least MIN_COUNT trips).
SWEEP_SIZES = (64 << 10, 256 << 10, 1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB)
SWEEP_VOLUME = 256 * MiB
SWEEP_MAX_TRIPS = 400
NUMPY = ("numpy", "needs numpy: pip install 'pyexec[bench]' (or pip install numpy)")
# The dask-* rows: DaskExecutor against Client.get_executor(), each on a fresh LocalCluster.
DASK = ("distributed", "needs distributed: pip install 'pyexec[dask]'")
DASK_POOLS = ("pyexec.dask", "dask.get_executor")
# dask-map's chunksize (Client.get_executor().map ignores it: one task per item).
DASK_CHUNK = 100


def identity(x: Any) -> Any:
    """Return x: the call every workload sends (importable, so spawn works)."""
    return x


def nbytes_of(x: Any) -> int:
    """The size of an array or bytes: payload-rss's call, whose result is small."""
    return x.nbytes if hasattr(x, "nbytes") else len(x)


def warm(pool: Pool) -> None:
    """Wait for one result per worker, so timing starts with a running pool."""
    for h in [pool.submit(identity, i) for i in range(pool.workers)]:
        pool.result(h)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"wrong results from {what}")


# ---- one function per workload ---------------------------------------------


def run_tiny_submit(pool: Pool, n: int) -> float:
    """n submits, then every result: tasks per second."""
    t0 = time.perf_counter()
    handles = [pool.submit(identity, i) for i in range(n)]
    for i, h in enumerate(handles):
        _check(pool.result(h) == i, "tiny-submit")
    return n / (time.perf_counter() - t0)


def run_tiny_map(pool: Pool, n: int) -> float:
    """map with chunksize 1: items per second."""
    t0 = time.perf_counter()
    out = list(pool.map(identity, range(n), 1))
    elapsed = time.perf_counter() - t0
    _check(out == list(range(n)), "tiny-map")
    return n / elapsed


def chunk_of(n: int) -> int:
    """The chunksize of chunked-map for n items (12,500 for 100,000)."""
    return max(1, n // CHUNKS)


def run_chunked_map(pool: Pool, n: int) -> float:
    """map in CHUNKS big chunks: items per second."""
    t0 = time.perf_counter()
    out = list(pool.map(identity, range(n), chunk_of(n)))
    elapsed = time.perf_counter() - t0
    _check(out == list(range(n)), "chunked-map")
    return n / elapsed


def run_latency(pool: Pool, n: int) -> float:
    """n sequential submit().result(), after n // 10 untimed ones as the floor
    program makes (a fresh pool's first few hundred round trips are slower:
    the parent and its worker often start on one CPU, until the scheduler
    spreads them): microseconds per round trip."""
    for i in range(n // 10):
        _check(pool.result(pool.submit(identity, i)) == i, "latency")
    t0 = time.perf_counter()
    for i in range(n):
        _check(pool.result(pool.submit(identity, i)) == i, "latency")
    return (time.perf_counter() - t0) / n * 1e6


def run_payload(pool: Pool, n: int) -> float:
    """n calls that send and return PAYLOAD_BYTES each: milliseconds per call."""
    data = bytes(PAYLOAD_BYTES)
    window: deque = deque()
    t0 = time.perf_counter()
    for _ in range(n):
        if len(window) >= PAYLOAD_WINDOW * pool.workers:
            _check(len(pool.result(window.popleft())) == PAYLOAD_BYTES, "payload")
        window.append(pool.submit(identity, data))
    while window:
        _check(len(pool.result(window.popleft())) == PAYLOAD_BYTES, "payload")
    return (time.perf_counter() - t0) / n * 1e3


def run_scale(pool: Pool, n: int) -> float:
    """map over n items with default arguments, consumed as they come: seconds."""
    t0 = time.perf_counter()
    total = 0
    count = 0
    for x in pool.map(identity, range(n), None):
        total += x
        count += 1
    elapsed = time.perf_counter() - t0
    _check(count == n and total == n * (n - 1) // 2, "scale")
    return elapsed


def big_array(nbytes: int) -> Any:
    """A numpy float64 array of nbytes, its values distinct (checked after the trip)."""
    import numpy as np

    return np.arange(nbytes // 8, dtype=np.float64)


def _same_array(out: Any, arr: Any) -> bool:
    """Shape, dtype, the first 1,024 values and the last (a full compare would be timed too)."""
    if out.shape != arr.shape or out.dtype != arr.dtype or out[-1] != arr[-1]:
        return False
    return bool((out[:1024] == arr[:1024]).all())


def _all_at_once(pool: Pool, n: int, data: Any, same: Callable[[Any], bool], what: str) -> float:
    t0 = time.perf_counter()
    handles = [pool.submit(identity, data) for _ in range(n)]
    for h in handles:
        _check(same(pool.result(h)), what)
    return n / (time.perf_counter() - t0)


def run_big_array(pool: Pool, n: int) -> float:
    """n calls each sending and returning an 8 MiB float64 array, all submitted at once:
    calls per second."""
    arr = big_array(BIG_BYTES)
    return _all_at_once(pool, n, arr, lambda out: _same_array(out, arr), "big-array")


def run_big_bytes(pool: Pool, n: int) -> float:
    """n calls each sending and returning 8 MiB of bytes, all submitted at once: calls/s."""
    data = bytes(range(256)) * (BIG_BYTES // 256)
    return _all_at_once(pool, n, data, lambda out: out == data, "big-bytes")


def _roundtrips(pool: Pool, n: int, nbytes: int, what: str) -> float:
    arr = big_array(nbytes)
    _check(_same_array(pool.result(pool.submit(identity, arr)), arr), what)  # untimed
    t0 = time.perf_counter()
    for _ in range(n):
        _check(_same_array(pool.result(pool.submit(identity, arr)), arr), what)
    return (time.perf_counter() - t0) / n * 1e3


def run_array_roundtrip(pool: Pool, n: int) -> float:
    """n sequential round trips of an 8 MiB array (submit, result, next): ms each."""
    return _roundtrips(pool, n, BIG_BYTES, "array-roundtrip")


def sweep_name(nbytes: int) -> str:
    """The row of payload-sweep for one size: sweep-64KiB ... sweep-64MiB."""
    return f"sweep-{nbytes >> 20}MiB" if nbytes >= MiB else f"sweep-{nbytes >> 10}KiB"


def _sweep_run(nbytes: int) -> Callable[[Pool, int], float]:
    def run(pool: Pool, n: int) -> float:
        return _roundtrips(pool, n, nbytes, sweep_name(nbytes))

    run.__doc__ = f"n sequential round trips of a {sweep_name(nbytes)[6:]} array: ms each."
    return run


def run_payload_rss(pool: Pool, n: int) -> float:
    """n calls pending at once that share one 8 MiB array argument, each returning its
    size: seconds (the row's value is the parent's peak RSS)."""
    arr = big_array(BIG_BYTES)
    t0 = time.perf_counter()
    handles = [pool.submit(nbytes_of, arr) for _ in range(n)]
    for h in handles:
        _check(pool.result(h) == BIG_BYTES, "payload-rss")
    return time.perf_counter() - t0


def run_map_default(pool: Pool, n: int) -> float:
    """list(map(identity, range(n))) with the pool's default arguments: seconds."""
    t0 = time.perf_counter()
    out = pool.map(identity, range(n), None)
    out = out if isinstance(out, list) else list(out)
    elapsed = time.perf_counter() - t0
    _check(len(out) == n and out[-1] == n - 1 and sum(out) == n * (n - 1) // 2, "map-default")
    return elapsed


def run_map_unordered(pool: Pool, n: int) -> float:
    """identity over range(n) in completion order (pool.map_unordered): seconds."""
    t0 = time.perf_counter()
    total = count = 0
    for x in pool.map_unordered(identity, range(n)):
        total += x
        count += 1
    elapsed = time.perf_counter() - t0
    _check(count == n and total == n * (n - 1) // 2, "map-unordered")
    return elapsed


def run_dask_map(pool: Pool, n: int) -> float:
    """map over n items with chunksize DASK_CHUNK: items per second."""
    t0 = time.perf_counter()
    out = list(pool.map(identity, range(n), DASK_CHUNK))
    elapsed = time.perf_counter() - t0
    _check(out == list(range(n)), "dask-map")
    return n / elapsed


def _unordered_applies(pool: str) -> str | None:
    return POOL_CLASSES[pool].unordered_missing()


def run_startup(cls: type[Pool], workers: int, method: str) -> float:
    """Construct, first result, shut down: milliseconds."""
    t0 = time.perf_counter()
    pool = cls(workers, method)
    try:
        _check(pool.result(pool.submit(identity, 7)) == 7, "startup")
    finally:
        pool.close()
    return (time.perf_counter() - t0) * 1e3


# ---- the registry ------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One row of the table: how to run it, its count and its unit."""

    name: str
    run: Callable[..., float]
    unit: str
    higher_is_better: bool
    # Items or calls at --size 1; None: not sized (one run is one event).
    count: int | None
    kind: str = "pool"  # "pool", "startup" or "process": see the module docstring
    # Shown in the table's label: a name and a function of the count, e.g. the chunksize.
    detail: tuple[str, Callable[[int], int]] | None = None
    # Also time the raw pipe round trip floor (floor.py), n trips after each repeat.
    floor: bool = False
    # In the run without --workloads (False: only when named, so the default run keeps its time).
    default: bool = True
    # A package the row needs (its cells read n/a without it) and the hint to install it.
    needs: tuple[str, str] | None = None
    # None if the row applies to the pool, else why not (its cell reads n/a).
    applies: Callable[[str], str | None] | None = None
    # The pool its ratios are to (None: concurrent.futures, as everywhere).
    baseline: str | None = None
    # "process" rows: the figure of the cell, "items_per_s" (n / seconds) or "peak_rss_mib".
    value: str = "items_per_s"
    # "process" rows: the SLOW_AT_SCALE pools run a SCALE_REDUCTION-th of the items.
    reduce_slow: bool = True
    # The pools the row runs on, the others' cells n/a (None: every pool but the opt-in
    # ones, whose ``default`` is False; naming the row adds these to the run's pools).
    pools: tuple[str, ...] | None = None


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("tiny-submit", run_tiny_submit, "tasks/s", True, 20_000),
        Workload("tiny-map", run_tiny_map, "items/s", True, 20_000),
        Workload(
            "chunked-map", run_chunked_map, "items/s", True, 100_000, detail=("chunksize", chunk_of)
        ),
        Workload("latency", run_latency, "µs/round trip", False, 2_000, floor=True),
        Workload("payload", run_payload, "ms/task", False, 40),
        Workload("scale", run_scale, "items/s", True, 1_000_000, kind="process"),
        Workload("startup", run_startup, "ms", False, None, kind="startup"),
        # ---- issue 16: big payloads (numpy arrays and bytes of 8 MiB and more) ----
        Workload("big-array", run_big_array, "calls/s", True, 40, default=False, needs=NUMPY),
        Workload("big-bytes", run_big_bytes, "calls/s", True, 40, default=False),
        Workload(
            "array-roundtrip",
            run_array_roundtrip,
            "ms/round trip",
            False,
            20,
            default=False,
            needs=NUMPY,
        ),
        *[
            Workload(
                sweep_name(size),
                _sweep_run(size),
                "ms/round trip",
                False,
                max(MIN_COUNT, min(SWEEP_MAX_TRIPS, SWEEP_VOLUME // size)),
                default=False,
                needs=NUMPY,
            )
            for size in SWEEP_SIZES
        ],
        Workload(
            "payload-rss",
            run_payload_rss,
            "MiB peak RSS",
            False,
            40,
            kind="process",
            default=False,
            needs=NUMPY,
            value="peak_rss_mib",
            reduce_slow=False,
        ),
        # ---- issue 17: the map family, with default arguments ----
        Workload(
            "map-default",
            run_map_default,
            "items/s",
            True,
            1_000_000,
            kind="process",
            default=False,
            baseline="multiprocessing.Pool",
        ),
        Workload(
            "map-unordered",
            run_map_unordered,
            "items/s",
            True,
            1_000_000,
            kind="process",
            default=False,
            applies=_unordered_applies,
            baseline="multiprocessing.Pool",
            reduce_slow=False,
        ),
        # ---- issue 18: the executor on a Dask cluster (needs pyexec[dask]) ----
        Workload(
            "dask-submit",
            run_tiny_submit,
            "tasks/s",
            True,
            1_000,
            default=False,
            needs=DASK,
            baseline="dask.get_executor",
            pools=DASK_POOLS,
        ),
        Workload(
            "dask-map",
            run_dask_map,
            "items/s",
            True,
            1_000,
            default=False,
            needs=DASK,
            baseline="dask.get_executor",
            pools=DASK_POOLS,
            detail=("chunksize", lambda n: DASK_CHUNK),
        ),
    ]
}
DEFAULT_WORKLOADS = tuple(name for name, w in WORKLOADS.items() if w.default)
# Names that stand for several rows on the command line.
GROUPS: dict[str, tuple[str, ...]] = {"payload-sweep": tuple(map(sweep_name, SWEEP_SIZES))}


def missing_need(workload: str) -> str | None:
    """Why a row cannot run here (its package is missing), or None."""
    need = WORKLOADS[workload].needs
    if need is None:
        return None
    try:
        __import__(need[0])
    except ImportError:
        return need[1]
    return None


def not_applicable(workload: str, pool: str) -> str | None:
    """Why a row's cell for this pool reads n/a (a missing package, a missing feature), or None."""
    wl = WORKLOADS[workload]
    if wl.pools is not None and pool not in wl.pools:
        return f"the row compares {' and '.join(wl.pools)}"
    if wl.pools is None and not POOL_CLASSES[pool].default:
        return f"{pool} runs only the rows made for it"
    return missing_need(workload) or (wl.applies(pool) if wl.applies else None)


# ---- running one ---------------------------------------------------------------


def run_once(name: str, workload: str, workers: int, method: str, n: int) -> float:
    """One timed run of a "pool" or "startup" workload; a fresh, warmed-up pool for the former."""
    cls = POOL_CLASSES[name]
    wl = WORKLOADS[workload]
    if wl.kind == "startup":
        return wl.run(cls, workers, method)
    pool = cls(workers, method)
    try:
        warm(pool)
        return wl.run(pool, n)
    finally:
        pool.close()
        # Collect what this pool left in reference cycles now, untimed: pebble
        # leaves ~200k objects per chunked map, and the full collection they
        # cost (~0.1 s) would otherwise land in the next pool's timed run.
        gc.collect()


def peak_rss_mib() -> float:
    """This process's peak resident set size, in MiB.

    On Linux, VmHWM of /proc/self/status: ``ru_maxrss`` is not this process's
    own there, since Linux carries the parent's peak across fork and exec into
    the child's ``ru_maxrss`` (so a big bench parent would set every scale
    child's figure). Elsewhere ``getrusage(RUSAGE_SELF).ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MiB if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def process_child(spec: dict) -> dict:
    """In the fresh process: run a "process" workload once; its seconds and peak RSS."""
    wl = WORKLOADS[spec.get("workload", "scale")]
    pool = POOL_CLASSES[spec["pool"]](spec["workers"], spec["method"])
    try:
        warm(pool)
        base = peak_rss_mib()
        elapsed = wl.run(pool, spec["n"])
    finally:
        pool.close()
    return {"seconds": elapsed, "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base}


def run_in_process(workload: str, name: str, workers: int, method: str, n: int) -> dict:
    """Run process_child in a fresh interpreter (``--_scale-child``) and return its figures."""
    spec = {"workload": workload, "pool": name, "workers": workers, "method": method, "n": n}
    env = dict(os.environ)
    here = str(Path(os.path.abspath(__file__)).parents[2])  # the directory holding pyexec/
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pyexec.bench", "--_scale-child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=SCALE_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{workload} run of {name} failed:\n{proc.stderr.strip()[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["n"] = n
    out["items_per_s"] = n / out["seconds"]
    return out
