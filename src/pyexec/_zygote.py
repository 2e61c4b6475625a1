"""The fork zygote: workers forked from a single-threaded copy of the parent.

Under fork, the parent is forked once, into a *zygote*, while no pyexec thread
runs (before the manager thread starts). The zygote is single-threaded; it forks
the workers asked for later (more as the backlog grows, and replacements), and
hands the parent each worker's pipe ends, sentinel, fd socket and claim word's
segment over a unix socket (SCM_RIGHTS). So workers inherit the parent's state
as of the first submit, as the standard library's fork workers do, and replacing
a worker never forks a multi-threaded process. The first worker is forked by the
parent itself, just before the zygote: one forked by a fresh zygote reached its
loop about 1 ms later (two forks in a row, each child first paying its
copy-on-write faults, some 250 of 4-5 us each here). That worker's parent is the
thread that called submit(), which may end before the pool, so it cannot ask the
kernel for a parent-death signal; the zygote holds a pidfd of it instead and
kills it, with its own workers, when the pool's process is gone (Linux;
elsewhere the zygote forks every worker).

The parent's side (ZygoteLauncher) belongs to the manager thread once
attached; the zygote's side (_zygote) is the zygote process's one thread.
"""

from __future__ import annotations

import errno
import multiprocessing

# Imported here, in the parent, so workers forked from the zygote inherit them
# instead of each importing them after the fork (about 7 ms per worker): the
# fork Process machinery, and forkserver (whose alive fd a worker closes).
import multiprocessing.forkserver
import multiprocessing.popen_fork
import os
import select
import signal
import socket
import struct
import time
from enum import IntEnum
from typing import Any

from . import _fds
from ._lanes import Lane
from ._launch import HAVE_PIDFD, LauncherGone, ProcessLauncher, pidfd, start_process
from ._worker import WorkerConfig

# zygote <-> parent records: a command byte and two int32s.
REC = struct.Struct("<Bii")
# The fds a WORKER record carries: its call pipe's write end, its result pipe's
# read end, its sentinel, its socket's parent end, its claim segment.
WORKER_FDS = 5


class Cmd(IntEnum):
    """A record's command byte."""

    START = ord("S")  # parent -> zygote: fork one more worker
    QUIT = ord("Q")  # parent -> zygote: exit once your workers are gone
    KILL = ord("K")  # parent -> zygote: signal worker pid with sig
    WORKER = ord("W")  # zygote -> parent: a new worker (pid; its 5 fds attached)
    EXITED = ord("X")  # zygote -> parent: worker pid exited with code
    FAILED = ord("F")  # zygote -> parent: a START failed with errno code


def _read_rest(sock: socket.socket, data: bytes) -> bytes:
    """data, the start of a record, completed from sock: shorter than a
    record (or empty) when the other side is gone."""
    while data and len(data) < REC.size:
        more = sock.recv(REC.size - len(data))
        if not more:
            break
        data += more
    return data


# The parent forks the first worker itself (see the module's docstring): it hands
# the zygote a pidfd of it, which the zygote signals (Linux 5.3+).
PARENT_FORKS_FIRST = HAVE_PIDFD and hasattr(signal, "pidfd_send_signal")


class ZygoteLauncher:
    """Forks workers from a single-threaded copy of the parent (fork)."""

    thread_bound = False  # the zygote is the workers' parent

    def __init__(self, config: WorkerConfig) -> None:
        """Fork the first worker, then the zygote: the first call need not wait
        for a request's round trip, nor for the zygote."""
        self._codes: dict[int, int] = {}
        self._lost: set[int] = set()  # workers whose fds did not arrive (see failure)
        self.failure: OSError | None = None
        self._ready: list[Lane] = []
        self.initial = 1  # the first worker, on its way
        self.dead = False  # the zygote is gone: signal workers by pid
        self.quitting = False  # told to exit once its workers are gone (quit())
        # The parent's own children (the first worker): reaped by the parent.
        self._direct = ProcessLauncher(multiprocessing.get_context("fork"), config, False)
        adopted: list[int] = []  # pidfds the zygote inherits, to kill them with its own
        first = parent = child = None
        try:
            if PARENT_FORKS_FIRST:
                first = self._direct.start()
                assert first is not None
                self._ready.append(first)
                try:
                    adopted.append(os.pidfd_open(first.pid))  # not reaped: still its pid
                except OSError:
                    pass  # reaped already (by an os.wait() elsewhere): it is dead
            # Made after that fork: the zygote's end must be in the zygote alone,
            # or the parent would not see end of file when the zygote dies.
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock = parent
            self.fd = _fds.own_fd(parent.fileno())
            pid = os.fork()
            if pid == 0:  # the zygote
                code = 1
                try:
                    parent.detach()  # closed by the after-fork hook already
                    _zygote(child, config, 0 if first else 1, adopted)
                    code = 0
                finally:
                    os._exit(code)
        except BaseException:
            if first is not None:
                self._direct.kill(first)
                first._proc.join()
                self._direct.release(first)
                _fds.close_fd(first.call_fd)
                _fds.close_fd(first.result_fd)
                first.chan.close()
            if parent is not None:
                _fds.close_fd(parent.detach())
            raise
        finally:
            if child is not None:
                child.close()
            for fd in adopted:
                os.close(fd)
        self.pid = pid

    def start(self) -> None:
        """Ask the zygote for one more worker; it arrives through take_ready().

        Raises LauncherGone when the zygote is gone.
        """
        try:
            self._sock.sendall(REC.pack(Cmd.START, 0, 0))
        except OSError as exc:
            raise LauncherGone(exc.errno, f"pyexec's fork zygote (pid {self.pid}) is gone") from exc

    def quit(self) -> None:
        """Tell the zygote no worker will be asked for again: it exits once its
        last worker is reaped (meanwhile the others exit too), and leaves the
        parent's own workers alone."""
        if not self.quitting and not self.dead:
            self.quitting = True
            try:
                self._sock.sendall(REC.pack(Cmd.QUIT, 0, 0))
            except OSError:
                pass

    def receive(self) -> bool:
        """Read the records that are there (the socket was reported readable).

        False once the zygote is gone. Never blocks: exitcode() may already
        have read what the readiness was about.
        """
        while True:
            try:
                if not self._read_record(0.0):
                    return False
            except (BlockingIOError, TimeoutError):
                return True

    def take_ready(self) -> list[Lane]:
        """Workers the zygote has handed over since the last call."""
        ready, self._ready = self._ready, []
        return ready

    def _read_record(self, timeout: float | None) -> bool:
        """Read one record, waiting up to timeout seconds for its first byte.

        Raises BlockingIOError or TimeoutError when none came; False when the
        zygote is gone.
        """
        self._sock.settimeout(timeout)
        try:
            data, fds, flags, _addr = socket.recv_fds(self._sock, REC.size, WORKER_FDS)
        except ConnectionResetError:  # it died with a request of ours unread
            data, fds = b"", []
        finally:
            self._sock.settimeout(None)
        data = _read_rest(self._sock, data)
        if len(data) < REC.size:
            for fd in fds:
                os.close(fd)
            self.dead = True
            return False  # the zygote is gone
        cmd, pid, code = REC.unpack(data)
        if cmd == Cmd.WORKER and (flags & socket.MSG_CTRUNC or len(fds) != WORKER_FDS):
            # The kernel could not give us all of the worker's fds: this process
            # has no fd free (EMFILE, or ENFILE system-wide). The worker cannot
            # be used: close what came, have it killed, tell the manager.
            for fd in fds:
                os.close(fd)
            self._lost.add(pid)
            try:
                self._sock.sendall(REC.pack(Cmd.KILL, pid, signal.SIGKILL))
            except OSError:
                pass
            self.failure = OSError(
                errno.EMFILE,
                f"{os.strerror(errno.EMFILE)}: the fds of a new worker (pid {pid}) "
                "could not be received",
            )
        elif cmd == Cmd.WORKER:
            call_w, res_r, sentinel, side, claim = fds
            for fd in fds:  # recvmsg does not set close-on-exec
                os.set_inheritable(fd, False)
            _fds.own_fd(sentinel)
            self._ready.append(Lane(pid, call_w, res_r, sentinel, None, side, claim))
        elif cmd == Cmd.FAILED:
            self.failure = OSError(
                code, f"{os.strerror(code)}: pyexec's fork zygote (pid {self.pid}) could not fork"
            )
        elif cmd == Cmd.EXITED:
            if pid in self._lost:
                self._lost.discard(pid)
            else:
                self._codes[pid] = code
        return True

    def exitcode(self, w: Lane, timeout: float) -> int | None:
        """The exit status the zygote reports for a worker whose sentinel fired."""
        if w._proc is not None:
            return self._direct.exitcode(w, timeout)
        deadline = time.monotonic() + timeout
        while w.pid not in self._codes:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                if not self._read_record(left):
                    return None
            except (BlockingIOError, TimeoutError, OSError):
                return None
        return self._codes.pop(w.pid)

    def kill(self, w: Lane, sig: int = signal.SIGKILL) -> None:
        """Have the zygote signal the worker: it alone knows whether the pid was reaped.

        Once the zygote is gone, signal the pid directly, but only while the
        worker's sentinel shows it alive (a dead worker's pid may be reused).
        """
        if w._proc is not None:
            return self._direct.kill(w, sig)
        if not self.dead:
            try:
                self._sock.sendall(REC.pack(Cmd.KILL, w.pid, sig))
                return
            except OSError:
                self.dead = True
        if not select.select([w.sentinel], [], [], 0)[0]:
            try:
                os.kill(w.pid, sig)
            except ProcessLookupError:
                pass

    def release(self, w: Lane) -> None:
        """Close a dead worker's sentinel."""
        if w._proc is not None:
            return self._direct.release(w)
        _fds.close_fd(w.sentinel)

    def close(self) -> None:
        """Close the socket; the zygote reaps its last workers and exits; reap it."""
        _fds.close_fd(self._sock.detach())
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _zygote(sock: socket.socket, config: WorkerConfig, initial: int, adopted: list[int]) -> None:
    """The zygote's loop: start workers on request, report their exits, kill
    them all (and the parent's own, adopted as pidfds) when the parent is gone."""
    from multiprocessing import process
    from multiprocessing.connection import wait

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    process._children.clear()  # the parent's children are not ours
    _fds.own_fd(sock.fileno())  # workers forked from here close it
    ctx = multiprocessing.get_context("fork")
    for fd in adopted:  # pidfds of the parent's own workers
        _fds.own_fd(fd)  # not for ours
    procs: dict[int, Any] = {}  # sentinel (a pidfd where there are) -> Process
    for _ in range(initial):
        sentinel, proc = _fork_worker(ctx, sock, config)
        procs[sentinel] = proc
    parent_alive = True
    quitting = False
    while (parent_alive and not quitting) or procs:
        ready = wait(([sock] if parent_alive else []) + list(procs))
        for r in ready:
            if r is sock:
                data = _read_rest(sock, sock.recv(REC.size))
                if len(data) < REC.size:
                    # The pool's process is gone (or closed us after its last
                    # worker exited): busy workers would not notice.
                    parent_alive = False
                    for p in procs.values():
                        try:
                            os.kill(p.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    for fd in adopted:
                        try:
                            signal.pidfd_send_signal(fd, signal.SIGKILL)
                        except OSError:
                            pass  # exited already
                    continue
                cmd, pid, sig = REC.unpack(data)
                if cmd == Cmd.QUIT:
                    quitting = True
                    for fd in adopted:
                        _fds.close_fd(fd)
                    adopted.clear()
                elif cmd == Cmd.START:
                    try:
                        sentinel, proc = _fork_worker(ctx, sock, config)
                    except OSError as exc:  # fork's EAGAIN, out of fds...
                        sock.sendall(REC.pack(Cmd.FAILED, 0, exc.errno or 0))
                    else:
                        procs[sentinel] = proc
                elif cmd == Cmd.KILL:
                    for p in procs.values():
                        if p.pid == pid:
                            try:
                                os.kill(pid, sig)
                            except ProcessLookupError:
                                pass
            else:
                proc = procs.pop(r)
                proc.join()  # waitpid: it exited (a grandchild may hold its pipes)
                if r != proc.sentinel:
                    _fds.close_fd(r)
                if parent_alive:
                    try:
                        sock.sendall(REC.pack(Cmd.EXITED, proc.pid, proc.exitcode))
                    except OSError:
                        parent_alive = False
                _fds.disown_fd(proc.sentinel)
                proc.close()


def _fork_worker(ctx: Any, sock: socket.socket, config: WorkerConfig) -> tuple[int, Any]:
    """Fork a worker and hand the parent its fds: (its sentinel, its Process).
    The sentinel is a pidfd where there are (see _launch), for both."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the zygote ignores it
    try:
        proc, call_w, res_r, side, claim = start_process(ctx, config)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sentinel = pidfd(proc.pid)
    if sentinel < 0:
        sentinel = proc.sentinel
    try:
        socket.send_fds(
            sock, [REC.pack(Cmd.WORKER, proc.pid, 0)], [call_w, res_r, sentinel, side, claim]
        )
    finally:
        _fds.close_fd(call_w)
        _fds.close_fd(res_r)
        _fds.close_fd(side)
        _fds.close_fd(claim)
    return sentinel, proc
