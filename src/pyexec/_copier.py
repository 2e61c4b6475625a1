"""The copier: parent threads that copy big results' bytes off the manager thread.

A result that carries big exact ``bytes`` must be copied out of shared memory
into bytes objects of its own (_buffers.Load): 8 MiB into fresh memory costs
about 4 ms here, mostly page faults. Done by the manager, the pool's one
dispatcher, that held up every other worker's next call: with 40 calls of
8 MiB submitted at once, the manager was busy 6.5 ms a call, two thirds of
it in these copies. So the manager prepares the result as frames arrive (in
order: fds, releases, views) and ``put``s it here; a copier thread runs the
copies (the GIL released) and puts the load on ``done``; the manager, woken,
unpickles and settles it as any other result. No user code runs here (no
unpickling, no callbacks), so nothing here can wait on the pool.

Up to THREADS threads: one copying while results arrive faster than it
copies was the next bottleneck (40 x 8 MiB bytes: 110-150 calls/s with one,
135-175 with two, in one sitting here; fresh memory is faulted in by both
at once at about 1.3x the speed of one). Owns its queue, ``done`` and its
threads. A thread starts at a ``put`` that finds none idle, and ends after
LINGER seconds without work, or at ``stop`` (the manager's, before it parks
or closes: no pyexec thread may be alive when a pool forks its zygote).
Only the manager calls ``put`` and ``stop``.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from ._buffers import Load

# Seconds a thread waits for more work before it ends (a new one costs
# about 0.1 ms to start, against 4 ms for the copy of 8 MiB).
LINGER = 0.05
THREADS = 2


class Copier:
    """One pool's copier threads (see the module's docstring)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        """wake: a bound method, called after each copy to have the manager take
        ``done``; held weakly, as the manager holds this object (a cycle would keep
        the pool's state, its initargs with it, alive until the garbage collector
        runs: CPython's test of a failing initializer then finds a semaphore leaked)."""
        self._wake = weakref.WeakMethod(wake)  # type: ignore[arg-type]
        self._cond = threading.Condition(threading.Lock())
        self._jobs: deque[tuple[Any, Load]] = deque()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._stopping = False
        # Copied: (task, load) for the manager to finish (append and popleft are atomic).
        self.done: deque[tuple[Any, Load]] = deque()

    def put(self, task: Any, load: Load) -> bool:
        """Have a copier thread copy load's bytes, then hand (task, load) back on
        done. False, and nothing queued, when no thread runs and none can start
        (the caller copies then)."""
        with self._cond:
            self._jobs.append((task, load))
            if self._idle:
                self._cond.notify()
            elif len(self._threads) < THREADS:
                t = threading.Thread(target=self._run, name="pyexec-copier", daemon=True)
                self._threads.append(t)
                try:
                    t.start()
                except RuntimeError:  # can't start new thread: the others, or the caller
                    self._threads.remove(t)
                    if not self._threads:
                        self._jobs.pop()
                        return False
        return True

    def stop(self) -> list[int | None]:
        """Finish the copies queued, and end the threads (joined on return): the
        native ids they had (for _manager's _wait_thread_gone)."""
        with self._cond:
            ts = list(self._threads)
            self._stopping = True
            self._cond.notify_all()
        for t in ts:
            t.join()
        with self._cond:
            self._stopping = False
        return [t.native_id for t in ts]

    def _run(self) -> None:
        jobs, cond = self._jobs, self._cond
        while True:
            with cond:
                if not jobs and not self._stopping:
                    self._idle += 1
                    cond.wait(LINGER)
                    self._idle -= 1
                if not jobs:
                    self._threads.remove(threading.current_thread())
                    return
                task, load = jobs.popleft()
            try:
                load.copy()
            except BaseException:  # finish() copies what is missing, and raises there
                pass
            self.done.append((task, load))
            wake = self._wake()
            if wake is not None:
                wake()
