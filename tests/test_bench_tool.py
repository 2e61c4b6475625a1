"""`python -m pyexec.bench`: a tiny real run writes a complete, sane JSON report."""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys

import pytest

import pyexec
from pyexec.bench.cli import _names
from pyexec.bench.workloads import (
    DEFAULT_WORKLOADS,
    GROUPS,
    NUMPY,
    SCALE_REDUCTION,
    SWEEP_SIZES,
    WORKLOADS,
    sweep_name,
)

POOLS = ["pyexec", "concurrent.futures", "multiprocessing.Pool"]


@pytest.mark.timeout(90)
def test_quick_run_reports_every_workload_and_pool(tmp_path):
    """Every workload x pool has a positive finite median; the table names every pool."""
    out = tmp_path / "out.json"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))  # compiles the floor afresh
    proc = subprocess.run(
        [sys.executable, "-m", "pyexec.bench", "--quick", "--size", "0.02",
         "--pools", ",".join(POOLS), "--json", str(out), "--run-timeout", "30"],
        capture_output=True, text=True, timeout=80, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["meta"]["pools"] == POOLS
    assert doc["meta"]["workers"] == 2
    assert set(doc["results"]) == set(DEFAULT_WORKLOADS)
    for workload, per_pool in doc["results"].items():
        assert set(per_pool) == set(POOLS), workload
        for pool, res in per_pool.items():
            where = f"{workload}/{pool}"
            assert res["errors"] == [], where
            assert len(res["runs"]) == 1, where
            assert all(math.isfinite(v) and v > 0 for v in res["runs"]), where
            assert res["median"] == res["runs"][0], where
            assert res["unit"] == WORKLOADS[workload].unit, where
            assert res["count"] >= 1, where
            assert math.isfinite(res["speedup"]) and res["speedup"] > 0, where
        assert per_pool["concurrent.futures"]["speedup"] == 1.0
    # Counts follow --size (at least MIN_COUNT); the slow pools' scale run is reduced.
    assert doc["results"]["tiny-submit"]["pyexec"]["count"] == 400
    scale = doc["results"]["scale"]
    assert scale["pyexec"]["n"] == 20_000
    assert scale["concurrent.futures"]["n"] == 20_000 // SCALE_REDUCTION
    for pool in POOLS:
        assert scale[pool]["seconds"] > 0
        # A fresh interpreter's peak RSS is megabytes, not bytes nor terabytes.
        assert 5 < scale[pool]["peak_rss_mib"] < 4096
        assert scale[pool]["peak_rss_mib"] >= scale[pool]["base_rss_mib"]
    floor = doc["floor"]
    assert floor["kind"] in ("C (cc)", "Python os.pipe")
    assert 0 < floor["median"] < 10_000  # µs
    for name in ["pyexec", "concurrent.futures", "mp.Pool"]:
        assert name in proc.stdout
    assert "tiny-submit (400)" in proc.stdout


def test_unknown_pool_is_a_clear_error():
    """A misspelt pool name stops the run before anything starts."""
    proc = subprocess.run(
        [sys.executable, "-m", "pyexec.bench", "--pools", "pyexec,nosuchpool"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "unknown pool 'nosuchpool'" in proc.stderr


# The rows of issues 16 and 17: opt-in, so none of them is in the default run above.
NEW_ROWS = ["big-array", "big-bytes", "array-roundtrip", "payload-rss", "map-default",
            "map-unordered"]  # fmt: skip


def _bench(args: list[str], tmp_path, timeout: float, env: dict | None = None):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pyexec.bench", "--quick", "--size", "0.02", "--json", str(out),
         "--run-timeout", "60", *args],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_new_rows_are_opt_in_and_listed_in_help():
    """The payload and map rows stay out of the default run, and --help names each."""
    for name in [*NEW_ROWS, *GROUPS["payload-sweep"]]:
        assert name in WORKLOADS and name not in DEFAULT_WORKLOADS, name
    assert GROUPS["payload-sweep"] == tuple(sweep_name(n) for n in SWEEP_SIZES)
    assert sweep_name(64 << 10) == "sweep-64KiB" and sweep_name(64 << 20) == "sweep-64MiB"
    assert _names("big-array,payload-sweep,big-array", WORKLOADS, "workload", GROUPS) == [
        "big-array",
        *GROUPS["payload-sweep"],
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "pyexec.bench", "--help"], capture_output=True, text=True,
        timeout=60, env=dict(os.environ, COLUMNS="400"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name in [*NEW_ROWS, "payload-sweep"]:
        assert name in proc.stdout, name


@pytest.mark.timeout(200)
def test_new_rows_quick_run(tmp_path):
    """Every new row runs on every pool, or reads n/a with its reason; figures are sane."""
    pytest.importorskip("numpy", reason=NUMPY[1])
    rows = [*NEW_ROWS, "sweep-64KiB", "sweep-1MiB"]  # the sweep's big sizes cost seconds
    proc, doc = _bench(["--pools", ",".join(POOLS), "--workloads", ",".join(rows)], tmp_path, 180)
    assert list(doc["results"]) == rows
    unordered = "unordered" in inspect.signature(pyexec.ProcessPoolExecutor.map).parameters
    for workload, per_pool in doc["results"].items():
        for pool, res in per_pool.items():
            where = f"{workload}/{pool}"
            assert res["errors"] == [], where
            if workload == "map-unordered" and (
                pool == "concurrent.futures" or (pool == "pyexec" and not unordered)
            ):
                assert "unordered" in res["na"] and res["runs"] == [], where
                continue
            assert "na" not in res, where
            assert len(res["runs"]) == 1 and res["runs"][0] > 0, where
            assert math.isfinite(res["runs"][0]), where
    # Ratios: to concurrent.futures, except the map rows, which are to multiprocessing.Pool.
    assert doc["results"]["big-array"]["concurrent.futures"]["speedup"] == 1.0
    assert doc["results"]["map-default"]["multiprocessing.Pool"]["speedup"] == 1.0
    assert doc["results"]["map-unordered"]["multiprocessing.Pool"]["speedup"] == 1.0
    # payload-rss: peak RSS in MiB, every pool at the same count (no reduction), and the
    # 8 MiB argument counted in each (a fresh interpreter with numpy is over 8 MiB).
    rss = doc["results"]["payload-rss"]
    for pool in POOLS:
        assert rss[pool]["n"] == 4, pool
        assert rss[pool]["median"] == rss[pool]["peak_rss_mib"], pool
        assert 8 < rss[pool]["peak_rss_mib"] < 4096, pool
    # map-default: concurrent.futures maps a twentieth, as in scale; the others all of it.
    mapd = doc["results"]["map-default"]
    assert mapd["pyexec"]["n"] == mapd["multiprocessing.Pool"]["n"] == 20_000
    assert mapd["concurrent.futures"]["n"] == 20_000 // SCALE_REDUCTION
    assert set(doc["meta"]["row_seconds"]) == set(rows)
    assert "payload-rss (4 pending)" in proc.stdout
    assert "[x vs mp.Pool]" in proc.stdout
    if not unordered:
        assert "pyexec's map has no unordered= yet" in proc.stdout


@pytest.mark.timeout(90)
def test_numpy_rows_say_when_numpy_is_missing(tmp_path):
    """Without numpy the array rows read n/a with the install hint; the others still run."""
    fake = tmp_path / "fake" / "numpy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no numpy here (test)')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(fake.parent), os.environ.get("PYTHONPATH")])))  # fmt: skip
    proc, doc = _bench(
        ["--pools", "pyexec,concurrent.futures", "--workloads", "big-bytes,array-roundtrip"],
        tmp_path, 80, env,
    )  # fmt: skip
    for pool in ["pyexec", "concurrent.futures"]:
        assert doc["results"]["array-roundtrip"][pool]["na"] == NUMPY[1]
        assert doc["results"]["big-bytes"][pool]["runs"][0] > 0
    assert "pip install 'pyexec[bench]'" in proc.stdout


@pytest.mark.timeout(60)
def test_map_unordered_row_turns_on_when_pyexec_map_has_unordered(monkeypatch):
    """Once pyexec's map takes unordered=, the row runs it (here a stand-in that sorts nothing)."""
    from pyexec.bench import workloads
    from pyexec.bench.pools import PyexecPool

    real_map = pyexec.ProcessPoolExecutor.map
    seen = []

    def map_with_unordered(self, fn, *iterables, timeout=None, chunksize=1, unordered=False):
        seen.append(unordered)
        return real_map(self, fn, *iterables, timeout=timeout, chunksize=chunksize)

    monkeypatch.setattr(pyexec.ProcessPoolExecutor, "map", map_with_unordered)
    assert PyexecPool.unordered_missing() is None
    pool = PyexecPool(2, "fork" if sys.platform == "linux" else "spawn")
    try:
        assert workloads.run_map_unordered(pool, 1000) > 0
    finally:
        pool.close()
    assert seen == [True]


@pytest.mark.timeout(120)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfloor.c needs memfd_create")
def test_memory_floor_program(tmp_path):
    """`python -m pyexec.bench.floor` builds memfloor.c, times every measure (positive,
    finite) and prints the floors of the big rows."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))  # compiles afresh
    code = (
        "import json, sys; from pyexec.bench import floor;"
        "m = floor.memory_floor(1, 3); print(json.dumps(m));"
        "print(json.dumps(floor.big_payload_floors(m)) if m else 'null')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=100, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    measures, floors = (json.loads(line) for line in proc.stdout.splitlines())
    if measures is None:
        pytest.skip("no C compiler here")
    from pyexec.bench.floor import MEMORY_MEASURES

    assert list(measures) == list(MEMORY_MEASURES)
    assert all(0 < v < 10_000 and math.isfinite(v) for v in measures.values())
    assert all(0 < v and math.isfinite(v) for v in floors.values())
    main = subprocess.run(
        [sys.executable, "-m", "pyexec.bench.floor"], capture_output=True, text=True,
        timeout=100, env=env,
    )  # fmt: skip
    assert main.returncode == 0 and "big-array calls/s" in main.stdout, main.stderr
