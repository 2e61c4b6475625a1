"""The cffi builder for pyexec's C core (``setup.py`` points ``cffi_modules`` here).

The cdef is read from ``csrc/pyexec.h`` between its CDEF markers, never
retyped; every ``#define`` value there is replaced by ``...`` so the compiler
supplies it. The build stamp (package version and a hash of the C sources) is
compiled in, and checked by ``pyexec._native`` at import. Wheels leave
this module out (it needs ``csrc/``, which only the sdist and a clone have).
It runs at build time only, never in a pool: no state, no threads.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

from cffi import FFI

PKG = Path(__file__).resolve().parent
ROOT = PKG.parent.parent  # the project: src/pyexec/ and csrc/
CSRC = ROOT / "csrc"
SOURCES = ["frame.c", "io.c", "wait.c", "arena.c"]
# Included by wait.c rather than compiled on their own; part of the hash.
INCLUDED = ["wait_epoll.c", "wait_poll.c"]
HEADER = CSRC / "pyexec.h"


def read_version() -> str:
    """The package version, from ``pyexec/_version.py`` (no import needed)."""
    text = (PKG / "_version.py").read_text()
    match = re.search(r'__version__ = "([^"]+)"', text)
    assert match, "pyexec/_version.py has no __version__"
    return match.group(1)


def source_hash(csrc: Path = CSRC) -> str:
    """A short hash over the header and every C file: changes with any edit."""
    h = hashlib.sha256()
    for name in ["pyexec.h", *SOURCES, *INCLUDED]:
        h.update(name.encode() + b"\0" + (csrc / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cdef_from_header(path: Path = HEADER) -> str:
    """The declarations between the CDEF markers, with #define values as ``...``."""
    text = path.read_text()
    body = text.split("/* CDEF BEGIN */", 1)[1].split("/* CDEF END */", 1)[0]
    return re.sub(r"^(#define\s+\w+)\s+.*$", r"\1 ...", body, flags=re.M)


def make_ffi(
    module: str = "pyexec._core",
    extra_compile_args: list[str] | None = None,
    extra_link_args: list[str] | None = None,
) -> FFI:
    """An FFI for the core; tests call this to build sanitizer variants."""
    ffi = FFI()
    ffi.cdef(cdef_from_header())
    stamp = f"{read_version()} {source_hash()}"
    ffi.set_source(
        module,
        '#include "pyexec.h"',
        sources=[
            str((CSRC / s).relative_to(ROOT)) if _in_root() else str(CSRC / s) for s in SOURCES
        ],
        include_dirs=[str(CSRC.relative_to(ROOT)) if _in_root() else str(CSRC)],
        define_macros=[("PX_BUILD_STAMP", f'"{stamp}"'), ("_GNU_SOURCE", "1")],
        extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", *(extra_compile_args or [])],
        extra_link_args=list(extra_link_args or []),
        # shm_open (arena.c's fallback where memfd_create is missing) lives in librt
        # before glibc 2.34, as in the manylinux2014 images; a stub library after.
        libraries=["rt"] if sys.platform.startswith("linux") else [],
        py_limited_api=True,
    )
    return ffi


def _in_root() -> bool:
    """Relative paths for setuptools, which runs this file as ``__cffi__`` from the project
    root and wants them; absolute ones elsewhere, as cffi compiles inside its tmpdir."""
    return __name__ == "__cffi__" and Path.cwd().resolve() == ROOT


# Only when run as a build script: cffi's setuptools hook runs this file as
# "__cffi__". Imported as pyexec._build (the stamp check wants source_hash),
# it must stay cheap: parsing the cdef costs pycparser a noticeable fraction
# of a second at every import in a source checkout, workers included.
if __name__ in ("__cffi__", "__main__"):
    ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(
        tmpdir=sys.argv[1] if len(sys.argv) > 1 else os.fspath(ROOT / "src"), verbose=True
    )
