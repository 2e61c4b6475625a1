"""For each way the default start method is set, print which method the workers of a
pool made without mp_context were started with, for pyexec and for the stdlib.

fork: the worker sees __main__'s RUNTIME_MARK, set at run time. forkserver: the
worker's parent is the forkserver. spawn: the worker's parent is this process.
"""

import json
import multiprocessing
import multiprocessing.forkserver
import os
import sys

import _common
from api_funcs import start_probe


def observe(impl: str) -> str:
    """How the workers of a default pool of impl were started."""
    with _common.executor_class(impl)(1) as ex:
        _pid, ppid, mark = ex.submit(start_probe).result(60)
    if mark == RUNTIME_MARK:
        return "fork"
    forkserver = multiprocessing.forkserver._forkserver._forkserver_pid
    if ppid == forkserver:
        return "forkserver"
    if ppid == os.getpid():
        return "spawn"
    return f"unknown (parent {ppid})"


if __name__ == "__main__":
    RUNTIME_MARK = "set at run time"
    out = []
    for setting in sys.argv[1:]:
        if setting != "unset":
            multiprocessing.set_start_method(setting, force=True)
        expected = multiprocessing.get_start_method()
        out.append([setting, expected, observe("pyexec"), observe("stdlib")])
    print(json.dumps(out), flush=True)
