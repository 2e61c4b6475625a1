"""Timers: what the manager does as time passes, with no event from a worker.

Deadlines (``_deadlines``): a call past its task timeout, a call
terminate_task() asked to stop, a worker asked to exit that did not within
EXIT_GRACE, each has its worker killed (the death itself is handled by
_outcomes, which reads ``kill_reason`` and ``kill_target``). Stranded calls
(``_unstrand``): the calls queued behind a stuck worker's head are taken back,
through the lanes' claim words (see _lanes), for an idle worker. Both return
the seconds until they must look again: the manager's wait timeout.

No state of its own. A mixin of Manager: these methods run in the manager thread only, with
dispatch_lock held, when the manager is about to wait. They write the lanes'
``kill_reason``, ``kill_target``, ``swept``, the revoked calls' ``where``,
and ``pending`` (revoked calls go first in line again, see _requeue).
"""

from __future__ import annotations

import select
import signal
import time

from ._lanes import Kill, State

UP, EXITING, DEAD = State.UP, State.EXITING, State.DEAD
# How long a worker asked to exit may take before it is killed (seconds),
# counted from the moment its last call is done.
EXIT_GRACE = 5.0
# A worker whose head call has run this long (seconds), or STRAND_CALLS times
# the estimated call time if longer, gives back the calls queued behind it
# when another worker idles (see _unstrand). Far above a round trip and any
# scheduling hiccup, far below what a caller notices.
STRAND_AFTER = 0.05
STRAND_CALLS = 8


class Timers:
    """Manager methods that act on time (see the module's docstring)."""

    def _deadlines(self) -> float | None:
        """Kill every worker whose deadline has passed; return the seconds until
        the next deadline (None: there is none).

        A worker's deadline: its head call's (when the call said it started,
        plus its timeout), now for a head call terminate_task() asked to stop,
        or, for a worker asked to exit that holds nothing, EXIT_GRACE after
        its last call was done. A worker already killed has none.
        """
        best = None
        now = time.monotonic()
        for w in self.workers:
            if w.state is DEAD or w.kill_reason is not None:
                continue
            head = None
            if w.inflight:
                head = w.inflight[0]
                if head.kill is not None:
                    reason, due = head.kill, now
                elif head.t0:
                    reason, due = Kill.TIMEOUT, head.t0 + head.timeout
                else:
                    continue
            elif w.state is EXITING:
                reason, due = Kill.EXIT_GRACE, w.exit_at + EXIT_GRACE
            else:
                continue
            if now >= due:
                if _readable(w.result_fd):
                    # Its result may be there already (a manager held up): read
                    # it first, or the kill would hit the call after it.
                    best = now
                    continue
                w.kill_reason = reason
                w.kill_target = head
                self._signal(w, signal.SIGKILL)
            elif best is None or due < best:
                best = due
        return None if best is None else best - now

    def _unstrand(self) -> float | None:
        """Take back the calls queued in a stuck worker's window while another
        worker idles; return the seconds until it should be looked at again
        (None: no need).

        A worker is stuck when its head call has run STRAND_AFTER (or
        STRAND_CALLS times the estimated call time, if longer) and it holds
        calls it has not started, sent since its last revoke (a long call
        alone is looked at once, not again and again). Its calls not started are revoked
        (see _lanes) and go first in line again, for the idle worker; the call
        it runs is left alone, however long it takes (as the standard library
        does). Checked when the manager is about to sleep, not per call.
        """
        workers = self.workers
        if len(workers) < 2:
            return None
        best = None
        now = time.monotonic()
        limit = STRAND_CALLS * self.window.service_time
        if limit < STRAND_AFTER:
            limit = STRAND_AFTER
        idle = None
        for w in workers:
            if (
                not w.inflight
                or w.sent == w.swept
                or w.claim is None
                or w.state is DEAD
                or w.kill_reason is not None
            ):
                continue
            due = w.mark + limit
            if now < due:
                if best is None or due < best:
                    best = due
                continue
            if w.all_claimed():
                # Nothing to take back (a long call with none queued behind
                # it): no need to look again until more is sent to it.
                w.swept = w.sent
                continue
            if idle is None:
                idle = any(
                    x.state is UP
                    and not x.inflight
                    and not x.stalled
                    and not x.recycle
                    and x.quota != 0
                    for x in workers
                )
            if not idle:
                # Look again later: a worker may free up unseen (help() reads
                # results with the manager asleep).
                due = now + limit
                if best is None or due < best:
                    best = due
                continue
            taken = w.revoke()
            if taken:
                for task in taken:
                    task.where = None  # not on w any more: nothing to help() read there
                self._requeue(taken)
        return None if best is None else best - now


def _readable(fd: int) -> bool:
    """Whether fd has something to read now (checked only when a deadline passed)."""
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return False
