"""Lifecycle as the stdlib has it (issue 2): shutdown, context manager, a dropped
executor, interpreter exit after shutdown(wait=False), worker recycling with
max_tasks_per_child, and workers that die with a parent killed by SIGKILL."""

from __future__ import annotations

import collections
import gc
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import psutil
import pytest
from api_funcs import (
    add,
    ident,
    raised,
    side_by_side,
    sleep_getpid,
    sleep_then,
    slow_probe,
    square_pid,
    start_probe,
    wait_gone,
    watch_exit,
)

import pyexec
from pyexec import _zygote
from pyexec._zygote import PARENT_FORKS_FIRST

SCRIPTS = Path(__file__).parent / "scripts"


# ---- 6. shutdown ---------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_submit_after_shutdown_and_context_manager(ctx, method):
    """The context manager returns the executor and shuts it down; submit and map
    afterwards raise the stdlib's RuntimeError; a second shutdown is harmless."""

    def scenario(cls):
        with cls(2, mp_context=ctx) as ex:
            entered = isinstance(ex, cls)
            value = ex.submit(add, 1, 2).result(30)
        after = raised(lambda: ex.submit(ident, 1))
        in_map = raised(lambda: list(ex.map(ident, [1])))
        again = raised(lambda: (ex.shutdown(), ex.shutdown(wait=False)))
        unused = cls(1, mp_context=ctx)
        unused.shutdown()
        unused_after = raised(lambda: unused.submit(ident, 1))
        return entered, value, after, in_map, again, unused_after

    got = side_by_side(scenario, stdlib=method == "fork")
    shut = ("err", RuntimeError, ("cannot schedule new futures after shutdown",))
    assert (
        got["pyexec"]
        == got.get("stdlib", got["pyexec"])
        == (True, 3, shut, shut, ("ok", (None, None)), shut)
    )


@pytest.mark.timeout(30)
def test_shutdown_cancel_futures(ctx, method):
    """shutdown(cancel_futures=True) cancels what has not started; what runs finishes."""

    def scenario(cls):
        ex = cls(1, mp_context=ctx)
        fs = [ex.submit(sleep_then, 0.3, i) for i in range(6)]
        deadline = time.monotonic() + 30
        while not fs[0].running() and time.monotonic() < deadline:
            time.sleep(0.01)
        ex.shutdown(wait=True, cancel_futures=True)
        return fs[0].result(), fs[-1].cancelled(), all(f.done() for f in fs)

    got = side_by_side(scenario, stdlib=method == "fork")
    assert got["pyexec"] == got.get("stdlib", got["pyexec"]) == (0, True, True)


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12's fork-with-threads note
def test_a_new_fork_pool_leaves_other_pools_working(ctx):
    """A fork pool forks its zygote with the other pools' manager threads
    parked; a pool of any start method goes on afterwards with the same
    workers. (A spawn pool's workers die with the thread that started them:
    parking its manager once killed them all.)"""
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as first:
        before = set(first.map(sleep_getpid, [0.1] * 4))
        with pyexec.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as new:
            assert new.submit(add, 1, 2).result(timeout=30) == 3
        after = set(first.map(sleep_getpid, [0.1] * 4))
        assert first.submit(add, 2, 3).result(timeout=30) == 5
        assert after <= before and first.stats().workers_replaced == 0


@pytest.mark.timeout(30)
def test_nothing_outlives_the_executor(ctx):
    """Right after shutdown() returns, no worker, zygote, thread or fd of the pool is left."""
    me = psutil.Process()
    children = {p.pid for p in me.children(recursive=True)}
    threads = set(threading.enumerate())
    fds = set(os.listdir("/proc/self/fd"))
    ex = pyexec.ProcessPoolExecutor(2, mp_context=ctx)
    workers = set(ex.map(sleep_getpid, [0.1] * 4))
    during = {p.pid for p in me.children(recursive=True)} - children
    assert workers and workers <= during
    assert [t for t in threading.enumerate() if t not in threads]  # the manager runs
    ex.shutdown(wait=True)
    assert [t.name for t in threading.enumerate() if t not in threads and t.is_alive()] == []
    assert sorted(set(os.listdir("/proc/self/fd")) - fds) == []
    left = {
        p.pid
        for p in me.children(recursive=True)
        if p.pid not in children and p.status() != psutil.STATUS_ZOMBIE
    }
    assert left == set()
    assert wait_gone(workers, 0.0) == []


@pytest.mark.timeout(60)
def test_a_shut_down_pool_is_freed_without_the_garbage_collector(ctx):
    """After shutdown() and del, reference counting alone frees the pool's state. A
    reference cycle kept it, and the initargs with it, until the collector ran: CPython's
    test of a failing initializer then counted a Queue's semaphore passed in initargs as
    leaked."""
    data = bytes(3 << 20)  # a big bytes result: the copier threads run too
    gc.disable()
    try:
        ex = pyexec.ProcessPoolExecutor(2, mp_context=ctx)
        assert ex.submit(ident, data).result(timeout=30) == data
        ex.shutdown()
        manager = weakref.ref(ex._mgr)
        del ex
        assert manager() is None
    finally:
        gc.enable()


@pytest.mark.timeout(30)
def test_dropped_executor_stops_its_workers(ctx):
    """An executor dropped without shutdown (del + gc) stops its workers and thread."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    threads = set(threading.enumerate())
    ex = pyexec.ProcessPoolExecutor(2, mp_context=ctx)
    assert ex.submit(ident, 1).result(30) == 1
    workers = set(ex.map(sleep_getpid, [0.1] * 4))
    mine = {p.pid for p in me.children(recursive=True)} - before  # workers, zygote
    assert workers and mine
    del ex
    gc.collect()
    assert wait_gone(workers | mine, 5.0) == []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
        if not extra:
            break
        time.sleep(0.02)
    assert extra == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "method, impl",
    # The stdlib reference runs under one start method, to keep the suite fast.
    [("fork", "pyexec"), ("forkserver", "pyexec"), ("spawn", "pyexec"), ("fork", "stdlib")],
)
def test_shutdown_wait_false_then_interpreter_exit(method, impl, tmp_path):
    """shutdown(wait=False) returns at once; the calls still run to the end and the
    interpreter exits 0 once they are done, as with the stdlib."""
    seconds = 0.4
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "nowait.py"), impl, method, str(tmp_path), str(seconds)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # 4 calls of 0.4 s on 2 workers: waiting would take at least 0.8 s.
    assert report["shutdown_seconds"] < 0.4, report
    assert report["done_at_return"] < 4, report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1", "2", "3"]


@pytest.mark.timeout(60)
def test_shutdown_lets_workers_exit_on_their_own(method, tmp_path):
    """shutdown(): every worker exits by itself (finalizers run), none is signalled,
    and the pool is not marked broken, round after round."""
    ctx = multiprocessing.get_context(method)
    for i in range(8):
        scratch = tmp_path / str(i)
        scratch.mkdir()
        ex = pyexec.ProcessPoolExecutor(2, mp_context=ctx)
        pid = ex.submit(watch_exit, str(scratch)).result(30)
        ex.shutdown()
        assert sorted(p.name for p in scratch.iterdir()) == [f"bye-{pid}"], i
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(ident, 1)  # shut down, not broken


# ---- 8. max_tasks_per_child -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_max_tasks_per_child_replaces_workers(ctx):
    """max_tasks_per_child=2 under every start method: right results, each worker runs at
    most 2 calls, so 10 calls on 1 worker see at least 5 pids."""
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=2) as ex:
        out = list(ex.map(square_pid, range(10)))
        more = [ex.submit(square_pid, i).result(30) for i in range(10, 14)]
    assert [sq for sq, _ in out + more] == [i * i for i in range(14)]
    per_pid = collections.Counter(pid for _, pid in out + more)
    assert max(per_pid.values()) <= 2, per_pid
    assert len(per_pid) >= 7, per_pid


# ---- 10. the parent killed by SIGKILL ----------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["idle", "busy"])
def test_workers_die_with_a_killed_parent(method, mode, tmp_path):
    """SIGKILL the parent: its workers (and the fork zygote) are gone within ~3 s,
    idle or busy in a long time.sleep."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "parent_killed.py"), method, mode, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        info = json.loads(line)
        workers, parents = info["workers"], info["worker_parents"]
        pids = sorted(set(workers) | set(info["descendants"]))
        assert len(workers) == 2
        if method == "fork":
            # The zygote, a child of the parent, forks the workers but the first,
            # which the parent forks itself where the zygote can hold its pidfd.
            zygotes = [p for p in parents if p != proc.pid]
            assert len(zygotes) == 1 and zygotes[0] in info["descendants"], info
            assert (proc.pid in parents) == PARENT_FORKS_FIRST, info
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        left = wait_gone(pids, 3.0)
        assert left == [], {
            "left": {p: _describe(p) for p in left},
            "workers": workers,
            "worker_parents": parents,
        }
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in wait_gone(pids, 0.0):  # do not leak what this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.stdout.close()
        proc.stderr.close()


def _describe(pid: int) -> str:
    try:
        p = psutil.Process(pid)
        return " ".join(p.cmdline())[:120] + f" (status {p.status()})"
    except psutil.Error:
        return "gone"


@pytest.mark.timeout(60)
def test_pool_started_from_a_thread_that_ends(method):
    """The first submit comes from a thread that then ends: the worker lives on.

    Under fork that thread forks the first worker itself (Linux), and a
    parent-death signal fires when the thread that forked the process ends;
    so that worker must not ask for one (the zygote watches it instead).
    """
    ex = pyexec.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method))
    try:
        first: list[int] = []
        t = threading.Thread(target=lambda: first.append(ex.submit(os.getpid).result(30)))
        t.start()
        t.join(40)
        assert first, "the call from the thread did not finish"
        task = Path(f"/proc/self/task/{t.native_id}")
        deadline = time.monotonic() + 5
        while task.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # a death signal, had it been asked for, is delivered by now
        assert ex.submit(os.getpid).result(30) == first[0]
    finally:
        ex.shutdown()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("parent_first", [True, False], ids=["parent-forks-first", "zygote-only"])
def test_fork_first_worker_and_the_rest(monkeypatch, parent_first):
    """fork: the first worker is the parent's own child where the zygote can hold
    its pidfd, else the zygote's; every later one is the zygote's. Both work."""
    if parent_first and not PARENT_FORKS_FIRST:
        pytest.skip("no pidfd here (macOS, or Linux before 5.3): the zygote forks every worker")
    monkeypatch.setattr(_zygote, "PARENT_FORKS_FIRST", parent_first)
    with pyexec.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
        first_pid, first_parent, _ = ex.submit(start_probe).result(30)
        probes = {first_pid: first_parent}
        deadline = time.monotonic() + 30
        while len(probes) < 2 and time.monotonic() < deadline:
            fs = [ex.submit(slow_probe, 0.1) for _ in range(4)]
            probes.update((pid, ppid) for pid, ppid, _ in (f.result(30) for f in fs))
    assert len(probes) == 2, probes
    assert (first_parent == os.getpid()) == parent_first, probes
    (other_parent,) = [ppid for pid, ppid in probes.items() if pid != first_pid]
    assert other_parent != os.getpid(), probes


@pytest.mark.timeout(60)
def test_fork_failure_at_start_leaves_nothing(monkeypatch):
    """fork: the zygote's fork fails (EAGAIN) after the first worker's: submit
    raises it, nothing is left open or running (the leak check around every test),
    and the next submit starts the pool. (When the first fork fails, inside
    multiprocessing's Popen, that Popen leaves its own two pipes open, as it
    does under concurrent.futures.)"""
    real_fork = os.fork
    calls = []
    failing = 2 if PARENT_FORKS_FIRST else 1

    def fork() -> int:
        calls.append(1)
        if len(calls) == failing:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_fork()

    ex = pyexec.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
    try:
        monkeypatch.setattr(os, "fork", fork)
        with pytest.raises(BlockingIOError):
            ex.submit(ident, 1)
        monkeypatch.setattr(os, "fork", real_fork)
        assert ex.submit(ident, 2).result(30) == 2
    finally:
        ex.shutdown()
