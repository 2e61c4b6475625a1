"""DaskExecutor: pyexec's executor surface on a Dask ``distributed`` cluster.

Install with ``pip install 'pyexec[dask]'``. Nothing else in pyexec imports this module.

Three parties, one role each::

    client (DaskExecutor)          scheduler (_Arbiter plugin)        worker (_PoolPlugin)
    submit --Client.submit(key)--> task queued ---------------------> _run(call):
                                   pyexec_start(key) <--rpc---------    "may I start?"
    Future RUNNING <--"start"----- grants once, refuses a cancelled     yes: the call runs in a
    cancel() --pyexec_cancel-----> call or a rerun                      pyexec pool (deadlines,
    settle <--"done"/"died"------- transition / remove_worker hooks     terminate_task, crashes)
    terminate_task --------------> pyexec_terminate --stream---------> pool.terminate_task

Why each piece:

- One arbiter on the scheduler decides, for each call, whether it starts or is cancelled:
  the scheduler's event loop runs one handler at a time, so "may I start?" (from the worker)
  and "may I cancel?" (from ``Future.cancel()``) cannot both say yes. A call runs at most once:
  Dask reruns a task whose worker died, and recomputes a lost result, but the arbiter refuses
  any second start of a key. The start handler also checks that the scheduler still has the
  task processing on the asking worker, so a task released before it started never runs.
- The arbiter tells the client "start", "done", "erred" and "died" over the scheduler's stream
  to that client (the same channel Dask's own events use, so they arrive in order); the worker
  asks over a direct rpc (its answer is needed before the call runs). No polling anywhere.
- A Dask task cannot be interrupted in its thread. Each Dask worker runs the calls in a small
  pyexec ``ProcessPoolExecutor`` (one process per worker thread, ``on_crash="restart"``), so a
  deadline, ``terminate_task`` or a crashing call costs one pool process, replaced from the
  pool's fork zygote in milliseconds, and never the Dask worker (whose results would be lost).
- The call travels as one cloudpickled blob inside the task's data: Dask never looks into the
  arguments (no key/priority/retries swallowed, no futures substituted) and every call gets a
  unique key with ``pure=False`` (nothing deduplicated).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import time
import uuid
import warnings
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, InvalidStateError, _base, wait
from concurrent.futures import Future as _StdFuture
from concurrent.futures.process import _RemoteTraceback
from queue import Empty, SimpleQueue
from typing import Any

try:
    import cloudpickle
    import distributed
    from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin
    from distributed.utils import sync
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "pyexec.dask needs Dask's distributed package: pip install 'pyexec[dask]'"
    ) from _exc

from ._errors import BrokenProcessPool, TaskTerminated, TaskTimeout, WorkerDied, describe_exit
from ._executor import PoolStats, ProcessPoolExecutor

__all__ = ["DaskExecutor", "DaskFuture"]

_PREFIX = "pyexec-"
_ARBITER = "pyexec-arbiter"
_POOL = "pyexec-pool"

# Arbiter states of a call (the scheduler's view).
_STARTED, _CANCELLED, _DONE, _DIED = "started", "cancelled", "done", "died"
# What _run returns: a refusal, a value, or an exception with its remote traceback text.
_REFUSED, _OK, _ERR = 0, 1, 2

_BROKEN_PREFIX = (
    "A process in the process pool was terminated abruptly while the future was running or pending"
)


# ---- the scheduler side ------------------------------------------------------------------


class _Arbiter(SchedulerPlugin):
    """Scheduler plugin: decides start-or-cancel for each pyexec call and reports to its client.

    State (touched only on the scheduler's event loop): ``calls`` key -> [state, worker, pid];
    ``on_worker`` worker address -> keys started there and not done.
    """

    idempotent = True
    name = _ARBITER

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.calls: dict[str, list] = {}
        self.on_worker: defaultdict[str, set] = defaultdict(set)
        scheduler.handlers["pyexec_start"] = self.handle_start
        scheduler.handlers["pyexec_cancel"] = self.handle_cancel
        scheduler.handlers["pyexec_terminate"] = self.handle_terminate

    def _notify(self, key: str, *msg: Any) -> None:
        """Send ``msg`` to the client(s) that want ``key``, as a Dask event of its executor."""
        ts = self.scheduler.tasks.get(key)
        if ts is None or not ts.who_wants:
            return
        event = {"op": "event", "topic": key.rsplit("-", 1)[0], "event": (time.time(), msg)}
        self.scheduler.send_all({cs.client_key: [dict(event)] for cs in ts.who_wants}, {})

    def handle_start(self, key: str, worker: str, pid: int) -> bool:
        """May the call start on this worker? Yes once, if not cancelled and still assigned."""
        if key in self.calls:
            return False  # cancelled, or a rerun after its worker died or its result was lost
        ts = self.scheduler.tasks.get(key)
        if ts is None or ts.processing_on is None or ts.processing_on.address != worker:
            return False  # released (cancelled) before it started here
        self.calls[key] = [_STARTED, worker, pid]
        self.on_worker[worker].add(key)
        self._notify(key, "start", key)
        return True

    def handle_cancel(self, keys: list) -> list:
        """Cancel the calls that have not started; one bool per key (True: it never runs)."""
        out = []
        for key in keys:
            if key in self.calls:
                out.append(self.calls[key][0] == _CANCELLED)
            else:
                self.calls[key] = [_CANCELLED, None, None]
                out.append(True)
        return out

    def handle_terminate(self, key: str) -> str:
        """Stop a running call: ask its worker's pool to kill it. Returns the call's state."""
        entry = self.calls.get(key)
        if entry is None:
            self.calls[key] = [_CANCELLED, None, None]
            return _CANCELLED
        if entry[0] == _STARTED:
            self.scheduler.worker_send(entry[1], {"op": "pyexec-terminate", "key": key})
        return entry[0]

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if not (isinstance(key, str) and key.startswith(_PREFIX)):
            return
        if finish in ("memory", "erred") and start == "processing":
            entry = self.calls.get(key)
            if entry is not None and entry[0] == _STARTED:
                entry[0] = _DONE
                self.on_worker[entry[1]].discard(key)
            self._notify(key, "done" if finish == "memory" else "erred", key)
        elif finish == "forgotten":
            entry = self.calls.pop(key, None)
            if entry is not None and entry[0] == _STARTED:
                self.on_worker[entry[1]].discard(key)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        """A worker left: every call it was running is reported dead (and never rerun)."""
        for key in self.on_worker.pop(worker, ()):
            entry = self.calls[key]
            entry[0] = _DIED
            self._notify(key, "died", key, worker, entry[2])


# ---- the worker side ---------------------------------------------------------------------


def _call_blob(blob: bytes) -> Any:
    """In a pool process: unpickle the call and run it."""
    fn, args, kwargs = cloudpickle.loads(blob)
    return fn(*args, **kwargs)


def _run_chunk(fn: Callable, star: bool, chunk: tuple) -> list:
    """One map chunk, in order (an exception ends the chunk, as in the standard library)."""
    if star:
        return [fn(*args) for args in chunk]
    return [fn(arg) for arg in chunk]


class _PoolPlugin(WorkerPlugin):
    """Worker plugin: a pyexec pool per Dask worker that runs its calls, killable one by one.

    ``running`` maps a key to its pool future while the call runs; ``terminated`` holds keys
    whose terminate request came before the call reached the pool.
    """

    idempotent = True
    name = _POOL

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.pool: ProcessPoolExecutor | None = None
        self.lock = threading.Lock()
        self.running: dict[str, _StdFuture] = {}
        self.terminated: dict[str, None] = {}
        worker.stream_handlers["pyexec-terminate"] = self.terminate

    def teardown(self, worker: Any) -> None:
        with self.lock:
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.kill_workers()
            pool.shutdown(wait=True)

    def _pool(self) -> ProcessPoolExecutor:
        with self.lock:
            if self.pool is None:
                n = max(1, self.worker.state.nthreads)
                # fork: replacements come from pyexec's single-threaded zygote in a few ms;
                # spawn and forkserver would need a non-daemonic Dask worker process.
                pool = ProcessPoolExecutor(n, mp_context=_fork_context(), on_crash="restart")
                # A nanny starts its worker as a daemonic process, and multiprocessing
                # refuses children to those (they would be orphaned at exit). pyexec's
                # processes die with their parent (a parent-death signal, the zygote's
                # kill), so the flag is lifted while the first one and the zygote start;
                # every later one is forked by the zygote, without multiprocessing.
                me = multiprocessing.current_process()
                daemon = me._config.get("daemon")
                me._config["daemon"] = False
                try:
                    with warnings.catch_warnings():
                        # The zygote is forked from the threaded Dask worker once, here.
                        warnings.simplefilter("ignore", DeprecationWarning)
                        pool.submit(int).result()
                finally:
                    me._config["daemon"] = daemon
                self.pool = pool
            return self.pool

    def terminate(self, key: str, **kwargs: Any) -> None:
        """Stream handler (the worker's event loop): stop the call ``key``."""
        with self.lock:
            pf = self.running.get(key)
            if pf is None:
                self.terminated[key] = None
                while len(self.terminated) > 10_000:  # a request that came too late
                    del self.terminated[next(iter(self.terminated))]
                return
            pool = self.pool
        if pool is not None:
            pool.terminate_task(pf)

    def run(self, key: str, blob: bytes, timeout: float | None) -> tuple:
        pool = self._pool()
        with self.lock:
            if self.terminated.pop(key, 0) is None:
                return (_ERR, TaskTerminated(f"call {key} was stopped by terminate_task()"), "")
            pf = pool.schedule(_call_blob, (blob,), timeout=timeout)
            self.running[key] = pf
        try:
            return (_OK, pf.result())
        except (TaskTimeout, TaskTerminated, WorkerDied) as exc:
            return (_ERR, self._restate(exc, key, timeout), "")
        except BaseException as exc:
            cause = exc.__cause__
            tb = cause.tb if isinstance(cause, _RemoteTraceback) else ""
            exc.__cause__ = exc.__context__ = None
            exc.__traceback__ = None
            return (_ERR, exc, tb)
        finally:
            with self.lock:
                self.running.pop(key, None)

    def _restate(self, exc: BaseException, key: str, timeout: float | None) -> BaseException:
        """The pool's own error, told in the executor's terms: the call's key, the Dask worker."""
        where = f"on Dask worker {self.worker.address}"
        if isinstance(exc, TaskTimeout):
            return TaskTimeout(
                f"call {key} ran past its deadline of {timeout} s {where}; "
                "the process running it was killed and replaced"
            )
        if isinstance(exc, TaskTerminated):
            return TaskTerminated(
                f"call {key} was stopped by terminate_task() {where}; "
                "the process running it was killed and replaced"
            )
        assert isinstance(exc, WorkerDied)
        return WorkerDied(
            f"call {key}: the process running it {where} (pid {exc.pid}) died with "
            f"{describe_exit(exc.exitcode)}; a new one takes its place",
            exc.pid,
            exc.exitcode,
        )


def _fork_context() -> Any:
    return multiprocessing.get_context("fork")


class _Call:
    """A call as Dask sees it: opaque data (Dask does not look inside objects)."""

    __slots__ = ("blob", "key", "timeout")

    def __init__(self, key: str, blob: bytes, timeout: float | None) -> None:
        self.key, self.blob, self.timeout = key, blob, timeout

    def __reduce__(self):
        return (_Call, (self.key, self.blob, self.timeout))


def _run(call: _Call) -> tuple:
    """The Dask task: ask the arbiter, then run the call in this worker's pyexec pool."""
    worker = distributed.get_worker()
    granted = sync(
        worker.loop,
        worker.scheduler.pyexec_start,
        key=call.key,
        worker=worker.address,
        pid=os.getpid(),
    )
    if not granted:
        return (_REFUSED,)
    plugin = worker.plugins[_POOL]
    return plugin.run(call.key, call.blob, call.timeout)


# ---- the client side ---------------------------------------------------------------------


class DaskFuture(_StdFuture):
    """A ``concurrent.futures.Future`` whose ``cancel()`` asks the scheduler's arbiter.

    ``cancel()`` returns True only if the call will never run; False once it started.
    """

    def __init__(self, owner: _DaskPool, key: str) -> None:
        super().__init__()
        self._pyexec_owner = weakref.ref(owner)
        self._pyexec_key = key

    def cancel(self) -> bool:
        with self._condition:
            if self._state in (_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED):
                return True
            if self._state != _base.PENDING:
                return False
        owner = self._pyexec_owner()
        if owner is not None and not owner._cancel_keys([self._pyexec_key])[0]:
            return False
        return _cancel_and_notify(self)


class _Record:
    __slots__ = ("dfut", "future")

    def __init__(self, future: DaskFuture) -> None:
        self.future = future
        self.dfut: Any = None


def _connect(address: str | None, n_workers: int | None) -> tuple[distributed.Client, Any]:
    """A client of its own: to address, or to a LocalCluster started now on
    127.0.0.1 (then returned too, to be closed at shutdown; else None)."""
    cluster: Any = None
    if address is None:
        cluster = distributed.LocalCluster(
            n_workers=n_workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,  # no dashboard
            # The scheduler's plain HTTP routes (/health) still listen: on a free
            # loopback port, not on 8787 (taken if another cluster runs here).
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
    try:
        client = distributed.Client(cluster if address is None else address, set_as_default=False)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    return client, cluster


class _DaskPool(Executor):
    """What a DaskExecutor owns: the client (and cluster), the records of its calls, the
    counters, and the collector thread that settles the futures. The collector holds this
    object, not the DaskExecutor, so a dropped executor's futures still settle."""

    def __init__(
        self,
        address: str | None = None,
        *,
        client: distributed.Client | None = None,
        n_workers: int | None = None,
        on_crash: str = "break",
        task_timeout: float | None = None,
    ) -> None:
        if on_crash not in ("break", "restart"):
            raise ValueError(f"on_crash must be 'break' or 'restart', not {on_crash!r}")
        if task_timeout is not None and not task_timeout > 0:
            raise ValueError(f"task_timeout must be None or > 0, not {task_timeout!r}")
        if address is not None and client is not None:
            raise ValueError("give an address or a client, not both")
        if n_workers is not None and (address is not None or client is not None):
            raise ValueError("n_workers sizes the LocalCluster: only without address or client")
        if n_workers is not None and n_workers < 1:
            raise ValueError("n_workers must be >= 1")
        self._on_crash = on_crash
        self._task_timeout = task_timeout
        self._own_client = client is None
        self._cluster: Any = None
        if client is None:
            client, self._cluster = _connect(address, n_workers)
        self._client = client
        self._id = uuid.uuid4().hex[:16]
        self._topic = _PREFIX + self._id
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._broken: str | None = None
        self._shutdown = False
        self._closed = False
        self._submitted = self._completed = self._failed = self._replaced = 0
        self._events: SimpleQueue = SimpleQueue()
        try:
            client.register_plugin(_Arbiter())
            client.register_plugin(_PoolPlugin())
            client.subscribe_topic(self._topic, self._events.put)
        except BaseException:
            self._close()
            raise
        self._collector = threading.Thread(
            target=self._collect, name=f"pyexec-dask-{self._id[:6]}", daemon=True
        )
        self._collector.start()

    @property
    def client(self) -> distributed.Client:
        """The Dask client this executor submits through."""
        return self._client

    # ---- submitting ------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> DaskFuture:
        """Schedule fn(*args, **kwargs) on the cluster; return its Future."""
        return self._submit(fn, args, kwargs, self._task_timeout)

    def schedule(
        self,
        fn: Callable[..., Any],
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        timeout: float | None = None,
    ) -> DaskFuture:
        """Like submit, with a per-call deadline in seconds from its start (default: task_timeout).

        A call still running then is killed; its future raises ``pyexec.TaskTimeout``.
        """
        if timeout is None:
            timeout = self._task_timeout
        elif not timeout > 0:
            raise ValueError(f"timeout must be None or > 0, not {timeout!r}")
        return self._submit(fn, tuple(args), dict(kwargs or {}), timeout)

    def _submit(self, fn: Callable, args: tuple, kwargs: dict, timeout: float | None) -> DaskFuture:
        key = f"{self._topic}-{next(self._ids)}"
        future = DaskFuture(self, key)
        try:
            blob = cloudpickle.dumps((fn, args, kwargs), protocol=5)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # that call alone fails, as in the standard library
            blob, failure = b"", exc
        else:
            failure = None
        with self._lock:
            self._check_accepting()
            if failure is not None:
                future.set_exception(failure)
                return future
            record = _Record(future)
            self._records[key] = record
            self._submitted += 1
            # Under the lock: a break (which settles every record) cannot miss this one.
            record.dfut = self._client.submit(
                _run, _Call(key, blob, timeout), key=key, pure=False, retries=0
            )
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        unordered: bool = False,
    ) -> Iterator[Any]:
        """map(fn, *iterables) on the cluster; a chunk of ``chunksize`` items is one Dask task.

        ``buffersize`` bounds the chunks in flight (the input is then read lazily);
        ``unordered=True`` yields chunks as they finish; ``timeout`` counts from this call.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        end = None if timeout is None else time.monotonic() + timeout
        star = len(iterables) != 1
        items = zip(*iterables, strict=False) if star else iter(iterables[0])
        chunks = iter(lambda: tuple(itertools.islice(items, chunksize)), ())

        def one(chunk: tuple) -> DaskFuture:
            return self._submit(_run_chunk, (fn, star, chunk), {}, self._task_timeout)

        inflight = deque(one(c) for c in itertools.islice(chunks, buffersize))
        return self._results(inflight, chunks, one, end, buffersize, unordered)

    def _results(
        self,
        inflight: deque,
        chunks: Iterator,
        one: Callable,
        end: float | None,
        buffersize: int | None,
        unordered: bool,
    ) -> Iterator[Any]:
        try:
            while inflight:
                left = None if end is None else max(0.0, end - time.monotonic())
                if unordered:
                    done, _ = wait(inflight, left, return_when=FIRST_COMPLETED)
                    if not done:
                        raise _base.TimeoutError()
                    fut = next(f for f in inflight if f in done)
                    inflight.remove(fut)
                else:
                    fut = inflight.popleft()
                values = fut.result(left)
                del fut
                if buffersize:
                    inflight.extend(one(c) for c in itertools.islice(chunks, 1))
                yield from values
        finally:
            self._cancel_futures(list(inflight))

    # ---- stopping ------------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; cancel what has not started (cancel_futures); close what we started.

        With wait=True, return once every call is settled and the LocalCluster (or Client) this
        executor started is closed; with wait=False, a thread does that once the calls are done.
        """
        with self._lock:
            self._shutdown = True
            futures = [r.future for r in self._records.values()]
        if cancel_futures:
            self._cancel_futures(futures)
        if wait and threading.current_thread() is not self._collector:
            _base.wait(futures)
            self._close()
        else:
            threading.Thread(target=self._close_when_done, args=(futures,), daemon=True).start()

    def _close_when_done(self, futures: list) -> None:
        _base.wait(futures)
        self._close()

    def _close(self) -> None:
        """Stop the collector; close the Client and the LocalCluster if this executor made them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._events.put(None)
        collector = getattr(self, "_collector", None)
        if collector is not None and collector is not threading.current_thread():
            collector.join()
        try:
            self._client.unsubscribe_topic(self._topic)
        except Exception:
            pass  # the client is already closed
        if self._own_client:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __exit__(self, *exc: Any) -> bool:
        self.shutdown(wait=True)
        return False

    def terminate_task(self, future: _StdFuture) -> bool:
        """Stop one call: a pending one is cancelled, a running one killed (``TaskTerminated``).

        Returns False when the call had already finished, True otherwise; ValueError for a
        future this executor did not return.
        """
        if getattr(future, "_pyexec_owner", lambda: None)() is not self:
            raise ValueError("that future was not returned by this DaskExecutor")
        if future.cancel():
            return True
        if future.done():
            return False
        state = self._client.sync(self._client.scheduler.pyexec_terminate, key=future._pyexec_key)
        return state in (_STARTED, _CANCELLED)

    def stats(self) -> PoolStats:
        """A snapshot of the counters (workers_alive asks the scheduler: one round trip)."""
        with self._lock:
            futures = [r.future for r in self._records.values()]
            submitted, completed = self._submitted, self._completed
            failed, replaced = self._failed, self._replaced
        running = sum(1 for f in futures if f.running())
        pending = sum(1 for f in futures if not f.running() and not f.done())
        try:
            alive = len(self._client.scheduler_info(n_workers=-1)["workers"])
        except Exception:
            alive = 0
        return PoolStats(submitted, completed, failed, pending, running, alive, replaced)

    # ---- internals -------------------------------------------------------------------------

    def _check_accepting(self) -> None:
        """Raise, as pyexec's pool does, when no new call may be queued (self._lock held)."""
        if self._broken:
            raise BrokenProcessPool(self._broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _cancel_keys(self, keys: list[str]) -> list[bool]:
        """Ask the arbiter to cancel calls; release those it cancelled (they never run)."""
        if self._closed:
            return [True] * len(keys)  # the cluster is gone: nothing can start any more
        granted = self._client.sync(self._client.scheduler.pyexec_cancel, keys=keys)
        with self._lock:
            for key, ok in zip(keys, granted, strict=True):
                if ok:
                    if (record := self._records.pop(key, None)) is not None:
                        record.dfut.release()
                elif (record := self._records.get(key)) is not None:
                    _mark_running(record.future)  # it started: its "start" may still be on the way
        return granted

    def _cancel_futures(self, futures: list) -> None:
        """Cancel many futures with one round trip to the scheduler."""
        pending = [f for f in futures if not f.done() and not f.running()]
        if not pending:
            return
        granted = self._cancel_keys([f._pyexec_key for f in pending])
        for fut, ok in zip(pending, granted, strict=True):
            if ok:
                _cancel_and_notify(fut)

    def _collect(self) -> None:
        """The collector thread: turn the arbiter's events into settled futures."""
        events = self._events
        while True:
            batch = [events.get()]
            while True:
                try:
                    batch.append(events.get_nowait())
                except Empty:
                    break
            done: list[str] = []
            stop = False
            for event in batch:
                if event is None:
                    stop = True
                    continue
                msg = event[1]
                kind, key = msg[0], msg[1]
                if kind == "start":
                    record = self._records.get(key)
                    if record is not None:
                        _mark_running(record.future)
                elif kind == "done":
                    done.append(key)
                elif kind == "erred":
                    self._erred(key)
                elif kind == "died":
                    self._died(key, msg[2], msg[3])
            if done:
                self._gather(done)
            if stop:
                return

    def _gather(self, keys: list[str]) -> None:
        with self._lock:
            records = [r for k in keys if (r := self._records.get(k)) is not None]
        if not records:
            return
        try:
            outcomes = self._client.gather([r.dfut for r in records])
        except Exception:
            outcomes = []
            for r in records:  # one by one: which one failed, and the others' results
                try:
                    outcomes.append(r.dfut.result())
                except Exception as exc:
                    outcomes.append((_ERR, exc, ""))
        for record, outcome in zip(records, outcomes, strict=True):
            key = record.future._pyexec_key
            if outcome[0] == _OK:
                self._settle(key, value=outcome[1])
            elif outcome[0] == _ERR:
                exc, tb = outcome[1], outcome[2]
                if tb:
                    exc.__cause__ = _RemoteTraceback(tb)
                if isinstance(exc, WorkerDied) and self._on_crash == "break":
                    self._break(f"{_BROKEN_PREFIX}: call {key}: {exc}.", cause=exc)
                    continue
                if isinstance(exc, TaskTimeout | TaskTerminated | WorkerDied):
                    self._replaced += 1
                self._settle(key, exc=exc)
            else:  # refused: it ran once, and its result was lost with its worker
                self._lost(key, "its result was lost with its Dask worker", None)

    def _erred(self, key: str) -> None:
        """Dask itself failed the task (e.g. it could not unpickle the call on the worker)."""
        record = self._records.get(key)
        if record is None:
            return
        try:
            exc = record.dfut.exception()
            tb = record.dfut.traceback()
        except Exception as err:
            exc, tb = err, None
        if tb is not None:
            import traceback

            exc.__cause__ = _RemoteTraceback("".join(traceback.format_tb(tb)))
        self._settle(key, exc=exc)

    def _died(self, key: str, worker: str, pid: int | None) -> None:
        self._replaced += 1
        self._lost(key, f"Dask worker {worker} (pid {pid}) died while running it", pid)

    def _lost(self, key: str, why: str, pid: int | None) -> None:
        if key not in self._records:
            return
        if self._on_crash == "break":
            self._break(f"{_BROKEN_PREFIX}: call {key}: {why}.")
        else:
            self._settle(key, exc=WorkerDied(f"call {key}: {why}", pid, None))

    def _settle(self, key: str, value: Any = None, exc: BaseException | None = None) -> None:
        with self._lock:
            record = self._records.pop(key, None)
            if record is None:
                return
            if exc is None:
                self._completed += 1
            else:
                self._failed += 1
        record.dfut.release()
        future = record.future
        _mark_running(future)
        try:
            if exc is None:
                future.set_result(value)
            else:
                future.set_exception(exc)
        except InvalidStateError:
            pass  # cancelled just before: its arbiter said yes first

    def _break(self, msg: str, cause: BaseException | None = None) -> None:
        """Every unsettled call fails with BrokenProcessPool; running ones are stopped."""
        with self._lock:
            if self._broken is None:
                self._broken = msg
            records = list(self._records.items())
            self._records.clear()
            self._failed += len(records)
        for key, record in records:
            if record.future.running():
                try:
                    self._client.sync(self._client.scheduler.pyexec_terminate, key=key)
                except Exception:
                    pass  # the scheduler is gone: nothing runs there any more
            record.dfut.release()
            err = BrokenProcessPool(msg)
            err.__cause__ = cause
            try:
                record.future.set_exception(err)
            except InvalidStateError:
                pass  # cancelled meanwhile


class DaskExecutor(Executor):
    """pyexec's executor surface on a Dask cluster.

    With neither ``address`` nor ``client``, starts a LocalCluster on 127.0.0.1 (``n_workers``
    worker processes, one thread each, no dashboard) and closes it at shutdown. With an
    ``address`` it connects its own Client (closed at shutdown, the cluster left alone); with a
    ``client`` it uses that one and closes nothing. Dropped without ``shutdown()``, it shuts
    down as the standard library's executor does: no new calls, the pending ones finish, then
    what it started is closed.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        client: distributed.Client | None = None,
        n_workers: int | None = None,
        on_crash: str = "break",
        task_timeout: float | None = None,
    ) -> None:
        self._pool = pool = _DaskPool(
            address, client=client, n_workers=n_workers, on_crash=on_crash,
            task_timeout=task_timeout,
        )  # fmt: skip
        # Not at interpreter exit: distributed closes its clusters then itself.
        weakref.finalize(self, pool.shutdown, wait=False).atexit = False

    @property
    def client(self) -> distributed.Client:
        """The Dask client this executor submits through."""
        return self._pool.client

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> DaskFuture:
        """Schedule fn(*args, **kwargs) on the cluster; return its Future."""
        return self._pool.submit(fn, *args, **kwargs)

    def schedule(
        self,
        fn: Callable[..., Any],
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        timeout: float | None = None,
    ) -> DaskFuture:
        """Like submit, with a per-call deadline in seconds from its start (default: task_timeout).

        A call still running then is killed; its future raises ``pyexec.TaskTimeout``.
        """
        return self._pool.schedule(fn, args, kwargs, timeout=timeout)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        unordered: bool = False,
    ) -> Iterator[Any]:
        """map(fn, *iterables) on the cluster; a chunk of ``chunksize`` items is one Dask task.

        ``buffersize`` bounds the chunks in flight (the input is then read lazily);
        ``unordered=True`` yields chunks as they finish; ``timeout`` counts from this call.
        """
        return self._pool.map(
            fn, *iterables, timeout=timeout, chunksize=chunksize, buffersize=buffersize,
            unordered=unordered,
        )  # fmt: skip

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; cancel what has not started (cancel_futures); close what we started."""
        self._pool.shutdown(wait, cancel_futures=cancel_futures)

    def terminate_task(self, future: _StdFuture) -> bool:
        """Stop one call: a pending one is cancelled, a running one killed (``TaskTerminated``)."""
        return self._pool.terminate_task(future)

    def stats(self) -> PoolStats:
        """A snapshot of the counters (workers_alive asks the scheduler: one round trip)."""
        return self._pool.stats()


def _cancel_and_notify(future: _StdFuture) -> bool:
    """Cancel a future the arbiter cancelled, and wake wait() and as_completed() at once.

    (The standard library's executors do the second step when they dequeue the call;
    here nothing dequeues it: the call will never run.)
    """
    if not _StdFuture.cancel(future):
        return False
    future.set_running_or_notify_cancel()
    return True


def _mark_running(future: _StdFuture) -> None:
    """PENDING -> RUNNING; nothing if it is already running or done."""
    with future._condition:
        if future._state == _base.PENDING:
            future._state = _base.RUNNING
