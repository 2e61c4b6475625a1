"""The floors under the bench's rows, measured without any pool.

The latency floor: a raw pipe round trip between two processes. ``floor.c``
(package data) is compiled at first use with ``cc`` into a cache directory,
keyed by a digest of its source; when that fails, the same ping-pong runs
between two Python processes (``ECHO_PY`` is the echo side).

The memory floor under the big-payload rows: ``memfloor.c`` (compiled the same
way; Linux) times one buffer's copy into warm and into new memory, and two
processes writing new memory at once. ``python -m pyexec.bench.floor`` prints
it with what it implies for big-array, big-bytes and array-roundtrip.
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


def floor_program(source_name: str = "floor.c", stem: str = "pipe_floor") -> str | None:
    """Path of a compiled C floor program (floor.c: the pipe; memfloor.c: memory),
    compiling it once; None if cc fails."""
    source = resources.files(__package__).joinpath(source_name).read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    exe = os.path.join(cache_dir(), f"{stem}-{digest}")
    if os.access(exe, os.X_OK):
        return exe
    cc = os.environ.get("CC") or shutil.which("cc")
    if not cc:
        return None
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            src = os.path.join(tmp, f"{stem}.c")
            with open(src, "wb") as f:
                f.write(source)
            built = os.path.join(tmp, stem)
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


# The per-buffer measures of memfloor.c, in the order it prints them.
MEMORY_MEASURES = ("copy_warm", "pwrite_warm", "pwrite_fresh", "copy_fresh", "pwrite_fresh_2p")


def memory_floor(mib: int = 8, reps: int = 10) -> dict[str, float] | None:
    """ms per buffer of mib MiB for each of MEMORY_MEASURES (memfloor.c), or None
    where the program cannot be built or run (no cc, not Linux)."""
    exe = floor_program("memfloor.c", "mem_floor")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, str(mib), str(reps)], capture_output=True, text=True, check=True, timeout=300
        )
    except (OSError, subprocess.SubprocessError):
        return None
    figures = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    return {name: float(figures[name]) for name in MEMORY_MEASURES if name in figures}


def big_payload_floors(m: dict[str, float], calls: int = 40) -> dict[str, float]:
    """What the measures m (of 8 MiB buffers) imply for the big rows, in their units.

    Each is the copies the row cannot do without, at this machine's speed, assuming
    nothing else costs anything; the "serial" figures add the copies up, the "2p"
    ones divide that by the speed-up two processes got writing new memory at once
    (pwrite_fresh / pwrite_fresh_2p: 2 on two idle cores, less when they share;
    never under 1, as a pool can always do the copies one after the other).
    big-array: per call the argument into the worker's arena (warm: its slots are
    reused) and the result into new memory (the 40 results are all held to the end).
    big-bytes: the same, plus the worker's copy of the argument out of the arena
    (warm) and the parent's copy of each result out into a new bytes object; the
    worker's result goes to warm slots (released as soon as it is copied out).
    array-roundtrip: the argument and the result, both into warm memory."""
    warm, fresh = m["pwrite_warm"], m["pwrite_fresh"]
    scale = max(1.0, fresh / m.get("pwrite_fresh_2p", fresh))  # never worse than serial
    array_call = warm + fresh
    bytes_call = warm + m["copy_warm"] + warm + m["copy_fresh"]
    return {
        "big-array calls/s (serial)": 1e3 / array_call,
        "big-array calls/s (2p)": 1e3 * scale / array_call,
        "big-bytes calls/s (serial)": 1e3 / bytes_call,
        "big-bytes calls/s (2p)": 1e3 * scale / bytes_call,
        "array-roundtrip ms": warm + m["copy_warm"],
    }


def main() -> int:
    """Print the memory floor (8 MiB buffers) and what it implies for the big rows."""
    m = memory_floor()
    if m is None:
        print("memory floor: cannot build or run memfloor.c here (needs cc and Linux)")
        return 1
    print("ms per 8 MiB buffer, median of 10:")
    for name, ms in m.items():
        print(f"  {name:16} {ms:7.2f}")
    print("what that allows at most (nothing but the copies the row needs):")
    for name, value in big_payload_floors(m).items():
        print(f"  {name:28} {value:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
