"""The hand-offs: where a caller's thread does the manager's work itself.

Invariant (read this before the code): the manager thread owns the dispatch
state -- the lanes' ``inflight``, ``quota``, ``mark``, the waiter's set, the
window -- and holds ``dispatch_lock`` whenever it is not asleep in its wait.
A caller's thread may touch that state only while it holds
``dispatch_lock``, which it takes without blocking and only while the
manager says it sleeps (``sleeping``); it then does one of two things:

* ``direct()`` (submit's thread): write one call straight to an idle worker
  (UP, nothing in flight, quota left, not recycling, its pipe empty), append
  it to that lane's inflight and set ``task.where``. One thread hop less on
  the round trip. Anything left to do (the rest of a write, a worker's exit)
  is left to the manager, woken.
* ``help()`` (the thread in ``result()``): read that worker's result pipe
  itself until its own result is there, settling what it reads. Whatever else
  becomes ready (a wake, a death, another worker's results, a deadline)
  ends the help and the manager takes over.

The masked-fd rule: help() takes the worker's result fd out of the manager's
waiter (``masked``) while it reads, and leaves it out afterwards while that
worker holds no other call, so a loop of submit().result() makes no
epoll_ctl at all. A call direct() then hands to such a worker is seen by no
one but its own result()'s help. So any other wait on it (a Condition made:
callbacks, wait(), as_completed; or done(), see _future) calls
``_Task.watch``, which unmasks the fd (``unmask``); and the manager rearms
every masked fd before it sleeps (``rearm_masked``) and forgets a dead
lane's (``drop``). Nothing else masks or unmasks a result fd.

The give-back rule: an exception from a signal handler (in the main thread)
may interrupt help anywhere. Nothing is lost: the frames read and not yet
decoded go back to the lane's decoder (``Decoder.rewind``; a take cut short
gives back all it took), a call whose outcome was decoded leaves inflight,
and the manager, woken, reads the given-back frames and settles any outcome
help could not (``reread``, ``orphans``: _outcomes._take_back). An
unpickling that raises such an exception is the handler's, not the call's
(``_outcomes.from_signal_handler``): it is re-raised, not the call failed.

The no-wait rule: a hand-off records its thread (``helper``) while it holds
dispatch_lock. Code that runs in that thread meanwhile -- a signal handler
(run by the main thread inside help's poll or read), a ``__del__`` -- must
never wait for the manager thread, which needs the lock that thread holds:
``shutdown(wait=True)`` there asks the manager to stop and returns without
waiting (as from a done-callback, in the manager thread), and ``park`` does
not park that manager. The hand-off ends as soon as it returns to it: the
manager's wake ends help's poll.
"""

from __future__ import annotations

import math
import os
import select
import time
from collections import deque
from threading import get_ident
from typing import Any

from . import _fds
from ._frames import KIND_CALL, KIND_ERROR, KIND_MASK, KIND_RESULT, SPIN_NS, ChannelError, Spin
from ._lanes import Lane, State
from ._tasks import Task, settle_all
from ._waiter import READABLE

UP = State.UP


class HandOff:
    """The manager's methods that callers' threads run (under dispatch_lock),
    and the state only they and the manager's rearm touch."""

    # Declared for readers and type checkers; set by init_handoff.
    masked: set[Lane]
    help_poll: Any
    spin: Spin
    helper: int
    reread: set[Lane]
    orphans: deque
    handed_back: bool

    def init_handoff(self) -> None:
        """The hand-offs' own state (called by the manager's __init__)."""
        # Lanes whose result fd help() took out of the waiter and left out:
        # the manager puts them back before it next sleeps.
        self.masked = set()
        self.help_poll = None  # help()'s poll object, made on first use
        self.spin = Spin()  # whether help() polls before it sleeps
        self.helper = 0  # the ident of the thread in a hand-off, 0: none (the no-wait rule)
        # What an interrupted help gave back (the give-back rule): lanes whose
        # decoder holds frames again, outcomes left to settle. The manager
        # takes them (_outcomes._take_back) when handed_back says so.
        self.reread: set[Lane] = set()
        self.orphans: deque = deque()
        self.handed_back = False

    def direct(self, task: Task) -> bool:
        """Write a call straight to an idle worker (submit's thread, dispatch_lock held).

        False when no worker is idle: the call then goes through pending.
        """
        self.helper = get_ident()
        try:
            return self._direct(task)
        finally:
            self.helper = 0

    def _direct(self, task: Task) -> bool:
        """direct's body (its thread recorded in helper)."""
        for w in self.workers:
            if (
                w.state is UP
                and not w.inflight
                and w.quota != 0
                and not w.recycle
                and not w.writer.pending
                and not w.stalled
            ):
                if not task.start():
                    return True
                w.sent = task.seq = w.sent + 1
                w.inflight.append(task)
                task.where = w
                w.mark = time.monotonic()
                if w.quota is not None:
                    w.quota -= 1
                try:
                    done = w.writer.send(KIND_CALL, task.tid, task.payload)
                except OSError:
                    done = False  # the worker is gone: the manager will see it
                if not done or w.quota == 0:
                    self.wake()  # the manager finishes the write or the exit
                return True
        return False

    def unmask(self, w: Lane) -> None:
        """Watch w's results again (help left them masked), from any thread:
        at once if the manager sleeps, else before it next sleeps."""
        if self.pid != os.getpid():
            return
        if not self.dispatch_lock.acquire(False):
            self.wake()
            return
        try:
            if w in self.masked:  # not forgotten meanwhile: its fd is open
                self.rearm(w)
        finally:
            self.dispatch_lock.release()

    def help(self, task: Task, w: Lane, end: float | None) -> None:
        """Read task's result in the calling thread (result(), dispatch_lock free).

        See the module's docstring: taken only while the manager sleeps;
        anything else that becomes ready ends the help. epoll only: the poll
        backend's set cannot change under a waiting thread.
        """
        if (
            not self.sleeping
            or self.waiter_fd < 0
            or w.state is not UP
            or self.generation != _fds.fork_generation
            or self.helper == get_ident()  # a signal handler inside this thread's help
        ):
            return
        settled: list = []
        try:
            # `with`, not acquire(False): an exception from a signal handler
            # cannot come between taking the lock and the block that lets it
            # go. The manager may have woken meanwhile: then this waits until
            # it sleeps again (or ends), and the checks below see it.
            with self.dispatch_lock:
                self.helper = get_ident()
                before = w.reader.taken  # a take since then is help's own
                try:
                    if self.sleeping and not self.closed and task in w.inflight:
                        until = self.sleep_until
                        if until is not None and (end is None or until < end):
                            end = until
                        self._read_for(task, w, end, settled)
                except BaseException:
                    self._give_back(w, settled, before)
                    raise
                finally:
                    self.helper = 0
        finally:
            if settled:
                try:
                    settle_all(settled)
                except BaseException:
                    self._hand_over(settled)
                    raise

    def _give_back(self, w: Lane, out: list, before: tuple) -> None:
        """help was interrupted (an exception from a signal handler, in the
        main thread; dispatch_lock held): leave w as if the manager had read
        only what was decoded into out. A call whose outcome is in out leaves
        inflight; the frames the last take handed out from the first one not
        decoded on go back to the decoder, and the manager reads them."""
        done = {item[0].tid for item in out}
        inflight = w.inflight
        while inflight and inflight[0].tid in done:
            inflight.popleft()  # appended, then interrupted before it left
        reader = w.reader
        meta = reader.taken
        if meta is before:
            meta = ()  # no take of help's own: the last one's frames are used
        first = 0
        for i in range(0, len(meta), 4):
            kind = meta[i] & KIND_MASK
            if (kind == KIND_RESULT or kind == KIND_ERROR) and meta[i + 1] in done:
                first = i + 4
        if first < len(meta):
            reader.rewind(meta[first + 2])
        self.reread.add(w)
        self.handed_back = True
        self.wake()

    def _hand_over(self, outcomes: list) -> None:
        """Settling was interrupted: the manager settles them (again, for those
        already settled: a no-op)."""
        self.orphans.extend(outcomes)
        self.handed_back = True
        self.wake()

    def _read_for(self, task: Task, w: Lane, end: float | None, settled: list) -> None:
        """help's wait: read w's results until task's is among them (dispatch_lock held)."""
        poll = self.help_poll
        if poll is None:
            poll = self.help_poll = select.poll()
            poll.register(self.waiter_fd, select.POLLIN)
        fd, inflight = w.result_fd, w.inflight
        if w not in self.masked:
            self.masked.add(w)  # first: an interrupt between leaves it rearmed, not lost
            self.waiter.modify(fd, 0)
        read_frames = w.reader.read_frames
        spin = self.spin
        spin_ns = SPIN_NS if spin.first() else 0  # see Spin
        if spin_ns and end is not None:
            spin_ns = min(spin_ns, max(0, int((end - time.monotonic()) * 1e9)))
        polling = False
        try:
            while task in inflight:
                n, meta, view = read_frames(fd, spin_ns)
                if n < 0 and not meta:  # nothing yet: sleep on it
                    if spin_ns:
                        spin.missed()
                        spin_ns = 0
                    if not polling:
                        poll.register(fd, select.POLLIN)
                        polling = True
                    ms = -1 if end is None else max(0, math.ceil((end - time.monotonic()) * 1000))
                    ready = poll.poll(ms)
                    if len(ready) != 1 or ready[0][0] != fd:
                        return  # time is up, or the manager has work
                    continue
                if spin_ns:
                    spin.found()
                    spin_ns = 0
                self._decode(w, settled, meta, view)
                if n == 0:
                    return  # end of file: the manager sees it too
                if inflight and inflight[0].t0 and self._unknown_deadline(inflight[0]):
                    return  # the manager must enforce it: finally wakes it
        except ChannelError as exc:
            self._protocol_error(w, str(exc))
        finally:
            if polling:
                poll.unregister(fd)
            if inflight:  # calls no one may wait on here: the manager's again
                self.rearm(w)
                if inflight[0].t0 and self._unknown_deadline(inflight[0]):
                    self.wake()  # a deadline started that the sleeping manager does not know
            if settled and (self.pending or w.recycle or w.quota == 0):
                self.wake()  # work to dispatch, or a worker to retire

    def _unknown_deadline(self, head: Task) -> bool:
        """True when head's deadline (it said it started: a STARTED frame read
        here) comes before the sleeping manager means to wake up."""
        until = self.sleep_until
        return until is None or head.t0 + head.timeout < until

    def rearm_masked(self) -> None:
        """Watch again the result fds that help() left out of the waiter."""
        for w in list(self.masked):
            self.rearm(w)

    def drop(self, w: Lane) -> None:
        """Forget a dead lane: its fd is being closed, nothing to rearm."""
        self.masked.discard(w)

    def rearm(self, w: Lane) -> None:
        """Put w's result fd, masked by help(), back in the waiter (dispatch_lock held)."""
        self.waiter.modify(w.result_fd, READABLE)
        self.masked.discard(w)
