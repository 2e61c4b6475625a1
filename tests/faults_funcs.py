"""Worker-side functions and hostile objects for the fault tests (importable under spawn)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

# ---- misbehaviour on demand ---------------------------------------------------


def misbehave(mode: str) -> None:
    """Fail in the way mode names: raise, sys.exit, os._exit or a segfault."""
    if mode == "raise":
        raise ValueError("hostile object refused")
    if mode == "exit":
        sys.exit(7)
    if mode == "os_exit":
        os._exit(9)
    if mode == "segv":
        ctypes.string_at(0)
    raise AssertionError(f"unknown mode {mode!r}")


def _rebuild(mode: str, parent_pid: int, in_parent: bool) -> Hostile:
    """Unpickle a Hostile: misbehave on the chosen side, else rebuild it."""
    if (os.getpid() == parent_pid) == in_parent:
        misbehave(mode)
    return Hostile(mode, "unpickle", in_parent, parent_pid)


class Hostile:
    """An object that misbehaves while being pickled or unpickled, on one side only.

    phase is "pickle" or "unpickle"; in_parent says on which side it acts
    (the parent's pid is known to both sides, so the other side is left alone).
    """

    def __init__(self, mode: str, phase: str, in_parent: bool, parent_pid: int) -> None:
        self.mode = mode
        self.phase = phase
        self.in_parent = in_parent
        self.parent_pid = parent_pid

    def __reduce__(self):
        if self.phase == "pickle" and (os.getpid() == self.parent_pid) == self.in_parent:
            misbehave(self.mode)
        if self.phase == "unpickle":
            return (_rebuild, (self.mode, self.parent_pid, self.in_parent))
        return (Hostile, (self.mode, self.phase, self.in_parent, self.parent_pid))


def take(obj: object) -> str:
    """Receive an argument and describe it (the argument is the hostile part)."""
    return type(obj).__name__


def give_hostile(mode: str, phase: str, in_parent: bool, parent_pid: int) -> Hostile:
    """Return a hostile result (built in the worker, so the parent never pickles it)."""
    return Hostile(mode, phase, in_parent, parent_pid)


# ---- exceptions that do not travel ------------------------------------------


class UnpicklableError(Exception):
    """An exception carrying a lock: it cannot be pickled at all."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = threading.Lock()


class NoUnpickleError(Exception):
    """Pickles fine, but unpickling calls __init__ with the wrong arguments."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_unpicklable(msg: str = "carries a lock") -> None:
    """Raise an exception that cannot be pickled."""
    raise UnpicklableError(msg)


def raise_no_unpickle() -> None:
    """Raise an exception that pickles but fails to unpickle in the parent."""
    raise NoUnpickleError("left", "right")


# ---- ordinary work -------------------------------------------------------------


def ident(x):
    """Return x."""
    return x


def square(x: int) -> int:
    """Return x * x."""
    return x * x


def getpid(_=None) -> int:
    """The worker's pid."""
    return os.getpid()


def sleep_then(seconds: float, value=None):
    """Sleep, then return value."""
    time.sleep(seconds)
    return value


def pid_after(seconds: float, i: int) -> tuple[int, int]:
    """Sleep, then return (i, worker pid): lets a test pick a live worker to kill."""
    time.sleep(seconds)
    return i, os.getpid()


def sized(n: int, seconds: float, tag: int) -> tuple[int, int, bytes]:
    """Sleep, then return (tag, n, n bytes derived from tag): results of random size."""
    if seconds:
        time.sleep(seconds)
    return tag, n, bytes([tag % 256]) * n


def length(data: bytes) -> int:
    """len(data): a call whose argument is the large part."""
    return len(data)


def big_result_then_die(nbytes: int, delay: float) -> bytes:
    """Return nbytes, while a thread SIGKILLs this worker after delay (mid-write)."""

    def later() -> None:
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=later, daemon=True).start()
    return b"x" * nbytes


def write_pid_and_sleep(path: str, seconds: float) -> None:
    """An initializer: record this worker's pid in path, then sleep (a slow start)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)


def os_exit_initializer(path: str, code: int) -> None:
    """An initializer that records this worker's pid, then ends the worker outright."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    os._exit(code)


def raising_initializer() -> None:
    """An initializer that raises."""
    raise OSError("no database today")


def noop(_=None) -> None:
    """Do nothing (tiny task)."""
    return None


# ---- test-side helpers (run in the test process, never in a worker) ---------

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_scripts")


def alive(pids) -> list[int]:
    """The pids in pids that still run (zombies count as gone)."""
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(pids, timeout: float = 10.0) -> list[int]:
    """Wait until every pid has ended; return those still running at the deadline."""
    deadline = time.monotonic() + timeout
    while (left := alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def descendants(pid: int) -> list[int]:
    """Every live descendant of pid."""
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def read_pids(path: str, count: int, timeout: float = 30.0) -> list[int]:
    """Wait until path holds count pids (one a line, written by an initializer)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                pids = [int(x) for x in f.read().split()]
        except FileNotFoundError:
            pids = []
        if len(pids) >= count or time.monotonic() > deadline:
            return pids
        time.sleep(0.02)


def touch_after(path: str, seconds: float) -> str:
    """Sleep, then create path: proof that the call ran to its end."""
    time.sleep(seconds)
    with open(path, "w") as f:
        f.write("done")
    return path


def maybe_hostile(i: int, mode: str, phase: str, in_parent: bool, parent_pid: int):
    """Return i, except item 1, which returns a hostile result (for map)."""
    if i == 1:
        return Hostile(mode, phase, in_parent, parent_pid)
    return i


def os_exit_now(code: int) -> None:
    """End the worker at once with code (a crash as the parent sees it)."""
    os._exit(code)
