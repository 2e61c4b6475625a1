"""A standalone smoke test of an installed pyexec: python tests/smoke.py [--installed].

Run by cibuildwheel against each built wheel and by tests/test_wheels.py in
fresh venvs. It needs nothing but pyexec: it imports the compiled core, runs a
pool under every start method the platform has, and (Python 3.12+, with fork)
checks that replacing workers never makes CPython warn that a multi-threaded
process forked. Exits non-zero, with the reason, on any failure.

``--installed`` also insists that pyexec comes from an installation (no C
sources beside the package), so a run from a source tree cannot pass for a
wheel test.
"""

from __future__ import annotations

import argparse
import faulthandler
import multiprocessing
import os
import subprocess
import sys
import time

import pyexec

# Python 3.12+ warns (DeprecationWarning) when a process with more than one
# thread calls fork(); the text is fixed in CPython's posixmodule.c.
FORK_WARNING = "is multi-threaded, use of fork()"
# Each step (one start method, one probe) gets this long; a hang then prints
# every thread's stack and exits instead of stalling the caller.
STEP_SECONDS = 90


def watchdog(seconds: float = STEP_SECONDS) -> None:
    """(Re)arm the per-step watchdog."""
    faulthandler.dump_traceback_later(seconds, exit=True)


def square(x: int) -> int:
    """A task: the square of x."""
    return x * x


def fail(x: int) -> int:
    """A task that raises, to check that the exception comes back."""
    raise ValueError(f"bad {x}")


def pid(_: object = None) -> int:
    """A task: the pid of the worker running it."""
    return os.getpid()


def check(cond: bool, what: str) -> None:
    """Exit with a message unless cond holds."""
    if not cond:
        print(f"smoke: FAILED: {what}", file=sys.stderr, flush=True)
        sys.exit(1)


def methods() -> list[str]:
    """The start methods to exercise here (fork is unsafe on macOS)."""
    have = multiprocessing.get_all_start_methods()
    wanted = (
        ["spawn", "forkserver"] if sys.platform == "darwin" else ["fork", "forkserver", "spawn"]
    )
    return [m for m in wanted if m in have]


def check_install(installed: bool) -> None:
    """Report where pyexec and its core come from; with installed, refuse a source tree."""
    from pyexec import _core, _native

    pkg = os.path.dirname(os.path.abspath(pyexec.__file__))
    print(f"smoke: Python {sys.version.split()[0]} ({sys.executable})")
    print(f"smoke: pyexec {pyexec.__version__} from {pkg}")
    stamp = _native.ffi.string(_native.lib.px_build_stamp()).decode()
    print(f"smoke: core {os.path.basename(_core.__file__)}, stamp {stamp!r}")
    check(stamp.split(" ")[0] == pyexec.__version__, f"core stamp {stamp!r} is not this version")
    if installed:
        csrc = os.path.join(os.path.dirname(os.path.dirname(pkg)), "csrc")
        check(not os.path.isdir(csrc), f"pyexec comes from a source tree ({pkg}), not an install")
        check(not os.path.exists(os.path.join(pkg, "_build.py")), "the wheel ships the builder")


def check_pool(method: str) -> None:
    """Submit, map, an exception and worker recycling under one start method."""
    watchdog()
    ctx = multiprocessing.get_context(method)
    t0 = time.monotonic()
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        check(ex.submit(square, 7).result(timeout=60) == 49, f"{method}: submit")
        check(
            list(ex.map(square, range(200), chunksize=7)) == [x * x for x in range(200)],
            f"{method}: map",
        )
        try:
            ex.submit(fail, 3).result(timeout=60)
        except ValueError as exc:
            check(str(exc) == "bad 3", f"{method}: exception text {exc!r}")
        else:
            check(False, f"{method}: exception did not propagate")
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=2) as ex:
        pids = [ex.submit(pid).result(timeout=60) for _ in range(6)]
    check(len(set(pids)) == 3, f"{method}: max_tasks_per_child=2 gave worker pids {pids}")
    print(f"smoke: {method}: ok ({time.monotonic() - t0:.1f}s)", flush=True)


def fork_recycle_child() -> None:
    """In a child interpreter: a fork pool that replaces its workers many times,
    and a second fork pool started while the first one's manager thread runs."""
    ctx = multiprocessing.get_context("fork")
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx, max_tasks_per_child=2) as ex:
        got = list(ex.map(square, range(20)))
        with pyexec.ProcessPoolExecutor(2, mp_context=ctx, max_tasks_per_child=2) as ex2:
            got2 = list(ex2.map(square, range(20)))
            check(ex.submit(square, 3).result(timeout=60) == 9, "first pool after the second")
    check(got == [x * x for x in range(20)], "fork recycle pool results")
    check(got2 == got, "second fork pool results")


def thread_fork_child() -> None:
    """In a child interpreter: fork while a second thread runs (must warn on 3.12+)."""
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
    finally:
        stop.set()
        t.join()


def run_warning_probe(role: str) -> str:
    """Run this script in role under `-W always::DeprecationWarning`; its stderr.

    Not `-W error`: CPython clears the fork warning's exception when it is
    turned into an error (it cannot fail fork()), so that flag would hide it.
    """
    watchdog(STEP_SECONDS + 30)  # the timeout below fires first
    proc = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", os.path.abspath(__file__), role],
        capture_output=True,
        text=True,
        timeout=STEP_SECONDS,
    )
    check(proc.returncode == 0, f"{role} exited {proc.returncode}: {proc.stderr}")
    return proc.stderr


def check_fork_warning() -> None:
    """Worker replacement under fork never forks a multi-threaded process."""
    if sys.version_info < (3, 12) or "fork" not in methods():
        print("smoke: fork warning check: not applicable here")
        return
    # The probe must see the warning when it is due, or its silence means nothing.
    check(
        FORK_WARNING in run_warning_probe("--thread-fork-child"),
        "the probe did not see CPython's multi-threaded fork warning",
    )
    err = run_warning_probe("--fork-recycle-child")
    check(FORK_WARNING not in err, f"a fork pool made CPython warn:\n{err}")
    check("DeprecationWarning" not in err, f"a fork pool raised a DeprecationWarning:\n{err}")
    print("smoke: fork pool with max_tasks_per_child=2: no multi-threaded fork warning")


def main() -> None:
    """Parse the arguments and run every check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--installed", action="store_true", help="fail unless pyexec comes from an installation"
    )
    parser.add_argument("--methods", help="comma-separated start methods (default: all here)")
    parser.add_argument("--fork-recycle-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--thread-fork-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The probe children run without the watchdog: its thread is an OS thread,
    # which CPython counts when it decides whether fork() must warn. Their
    # parent's timeout bounds them.
    if args.fork_recycle_child:
        return fork_recycle_child()
    if args.thread_fork_child:
        return thread_fork_child()
    watchdog()
    check_install(args.installed)
    for method in args.methods.split(",") if args.methods else methods():
        check_pool(method)
    check_fork_warning()
    faulthandler.cancel_dump_traceback_later()
    print("smoke: all ok", flush=True)


if __name__ == "__main__":
    main()
