"""Exceptions pyexec raises. No state: classes and a constant, for any thread.

``BrokenProcessPool`` is the standard library's own class, so code that catches
``concurrent.futures.process.BrokenProcessPool`` keeps working unchanged; the
opt-in features raise subclasses of standard exceptions for the same reason.
"""

from __future__ import annotations

import pickle
import signal
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "BROKEN_PREFIX",
    "BrokenProcessPool",
    "CallUnpicklingError",
    "TaskTerminated",
    "TaskTimeout",
    "WorkerDied",
    "describe_exit",
]

# How a broken pool's message begins, as the standard library's does.
BROKEN_PREFIX = (
    "A process in the process pool was terminated abruptly while the future was running or pending"
)


def describe_exit(exitcode: int | None) -> str:
    """'exit code 3', 'signal SIGKILL' or 'an unknown status', for messages."""
    if exitcode is None:
        return "an unknown status"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class WorkerDied(BrokenProcessPool):
    """A worker died while it held this task (with ``on_crash="restart"``).

    ``pid`` is the worker's process id; ``exitcode`` its exit status as
    ``multiprocessing`` reports it (negative signal number for a signal).
    """

    def __init__(self, message: str, pid: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self):
        return (type(self), (self.args[0] if self.args else "", self.pid, self.exitcode))


class CallUnpicklingError(pickle.UnpicklingError, BrokenProcessPool):
    """One call's function, arguments, result or exception could not be unpickled.

    Only that call fails and the pool keeps working; the exception is also a
    BrokenProcessPool, which the standard library raises there (breaking its pool),
    so code written for the standard library still catches it.
    """


class TaskTimeout(TimeoutError):
    """The task ran past its deadline; its worker was killed and replaced."""


class TaskTerminated(CancelledError):
    """The task was stopped by ``terminate_task``; its worker was killed and replaced."""
