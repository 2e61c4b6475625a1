"""The pools under test, behind one small interface: submit, result, map, close.

Adding a pool is one subclass of ``Pool`` (its ``name``, and ``module`` if it
needs a package that may be missing) plus its entry in ``POOL_CLASSES``. A
``Pool`` object holds one pool under test, used by the bench's one thread.
"""

from __future__ import annotations

import inspect
import multiprocessing
import platform
import warnings
from collections.abc import Callable, Iterable
from typing import Any

BASELINE = "concurrent.futures"
ALIASES = {
    "cf": "concurrent.futures",
    "stdlib": "concurrent.futures",
    "mp": "multiprocessing.Pool",
    "mp.Pool": "multiprocessing.Pool",
    "pool": "multiprocessing.Pool",
}


class Pool:
    """One pool under test: submit one call, map, shut down."""

    name = ""
    # The package it needs beyond the standard library and pyexec (None: none).
    module: str | None = None
    # In the run without --pools (False: only for the rows that name it in their ``pools``).
    default = True

    def __init__(self, workers: int, method: str) -> None:
        self.workers = workers
        self.method = method

    def submit(self, fn: Callable, arg: Any) -> Any:
        """Schedule fn(arg); return a handle for result()."""
        return self.p.submit(fn, arg)

    def result(self, handle: Any) -> Any:
        """Wait for a handle from submit() and return its value."""
        return handle.result()

    def map(self, fn: Callable, items: Iterable, chunksize: int | None) -> Iterable:
        """fn over items, in order; chunksize None means the pool's default."""
        if chunksize is None:
            return self.p.map(fn, items)
        return self.p.map(fn, items, chunksize=chunksize)

    @classmethod
    def unordered_missing(cls) -> str | None:
        """None if map_unordered() exists for this pool, else why not."""
        return f"{cls.name} has no unordered map"

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterable:
        """fn over items in completion order, with the pool's default chunking."""
        raise NotImplementedError(self.unordered_missing())

    def close(self) -> None:
        """Shut down and wait for every worker to exit."""
        self.p.shutdown(wait=True)


class PyexecPool(Pool):
    name = "pyexec"

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        import pyexec

        self.p = pyexec.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))

    @classmethod
    def unordered_missing(cls) -> str | None:
        # Issue 17 adds map(..., unordered=True); until then the cell reads n/a, not a stand-in.
        import pyexec

        if "unordered" in inspect.signature(pyexec.ProcessPoolExecutor.map).parameters:
            return None
        return "pyexec's map has no unordered= yet"

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterable:
        return self.p.map(fn, items, unordered=True)


class StdlibPool(Pool):
    name = "concurrent.futures"

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        from concurrent.futures import ProcessPoolExecutor

        self.p = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


class MpPool(Pool):
    name = "multiprocessing.Pool"

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        self.p = multiprocessing.get_context(method).Pool(workers)

    def submit(self, fn: Callable, arg: Any) -> Any:
        return self.p.apply_async(fn, (arg,))

    def result(self, handle: Any) -> Any:
        return handle.get()

    def map(self, fn: Callable, items: Iterable, chunksize: int | None) -> Iterable:
        return self.p.map(fn, items, chunksize)

    @classmethod
    def unordered_missing(cls) -> str | None:
        return None

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterable:
        # imap_unordered's default chunksize is 1; give it the one Pool.map computes.
        items = items if isinstance(items, (list, range)) else list(items)
        chunksize, extra = divmod(len(items), self.workers * 4)
        return self.p.imap_unordered(fn, items, max(1, chunksize + bool(extra)))

    def close(self) -> None:
        self.p.close()
        self.p.join()


class LokyPool(Pool):
    name = "loky"
    module = "loky"

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        import loky
        from loky.backend.context import get_context

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loky warns that fork is not its default
            self.p = loky.ProcessPoolExecutor(workers, context=get_context(method))


class PebblePool(Pool):
    name = "pebble"
    module = "pebble"

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        import pebble

        self.p = pebble.ProcessPool(workers, context=multiprocessing.get_context(method))

    def submit(self, fn: Callable, arg: Any) -> Any:
        return self.p.schedule(fn, args=(arg,))

    def map(self, fn: Callable, items: Iterable, chunksize: int | None) -> Iterable:
        return self.p.map(fn, items, chunksize=chunksize or 1).result()

    def close(self) -> None:
        self.p.close()
        self.p.join()


class _LocalDask(Pool):
    """A fresh LocalCluster per pool (loopback, ``workers`` processes of one thread, no
    dashboard); the start method does not apply (Dask's nannies start the workers)."""

    module = "distributed"
    default = False

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        import distributed

        self.cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
        self.client = distributed.Client(self.cluster, set_as_default=False)

    def close(self) -> None:
        self.p.shutdown(wait=True)
        self.client.close()
        self.cluster.close()


class DaskExecutorPool(_LocalDask):
    """pyexec.dask.DaskExecutor (the dask-* rows)."""

    name = "pyexec.dask"

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        from pyexec.dask import DaskExecutor

        self.p = DaskExecutor(client=self.client)


class DaskClientExecutorPool(_LocalDask):
    """Dask's own ``Client.get_executor()`` (the baseline of the dask-* rows)."""

    name = "dask.get_executor"

    def __init__(self, workers: int, method: str) -> None:
        super().__init__(workers, method)
        self.p = self.client.get_executor()


# In the order of the table's columns.
POOL_CLASSES: dict[str, type[Pool]] = {
    c.name: c
    for c in (
        PyexecPool,
        StdlibPool,
        MpPool,
        LokyPool,
        PebblePool,
        DaskExecutorPool,
        DaskClientExecutorPool,
    )
}
POOLS = tuple(POOL_CLASSES)


def available(name: str) -> bool:
    """Whether the pool's package imports here."""
    module = POOL_CLASSES[name].module
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def version_of(name: str) -> str:
    """The version of the package behind a pool."""
    if name in ("concurrent.futures", "multiprocessing.Pool"):
        return platform.python_version()
    module = __import__(POOL_CLASSES[name].module or name)
    return str(getattr(module, "__version__", "?"))
