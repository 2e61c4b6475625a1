"""Functions the tests send to workers: importable by name under spawn."""

import os
import signal
import time


def ident(x):
    return x


def add(a, b):
    return a + b


def boom(msg="boom"):
    raise ValueError(msg)


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def getpid(_=None):
    return os.getpid()


def die(code=3):
    os._exit(code)


def kill_self(sig=signal.SIGKILL):
    os.kill(os.getpid(), sig)
    time.sleep(10)
