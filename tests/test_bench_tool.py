"""`python -m pyexec.bench`: a tiny real run writes a complete, sane JSON report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from pyexec.bench.workloads import SCALE_REDUCTION, WORKLOADS

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
    assert set(doc["results"]) == set(WORKLOADS)
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
