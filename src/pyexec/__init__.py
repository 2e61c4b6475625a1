"""pyexec: a drop-in, faster ``concurrent.futures.ProcessPoolExecutor``."""

from ._errors import BrokenProcessPool, TaskTerminated, TaskTimeout, WorkerDied
from ._executor import PoolStats, ProcessPoolExecutor
from ._version import __version__

__all__ = [
    "BrokenProcessPool",
    "PoolStats",
    "ProcessPoolExecutor",
    "TaskTerminated",
    "TaskTimeout",
    "WorkerDied",
    "__version__",
]
