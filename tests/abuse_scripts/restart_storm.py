"""Issue 14.6e: on_crash="restart" with an initializer that kills its worker: the
pool must not replace workers without end. Submits 20 calls, waits 5 s, then
prints how many workers started and what a new call raises then.

usage: restart_storm.py START_METHOD LOGFILE
"""

import concurrent.futures as cf
import multiprocessing
import os
import sys
import time

from abuse_funcs import log_start_then_exit, tiny

import pyexec

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    log = sys.argv[2]
    ex = pyexec.ProcessPoolExecutor(
        2, mp_context=ctx, on_crash="restart", initializer=log_start_then_exit, initargs=(log,)
    )
    futures = [ex.submit(tiny, i) for i in range(20)]
    time.sleep(5)
    try:
        outcome = repr(ex.submit(tiny, 1).exception(timeout=10))
    except cf.TimeoutError:
        outcome = "no outcome in 10 s"
    except Exception as exc:
        outcome = repr(exc)
    ex.kill_workers()
    ex.shutdown(wait=True)
    starts = len(open(log).read().split()) if os.path.exists(log) else 0
    print(f"starts={starts} outcome={outcome}", flush=True)
