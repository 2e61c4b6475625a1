"""Issue 14.6c: two threads create fork pools at the same time, over and over, while
a third pool runs calls. Prints "ok N" and exits 0; a hang is the caller's timeout.

usage: two_threads_fork_pools.py ROUNDS
"""

import multiprocessing
import sys
import threading

from abuse_funcs import tiny

import pyexec

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    rounds = int(sys.argv[1])
    errors = []
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx) as busy:
        for r in range(rounds):
            barrier = threading.Barrier(2)

            def make(i, barrier=barrier):
                try:
                    barrier.wait()
                    with pyexec.ProcessPoolExecutor(1, mp_context=ctx) as ex:
                        assert ex.submit(tiny, i).result(timeout=30) == i
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=make, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            busy.submit(tiny, r)
            for t in threads:
                t.join()
            if errors:
                print(f"round {r}: {errors[0]!r}", flush=True)
                sys.exit(1)
    print(f"ok {rounds}", flush=True)
