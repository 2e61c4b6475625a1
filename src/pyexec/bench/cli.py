"""``python -m pyexec.bench``: the command line, and the run that interleaves the pools.

Run 1 of every pool, then run 2 of every pool in a rotated order, and so on,
so a noisy neighbour slows every pool alike. Workloads, pools, the floor and
the report each live in their own module; this one only orchestrates, in the
bench's one thread; the results document it builds is its only state.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyexec.bench.floor import floor_program, pipe_floor
from pyexec.bench.pools import ALIASES, BASELINE, POOL_CLASSES, POOLS, available, version_of
from pyexec.bench.report import plot, table
from pyexec.bench.workloads import (
    DEFAULT_WORKLOADS,
    GROUPS,
    MIN_COUNT,
    SCALE_REDUCTION,
    SLOW_AT_SCALE,
    WORKLOADS,
    not_applicable,
    process_child,
    run_in_process,
    run_once,
)

# A timed run stuck this long dumps every thread's stack and ends the bench.
RUN_TIMEOUT = 600.0
QUICK_SIZE = 0.1


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
        count = WORKLOADS[workload].count
        if count is None:
            return 1
        return max(MIN_COUNT, round(count * self.size))

    def process_count(self, workload: str, pool: str) -> int:
        """Items of a "process" workload for one pool (fewer for the slow ones unless --full)."""
        n = self.count(workload)
        if pool in SLOW_AT_SCALE and WORKLOADS[workload].reduce_slow and not self.full:
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
    row_seconds: dict[str, float] = {}
    for workload in cfg.workloads:
        t_row = time.perf_counter()
        per_pool: dict[str, dict] = {p: {"runs": [], "errors": []} for p in cfg.pools}
        results[workload] = per_pool
        for name in cfg.pools:
            why = not_applicable(workload, name)
            if why:
                per_pool[name]["na"] = why
                _log(f"  {workload:<16}{name:<21} n/a: {why}")
        todo = [p for p in cfg.pools if "na" not in per_pool[p]]
        if WORKLOADS[workload].kind == "process":
            _run_process_row(cfg, workload, per_pool, todo)
        else:
            floor = _run_timed_row(cfg, workload, per_pool, todo) or floor
        row_seconds[workload] = time.perf_counter() - t_row
    _summarize(cfg, results)
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
            "row_seconds": row_seconds,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        },
        "results": results,
        "floor": floor,
    }


def _run_process_row(cfg: Config, workload: str, per_pool: dict, todo: list[str]) -> None:
    """A "process" workload: one run per pool, each in a fresh process."""
    wl = WORKLOADS[workload]
    for name in todo:
        n = cfg.process_count(workload, name)
        _log(f"  {workload:<16}{name:<21} {n:,} items, in a fresh process")
        try:
            out = run_in_process(workload, name, cfg.workers, cfg.method, n)
        except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
            per_pool[name]["errors"].append(str(exc))
            _log(f"    failed: {exc}")
            continue
        per_pool[name].update(out)
        per_pool[name]["runs"].append(out[wl.value])
        _log(f"    {_fmt_secs(out['seconds'])}, peak RSS {out['peak_rss_mib']:.0f} MiB")


def _run_timed_row(
    cfg: Config, workload: str, per_pool: dict, todo: list[str]
) -> dict[str, Any] | None:
    """A "pool" workload: cfg.repeats rounds, the pools in a rotated order each
    round; the pipe floor measured after each round if the workload has one
    (then returned)."""
    wl = WORKLOADS[workload]
    n = cfg.count(workload)
    exe = floor_program() if wl.floor else None
    floor_runs: list[float] = []
    for r in range(cfg.repeats if todo else 0):
        k = r % len(todo)
        order = todo[k:] + todo[:k]  # rotate: no pool always goes first
        for name in order:
            faulthandler.dump_traceback_later(cfg.run_timeout, exit=True)
            try:
                value = run_once(name, workload, cfg.workers, cfg.method, n)
            except Exception as exc:  # report it, go on with the other pools
                per_pool[name]["errors"].append(f"{type(exc).__name__}: {exc}")
                _log(f"  {workload:<16}{name:<21} run {r + 1}: FAILED {exc!r}")
                continue
            finally:
                faulthandler.cancel_dump_traceback_later()
            per_pool[name]["runs"].append(value)
            _log(f"  {workload:<16}{name:<21} run {r + 1}: {value:,.1f} {wl.unit}")
        if wl.floor:
            floor_runs.append(pipe_floor(n, exe))
    if not wl.floor:
        return None
    return {
        "kind": "C (cc)" if exe else "Python os.pipe",
        "runs": floor_runs,
        "median": statistics.median(floor_runs),
        "unit": "µs/round trip",
    }


def _summarize(cfg: Config, results: dict[str, dict[str, dict]]) -> None:
    """Each cell's unit, count, median and speed-up over its row's baseline."""
    for workload, per_pool in results.items():
        wl = WORKLOADS[workload]
        unit, higher = wl.unit, wl.higher_is_better
        for name, res in per_pool.items():
            res["unit"] = unit
            res["higher_is_better"] = higher
            if wl.kind == "process":
                res["count"] = cfg.process_count(workload, name)
            else:
                res["count"] = cfg.count(workload)
            res["median"] = statistics.median(res["runs"]) if res["runs"] else None
        base = per_pool.get(wl.baseline or BASELINE, {}).get("median")
        for res in per_pool.values():
            m = res["median"]
            if base and m:
                res["speedup"] = m / base if higher else base / m
            else:
                res["speedup"] = None


def _names(
    text: str, known: Iterable[str], what: str, groups: dict[str, tuple[str, ...]] | None = None
) -> list[str]:
    out: list[str] = []
    groups = groups or {}
    for raw in text.split(","):
        name = ALIASES.get(raw.strip(), raw.strip())
        if not name:
            continue
        if name in groups:
            out.extend(n for n in groups[name] if n not in out)
            continue
        if name not in known:
            choices = [*known, *groups]
            raise SystemExit(f"unknown {what} {raw!r}; choose from {', '.join(choices)}")
        if name not in out:
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
    optional: list[str] = []  # the rows run only when named, a group by its name
    for name, wl in WORKLOADS.items():
        group = next((g for g, names in GROUPS.items() if name in names), None)
        label = f"{group} ({','.join(GROUPS[group])})" if group else name
        if not wl.default and label not in optional:
            optional.append(label)
    ap.add_argument(
        "--workloads",
        default=",".join(DEFAULT_WORKLOADS),
        help=f"comma list (default {','.join(DEFAULT_WORKLOADS)}; also, only when named: "
        f"{', '.join(optional)}; big payloads and the map family, see docs/BENCH.md)",
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
        print(json.dumps(process_child(json.loads(args.scale_child))))
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
    workloads = _names(args.workloads, WORKLOADS, "workload", GROUPS)
    own = [WORKLOADS[w].pools for w in workloads]
    if args.pools is None:
        # Every pool that is not opt-in, unless every row asked for names its pools (dask-*);
        # and the opt-in pools of the rows that name them.
        pools = [] if all(own) else [p for p in POOLS if available(p) and POOL_CLASSES[p].default]
        for names in own:
            pools += [p for p in names or () if p not in pools]
    else:
        pools = _names(args.pools, POOLS, "pool")
        missing = [p for p in pools if not available(p)]
        if missing:
            raise SystemExit(f"not installed: {', '.join(missing)} (pip install 'pyexec[bench]')")
    if BASELINE not in pools and not all(own):
        pools.append(BASELINE)  # every ratio is to it (rows with their own pools have theirs)
    cfg = Config(
        pools=pools,
        workloads=workloads,
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
