"""Submit slow calls that each write a file, shutdown(wait=False), report how long
that took, and fall off the end: interpreter exit must let the calls finish.

argv: impl (stdlib|pyexec), start method, output directory, seconds per call.
"""

import json
import multiprocessing
import sys
import time

import _common
from api_funcs import touch

if __name__ == "__main__":
    impl, method, outdir, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    ex = _common.executor_class(impl)(2, mp_context=multiprocessing.get_context(method))
    fs = [ex.submit(touch, outdir, i, seconds) for i in range(4)]
    t = time.monotonic()
    ex.shutdown(wait=False)
    took = time.monotonic() - t
    print(json.dumps({"shutdown_seconds": took, "done_at_return": sum(f.done() for f in fs)}))
    sys.stdout.flush()
