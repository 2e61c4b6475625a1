"""The compiled core, imported in this one place, its build stamp checked.

``pyexec._core`` is imported here and nowhere else. Its build stamp is
checked first, so a stale or foreign build fails with an ``ImportError``
that says how to rebuild instead of misbehaving later. Owns no mutable
state; any thread may use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._version import __version__

_REBUILD = (
    "Rebuild it: `pip install .` (or `pip install -e .`) from a clone, "
    "or reinstall the pyexec wheel for this Python."
)

try:
    from ._core import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised by a test in a subprocess
    raise ImportError(
        f"pyexec's compiled core (pyexec._core) is missing or cannot be loaded: {exc}. " + _REBUILD
    ) from exc

# The ABI this Python code was written against (PX_CORE_ABI in csrc/pyexec.h).
CORE_ABI = 10


def _check_stamp() -> None:
    """Refuse a core compiled from other sources than this package's."""
    abi = lib.px_core_abi()
    stamp = ffi.string(lib.px_build_stamp()).decode()
    version, _, source_hash = stamp.partition(" ")
    if abi != CORE_ABI or version != __version__:
        raise ImportError(
            f"pyexec's compiled core is from another build (core {stamp!r}, ABI {abi}; "
            f"this package is {__version__}, ABI {CORE_ABI}). " + _REBUILD
        )
    csrc = Path(__file__).resolve().parent.parent.parent / "csrc"
    here = Path(__file__).resolve().parent
    if (csrc / "pyexec.h").is_file() and (here / "_build.py").is_file():
        # A source checkout: the core must match the C sources beside it.
        from . import _build

        current = _build.source_hash(csrc)
        if current != source_hash:
            raise ImportError(
                f"pyexec's compiled core is stale: built from C sources {source_hash}, "
                f"but {csrc} now hashes to {current}. " + _REBUILD
            )


if os.environ.get("PYEXEC_SKIP_STAMP_CHECK") != "1":
    _check_stamp()


def check(rc: int) -> int:
    """Turn a -errno return of the core into OSError."""
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    return rc


def rss() -> int:
    """This process's resident memory in bytes (-1 where unknown)."""
    n = lib.px_rss()
    return n if n >= 0 else -1
