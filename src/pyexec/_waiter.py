"""Waiting on many fds at once, in C with the GIL released.

A Waiter belongs to the manager thread; the one exception is modify() on a
worker's result fd, made by a caller's thread in a hand-off while it holds
the manager's dispatch_lock (see _handoff).
"""

from __future__ import annotations

import os

from ._native import check, ffi, lib

READABLE = lib.PX_READABLE
WRITABLE = lib.PX_WRITABLE


def _backend_from_env() -> int:
    name = os.environ.get("PYEXEC_WAITER", "").strip().lower()
    if name in ("", "default"):
        return lib.PX_BACKEND_DEFAULT
    if name == "epoll":
        return lib.PX_BACKEND_EPOLL
    if name == "poll":
        return lib.PX_BACKEND_POLL
    raise ValueError(f"PYEXEC_WAITER must be 'epoll', 'poll' or unset, not {name!r}")


class Waiter:
    """Waits on many fds at once in C, the GIL released; tokens are the fds."""

    __slots__ = ("_cap", "_count", "_events", "_w")

    def __init__(self, backend: int | None = None) -> None:
        out = ffi.new("px_waiter **")
        check(lib.px_waiter_new(out, _backend_from_env() if backend is None else backend))
        self._w = ffi.gc(out[0], lib.px_waiter_free)
        self._cap = 64
        self._events = ffi.new("px_event[]", self._cap)
        self._count = 0

    @property
    def backend(self) -> str:
        """'epoll' or 'poll'."""
        return "epoll" if lib.px_waiter_backend(self._w) == lib.PX_BACKEND_EPOLL else "poll"

    @property
    def fd(self) -> int:
        """The epoll fd (readable while a watched fd is ready); -1 on poll."""
        return max(-1, lib.px_waiter_fd(self._w))

    def add(self, fd: int, events: int) -> None:
        """Watch fd for READABLE and/or WRITABLE."""
        check(lib.px_waiter_add(self._w, fd, events, fd))
        self._count += 1
        if self._count > self._cap:
            self._cap *= 2
            self._events = ffi.new("px_event[]", self._cap)

    def modify(self, fd: int, events: int) -> None:
        """Change what fd is watched for."""
        check(lib.px_waiter_mod(self._w, fd, events, fd))

    def remove(self, fd: int) -> None:
        """Stop watching fd (before closing it)."""
        if lib.px_waiter_del(self._w, fd) == 0:
            self._count -= 1

    def wait(self, timeout: float | None) -> list[tuple[int, int]]:
        """(fd, events) for every ready fd; [] when timeout (seconds) passed."""
        ns = -1 if timeout is None else max(0, int(timeout * 1e9))
        ev = self._events
        n = check(lib.px_waiter_wait(self._w, ev, self._cap, ns))
        return [(ev[i].token, ev[i].events) for i in range(n)]
