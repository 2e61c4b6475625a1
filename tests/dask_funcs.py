"""Worker-side functions for tests/test_dask.py: importable by name on every Dask worker."""

from __future__ import annotations

import os
import random
import time

WAIT_LIMIT = 60.0  # a gate or a rendezvous that never opens fails the call, never hangs it


def log(path: str, tag: object) -> None:
    """Append one line to path (O_APPEND: lines from many processes never mix)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag}\n".encode())
    finally:
        os.close(fd)


def logged(path: str) -> list[str]:
    """The lines log() wrote to path (none if it does not exist)."""
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def wait_for(path: str, limit: float = WAIT_LIMIT) -> None:
    """Poll until path exists."""
    end = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def echo(*args, **kwargs):
    """Whatever it was called with."""
    return args, kwargs


def rand(_):
    """A different value each call (identical calls must each run)."""
    return random.random()


def square(x):
    return x * x


def fail(*args):
    raise ValueError("bad", *args)


def fail_at(x, bad):
    if x == bad:
        raise ValueError("bad", x)
    return x


def run_logged(path: str, i: int, delay: float = 0.0) -> int:
    """Record that call i ran, then take delay seconds."""
    log(path, i)
    time.sleep(delay)
    return i


def blocked(path: str, i: int, gate: str) -> int:
    """Record that call i started, then wait until the gate file exists."""
    log(path, i)
    wait_for(gate)
    return i


def crash_after(path: str, i: int, bad: int, delay: float) -> int:
    """Record call i; call bad then dies (os._exit(7)) after delay, the others return i."""
    log(path, i)
    time.sleep(delay)
    if i == bad:
        os._exit(7)
    return i


def meet(folder: str, n: int, i: int) -> int:
    """Rendezvous: returns only once n calls run at the same time (proves n free slots)."""
    open(os.path.join(folder, str(i)), "w").close()
    end = time.monotonic() + WAIT_LIMIT
    while len(os.listdir(folder)) < n:
        if time.monotonic() > end:
            raise TimeoutError(f"only {len(os.listdir(folder))} of {n} calls ran together")
        time.sleep(0.01)
    return os.getpid()
