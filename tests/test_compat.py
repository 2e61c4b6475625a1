"""pyexec next to concurrent.futures.ProcessPoolExecutor: same program, same outcome (issue 2).

Errors that cross the process boundary, abrupt worker deaths, initializers,
the default start method, and functions defined in a script's __main__. Each
scenario runs on the standard library's executor and on pyexec, under every
start method, and the outcomes (results, exception types and args) are compared.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from concurrent.futures.process import _RemoteTraceback
from pathlib import Path

import pytest
from api_funcs import (
    CustomError,
    UnloadableArg,
    add,
    bad_init,
    die,
    getpid,
    ident,
    init_global,
    kill_self,
    outcome,
    raise_custom,
    raise_unloadable,
    raise_unpicklable,
    raised,
    read_global,
    return_lock,
    segfault,
    side_by_side,
    sleep_then,
)

import pyexec

SCRIPTS = Path(__file__).parent / "scripts"


def _kind(result: tuple) -> tuple:
    """An outcome without the exception's args (for messages that hold addresses or pids)."""
    return result[:2]


# ---- 4. errors that cross the boundary ------------------------------------------


@pytest.mark.timeout(30)
def test_exception_type_args_and_remote_traceback(ctx, method):
    """fn's exception comes back with its type and args, the remote traceback as __cause__."""

    def scenario(cls):
        with cls(1, mp_context=ctx) as ex:
            f = ex.submit(raise_custom, 1, "two", {"three": 3})
            exc = f.exception(30)
            cause = exc.__cause__
            it = ex.map(raise_custom, ["in map"])
            in_map = raised(lambda: next(it))
            return (
                type(exc),
                exc.args,
                type(cause),
                "Traceback (most recent call last)" in str(cause),
                "in raise_custom" in str(cause),
                "CustomError: (1, 'two', {'three': 3})" in str(cause),
                in_map,
            )

    got = side_by_side(scenario, stdlib=method == "fork")
    assert got["pyexec"] == got.get("stdlib", got["pyexec"])
    assert got["pyexec"] == (
        CustomError,
        (1, "two", {"three": 3}),
        _RemoteTraceback,
        True,
        True,
        True,
        ("err", CustomError, ("in map",)),
    )


@pytest.mark.timeout(30)
def test_pickling_failures_fail_only_their_future(ctx, method):
    """An argument (lambda, lock), fn (lambda), result (lock) or exception that cannot be
    pickled fails that call alone, with the stdlib's exception type; the pool goes on."""

    def scenario(cls):
        with cls(1, mp_context=ctx) as ex:
            args = [ex.submit(ident, lambda: 1), ex.submit(ident, threading.Lock())]
            fn = ex.submit(lambda: 1)
            good = ex.submit(add, 1, 2)
            in_map = list(map(_kind, _drain(ex.map(ident, [1, threading.Lock(), 3], timeout=30))))
            result = ex.submit(return_lock).exception(30)
            exc = outcome(ex.submit(raise_unpicklable, "holds a lock"))
            return {
                "args": [_kind(outcome(f)) for f in args],
                "fn": _kind(outcome(fn)),
                "good": outcome(good),
                "map": in_map,
                "result": (type(result), type(result.__cause__)),
                "exception": exc,
                "after": outcome(ex.submit(add, 2, 2)),
            }

    got = side_by_side(scenario, stdlib=method == "fork")
    if "stdlib" in got:
        assert got["pyexec"] == got["stdlib"]
    mine = got["pyexec"]
    assert mine["args"][0][0] == "err" and mine["args"][1] == ("err", TypeError)
    assert mine["fn"][0] == "err"
    assert mine["good"] == ("ok", 3) and mine["after"] == ("ok", 4)
    assert mine["map"] == [("ok", 1), ("err", TypeError)]
    assert mine["result"] == (TypeError, _RemoteTraceback)
    assert mine["exception"][:2] == ("err", TypeError)


def _drain(it) -> list[tuple]:
    """Outcomes of iterating a map until it ends or raises."""
    out = []
    while True:
        r = raised(lambda: next(it))
        if r[0] == "err" and r[1] is StopIteration:
            return out
        out.append(r)
        if r[0] == "err":
            return out


@pytest.mark.timeout(30)
def test_unloadable_exception_and_argument_fail_only_their_future(ctx):
    """Known deviation (the stdlib breaks the pool): an exception that cannot be
    unpickled in the parent, or an argument that cannot be unpickled in the
    worker, fails its own call only, through submit and through map."""
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        f = ex.submit(raise_unloadable, "a")
        assert isinstance(f.exception(30), pickle.UnpicklingError)
        g = ex.submit(ident, UnloadableArg())
        err = g.exception(30)
        # An UnpicklingError that names the call and what the argument raised; as for
        # every error from a worker, the remote traceback is its __cause__.
        assert isinstance(err, pickle.UnpicklingError), repr(err)
        assert "could not be unpickled" in str(err)
        assert "refuses to be unpickled" in str(err)
        assert "RuntimeError" in str(err.__cause__)
        assert ex.submit(add, 1, 1).result(30) == 2
        in_map = list(map(_kind, _drain(ex.map(ident, [1, UnloadableArg(), 3], timeout=30))))
        assert in_map == [("ok", 1), ("err", pyexec.CallUnpicklingError)]
        # Also a BrokenProcessPool, which the standard library raises there.
        assert issubclass(in_map[1][1], pickle.UnpicklingError)
        assert issubclass(in_map[1][1], pyexec.BrokenProcessPool)
        assert ex.submit(add, 1, 2).result(30) == 3


# ---- 5. abrupt worker death -------------------------------------------------------

DEATHS = {
    "exit3": (die, "exit code 3"),
    "sigkill": (kill_self, "signal SIGKILL"),
    "segfault": (segfault, "signal SIGSEGV"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("death", sorted(DEATHS))
def test_abrupt_worker_death_breaks_the_pool(ctx, method, death):
    """Every pending future fails with BrokenProcessPool naming the worker and how it
    died; a later submit raises BrokenProcessPool; shutdown returns."""
    killer, how = DEATHS[death]

    def scenario(cls):
        ex = cls(1, mp_context=ctx)
        try:
            pid = ex.submit(getpid).result(30)
            doomed = ex.submit(killer)
            others = [ex.submit(sleep_then, 0.01, i) for i in range(3)]
            results = [outcome(f) for f in [doomed, *others]]
            later = raised(lambda: ex.submit(ident, 1))
        finally:
            ex.shutdown(wait=True)
        return pid, results, later

    got = side_by_side(scenario, stdlib=method == "fork")
    for name, (_pid, results, later) in got.items():
        assert [_kind(r) for r in results] == [("err", pyexec.BrokenProcessPool)] * 4, name
        assert _kind(later) == ("err", pyexec.BrokenProcessPool), name
    pid, results, _later = got["pyexec"]
    for r in results:
        msg = r[2][0]
        assert f"pid {pid}" in msg and how in msg, msg


# ---- 11. initializer --------------------------------------------------------------


@pytest.mark.timeout(30)
def test_initializer_failure_breaks_the_pool(ctx, method):
    """An initializer that raises: BrokenProcessPool, whose message says the initializer failed."""

    def scenario(cls):
        with cls(2, mp_context=ctx, initializer=bad_init, initargs=("no init",)) as ex:
            f = ex.submit(ident, 1)
            r = outcome(f)
            return r, raised(lambda: ex.submit(ident, 2))

    got = side_by_side(scenario, stdlib=method == "fork")
    for name, (r, _later) in got.items():
        assert _kind(r) == ("err", pyexec.BrokenProcessPool), name
    r, later = got["pyexec"]
    assert "initializer" in r[2][0] and "no init" in r[2][0], r
    assert _kind(later) == ("err", pyexec.BrokenProcessPool)


@pytest.mark.timeout(30)
def test_initializer_with_initargs_sets_a_global(ctx, method):
    """initializer(*initargs) runs in each worker before its calls."""

    def scenario(cls):
        with cls(2, mp_context=ctx, initializer=init_global, initargs=({"k": 42},)) as ex:
            return list(ex.map(read_global, range(8))), ex.submit(read_global).result(30)

    got = side_by_side(scenario, stdlib=method == "fork")
    assert got["pyexec"] == got.get("stdlib", got["pyexec"]) == ([{"k": 42}] * 8, {"k": 42})


# ---- 7. default start method --------------------------------------------------------


@pytest.mark.timeout(90)
def test_default_start_method_is_multiprocessing_default():
    """Without mp_context, workers start as multiprocessing.get_context() would start them:
    with the start method left unset, and with each one set by set_start_method."""
    settings = ["unset", "fork", "forkserver", "spawn"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPTS / "default_method.py"), setting],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for setting in settings
    ]
    rows = []
    for p in procs:
        out, err = p.communicate(timeout=80)
        assert p.returncode == 0, err
        rows.extend(json.loads(out))
    assert [r[0] for r in rows] == settings
    for setting, expected, got_pyexec, got_stdlib in rows:
        if setting != "unset":
            assert expected == setting
        assert got_pyexec == expected == got_stdlib, (setting, got_pyexec, got_stdlib)


def test_default_context_is_multiprocessing_get_context():
    """The executor's context is multiprocessing.get_context() when none is given."""
    import multiprocessing

    ex = pyexec.ProcessPoolExecutor(1)
    try:
        assert ex._mp_context is multiprocessing.get_context()
    finally:
        ex.shutdown()


# ---- 9. functions in a script's __main__, and the parent's sys.path ------------------


@pytest.mark.timeout(60)
def test_main_module_functions_and_sys_path(method, tmp_path):
    """A script's __main__ functions and classes work under every start method, and
    workers import a module reachable only through a sys.path entry added at run time."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "pathonly_mod.py").write_text("VALUE = 100\n")
    procs = {
        impl: subprocess.Popen(
            [sys.executable, str(SCRIPTS / "main_funcs.py"), impl, method, str(mods)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(tmp_path),
            env={**os.environ, "PYTHONPATH": ""},
        )
        # The stdlib reference runs where __main__ matters most: spawn.
        for impl in (("stdlib", "pyexec") if method == "spawn" else ("pyexec",))
    }
    out = {}
    for impl, p in procs.items():
        stdout, stderr = p.communicate(timeout=50)
        assert p.returncode == 0, (impl, stderr)
        out[impl] = json.loads(stdout)
    assert (
        out["pyexec"]
        == out.get("stdlib", out["pyexec"])
        == {
            "cube": [x**3 for x in range(6)],
            "point": 7,
            "path": 101,
        }
    )
