"""The fds a pool's parent side holds, which every forked child closes at once.

A fork copies every fd; a child that kept a copy of a worker's call pipe
would stop that worker from ever seeing end of file. So every fd the parent
side opens is recorded here (``own_fd``) and every forked child closes all of
them (``os.register_at_fork``), whoever forked it. Owns ``_parent_fds`` and
``fork_generation``: any thread of the parent may add or remove an fd (set
operations are atomic under the GIL); only the after-fork hook, in the child,
clears them. Read ``fork_generation`` as ``_fds.fork_generation``: it changes.
"""

from __future__ import annotations

import os

from ._native import check, ffi, lib

# Pipe buffer requested on Linux (best effort): fewer wakeups for big payloads.
PIPE_SIZE = 1 << 20

_parent_fds: set[int] = set()
# Bumped in every forked child: objects made before the fork see it changed.
fork_generation = 0


def own_fd(fd: int) -> int:
    """Record fd as held by a pool's parent side: every forked child closes it."""
    _parent_fds.add(fd)
    return fd


def disown_fd(fd: int) -> None:
    """Forget fd without closing it (its owner closes it)."""
    _parent_fds.discard(fd)


def close_fd(fd: int) -> None:
    """Close an fd recorded with own_fd (or any fd), forgetting it."""
    _parent_fds.discard(fd)
    try:
        os.close(fd)
    except OSError:
        pass


def _after_fork_in_child() -> None:
    global fork_generation
    fork_generation += 1
    for fd in list(_parent_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _parent_fds.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def make_pipe(nonblock_read: bool, nonblock_write: bool) -> tuple[int, int]:
    """A CLOEXEC pipe, with the asked ends non-blocking and a large buffer on Linux."""
    fds = ffi.new("int[2]")
    check(lib.px_pipe(fds, (1 if nonblock_read else 0) | (2 if nonblock_write else 0), PIPE_SIZE))
    return fds[0], fds[1]
