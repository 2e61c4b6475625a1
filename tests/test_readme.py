"""The README's first command, run as a newcomer runs it: in a fresh clone, from its root.

The command is read from README.md (the first line of its first ``sh`` block),
so this test follows the README. It runs in a ``git clone`` of this repository
(committed work only, as CI's fresh clone has it), with this test's venv out of
the environment, and with quick-mode flags appended so the bench part takes
seconds. pip needs the package index (setuptools and cffi for the build).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
QUICK = ["--quick", "--workloads", "tiny-submit,latency"]


def unavailable(why: str) -> None:
    """Fail in CI, where git and the clone must be there; skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{why} (required in CI)")
    pytest.skip(why)


def first_command(readme: str) -> str:
    """The first command line of the README's first ``sh`` block (comments skipped)."""
    in_block = False
    for line in readme.splitlines():
        if line.strip().startswith("```"):
            if in_block:
                break
            in_block = line.strip() == "```sh"
            continue
        if in_block and line.strip() and not line.strip().startswith("#"):
            return line.strip()
    raise AssertionError("README.md has no ```sh block with a command")


def newcomer_env() -> dict[str, str]:
    """This environment without this test's venv: no VIRTUAL_ENV, its bin/ off PATH."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    if sys.prefix != sys.base_prefix:
        venv_bin = os.path.join(sys.prefix, "bin")
        path = env.get("PATH", "").split(os.pathsep)
        env["PATH"] = os.pathsep.join(p for p in path if os.path.abspath(p) != venv_bin)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def in_group(pgid: int) -> list[psutil.Process]:
    """The live processes of process group pgid (zombies excluded: they have exited)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            pass
    return out


def test_first_command_names_the_bench():
    """The command this test runs is the install-and-bench one, so the flags below apply."""
    cmd = first_command((ROOT / "README.md").read_text())
    assert "pip install ." in cmd, cmd
    assert "-m pyexec.bench" in cmd.split("&&")[-1], cmd


@pytest.mark.timeout(900)
def test_readme_first_command_in_a_fresh_clone(tmp_path):
    """Exit 0, and the comparison table of pyexec and concurrent.futures is printed."""
    git = shutil.which("git")
    if git is None:
        unavailable("git is not installed")
    top = subprocess.run(
        [git, "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True, text=True
    )
    if top.returncode != 0:
        unavailable(f"{ROOT} is not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(
        [git, "clone", "--quiet", top.stdout.strip(), str(clone)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    cmd = first_command((clone / "README.md").read_text())
    cmd += " " + shlex.join(QUICK)
    proc = subprocess.Popen(
        ["bash", "-c", cmd],
        cwd=clone,
        env=newcomer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: whatever it leaves is found below
    )
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after 600 s: {cmd}\n{out[-5000:]}")
    finally:
        # Every process the command started shares its group: none may outlive it.
        deadline = time.monotonic() + 10
        left = in_group(proc.pid)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = in_group(proc.pid)
        for p in left:
            p.kill()
    assert proc.returncode == 0, f"exit {proc.returncode}: {cmd}\n{out[-5000:]}"
    assert not left, f"left behind: {[(p.pid, p.name()) for p in left]}"
    lines = out.splitlines()
    head = [line for line in lines if line.startswith("| workload")]
    assert head, f"no comparison table in the output:\n{out[-5000:]}"
    columns = [c.strip() for c in head[0].strip("|").split("|")]
    assert "pyexec" in columns and "concurrent.futures" in columns, head[0]
    for workload in ("tiny-submit", "latency"):
        rows = [line for line in lines if line.startswith(f"| {workload} (")]
        assert len(rows) == 1, f"no {workload} row:\n{out[-5000:]}"
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        base = cells[columns.index("concurrent.futures")]
        assert base.endswith("(1.00x)"), rows[0]
        assert cells[columns.index("pyexec")] != "failed", rows[0]
