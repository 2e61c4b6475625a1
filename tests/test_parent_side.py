"""The parent side under stress: interrupts, shutdown from odd places, exit, user forks.

Scenarios that can end the parent process run in a subprocess (scripts in
tests/fault_scripts/), bounded by a timeout, and check that nothing is left
running afterwards.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time

import faults_funcs as ff
import pytest

import pyexec

# ---- KeyboardInterrupt -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_sigint_while_waiting_on_result(method):
    """SIGINT to a parent blocked in result(): it exits promptly, no worker left."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ff.SCRIPTS, "sigint_wait.py"), method],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "waiting", line + proc.stderr.read()
        family = ff.descendants(proc.pid)
        assert family, "the script has no workers"
        time.sleep(0.2)  # let it block in result()
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "not interrupted" not in out
    assert "KeyboardInterrupt" in err, err[-2000:]
    assert proc.returncode in (1, -signal.SIGINT), (proc.returncode, err[-2000:])
    # Its calls take 2 s; exit waits for them (as the stdlib does), not much more.
    assert took < 20, took
    left = ff.wait_gone(family, timeout=15)
    assert not left, f"processes outlived the interrupted parent: {left}"


# ---- shutdown from odd places ---------------------------------------------------


@pytest.mark.timeout(60)
def test_shutdown_from_done_callback(ctx):
    """shutdown(wait=True) in a done-callback (the manager thread) does not deadlock."""
    ex = pyexec.ProcessPoolExecutor(2, mp_context=ctx)
    called = threading.Event()

    def stop(_f) -> None:
        ex.shutdown(wait=True)
        called.set()

    first = ex.submit(ff.square, 3)
    later = [ex.submit(ff.sleep_then, 0.05, i) for i in range(6)]
    first.add_done_callback(stop)
    assert first.result(timeout=30) == 9
    assert called.wait(30), "shutdown() in a done-callback never returned"
    # Work accepted before the shutdown still completes.
    assert [f.result(timeout=30) for f in later] == list(range(6))
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(ff.square, 1)
    ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_shutdown_cancel_from_done_callback(ctx):
    """shutdown(cancel_futures=True) from a callback: pending calls cancelled, no deadlock."""
    ex = pyexec.ProcessPoolExecutor(1, mp_context=ctx)
    first = ex.submit(ff.sleep_then, 0.2, "first")
    rest = [ex.submit(ff.sleep_then, 0.2, i) for i in range(20)]
    first.add_done_callback(lambda _f: ex.shutdown(wait=True, cancel_futures=True))
    assert first.result(timeout=30) == "first"
    ex.shutdown(wait=True)
    assert all(f.done() for f in rest)
    assert any(f.cancelled() for f in rest), "nothing was cancelled"
    for i, f in enumerate(rest):
        assert f.cancelled() or f.result() == i


@pytest.mark.timeout(60)
def test_shutdown_from_another_thread_and_twice(ctx):
    """shutdown() from a second thread while the first waits on results; then again, twice."""
    ex = pyexec.ProcessPoolExecutor(2, mp_context=ctx)
    futs = [ex.submit(ff.sleep_then, 0.05, i) for i in range(10)]
    t = threading.Thread(target=ex.shutdown)
    t.start()
    assert [f.result(timeout=30) for f in futs] == list(range(10))
    t.join(30)
    assert not t.is_alive(), "shutdown() in another thread never returned"
    ex.shutdown()
    ex.shutdown(wait=False)
    ex.shutdown(wait=True, cancel_futures=True)


@pytest.mark.timeout(90)
def test_shutdown_races_submit_from_threads(ctx):
    """Threads submit while another shuts down: each submit succeeds (and completes) or raises."""
    ex = pyexec.ProcessPoolExecutor(2, mp_context=ctx)
    accepted: list[list] = [[] for _ in range(4)]
    refused = [0] * 4
    go = threading.Barrier(5)

    def submitter(k: int) -> None:
        go.wait()
        i = 0
        while True:
            try:
                accepted[k].append((i, ex.submit(ff.square, i)))
            except RuntimeError as err:
                assert "shutdown" in str(err), err
                refused[k] += 1
                return
            i += 1
            if i % 50 == 0:
                time.sleep(0.001)

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    go.wait()
    time.sleep(0.2)
    ex.shutdown(wait=True)
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert refused == [1, 1, 1, 1]
    total = 0
    for lst in accepted:
        for i, f in lst:
            assert f.done(), "an accepted call was left pending after shutdown(wait=True)"
            assert f.result() == i * i
            total += 1
    assert total > 0


@pytest.mark.timeout(60)
def test_executor_dropped_without_shutdown(ctx):
    """An executor dropped with work in flight finishes it and stops (checked by no_leaks)."""
    ex = pyexec.ProcessPoolExecutor(2, mp_context=ctx)
    futs = [ex.submit(ff.sleep_then, 0.05, i) for i in range(8)]
    del ex
    gc.collect()
    assert [f.result(timeout=30) for f in futs] == list(range(8))


# ---- interpreter exit, user fork ---------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["keep", "drop"])
def test_interpreter_exit_with_work_in_flight(method, how, tmp_path):
    """Falling off the end of the script with calls in flight: they all complete, exit 0."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ff.SCRIPTS, "exit_in_flight.py"), method, str(tmp_path), how],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "leaving" in proc.stdout
    done = sorted(p.name for p in tmp_path.iterdir())
    assert done == [f"done{i}" for i in range(6)], (done, proc.stderr[-3000:])


@pytest.mark.timeout(90)
def test_user_fork_while_pool_runs(method):
    """A user's os.fork(): the child cannot use the pool, exits cleanly; the parent is unharmed."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ff.SCRIPTS, "user_fork.py"), method],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, (out, proc.stderr[-3000:])
    assert "child used parent's pool" not in out, out
    refused = [ln for ln in out.splitlines() if ln.startswith("child refused")]
    assert len(refused) == 3, (out, proc.stderr[-3000:])
    for ln in refused:
        # The message says whose pool it is and what to do instead.
        assert "belongs to process" in ln and "forked child" in ln, ln
    assert "child shutdown returned" in out
    assert "child own pool 25" in out, (out, proc.stderr[-3000:])
    assert "child status 0" in out, out
    assert "parent results [0, 1, 2, 3, 4, 5]" in out, out
    assert "parent after [0, 1, 4, 9]" in out, out


@pytest.mark.timeout(90)
def test_user_fork_while_a_thread_holds_the_resource_tracker_lock():
    """The manager takes multiprocessing's resource tracker lock to start each spawn or
    forkserver worker. A user's fork at that moment left the child a held copy of the
    lock, and the child's first process start hung or raised ReentrantCallError."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ff.SCRIPTS, "fork_tracker_lock.py")],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert "child 0" in proc.stdout, (proc.stdout, proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.timeout(120)
def test_thread_switch_at_every_step_of_the_manager():
    """Bursts of submits with the GIL switched every 20 us, so the manager is
    interrupted anywhere (it once iterated the pending deque while submit
    appended to it, which broke the pool). Every call completes, in order."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(2e-5)
    try:
        with pyexec.ProcessPoolExecutor(2) as ex:
            for _ in range(5):
                futs = [ex.submit(ff.ident, i) for i in range(5000)]
                assert [f.result(timeout=60) for f in futs] == list(range(5000))
    finally:
        sys.setswitchinterval(old)


def test_results_before_a_malformed_frame_are_kept():
    """A worker's stream holds a good result, then garbage: the good result is
    handed out for settling (its future must not hang) before the error.
    A real (unstarted) pool's manager decodes it for a real lane."""
    import pickle

    from pyexec import _fds
    from pyexec import _frames as fr
    from pyexec._lanes import Lane
    from pyexec._manager import Manager
    from pyexec._tasks import Task

    ex = pyexec.ProcessPoolExecutor(1)
    mgr = Manager(ex)
    call_r, call_w = _fds.make_pipe(True, True)
    res_r, res_w = _fds.make_pipe(True, True)
    lane = Lane(0, call_w, res_r, -1, None)
    try:
        first, second = Task(7, None, b"x", None), Task(8, None, b"y", None)
        lane.inflight.extend([first, second])
        lane.reader.feed(fr.encode(fr.KIND_RESULT, 7, pickle.dumps("seven")))
        lane.reader.feed(b"\xff" * fr.HEADER_SIZE)
        out: list = []
        with pytest.raises(fr.ChannelError):
            mgr._decode(lane, out, *lane.reader.take())
        assert out == [(first, "seven", None)]
        assert first.payload is None  # dropped once its result is in
        assert mgr.completed == 1 and list(lane.inflight) == [second]
    finally:
        for fd in (call_r, call_w, res_r, res_w):
            _fds.close_fd(fd)
        mgr.close_fds()
        ex.shutdown()


def test_window_estimate_ignores_a_dry_workers_slow_sample():
    """The service time (which sizes the window) rises only on samples from a
    worker still holding calls: one whose window ran dry may have idled, and
    its slow-looking sample would shrink the window and starve it more."""
    from pyexec._lanes import Window

    def observe(sample: float, busy: bool, st: float) -> float:
        win = Window()
        win.service_time = st
        win.observe(sample, busy)
        return win.service_time

    assert observe(1.0, busy=False, st=1e-4) == 1e-4  # dry: a slow sample is ignored
    assert observe(1.0, busy=True, st=1e-4) > 0.1  # still busy: it counts
    assert observe(0.0, busy=False, st=1e-4) < 1e-4  # dry, faster: it counts
    assert observe(1.0, busy=False, st=0.0) == 1.0  # the first sample always counts


def test_window_size_follows_the_service_time():
    """WINDOW_SECONDS of work per worker, at least 2 calls for short calls
    (one queued behind the one running), 1 for long ones, at most WINDOW_MAX."""
    from pyexec._lanes import WINDOW_MAX, WINDOW_PAIR, WINDOW_SECONDS, Window

    def size(st: float) -> int:
        win = Window()
        win.observe(st, True)  # the first sample sets the estimate
        return win.size

    assert Window().size == 1  # nothing known yet
    assert size(1e-9) == WINDOW_MAX
    assert size(WINDOW_SECONDS / 10) == 10
    assert size(WINDOW_SECONDS) == 2  # one call of work: still one queued behind
    assert size(WINDOW_PAIR / 2) == 2
    assert size(WINDOW_PAIR * 2) == 1  # long calls: one per worker
