"""The opt-in capabilities (issue 5), under every start method.

on_crash="restart", per-call deadlines (schedule, task_timeout), terminate_task,
max_memory_per_child, max_tasks_per_child and stats(); and the defaults, which
must stay the standard library's (a crash breaks the pool). Executions are
counted through an append-only log file written by the workers, so "never ran
twice" is checked, not assumed. Timing bounds are generous: the machine is noisy.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from extras_funcs import (
    crash,
    fail,
    hog,
    log_run,
    pid_of,
    rss_now,
    square,
    started_then_sleep,
)

import pyexec

EXPECTED_EXITCODE = {"exit": 7, "kill": -signal.SIGKILL, "segv": -signal.SIGSEGV}
CRASHES = list(EXPECTED_EXITCODE)
MB = 1024 * 1024


def _wait_for(pred, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll pred() until true; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def _runs(logfile: Path) -> Counter:
    """How many times each key was logged by log_run."""
    if not logfile.exists():
        return Counter()
    return Counter(logfile.read_text().split())


def _start_time(startfile: Path) -> float:
    """The CLOCK_MONOTONIC time at which started_then_sleep began in the worker."""
    return float(startfile.read_text().split()[0])


# ---- 1. on_crash="restart" ------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", CRASHES)
def test_crash_loses_only_itself(ctx, tmp_path, how):
    """One crash among 2000 good calls: one WorkerDied (right pid, exit code), all else correct."""
    log, pidfile = tmp_path / "log", tmp_path / "pid"
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx, on_crash="restart") as ex:
        good = [ex.submit(log_run, str(log), str(i), i * i) for i in range(1000)]
        bad = ex.submit(crash, how, str(pidfile))
        good += [ex.submit(log_run, str(log), str(i), i * i) for i in range(1000, 2000)]
        results = [f.result(timeout=30) for f in good]
        with pytest.raises(pyexec.WorkerDied) as info:
            bad.result(timeout=30)
        assert ex.submit(square, 7).result(timeout=30) == 49  # the pool lives on
    assert results == [i * i for i in range(2000)]
    assert info.value.pid == int(pidfile.read_text())
    assert info.value.exitcode == EXPECTED_EXITCODE[how]
    assert isinstance(info.value, cf.process.BrokenProcessPool)
    runs = _runs(log)
    assert set(runs) == {str(i) for i in range(2000)}
    assert max(runs.values()) == 1, "a call queued behind the crash ran twice"


@pytest.mark.timeout(60)
def test_several_crashes_in_one_run(ctx, tmp_path):
    """Three crashes of three kinds in one run: exactly three WorkerDied, 3000 good results."""
    log = tmp_path / "log"
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx, on_crash="restart") as ex:
        futures, bad = [], {}
        for i in range(3000):
            if i in (500, 1500, 2500):
                how = CRASHES[len(bad)]
                bad[how] = ex.submit(crash, how, str(tmp_path / how))
            futures.append(ex.submit(log_run, str(log), str(i), i))
        assert [f.result(timeout=30) for f in futures] == list(range(3000))
        for how, f in bad.items():
            exc = f.exception(timeout=30)
            assert type(exc) is pyexec.WorkerDied, (how, exc)
            assert exc.pid == int((tmp_path / how).read_text())
            assert exc.exitcode == EXPECTED_EXITCODE[how]
    assert len({e.pid for e in (f.exception() for f in bad.values())}) == 3
    runs = _runs(log)
    assert len(runs) == 3000 and max(runs.values()) == 1


def _queue_behind_a_busy_worker(ex, last) -> tuple[list[cf.Future], cf.Future]:
    """Keep the one worker busy 0.3 s and queue 20 tiny calls and last() behind it.

    They all reach the worker's pipe while it is busy, so it reads them in one
    go and runs them back to back: the tiny calls' results are then the ones
    the worker may hold back to write together. They only queue in the worker
    once its window has grown (tiny calls make it grow); on a noisy machine
    that may take a few rounds.
    """
    for _ in range(10):
        # Tiny calls, one per item: the window grows past 1 (a default map
        # would send them in a few chunks).
        list(ex.map(square, range(300), chunksize=1))
        busy = ex.submit(started_then_sleep, os.devnull, 0.3)
        tiny = [ex.submit(abs, -i) for i in range(20)]  # a builtin: as tiny as calls get
        deadline = time.monotonic() + 0.15
        while ex.stats().running < 21 and time.monotonic() < deadline:
            time.sleep(0.005)
        if ex.stats().running >= 21:
            break
        cf.wait([busy, *tiny], timeout=30)
    else:
        pytest.fail("the tiny calls never queued behind the busy one in 10 rounds")
    b = last()
    time.sleep(0.02)
    assert not busy.done() and ex.stats().running >= 22, "last() did not queue behind"
    assert busy.result(timeout=30) > 0
    return tiny, b


@pytest.mark.timeout(60)
def test_crash_right_after_a_tiny_call(ctx, tmp_path):
    """Tiny calls then a crashing one, read by the worker together: no tiny result is lost
    (nor the crash pinned on a tiny call), and the crashing call runs once."""
    pidfile = tmp_path / "pid"
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx, on_crash="restart") as ex:
        tiny, bad = _queue_behind_a_busy_worker(ex, lambda: ex.submit(crash, "kill", str(pidfile)))
        assert [f.result(timeout=30) for f in tiny] == list(range(20))
        with pytest.raises(pyexec.WorkerDied):
            bad.result(timeout=30)
        assert ex.submit(square, 5).result(timeout=30) == 25
        stats = ex.stats()
    assert stats.workers_replaced == 1, "the crashing call ran (and crashed) twice"


@pytest.mark.timeout(60)
def test_deadline_right_after_a_tiny_call(ctx, tmp_path):
    """Tiny calls then a call with a deadline, read by the worker together: the deadline
    still fires on time (no tiny result is held back while the next call runs)."""
    startfile = tmp_path / "start"
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        tiny, slow = _queue_behind_a_busy_worker(
            ex, lambda: ex.schedule(started_then_sleep, (str(startfile), 8), timeout=0.5)
        )
        try:
            got = [f.result(timeout=5) for f in tiny]
            assert got == list(range(20)), "the tiny calls' results waited"
            with pytest.raises(pyexec.TaskTimeout):
                slow.result(timeout=5)
        finally:
            ex.terminate_task(slow)


# ---- 7. defaults unchanged: a crash breaks the pool, as in the stdlib -------------


def _crash_program(cls, ctx, tmp_path: Path, how: str) -> tuple[list, BaseException, object]:
    """Good calls around one crash, on a pool of class cls: (outcomes, crash's error, after)."""
    with cls(2, mp_context=ctx) as ex:
        good = [ex.submit(square, i) for i in range(200)]
        bad = ex.submit(crash, how, str(tmp_path / f"{cls.__module__}.pid"))
        good += [ex.submit(square, i) for i in range(200, 400)]
        err = bad.exception(timeout=10)
        outcomes = []
        for i, f in enumerate(good):
            exc = f.exception(timeout=10)
            outcomes.append(type(exc) if exc else f.result() == i * i)
        try:
            ex.submit(square, 1)
            after: object = "accepted"
        except BaseException as exc:
            after = type(exc)
    return outcomes, err, after


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the stdlib's fork-with-threads note
@pytest.mark.parametrize("how", CRASHES)
def test_default_on_crash_breaks_like_stdlib(ctx, tmp_path, how):
    """With default arguments a crash gives the stdlib's BrokenProcessPool, not WorkerDied."""
    outcomes, err, after = _crash_program(pyexec.ProcessPoolExecutor, ctx, tmp_path, how)
    assert type(err) is cf.process.BrokenProcessPool, repr(err)
    assert after is cf.process.BrokenProcessPool
    assert set(outcomes) <= {True, cf.process.BrokenProcessPool}
    if how == "kill":  # the same program on the stdlib's pool: the same outcome
        std_outcomes, std_err, std_after = _crash_program(
            cf.ProcessPoolExecutor, ctx, tmp_path, how
        )
        assert type(std_err) is cf.process.BrokenProcessPool
        assert std_after is cf.process.BrokenProcessPool
        assert set(std_outcomes) <= {True, cf.process.BrokenProcessPool}


# ---- 2. deadlines -----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("on_crash", ["break", "restart"])
def test_deadline_kills_only_its_call(ctx, tmp_path, on_crash):
    """A 30 s call with timeout=2 raises TaskTimeout soon; the calls queued behind it
    on the same worker are re-sent, complete, and run once; the pool is not broken.

    The deadline leaves the test 2 s to look at the queue before the kill: with 0.5 s a
    loaded CI machine sometimes looked only after the queued calls were re-sent. The
    manager is held off (its dispatch lock taken while it sleeps) until every call is
    scheduled, so it sends them in one go: calls that reach it after the head call has
    run WINDOW_PAIR are rightly held back, and on a loaded machine the test's own
    thread was sometimes that late."""
    log, startfile = tmp_path / "log", tmp_path / "start"
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx, on_crash=on_crash) as ex:
        # Tiny calls, one per item: the window grows past 1 (a default map
        # would send them in a few chunks).
        list(ex.map(square, range(300), chunksize=1))
        assert ex._mgr.dispatch_lock.acquire(timeout=30)
        try:
            slow = ex.schedule(started_then_sleep, (str(startfile), 30), timeout=2.0)
            queued = [ex.schedule(log_run, (str(log), str(i), i), timeout=5) for i in range(50)]
        finally:
            ex._mgr.dispatch_lock.release()
        _wait_for(startfile.exists, what="the slow call to start")
        running = ex.stats().running
        with pytest.raises(pyexec.TaskTimeout) as info:
            slow.result(timeout=20)
        done_at = time.monotonic()
        assert [f.result(timeout=30) for f in queued] == list(range(50))
        assert ex.submit(square, 3).result(timeout=30) == 9
        _wait_for(lambda: ex.stats().workers_alive == 1, what="the pool to be whole again")
        stats = ex.stats()
    assert running >= 2, f"no call was queued behind the slow one (running={running})"
    assert isinstance(info.value, TimeoutError)
    assert done_at - (_start_time(startfile) + 2.0) < 1.0
    runs = _runs(log)
    assert set(runs) == {str(i) for i in range(50)} and max(runs.values()) == 1
    assert stats.workers_replaced == 1
    assert stats.failed == 1


@pytest.mark.timeout(60)
def test_fast_calls_with_a_deadline_succeed(ctx):
    """Calls well within their deadline return normally, one after another and in a burst."""
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        ex.submit(square, 0).result(timeout=30)  # workers up: their start is not the point here
        one = [ex.schedule(square, (i,), timeout=0.5).result(timeout=30) for i in range(20)]
        burst = [ex.schedule(square, (i,), timeout=0.5) for i in range(500)]
        assert one == [i * i for i in range(20)]
        assert [f.result(timeout=30) for f in burst] == [i * i for i in range(500)]
        assert ex.stats().workers_replaced == 0


@pytest.mark.timeout(60)
def test_task_timeout_applies_to_submit_and_map(ctx, tmp_path):
    """task_timeout is the default deadline of submit, map and schedule; schedule overrides it."""
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx, task_timeout=1.0) as ex:
        with pytest.raises(pyexec.TaskTimeout):
            ex.submit(started_then_sleep, str(tmp_path / "a"), 30).result(timeout=20)
        it = ex.map(started_then_sleep, [str(tmp_path / "b"), str(tmp_path / "c")], [0, 30])
        assert next(it) > 0  # the quick one returns its worker's pid
        with pytest.raises(pyexec.TaskTimeout):
            next(it)
        with pytest.raises(pyexec.TaskTimeout):
            ex.schedule(started_then_sleep, (str(tmp_path / "d"), 30)).result(timeout=20)
        longer = ex.schedule(started_then_sleep, (str(tmp_path / "e"), 1.5), timeout=10)
        assert longer.result(timeout=20) > 0
        assert ex.submit(square, 4).result(timeout=20) == 16
        assert ex.stats().failed == 3


@pytest.mark.timeout(60)
def test_deadline_does_not_count_worker_startup(ctx):
    """The clock starts when the call starts: a slow initializer must not eat the deadline.

    The spec: "a call still running timeout seconds after it started". Here the
    call itself takes no time at all, but the worker's initializer takes 1.5 s.
    """
    with pyexec.ProcessPoolExecutor(
        1, mp_context=ctx, initializer=time.sleep, initargs=(1.5,)
    ) as ex:
        assert ex.schedule(square, (3,), timeout=0.5).result(timeout=30) == 9


LATENESS_RUNS = 20
LATENESS_TIMEOUT = 0.3


@pytest.fixture(params=[False, True], ids=["quiet", "busy"])
def other_core(request):
    """ "busy": a process spinning on the CPU for the whole test (started here and
    stopped by its pid), as when the machine's other core is taken."""
    if not request.param:
        yield False
        return
    import subprocess
    import sys

    spin = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        yield True
    finally:
        spin.kill()
        spin.wait(10)


@pytest.mark.timeout(90)
def test_deadline_lateness(ctx, tmp_path, other_core):
    """20 deadline kills: each future is done soon after (start in the worker + timeout),
    also with another process keeping a core busy (README: "How late a deadline fires").

    Measured on the shared 2-core machine (README): medians 2-21 ms, maxima up to
    418 ms (load), minima down to -92 ms (see below). The bounds are wide for a
    noisy machine: not later than 1 s (the README's promise), and not earlier than
    0.5 s before the call's own first line plus its timeout.
    """
    done: dict[int, float] = {}
    futures = []
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        for i in range(LATENESS_RUNS):
            f = ex.schedule(
                started_then_sleep, (str(tmp_path / str(i)), 30), timeout=LATENESS_TIMEOUT
            )
            f.add_done_callback(lambda _f, i=i: done.__setitem__(i, time.monotonic()))
            futures.append(f)
        for f in futures:
            assert isinstance(f.exception(timeout=60), pyexec.TaskTimeout)
    unstarted = [i for i in range(LATENESS_RUNS) if not (tmp_path / str(i)).exists()]
    assert not unstarted, f"calls killed for their deadline before they even started: {unstarted}"
    late = [
        done[i] - (_start_time(tmp_path / str(i)) + LATENESS_TIMEOUT) for i in range(LATENESS_RUNS)
    ]
    print(
        f"\n{ctx.get_start_method()}{' (busy)' if other_core else ''}: deadline lateness "
        f"over {LATENESS_RUNS} kills: "
        f"median {statistics.median(late) * 1e3:.1f} ms, max {max(late) * 1e3:.1f} ms, "
        f"min {min(late) * 1e3:.1f} ms"
    )
    assert max(late) < 1.0, sorted(late)
    # The parent's clock starts when it decodes the worker's STARTED frame, which the
    # worker sends just before it calls fn; a worker descheduled between the two
    # (seen: 92 ms, with a core busy and the machine loaded 3x over) makes the call's
    # own first line later than the deadline's start. Killing before the start was
    # reported is checked exactly by test_deadline_does_not_count_worker_startup.
    assert min(late) > -0.5, f"a call was killed before its timeout had elapsed: {sorted(late)}"


# ---- 3. terminate_task ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_terminate_pending_running_finished(ctx, tmp_path):
    """Pending: cancelled (True). Running: TaskTerminated, worker replaced (True). Done: False."""
    startfile = tmp_path / "start"
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        running = ex.submit(started_then_sleep, str(startfile), 30)
        pending = ex.submit(square, 5)
        _wait_for(startfile.exists, what="the long call to start")
        assert not pending.running(), "the second call left the parent: not pending any more"
        assert ex.terminate_task(pending) is True
        assert pending.cancelled()
        t0 = time.monotonic()
        assert ex.terminate_task(running) is True
        with pytest.raises(pyexec.TaskTerminated) as info:
            running.result(timeout=20)
        assert time.monotonic() - t0 < 5.0
        assert isinstance(info.value, cf.CancelledError)
        after = ex.submit(pid_of, 6)
        assert after.result(timeout=30)[0] == 6
        assert after.result()[1] != int(startfile.read_text().split()[1])
        assert ex.terminate_task(after) is False
        _wait_for(lambda: ex.stats().workers_alive == 1, what="the pool to be whole again")
        stats = ex.stats()
    assert stats.workers_replaced == 1
    assert (stats.submitted, stats.completed, stats.failed) == (3, 1, 1)  # and one cancelled


@pytest.mark.timeout(60)
def test_terminate_refuses_a_future_it_did_not_return(tmp_path):
    """Another pool's future, running or pending, and a stdlib future: ValueError,
    from a pool that runs and from one never used, and each call goes on
    untouched (it once cancelled the pending ones, and marked the running one
    in the other pool)."""
    startfile = tmp_path / "start"
    with (
        pyexec.ProcessPoolExecutor(1) as mine,
        pyexec.ProcessPoolExecutor(1) as unused,
        pyexec.ProcessPoolExecutor(1) as other,
        cf.ThreadPoolExecutor(1) as threads,
    ):
        assert mine.submit(square, 2).result(timeout=30) == 4
        running = other.submit(started_then_sleep, str(startfile), 0.5)
        pending = other.submit(square, 5)
        _wait_for(startfile.exists, what="the other pool's call to start")
        gate = threading.Event()
        blocker = threads.submit(gate.wait, 30)
        stdlib_pending = threads.submit(square, 6)
        for pool in (mine, unused):
            for foreign in (running, pending, stdlib_pending):
                with pytest.raises(ValueError):
                    pool.terminate_task(foreign)
        gate.set()
        assert blocker.result(timeout=30) is True and stdlib_pending.result(timeout=30) == 36
        assert pending.result(timeout=30) == 25
        assert running.result(timeout=30) > 0 and other.stats().workers_replaced == 0


@pytest.mark.timeout(60)
def test_terminate_running_spares_the_others(ctx, tmp_path):
    """Terminating one long call leaves 1000 others (some queued behind it) complete, once each."""
    log, startfile = tmp_path / "log", tmp_path / "start"
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:  # default on_crash: not broken
        long = ex.submit(started_then_sleep, str(startfile), 30)
        others = [ex.submit(log_run, str(log), str(i), i) for i in range(1000)]
        _wait_for(startfile.exists, what="the long call to start")
        assert ex.terminate_task(long) is True
        with pytest.raises(pyexec.TaskTerminated):
            long.result(timeout=20)
        assert [f.result(timeout=30) for f in others] == list(range(1000))
        _wait_for(lambda: ex.stats().workers_alive == 2, what="the pool to be whole again")
        stats = ex.stats()
    runs = _runs(log)
    assert len(runs) == 1000 and max(runs.values()) == 1
    assert stats.workers_replaced == 1
    assert (stats.completed, stats.failed, stats.pending, stats.running) == (1000, 1, 0, 0)


# ---- 4. max_memory_per_child ---------------------------------------------------------


@pytest.mark.timeout(60)
def test_memory_recycle(ctx):
    """A call that keeps 50 MB pushes its worker over the limit: it hands back its result,
    exits and is replaced; calls below the limit do not recycle; nothing is lost."""
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx) as probe:
        base = probe.submit(rss_now).result(timeout=30)
    assert base > 0
    limit = base + 30 * MB  # the worker's own size varies by start method
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx, max_memory_per_child=limit) as ex:
        p1 = ex.submit(pid_of, 1).result(timeout=30)[1]
        p2 = ex.submit(pid_of, 2).result(timeout=30)[1]
        hog_pid, hog_rss = ex.submit(hog, 50).result(timeout=30)
        p3 = ex.submit(pid_of, 3).result(timeout=30)[1]
        assert p1 == p2 == hog_pid, "recycled below the limit"
        assert hog_rss > limit
        assert p3 != hog_pid, "not recycled above the limit"
    # A burst on two workers: every result arrives.
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx, max_memory_per_child=limit) as ex:
        futures = [ex.submit(hog, 50) if i % 5 == 0 else ex.submit(pid_of, i) for i in range(50)]
        results = [f.result(timeout=30) for f in futures]
        burst = ex.stats()
        # A worker over the limit exits once its window is run, which may be
        # after the last result: its replacement starts when more work asks.
        deadline = time.monotonic() + 30
        while ex.stats().workers_replaced < 1 and time.monotonic() < deadline:
            assert sorted(ex.map(pid_of, range(4)))[0][0] == 0
            time.sleep(0.05)
        replaced = ex.stats().workers_replaced
    assert [r[0] for i, r in enumerate(results) if i % 5] == [i for i in range(50) if i % 5]
    assert all(r[1] > limit for i, r in enumerate(results) if i % 5 == 0)
    assert replaced >= 1
    assert (burst.completed, burst.failed) == (50, 0)


# ---- 5. max_tasks_per_child -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_max_tasks_per_child(ctx):
    """max_tasks_per_child=3, every start method: a new worker every 3 calls, results right."""
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=3) as ex:
        one = [f.result(timeout=30) for f in [ex.submit(pid_of, i) for i in range(10)]]
    assert [x for x, _ in one] == list(range(10))
    pids = [p for _, p in one]
    assert [pids[i] == pids[i - 1] for i in range(1, 10)] == [True, True, False] * 3
    assert len(set(pids)) == 4
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx, max_tasks_per_child=3) as ex:
        two = list(ex.map(pid_of, range(60)))
        stats = ex.stats()
    assert [x for x, _ in two] == list(range(60))
    per_pid = Counter(p for _, p in two)
    assert max(per_pid.values()) <= 3 and len(per_pid) >= 20
    assert stats.workers_replaced >= 18


# ---- 6. stats() -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_crashed_worker_is_replaced_with_no_work_left(ctx, tmp_path):
    """A worker that dies (on_crash='restart') is replaced at once, not when work
    next asks for a second worker: with nothing left to run, the pool is whole."""
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx, on_crash="restart") as ex:
        both = [ex.submit(started_then_sleep, str(tmp_path / f"s{i}"), 0.5) for i in range(2)]
        assert len({f.result(timeout=30) for f in both}) == 2  # two workers ran them
        with pytest.raises(pyexec.WorkerDied):
            ex.submit(crash, "kill", str(tmp_path / "pid")).result(timeout=30)
        _wait_for(lambda: ex.stats().workers_alive == 2, what="the pool to be whole again")
        assert ex.stats().workers_replaced == 1


@pytest.mark.timeout(60)
def test_stats_after_known_workload(ctx, tmp_path):
    """Counters add up after good calls, raising calls and crashes."""
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx, on_crash="restart") as ex:
        assert ex.stats() == pyexec.PoolStats(0, 0, 0, 0, 0, 0, 0)
        futures = []
        for i in range(2000):
            if i in (10, 20):
                futures.append(ex.submit(crash, "kill", str(tmp_path / str(i))))
            elif i % 100 == 50:
                futures.append(ex.submit(fail, i))
            else:
                futures.append(ex.submit(square, i))
        cf.wait(futures, timeout=30)
        _wait_for(lambda: ex.stats().workers_alive == 2, what="the pool to be whole again")
        stats = ex.stats()
    assert all(f.done() for f in futures)
    assert stats.submitted == 2000
    assert stats.completed == 2000 - 2 - 20
    assert stats.failed == 22
    assert stats.submitted == stats.completed + stats.failed
    assert (stats.pending, stats.running) == (0, 0)
    assert stats.workers_alive == 2
    assert stats.workers_replaced == 2


@pytest.mark.timeout(120)
def test_stats_while_the_manager_dispatches():
    """stats() from a monitoring thread while the manager takes calls off the
    queue: a snapshot every time, never "deque mutated during iteration"."""
    with pyexec.ProcessPoolExecutor(2) as ex:
        errors: list[BaseException] = []
        snapshots = 0
        stop = threading.Event()

        def monitor() -> None:
            nonlocal snapshots
            while not stop.is_set():
                try:
                    s = ex.stats()
                except BaseException as exc:  # the failure this test is about
                    errors.append(exc)
                    return
                if s.pending < 0:  # an assert here would only end this thread
                    errors.append(AssertionError(f"negative pending: {s}"))
                    return
                snapshots += 1

        t = threading.Thread(target=monitor)
        t.start()
        try:
            for _ in range(5):
                futures = [ex.submit(square, i) for i in range(20000)]
                assert [f.result(timeout=60) for f in futures[-3:]] == [
                    i * i for i in range(19997, 20000)
                ]
                cf.wait(futures, timeout=60)
                if errors:
                    break
        finally:
            stop.set()
            t.join(30)
        assert not errors, repr(errors[0])
        assert snapshots > 0


def test_stats_before_any_call():
    """A pool that never ran anything reports zeros and starts no process (nor thread)."""
    import psutil

    children = {p.pid for p in psutil.Process().children(recursive=True)}
    threads = set(threading.enumerate())
    ex = pyexec.ProcessPoolExecutor(2)
    try:
        s = ex.stats()
        assert (s.submitted, s.completed, s.failed, s.running, s.workers_alive) == (0, 0, 0, 0, 0)
        new_children = {p.pid for p in psutil.Process().children(recursive=True)} - children
        assert not new_children, f"stats() started processes: {sorted(new_children)}"
        assert set(threading.enumerate()) <= threads, "stats() started a thread"
    finally:
        ex.shutdown()
