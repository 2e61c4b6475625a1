"""Functions the abuse tests (tests/test_abuse.py) send to workers: importable by name."""

from __future__ import annotations

import marshal
import os
import time


def append_id(path: str, key: int, seconds: float = 0.0) -> int:
    """Log key (one O_APPEND write: lines never interleave), then sleep."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return key


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def tiny(x: int) -> int:
    return x


def log_len(path: str, key: int, data: bytes) -> int:
    """Log key (as append_id), answer len(data): a call with a big argument."""
    append_id(path, key)
    return len(data)


def hang_or_log(path: str, release: str, key: int) -> int:
    """Item 0 hangs until release exists; any other logs its key (as append_id)."""
    if key == 0:
        wait_for_path(release, 60)
        return key
    return append_id(path, key)


def pid_after(seconds: float) -> int:
    """This worker's pid, after a sleep (long enough that each worker takes one)."""
    time.sleep(seconds)
    return os.getpid()


def wait_for_path(path: str, limit: float) -> str:
    """A call that runs until path exists (or limit seconds pass): 'released' or
    'gave up'. It stands for a call that hangs, which the test can still end."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if os.path.exists(path):
            return "released"
        time.sleep(0.01)
    return "gave up"


def log_start_then_exit(path: str) -> None:
    """Initializer: log this worker's start, then die at once."""
    append_id(path, os.getpid())
    os._exit(3)


def leave_grandchild(pidfile: str, seconds: float) -> int:
    """Fork a grandchild that sleeps (holding every fd this worker has), return at once."""
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(seconds)
        finally:
            os._exit(0)
    tmp = pidfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, pidfile)
    return pid


BOOM = "marshal-cannot-encode-this"


def break_marshal() -> None:
    """Initializer: marshal.dumps fails on BOOM, as it does on a str over 2 GiB."""
    real = marshal.dumps

    def dumps(value, *args):
        if value == BOOM:
            raise ValueError("unmarshallable object (a str over 2 GiB, simulated)")
        return real(value, *args)

    marshal.dumps = dumps


def give(value):
    return value
