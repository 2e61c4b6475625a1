"""The waiter through cffi, on both backends (epoll and poll), and a pool run on poll.

Timing checks here are lower bounds only (a wait must never end early); an
upper bound is asserted only where the alternative is a hang.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pyexec import _fds
from pyexec._native import ffi, lib
from pyexec._waiter import READABLE, WRITABLE, Waiter

pytestmark = pytest.mark.timeout(60)

BACKENDS = {"epoll": lib.PX_BACKEND_EPOLL, "poll": lib.PX_BACKEND_POLL}
if not sys.platform.startswith("linux"):
    del BACKENDS["epoll"]


@pytest.fixture(params=list(BACKENDS))
def waiter(request):
    """A waiter on each backend in turn, freed (its epoll fd closed) after the test."""
    w = Waiter(backend=BACKENDS[request.param])
    assert w.backend == request.param
    yield w
    ffi.release(w._w)  # the leak check runs before pytest drops its reference


class Pipes:
    """Non-blocking pipes made for one test, all closed after it."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def new(self) -> tuple[int, int]:
        """A new non-blocking pipe (read end, write end)."""
        r, w = _fds.make_pipe(True, True)
        self.fds += [r, w]
        return r, w

    def close(self, fd: int) -> None:
        """Close one end now."""
        self.fds.remove(fd)
        os.close(fd)

    def close_all(self) -> None:
        """Close every end still open."""
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


@pytest.fixture
def pipes():
    """Pipes closed after the test."""
    p = Pipes()
    yield p
    p.close_all()


def fill(fd: int) -> None:
    """Write to a non-blocking fd until the pipe is full."""
    chunk = b"\0" * 65536
    while True:
        try:
            os.write(fd, chunk)
        except BlockingIOError:
            return


def test_default_backend_follows_platform_and_env(monkeypatch):
    """No backend given: epoll on Linux, poll elsewhere; PYEXEC_WAITER overrides it."""
    monkeypatch.delenv("PYEXEC_WAITER", raising=False)
    assert Waiter().backend == ("epoll" if sys.platform.startswith("linux") else "poll")
    monkeypatch.setenv("PYEXEC_WAITER", "poll")
    assert Waiter().backend == "poll"
    monkeypatch.setenv("PYEXEC_WAITER", "kqueue")
    with pytest.raises(ValueError, match="PYEXEC_WAITER"):
        Waiter()


def test_unknown_backend_is_refused():
    """A backend number that does not exist is EINVAL."""
    with pytest.raises(OSError) as info:
        Waiter(backend=99)
    assert info.value.errno == errno.EINVAL


def test_readable(waiter, pipes):
    """Readable once a byte arrives, and again until it is read (level-triggered)."""
    r, w = pipes.new()
    waiter.add(r, READABLE)
    assert waiter.wait(0) == []
    os.write(w, b"x")
    assert waiter.wait(5) == [(r, READABLE)]
    assert waiter.wait(0) == [(r, READABLE)]
    os.read(r, 1)
    assert waiter.wait(0) == []
    waiter.remove(r)


def test_writable(waiter, pipes):
    """Writable with room; not when full; again once drained."""
    r, w = pipes.new()
    waiter.add(w, WRITABLE)
    assert waiter.wait(0) == [(w, WRITABLE)]
    fill(w)
    assert waiter.wait(0) == []
    while True:
        try:
            os.read(r, 1 << 20)
        except BlockingIOError:
            break
    assert waiter.wait(5) == [(w, WRITABLE)]
    waiter.remove(w)


def test_hangup_is_readable(waiter, pipes):
    """The writer closed: the read end is reported readable and meets end of file."""
    r, w = pipes.new()
    waiter.add(r, READABLE)
    assert waiter.wait(0) == []
    pipes.close(w)
    events = waiter.wait(5)
    assert len(events) == 1 and events[0][0] == r and events[0][1] & READABLE
    assert os.read(r, 1) == b""
    waiter.remove(r)


def test_hangup_reported_even_when_watching_nothing(waiter, pipes):
    """A read end watched for nothing still wakes the waiter on hang-up (both backends alike)."""
    r, w = pipes.new()
    waiter.add(r, 0)
    os.write(w, b"data")
    assert waiter.wait(0) == []
    pipes.close(w)
    events = waiter.wait(5)
    assert [fd for fd, _ in events] == [r]
    assert events[0][1] & READABLE
    waiter.remove(r)


def test_reader_gone_is_writable(waiter, pipes):
    """The reader closed: a writer waiting for room is woken, and its write fails with EPIPE."""
    r, w = pipes.new()
    fill(w)
    waiter.add(w, WRITABLE)
    assert waiter.wait(0) == []
    pipes.close(r)
    events = waiter.wait(5)
    assert len(events) == 1 and events[0][0] == w and events[0][1] & WRITABLE
    with pytest.raises(BrokenPipeError):
        os.write(w, b"x")
    waiter.remove(w)


@pytest.mark.parametrize("timeout", [0.0, 0.001, 0.05, 0.2])
def test_timeout_returns_empty_and_not_early(waiter, pipes, timeout):
    """Nothing ready: [] after at least the timeout."""
    r, _ = pipes.new()
    waiter.add(r, READABLE)
    t0 = time.monotonic()
    assert waiter.wait(timeout) == []
    assert time.monotonic() - t0 >= timeout
    waiter.remove(r)


class _Alarms:
    """SIGALRM every `interval` seconds while active; counts what the handler saw."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.count = 0

    def __enter__(self):
        self.old = signal.signal(signal.SIGALRM, self._handler)
        signal.setitimer(signal.ITIMER_REAL, self.interval, self.interval)
        return self

    def _handler(self, signum, frame):
        self.count += 1

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no setitimer")
def test_signal_does_not_end_wait_early(waiter, pipes):
    """Signals arriving every 10 ms do not cut a 300 ms wait short."""
    r, _ = pipes.new()
    waiter.add(r, READABLE)
    with _Alarms(0.01) as alarms:
        t0 = time.monotonic()
        events = waiter.wait(0.3)
        took = time.monotonic() - t0
    assert events == []
    assert took >= 0.3
    # The handler ran (after the wait returned): signals did arrive.
    assert alarms.count >= 1
    waiter.remove(r)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no setitimer")
@pytest.mark.timeout(20)
def test_signal_does_not_end_unlimited_wait(waiter, pipes):
    """A wait without a limit, interrupted by signals, returns the event that comes later."""
    r, w = pipes.new()
    waiter.add(r, READABLE)
    t = threading.Timer(0.3, os.write, (w, b"late"))
    with _Alarms(0.01) as alarms:
        t.start()
        try:
            events = waiter.wait(None)
        finally:
            t.join()
    assert events == [(r, READABLE)]
    assert alarms.count >= 1
    waiter.remove(r)


def test_add_modify_remove(waiter, pipes):
    """Watch for nothing, then readable, then nothing; remove; re-add; the errors."""
    r, w = pipes.new()
    os.write(w, b"z")
    waiter.add(r, 0)
    assert waiter.wait(0) == []
    with pytest.raises(FileExistsError):
        waiter.add(r, READABLE)
    waiter.modify(r, READABLE)
    assert waiter.wait(0) == [(r, READABLE)]
    waiter.modify(r, READABLE | WRITABLE)
    assert waiter.wait(0) == [(r, READABLE)]
    waiter.modify(r, 0)
    assert waiter.wait(0) == []
    waiter.remove(r)
    waiter.remove(r)  # removing twice is harmless
    with pytest.raises(FileNotFoundError):
        waiter.modify(r, READABLE)
    assert waiter.wait(0) == []
    waiter.add(w, READABLE | WRITABLE)
    assert waiter.wait(0) == [(w, WRITABLE)]
    waiter.remove(w)
    waiter.add(r, READABLE)
    assert waiter.wait(0) == [(r, READABLE)]
    waiter.remove(r)


def test_add_closed_fd_is_ebadf(waiter, pipes):
    """Adding an fd that is not open fails with EBADF on every backend (the header's contract)."""
    r, _ = pipes.new()
    pipes.close(r)
    with pytest.raises(OSError) as info:
        waiter.add(r, READABLE)
    assert info.value.errno == errno.EBADF
    assert lib.px_waiter_add(waiter._w, -1, READABLE, 1) == -errno.EBADF


def test_many_fds(waiter, pipes):
    """Hundreds of fds: exactly the ready ones, each once, all at once when all are ready."""
    ends = [pipes.new() for _ in range(300)]
    for r, _ in ends:
        waiter.add(r, READABLE)
    ready = {r for i, (r, _) in enumerate(ends) if i % 7 == 0}
    for i, (_, w) in enumerate(ends):
        if i % 7 == 0:
            os.write(w, b"m")
    events = waiter.wait(5)
    assert sorted(fd for fd, _ in events) == sorted(ready)
    assert all(ev == READABLE for _, ev in events)
    for _, w in ends:
        os.write(w, b"m")
    events = waiter.wait(5)
    assert sorted(fd for fd, _ in events) == sorted(r for r, _ in ends)
    for r, _ in ends[::2]:
        waiter.remove(r)
    events = waiter.wait(5)
    assert sorted(fd for fd, _ in events) == sorted(r for r, _ in ends[1::2])
    for r, _ in ends[1::2]:
        waiter.remove(r)
    assert waiter.wait(0) == []


def test_wait_releases_the_gil(waiter, pipes):
    """Another Python thread runs while a wait blocks (it wakes the wait by writing)."""
    r, w = pipes.new()
    waiter.add(r, READABLE)
    counted = []

    def work():
        n = 0
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            n += 1
        counted.append(n)
        os.write(w, b"done")

    t = threading.Thread(target=work)
    t.start()
    try:
        events = waiter.wait(30)
    finally:
        t.join()
    assert events == [(r, READABLE)]
    assert counted and counted[0] > 1000
    waiter.remove(r)


POOL_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys
    import pyexec
    from helpers import add, boom, ident

    for method in sys.argv[1:]:
        ctx = multiprocessing.get_context(method)
        with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            assert list(ex.map(add, range(200), range(200))) == [2 * i for i in range(200)]
            assert ex.submit(ident, b"x" * 300_000).result(timeout=60) == b"x" * 300_000
            try:
                ex.submit(boom, "bad").result(timeout=60)
            except ValueError as exc:
                assert str(exc) == "bad"
            else:
                raise AssertionError("no ValueError")
            assert ex._mgr.waiter.backend == "poll", ex._mgr.waiter.backend
        print(method, "ok", flush=True)
    """
)

DEATH_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys
    import pyexec
    from helpers import die, ident

    for method in sys.argv[1:]:
        ex = pyexec.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method))
        try:
            assert ex.submit(ident, 1).result(timeout=60) == 1
            assert ex._mgr.waiter.backend == "poll", ex._mgr.waiter.backend
            ex.submit(die, 7).result(timeout=10)
        except pyexec.BrokenProcessPool:
            print(method, "ok", flush=True)
        except BaseException as exc:
            print(method, repr(exc), flush=True)
        finally:
            ex.shutdown(cancel_futures=True)
    """
)


def _run_on_poll(script: str) -> subprocess.CompletedProcess:
    """Run script with PYEXEC_WAITER=poll, one argument per start method."""
    from conftest import METHODS

    tests_dir = Path(__file__).resolve().parent
    env = {**os.environ, "PYEXEC_WAITER": "poll"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tests_dir), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", script, *METHODS],
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
        cwd=tests_dir,
    )


@pytest.mark.timeout(180)
def test_pool_runs_on_poll_backend():
    """A small pool, end to end, with PYEXEC_WAITER=poll, under every start method."""
    from conftest import METHODS

    proc = _run_on_poll(POOL_SCRIPT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == [w for m in METHODS for w in (m, "ok")]


@pytest.mark.timeout(180)
def test_worker_death_seen_on_poll_backend():
    """With PYEXEC_WAITER=poll a worker that exits mid-call breaks the pool (not a hang)."""
    from conftest import METHODS

    proc = _run_on_poll(DEATH_SCRIPT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"{m} ok" for m in METHODS], proc.stdout + proc.stderr
