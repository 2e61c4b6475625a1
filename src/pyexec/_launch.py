"""Starting worker processes, for every start method, without forking a threaded parent.

spawn and forkserver: ``ctx.Process`` with the worker's two pipe ends passed
through multiprocessing's own fd passing, so the worker sees the parent's
``sys.path`` and main module exactly as the standard library's workers do.
Starting one is safe from the manager thread (nothing is forked there).

fork: the parent is forked once, into a *zygote*, while no pyexec thread runs
(before the manager thread starts). The zygote is single-threaded; it forks
the workers asked for later (more as the backlog grows, and replacements), and
hands the parent each worker's pipe ends and sentinel over a unix socket
(SCM_RIGHTS). So workers inherit the parent's state as of the first submit, as
the standard library's fork workers do, and replacing a worker never forks a
multi-threaded process. The first worker is forked by the parent itself, just
before the zygote: one forked by a fresh zygote reached its loop about 1 ms
later (two forks in a row, each child first paying its copy-on-write faults,
some 250 of 4-5 us each here). That worker's parent is the thread that called
submit(), which may end before the pool, so it cannot ask the kernel for a
parent-death signal; the zygote holds a pidfd of it instead and kills it, with
its own workers, when the pool's process is gone (Linux; elsewhere the zygote
forks every worker).
"""

from __future__ import annotations

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
from typing import Any

from . import _channel as ch
from ._worker import InheritFd, WorkerConfig, main

# zygote <-> parent records: a command byte and two int32s.
_REC = struct.Struct("<cii")


def _have_pidfd() -> bool:
    """Whether this kernel and Python can hand a pidfd to the zygote (Linux 5.3+)."""
    if not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


# The parent forks the first worker itself (see the module's docstring).
PARENT_FORKS_FIRST = _have_pidfd()


class Worker:
    """The parent's handle on one worker process."""

    __slots__ = (
        "_proc",
        "acked",
        "call_fd",
        "exit_at",
        "fatal",
        "inflight",
        "kill_reason",
        "kill_target",
        "mark",
        "pid",
        "quota",
        "reader",
        "ready",
        "recycle",
        "result_fd",
        "sentinel",
        "state",
        "writer",
    )

    def __init__(self, pid: int, call_fd: int, result_fd: int, sentinel: int, proc: Any) -> None:
        self.pid = pid
        self.call_fd = ch.own_fd(call_fd)
        self.result_fd = ch.own_fd(result_fd)
        self.sentinel = sentinel
        self._proc = proc
        self.writer = ch.Writer(call_fd)
        self.reader = ch.Decoder()
        self.inflight: Any = None  # set by the manager
        self.state = "up"  # "up", "exiting" (exit frame sent), "dead"
        self.mark = 0.0  # when the call at the head of inflight started
        self.exit_at = 0.0  # when it was asked to exit with nothing in flight
        self.quota: int | None = None  # calls it may still be given (max_tasks_per_child)
        self.recycle = False  # it reported memory over max_memory_per_child
        self.acked = False  # it acknowledged the exit frame
        self.ready = False  # its initializer is done: deadlines count from then
        self.fatal: str | None = None  # why it is about to die, when it told us
        self.kill_reason: str | None = None  # "timeout", "terminate", "exit-grace"
        self.kill_target: Any = None  # the call it was killed for

    def __repr__(self) -> str:
        return f"<worker pid={self.pid} {self.state}>"


class ProcessLauncher:
    """Starts workers with ``ctx.Process`` (spawn, forkserver)."""

    fd = -1  # nothing to watch: start() returns the worker itself

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

    def quit(self) -> None:
        """Nothing to tell: no worker will be asked for again."""

    def take_ready(self) -> list[Worker]:
        """Workers started since the last call: none, start() returns them."""
        return []

    def start(self) -> Worker:
        """Start one worker now."""
        proc, call_w, res_r = _start_process(self._ctx, self._config, self._deathsig)
        return Worker(proc.pid, call_w, res_r, proc.sentinel, proc)

    def exitcode(self, w: Worker, timeout: float) -> int | None:
        """The exit status of a worker whose sentinel fired (None if unknown)."""
        w._proc.join(timeout)
        return w._proc.exitcode

    def kill(self, w: Worker, sig: int = signal.SIGKILL) -> None:
        """Send sig to the worker if it has not been reaped."""
        if w._proc.exitcode is None:
            try:
                os.kill(w.pid, sig)
            except ProcessLookupError:
                pass

    def release(self, w: Worker) -> None:
        """Forget a dead worker: reap it and close its sentinel."""
        try:
            w._proc.join(0)
            w._proc.close()
        except ValueError:
            pass  # still running: the Process keeps its sentinel
        else:
            ch.disown_fd(w.sentinel)  # closed by close()

    def close(self) -> None:
        """Nothing to close."""


class ZygoteLauncher:
    """Forks workers from a single-threaded copy of the parent (fork)."""

    thread_bound = False  # the zygote is the workers' parent

    def __init__(self, config: WorkerConfig) -> None:
        """Fork the first worker, then the zygote: the first call need not wait
        for a request's round trip, nor for the zygote."""
        self._codes: dict[int, int] = {}
        self._ready: list[Worker] = []
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
                self._ready.append(first)
                try:
                    adopted.append(os.pidfd_open(first.pid))  # not reaped: still its pid
                except OSError:
                    pass  # reaped already (by an os.wait() elsewhere): it is dead
            # Made after that fork: the zygote's end must be in the zygote alone,
            # or the parent would not see end of file when the zygote dies.
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock = parent
            self.fd = ch.own_fd(parent.fileno())
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
                ch.close_fd(first.call_fd)
                ch.close_fd(first.result_fd)
            if parent is not None:
                ch.close_fd(parent.detach())
            raise
        finally:
            if child is not None:
                child.close()
            for fd in adopted:
                os.close(fd)
        self.pid = pid

    def request(self) -> None:
        """Ask the zygote for one more worker; it arrives through take_ready().

        Raises OSError when the zygote is gone.
        """
        self._sock.sendall(_REC.pack(b"S", 0, 0))

    def quit(self) -> None:
        """Tell the zygote no worker will be asked for again: it exits once its
        last worker is reaped (meanwhile the others exit too), and leaves the
        parent's own workers alone."""
        if not self.quitting and not self.dead:
            self.quitting = True
            try:
                self._sock.sendall(_REC.pack(b"Q", 0, 0))
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

    def take_ready(self) -> list[Worker]:
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
            data, fds, _flags, _addr = socket.recv_fds(self._sock, _REC.size, 3)
        except ConnectionResetError:  # it died with a request of ours unread
            data, fds = b"", []
        finally:
            self._sock.settimeout(None)
        while data and len(data) < _REC.size:
            more = self._sock.recv(_REC.size - len(data))
            if not more:
                break
            data += more
        if len(data) < _REC.size:
            for fd in fds:
                os.close(fd)
            self.dead = True
            return False  # the zygote is gone
        cmd, pid, code = _REC.unpack(data)
        if cmd == b"W":
            call_w, res_r, sentinel = fds
            for fd in fds:  # recvmsg does not set close-on-exec
                os.set_inheritable(fd, False)
            ch.own_fd(sentinel)
            self._ready.append(Worker(pid, call_w, res_r, sentinel, None))
        elif cmd == b"X":
            self._codes[pid] = code
        return True

    def exitcode(self, w: Worker, timeout: float) -> int | None:
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

    def kill(self, w: Worker, sig: int = signal.SIGKILL) -> None:
        """Have the zygote signal the worker: it alone knows whether the pid was reaped.

        Once the zygote is gone, signal the pid directly, but only while the
        worker's sentinel shows it alive (a dead worker's pid may be reused).
        """
        if w._proc is not None:
            return self._direct.kill(w, sig)
        if not self.dead:
            try:
                self._sock.sendall(_REC.pack(b"K", w.pid, sig))
                return
            except OSError:
                self.dead = True
        if not select.select([w.sentinel], [], [], 0)[0]:
            try:
                os.kill(w.pid, sig)
            except ProcessLookupError:
                pass

    def release(self, w: Worker) -> None:
        """Close a dead worker's sentinel."""
        if w._proc is not None:
            return self._direct.release(w)
        ch.close_fd(w.sentinel)

    def close(self) -> None:
        """Close the socket; the zygote reaps its last workers and exits; reap it."""
        ch.close_fd(self._sock.detach())
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
    ch.own_fd(sock.fileno())  # workers forked from here close it
    ctx = multiprocessing.get_context("fork")
    for fd in adopted:  # pidfds of the parent's own workers
        ch.own_fd(fd)  # not for ours
    procs: dict[int, Any] = {}  # sentinel -> Process
    for _ in range(initial):
        proc = _fork_worker(ctx, sock, config)
        procs[proc.sentinel] = proc
    parent_alive = True
    quitting = False
    while (parent_alive and not quitting) or procs:
        ready = wait(([sock] if parent_alive else []) + list(procs))
        for r in ready:
            if r is sock:
                data = sock.recv(_REC.size)
                while data and len(data) < _REC.size:
                    more = sock.recv(_REC.size - len(data))
                    if not more:
                        data = b""
                    data += more
                if len(data) < _REC.size:
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
                cmd, pid, sig = _REC.unpack(data)
                if cmd == b"Q":
                    quitting = True
                    for fd in adopted:
                        ch.close_fd(fd)
                    adopted.clear()
                elif cmd == b"S":
                    proc = _fork_worker(ctx, sock, config)
                    procs[proc.sentinel] = proc
                elif cmd == b"K":
                    for p in procs.values():
                        if p.pid == pid:
                            try:
                                os.kill(pid, sig)
                            except ProcessLookupError:
                                pass
            else:
                proc = procs.pop(r)
                proc.join()
                if parent_alive:
                    try:
                        sock.sendall(_REC.pack(b"X", proc.pid, proc.exitcode))
                    except OSError:
                        parent_alive = False
                ch.disown_fd(proc.sentinel)
                proc.close()


def _start_process(ctx: Any, config: WorkerConfig, deathsig: bool = True) -> tuple[Any, int, int]:
    """Start a worker's Process with its two pipes: (the Process, the call
    pipe's write end, the result pipe's read end), those and its sentinel owned."""
    call_r, call_w = ch.make_pipe(False, True)
    res_r, res_w = ch.make_pipe(True, False)
    # A forked worker must close the parent's ends (its after-fork hook closes
    # owned fds); any other child forked meanwhile, the worker's ends.
    forked = ctx.get_start_method() == "fork"
    for fd in (call_w, res_r) if forked else (call_r, res_w):
        ch.own_fd(fd)
    try:
        proc = ctx.Process(
            target=main, args=(InheritFd(call_r), InheritFd(res_w), config, deathsig)
        )
        proc.start()
    except BaseException:
        ch.close_fd(call_w)
        ch.close_fd(res_r)
        raise
    finally:
        ch.close_fd(call_r)
        ch.close_fd(res_w)
    ch.own_fd(proc.sentinel)
    return proc, ch.own_fd(call_w), ch.own_fd(res_r)


def _fork_worker(ctx: Any, sock: socket.socket, config: WorkerConfig) -> Any:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the zygote ignores it
    try:
        proc, call_w, res_r = _start_process(ctx, config)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        socket.send_fds(sock, [_REC.pack(b"W", proc.pid, 0)], [call_w, res_r, proc.sentinel])
    finally:
        ch.close_fd(call_w)
        ch.close_fd(res_r)
    return proc
