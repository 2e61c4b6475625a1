"""Interpreter exit with work in flight and no shutdown() call.

Usage: exit_in_flight.py METHOD OUTDIR HOW
  HOW: "keep" (the executor stays referenced by a global) or "drop" (deleted).
Every call creates a file in OUTDIR: all of them must exist after exit code 0.
"""

import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import faults_funcs as ff

import pyexec


def main() -> None:
    """Submit calls and return without shutdown()."""
    global ex
    ex = pyexec.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(sys.argv[1]))
    for i in range(6):
        ex.submit(ff.touch_after, os.path.join(sys.argv[2], f"done{i}"), 0.3)
    if sys.argv[3] == "drop":
        del ex
    print("leaving", flush=True)


ex = None
if __name__ == "__main__":
    main()
