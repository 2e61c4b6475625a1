"""Issue 14.6a: a SIGTERM handler calls shutdown(wait=True) while the main thread
waits in result(). Prints "shut down" and exits 0 when the handler's shutdown returns.

usage: sigterm_shutdown.py START_METHOD [stdlib]
"""

import concurrent.futures
import multiprocessing
import os
import signal
import sys
import threading
import time

from abuse_funcs import sleep_for, tiny

import pyexec

if __name__ == "__main__":
    cls = pyexec.ProcessPoolExecutor
    if sys.argv[2:] == ["stdlib"]:
        cls = concurrent.futures.ProcessPoolExecutor
    ex = cls(1, mp_context=multiprocessing.get_context(sys.argv[1]))
    ex.submit(tiny, 1).result()  # the worker is up

    def on_term(signum, frame):
        ex.shutdown(wait=True)
        print("shut down", flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    time.sleep(0.1)  # the pool is idle
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    ex.submit(sleep_for, 2.0).result()
    print("result returned before the signal", flush=True)
    sys.exit(1)
