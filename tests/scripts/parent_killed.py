"""Start a pyexec pool, print its worker pids and every descendant, then wait to be killed.

argv: start method, "idle" or "busy", a scratch directory. Busy: each worker is in a
long time.sleep (it wrote a marker file when the call started) when the pids are printed.
"""

import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (sys.path)
import psutil
from api_funcs import sleep_getpid, touch_then_sleep

import pyexec

if __name__ == "__main__":
    method, mode, scratch = sys.argv[1:4]
    ex = pyexec.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method))
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:
        workers.update(f.result(60) for f in [ex.submit(sleep_getpid, 0.2) for _ in range(2)])
    if mode == "busy":
        for i in range(2):
            ex.submit(touch_then_sleep, scratch, i, 30)

        def started() -> list[str]:
            return [n for n in os.listdir(scratch) if not n.startswith(".")]  # not a .tmp

        while len(started()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = {int(Path(scratch, n).read_text()) for n in started()}
        assert busy == workers, (busy, workers)
    me = psutil.Process()
    descendants = [p.pid for p in me.children(recursive=True)]
    parents = sorted({psutil.Process(w).ppid() for w in workers})
    out = {"pid": os.getpid(), "workers": sorted(workers), "descendants": descendants}
    out["worker_parents"] = parents
    print(json.dumps(out), flush=True)
    time.sleep(60)
