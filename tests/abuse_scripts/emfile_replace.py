"""Issue 14.6i: the process runs out of fds while the fork zygote hands it a new
worker. Prints what the next call raised, and the fds the process had leaked.

The zygote (our child) is held stopped from before the crash until the fds are
taken: otherwise the replacement can arrive first and the race is lost.

usage: emfile_replace.py
"""

import multiprocessing
import os
import resource
import signal

import pyexec
from pyexec._zygote import PARENT_FORKS_FIRST


def fds():
    return set(os.listdir("/proc/self/fd"))


if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    ex = pyexec.ProcessPoolExecutor(1, mp_context=ctx, on_crash="restart")
    assert ex.submit(abs, -1).result(timeout=30) == 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Its exit code must not need the stopped zygote: the first worker is ours.
    assert PARENT_FORKS_FIRST
    zygote = ex._mgr.launcher.pid
    before = fds()
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(int(x) for x in before) + 8, hard))
    os.kill(zygote, signal.SIGSTOP)
    fillers = []
    try:
        died = ex.submit(os._exit, 3)
        print("crash call:", repr(died.exception(timeout=30)), flush=True)
        # Take every fd left, the dead worker's among them (its replacement waits).
        try:
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        os.close(fillers.pop())  # one free fd: a new worker's four do not fit
    finally:
        os.kill(zygote, signal.SIGCONT)
    nxt = ex.submit(abs, -2)
    try:
        print("next call:", repr(nxt.exception(timeout=30)), flush=True)
    except Exception as exc:
        print("next call: no outcome:", repr(exc), flush=True)
    for fd in fillers:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    ex.shutdown(wait=True)
    print("leaked fds:", sorted(fds() - before, key=int), flush=True)
