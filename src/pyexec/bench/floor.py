"""The latency floor: a raw pipe round trip between two processes, under any pool.

``floor.c`` (package data) is compiled at first use with ``cc`` into a cache
directory, keyed by a digest of its source; when that fails, the same
ping-pong runs between two Python processes (``ECHO_PY`` is the echo side).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import resources

ECHO_PY = r"""
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
    source = resources.files(__package__).joinpath("floor.c").read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
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
            with open(src, "wb") as f:
                f.write(source)
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
        [sys.executable, "-c", ECHO_PY], stdin=subprocess.PIPE, stdout=subprocess.PIPE
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
