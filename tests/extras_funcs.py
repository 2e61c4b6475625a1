"""Worker-side functions for tests/test_extras.py: importable by name under spawn."""

from __future__ import annotations

import ctypes
import os
import signal
import time

_KEEP: list[bytes] = []  # memory a call allocates and keeps (max_memory_per_child)


def square(x: int) -> int:
    """A good call: its result is checkable."""
    return x * x


def pid_of(x: int) -> tuple[int, int]:
    """(x, the worker's pid): which worker ran which call."""
    return x, os.getpid()


def fail(x: int) -> None:
    """A call that raises: counts as failed, the worker lives on."""
    raise ValueError(f"bad {x}")


def crash(how: str, pidfile: str) -> None:
    """Record this worker's pid, then die: 'exit' (os._exit(7)), 'kill' (SIGKILL), 'segv'."""
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    if how == "exit":
        os._exit(7)
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segv":
        ctypes.string_at(0)  # a real invalid read: SIGSEGV
    time.sleep(30)
    raise AssertionError(f"crash({how!r}) did not kill the worker")


def log_run(logfile: str, key: str, value: object = None) -> object:
    """Append key to logfile (one O_APPEND write: atomic), then return value."""
    fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)
    return value


def started_then_sleep(startfile: str, seconds: float) -> int:
    """Write this call's start time (CLOCK_MONOTONIC, shared by all processes), then sleep."""
    start = time.monotonic()
    tmp = startfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{start!r} {os.getpid()}")
    os.replace(tmp, startfile)  # readers never see a half-written file
    time.sleep(seconds)
    return os.getpid()


def rss_now(_: object = None) -> int:
    """The worker's resident memory in bytes, as pyexec measures it."""
    from pyexec import _native

    return _native.rss()


def hog(mb: int) -> tuple[int, int]:
    """Allocate mb MiB, touch every page, keep it for good; return (pid, rss)."""
    from pyexec import _native

    _KEEP.append(b"\x01" * (mb * 1024 * 1024))
    return os.getpid(), _native.rss()
