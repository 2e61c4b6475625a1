"""The manager's view of one worker (a Lane), its states, and the window estimate.

A Lane is made by a launcher (_launch, _zygote) and from then on belongs to
the manager thread: its state, what it holds in flight, its quota and its
deadlines. The one exception is the hand-off (see _handoff): a caller's
thread holding the manager's dispatch_lock may append to or pop from
``inflight``, lower ``quota``, set ``mark`` and ``recycle``, count ``sent``
and write to the lane's pipe. The Window is the manager thread's alone (and a
hand-off's, under the same lock).

The claim word: each worker shares with the parent one 64-bit word (a
segment of its own, made with its pipes and mapped by both; see px_claim in
csrc/pyexec.h) that says which of the calls queued in its window it may still
run. The parent numbers the calls it sends to a lane (``sent``, each task's
``seq``): a CALL frame, a chunk's BATCH frame, each item of a per-item BATCH
frame; the worker counts the calls it reads the same way and claims each one
before it runs it (map items a few at a time: see _worker._run_batch; a claim
through N claims every call up to N). The parent (the manager
thread, under dispatch_lock) may revoke every call the worker has not claimed
yet (``revoke``), whatever state the worker is in -- stopped by SIGSTOP, or
stuck in a call that never returns -- and send those calls to other workers:
the worker can never claim them afterwards, so none runs twice. A worker
whose calls were revoked is ``stalled`` until it answers again: it is given
at most one call meanwhile, after every other worker (see _dispatch).
"""

from __future__ import annotations

from collections import deque
from enum import Enum, IntEnum
from typing import Any

from . import _fds
from ._buffers import _map
from ._frames import Decoder, Writer
from ._native import lib
from ._payloads import Channel

# Calls a worker may hold beyond the one it runs. The window adapts to how
# long calls take: WINDOW_SECONDS of queued work per worker, between 1 and
# WINDOW_MAX calls. Small windows keep long calls spread over every worker
# and keep cancel() working; large ones let a burst of tiny calls travel in
# few writes. A window of 1 wastes a round trip per call, which only matters
# for calls shorter than that round trip.
WINDOW_SECONDS = 0.002
WINDOW_MAX = 256
WINDOW_PAIR = 0.05
# Call numbers on the claim word are modulo 2^32.
SEQ_MASK = 0xFFFFFFFF
SEQ_HALF = 0x80000000


def map_claim(fd: int) -> Any:
    """Map a claim word's segment (fd is closed, here or by the caller as it
    likes: the mapping outlives it); unmapped when the pointer dies."""
    return _map(fd, lib.PX_CLAIM_SIZE, lib.PX_MAP_SEALED)


class State(IntEnum):
    """Where a worker is in its life, as the manager sees it."""

    UP = 0  # takes calls
    EXITING = 1  # the exit frame is sent (or it is being killed): no new calls
    DEAD = 2  # its sentinel fired or its pipe ended; its fds are closed


class Kill(Enum):
    """Why the manager killed a worker (or is asked to kill the one running a call)."""

    TIMEOUT = "timeout"  # its head call ran past its deadline
    TERMINATE = "terminate"  # terminate_task() on its head call
    EXIT_GRACE = "exit-grace"  # asked to exit, it did not within EXIT_GRACE


class Lane:
    """The parent's handle on one worker process: its pipes, state and calls in flight."""

    __slots__ = (
        "_proc",
        "acked",
        "call_fd",
        "chan",
        "claim",
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
        "sent",
        "sentinel",
        "stalled",
        "state",
        "swept",
        "writer",
    )

    def __init__(
        self,
        pid: int,
        call_fd: int,
        result_fd: int,
        sentinel: int,
        proc: Any,
        side: int = -1,
        claim: int = -1,
    ) -> None:
        """side: the parent's end of the worker's fd socket (see _payloads), owned;
        claim: its claim word's segment (see the module's docstring), mapped here
        and closed."""
        self.pid = pid
        # Its shared-memory channel: no arena until a big payload needs one (the
        # manager sets the size it may have).
        self.chan = Channel(_fds.own_fd(side), 0, mapped=False) if side >= 0 else None
        self.call_fd = _fds.own_fd(call_fd)
        self.result_fd = _fds.own_fd(result_fd)
        self.sentinel = sentinel
        self._proc = proc
        self.writer = Writer(call_fd)
        self.reader = Decoder()
        self.inflight: deque = deque()  # the calls it holds, in the order sent
        self.state = State.UP
        self.ready = False  # it sent READY (its initializer ran)
        self.mark = 0.0  # when the call at the head of inflight started
        self.exit_at = 0.0  # when it was asked to exit with nothing in flight
        self.quota: int | None = None  # calls it may still be given (max_tasks_per_child)
        self.recycle = False  # it reported memory over max_memory_per_child
        self.acked = False  # it acknowledged the exit frame
        self.fatal: str | None = None  # why it is about to die, when it told us
        self.kill_reason: Kill | None = None  # set once the manager killed it
        self.kill_target: Any = None  # the call it was killed for
        # The claim word (None: the worker has none, nothing can be revoked).
        self.claim: Any = None
        if claim >= 0:
            try:
                self.claim = map_claim(claim)
            finally:
                _fds.close_fd(claim)
        self.sent = 0  # calls sent to it (the last one's number on the claim word)
        self.swept = 0  # sent as of the last revoke: nothing more to take back since
        self.stalled = False  # calls were revoked from it; it has not answered since

    def all_claimed(self) -> bool:
        """Whether the worker has started (claimed) every call it holds."""
        claimed = lib.px_claim_peek(self.claim) & SEQ_MASK
        inflight = self.inflight
        return not inflight or not 0 < (inflight[-1].seq - claimed) & SEQ_MASK < SEQ_HALF

    def revoke(self) -> deque:
        """Take back every call the worker has not started (see the module's
        docstring): they leave ``inflight``, in order, and are returned. What
        stays is what it claimed (its head, running or done, the map items
        claimed with it, and any call before it whose result is on its way)."""
        self.swept = self.sent
        claimed = lib.px_revoke(self.claim, self.sent & SEQ_MASK)
        inflight = self.inflight
        taken: deque = deque()
        # Calls are in inflight in the order sent: the revoked ones are a tail.
        while inflight and 0 < (inflight[-1].seq - claimed) & SEQ_MASK < SEQ_HALF:
            taken.appendleft(inflight.pop())
        if taken:
            self.stalled = True
            if self.quota is not None:
                self.quota += len(taken)
        return taken

    def __repr__(self) -> str:
        return f"<worker pid={self.pid} {self.state.name.lower()}>"


class Window:
    """How many calls a worker may hold, from an estimate of how long calls take.

    ``service_time`` is an EWMA of seconds per call (0: not known yet);
    ``size`` the window it gives: WINDOW_SECONDS of work, between 1 (2 for
    calls shorter than WINDOW_PAIR) and WINDOW_MAX.
    """

    __slots__ = ("service_time", "size")

    def __init__(self) -> None:
        self.size = 1
        self.service_time = 0.0

    def observe(self, sample: float, busy: bool) -> None:
        """One sample: seconds per call over the results just read from a
        worker; busy when that worker still holds calls.

        A worker that still holds calls was busy since the mark. One whose
        window ran dry may have idled meanwhile (the manager was late to
        refill it): its sample overstates the calls, and would shrink the
        window and starve the worker further. Such a sample may only lower
        the estimate.
        """
        st = self.service_time
        if st == 0.0 or busy or sample < st:
            st = sample if st == 0.0 else st + 0.2 * (sample - st)
            self.service_time = st
        per = int(WINDOW_SECONDS / st) if st > 0 else WINDOW_MAX
        # Calls shorter than WINDOW_PAIR keep one more queued behind the one
        # running, so a worker does not idle while its next call is pickled
        # and sent; for longer calls the round trip is noise and one call
        # per worker spreads them best.
        least = 2 if st < WINDOW_PAIR else 1
        # Not max(least, min(WINDOW_MAX, per)): the builtins parse their
        # keywords on every call, 0.4 us against 0.1 here, each result.
        per = per if per < WINDOW_MAX else WINDOW_MAX
        self.size = per if per > least else least
