"""pyexec.dask.DaskExecutor on loopback: a shared LocalCluster, an own one, an external cluster.

distributed is a test dependency (the ``test`` extra installs it): if it is missing, these
tests fail at import instead of being skipped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, as_completed, wait
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any

import dask_funcs as df
import psutil
import pytest
from conftest import _segments

import pyexec

TESTS = os.path.dirname(os.path.abspath(__file__))

# Imported by _import_dask when this module's first test runs, not at collection:
# importing distributed registers tblib's reducers for every exception class in
# copyreg (237 of them here), which changes how exceptions pickle in this process
# and in the workers it forks; other modules' tests compare that with the standard
# library. conftest runs this module's tests after all the others.
distributed: Any = None
DaskExecutor: Any = None


@pytest.fixture(scope="module", autouse=True)
def _import_dask():
    """distributed and pyexec.dask, at the first test here (an ImportError fails it)."""
    global distributed, DaskExecutor
    import distributed as dist

    from pyexec.dask import DaskExecutor as executor

    distributed, DaskExecutor = dist, executor


def _until(cond, limit: float = 60.0, what: str = "condition") -> None:
    """Poll cond() until true; fail the test after limit seconds."""
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module", autouse=True)
def _dask_globals():
    """Start distributed's process-wide offload thread (it lives as long as the process)."""
    from distributed.utils import _offload_executor

    _offload_executor.submit(int).result()


@pytest.fixture(scope="module")
def client():
    """One LocalCluster (2 worker processes, one thread each) for the whole module."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    c = distributed.Client(cluster, set_as_default=False)
    _LOCAL_CLUSTERS.append(cluster)
    # Warm up: plugins, pools in both workers, the client's threads, before any leak baseline.
    with DaskExecutor(client=c) as ex:
        assert sorted(ex.map(df.square, range(8))) == [x * x for x in range(8)]
    yield c
    c.close()
    cluster.close()
    _LOCAL_CLUSTERS.clear()


def _nonsocket_fds() -> set[int]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own fd)
        if not target.startswith("socket:"):
            out.add(int(fd))
    return out


def _foreign_children(me: psutil.Process, cluster_roots: set[int]) -> set[int]:
    """Live descendants of this process that are not one of the shared cluster's processes."""
    out = set()
    for p in me.children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.pid in cluster_roots or cluster_roots & {a.pid for a in p.parents()}:
                continue
        except psutil.NoSuchProcess:
            continue
        out.add(p.pid)
    return out


@pytest.fixture(autouse=True)
def no_leaks(request):
    """This module's leak check (it replaces conftest's): no process, thread, file or shared
    memory segment left.

    The shared LocalCluster's scheduler runs in this process and its nannies restart killed
    workers, and Dask pools its TCP connections (sockets come and go with its connection
    pool, both ways), so: children are checked outside the cluster's own process trees,
    and fds other than sockets (pipes, files, eventfds).
    """
    me = psutil.Process()
    roots = _cluster_roots()
    children, threads = _foreign_children(me, roots), set(threading.enumerate())
    fds, segments = _nonsocket_fds(), _segments()
    yield
    import gc

    gc.collect()
    end = time.monotonic() + 15
    while True:
        left = _foreign_children(me, roots | _cluster_roots()) - children
        extra = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
        opened = _nonsocket_fds() - fds
        shm = _segments() - segments
        if not (left or extra or opened or shm) or time.monotonic() > end:
            break
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"test left child processes behind: {sorted(left)}"
    assert not extra, f"test left threads behind: {extra}"
    assert not opened, f"test left fds open: {sorted(opened)}"
    assert not shm, f"test left shared memory in /dev/shm: {sorted(shm)}"


_CLUSTER_ROOTS: set[int] = set()  # the external cluster's processes
_LOCAL_CLUSTERS: list = []  # the shared LocalCluster (its nannies restart workers)


def _cluster_roots() -> set[int]:
    """The shared clusters' processes now: their descendants are not a test's leaks."""
    pids = set(_CLUSTER_ROOTS)
    for cluster in _LOCAL_CLUSTERS:
        pids.update(n.pid for n in list(cluster.workers.values()) if n.pid)
    return pids


@pytest.fixture
def ex(client):
    """A DaskExecutor on the shared cluster (it closes nothing of the cluster)."""
    with DaskExecutor(client=client) as e:
        yield e


# ---- packaging -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_import_pyexec_does_not_import_dask():
    code = (
        "import sys, pyexec\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]\n"
        "assert not bad, bad\n"
        "assert 'pyexec.dask' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=50)


@pytest.mark.timeout(60)
def test_import_without_distributed_names_the_extra():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["distributed"] = None  # as if it were not installed
        try:
            import pyexec.dask
        except ImportError as e:
            assert "pyexec[dask]" in str(e), str(e)
            print("ok")
        else:
            raise SystemExit("imported")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=50, capture_output=True, text=True
    )
    assert out.stdout.strip() == "ok"


@pytest.mark.timeout(60)
def test_signatures_are_the_pools():
    """The constructor and the methods, parameter for parameter (names, kinds, defaults)."""
    import inspect

    def shape(fn) -> str:
        sig = inspect.signature(fn)
        return str(sig.replace(return_annotation=inspect.Signature.empty,
                               parameters=[p.replace(annotation=p.empty)
                                           for p in sig.parameters.values()]))  # fmt: skip

    assert shape(DaskExecutor) == (
        "(address=None, *, client=None, n_workers=None, on_crash='break', task_timeout=None)"
    )
    assert shape(DaskExecutor.submit) == "(self, fn, /, *args, **kwargs)"
    assert shape(DaskExecutor.schedule) == "(self, fn, args=(), kwargs=None, *, timeout=None)"
    assert shape(DaskExecutor.map) == (
        "(self, fn, *iterables, timeout=None, chunksize=1, buffersize=None, unordered=False)"
    )
    assert shape(DaskExecutor.shutdown) == "(self, wait=True, *, cancel_futures=False)"
    assert shape(DaskExecutor.terminate_task) == "(self, future)"
    assert shape(DaskExecutor.stats) == "(self)"
    assert hasattr(DaskExecutor, "__enter__") and hasattr(DaskExecutor, "__exit__")


# ---- the executor surface ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_submit_kwargs_reach_fn_intact(ex):
    # Every keyword Client.submit takes as its own: each must reach fn, none steer Dask.
    kwargs = {
        "key": "k",
        "priority": 7,
        "retries": 3,
        "fifo_timeout": "1s",
        "pure": True,
        "workers": ["tcp://127.0.0.1:1"],  # as Dask's: a worker that does not exist (hangs)
        "resources": {"GPU": 1},  # as Dask's: a resource no worker has (hangs)
        "allow_other_workers": False,
        "actor": True,
        "actors": True,
    }
    assert ex.submit(df.echo, 1, 2, **kwargs).result(30) == ((1, 2), kwargs)
    assert ex.schedule(df.echo, (3,), {"key": None}).result(30) == ((3,), {"key": None})


@pytest.mark.timeout(60)
def test_identical_calls_each_run(ex, tmp_path):
    values = list(ex.map(df.rand, [0, 0, 0]))
    assert len(set(values)) == 3
    path = str(tmp_path / "runs")
    futures = [ex.submit(df.run_logged, path, 5) for _ in range(4)]
    assert [f.result(30) for f in futures] == [5] * 4
    assert df.logged(path) == ["5"] * 4


@pytest.mark.timeout(60)
def test_exception_type_args_and_remote_traceback(ex):
    fut = ex.submit(df.fail, 1, "two")
    with pytest.raises(ValueError) as info:
        fut.result(30)
    assert info.value.args == ("bad", 1, "two")
    cause = info.value.__cause__
    assert type(cause).__name__ == "_RemoteTraceback"
    assert "dask_funcs.py" in str(cause) and "in fail" in str(cause)


@pytest.mark.timeout(60)
def test_unpicklable_call_fails_its_future_only(ex):
    import threading

    fut = ex.submit(df.echo, threading.Lock())
    with pytest.raises(TypeError):
        fut.result(5)
    assert ex.submit(df.square, 3).result(30) == 9


@pytest.mark.timeout(60)
def test_futures_are_concurrent_futures(ex):
    import concurrent.futures

    futures = [ex.submit(df.square, i) for i in range(10)]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    _, not_done = wait(futures, timeout=30)
    assert not not_done
    assert sorted(f.result() for f in as_completed(futures, timeout=30)) == [
        i * i for i in range(10)
    ]
    one = ex.submit(df.square, 4)
    got = []
    one.add_done_callback(lambda f: got.append(f.result()))
    wait([one], timeout=30)
    _until(lambda: got == [16], 10, "the done-callback")

    async def main():
        a = await asyncio.wrap_future(ex.submit(df.square, 5))
        b = await asyncio.get_running_loop().run_in_executor(ex, df.square, 6)
        return a, b

    assert asyncio.run(main()) == (25, 36)


@pytest.mark.timeout(90)
def test_map_chunks_iterators_and_order(ex):
    assert list(ex.map(df.square, range(20))) == [x * x for x in range(20)]
    assert list(ex.map(df.square, (x for x in range(50)), chunksize=7)) == [
        x * x for x in range(50)
    ]
    assert ex.stats().submitted == 20 + 8  # a Dask task per item (chunksize=1), per chunk of 7
    pairs = ex.map(df.echo, iter(range(5)), "abcde", chunksize=2)
    assert [a for a, _ in pairs] == [(i, c) for i, c in zip(range(5), "abcde", strict=True)]
    assert list(ex.map(df.square, [])) == []
    got = list(ex.map(df.square, range(30), chunksize=4, unordered=True))
    assert sorted(got) == [x * x for x in range(30)]
    with pytest.raises(ValueError):
        ex.map(df.square, range(3), chunksize=0)
    # A failing item raises at its place in the results, after those before it.
    it = ex.map(df.fail_at, range(6), [3] * 6, chunksize=2)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(ValueError):
        next(it)


@pytest.mark.timeout(90)
def test_map_buffersize_reads_lazily(ex):
    taken = []

    def source():
        for i in range(1000):
            taken.append(i)
            yield i

    results = ex.map(df.square, source(), chunksize=10, buffersize=2)
    assert len(taken) <= 20 + 1  # two chunks in flight, nothing more read
    first = [next(results) for _ in range(10)]
    assert first == [x * x for x in range(10)]
    assert len(taken) <= 30 + 1
    assert sum(1 for _ in results) == 990


@pytest.mark.timeout(90)
def test_map_timeout_cancels_the_rest(ex, tmp_path):
    gate = str(tmp_path / "gate")
    path = str(tmp_path / "log")
    results = ex.map(df.blocked, [path] * 6, range(6), [gate] * 6, timeout=1.0)
    with pytest.raises(FuturesTimeoutError):  # TimeoutError itself from Python 3.11 on
        next(results)
    open(gate, "w").close()
    time.sleep(1.0)
    ran = df.logged(path)
    assert len(ran) < 6  # the ones not started were cancelled, not run
    assert ex.submit(df.square, 2).result(30) == 4


# ---- RUNNING and cancel --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_running_state_and_cancel(ex, tmp_path):
    path, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    running = [ex.submit(df.blocked, path, i, gate) for i in range(2)]
    _until(lambda: all(f.running() for f in running), 60, "both calls RUNNING")
    # RUNNING: the worker was granted the start; fn's first line follows in milliseconds.
    _until(lambda: sorted(df.logged(path)) == ["0", "1"], 60, "both calls to start")
    pending = [ex.submit(df.blocked, path, i, gate) for i in range(2, 8)]
    time.sleep(0.5)
    assert not any(f.running() for f in pending)
    assert [f.cancel() for f in running] == [False, False]
    assert all(f.running() for f in running)
    assert [f.cancel() for f in pending[:3]] == [True] * 3
    assert all(f.cancelled() for f in pending[:3])
    open(gate, "w").close()
    assert [f.result(60) for f in running] == [0, 1]
    assert [f.result(60) for f in pending[3:]] == [5, 6, 7]
    time.sleep(0.5)
    assert sorted(df.logged(path)) == ["0", "1", "5", "6", "7"]  # 2, 3, 4 never ran


@pytest.mark.timeout(120)
def test_cancel_races_start_and_never_lies(ex, tmp_path):
    """Cancel each call a moment after submitting it: a cancelled call never ran, others once."""
    path = str(tmp_path / "log")
    futures = []
    for i in range(120):
        futures.append(ex.submit(df.run_logged, path, i, 0.005))
        if i % 3 == 0:
            time.sleep(0.002 * (i % 7))
        futures[i // 2].cancel()  # some still queued, some just starting, some done
    wait(futures, timeout=90)
    time.sleep(0.5)
    ran = df.logged(path)
    assert len(ran) == len(set(ran))  # nothing ran twice
    assert all(f.done() for f in futures)
    cancelled = {str(i) for i, f in enumerate(futures) if f.cancelled()}
    done = {str(i) for i, f in enumerate(futures) if not f.cancelled()}
    assert cancelled and done
    assert not cancelled & set(ran)
    assert done == set(ran)


@pytest.mark.timeout(120)
def test_shutdown_cancel_futures_cancels_only_what_has_not_started(client, tmp_path):
    path, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    ex = DaskExecutor(client=client)
    running = [ex.submit(df.blocked, path, i, gate) for i in range(2)]
    _until(lambda: all(f.running() for f in running), 60, "both calls RUNNING")
    pending = [ex.submit(df.blocked, path, i, gate) for i in range(2, 6)]
    import threading

    def open_gate():
        time.sleep(1.0)
        open(gate, "w").close()

    t = threading.Thread(target=open_gate)
    t.start()
    ex.shutdown(wait=True, cancel_futures=True)
    t.join()
    assert [f.result(0) for f in running] == [0, 1]
    assert all(f.cancelled() for f in pending)
    with pytest.raises(RuntimeError):
        ex.submit(df.square, 1)
    time.sleep(0.5)
    assert sorted(df.logged(path)) == ["0", "1"]


# ---- deadlines, terminate_task -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_deadlines_stop_the_call_and_capacity_comes_back(client, tmp_path):
    path = str(tmp_path / "log")
    with DaskExecutor(client=client, task_timeout=30) as ex:
        slow = ex.schedule(time.sleep, (60,), timeout=0.5)
        other = ex.submit(df.run_logged, path, 7, 2.0)  # runs on the other worker meanwhile
        with pytest.raises(pyexec.TaskTimeout, match=r"deadline of 0.5 s on Dask worker tcp://"):
            slow.result(60)
        stopped = time.monotonic()
        assert other.result(60) == 7  # unaffected by the kill next to it
        folder = tmp_path / "meet"
        folder.mkdir()
        pids = [ex.submit(df.meet, str(folder), 2, i) for i in range(2)]
        assert len({f.result(60) for f in pids}) == 2  # both workers free again...
        assert time.monotonic() - stopped < 10  # ...within seconds, not after the 60 s sleep
        assert df.logged(path) == ["7"]
    with DaskExecutor(client=client, task_timeout=0.5) as ex:
        with pytest.raises(pyexec.TaskTimeout):
            ex.submit(time.sleep, 60).result(60)
        with pytest.raises(pyexec.TaskTimeout):
            list(ex.map(time.sleep, [0, 60]))
        assert ex.submit(df.square, 3).result(60) == 9
        assert ex.stats().workers_replaced >= 2


@pytest.mark.timeout(120)
def test_terminate_task(ex, tmp_path):
    path, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    running = ex.submit(df.blocked, path, 0, gate + "-never")  # holds its worker unless killed
    other = ex.submit(df.blocked, path, 1, gate)
    _until(lambda: running.running() and other.running(), 60, "RUNNING")
    _until(lambda: sorted(df.logged(path)) == ["0", "1"], 60, "both calls to start")
    pending = ex.submit(df.blocked, path, 2, gate)
    assert ex.terminate_task(pending) is True  # both workers are busy: it has not started
    assert pending.cancelled()
    assert ex.terminate_task(running) is True
    with pytest.raises(pyexec.TaskTerminated):
        running.result(60)
    stopped = time.monotonic()
    open(gate, "w").close()
    assert other.result(60) == 1  # unaffected
    assert ex.terminate_task(other) is False
    with pytest.raises(ValueError):
        ex.terminate_task(Future())
    folder = tmp_path / "meet"
    folder.mkdir()
    assert len({f.result(60) for f in [ex.submit(df.meet, str(folder), 2, i) for i in (0, 1)]}) == 2
    assert time.monotonic() - stopped < 10  # both workers free within seconds
    time.sleep(0.3)
    assert sorted(df.logged(path)) == ["0", "1"]


# ---- crashes -------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_on_crash_restart_fails_only_the_crashed_call(client, tmp_path):
    path = str(tmp_path / "log")
    with DaskExecutor(client=client, on_crash="restart") as ex:
        futures = [ex.submit(df.crash_after, path, i, 3, 0.2) for i in range(10)]
        wait(futures, timeout=90)
        for i, f in enumerate(futures):
            if i == 3:
                with pytest.raises(pyexec.WorkerDied, match="died with exit code 7") as info:
                    f.result(0)
                assert info.value.exitcode == 7 and info.value.pid > 0
            else:
                assert f.result(0) == i
        assert ex.submit(df.square, 5).result(60) == 25
    ran = df.logged(path)
    assert sorted(ran, key=int) == [str(i) for i in range(10)]  # each once, 3 included


@pytest.mark.timeout(120)
def test_on_crash_break_breaks_the_executor(client, tmp_path):
    path, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    ex = DaskExecutor(client=client)
    try:
        other = ex.submit(df.blocked, path, 0, gate)
        _until(other.running, 60, "RUNNING")
        crash = ex.submit(df.crash_after, path, 1, 1, 0.0)
        pending = [ex.submit(df.blocked, path, i, gate) for i in range(2, 5)]
        for f in [crash, other, *pending]:
            with pytest.raises(pyexec.BrokenProcessPool):
                f.result(60)
        with pytest.raises(pyexec.BrokenProcessPool):
            ex.submit(df.square, 1)
    finally:
        open(gate, "w").close()
        ex.shutdown()
    ran = df.logged(path)
    assert len(ran) == len(set(ran))


@pytest.mark.timeout(120)
def test_dask_worker_death_fails_its_call_once(tmp_path):
    """SIGKILL the Dask worker itself: its call fails with WorkerDied and is never rerun.

    On a cluster of its own: the nanny's restart is that cluster's business, closed here.
    """
    path, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    with DaskExecutor(n_workers=2, on_crash="restart") as ex:
        client = ex.client
        victim = ex.submit(df.blocked, path, 0, gate)
        _until(victim.running, 60, "RUNNING")
        # RUNNING comes when the scheduler grants the start, a moment before fn's own
        # first line: wait for that line, or a loaded machine kills the worker before it.
        _until(lambda: df.logged(path) == ["0"], 60, "the call's first line")
        worker = next(w for w, keys in client.processing().items() if victim._pyexec_key in keys)
        pid = client.run(os.getpid, workers=[worker])[worker]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(pyexec.WorkerDied) as info:
            victim.result(60)
        assert info.value.pid == pid
        open(gate, "w").close()
        assert ex.submit(df.square, 6).result(60) == 36
        _until(lambda: ex.stats().workers_alive == 2, 60, "the nanny's restart")
        time.sleep(1.0)  # time for a rerun to show, if there were one
        assert df.logged(path) == ["0"]
    with DaskExecutor(n_workers=1) as ex:  # on_crash="break": the executor breaks
        victim = ex.submit(df.blocked, path, 1, gate + "-never")
        pending = ex.submit(df.square, 2)
        _until(victim.running, 60, "RUNNING")
        os.kill(ex.client.run(os.getpid).popitem()[1], signal.SIGKILL)
        for f in (victim, pending):
            with pytest.raises(pyexec.BrokenProcessPool):
                f.result(60)
        with pytest.raises(pyexec.BrokenProcessPool):
            ex.submit(df.square, 1)


@pytest.mark.timeout(120)
def test_result_lost_before_it_was_fetched_is_not_recomputed(tmp_path, monkeypatch):
    """A call that finished on a Dask worker which dies before the client fetched its result:
    Dask recomputes the lost result elsewhere; the judge refuses that second run, and the call
    fails with WorkerDied (on_crash="restart") instead of running twice."""
    from pyexec import dask as pdask

    path = str(tmp_path / "log")
    held, release = threading.Event(), threading.Event()
    gather = pdask._DaskPool._gather

    def held_gather(self, keys):  # the collector fetches nothing until the test says so
        if not held.is_set():
            held.set()
            release.wait(60)
        return gather(self, keys)

    monkeypatch.setattr(pdask._DaskPool, "_gather", held_gather)
    with DaskExecutor(n_workers=2, on_crash="restart") as ex:
        client = ex.client
        fut = ex.submit(df.run_logged, path, 0)
        assert held.wait(60)  # it ran; its result waits on its worker
        key = fut._pyexec_key
        dfut = ex._pool._records[key].dfut
        (worker,) = client.who_has([dfut])[key]
        os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
        # Dask recomputes the key on a worker still alive (there, the judge refuses it).
        _until(lambda: set(client.who_has([dfut]).get(key, ())) - {worker}, 60, "the rerun")
        release.set()
        with pytest.raises(pyexec.WorkerDied, match="lost with its Dask worker"):
            fut.result(60)
        assert ex.submit(df.square, 4).result(60) == 16
    assert df.logged(path) == ["0"]


# ---- counters ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stats(client):
    with DaskExecutor(client=client) as ex:
        assert list(ex.map(df.square, range(10))) == [x * x for x in range(10)]
        with pytest.raises(ValueError):
            ex.submit(df.fail).result(30)
        s = ex.stats()
        assert isinstance(s, pyexec.PoolStats)
        assert (s.submitted, s.completed, s.failed, s.pending, s.running) == (11, 10, 1, 0, 0)
        assert s.workers_alive == 2


# ---- who starts and stops what -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_own_local_cluster_is_closed_at_shutdown():
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with DaskExecutor(n_workers=1) as ex:
        pid = ex.submit(os.getpid).result(60)
        assert pid in {p.pid for p in me.children(recursive=True)} - before
        addr = ex.client.scheduler.address
        assert addr.startswith("tcp://127.0.0.1:")
        assert list(ex.client.nthreads().values()) == [1]  # one process of one thread
        # No dashboard: the scheduler's plain HTTP routes only, on a loopback port.
        port = ex.client.scheduler_info()["services"]["dashboard"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30)
        assert info.value.code == 404
        info.value.close()
    _until(lambda: not ({p.pid for p in me.children(recursive=True)} - before), 30, "exit")


@pytest.mark.timeout(120)
def test_shutdown_without_wait_finishes_the_calls_then_closes(tmp_path):
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    ex = DaskExecutor(n_workers=1)
    futures = [ex.submit(df.run_logged, str(tmp_path / "log"), i, 1.0) for i in range(3)]
    ex.shutdown(wait=False)
    assert not futures[-1].done()  # 3 s of calls in a row: it did not wait for them
    with pytest.raises(RuntimeError):
        ex.submit(df.square, 1)
    assert [f.result(60) for f in futures] == [0, 1, 2]
    _until(lambda: not ({p.pid for p in me.children(recursive=True)} - before), 60, "exit")


@pytest.mark.timeout(120)
def test_dropped_executor_finishes_its_calls_then_closes(tmp_path):
    """An executor dropped without shutdown() is collected, as the standard library's is:
    its pending calls still finish, then the LocalCluster it started is closed."""
    import gc
    import weakref

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    ex = DaskExecutor(n_workers=1)
    futures = [ex.submit(df.run_logged, str(tmp_path / "log"), i, 1.0) for i in range(3)]
    dropped = weakref.ref(ex)
    del ex
    gc.collect()
    assert dropped() is None, gc.get_referrers(dropped())
    assert [f.result(60) for f in futures] == [0, 1, 2]
    _until(lambda: not ({p.pid for p in me.children(recursive=True)} - before), 60, "exit")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def external():
    """A `dask scheduler` and two `dask worker`s, started here on loopback, stopped by pid."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    dask = [sys.executable, "-m", "dask"]
    scheduler = [*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    worker = [*dask, "worker", address, "--host", "127.0.0.1", "--no-dashboard"]
    procs = [
        subprocess.Popen(
            scheduler,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [*worker, "--nthreads", "1", "--nworkers", "1"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with distributed.Client(address, set_as_default=False, timeout="60s") as c:
            c.wait_for_workers(2, timeout=60)
        _CLUSTER_ROOTS.update(p.pid for p in procs)
        yield address, procs
    finally:
        _CLUSTER_ROOTS.difference_update(p.pid for p in procs)
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


@pytest.mark.timeout(120)
def test_external_cluster_by_address(external, tmp_path):
    address, procs = external
    path, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    with DaskExecutor(address) as ex:
        assert ex.submit(df.echo, key=1, retries=2).result(60) == ((), {"key": 1, "retries": 2})
        assert list(ex.map(df.square, range(40), chunksize=6)) == [x * x for x in range(40)]
        running = [ex.submit(df.blocked, path, i, gate) for i in range(2)]
        _until(lambda: all(f.running() for f in running), 60, "RUNNING")
        _until(lambda: sorted(df.logged(path)) == ["0", "1"], 60, "both calls to start")
        pending = ex.submit(df.blocked, path, 9, gate)
        assert pending.cancel() is True
        assert ex.terminate_task(running[0]) is True
        with pytest.raises(pyexec.TaskTerminated):
            running[0].result(60)
        with pytest.raises(pyexec.TaskTimeout):
            ex.schedule(time.sleep, (60,), timeout=0.5).result(60)
        open(gate, "w").close()
        assert running[1].result(60) == 1
    assert all(p.poll() is None for p in procs)  # not ours to stop
    with distributed.Client(address, set_as_default=False) as c:
        assert len(c.scheduler_info()["workers"]) == 2
    assert sorted(df.logged(path)) == ["0", "1"]


@pytest.mark.timeout(120)
def test_external_client_is_left_open(external):
    address, procs = external
    with distributed.Client(address, set_as_default=False) as c:
        with DaskExecutor(client=c, on_crash="restart") as ex:
            assert ex.submit(df.square, 9).result(60) == 81
        assert c.status == "running"
        assert c.submit(df.square, 3).result(60) == 9
    assert all(p.poll() is None for p in procs)


def _readme_example() -> tuple[list[str], str]:
    """The README's "More than one machine" section: its sh commands and its Python example."""
    readme = open(os.path.join(TESTS, "..", "README.md")).read()
    section = readme.split("## More than one machine", 1)[1].split("\n## ", 1)[0]
    sh = section.split("```sh\n", 1)[1].split("```", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    return [line.rstrip(" &") for line in sh.splitlines() if line.strip()], code


@pytest.mark.timeout(120)
def test_readme_example_against_a_scheduler_address(external, tmp_path):
    """The README's example, run as a script against the external cluster's address."""
    address, procs = external
    commands, code = _readme_example()
    assert commands[0].startswith("dask scheduler --host 127.0.0.1 --port 8786")
    assert commands[1].startswith("dask worker tcp://127.0.0.1:8786 --nthreads 1")
    assert code.count("tcp://127.0.0.1:8786") == 1
    script = tmp_path / "example.py"
    script.write_text(code.replace("tcp://127.0.0.1:8786", address))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[:3] == [
        "(9, 'mine')",
        "998001",
        "stopped; the worker keeps its other calls and its data",
    ], out.stdout
    assert lines[3].startswith("PoolStats(submitted=12, completed=11, failed=1,"), lines[3]
    assert all(p.poll() is None for p in procs)  # the example closed only its own Client


@pytest.mark.timeout(60)
def test_arguments_are_checked(client):
    with pytest.raises(ValueError):
        DaskExecutor(client=client, on_crash="retry")
    with pytest.raises(ValueError):
        DaskExecutor(client=client, task_timeout=0)
    with pytest.raises(ValueError):
        DaskExecutor("tcp://127.0.0.1:1", client=client)
    with pytest.raises(ValueError):
        DaskExecutor(client=client, n_workers=2)
    with DaskExecutor(client=client) as ex:
        with pytest.raises(ValueError):
            ex.schedule(df.square, (1,), timeout=-1)


# ---- the bench rows ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_bench_dask_rows(tmp_path):
    """`python -m pyexec.bench --workloads dask-submit,dask-map`: both executors, sane figures."""
    import json
    import math

    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pyexec.bench", "--workloads", "dask-submit,dask-map",
         "--size", "0.05", "--repeats", "1", "--json", str(out), "--run-timeout", "60"],
        capture_output=True, text=True, timeout=110, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["meta"]["pools"] == ["pyexec.dask", "dask.get_executor"]
    for row in ("dask-submit", "dask-map"):
        for pool, res in doc["results"][row].items():
            assert res["errors"] == [], (row, pool)
            assert math.isfinite(res["median"]) and res["median"] > 0, (row, pool)
        assert doc["results"][row]["dask.get_executor"]["speedup"] == 1.0
    assert "dask-map (50), chunksize 100" in proc.stdout
