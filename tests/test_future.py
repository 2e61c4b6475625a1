"""The Future that submit returns, result() read in the caller's thread, and
the submit path's function cache (issue 3).

pyexec's Future is a ``concurrent.futures.Future`` that makes its Condition only
when a thread needs it; every sequence of operations must end as on the
standard one. When the pool is otherwise idle, result() reads the call's result
itself instead of waiting for the manager thread; anything else the manager
must do ends that at once. Functions pickled by name are pickled once and
resolved by name in the worker; that must stay invisible, including when a
name is rebound.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import functools
import itertools
import os
import re
import sys
import threading
import time

import api_funcs
import pytest
from api_funcs import add, die, getpid, ident, outcome, raised, side_by_side, sleep_then

import pyexec
from pyexec._future import Future


class Boom(Exception):
    """The exception the state-machine test sets."""


def _ops(calls: list):
    """The operations a caller can make on a future, each as name -> fn(future)."""
    return {
        "cancel": lambda f: f.cancel(),
        "running": lambda f: f.set_running_or_notify_cancel(),
        "result": lambda f: f.set_result(1),
        "exception": lambda f: f.set_exception(Boom("x")),
        "get": lambda f: f.result(timeout=0),
        "get_exc": lambda f: repr(f.exception(timeout=0)),
        "callback": lambda f: f.add_done_callback(lambda g: calls.append(g.done())),
        "repr": lambda f: re.sub(r"0x[0-9a-f]+", "ADDR", repr(f)),
    }


def _play(cls, seq: tuple) -> list:
    """Apply seq to a fresh cls() and record every outcome and the state after it
    (read as _state: running() and cancelled() would make the Condition)."""
    calls: list = []
    ops = _ops(calls)
    f = cls()
    out = []
    for name in seq:
        r = raised(lambda: ops[name](f))  # noqa: B023 - called at once
        if r[0] == "err" and r[1] is not cf.TimeoutError:
            r = ("err", r[1])  # the stdlib's messages name the future's address
        out.append((name, r, f._state, f.done(), list(calls)))
    return out


@pytest.mark.timeout(60)
def test_every_sequence_of_operations_ends_as_on_the_stdlib_future():
    """All sequences of up to 4 operations: same returns, errors, states, callbacks, reprs."""
    names = list(_ops([]))
    n = 0
    for k in range(1, 5):
        for seq in itertools.product(names, repeat=k):
            assert _play(Future, seq) == _play(cf.Future, seq), seq
            n += 1
    assert n == sum(len(names) ** k for k in range(1, 5))


def test_it_is_a_concurrent_futures_future():
    """isinstance holds and the class is named Future, as code that checks either expects."""
    f = Future()
    assert isinstance(f, cf.Future)
    assert type(f).__name__ == "Future"
    assert repr(f).startswith("<Future at 0x") and "state=pending" in repr(f)


@pytest.mark.timeout(60)
def test_submit_returns_a_future_by_name_and_type():
    """submit's future (which is also the pool's record of the call) looks like
    the standard one to a caller: isinstance, class name, repr."""
    with pyexec.ProcessPoolExecutor(1) as ex:
        f = ex.submit(ident, 1)
        assert f.result(timeout=30) == 1
        assert isinstance(f, cf.Future) and type(f).__name__ == "Future"
        assert re.fullmatch(r"<Future at 0x[0-9a-f]+ state=finished returned int>", repr(f))
        bad = ex.submit(ident, lambda: None)  # cannot be pickled: fails alone
        assert type(bad).__name__ == "Future" and bad.exception(timeout=30) is not None


@pytest.mark.timeout(60)
def test_settling_races_waiters_and_callbacks():
    """A thread settles while others wait, call wait/as_completed or add a callback:
    every waiter wakes and every callback runs once, however the race falls."""
    for i in range(300):
        f = Future()
        seen: list = []
        start = threading.Barrier(4)

        def waiter(f=f, start=start, seen=seen):
            start.wait()
            seen.append(("result", f.result(timeout=10)))

        def waits(f=f, start=start, seen=seen):
            start.wait()
            done, _ = cf.wait([f], timeout=10)
            seen.append(("wait", len(done)))

        def callback(f=f, start=start, seen=seen):
            start.wait()
            f.add_done_callback(lambda g: seen.append(("cb", g.result())))

        threads = [threading.Thread(target=t) for t in (waiter, waits, callback)]
        for t in threads:
            t.start()
        start.wait()
        if i % 2:
            assert f.set_running_or_notify_cancel()
        f.set_result(i)
        for t in threads:
            t.join(10)
        assert sorted(seen) == [("cb", i), ("result", i), ("wait", 1)], i
        assert list(cf.as_completed([f], timeout=1)) == [f]


@pytest.mark.timeout(60)
def test_cancel_races_running():
    """cancel and set_running_or_notify_cancel from two threads: exactly one wins."""
    for _ in range(500):
        f = Future()
        got: dict = {}
        t = threading.Thread(target=lambda f=f, got=got: got.__setitem__("cancel", f.cancel()))
        t.start()
        running = f.set_running_or_notify_cancel()
        t.join(10)
        assert running != got["cancel"]
        assert f.cancelled() == got["cancel"]


def test_settle_fast_leaves_waited_on_cancelled_and_map_items_to_the_standard_path():
    """settle_fast sets only futures no thread waits on and not yet done; it
    hands back the rest, which then settle (or fail to) as the standard way."""
    from types import SimpleNamespace

    from pyexec._future import settle_fast

    plain, running, waited, cancelled, done = (Future() for _ in range(5))
    running.set_running_or_notify_cancel()
    waited.add_done_callback(lambda f: None)  # makes its Condition
    cancelled.cancel()
    done.set_result("first")
    boom = Boom("x")
    items = [
        (SimpleNamespace(future=plain), 1, None),
        (SimpleNamespace(future=running), None, boom),
        (SimpleNamespace(future=waited), 3, None),
        (SimpleNamespace(future=cancelled), 4, None),
        (SimpleNamespace(future=done), 5, None),
        (SimpleNamespace(future=None), 6, None),
    ]
    rest = settle_fast(items)
    assert [item[1] for item in rest] == [3, 4, 5, 6]
    assert plain.result(timeout=0) == 1 and running.exception(timeout=0) is boom
    assert not waited.done() and cancelled.cancelled() and done.result(timeout=0) == "first"


# ---- result() read in the caller's thread ------------------------------------------


def _callback_threads(ex, n: int = 20) -> set[int]:
    """Threads that ran the done-callbacks of n sequential round trips (added
    while each call runs, before result() is called), each started once the
    manager sleeps: it has nothing else to do (on a busy machine it could still
    be finishing the last round trip's work, and then read the result itself)."""
    seen = set()
    ex.submit(ident, 0).result(timeout=30)  # the first call waits for a worker to start
    mgr = ex._mgr
    for i in range(n):
        end = time.monotonic() + 10
        while not mgr.sleeping and time.monotonic() < end:
            time.sleep(0.001)
        f = ex.submit(sleep_then, 0.01, i)
        f.add_done_callback(lambda _f: seen.add(threading.get_ident()))
        assert f.result(timeout=30) == i
    return seen


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll only (Linux)")
def test_idle_pool_result_is_read_by_the_waiting_thread(ctx, monkeypatch):
    """With nothing else to do, the thread in result() reads its result itself:
    its callbacks run there."""
    monkeypatch.setenv("PYEXEC_WAITER", "epoll")
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert _callback_threads(ex) == {threading.get_ident()}


@pytest.mark.timeout(60)
def test_poll_backend_result_is_read_by_the_manager(monkeypatch):
    """The poll backend's set cannot change under a waiting thread: no helping."""
    monkeypatch.setenv("PYEXEC_WAITER", "poll")
    with pyexec.ProcessPoolExecutor(2) as ex:
        assert threading.get_ident() not in _callback_threads(ex)


def _wait_by_callback(f: Future) -> bool:
    ran = threading.Event()
    f.add_done_callback(lambda _f: ran.set())
    return ran.wait(10)


def _wait_by_polling_done(f: Future) -> bool:
    end = time.monotonic() + 10
    while not f.done() and time.monotonic() < end:
        time.sleep(0.001)
    return f.done()


_OTHER_WAITS = {
    "callback": _wait_by_callback,
    "done": _wait_by_polling_done,
    "wait": lambda f: f in cf.wait([f], timeout=10).done,
    "as_completed": lambda f: next(cf.as_completed([f], timeout=10)) is f,
    "exception": lambda f: f.exception(timeout=10) is None,
    "running": lambda f: f.running() and _wait_by_polling_done(f),
}


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll only (Linux)")
@pytest.mark.parametrize("how", sorted(_OTHER_WAITS))
def test_call_behind_a_finished_help_is_seen_by_every_wait(how, monkeypatch):
    """After a helped result() the worker's result fd stays out of the manager's
    waiter; the next call submit hands that worker is read by nobody but its
    own result(). Any other way of waiting for it must still see it finish."""
    monkeypatch.setenv("PYEXEC_WAITER", "epoll")
    with pyexec.ProcessPoolExecutor(1) as ex:
        f = None
        for _ in range(200):  # until a helped result() and a handed-over call
            ex.submit(ident, 0).result(timeout=30)
            mgr = ex._mgr
            if not mgr.masked:
                continue
            deadline = time.monotonic() + 1  # the manager back in its wait, if not yet
            while not mgr.sleeping and time.monotonic() < deadline:
                time.sleep(0.001)
            f = ex.submit(sleep_then, 0.05, "x")
            if f._pyexec_task.where is not None:
                break
            f.result(timeout=30)  # the manager woke meanwhile and took it: again
            f = None
        assert f is not None, "no call was handed over by submit behind a helped result()"
        assert _OTHER_WAITS[how](f)
        assert f.result(timeout=0) == "x"


@pytest.mark.timeout(60)
def test_waiting_thread_gives_way_to_other_work(ctx):
    """A thread waiting on a long call does not hold up another thread's calls:
    they are dispatched and settled while the long call still runs (on the
    second worker, started meanwhile: not queued behind the long call)."""
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        ex.submit(ident, 0).result(timeout=30)  # a worker up, the manager asleep
        long = ex.submit(sleep_then, 3, "long")
        waiter = threading.Thread(target=long.result, kwargs={"timeout": 30})
        waiter.start()
        time.sleep(0.3)  # the waiter is in result(), helping
        got = [ex.submit(add, i, 1).result(timeout=2) for i in range(20)]
        assert not long.done()  # the tiny calls did not wait for it
        waiter.join(30)
    assert got == list(range(1, 21))


@pytest.mark.timeout(60)
def test_waiting_thread_timeout_then_result(ctx):
    """result(timeout) of a running call times out on time; a later result() gets it."""
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        ex.submit(ident, 0).result(timeout=30)
        f = ex.submit(sleep_then, 1.0, "late")
        t0 = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            f.result(timeout=0.2)
        assert time.monotonic() - t0 >= 0.2
        assert f.result(timeout=30) == "late"


@pytest.mark.timeout(60)
def test_worker_death_while_a_thread_waits(ctx):
    """The waiting thread sees the death as the stdlib reports it: BrokenProcessPool."""

    def scenario(cls):
        with cls(1, mp_context=ctx) as ex:
            ex.submit(ident, 0).result(timeout=30)
            return raised(lambda: ex.submit(die, 3).result(timeout=30))[:2]

    got = side_by_side(scenario)
    assert got["pyexec"] == got["stdlib"] == ("err", cf.process.BrokenProcessPool)


@pytest.mark.timeout(60)
def test_terminate_task_while_a_thread_waits(ctx):
    """terminate_task from another thread ends a helped wait with TaskTerminated."""
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        ex.submit(ident, 0).result(timeout=30)
        f = ex.submit(sleep_then, 30)
        threading.Timer(0.3, ex.terminate_task, (f,)).start()
        with pytest.raises(pyexec.TaskTerminated):
            f.result(timeout=30)
        assert ex.submit(add, 1, 2).result(timeout=30) == 3


# ---- the function cache ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_callables_of_every_kind(ctx):
    """Plain and builtin functions (cached by name) and callables that are not
    (bound methods, partials, classes) all run, repeatedly, with their own args
    and keyword arguments (a named call without them travels without them)."""
    calls = [
        (ident, (1,), {}),
        (add, (2, 3), {}),
        (os.getpid, (), {}),
        ("a-b".split, ("-",), {}),
        (functools.partial(add, 10), (1,), {}),
        (dict, (), {}),
        (abs, (-4,), {}),
        (add, (2,), {"b": 7}),
        (add, (), {"a": "x", "b": "y"}),
        (dict, (), {"k": 1}),
        (functools.partial(add, b=1), (5,), {}),
    ]
    want = [1, 5, None, ["a", "b"], 11, {}, 4, 9, "xy", {"k": 1}, 6]
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        for _ in range(3):
            futs = [ex.submit(fn, *args, **kwargs) for fn, args, kwargs in calls]
            got = [f.result(timeout=30) for f in futs]
            assert got[2] != os.getpid()
            got[2] = None
            assert got == want


class _Color(enum.IntEnum):
    RED = 1


class _Text(str):
    pass


# Plain values (results travel as marshal data), edge ones included, and
# look-alikes that are not plain (subclasses, containers: pickled).
_VALUES = [
    0, -1, 2**100, -(2**63), True, False, None, 0.0, -0.0, float("inf"), 1e-310,
    "", "\u00e9", "\ud800", b"", b"\x00\xff", _Color.RED, _Text("t"), (1, "a"), [2], {"k": b"v"},
]  # fmt: skip


def _typed(value: object) -> tuple:
    """A value as comparable data that tells types and the sign of zero apart."""
    if isinstance(value, float):
        return (float, repr(value))
    return (type(value), value)


@pytest.mark.timeout(60)
def test_plain_values_cross_unchanged(ctx):
    """Results sent as marshal data (exact int, float, str, bytes, bool, None) and
    the rest (pickled) come back with the same type and value as in the stdlib."""

    def scenario(cls):
        with cls(2, mp_context=ctx) as ex:
            one = [ex.submit(ident, v) for v in _VALUES]
            mixed = ex.submit(api_funcs.add3, 1, _Text("x"), 2.5)
            nan = ex.submit(ident, float("nan")).result(timeout=30)
            return [_typed(f.result(timeout=30)) for f in one], outcome(mixed), repr(nan)

    got = side_by_side(scenario)
    assert got["pyexec"] == got["stdlib"]
    assert got["pyexec"][0] == [_typed(v) for v in _VALUES]


def test_worker_marshals_plain_results_only():
    """The worker's result payload: marshal data flagged MARSHAL for a plain
    value; a pickle, unflagged, for anything else; both load to the value."""
    import marshal
    import pickle

    from pyexec import _frames as ch
    from pyexec._worker import PLAIN, _dumps_result

    for value in _VALUES:
        payload, kind, flags = _dumps_result(value, pickle.dumps, pickle.HIGHEST_PROTOCOL)
        plain = type(value) in PLAIN
        assert kind == ch.KIND_RESULT and flags == (ch.FLAG_MARSHAL if plain else 0)
        back = marshal.loads(payload) if plain else pickle.loads(payload)
        assert _typed(back) == _typed(value)


def test_spin_backs_off_while_polls_come_up_empty(monkeypatch):
    """One empty poll changes nothing; from the second in a row, the next waits
    skip polling, 1, 2, 4, ... up to SPIN_SKIP_MAX; a poll that finds data
    starts afresh; with SPIN 0 no wait polls."""
    from pyexec import _frames as ch

    monkeypatch.setattr(ch, "SPIN", 20e-6)
    spin = ch.Spin()
    polled = []
    for _ in range(300):  # the other side never answers while this one polls
        polled.append(spin.first())
        if polled[-1]:
            spin.missed()
    runs = "".join("p" if p else "." for p in polled)
    assert runs.startswith("pp.p..p....p........p")
    gaps = [len(g) for g in runs.split("p")[1:-1]]
    assert max(gaps) == ch.SPIN_SKIP_MAX and gaps[-1] == ch.SPIN_SKIP_MAX
    while not spin.first():
        pass
    spin.found()  # the poll paid: the next empty one is again forgiven
    spin.missed()
    assert spin.first() and spin.first()
    monkeypatch.setattr(ch, "SPIN", 0.0)
    assert not ch.Spin().first()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spin", ["0", "20", "1000000", "-1", "fast"])
def test_spin_setting(spin):
    """PYEXEC_SPIN_US: 0 turns polling before sleeping off, any value up to a
    second works (long calls, short ones, a result() with a timeout shorter
    than the spin); anything else fails at import with a message."""
    import subprocess

    code = (
        "import multiprocessing as mp, time, concurrent.futures as cf, pyexec, api_funcs\n"
        "with pyexec.ProcessPoolExecutor(2, mp_context=mp.get_context('fork')) as ex:\n"
        "    got = [ex.submit(api_funcs.ident, i).result() for i in range(200)]\n"
        "    assert got == list(range(200))\n"
        "    f = ex.submit(api_funcs.sleep_then, 0.3, 'late')\n"
        "    t = time.monotonic()\n"
        "    try:\n"
        "        f.result(timeout=0.01)\n"
        "    except cf.TimeoutError:\n"
        "        pass\n"
        "    waited = time.monotonic() - t\n"
        "    assert f.result() == 'late'\n"
        "print('ok', waited < 0.25)\n"
    )
    env = dict(os.environ, PYEXEC_SPIN_US=spin, PYTHONPATH=os.path.dirname(api_funcs.__file__))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=100
    )
    if spin in ("-1", "fast"):
        assert proc.returncode != 0 and "PYEXEC_SPIN_US must be" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["ok", "True"], proc.stdout


@pytest.mark.timeout(60)
def test_rebound_name_fails_as_in_the_stdlib(ctx):
    """After its module's name is rebound, a function no longer pickles by name:
    the submit fails as in the stdlib, though it was sent (and cached) before."""

    def scenario(cls):
        with cls(1, mp_context=ctx) as ex:
            first = ex.submit(api_funcs.ident, 1).result(timeout=30)
            old = api_funcs.ident
            api_funcs.ident = api_funcs.add
            try:
                r = raised(lambda: ex.submit(old, 1).result(timeout=30))
            finally:
                api_funcs.ident = old
            return first, r[:2], ex.submit(old, 2).result(timeout=30)

    got = side_by_side(scenario)
    assert got["pyexec"] == got["stdlib"]
    assert got["pyexec"][1][0] == "err"


def _rebind_in_worker() -> int:
    """Rebind api_funcs.getpid in this worker to a function that returns -1."""
    api_funcs.getpid = lambda: -1
    return os.getpid()


@pytest.mark.timeout(60)
def test_worker_resolves_the_name_each_call(ctx):
    """A task that rebinds a function's name in the worker changes what the next
    call by that name runs, as unpickling by name does in the stdlib."""

    def scenario(cls):
        with cls(1, mp_context=ctx) as ex:
            before = ex.submit(getpid).result(timeout=30) > 0
            ex.submit(_rebind_in_worker).result(timeout=30)
            return before, ex.submit(getpid).result(timeout=30)

    got = side_by_side(scenario)
    assert got["pyexec"] == got["stdlib"] == (True, -1)


@pytest.mark.timeout(60)
def test_settled_future_goes_without_the_collector(ctx):
    """A future and the pool's record of its call refer to each other until it
    settles; then the cycle is broken, so dropping the future frees both at once
    (with the collector off), for plain results, errors and cancelled calls."""
    import gc
    import weakref

    def freed(ref) -> bool:
        deadline = time.monotonic() + 5  # the manager may hold it for a moment
        while ref() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        return ref() is None

    with pyexec.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        ex.submit(ident, 0).result(timeout=30)
        gc.disable()
        try:
            f = ex.submit(ident, 1)
            assert f.result(timeout=30) == 1
            ok = weakref.ref(f)
            f = ex.submit(api_funcs.raise_custom, "x")
            assert isinstance(f.exception(timeout=30), api_funcs.CustomError)
            err = weakref.ref(f)
            slow = ex.submit(sleep_then, 1.0)
            time.sleep(0.3)  # past WINDOW_PAIR: nothing more is queued behind it
            f = ex.submit(ident, 2)
            assert f.cancel()
            cancelled = weakref.ref(f)
            slow.result(timeout=30)
            del f
            assert freed(ok) and freed(err) and freed(cancelled)
        finally:
            gc.enable()
