"""os.fork() while another thread holds multiprocessing's resource tracker lock.

Usage: fork_tracker_lock.py
A spawn pool runs (so its fork hooks are in place); a thread holds the lock as
the pool's manager does while it starts a worker; the main thread forks. The
child must then start a process of its own: prints "child 0" when it could.
"""

import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing import resource_tracker

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import faults_funcs as ff

import pyexec


def main() -> None:
    spawn = multiprocessing.get_context("spawn")
    with pyexec.ProcessPoolExecutor(1, mp_context=spawn) as ex:
        assert ex.submit(ff.square, 2).result(timeout=60) == 4
        lock = resource_tracker._resource_tracker._lock
        held = threading.Event()

        def hold() -> None:
            with lock:
                held.set()
                time.sleep(0.3)

        t = threading.Thread(target=hold)
        t.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # a child stuck on the lock dies, not left behind
            p = spawn.Process(target=ff.square, args=(3,))
            p.start()
            p.join(30)
            os._exit(0 if p.exitcode == 0 else 1)
        t.join()
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    main()
