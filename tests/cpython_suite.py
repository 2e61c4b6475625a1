"""Run CPython's own process-pool tests against pyexec (issue 14): the runner.

The running interpreter's ``test.test_concurrent_futures`` (a package on 3.12+,
one module before) builds its process-pool test classes from mixins whose
``executor_type`` is ``concurrent.futures.ProcessPoolExecutor``, read when the
classes are created. So this runner puts pyexec's class there *before* it
imports the tests, and rewrites the child scripts of ``assert_python_ok`` that
import the executor by name; then it runs, through unittest, the tests of one
start method and writes one JSON line per test to ``--out``.

It runs in its own process, started by tests/test_cpython_suite.py (these
tests start many pools, stop the resource tracker, and change module state).

    python tests/cpython_suite.py list
    python tests/cpython_suite.py run --method fork --out res.jsonl [--only ids.json]

``list`` prints ``{"tests": {method: [key, ...]}}`` or ``{"missing": reason}``.
A key names a test apart from its start method: the class name without its
``ProcessPool{Fork,Forkserver,Spawn}`` prefix, a dot, the method name
(``ProcessPoolExecutorTest.test_map``, ``ExecutorDeadlockTest.test_crash_big_data``).
Each JSON line of ``run`` is ``{"event": "start", "key": k}`` when a test starts
and ``{"key", "outcome", "detail", "seconds"}`` when it ends; outcome is one of
pass, fail, error, skip, xfail, xpass. A test still running after
``--per-test-timeout`` seconds makes the runner dump every thread's stack to
stderr and exit: the caller sees a start without an end.

The tests come from the running interpreter's ``test`` package; where that
lacks ``test_concurrent_futures``, ``$PYEXEC_CPYTHON_TESTS`` may name a folder
holding a copy (e.g. another version's), which is then used with this
interpreter's ``test.support``.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import importlib
import importlib.util
import json
import os
import pkgutil
import sys
import threading
import time
import traceback
import unittest
from collections.abc import Iterator

PACKAGE = "test.test_concurrent_futures"
METHODS = ("fork", "forkserver", "spawn")
ENV_DIR = "PYEXEC_CPYTHON_TESTS"
# What the stdlib's child scripts import by name, and what they should import here.
_STDLIB_IMPORT = "from concurrent.futures import ProcessPoolExecutor"
_PYEXEC_IMPORT = "from pyexec import ProcessPoolExecutor"


def _extend_test_path() -> None:
    """Let $PYEXEC_CPYTHON_TESTS (a folder holding a test_concurrent_futures) supply it."""
    extra = os.environ.get(ENV_DIR)
    if extra:
        import test

        if extra not in test.__path__:
            test.__path__.append(extra)


def missing_reason() -> str | None:
    """Why the stdlib tests cannot run on this interpreter, or None if they can."""
    try:
        _extend_test_path()
        spec = importlib.util.find_spec(PACKAGE)
    except ImportError as exc:  # no `test` package at all
        return f"this Python has no `test` package ({exc}); it ships only with some builds"
    if spec is None:
        return (
            f"this Python ({sys.version.split()[0]}, {sys.prefix}) has a `test` package "
            f"but no `{PACKAGE}` (the 3.11.7 and 3.12.1 installs here lack it); "
            f"set {ENV_DIR} to a folder holding a copy of it to run it anyway"
        )
    return None


def _patch_executor() -> None:
    """Make ``concurrent.futures.ProcessPoolExecutor`` pyexec's, before the tests import."""
    import concurrent.futures

    import pyexec

    concurrent.futures.ProcessPoolExecutor = pyexec.ProcessPoolExecutor


def _redirect_scripts(module) -> None:
    """Child scripts that import the executor by name import pyexec's instead."""
    original = getattr(module, "assert_python_ok", None)
    if original is None:
        return

    replacement = _PYEXEC_IMPORT
    if os.environ.get(ENV_DIR):  # the child (run with -I) must find the tests there too
        replacement += f"; import test; test.__path__.append({os.environ[ENV_DIR]!r})"

    def assert_python_ok(*args, **env):
        args = tuple(
            a.replace(_STDLIB_IMPORT, replacement) if isinstance(a, str) else a for a in args
        )
        # A script naming the executor must now name pyexec's: if the stdlib
        # test changes its import, fail here rather than test the stdlib.
        if any(isinstance(a, str) and "ProcessPoolExecutor" in a for a in args):
            assert any(isinstance(a, str) and _PYEXEC_IMPORT in a for a in args), args
        return original(*args, **env)

    module.assert_python_ok = assert_python_ok


def _modules() -> list:
    """The stdlib test modules: each module of the package, or the one module."""
    pkg = importlib.import_module(PACKAGE)
    if not hasattr(pkg, "__path__"):
        return [pkg]
    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("test_")]
    return [importlib.import_module(f"{PACKAGE}.{n}") for n in sorted(names)]


def _flatten(suite) -> Iterator[unittest.TestCase]:
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from _flatten(t)
        else:
            yield t


def _method_of(test: unittest.TestCase) -> str | None:
    """The start method a process-pool test runs under; None for any other test."""
    import pyexec

    cls = type(test)
    if getattr(cls, "executor_type", None) is pyexec.ProcessPoolExecutor:
        return cls.ctx
    # FailingInitializerResourcesTest.test_spawn / test_forkserver run the
    # failing-initializer test class of that method (3.12+).
    name = test._testMethodName
    if cls.__name__ == "FailingInitializerResourcesTest":
        return name[len("test_") :] if name[len("test_") :] in METHODS else None
    return None


def key_of(test: unittest.TestCase) -> str:
    """The test's name without its start method (see the module docstring)."""
    cls = type(test).__name__
    for prefix in ("ProcessPoolForkserver", "ProcessPoolFork", "ProcessPoolSpawn"):
        if cls.startswith(prefix):
            cls = cls[len(prefix) :]
            break
    return f"{cls}.{test._testMethodName}"


def collect() -> dict[str, list[unittest.TestCase]]:
    """Every process-pool test, by start method, running on pyexec."""
    _patch_executor()
    loader = unittest.TestLoader()
    found: dict[str, list[unittest.TestCase]] = {m: [] for m in METHODS}
    for module in _modules():
        _redirect_scripts(module)
        for test in _flatten(loader.loadTestsFromModule(module)):
            method = _method_of(test)
            if method is not None:
                found[method].append(test)
    return found


class _Result(unittest.TestResult):
    """Writes a JSON line as each test starts and ends; arms a per-test watchdog."""

    def __init__(self, out, per_test_timeout: float) -> None:
        super().__init__()
        self._out = out
        self._timeout = per_test_timeout
        self._outcome: tuple[str, str] | None = None
        self._threads: set[threading.Thread] = set()
        self._t0 = 0.0

    def _write(self, record: dict) -> None:
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    def _set(self, outcome: str, detail: str = "") -> None:
        # A failing subtest or a failing tearDown after a pass overrides the pass.
        if self._outcome is None or self._outcome[0] in ("pass", "skip"):
            self._outcome = (outcome, detail)

    def startTest(self, test) -> None:
        super().startTest(test)
        self._outcome = None
        self._threads = set(threading.enumerate())
        self._t0 = time.monotonic()
        self._write({"event": "start", "key": key_of(test)})
        faulthandler.dump_traceback_later(self._timeout, exit=True, file=sys.stderr)

    def stopTest(self, test) -> None:
        outcome, detail = self._outcome or ("pass", "")
        seconds = round(time.monotonic() - self._t0, 3)
        self._write({"key": key_of(test), "outcome": outcome, "detail": detail, "seconds": seconds})
        super().stopTest(test)
        if outcome in ("fail", "error"):
            # A failed test may skip its own executor.shutdown() and leave the
            # pool in a reference cycle through the traceback. Collect it now
            # (pyexec shuts a collected pool down) and wait for the threads the
            # test started: else its live workers can hang a module fixture,
            # and its manager thread, ending during a later test, makes that
            # test's threading_cleanup() wait and warn.
            gc.collect()
            for t in set(threading.enumerate()) - self._threads:
                t.join(timeout=10)
        # Still armed between tests: a module fixture can hang too (waiting on
        # the resource tracker, say).
        faulthandler.dump_traceback_later(self._timeout, exit=True, file=sys.stderr)

    def addSuccess(self, test) -> None:
        self._set("pass")

    def addFailure(self, test, err) -> None:
        if not isinstance(test, unittest.TestCase):  # a module or class fixture
            return self.addError(test, err)
        self._set("fail", self._exc_info_to_string(err, test))

    def addError(self, test, err) -> None:
        if not isinstance(test, unittest.TestCase):  # setUpModule / tearDownModule, class fixtures
            self._write({"fixture": str(test), "detail": self._exc_info_to_string(err, test)})
            return
        self._set("error", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason) -> None:
        self._set("skip", reason)

    def addExpectedFailure(self, test, err) -> None:
        self._set("xfail", self._exc_info_to_string(err, test))

    def addUnexpectedSuccess(self, test) -> None:
        self._set("xpass", "unexpected success of a stdlib expectedFailure")

    def addSubTest(self, test, subtest, err) -> None:
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._set(kind, f"{subtest}: {self._exc_info_to_string(err, test)}")


def run(method: str, out_path: str, only: list[str] | None, per_test_timeout: float) -> int:
    """Run the tests of one start method (only those in `only` if given)."""
    tests = collect()[method]
    if only is not None:
        wanted = set(only)
        tests = [t for t in tests if key_of(t) in wanted]
    suite = unittest.TestSuite(tests)
    with open(out_path, "a", encoding="utf-8") as out:
        result = _Result(out, per_test_timeout)
        try:
            suite.run(result)
            faulthandler.cancel_dump_traceback_later()
        except BaseException:  # keep what was written; say why the rest is missing
            out.write(json.dumps({"fixture": "runner", "detail": traceback.format_exc()}) + "\n")
            raise
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="print the test keys by start method, as JSON")
    p = sub.add_parser("run", help="run one start method's tests")
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--out", required=True, help="JSON lines are appended here")
    p.add_argument("--only", help="a JSON file holding the list of keys to run")
    p.add_argument("--per-test-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    reason = missing_reason()
    if args.cmd == "list":
        if reason:
            print(json.dumps({"missing": reason}))
        else:
            found = collect()
            print(json.dumps({"tests": {m: [key_of(t) for t in ts] for m, ts in found.items()}}))
        return 0
    if reason:
        print(reason, file=sys.stderr)
        return 2
    only = None
    if args.only:
        with open(args.only, encoding="utf-8") as f:
            only = json.load(f)
    return run(args.method, args.out, only, args.per_test_timeout)


# At import, not in main(): workers started by spawn or forkserver import this
# module as their __main__ and must find the tests' functions where the parent did.
_extend_test_path()

if __name__ == "__main__":
    sys.exit(main())
