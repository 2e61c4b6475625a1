"""CPython's own process-pool tests, run against pyexec (issue 14, point 2).

One pytest item per (stdlib test, start method). The stdlib tests run through
unittest in tests/cpython_suite.py, one process per start method (the three
start together on first use), with pyexec's class in place of
``concurrent.futures.ProcessPoolExecutor``; each item reports its own test's
outcome from there. Only tests that read the standard library's private state
or mock its internals are left out, each named in LEFT_OUT with its reason.
Known pyexec bugs are strict xfails in KNOWN_FAILING (a fix turns them into
failures: remove the entry then), or non-strict ones in KNOWN_FLAKY when the
test passes now and then by timing; differences pyexec makes on purpose (see the
README) are strict xfails in BY_DESIGN. A key is ``Class.test_name`` (the class
without its start method, as cpython_suite.key_of names it), optionally
followed by ``[method]`` to apply to one start method only.

    pytest tests/test_cpython_suite.py           # the running interpreter's tests
    PYEXEC_CPYTHON_TESTS=/some/python3.x/test pytest tests/test_cpython_suite.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

RUNNER = Path(__file__).with_name("cpython_suite.py")
METHODS = ("fork", "forkserver", "spawn")
PER_TEST_TIMEOUT = 60.0  # the runner's watchdog: a stdlib test hung this long is a failure
RUN_TIMEOUT = 300.0  # all of one start method's tests, including restarts after a hang
ATTEMPTS = 3  # runner starts per start method (a hang ends a runner; the rest run in the next)

_PROCESSES = "reads the stdlib's private `_processes` (its worker Process objects)"
LEFT_OUT: dict[str, str] = {
    "ProcessPoolExecutorTest.test_killed_child": _PROCESSES + " to pick a worker to kill",
    "ProcessPoolExecutorTest.test_saturation": _PROCESSES + " to count workers",
    "ProcessPoolExecutorTest.test_idle_process_reuse_one": _PROCESSES + " to count workers",
    "ProcessPoolExecutorTest.test_idle_process_reuse_multiple": _PROCESSES + " to count workers",
    "ProcessPoolExecutorTest.test_max_tasks_per_child[forkserver]": _PROCESSES,
    "ProcessPoolExecutorTest.test_max_tasks_per_child[spawn]": _PROCESSES,
    "ProcessPoolExecutorTest.test_python_finalization_error": (
        "mocks threading's private thread-start function so that the stdlib's second "
        "thread (its queue feeder) fails; pyexec starts no such thread"
    ),
    "ProcessPoolShutdownTest.test_processes_terminate": _PROCESSES,
    "ProcessPoolShutdownTest.test_context_manager_shutdown": _PROCESSES,
    "ProcessPoolShutdownTest.test_del_shutdown": (
        "reads `_processes`, `_call_queue` and `_executor_manager_thread`"
    ),
    "ProcessPoolShutdownTest.test_shutdown_no_wait": (
        "reads `_processes`, `_call_queue` and `_executor_manager_thread`"
    ),
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle": "reads `_executor_manager_thread`",
}
if os.environ.get("PYEXEC_CPYTHON_TESTS"):  # tests copied from elsewhere (cpython_suite.ENV_DIR)
    for _m in ("forkserver", "spawn"):
        LEFT_OUT[f"ProcessPoolShutdownTest.test_interpreter_shutdown[{_m}]"] = (
            "with PYEXEC_CPYTHON_TESTS only: the workers of its isolated (-I) child interpreter "
            "cannot import the copied test module"
        )

KNOWN_FAILING: dict[str, str] = {}

# Known bugs whose test passes now and then by timing: a non-strict xfail (a
# strict one would flake). Once fixed, the test passes every time: remove it.
KNOWN_FLAKY: dict[str, str] = {}

BY_DESIGN: dict[str, str] = {
    "ProcessPoolExecutorTest.test_max_tasks_per_child[fork]": (
        "README: max_tasks_per_child works under fork (the stdlib raises ValueError)"
    ),
    "ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": (
        "README: max_tasks_per_child without mp_context keeps the default start method "
        "(the stdlib switches to spawn)"
    ),
}


def _lookup(table: dict[str, str], key: str, method: str) -> str | None:
    return table.get(f"{key}[{method}]") or table.get(key)


def _list() -> tuple[dict[str, list[str]] | None, str]:
    """The runner's test keys by start method, or None and why not."""
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "list"], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return None, f"listing the stdlib tests failed:\n{proc.stdout}\n{proc.stderr}"
    listed = json.loads(proc.stdout.strip().splitlines()[-1])
    if "missing" in listed:
        return None, listed["missing"]
    return listed["tests"], ""


def _params() -> tuple[list, str]:
    """The pytest params, and why there are none (then one placeholder param)."""
    listed, why = _list()
    if listed is None:
        missing = why.startswith("this Python")
        mark = pytest.mark.skip(reason=why) if missing else ()
        return [pytest.param("<none>", "<none>", marks=mark, id="stdlib-tests-unavailable")], why
    params = []
    for method in METHODS:
        for key in listed[method]:
            marks = []
            if reason := _lookup(LEFT_OUT, key, method):
                marks.append(pytest.mark.skip(reason=f"left out: {reason}"))
            elif reason := _lookup(KNOWN_FAILING, key, method):
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            elif reason := _lookup(KNOWN_FLAKY, key, method):
                marks.append(pytest.mark.xfail(strict=False, reason=reason))
            elif reason := _lookup(BY_DESIGN, key, method):
                marks.append(pytest.mark.xfail(strict=True, reason=f"by design: {reason}"))
            params.append(pytest.param(key, method, marks=marks, id=f"{key}[{method}]"))
    if not params:
        why = "the stdlib test package holds no process-pool test"
        return [pytest.param("<none>", "<none>", id="stdlib-tests-unavailable")], why
    return params, ""


PARAMS, UNAVAILABLE = _params()


def _session_left(sid: int) -> list[int]:
    """Live processes still in the runner's session (it started its own)."""
    left = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except (OSError, psutil.NoSuchProcess):
            pass  # gone meanwhile
    return left


class _Run:
    """One start method's stdlib tests, run by cpython_suite.py in its own session."""

    def __init__(self, method: str, keys: list[str], folder: Path) -> None:
        self.method = method
        self.pending = keys
        self.folder = folder
        self.results: dict[str, dict] = {}
        self.notes: list[str] = []  # fixture errors, hangs, crashes: shown with missing results
        self.left_behind: list[int] = []
        self.attempt = 0
        self.deadline = time.monotonic() + RUN_TIMEOUT
        self.done = False
        self._start()

    def _start(self) -> None:
        self.attempt += 1
        stem = self.folder / f"{self.method}-{self.attempt}"
        only = stem.with_suffix(".only.json")
        only.write_text(json.dumps(self.pending))
        self.out = stem.with_suffix(".jsonl")
        self.log_path = stem.with_suffix(".log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(RUNNER), "run", "--method", self.method, "--out",
                 str(self.out), "--only", str(only), "--per-test-timeout", str(PER_TEST_TIMEOUT)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def _log_tail(self, n: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def _collect(self) -> None:
        """Read the runner's JSON lines; a test started and never ended hung or crashed it."""
        started = None
        if self.out.exists():
            for line in self.out.read_text().splitlines():
                rec = json.loads(line)
                if "fixture" in rec:
                    self.notes.append(f"{rec['fixture']}:\n{rec['detail']}")
                elif rec.get("event") == "start":
                    started = rec["key"]
                else:
                    self.results[rec["key"]] = rec
                    started = None
        if started is not None:
            self.results[started] = {
                "key": started, "outcome": "error", "seconds": None,
                "detail": f"the runner died in this test (exit {self.proc.returncode}; a hang "
                f"past {PER_TEST_TIMEOUT:.0f} s dumps every thread's stack):\n{self._log_tail()}",
            }  # fmt: skip
        self.pending = [k for k in self.pending if k not in self.results]

    def _reap(self) -> None:
        """Kill what the runner left in its session (a leak: it is reported)."""
        sid = self.proc.pid
        end = time.monotonic() + 5
        while (left := _session_left(sid)) and time.monotonic() < end:
            time.sleep(0.1)
        self.left_behind += left
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def finish(self) -> _Run:
        """Wait for the runner (restarting it after a hang); return self."""
        while not self.done:
            try:
                self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                self.notes.append(f"the whole run passed {RUN_TIMEOUT:.0f} s and was killed")
            self._collect()
            self._reap()
            if self.proc.returncode != 0 and not self.notes[-1:]:
                self.notes.append(f"runner exit {self.proc.returncode}:\n{self._log_tail()}")
            out_of_time = time.monotonic() >= self.deadline
            if not self.pending or self.attempt >= ATTEMPTS or out_of_time:
                self.done = True
            else:
                self._start()
        return self


@pytest.fixture(scope="module")
def runs():
    """Start every start method's runner at once; yield them by method."""
    keys: dict[str, list[str]] = {m: [] for m in METHODS}
    for p in PARAMS:
        key, method = p.values
        if method in keys and not _lookup(LEFT_OUT, key, method):
            keys[method].append(key)
    with tempfile.TemporaryDirectory(prefix="pyexec-cpython-suite-") as folder:
        started = {m: _Run(m, ks, Path(folder)) for m, ks in keys.items() if ks}
        yield started
        for run in started.values():  # even if an item was interrupted
            run.finish()
        _print_times(started)


def _print_times(started: dict[str, _Run]) -> None:
    """The slowest stdlib tests, for the record (shown with -s)."""
    rows = [
        (r["seconds"], f"{k}[{m}]")
        for m, run in started.items()
        for k, r in run.results.items()
        if r.get("seconds")
    ]
    rows.sort(reverse=True)
    print("\nslowest stdlib tests (s):", ", ".join(f"{n} {s:.1f}" for s, n in rows[:8]))


@pytest.mark.allow_leaks  # the runner is its own session; _Run checks it for leftovers
@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize(("key", "method"), PARAMS)
def test_stdlib(key: str, method: str, runs) -> None:
    """One stdlib process-pool test under one start method, on pyexec."""
    if key == "<none>":
        pytest.fail(UNAVAILABLE, pytrace=False)
    run = runs[method].finish()
    result = run.results.get(key)
    if result is None:
        notes = "\n\n".join(run.notes) or "(no note)"
        pytest.fail(f"no result for {key} under {method}:\n{notes}", pytrace=False)
    outcome, detail = result["outcome"], result["detail"]
    if outcome == "skip":
        pytest.skip(f"the stdlib test skips itself: {detail}")
    if outcome == "xfail":
        pytest.xfail(f"a stdlib expectedFailure: {detail[-300:]}")
    if outcome != "pass":
        pytest.fail(f"{outcome} ({result['seconds']} s):\n{detail}", pytrace=False)


@pytest.mark.allow_leaks
@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize("method", METHODS)
def test_runner_left_no_process(method: str, runs) -> None:
    """After the stdlib tests of one start method, nothing they started is still alive."""
    if method not in runs:
        pytest.skip("no stdlib test ran under this start method")
    run = runs[method].finish()
    assert not run.left_behind, f"processes left by the {method} run: {run.left_behind}"
