"""``python -m pyexec.bench``: pyexec and the other process pools, side by side.

Every pool runs the same workloads in one process, with the same start method
and worker count, interleaved: run 1 of every pool, then run 2 of every pool
(in a rotated order), and so on, so a noisy neighbour slows every pool alike.
Each timed run uses a fresh pool that has already returned a result (warmed
up), except ``startup``, which times exactly that; ``latency`` first makes a
tenth of its round trips untimed, as the floor program does. A cell is the
median over ``--repeats`` runs and its speed-up over ``concurrent.futures``
(higher is better, whatever the unit).

The ``scale`` workload maps over a million items with default arguments, each
pool in a fresh subprocess, whose peak RSS is then the pool's parent side
alone (VmHWM on Linux, ``ru_maxrss`` elsewhere). Pools that take minutes there
(``map`` with chunksize 1 through a feeder thread) run a twentieth of the items
unless ``--full`` is given; the table says so.

The latency floor is a raw pipe round trip between two processes: a small C
program compiled at first use with ``cc`` into a cache directory, or, when
that fails, the same ping-pong between two Python processes.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

MiB = 1 << 20
BASELINE = "concurrent.futures"
POOLS = ("pyexec", "concurrent.futures", "multiprocessing.Pool", "loky", "pebble")
ALIASES = {
    "cf": "concurrent.futures",
    "stdlib": "concurrent.futures",
    "mp": "multiprocessing.Pool",
    "mp.Pool": "multiprocessing.Pool",
    "pool": "multiprocessing.Pool",
}
WORKLOADS = ("tiny-submit", "tiny-map", "chunked-map", "latency", "payload", "scale", "startup")
# Counts at --size 1. Smaller sizes shrink every count (never below MIN_COUNT).
COUNTS = {
    "tiny-submit": 20_000,
    "tiny-map": 20_000,
    "chunked-map": 100_000,
    "latency": 2_000,
    "payload": 40,
    "scale": 1_000_000,
    "startup": 1,
}
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
# A timed run stuck this long dumps every thread's stack and ends the bench.
RUN_TIMEOUT = 600.0
QUICK_SIZE = 0.1

# (unit, higher is better) per workload.
UNITS: dict[str, tuple[str, bool]] = {
    "tiny-submit": ("tasks/s", True),
    "tiny-map": ("items/s", True),
    "chunked-map": ("items/s", True),
    "latency": ("µs/round trip", False),
    "payload": ("ms/task", False),
    "scale": ("items/s", True),
    "startup": ("ms", False),
}


def identity(x: Any) -> Any:
    """Return x: the call every workload sends (importable, so spawn works)."""
    return x


# ---- the pools, behind one small interface ---------------------------------


class Pool:
    """One pool under test: submit one call, map, shut down."""

    name = ""

    def __init__(self, workers: int, method: str) -> None:
        self.workers = workers
        self.method = method

    def submit(self, fn: Callable, arg: Any) -> Any:
        """Schedule fn(arg); return a handle for result()."""
        return self.p.submit(fn, arg)

    def result(self, handle: Any) -> Any:
        """Wait for a handle from submit() and return its value."""
        return handle.result()

    def map(self, fn: Callable, items: Iterable, chunksize: int | None) -> Iterable:
        """fn over items, in order; chunksize None means the pool's default."""
        if chunksize is None:
            return self.p.map(fn, items)
        return self.p.map(fn, items, chunksize=chunksize)

    def close(self) -> None:
        """Shut down and wait for every worker to exit."""
        self.p.shutdown(wait=True)


class PyexecPool(Pool):
    name = "pyexec"

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        import pyexec

        self.p = pyexec.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


class StdlibPool(Pool):
    name = "concurrent.futures"

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        from concurrent.futures import ProcessPoolExecutor

        self.p = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


class MpPool(Pool):
    name = "multiprocessing.Pool"

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        self.p = multiprocessing.get_context(method).Pool(workers)

    def submit(self, fn: Callable, arg: Any) -> Any:
        return self.p.apply_async(fn, (arg,))

    def result(self, handle: Any) -> Any:
        return handle.get()

    def map(self, fn: Callable, items: Iterable, chunksize: int | None) -> Iterable:
        return self.p.map(fn, items, chunksize)

    def close(self) -> None:
        self.p.close()
        self.p.join()


class LokyPool(Pool):
    name = "loky"

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        import loky
        from loky.backend.context import get_context

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loky warns that fork is not its default
            self.p = loky.ProcessPoolExecutor(workers, context=get_context(method))


class PebblePool(Pool):
    name = "pebble"

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        import pebble

        self.p = pebble.ProcessPool(workers, context=multiprocessing.get_context(method))

    def submit(self, fn: Callable, arg: Any) -> Any:
        return self.p.schedule(fn, args=(arg,))

    def map(self, fn: Callable, items: Iterable, chunksize: int | None) -> Iterable:
        return self.p.map(fn, items, chunksize=chunksize or 1).result()

    def close(self) -> None:
        self.p.close()
        self.p.join()


POOL_CLASSES: dict[str, type[Pool]] = {
    c.name: c for c in (PyexecPool, StdlibPool, MpPool, LokyPool, PebblePool)
}
_MODULES = {"loky": "loky", "pebble": "pebble"}


def available(name: str) -> bool:
    """Whether the pool's package imports here."""
    module = _MODULES.get(name)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def version_of(name: str) -> str:
    """The version of the package behind a pool."""
    if name in ("concurrent.futures", "multiprocessing.Pool"):
        return platform.python_version()
    module = __import__(_MODULES.get(name, name))
    return str(getattr(module, "__version__", "?"))


def warm(pool: Pool) -> None:
    """Wait for one result per worker, so timing starts with a running pool."""
    for h in [pool.submit(identity, i) for i in range(pool.workers)]:
        pool.result(h)


# ---- the workloads ---------------------------------------------------------


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"wrong results from {what}")


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


def run_startup(cls: type[Pool], workers: int, method: str) -> float:
    """Construct, first result, shut down: milliseconds."""
    t0 = time.perf_counter()
    pool = cls(workers, method)
    try:
        _check(pool.result(pool.submit(identity, 7)) == 7, "startup")
    finally:
        pool.close()
    return (time.perf_counter() - t0) * 1e3


RUNNERS: dict[str, Callable[[Pool, int], float]] = {
    "tiny-submit": run_tiny_submit,
    "tiny-map": run_tiny_map,
    "chunked-map": run_chunked_map,
    "latency": run_latency,
    "payload": run_payload,
}


def run_once(name: str, workload: str, workers: int, method: str, n: int) -> float:
    """One timed run of a workload on a fresh, warmed-up pool."""
    cls = POOL_CLASSES[name]
    if workload == "startup":
        return run_startup(cls, workers, method)
    pool = cls(workers, method)
    try:
        warm(pool)
        return RUNNERS[workload](pool, n)
    finally:
        pool.close()
        # Collect what this pool left in reference cycles now, untimed: pebble
        # leaves ~200k objects per chunked map, and the full collection they
        # cost (~0.1 s) would otherwise land in the next pool's timed run.
        gc.collect()


# ---- scale: each pool in a fresh process, for its own peak RSS -------------


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


def scale_child(spec: dict) -> dict:
    """In a fresh process: map over spec['n'] items with default args; time and peak RSS."""
    pool = POOL_CLASSES[spec["pool"]](spec["workers"], spec["method"])
    try:
        warm(pool)
        base = peak_rss_mib()
        n = spec["n"]
        t0 = time.perf_counter()
        total = 0
        count = 0
        for x in pool.map(identity, range(n), None):
            total += x
            count += 1
        elapsed = time.perf_counter() - t0
        _check(count == n and total == n * (n - 1) // 2, "scale")
    finally:
        pool.close()
    return {"seconds": elapsed, "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base}


def run_scale(name: str, workers: int, method: str, n: int) -> dict:
    """Run scale_child in a fresh interpreter and return its figures."""
    spec = {"pool": name, "workers": workers, "method": method, "n": n}
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
        raise RuntimeError(f"scale run of {name} failed:\n{proc.stderr.strip()[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["n"] = n
    out["items_per_s"] = n / out["seconds"]
    return out


# ---- the raw pipe round trip floor -----------------------------------------

_FLOOR_C = r"""
/* pipe_floor N: N one-byte round trips between two processes over two pipes;
   prints the mean microseconds per round trip. The floor under any pool. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

static int trip(int out, int in) {
    char c = 'x';
    return write(out, &c, 1) == 1 && read(in, &c, 1) == 1;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10000, i;
    int call[2], reply[2];
    struct timespec t0, t1;
    pid_t pid;
    char c;
    if (n < 1 || pipe(call) || pipe(reply)) return 2;
    pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) {
        close(call[1]); close(reply[0]);
        while (read(call[0], &c, 1) == 1 && write(reply[1], &c, 1) == 1) {}
        _exit(0);
    }
    close(call[0]); close(reply[1]);
    for (i = 0; i < n / 10 + 1; i++) if (!trip(call[1], reply[0])) return 3;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < n; i++) if (!trip(call[1], reply[0])) return 3;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    close(call[1]);
    waitpid(pid, NULL, 0);
    printf("%.3f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n / 1e3);
    return 0;
}
"""

_FLOOR_PY = r"""
import os, sys
while os.read(0, 1) and os.write(1, b"x"):
    pass
"""


def cache_dir() -> str:
    """Where the compiled floor program lives (XDG cache, else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pyexec")


def floor_program() -> str | None:
    """Path of the compiled C floor program, compiling it once; None if cc fails."""
    digest = hashlib.sha256(_FLOOR_C.encode()).hexdigest()[:12]
    exe = os.path.join(cache_dir(), f"pipe_floor-{digest}")
    if os.access(exe, os.X_OK):
        return exe
    cc = os.environ.get("CC") or shutil.which("cc")
    if not cc:
        return None
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            src = os.path.join(tmp, "pipe_floor.c")
            with open(src, "w") as f:
                f.write(_FLOOR_C)
            built = os.path.join(tmp, "pipe_floor")
            subprocess.run(
                [cc, "-O2", "-o", built, src], check=True, capture_output=True, timeout=120
            )
            os.replace(built, exe)  # atomic: a concurrent run sees all or nothing
    except (OSError, subprocess.SubprocessError):
        return None
    return exe


def python_floor(n: int) -> float:
    """One-byte round trips with a Python echo process over pipes: µs per round trip."""
    child = subprocess.Popen(
        [sys.executable, "-c", _FLOOR_PY], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    out, back = child.stdin.fileno(), child.stdout.fileno()
    try:
        for _ in range(n // 10 + 1):
            os.write(out, b"x")
            os.read(back, 1)
        t0 = time.perf_counter()
        for _ in range(n):
            os.write(out, b"x")
            os.read(back, 1)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        child.stdin.close()
        child.stdout.close()
        child.wait(timeout=30)


def pipe_floor(n: int, exe: str | None) -> float:
    """µs per raw pipe round trip: the C program when built, else Python."""
    if exe is None:
        return python_floor(n)
    out = subprocess.run([exe, str(n)], capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout)


# ---- the run ---------------------------------------------------------------


@dataclass
class Config:
    """What to run: pools, workloads and their sizes."""

    pools: list[str]
    workloads: list[str]
    workers: int
    method: str
    size: float
    repeats: int
    full: bool
    run_timeout: float = RUN_TIMEOUT

    def count(self, workload: str) -> int:
        """How many items/calls a workload runs at this size."""
        if workload == "startup":
            return 1
        return max(MIN_COUNT, round(COUNTS[workload] * self.size))

    def scale_count(self, pool: str) -> int:
        """Items of the scale run for one pool (a tenth for the slow ones unless --full)."""
        n = self.count("scale")
        if pool in SLOW_AT_SCALE and not self.full:
            n = max(MIN_COUNT, n // SCALE_REDUCTION)
        return n


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_secs(s: float) -> str:
    return f"{s:.1f}s" if s >= 1 else f"{s * 1e3:.0f}ms"


def run(cfg: Config) -> dict:
    """Run every workload on every pool, interleaved; return the results document."""
    if cfg.method == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()  # started once, outside every pool's timing
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    results: dict[str, dict[str, dict]] = {}
    floor: dict[str, Any] | None = None
    for workload in cfg.workloads:
        per_pool: dict[str, dict] = {p: {"runs": [], "errors": []} for p in cfg.pools}
        results[workload] = per_pool
        if workload == "scale":
            for name in cfg.pools:
                n = cfg.scale_count(name)
                _log(f"  {'scale':<12}{name:<21} {n:,} items, in a fresh process")
                try:
                    out = run_scale(name, cfg.workers, cfg.method, n)
                except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                    per_pool[name]["errors"].append(str(exc))
                    _log(f"    failed: {exc}")
                    continue
                per_pool[name].update(out)
                per_pool[name]["runs"].append(out["items_per_s"])
                _log(f"    {_fmt_secs(out['seconds'])}, peak RSS {out['peak_rss_mib']:.0f} MiB")
            continue
        n = cfg.count(workload)
        exe = floor_program() if workload == "latency" else None
        floor_runs: list[float] = []
        for r in range(cfg.repeats):
            k = r % len(cfg.pools)
            order = cfg.pools[k:] + cfg.pools[:k]  # rotate: no pool always goes first
            for name in order:
                faulthandler.dump_traceback_later(cfg.run_timeout, exit=True)
                try:
                    value = run_once(name, workload, cfg.workers, cfg.method, n)
                except Exception as exc:  # report it, go on with the other pools
                    per_pool[name]["errors"].append(f"{type(exc).__name__}: {exc}")
                    _log(f"  {workload:<12}{name:<21} run {r + 1}: FAILED {exc!r}")
                    continue
                finally:
                    faulthandler.cancel_dump_traceback_later()
                per_pool[name]["runs"].append(value)
                _log(f"  {workload:<12}{name:<21} run {r + 1}: {value:,.1f} {UNITS[workload][0]}")
            if workload == "latency":
                floor_runs.append(pipe_floor(n, exe))
        if workload == "latency":
            floor = {
                "kind": "C (cc)" if exe else "Python os.pipe",
                "runs": floor_runs,
                "median": statistics.median(floor_runs),
                "unit": "µs/round trip",
            }
    for workload, per_pool in results.items():
        unit, higher = UNITS[workload]
        for name, res in per_pool.items():
            res["unit"] = unit
            res["higher_is_better"] = higher
            res["count"] = cfg.scale_count(name) if workload == "scale" else cfg.count(workload)
            res["median"] = statistics.median(res["runs"]) if res["runs"] else None
        base = per_pool.get(BASELINE, {}).get("median")
        for res in per_pool.values():
            m = res["median"]
            if base and m:
                res["speedup"] = m / base if higher else base / m
            else:
                res["speedup"] = None
    return {
        "meta": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "start_method": cfg.method,
            "workers": cfg.workers,
            "size": cfg.size,
            "repeats": cfg.repeats,
            "full": cfg.full,
            "pools": cfg.pools,
            "workloads": cfg.workloads,
            "versions": {p: version_of(p) for p in cfg.pools},
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
            "wall_seconds": time.perf_counter() - t_start,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        },
        "results": results,
        "floor": floor,
    }


# ---- output ----------------------------------------------------------------

SHORT = {"multiprocessing.Pool": "mp.Pool", "concurrent.futures": "concurrent.futures"}


def _num(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _n(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def table(doc: dict) -> str:
    """The results as a Markdown table: medians and speed-ups over concurrent.futures."""
    meta, results = doc["meta"], doc["results"]
    pools = meta["pools"]
    head = ["workload", "unit", *[SHORT.get(p, p) for p in pools]]
    rows = []
    notes = []
    for workload, per_pool in results.items():
        unit, higher = UNITS[workload]
        label = workload
        if workload != "scale" and workload != "startup":
            label = f"{workload} ({_n(meta_count(per_pool))})"
        cells = []
        for p in pools:
            res = per_pool[p]
            if res["median"] is None:
                cells.append("failed")
                continue
            cell = _num(res["median"])
            if res.get("speedup") is not None:
                cell += f" ({res['speedup']:.2f}x)"
            if workload == "scale":
                cell += f" [{_n(res['n'])}]" if res["n"] != meta_count_max(per_pool) else ""
            cells.append(cell)
        arrow = "↑" if higher else "↓"
        if workload == "chunked-map":
            label += f", chunksize {_n(chunk_of(meta_count(per_pool)))}"
        rows.append([label, f"{unit} {arrow}", *cells])
        if workload == "scale":
            secs = []
            rss = []
            for p in pools:
                res = per_pool[p]
                if res["median"] is None:
                    secs.append("failed")
                    rss.append("failed")
                    continue
                mark = " [reduced]" if res["n"] != meta_count_max(per_pool) else ""
                secs.append(f"{_num(res['seconds'])}{mark}")
                rss.append(f"{res['peak_rss_mib']:.0f}{mark}")
            big = _n(meta_count_max(per_pool))
            rows.append([f"scale ({big}), time", "s ↓", *secs])
            rows.append([f"scale ({big}), parent peak RSS", "MiB ↓", *rss])
            reduced = sorted({_n(per_pool[p]["n"]) for p in pools if per_pool[p].get("n")})
            if len(reduced) > 1:
                notes.append(
                    "[reduced]: that pool's scale run mapped fewer items (the count in [..]) "
                    "to keep the default run short: its items/s compares, its seconds and "
                    "peak RSS do not. `--full` runs every pool at the full count."
                )
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    floor = doc.get("floor")
    if floor:
        notes.append(
            f"Raw pipe round trip floor, two processes ({floor['kind']}): "
            f"{floor['median']:.1f} µs (median of {len(floor['runs'])})."
        )
    notes.append(
        f"(Nx) = speed-up over concurrent.futures, higher is better. Medians of "
        f"{meta['repeats']} interleaved runs; {meta['workers']} workers; start method "
        f"{meta['start_method']}; Python {meta['python']} on {meta['platform']}, "
        f"{meta['cpus']} CPUs; load average {meta['loadavg_before'][0]:.2f} before, "
        f"{meta['loadavg_after'][0]:.2f} after; {meta['wall_seconds']:.0f} s in all."
    )
    versions = ", ".join(f"{p} {v}" for p, v in meta["versions"].items())
    notes.append(f"Versions: {versions}.")
    errors = [
        f"{w}/{p}: {e}"
        for w, per_pool in results.items()
        for p, res in per_pool.items()
        for e in res["errors"][:1]
    ]
    if errors:
        notes.append("Failures: " + "; ".join(errors))
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def meta_count(per_pool: dict) -> int:
    """The item count of a (non-scale) workload."""
    return next(iter(per_pool.values()))["count"]


def meta_count_max(per_pool: dict) -> int:
    """The largest item count any pool ran in this workload."""
    return max(res.get("n", res["count"]) for res in per_pool.values())


def plot(doc: dict, path: str) -> None:
    """A PNG with one bar chart per workload (needs matplotlib: the `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "--plot needs matplotlib: pip install 'pyexec[plot]' (or pip install matplotlib)"
        ) from None
    meta, results = doc["meta"], doc["results"]
    pools = meta["pools"]
    panels: list[dict[str, Any]] = []
    for workload, per_pool in results.items():
        unit, higher = UNITS[workload]
        panel = {
            "title": workload,
            "ylabel": f"{unit} ({'higher' if higher else 'lower'} is better)",
            "values": {p: per_pool[p]["median"] for p in pools},
            "speedup": {p: per_pool[p].get("speedup") for p in pools},
            "reduced": set(),
        }
        panels.append(panel)
        if workload == "latency" and doc.get("floor"):
            panel["floor"] = (doc["floor"]["median"], f"pipe floor, {doc['floor']['kind']}")
        if workload == "scale":
            top = meta_count_max(per_pool)
            reduced = {p for p in pools if per_pool[p].get("n", top) != top}
            panel["reduced"] = reduced
            panel["title"] = f"scale: map over {_n(top)} items"
            panels.append(
                {
                    "title": "scale: parent peak RSS",
                    "ylabel": "MiB (lower is better)",
                    "values": {p: per_pool[p].get("peak_rss_mib") for p in pools},
                    "speedup": {},
                    "reduced": reduced,
                }
            )
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, panel in zip(axes.flat, panels, strict=False):
        values, speed, reduced = panel["values"], panel["speedup"], panel["reduced"]
        labels = [
            SHORT.get(p, p).replace("concurrent.futures", "c.f.") + ("*" if p in reduced else "")
            for p in pools
        ]
        heights = [values[p] or 0 for p in pools]
        bars = ax.bar(labels, heights, color=[colors[i % 10] for i in range(len(pools))])
        for bar, p in zip(bars, pools, strict=True):
            s = speed.get(p)
            text = "failed" if values[p] is None else (f"{s:.2f}x" if s else "")
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        if "floor" in panel:
            value, label = panel["floor"]
            ax.axhline(value, color="black", linestyle="--", linewidth=0.8)
            ax.annotate(f"{label}: {value:.1f}", (0.02, value), xycoords=("axes fraction", "data"),
                        va="bottom", fontsize=7)  # fmt: skip
        if reduced:
            ax.set_xlabel("* fewer items (not comparable in this panel)"
                          if not panel["speedup"] else "* fewer items", fontsize=7)  # fmt: skip
        ax.set_title(panel["title"], fontsize=10)
        ax.set_ylabel(panel["ylabel"], fontsize=8)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        f"pyexec vs other pools: {meta['workers']} workers, {meta['start_method']}, "
        f"Python {meta['python']} (x = speed-up over concurrent.futures)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- command line ----------------------------------------------------------


def _names(text: str, known: Iterable[str], what: str) -> list[str]:
    out = []
    for raw in text.split(","):
        name = ALIASES.get(raw.strip(), raw.strip())
        if not name:
            continue
        if name not in known:
            raise SystemExit(f"unknown {what} {raw!r}; choose from {', '.join(known)}")
        out.append(name)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        prog="python -m pyexec.bench",
        description="Compare pyexec with concurrent.futures and other process pools.",
    )
    ap.add_argument("--workers", type=int, default=2, help="workers per pool (default 2)")
    ap.add_argument(
        "--size", type=float, default=None, help="scale every count by this (default 1)"
    )
    ap.add_argument("--repeats", type=int, default=None, help="runs per cell (default 5)")
    ap.add_argument(
        "--start-method",
        default=None,
        choices=multiprocessing.get_all_start_methods(),
        help="default: multiprocessing's default",
    )
    ap.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma list (default {','.join(WORKLOADS)})",
    )
    ap.add_argument(
        "--pools",
        default=None,
        help=f"comma list of {','.join(POOLS)} (default: those that import here)",
    )
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    ap.add_argument("--plot", metavar="PATH", help="write a PNG chart (needs matplotlib)")
    ap.add_argument(
        "--load", metavar="PATH", help="print (and --plot) a saved --json file instead of running"
    )
    ap.add_argument("--full", action="store_true", help="run every pool's scale at full count")
    ap.add_argument(
        "--quick", action="store_true", help="a smoke run: --size 0.1 --repeats 1 unless given"
    )
    ap.add_argument(
        "--run-timeout",
        type=float,
        default=RUN_TIMEOUT,
        help="seconds one run may take before the bench dumps every stack and exits",
    )
    ap.add_argument("--_scale-child", dest="scale_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.size is None:
        args.size = QUICK_SIZE if args.quick else 1.0
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.workers < 1 or args.repeats < 1 or not args.size > 0:
        ap.error("--workers and --repeats must be >= 1 and --size > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table."""
    args = parse(argv)
    if args.scale_child:
        print(json.dumps(scale_child(json.loads(args.scale_child))))
        return 0
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit(
                "--plot needs matplotlib: pip install 'pyexec[plot]' (or pip install matplotlib)"
            ) from None
    if args.load:
        with open(args.load) as f:
            doc = json.load(f)
        print(table(doc))
        if args.plot:
            plot(doc, args.plot)
        return 0
    if args.pools is None:
        pools = [p for p in POOLS if available(p)]
    else:
        pools = _names(args.pools, POOLS, "pool")
        missing = [p for p in pools if not available(p)]
        if missing:
            raise SystemExit(f"not installed: {', '.join(missing)} (pip install 'pyexec[bench]')")
    if BASELINE not in pools:
        pools.append(BASELINE)  # every ratio is to it
    cfg = Config(
        pools=pools,
        workloads=_names(args.workloads, WORKLOADS, "workload"),
        workers=args.workers,
        method=args.start_method or multiprocessing.get_start_method(),
        size=args.size,
        repeats=args.repeats,
        full=args.full,
        run_timeout=args.run_timeout,
    )
    _log(
        f"pyexec.bench: {', '.join(cfg.pools)}; {cfg.workers} workers, {cfg.method}, "
        f"size {cfg.size:g}, {cfg.repeats} repeats"
    )
    doc = run(cfg)
    print(table(doc))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")
    if args.plot:
        plot(doc, args.plot)
    failed = any(res["errors"] for per_pool in doc["results"].values() for res in per_pool.values())
    return 1 if failed else 0


if __name__ == "__main__":
    # Pickle the workloads' function as pyexec.bench.identity, not __main__.identity,
    # so workers under spawn import it by that name.
    from pyexec import bench as _bench

    sys.exit(_bench.main())
