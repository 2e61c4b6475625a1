"""The core's build stamp: a foreign, stale, missing or broken core fails import clearly.

Each case runs in a subprocess against a temporary copy of the package whose
core was compiled by ``pyexec/_build.py`` (as ``setup.py`` does), then altered:
the package's version changed (a core from another build), a C source edited
(a stale core in a source checkout), the core deleted or corrupted. Every case
must raise ImportError naming the problem and how to rebuild; a control proves
the untouched copy imports and its core answers calls.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What _native's messages tell the user to run.
REBUILD = "pip install ."

# Imports pyexec from the current directory and reports how that went. It runs
# under -S: no .pth file may bring in the dev install (an editable install's
# finder would supply the real core where the copy has none); the
# site-packages directories come from PX_PROBE_SITE instead, for cffi.
PROBE = """
import os, sys
sys.path[:0] = ["."]
sys.path += os.environ["PX_PROBE_SITE"].split(os.pathsep)
try:
    import pyexec
    from pyexec import _native
except ImportError as exc:
    print("IMPORTERROR", exc)
    sys.exit(3)
print("IMPORTED", os.path.normpath(pyexec.__file__))
# Calls into the loaded core (no processes: this is about loading it).
print("CORE", _native.lib.px_core_abi() == _native.CORE_ABI, _native.rss() > 0)
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A copy of the package and csrc/ with a core freshly compiled in it."""
    tree = tmp_path_factory.mktemp("built")
    shutil.copytree(ROOT / "csrc", tree / "csrc")
    shutil.copytree(
        ROOT / "src" / "pyexec",
        tree / "src" / "pyexec",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    res = subprocess.run(
        [sys.executable, "src/pyexec/_build.py", str(tree / "src")],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    cores = list((tree / "src" / "pyexec").glob("_core.*so"))
    assert len(cores) == 1, cores
    for junk in (tree / "src" / "pyexec").glob("_core.[co]"):  # the generated C and object
        junk.unlink()
    return tree


@pytest.fixture
def tree(built, tmp_path) -> Path:
    """A private copy of the built tree, for one test to alter."""
    dst = tmp_path / "tree"
    shutil.copytree(built, dst)
    return dst


def probe(where: Path, **extra_env: str) -> tuple[int, str]:
    """Import pyexec from where in a fresh interpreter: (exit code, output)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYEXEC_SKIP_STAMP_CHECK", "PYTHONPATH")
    }
    env["PX_PROBE_SITE"] = os.pathsep.join(site.getsitepackages())
    env.update(extra_env)
    res = subprocess.run(
        [sys.executable, "-S", "-c", PROBE],
        cwd=where / "src",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return res.returncode, res.stdout + res.stderr


def core_of(tree: Path) -> Path:
    """The compiled core in tree's package."""
    (core,) = (tree / "src" / "pyexec").glob("_core.*so")
    return core


def set_version(tree: Path, version: str) -> None:
    """Give the package in tree another version than its core was built with."""
    path = tree / "src" / "pyexec" / "_version.py"
    text, n = re.subn(r'__version__ = "[^"]+"', f'__version__ = "{version}"', path.read_text())
    assert n == 1
    path.write_text(text)


@pytest.mark.timeout(300)
def test_fresh_core_imports_and_runs(tree):
    code, out = probe(tree)
    assert code == 0, out
    assert f"IMPORTED {tree / 'src' / 'pyexec' / '__init__.py'}" in out, out
    assert "CORE True True" in out, out


@pytest.mark.timeout(300)
def test_core_from_another_build_is_refused(tree):
    from pyexec._version import __version__

    set_version(tree, "99.0.0")
    code, out = probe(tree)
    assert code == 3, out
    assert "IMPORTERROR pyexec's compiled core is from another build" in out, out
    assert f"core '{__version__} " in out and "this package is 99.0.0" in out, out
    assert REBUILD in out, out


@pytest.mark.timeout(300)
def test_core_from_another_build_is_refused_when_installed(tree):
    # An installed layout: no csrc/ beside the package, so only the stamp's version speaks.
    shutil.rmtree(tree / "csrc")
    set_version(tree, "99.0.0")
    code, out = probe(tree)
    assert code == 3, out
    assert "from another build" in out and REBUILD in out, out


@pytest.mark.timeout(300)
def test_stale_core_is_refused(tree):
    frame = tree / "csrc" / "frame.c"
    frame.write_text(frame.read_text() + "\n/* edited after the build */\n")
    code, out = probe(tree)
    assert code == 3, out
    assert "IMPORTERROR pyexec's compiled core is stale" in out, out
    assert str(tree / "csrc") in out and REBUILD in out, out


@pytest.mark.timeout(300)
def test_stale_core_loads_with_the_check_skipped(tree):
    # The refusal comes from the stamp check and nothing else.
    frame = tree / "csrc" / "frame.c"
    frame.write_text(frame.read_text() + "\n/* edited after the build */\n")
    code, out = probe(tree, PYEXEC_SKIP_STAMP_CHECK="1")
    assert code == 0, out
    assert "CORE True True" in out, out


@pytest.mark.timeout(300)
def test_missing_core_is_explained(tree):
    core_of(tree).unlink()
    code, out = probe(tree)
    assert code == 3, out
    assert "IMPORTERROR pyexec's compiled core (pyexec._core) is missing" in out, out
    assert REBUILD in out, out


@pytest.mark.timeout(300)
def test_broken_core_is_explained(tree):
    core_of(tree).write_bytes(b"not a shared object")
    code, out = probe(tree)
    assert code == 3, out
    assert "IMPORTERROR pyexec's compiled core (pyexec._core) is missing or cannot be loaded" in out
    assert REBUILD in out, out
