"""Fault tests: hostile objects in both directions, and workers that die at bad moments.

Every scenario ends in one of two outcomes, never a hang and never a crash of
the parent: an error on that one future (the pool keeps working), or
BrokenProcessPool whose message names the worker's pid and how it ended.
Where the standard library agrees on the outcome, the test checks that too.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time

import faults_funcs as ff
import pytest

import pyexec
from pyexec import BrokenProcessPool

PARENT = os.getpid()
MiB = 1 << 20


def _worker_pid(ex) -> int:
    """The pid of the single worker of ex (max_workers=1)."""
    return ex.submit(ff.getpid).result(timeout=30)


def _assert_still_works(ex) -> None:
    assert ex.submit(ff.square, 12).result(timeout=30) == 144
    assert list(ex.map(ff.square, range(5))) == [0, 1, 4, 9, 16]


def _assert_broken(exc: BaseException | None, pid: int | None, how: str) -> None:
    """exc is BrokenProcessPool and says which worker died, and how."""
    assert isinstance(exc, BrokenProcessPool), repr(exc)
    msg = str(exc)
    if pid is not None:
        assert f"pid {pid}" in msg, msg
    assert how in msg, msg


def _remote_text(exc: BaseException) -> str:
    """The worker-side traceback text chained to exc (pyexec and stdlib alike)."""
    cause = exc.__cause__
    return str(cause) if cause is not None else ""


# ---- 1. hostile objects ----------------------------------------------------------
#
# (where, mode) -> what happens. "where" is the side and moment of the fault:
#   arg-pickle:      the parent pickles an argument (in submit)
#   arg-unpickle:    the worker unpickles an argument
#   result-pickle:   the worker pickles a result
#   result-unpickle: the parent unpickles a result (in the manager thread)

_EXIT_HOW = {"os_exit": "exit code 9", "segv": "signal SIGSEGV"}


def _submit_hostile(ex, where: str, mode: str) -> cf.Future:
    if where == "arg-pickle":
        return ex.submit(ff.take, ff.Hostile(mode, "pickle", True, PARENT))
    if where == "arg-unpickle":
        return ex.submit(ff.take, ff.Hostile(mode, "unpickle", False, PARENT))
    if where == "result-pickle":
        return ex.submit(ff.give_hostile, mode, "pickle", False, PARENT)
    if where == "result-unpickle":
        return ex.submit(ff.give_hostile, mode, "unpickle", True, PARENT)
    raise AssertionError(where)


_FUTURE_ERRORS = [
    ("arg-pickle", "raise"),
    ("arg-pickle", "exit"),
    ("arg-unpickle", "raise"),
    ("arg-unpickle", "exit"),
    ("result-pickle", "raise"),
    ("result-pickle", "exit"),
    ("result-unpickle", "raise"),
    ("result-unpickle", "exit"),
]
_WORKER_DEATHS = [
    ("arg-unpickle", "os_exit"),
    ("arg-unpickle", "segv"),
    ("result-pickle", "os_exit"),
    ("result-pickle", "segv"),
]


def _hostile_outcome(
    ex, api: str, where: str, mode: str, dies: bool = False
) -> BaseException | None:
    """Run one hostile call through submit, or as item 1 of a 3-item map; its error.

    When the fault kills the worker, item 0's result may die with it: a tiny
    call's result is held back to leave with the next one (pyexec's worker
    coalesces results), so map may fail at item 0 already.
    """
    if api == "submit":
        return _submit_hostile(ex, where, mode).exception(timeout=30)
    if where.startswith("arg"):
        phase, in_parent = ("pickle", True) if where == "arg-pickle" else ("unpickle", False)
        it = ex.map(ff.take, [0, ff.Hostile(mode, phase, in_parent, PARENT), 2])
        first = "int"
    else:
        phase, in_parent = ("pickle", False) if where == "result-pickle" else ("unpickle", True)
        n = 3
        it = ex.map(
            ff.maybe_hostile, range(n), [mode] * n, [phase] * n, [in_parent] * n, [PARENT] * n
        )
        first = 0
    got = []
    try:
        for x in it:
            got.append(x)
    except BaseException as exc:  # SystemExit included: it is the outcome under test
        assert got == [first] or (dies and got == []), got
        return exc
    raise AssertionError(f"map gave {got} and no error")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("api", ["submit", "map"])
@pytest.mark.parametrize("where,mode", _FUTURE_ERRORS, ids=[f"{w}-{m}" for w, m in _FUTURE_ERRORS])
def test_hostile_fails_only_its_future(ctx, where, mode, api):
    """A pickling fault that raises fails that one call; the pool keeps working."""
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        pid = _worker_pid(ex)
        exc = _hostile_outcome(ex, api, where, mode)
        assert exc is not None
        # An unpickling fault is also a BrokenProcessPool, which the stdlib raises
        # there (breaking the pool); pyexec's pool is not broken (checked below).
        assert isinstance(exc, BrokenProcessPool) == where.endswith("-unpickle"), repr(exc)
        if where == "result-unpickle":
            # Raised in the parent: wrapped, and says which call's result failed.
            assert isinstance(exc, pickle.UnpicklingError), repr(exc)
            assert "result of call" in str(exc) and "could not be unpickled" in str(exc), exc
            inner = ValueError if mode == "raise" else SystemExit
            assert isinstance(exc.__cause__, inner), repr(exc.__cause__)
        elif where == "arg-unpickle":
            # Raised in the worker while it read the call: the error must say so
            # (as the parent side says it for results), not pass for fn's own error.
            assert "unpickl" in str(exc).lower(), (
                f"{exc!r} does not say the call's arguments could not be unpickled"
            )
        elif mode == "raise":
            assert isinstance(exc, ValueError) and "hostile object refused" in str(exc)
            if where == "result-pickle":
                assert "__reduce__" in _remote_text(exc), _remote_text(exc)
        else:
            assert isinstance(exc, SystemExit) and exc.code == 7, repr(exc)
        # The same worker is still there: nothing died, nothing was replaced.
        assert _worker_pid(ex) == pid
        _assert_still_works(ex)
        assert ex.stats().workers_replaced == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("api", ["submit", "map"])
@pytest.mark.parametrize("where,mode", _WORKER_DEATHS, ids=[f"{w}-{m}" for w, m in _WORKER_DEATHS])
def test_hostile_kills_worker_breaks_pool(ctx, where, mode, api):
    """os._exit or a segfault in the worker while (un)pickling: BrokenProcessPool naming it."""
    ex = pyexec.ProcessPoolExecutor(1, mp_context=ctx)
    try:
        pid = _worker_pid(ex)
        exc = _hostile_outcome(ex, api, where, mode, dies=True)
        _assert_broken(exc, pid, _EXIT_HOW[mode])
        with pytest.raises(BrokenProcessPool) as later:
            ex.submit(ff.square, 2)
        _assert_broken(later.value, pid, _EXIT_HOW[mode])
    finally:
        ex.shutdown(wait=True)


# The cases where the standard library gives the same kind of outcome (it
# breaks the pool on unpickling errors, and hangs on SystemExit in its feeder
# thread or result reader: those are not compared).
_AGREE = [
    ("arg-pickle", "raise", ValueError),
    ("result-pickle", "raise", ValueError),
    ("result-pickle", "exit", SystemExit),
    ("arg-unpickle", "os_exit", BrokenProcessPool),
    ("arg-unpickle", "segv", BrokenProcessPool),
    ("result-pickle", "os_exit", BrokenProcessPool),
    ("result-pickle", "segv", BrokenProcessPool),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where,mode,expected", _AGREE, ids=[f"{w}-{m}" for w, m, _ in _AGREE])
def test_hostile_same_outcome_as_stdlib(where, mode, expected):
    """pyexec and concurrent.futures agree on the outcome (fork, the fastest start)."""
    ctx = multiprocessing.get_context("fork")
    outcomes = []
    for cls in (cf.ProcessPoolExecutor, pyexec.ProcessPoolExecutor):
        with cls(1, mp_context=ctx) as ex:
            ex.submit(ff.getpid).result(timeout=30)
            exc = _submit_hostile(ex, where, mode).exception(timeout=30)
            outcomes.append(type(exc))
            assert isinstance(exc, expected), f"{cls.__module__}: {exc!r}"
    assert outcomes[0] is outcomes[1], outcomes


@pytest.mark.timeout(60)
def test_unpicklable_exception(ctx):
    """An exception that cannot be pickled: that future fails with a clear error."""
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        exc = ex.submit(ff.raise_unpicklable, "carries a lock").exception(timeout=30)
        assert isinstance(exc, TypeError), repr(exc)
        assert "pickle" in str(exc), exc
        remote = _remote_text(exc)
        # The worker's traceback names the original exception and its message.
        assert "UnpicklableError" in remote and "carries a lock" in remote, remote
        _assert_still_works(ex)
    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as std:
        assert isinstance(std.submit(ff.raise_unpicklable).exception(timeout=30), TypeError)


@pytest.mark.timeout(60)
def test_exception_that_cannot_be_unpickled(ctx):
    """Pickles in the worker, fails in the parent: only that future fails (pyexec's deviation)."""
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        fut = ex.submit(ff.raise_no_unpickle)
        exc = fut.exception(timeout=30)
        assert isinstance(exc, pickle.UnpicklingError), repr(exc)
        msg = str(exc)
        assert "exception of call" in msg and "could not be unpickled" in msg, msg
        assert "NoUnpickleError" in msg or isinstance(exc.__cause__, TypeError), msg
        _assert_still_works(ex)


_PARENT_DEATHS = [
    ("fork", "arg", "os_exit"),
    ("spawn", "arg", "segv"),
    ("fork", "result", "os_exit"),
    ("fork", "result", "segv"),
    ("forkserver", "result", "os_exit"),
    ("forkserver", "result", "segv"),
    ("spawn", "result", "os_exit"),
    ("spawn", "result", "segv"),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "method,where,mode", _PARENT_DEATHS, ids=["-".join(c) for c in _PARENT_DEATHS]
)
def test_parent_killed_while_unpickling(method, where, mode):
    """A fault that kills the parent itself (as it would with the stdlib): no hang, no orphans."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ff.SCRIPTS, "parent_dies.py"), method, where, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("pids "), line + proc.stderr.read()
        workers = [int(x) for x in line.split()[1:]]
        family = set(ff.descendants(proc.pid)) | set(workers)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "survived" not in out
    expected = -signal.SIGSEGV if mode == "segv" else 9
    assert proc.returncode == expected, (proc.returncode, err[-2000:])
    left = ff.wait_gone(family, timeout=15)
    assert not left, f"processes outlived their dead parent: {left}"


# ---- 2. dying workers ---------------------------------------------------------


@pytest.mark.timeout(60)
def test_sigkill_worker_running_a_call(ctx):
    """The simplest death: a worker killed while it runs a call; that call fails, naming it."""
    ex = pyexec.ProcessPoolExecutor(1, mp_context=ctx)
    try:
        pid = _worker_pid(ex)
        fut = ex.submit(ff.sleep_then, 30)
        while ex.stats().running < 1:
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        _assert_broken(fut.exception(timeout=30), pid, "signal SIGKILL")
    finally:
        ex.shutdown(wait=True)


@pytest.mark.timeout(90)
def test_kill_at_random_moments_of_long_map(ctx):
    """SIGKILL or SIGSEGV a worker at a random point of a long map: a clean break."""
    rng = random.Random(1234)
    n = 120
    for signum in (signal.SIGKILL, signal.SIGSEGV, signal.SIGKILL):
        at = rng.randrange(3, 50)
        ex = pyexec.ProcessPoolExecutor(2, mp_context=ctx)
        try:
            got = []
            victim = None
            with pytest.raises(BrokenProcessPool) as info:
                for i, pid in ex.map(ff.pid_after, [0.005] * n, range(n)):
                    got.append(i)
                    if len(got) == at:
                        victim = pid
                        os.kill(victim, signum)
            assert victim is not None, "the pool broke before the kill"
            assert got == list(range(len(got))), "results out of order before the break"
            assert len(got) < n
            _assert_broken(info.value, victim, f"signal {signal.Signals(signum).name}")
        finally:
            ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_kill_while_large_call_half_written(ctx):
    """A worker killed while a 32 MiB call is still being written to it: no hang, a clean break."""
    # The pipe's path: with an arena the big bytes would not be in the pipe at all.
    ex = pyexec.ProcessPoolExecutor(1, mp_context=ctx, arena_size=0)
    try:
        pid = _worker_pid(ex)
        # Tiny calls teach the pool to keep two calls in the worker's window.
        assert list(ex.map(ff.noop, range(400))) == [None] * 400
        # Nothing is queued behind a call that has run past WINDOW_PAIR, so
        # the two go in while a short call runs, or together once it ends.
        first = ex.submit(ff.sleep_then, 0.1)
        busy = ex.submit(ff.sleep_then, 30)
        big = ex.submit(ff.length, b"\0" * (32 * MiB))
        assert first.result(timeout=30) is None
        deadline = time.monotonic() + 10
        while ex.stats().running < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # Both calls are in the worker's window: the 32 MiB one cannot fit the
        # pipe while the worker sleeps, so it is half written.
        assert ex.stats().running == 2, ex.stats()
        os.kill(pid, signal.SIGKILL)
        for f in (busy, big):
            _assert_broken(f.exception(timeout=30), pid, "signal SIGKILL")
    finally:
        ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_worker_killed_while_writing_large_result(ctx):
    """A worker SIGKILLed while it writes a 32 MiB result: the result or a clean break."""
    ex = pyexec.ProcessPoolExecutor(1, mp_context=ctx)
    try:
        pid = _worker_pid(ex)
        fut = ex.submit(ff.big_result_then_die, 32 * MiB, 0.02)
        exc = fut.exception(timeout=30)
        if exc is None:
            assert len(fut.result()) == 32 * MiB
            # The worker still dies right after: the pool then breaks, naming it.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    ex.submit(ff.noop).result(timeout=30)
                except BrokenProcessPool as err:
                    exc = err
                    break
                time.sleep(0.05)
        _assert_broken(exc, pid, "signal SIGKILL")
    finally:
        ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_kill_during_shutdown(ctx, tmp_path):
    """Workers killed while shutdown(wait=True) waits for them: it returns, futures settle."""
    path = str(tmp_path / "pids")
    ex = pyexec.ProcessPoolExecutor(
        2, mp_context=ctx, initializer=ff.write_pid_and_sleep, initargs=(path, 0)
    )
    futs = [ex.submit(ff.sleep_then, 0.5, i) for i in range(4)]
    pids = ff.read_pids(path, 2)
    assert len(pids) == 2, pids

    def kill_soon() -> None:
        time.sleep(0.2)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    ex.shutdown(wait=True)
    killer.join()
    broken = 0
    for i, f in enumerate(futs):
        assert f.done()
        exc = f.exception()
        if exc is None:
            assert f.result() == i
        else:
            broken += 1
            assert isinstance(exc, BrokenProcessPool), repr(exc)
            assert any(f"pid {p}" in str(exc) for p in pids), str(exc)
            assert "signal SIGKILL" in str(exc), str(exc)
    assert broken, "every call finished before the kill: the test proved nothing"


@pytest.mark.timeout(60)
def test_kill_idle_workers_after_shutdown_asked(ctx, tmp_path):
    """Workers killed while they handle the exit frame: shutdown still returns."""
    path = str(tmp_path / "pids")
    ex = pyexec.ProcessPoolExecutor(
        2, mp_context=ctx, initializer=ff.write_pid_and_sleep, initargs=(path, 0)
    )
    assert list(ex.map(ff.square, range(10))) == [x * x for x in range(10)]
    pids = ff.read_pids(path, 1)
    ex.shutdown(wait=False)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it had already exited
    ex.shutdown(wait=True)
    assert not ff.alive(pids)


@pytest.mark.timeout(60)
def test_kill_during_startup(ctx, tmp_path):
    """A worker killed while its initializer still runs: BrokenProcessPool naming it."""
    path = str(tmp_path / "pids")
    ex = pyexec.ProcessPoolExecutor(
        1, mp_context=ctx, initializer=ff.write_pid_and_sleep, initargs=(path, 20)
    )
    try:
        fut = ex.submit(ff.square, 3)
        pids = ff.read_pids(path, 1)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        _assert_broken(fut.exception(timeout=30), pids[0], "signal SIGKILL")
    finally:
        ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_os_exit_in_initializer(ctx, tmp_path):
    """os._exit in the initializer: BrokenProcessPool naming the worker and its exit code."""
    path = str(tmp_path / "pids")
    ex = pyexec.ProcessPoolExecutor(
        1, mp_context=ctx, initializer=ff.os_exit_initializer, initargs=(path, 4)
    )
    try:
        exc = ex.submit(ff.square, 3).exception(timeout=30)
        pids = ff.read_pids(path, 1)
        assert pids, "the initializer never wrote its pid: the pid in the message went unchecked"
        _assert_broken(exc, pids[0], "exit code 4")
    finally:
        ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_initializer_raises(ctx):
    """An initializer that raises: BrokenProcessPool saying so, with its error."""
    ex = pyexec.ProcessPoolExecutor(1, mp_context=ctx, initializer=ff.raising_initializer)
    try:
        exc = ex.submit(ff.square, 3).exception(timeout=30)
        assert isinstance(exc, BrokenProcessPool), repr(exc)
        msg = str(exc)
        assert "initializer" in msg and "no database today" in msg, msg
        assert "pid " in msg, msg
    finally:
        ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_zygote_killed():
    """fork: the zygote that forks workers is killed: a clean break naming it."""
    import psutil

    before = {p.pid for p in psutil.Process().children()}  # forkserver, resource tracker
    ex = pyexec.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
    try:
        wpid = _worker_pid(ex)  # forked by this process itself on Linux, else by the zygote
        zygotes = [p.pid for p in psutil.Process().children() if p.pid not in before | {wpid}]
        assert len(zygotes) == 1, zygotes
        zygote = zygotes[0]
        assert psutil.Process(wpid).ppid() in (os.getpid(), zygote)
        os.kill(zygote, signal.SIGKILL)
        deadline = time.monotonic() + 20
        exc = None
        while exc is None and time.monotonic() < deadline:
            try:
                exc = ex.submit(ff.sleep_then, 0.05).exception(timeout=30)
            except BrokenProcessPool as err:
                exc = err
        assert isinstance(exc, BrokenProcessPool), repr(exc)
        assert f"pid {zygote}" in str(exc) or f"pid {wpid}" in str(exc), str(exc)
    finally:
        ex.shutdown(wait=True)
    assert not ff.wait_gone([wpid, zygote])


@pytest.mark.timeout(90)
def test_death_seen_while_manager_busy():
    """fork: a worker's sentinel and the zygote's exit record in one wakeup: no hang.

    The script kills the worker, then holds the GIL in one C call, so the
    manager wakes once for both events.
    """
    proc = subprocess.run(
        [sys.executable, os.path.join(ff.SCRIPTS, "death_in_busy_manager.py"), "3"],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ok ")]
    assert proc.returncode == 0 and len(lines) == 3, (proc.returncode, proc.stderr[-3000:])
    for ln in lines:
        _, pid, name, msg = ln.split(" ", 3)
        assert name == "BrokenProcessPool", ln
        assert f"pid {pid}" in msg and "signal SIGKILL" in msg, ln
