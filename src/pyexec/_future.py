"""The Future that submit returns: the standard one, with its Condition made on demand.

A ``concurrent.futures.Future`` builds a ``threading.Condition`` (an RLock and
a deque, in Python) when it is created, and takes it for every change and
every look at its state. For a tiny call that is half of the parent's cost.
This subclass makes the Condition only when some thread needs it (a wait on a
future not yet done, a done-callback, ``cancel``, ``concurrent.futures.wait``,
``as_completed``, ``repr``...); until then the pool's own transitions (running,
then finished) are made under one module lock instead, and a finished future's
result is read without any lock.

Why that is safe: the Condition is created under the same module lock. So each
transition either happens entirely before the Condition exists (nobody can be
waiting on it, no callback or waiter is installed: both need the Condition),
or entirely after, and then it takes the standard path. Every other method is
the standard library's own, working on the Condition as usual.
"""

from __future__ import annotations

import threading
from concurrent.futures import _base
from time import monotonic
from typing import Any

_PENDING = _base.PENDING
_RUNNING = _base.RUNNING
_FINISHED = _base.FINISHED

# Held only for a few attribute stores: a transition made without the
# Condition, or the Condition's creation.
_lock = threading.Lock()


class _Condition(threading.Condition):
    """A Condition whose ``with`` takes and lets go of its lock by the lock's
    own (C) methods. threading.Condition's __enter__ is a Python function:
    an exception from a signal handler could come after its lock was taken
    and before the with-block began, leaving the lock held for good (and the
    pool's thread, settling that future, blocked on it)."""

    @property
    def __enter__(self):  # type: ignore[override]
        return self._lock.__enter__

    @property
    def __exit__(self):  # type: ignore[override]
        return self._lock.__exit__


class Future(_base.Future):
    """A ``concurrent.futures.Future`` (isinstance holds) that is cheaper to make and settle."""

    # The base's fields as slots: no __dict__ per future. The waiter and
    # callback lists are made with the Condition (every standard method that
    # uses them takes the Condition first): one object per future for the
    # collector to track instead of four.
    __slots__ = ("_callbacks", "_cond", "_exception", "_list", "_pyexec_task", "_result", "_state")

    def __init__(self) -> None:  # the base's fields, but no Condition yet
        self._cond: threading.Condition | None = None
        self._pyexec_task: Any = None  # the pool's record of the call (see result)
        self._state = _PENDING
        self._result = None
        self._exception = None

    @property
    def _condition(self) -> threading.Condition:
        cond = self._cond
        if cond is None:
            with _lock:
                cond = self._cond
                if cond is None:
                    self._list = []
                    self._callbacks = []
                    cond = self._cond = _Condition()
            task = self._pyexec_task
            if task is not None:
                task.watch()  # a wait the pool's help does not see
        return cond

    # Read-only: the standard class assigns them only in __init__ (3.10-3.13).
    @property
    def _waiters(self) -> list:
        self._condition  # noqa: B018 - made with the Condition
        return self._list

    @property
    def _done_callbacks(self) -> list:
        self._condition  # noqa: B018 - made with the Condition
        return self._callbacks

    # ---- reads: a finished future needs no lock (its fields no longer change)

    def done(self) -> bool:
        """Return True if the future was cancelled or finished executing."""
        if self._state in _DONE:
            return True
        task = self._pyexec_task
        if task is not None:
            task.watch()  # polled for: someone must read its result
        return False

    def result(self, timeout: float | None = None) -> Any:
        """The call's result (see concurrent.futures.Future.result)."""
        if self._state == _FINISHED:
            if self._exception is None:
                return self._result
        elif (task := self._pyexec_task) is not None:  # cleared once settled
            # The pool may let this thread read the result itself: no hop.
            end = None if timeout is None else monotonic() + timeout
            task.wait_here(end)
            if self._state == _FINISHED and self._exception is None:
                return self._result
            if end is not None:
                timeout = max(0.0, end - monotonic())
        return super().result(timeout)

    # ---- the pool's transitions ------------------------------------------------

    def set_running_or_notify_cancel(self) -> bool:
        """As the standard method; without a Condition, a plain store."""
        _lock.acquire()  # not `with`: see ProcessPoolExecutor._submit
        try:
            if self._cond is None and self._state == _PENDING:
                self._state = _RUNNING
                return True
        finally:
            _lock.release()
        return super().set_running_or_notify_cancel()

    # set_result and set_exception are the standard ones: the pool settles
    # through settle_fast, which makes the same plain stores for many futures
    # under one lock; the rare rest (failures, breaks) can afford a Condition.


def start_fast(tasks: list) -> list:
    """Mark many calls running (the pool's tasks: .future, .started, .start());
    return those that now run, in order. Futures no thread waits on are set
    under one lock; the others go the standard way (task.start()), and a
    cancelled one is left out."""
    slow = False
    with _lock:
        for task in tasks:
            if task.started:
                continue
            f = task.future
            if f._cond is None and f._state == _PENDING:
                f._state = _RUNNING
                task.started = True
            else:
                slow = True
    if not slow:
        return tasks
    return [task for task in tasks if task.started or task.start()]


def settle_fast(outcomes: list) -> list:
    """Settle many calls' futures under one lock: outcomes are (task, value,
    exception) with task.future a Future. Those a thread already waits on (a
    Condition exists), map items (no future) and any settled meanwhile are
    returned, for the caller to settle one by one the standard way."""
    rest = []
    with _lock:
        for item in outcomes:
            f = item[0].future
            if f is None or f._cond is not None or (f._state != _RUNNING and f._state != _PENDING):
                rest.append(item)
            else:
                if item[2] is None:
                    f._result = item[1]
                else:
                    f._exception = item[2]
                f._state = _FINISHED
                f._pyexec_task = None  # breaks the future <-> task cycle
    return rest


_DONE = frozenset((_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED, _FINISHED))
