"""A fork worker dies while the manager thread waits for the GIL.

The worker's sentinel and the zygote's exit record then arrive in one wakeup
of the manager. Prints "ok <exception>" when the pool reports the death.
Usage: death_in_busy_manager.py [ROUNDS]
"""

import multiprocessing
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import faults_funcs as ff

import pyexec


def main() -> None:
    """Kill the only worker, then hold the GIL so both events pile up."""
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for _ in range(rounds):
        ex = pyexec.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
        pid = ex.submit(ff.getpid).result(timeout=30)
        fut = ex.submit(ff.sleep_then, 5)  # wakes the manager, which then needs the GIL
        os.kill(pid, signal.SIGKILL)
        sum(range(20_000_000))  # one C call: holds the GIL for a while
        exc = fut.exception(timeout=20)
        print("ok", pid, type(exc).__name__, exc, flush=True)
        ex.shutdown(wait=True)


if __name__ == "__main__":
    main()
