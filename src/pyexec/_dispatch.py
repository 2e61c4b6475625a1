"""Dispatch: pending calls to the workers, and the workers themselves.

The manager's side that sends: start workers as the backlog asks, hand
pending calls to workers with room (many frames per write; a per-item map's
items as one BATCH frame per run, a chunked map's as one BATCH frame per
chunk, see _push_chunk), ask workers to exit, flush call pipes that were full.
A mixin of Manager: these methods run in the manager thread only, with
dispatch_lock held. They write ``pending`` (pop), the lanes' ``inflight``,
``quota``, ``mark``, ``sent`` (and each call's ``seq``: the number of its
frame on that lane, see _lanes' claim word) and ``state`` (to EXITING), ``starting``,
``started_workers``, ``replaced``, ``failed`` (a map item that cannot be
pickled), ``cancelled`` (calls dropped: cancelled, or of an abandoned map)
and the set of call fds watched while full (``_writers``).

A call with big buffers (``task.oob``, see _payloads) has them placed in its
worker's arena here, at dispatch, and a worker's arena takes at most a quarter
of its size in arguments in flight: further big calls wait (``chan.blocked``)
for the releases its results bring, rather than spill into fresh segments.
"""

from __future__ import annotations

import pickle
import signal
import time
from typing import Any

from . import _frames as frames
from ._buffers import Pickled
from ._errors import BROKEN_PREFIX
from ._future import start_fast
from ._lanes import WINDOW_MAX, WINDOW_PAIR, Lane, State
from ._launch import LauncherGone
from ._tasks import MapJob, RawBlock, Task, split_block
from ._waiter import READABLE, WRITABLE

UP, EXITING = State.UP, State.EXITING


class Dispatch:
    """Manager methods that send work (see the module's docstring)."""

    def _adjust_workers(self) -> None:
        """Start workers while there is more work than live workers can take."""
        # A worker asked to exit still counts while it runs its last calls: a
        # retired worker's replacement starts once the old one is done, so no
        # more than max_workers processes run calls (as in the stdlib).
        alive = sum(1 for w in self.workers if w.state is UP or w.inflight) + self.starting
        inflight = sum(len(w.inflight) for w in self.workers)
        want = max(self.keep, min(self.max_workers, self._backlog(self.max_workers) + inflight))
        if self.stop and not self.pending:
            want = 0
        if self.start_after and time.monotonic() < self.start_after:
            return  # a worker died before it was ready: wait a moment (see _worker_died)
        while alive < want:
            if self.started_workers >= self.max_workers:
                self.replaced += 1
            self.started_workers += 1
            try:
                w = self.launcher.start()
            except LauncherGone as exc:
                self._break(f"{BROKEN_PREFIX}: {exc.strerror}", cause=exc.__cause__)
                return
            except Exception as exc:  # fork's EAGAIN, spawn's main module failing...
                self._break(f"{BROKEN_PREFIX}: a worker could not be started: {exc!r}", cause=exc)
                return
            if w is None:
                self.starting += 1  # on its way: see take_ready
            else:
                self._add_worker(w)
            alive += 1

    def _add_worker(self, w: Lane) -> None:
        w.quota = self.max_tasks
        if w.chan is not None:
            w.chan.size = self.arena_size
        self.workers.append(w)
        self.by_fd[w.result_fd] = w
        self.by_fd[w.sentinel] = w
        self.by_fd[w.call_fd] = w
        self.waiter.add(w.result_fd, READABLE)
        self.waiter.add(w.sentinel, READABLE)
        if self.broken is not None:
            self._signal(w, signal.SIGKILL)

    def _signal(self, w: Lane, sig: int) -> None:
        self.launcher.kill(w, sig)

    def _backlog(self, limit: int) -> int:
        """Calls waiting in pending, counted up to limit (map items included)."""
        pending = self.pending
        n = len(pending)
        if n >= limit:
            return limit  # an entry is at least one call (an emptied map job is rare)
        # By index, not by iterator: submit appends from other threads, which an
        # iterator reports as an error (and a lock here would stall submit).
        # Only this thread pops, but for shutdown's cancel: an entry gone
        # meanwhile ends the count early, which this estimate tolerates.
        count = 0
        try:
            for i in range(n):
                entry = pending[i]
                count += len(entry.items) if entry.__class__ is MapJob else 1
                if count >= limit:
                    return limit
        except IndexError:
            pass
        return count

    def _room(self, w: Lane, now: float) -> int:
        """How many more calls w may hold. None when it is over its memory limit
        (it drains its window and exits), and none behind a head call that has
        run longer than WINDOW_PAIR: the window was sized for short calls, and
        this one may be long (a worker on its way, or one that frees up, takes
        them). One at most while it is stalled (see _lanes)."""
        inflight = w.inflight
        if w.recycle or (inflight and now - w.mark > WINDOW_PAIR):
            return 0
        if w.stalled:  # its calls were taken back (see _lanes): one, until it answers
            return 0 if inflight else 1
        if inflight and w.chan is not None and w.chan.blocked:
            return 0  # its big calls wait for room in its arena (see _dispatch)
        return self.window.size - len(inflight)

    def _has_room(self) -> bool:
        now = time.monotonic()
        return any(w.state is UP and self._room(w, now) > 0 for w in self.workers)

    def _dispatch(self) -> None:
        """Hand pending calls to workers with room, many frames per write."""
        pending = self.pending
        stopping = self.stop
        now = time.monotonic()
        # Least loaded first: an idle worker takes the next call before a busy
        # one queues it behind a call that may be long.
        workers = self.workers
        share = 0
        if pending:
            if len(workers) > 1:
                # A stalled worker last: the calls taken back from it go elsewhere.
                workers = sorted(
                    workers, key=lambda w: len(w.inflight) + (WINDOW_MAX if w.stalled else 0)
                )
            # Spread a short burst evenly over the workers.
            ups = sum(1 for x in workers if x.state is UP) or 1
            share = -(-self._backlog(self.window.size * ups) // ups)
        for w in workers:
            if w.state is not UP:
                continue
            inflight = w.inflight
            room = self._room(w, now)
            if pending and room > 0:
                room = min(room, share)
                if w.quota is not None:
                    room = min(room, w.quota)
                idle = not inflight
                chan = w.chan
                # Bytes of big arguments w may still take: beyond, a call waits
                # for earlier ones to free their slots (not a fresh segment).
                limited = chan is not None and chan.size > 0
                budget = chan.budget() if limited else 0
                releases = chan.releases if chan is not None else ()
                sent = 0
                while sent < room:
                    try:
                        task = pending.popleft()
                    except IndexError:
                        break
                    if task.__class__ is MapJob:
                        sent += self._push_batch(w, task, room - sent)
                    elif task.job is None:
                        if task.oob is not None and limited:
                            budget -= task.oob_bytes
                            if budget < 0 and (inflight or sent):
                                pending.appendleft(task)
                                chan.blocked = True
                                break
                        # A run of submitted calls, marked running together.
                        run = [task]
                        while (
                            len(run) < room - sent
                            and pending
                            and pending[0].__class__ is Task
                            and pending[0].job is None
                            and pending[0].oob is None
                        ):
                            run.append(pending.popleft())
                        sent += self._push_run(w, run, releases)
                    elif task.start():  # a map item sent again after a restart
                        sent += self._push_batch(w, task.job, room - sent, [task])
                    else:
                        self.cancelled += 1
                if sent:
                    if idle:
                        w.mark = now
                    if w.quota is not None:
                        w.quota -= sent
                    self._flush(w)
            if w.state is UP and (
                w.quota == 0 or w.recycle or (stopping and not pending and not inflight)
            ):
                self._ask_exit(w, now)

    def _push_run(self, w: Lane, run: list[Task], releases: Any) -> int:
        """Send a run of submitted calls (popped from pending) to w, marked
        running together, the cancelled ones left out; return how many were
        sent. One call per run, not per call: a run is up to w's room."""
        started = start_fast(run)
        if started is not run:
            self.cancelled += len(run) - len(started)
        push = w.writer.push
        inflight = w.inflight
        KIND_CALL = frames.KIND_CALL
        first = seq = w.sent
        for task in started:
            report = frames.FLAG_STARTED if task.timeout is not None else 0
            if task.oob is None and not releases:
                push(KIND_CALL, task.tid, task.payload, report)
            else:
                encoded = self._encode_call(w, task)
                if encoded is None:
                    continue  # it could not be pickled: settled
                push(KIND_CALL, task.tid, encoded[0], report | encoded[1])
            seq += 1
            task.seq = seq
            inflight.append(task)
        w.sent = seq
        return seq - first

    def _encode_call(self, w: Lane, task: Task) -> tuple[bytes, int] | None:
        """A call's frame payload and flags for w: its big buffers placed in w's
        arena now (referenced, not copied, until here), the releases of w's results
        riding along. In-band when w has no shared memory. None (the call failed,
        settled) when its in-band pickle fails."""
        chan, oob = w.chan, task.oob
        if oob is not None and chan is not None and chan.enabled:
            # Views of their own: placing releases them, and the call keeps its
            # buffers to be placed again if w dies before running it.
            fresh = Pickled(oob.payload, [(k, memoryview(v)) for k, v in oob.buffers])
            try:
                return chan.encode(fresh), frames.FLAG_OOB
            except OSError:
                pass  # no shared memory at all (warned), or w is gone: in-band
        payload = task.payload
        if oob is not None:
            try:
                payload = pickle.dumps(task.args, pickle.HIGHEST_PROTOCOL)
            except BaseException as exc:
                self.failed += 1
                task.settle(exc=exc)
                return None
        if chan is not None and chan.releasing():
            try:
                return chan.encode(None, payload), frames.FLAG_OOB
            except OSError:
                pass  # w is gone
        return payload, 0

    def _push_batch(self, w: Lane, job: MapJob, room: int, batch: list | None = None) -> int:
        """Send up to room items of a map in one BATCH frame (job was popped from pending).

        batch: items already taken (requeued ones); the rest come from the job.
        A chunked map's job sends one chunk instead (see _push_chunk).
        """
        if job.chunked:
            return self._push_chunk(w, job, batch)
        pending = self.pending
        batch = batch or []
        if batch:  # requeued items of this map come first, in order
            while len(batch) < room and pending and getattr(pending[0], "job", None) is job:
                batch.append(pending.popleft())
        else:
            with self.lock:
                if job.cancelled:  # its iterator was dropped: its calls never run
                    self.cancelled += job.waiting
                    job.items.clear()
                    job.waiting = 0
                else:
                    batch = job.take(room, self.ids)
                if job.items:
                    pending.appendleft(job)  # the rest goes first next time
                else:
                    job.queued = False
        if not batch:
            return 0
        # Each item's arguments were pickled on their own by the caller's
        # thread: one that could not be pickled there (its exception stands
        # in for the pickle), or unpickled in the worker, fails alone.
        pickles = []
        good = []
        for task in batch:
            task.started = True
            if task.args.__class__ is bytes:
                pickles.append(task.args)
                good.append(task)
            else:
                self.failed += 1
                task.settle(exc=task.args)
        if not good:
            return 0
        batch = good
        payload = pickle.dumps(
            ([t.tid for t in batch], job.fn_pickle, pickles, job.star), pickle.HIGHEST_PROTOCOL
        )
        # Held-back results die with a worker: allow it only where losing one
        # changes nothing (a crash breaks the pool; no deadline to enforce).
        if job.timeout is not None:
            flags = frames.FLAG_STARTED
        else:
            flags = frames.FLAG_HOLD if self.on_crash == "break" else 0
        w.writer.push(frames.KIND_BATCH, batch[0].tid, payload, flags)
        seq = w.sent
        for task in batch:  # each item is a call of its own on the claim word
            seq += 1
            task.seq = seq
        w.sent = seq
        w.inflight.extend(batch)
        return len(batch)

    def _push_chunk(self, w: Lane, job: MapJob, batch: list | None) -> int:
        """Send one chunk of a chunked map (see MapJob.take_chunk) as one BATCH
        frame whose one result frame answers all its items; batch: a chunk
        sent again (requeued)."""
        if batch:
            task = batch[0]
            task.owner = self  # (drained by shutdown's cancel, then kept)
        else:
            with self.lock:
                task = None
                if job.cancelled:  # its iterator was dropped: its calls never run
                    self.cancelled += job.waiting
                    job.items.clear()
                    job.waiting = 0
                else:
                    task = job.take_chunk(self.ids, self.max_workers)
                if job.items:
                    self.pending.appendleft(job)
                else:
                    job.queued = False
            if task is None:
                return 0
            task.owner = self
        blocks = task.args
        first = blocks[0]
        if first.__class__ is RawBlock:  # items map() left for this thread to pickle
            try:
                blocks[0] = job.dumps(first.items, pickle.HIGHEST_PROTOCOL)
            except BaseException:
                # Split it, and fail only the item that cannot be pickled.
                parts = split_block(job.dumps, first.items, task.index)
                with self.lock:
                    if not job.cancelled:
                        job.items.extendleft(reversed(parts))
                        job.waiting += task.count
                        if not job.queued:
                            job.queued = True
                            self.pending.appendleft(job)
                return 0
        elif first.__class__ is not bytes:  # the exception pickling it raised
            task.started = True
            self.failed += 1
            task.settle(None, first)
            return 0
        task.started = True
        payload = pickle.dumps((job.fn_pickle, blocks, job.star), pickle.HIGHEST_PROTOCOL)
        w.writer.push(frames.KIND_BATCH, task.tid, payload, 0)
        w.sent = task.seq = w.sent + 1
        w.inflight.append(task)
        return 1

    def _ask_exit(self, w: Lane, now: float) -> None:
        """Queue the exit frame: the worker finishes its window, acks and exits."""
        w.state = EXITING
        w.exit_at = now
        w.writer.push(frames.KIND_EXIT, 0)
        self._flush(w)

    def _flush(self, w: Lane) -> None:
        try:
            done = w.writer.flush()
        except OSError:
            return  # the worker is gone: its sentinel and result pipe tell the rest
        watching = w.call_fd in self._writers
        if not done and not watching:
            self.waiter.add(w.call_fd, WRITABLE)
            self._writers.add(w.call_fd)
        elif done and watching:
            self.waiter.remove(w.call_fd)
            self._writers.discard(w.call_fd)
