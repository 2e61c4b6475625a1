"""Starting worker processes: the launchers' protocol, and ``ctx.Process`` workers.

spawn and forkserver: ``ctx.Process`` with the worker's two pipe ends (and
its fd socket and claim word's segment, see _payloads and _lanes) passed
through multiprocessing's own fd passing, so the worker sees the parent's
``sys.path`` and main module exactly as the standard library's workers do.
Starting one is safe from the manager thread (nothing is forked there).
fork: see _zygote, whose launcher implements the same protocol.

A worker's sentinel, the fd whose readiness tells the manager it exited, is
a pidfd of it where the kernel has them (Linux 5.3+): readable when that
process exits, whoever else holds its pipes (spawn, fork; forkserver's
sentinel is the fork server's own, which no grandchild holds). multiprocessing's sentinel (and
the result pipe's end of file) is a pipe the worker's own children inherit:
a grandchild left running held shutdown() for its whole life. Elsewhere
(macOS, older kernels) the sentinel is still multiprocessing's, with that flaw.

A launcher belongs to the manager thread once attached (before that, to the
thread that starts the pool); it keeps no state another thread touches. Once
a ProcessLauncher exists, every fork of the process holds multiprocessing's
resource tracker lock (``_guard_tracker_lock``): a user's fork could copy it
held by the manager thread.
"""

from __future__ import annotations

import os
import select
import signal
import socket
from typing import Any, Protocol

from . import _fds
from ._lanes import Lane
from ._native import check, lib
from ._worker import InheritFd, WorkerConfig, main


class LauncherGone(OSError):
    """The launcher can start no more workers (the fork zygote died)."""


class Launcher(Protocol):
    """What the manager asks of a launcher (ProcessLauncher, ZygoteLauncher)."""

    fd: int  # watched for receive() (-1: nothing to watch)
    pid: int  # the process that forks the workers (for messages)
    initial: int  # workers already on their way when the pool starts
    quitting: bool  # told by quit() that no worker will be asked for again
    thread_bound: bool  # the workers die with the thread that started them
    # A worker asked for and lost on its way (the zygote could not fork it,
    # or its fds could not be received): the manager takes it (setting None)
    # and breaks the pool with it.
    failure: OSError | None

    def start(self) -> Lane | None:
        """Start one worker: the Lane, or None when it arrives later through
        take_ready(). Raises LauncherGone when no worker can be started."""

    def take_ready(self) -> list[Lane]:
        """Workers arrived since the last call (those start() returned None for)."""

    def receive(self) -> bool:
        """Read what fd has (it was reported readable); False once the launcher is gone."""

    def quit(self) -> None:
        """No worker will be asked for again."""

    def exitcode(self, w: Lane, timeout: float) -> int | None:
        """The exit status of a worker whose sentinel fired (None if unknown)."""

    def kill(self, w: Lane, sig: int = signal.SIGKILL) -> None:
        """Send sig to the worker if it has not been reaped."""

    def release(self, w: Lane) -> None:
        """Forget a dead worker."""

    def close(self) -> None:
        """Release what the launcher holds (the pool's end)."""


_tracker_guarded = False


def _guard_tracker_lock() -> None:
    """Hold multiprocessing's resource tracker lock across every fork of this process
    (once hooked, for good).

    Each ``ctx.Process`` start takes that lock (``resource_tracker.getfd``), and
    here the manager thread does the starting. A user's ``os.fork()`` at that
    moment gave a child whose copy of the lock was held by a thread it does not
    have: its first process start raised ReentrantCallError (a new thread of the
    child had the same thread id) or hung. The standard library starts its
    workers in the thread that calls submit(), as a rule, so it meets this less."""
    global _tracker_guarded
    if _tracker_guarded:
        return
    from multiprocessing import resource_tracker

    lock = resource_tracker._resource_tracker._lock

    def release() -> None:
        try:
            lock.release()
        except RuntimeError:  # a Python whose own fork hook renewed the lock
            pass

    os.register_at_fork(before=lock.acquire, after_in_parent=release, after_in_child=release)
    _tracker_guarded = True


class ProcessLauncher:
    """Starts workers with ``ctx.Process`` (spawn, forkserver)."""

    fd = -1  # nothing to watch: start() returns the worker itself
    initial = 0  # no worker is on its way at the start
    quitting = False
    failure = None  # start() raises instead

    def __init__(self, ctx: Any, config: WorkerConfig, deathsig: bool = True) -> None:
        """deathsig False: the worker asks for no parent-death signal (someone
        else kills it when the pool's process dies)."""
        self._ctx = ctx
        self._config = config
        self._deathsig = deathsig
        # spawn forks each worker from the thread that starts it, and the
        # worker's parent-death signal (_worker._die_with_parent) fires when
        # that thread ends, not the process: the thread must outlive them.
        self.thread_bound = ctx.get_start_method() == "spawn"
        # forkserver's workers are the fork server's children: their sentinel
        # is a pipe the server writes their exit status to, which no
        # grandchild holds, and their status comes only through it.
        self._pidfd = ctx.get_start_method() != "forkserver"
        self.pid = os.getpid()  # the process that starts the workers: this one
        _guard_tracker_lock()

    def quit(self) -> None:
        """Nothing to tell: no worker will be asked for again."""

    def take_ready(self) -> list[Lane]:
        """Workers started since the last call: none, start() returns them."""
        return []

    def receive(self) -> bool:
        """Nothing to receive (fd is -1)."""
        return True

    def start(self) -> Lane | None:
        """Start one worker now and return it."""
        proc, call_w, res_r, side, claim = start_process(self._ctx, self._config, self._deathsig)
        sentinel = pidfd(proc.pid) if self._pidfd else -1
        sentinel = proc.sentinel if sentinel < 0 else sentinel
        return Lane(proc.pid, call_w, res_r, sentinel, proc, side, claim)

    def exitcode(self, w: Lane, timeout: float) -> int | None:
        """The exit status of a worker whose sentinel fired (None if unknown)."""
        if w.sentinel == w._proc.sentinel:
            w._proc.join(timeout)
        else:  # a pidfd (the Process's own sentinel may be held by a grandchild)
            select.select([w.sentinel], [], [], timeout)
        return w._proc.exitcode

    def kill(self, w: Lane, sig: int = signal.SIGKILL) -> None:
        """Send sig to the worker if it has not been reaped."""
        if w._proc.exitcode is None:
            try:
                os.kill(w.pid, sig)
            except ProcessLookupError:
                pass

    def release(self, w: Lane) -> None:
        """Forget a dead worker: reap it and close its sentinel."""
        proc_sentinel = w._proc.sentinel
        if w.sentinel != proc_sentinel:
            _fds.close_fd(w.sentinel)  # its pidfd
        try:
            w._proc.close()  # reaps it (polls; join would wait on its sentinel)
        except ValueError:
            pass  # still running: the Process keeps its sentinel
        else:
            _fds.disown_fd(proc_sentinel)  # closed by close()

    def close(self) -> None:
        """Nothing to close."""


def pidfd(pid: int) -> int:
    """An owned pidfd of child pid (see the module's docstring), or -1 where
    there are none."""
    if not HAVE_PIDFD:
        return -1
    try:
        return _fds.own_fd(os.pidfd_open(pid))
    except OSError:
        return -1


def _have_pidfd() -> bool:
    """Whether this kernel and Python give pidfds (Linux 5.3+)."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


HAVE_PIDFD = _have_pidfd()


def start_process(
    ctx: Any, config: WorkerConfig, deathsig: bool = True
) -> tuple[Any, int, int, int, int]:
    """Start a worker's Process with its two pipes, its socket for fds (see
    _payloads) and its claim word (see _lanes): (the Process, the call pipe's
    write end, the result pipe's read end, the socket's parent end, the claim
    segment's fd), those and its sentinel owned."""
    call_r, call_w = _fds.make_pipe(False, True)
    res_r, res_w = _fds.make_pipe(True, False)
    side_p, side_w = _socketpair()
    claim_p = claim_w = -1
    try:
        claim_p = _fds.own_fd(new_claim_segment())
        claim_w = os.dup(claim_p)  # the worker's own (os.dup makes it non-inheritable)
    except BaseException:
        _fds.close_fd(claim_p)
        for fd in (call_r, call_w, res_r, res_w, side_p, side_w):
            _fds.close_fd(fd)
        raise
    # A forked worker must close the parent's ends (its after-fork hook closes
    # owned fds); any other child forked meanwhile, the worker's ends.
    forked = ctx.get_start_method() == "fork"
    for fd in (call_w, res_r, side_p, claim_p) if forked else (call_r, res_w, side_w, claim_w):
        _fds.own_fd(fd)
    try:
        proc = ctx.Process(
            target=main,
            args=(
                InheritFd(call_r),
                InheritFd(res_w),
                config,
                deathsig,
                InheritFd(side_w),
                InheritFd(claim_w),
            ),
        )
        proc.start()
    except BaseException:
        _fds.close_fd(call_w)
        _fds.close_fd(res_r)
        _fds.close_fd(side_p)
        _fds.close_fd(claim_p)
        raise
    finally:
        _fds.close_fd(call_r)
        _fds.close_fd(res_w)
        _fds.close_fd(side_w)
        _fds.close_fd(claim_w)
    _fds.own_fd(proc.sentinel)
    return proc, _fds.own_fd(call_w), _fds.own_fd(res_r), _fds.own_fd(side_p), _fds.own_fd(claim_p)


def new_claim_segment() -> int:
    """A fresh claim word's segment (zeroed: no call claimed, none revoked), as an fd."""
    return check(lib.px_shm_new(lib.PX_CLAIM_SIZE))


def _socketpair() -> tuple[int, int]:
    """A CLOEXEC unix stream socketpair as two fds; the send buffers enlarged (best
    effort) so a window of fd messages never blocks the sender."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (a, b):
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        except OSError:
            pass
    return a.detach(), b.detach()
