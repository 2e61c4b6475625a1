"""A user's os.fork() while the pool runs: the child leaves the parent's pool alone.

Usage: user_fork.py METHOD
The child tries the parent's pool (each use must raise RuntimeError), runs a
pool of its own, and exits normally. The parent's pool keeps working.
"""

import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import faults_funcs as ff

import pyexec


def child(ex) -> None:
    """In the forked child: every use of the parent's pool raises RuntimeError."""
    for name, use in [
        ("submit", lambda: ex.submit(ff.square, 3)),
        ("map", lambda: list(ex.map(ff.square, range(3)))),
        ("schedule", lambda: ex.schedule(ff.square, (3,))),
    ]:
        try:
            use()
        except RuntimeError as err:
            print("child refused", name, err, flush=True)
        else:
            print("child used parent's pool", name, flush=True)
    ex.shutdown(wait=True)  # a no-op in the child: must return at once
    print("child shutdown returned", flush=True)
    with pyexec.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as own:
        print("child own pool", own.submit(ff.square, 5).result(timeout=60), flush=True)


def main() -> None:
    """Fork while calls are in flight; check both sides."""
    ex = pyexec.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(sys.argv[1]))
    futs = [ex.submit(ff.sleep_then, 0.3, i) for i in range(6)]
    pid = os.fork()
    if pid == 0:
        child(ex)
        sys.exit(0)  # a normal exit: atexit hooks and the executor's finalizers run
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            print("child hangs", flush=True)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            sys.exit(1)
        time.sleep(0.02)
    print("child status", os.waitstatus_to_exitcode(status), flush=True)
    print("parent results", [f.result(timeout=60) for f in futs], flush=True)
    print("parent after", list(ex.map(ff.square, range(4))), flush=True)
    ex.shutdown()


if __name__ == "__main__":
    main()
