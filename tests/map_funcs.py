"""Functions and values tests/test_map.py sends to workers (importable under spawn)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any


class Big:
    """A result the parent holds a weak reference to (bpo-14406)."""

    def __init__(self, i: int) -> None:
        self.i = i
        self.pad = bytes(1000)


def make_big(i: int) -> Big:
    return Big(i)


def ident(x: Any) -> Any:
    return x


def square(x: int) -> int:
    return x * x


def add(a: Any, b: Any) -> Any:
    return a + b


def fail_at(x: int, bad: int = 7) -> int:
    """x, but raises ValueError(x) at x == bad."""
    if x == bad:
        raise ValueError(x)
    return x


def sleepy(x: float) -> float:
    time.sleep(x)
    return x


def return_lock(_: Any = None) -> Any:
    return threading.Lock()


def lock_at(x: int, bad: int = 5) -> Any:
    """x, but an unpicklable result at x == bad."""
    return threading.Lock() if x == bad else x


class Gate:
    """A map item whose pickling waits for release (set by the test), after
    saying it started: it shows in which thread map items are pickled."""

    started = threading.Event()
    release = threading.Event()

    def __reduce__(self):
        Gate.started.set()
        Gate.release.wait(30)
        return (int, (0,))


def nap_or_fail(x: float) -> float:
    """Sleep x seconds and return x; raise ValueError for x < 0."""
    if x < 0:
        raise ValueError(x)
    time.sleep(x)
    return x


def exit_at(x: int, bad: int) -> int:
    """x, but the worker dies (os._exit) at x == bad."""
    if x == bad:
        os._exit(3)
    return x


class Adder:
    """An object whose bound method is submitted while its state changes."""

    def __init__(self) -> None:
        self.k = 0

    def add(self, x: int) -> int:
        return x + self.k
