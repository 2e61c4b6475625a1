"""pyexec: a drop-in, faster ``concurrent.futures.ProcessPoolExecutor``.

The public names, nothing else: no state of its own, nothing started at import.
"""

from ._errors import BrokenProcessPool, CallUnpicklingError, TaskTerminated, TaskTimeout, WorkerDied
from ._executor import PoolStats, ProcessPoolExecutor
from ._version import __version__

__all__ = [
    "BrokenProcessPool",
    "CallUnpicklingError",
    "PoolStats",
    "ProcessPoolExecutor",
    "TaskTerminated",
    "TaskTimeout",
    "WorkerDied",
    "__version__",
]
