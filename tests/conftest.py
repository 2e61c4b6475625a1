"""Shared fixtures: every start method, and a leak check around every test.

After each test no child process, thread, fd or shared-memory segment may be
left behind. The
forkserver and the resource tracker are started once for the session (they
are shared by every pool in the process, as in the standard library), so they
are part of the baseline, not leaks.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from multiprocessing import forkserver, resource_tracker

import psutil
import pytest

METHODS = ["fork", "forkserver", "spawn"] if sys.platform != "darwin" else ["spawn", "forkserver"]
# Allow the tests' own helper modules to be imported by workers under spawn.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(params=METHODS)
def method(request) -> str:
    """Each start method in turn."""
    return request.param


@pytest.fixture
def ctx(method):
    """The multiprocessing context of each start method in turn."""
    return multiprocessing.get_context(method)


@pytest.fixture(scope="session", autouse=True)
def _shared_helpers():
    forkserver.ensure_running()
    resource_tracker.ensure_running()
    yield


def _fds() -> set[int]:
    return {
        int(x) for x in os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd")
    }


SHM = "/dev/shm"


def _segments() -> set[str]:
    """Named shared memory this project makes: pyexec's own segments (memfds have no
    name; the shm_open fallback unlinks its name at once) and multiprocessing's."""
    if not os.path.isdir(SHM):
        return set()
    return {n for n in os.listdir(SHM) if n.startswith(("pyexec-", "psm_"))}


def _children() -> set[int]:
    """This process's live descendants (a zombie, or one gone meanwhile, is not)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass  # exited between the listing and the look
    return out


def _settle(check, timeout: float = 10.0):
    """Poll check() until it returns a falsy leak report or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        report = check()
        if not report or time.monotonic() > deadline:
            return report
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail a test that leaves a child process, a thread, an fd or a segment behind."""
    if request.node.get_closest_marker("allow_leaks"):
        yield
        return
    children, threads, fds = _children(), set(threading.enumerate()), _fds()
    segments = _segments()
    yield
    import gc

    gc.collect()
    left = _settle(lambda: _children() - children)
    if left:
        for pid in left:  # clean up so one leak does not fail every later test
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        pytest.fail(f"test left child processes behind: {sorted(left)}")
    extra = _settle(lambda: [t for t in threading.enumerate() if t not in threads and t.is_alive()])
    if extra:
        pytest.fail(f"test left threads behind: {extra}")
    leaked = _settle(lambda: _fds() - fds, timeout=2.0)
    if leaked:
        pytest.fail(f"test left fds open: {sorted(leaked)}")
    shm = _settle(lambda: _segments() - segments, timeout=2.0)
    if shm:
        pytest.fail(f"test left shared memory in {SHM}: {sorted(shm)}")


# Modules whose imports change the process for every later test (see test_dask.py):
# their tests run after all the others.
RUN_LAST = ("test_dask.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name in RUN_LAST)  # stable: order kept otherwise


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_leaks: the test checks leaks itself")
