"""Issue 14.6b: an exception raised by a signal handler inside result() must lose no
call. Many rounds of: submit a few tiny calls, interrupt result() at a random moment
(SIGALRM after a random few microseconds, its handler raises KeyboardInterrupt),
then every call must still complete. Prints "ok N" and exits 0; exits 1 naming the
lost calls; a hang (the interpreter's exit waiting on a lost call) is the caller's
timeout.

usage: kbint_result.py START_METHOD SECONDS
"""

import concurrent.futures as cf
import multiprocessing
import random
import signal
import sys
import time

from abuse_funcs import tiny

import pyexec

armed = False


def interrupt(signum, frame):
    if armed:
        raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGALRM, interrupt)
    rng = random.Random(14)
    ex = pyexec.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(sys.argv[1]))
    stop = time.monotonic() + float(sys.argv[2])
    rounds = interrupted = 0
    lost = []
    while time.monotonic() < stop and not lost:
        rounds += 1
        futures = [ex.submit(tiny, i) for i in range(rng.choice((1, 1, 2, 5)))]
        signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 300e-6))
        try:
            armed = True
            futures[-1].result(timeout=30)
        except KeyboardInterrupt:
            interrupted += 1
        except Exception:
            pass  # a result the interrupt turned into an error: counted below
        finally:
            armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        _, not_done = cf.wait(futures, timeout=10)
        # A call never settled, or one whose good result became an error.
        lost = [f for f in futures if f in not_done or f.exception() is not None]
    if lost:
        what = [("never settled" if not f.done() else repr(f.exception())) for f in lost]
        print(f"lost {len(lost)} calls in round {rounds} ({interrupted} interrupted): {what}")
        import os

        os._exit(1)  # the interpreter's exit would wait on the lost calls forever
    ex.shutdown()
    print(f"ok {rounds} rounds, {interrupted} interrupted", flush=True)
