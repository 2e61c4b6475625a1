"""A parent interrupted (SIGINT) while it waits in Future.result().

Usage: sigint_wait.py METHOD
Prints "waiting" once its calls run, then blocks in result() until interrupted.
"""

import multiprocessing
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import faults_funcs as ff

import pyexec


def main() -> None:
    """Run two calls of a few seconds and wait on one of them."""
    # Python keeps SIGINT ignored when it starts with it ignored (a command run with
    # & from a script, as a CI job may be): Ctrl-C's handler, whatever we inherit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ex = pyexec.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(sys.argv[1]))
    futs = [ex.submit(ff.sleep_then, 2.0, i) for i in range(2)]
    while ex.stats().running < 2:
        time.sleep(0.01)
    print("waiting", flush=True)
    futs[0].result()
    print("not interrupted", flush=True)


if __name__ == "__main__":
    main()
