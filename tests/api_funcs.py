"""Functions the API/compat/lifecycle tests send to workers (importable under spawn),
and a few parent-side helpers that run one scenario on the stdlib and on pyexec."""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyexec

# ---- worker side -------------------------------------------------------------

_GLOBAL: Any = None


class CustomError(Exception):
    """An exception with several args, to compare type and args across the boundary."""


class UnpicklableError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = threading.Lock()


class NeedsTwoError(Exception):
    """Pickles fine, fails to unpickle: __init__ needs two args, args holds one."""

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(a)


def _refuse_unpickle() -> None:
    raise RuntimeError("this argument refuses to be unpickled")


class UnloadableArg:
    """Pickles fine, fails to unpickle (in the worker)."""

    def __reduce__(self):
        return (_refuse_unpickle, ())


def ident(x: Any) -> Any:
    return x


def add(a: Any, b: Any) -> Any:
    return a + b


def inverse(x: Any) -> Any:
    return 1 / x


def add3(a: Any, b: Any, c: Any) -> Any:
    return a + b + c


def square_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def getpid(_: Any = None) -> int:
    return os.getpid()


def sleep_getpid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def raise_custom(*args: Any) -> None:
    raise CustomError(*args)


def raise_unpicklable(msg: str) -> None:
    raise UnpicklableError(msg)


def raise_unloadable(a: Any) -> None:
    raise NeedsTwoError(a, "b")


def return_lock() -> Any:
    return threading.Lock()


def die(code: int = 3) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


def segfault() -> None:
    ctypes.string_at(0)


def touch(directory: str, name: Any, delay: float = 0.0) -> str:
    """Sleep delay seconds, then create directory/name: proof that the call ran."""
    time.sleep(delay)
    path = Path(directory) / str(name)
    path.write_text(str(os.getpid()))
    return str(path)


def init_global(value: Any) -> None:
    global _GLOBAL
    _GLOBAL = value


def read_global(_: Any = None) -> Any:
    return _GLOBAL


def bad_init(msg: str) -> None:
    raise ValueError(msg)


def import_attr(module: str, attr: str) -> Any:
    """Import module by name in the worker and return one of its attributes."""
    import importlib

    return getattr(importlib.import_module(module), attr)


def start_probe(_: Any = None) -> tuple[int, int, Any]:
    """(pid, parent pid, __main__'s RUNTIME_MARK): tells how the worker was started."""
    main = sys.modules.get("__main__")
    return os.getpid(), os.getppid(), getattr(main, "RUNTIME_MARK", None)


def slow_probe(seconds: float) -> tuple[int, int, Any]:
    """start_probe after a sleep: calls in a row then need more than one worker."""
    time.sleep(seconds)
    return start_probe()


# ---- parent side -------------------------------------------------------------

IMPLS: dict[str, Callable[..., Any]] = {
    "stdlib": cf.ProcessPoolExecutor,
    "pyexec": pyexec.ProcessPoolExecutor,
}


def outcome(fut: cf.Future, timeout: float = 30) -> tuple:
    """A future's end as comparable data: ('ok', value) or ('err', type, args)."""
    try:
        return ("ok", fut.result(timeout))
    except cf.CancelledError:
        return ("cancelled",)
    except BaseException as exc:
        return ("err", type(exc), exc.args)


def raised(fn: Callable[[], Any]) -> tuple:
    """What calling fn does, as comparable data: ('ok', value) or ('err', type, args)."""
    try:
        return ("ok", fn())
    except BaseException as exc:
        return ("err", type(exc), exc.args)


def side_by_side(
    scenario: Callable[[Callable[..., Any]], Any], stdlib: bool = True
) -> dict[str, Any]:
    """Run scenario(executor_class) for the stdlib and for pyexec; return both outcomes.

    stdlib=False runs pyexec alone: for parent-side semantics the stdlib is
    checked under one start method only, to keep the suite fast.
    """
    return {name: scenario(cls) for name, cls in IMPLS.items() if stdlib or name == "pyexec"}


def gone(pid: int) -> bool:
    """True when pid no longer runs (absent or a zombie)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: Any, timeout: float) -> list[int]:
    """Poll until every pid is gone; return the ones still running at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if not gone(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def touch_then_sleep(directory: str, name: Any, seconds: float) -> None:
    """Create directory/name holding this pid (the call has started), then sleep:
    a busy worker. Written aside and renamed: a reader never sees it empty."""
    path = Path(directory) / str(name)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(seconds)


def watch_exit(scratch: str) -> int:
    """In the worker: note a SIGTERM in scratch/term-PID, and a clean exit (the
    multiprocessing finalizers ran) in scratch/bye-PID."""
    import signal
    from multiprocessing import util

    pid = os.getpid()

    def note(name: str) -> None:
        with open(os.path.join(scratch, f"{name}-{pid}"), "w") as f:
            f.write("x")

    signal.signal(signal.SIGTERM, lambda *_: note("term"))
    util.Finalize(None, note, ("bye",), exitpriority=0)
    return pid
