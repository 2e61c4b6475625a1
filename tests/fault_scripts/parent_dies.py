"""A parent that dies (os._exit or segfault) while pickling or unpickling for its pool.

Usage: parent_dies.py METHOD WHERE MODE
  WHERE: "arg" (an argument's __reduce__ kills the parent in submit) or
         "result" (unpickling a result kills the parent in its manager thread).
Prints "pids <worker pids...>", waits for a line on stdin, then triggers the fault.
"""

import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import faults_funcs as ff

import pyexec


def main() -> None:
    """Start a pool, report its workers, then die the chosen way."""
    method, where, mode = sys.argv[1:4]
    ex = pyexec.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method))
    workers = sorted(set(ex.map(ff.getpid, range(8))))
    print("pids", *workers, flush=True)
    sys.stdin.readline()
    parent = os.getpid()
    if where == "arg":
        ex.submit(ff.take, ff.Hostile(mode, "pickle", True, parent))
    else:
        f = ex.submit(ff.give_hostile, mode, "unpickle", True, parent)
        f.result(timeout=30)
    print("survived", flush=True)  # not reached: the fault kills this process
    sys.exit(3)


if __name__ == "__main__":
    main()
