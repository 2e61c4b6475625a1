"""pytest-benchmark: pyexec.dask.DaskExecutor against Dask's own executor, on a LocalCluster.

``python -m pytest bench/test_bench_dask.py --benchmark-only`` (needs ``pyexec[dask]``).
One LocalCluster (2 worker processes, one thread each, loopback) serves every row, so the
rows compare the executors, not cluster start-ups. The calls all differ (``abs(-i)``), so
``Client.get_executor()``'s deduplication of identical calls does not flatter it.

Groups:

- dask-tiny-submit: TINY submits, then every result.
- dask-chunked-map: map over CHUNKED items with chunksize CHUNK (a chunk is one task for
  DaskExecutor; ``Client.get_executor().map`` ignores chunksize: one task per item).
- dask-stop-one-call: from stopping a running call to a new call's result on the freed slot:
  DaskExecutor.terminate_task (a pyexec pool process is replaced) against killing the Dask
  worker process (what stopping a call costs without the pool: the nanny restarts it).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import distributed
import pytest

from pyexec.dask import DaskExecutor

TINY = 500
CHUNKED = 2_000
CHUNK = 100
ROUNDS = 3
EXECUTORS = ["pyexec.dask", "Client.get_executor", "Client.submit"]


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    c = distributed.Client(cluster, set_as_default=False)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


class _RawSubmit:
    """Client.submit(pure=False) and result(): Dask with no executor on top."""

    def __init__(self, client: distributed.Client) -> None:
        self.client = client

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)


@pytest.fixture(params=EXECUTORS)
def executor(request, client) -> Iterator:
    if request.param == "pyexec.dask":
        ex = DaskExecutor(client=client)
        try:
            ex.submit(abs, -1).result(60)  # the workers' pools are started
            yield ex
        finally:
            ex.shutdown()
    elif request.param == "Client.get_executor":
        yield client.get_executor()
    else:
        yield _RawSubmit(client)


def _tiny(ex) -> None:
    futures = [ex.submit(abs, -i) for i in range(TINY)]
    assert [f.result() for f in futures] == list(range(TINY))


@pytest.mark.benchmark(group="dask-tiny-submit")
def test_dask_tiny_submit(benchmark, executor) -> None:
    benchmark.extra_info["tasks"] = TINY
    benchmark.pedantic(_tiny, args=(executor,), rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="dask-chunked-map")
def test_dask_chunked_map(benchmark, executor) -> None:
    if isinstance(executor, _RawSubmit):
        pytest.skip("Client.submit has no map with chunks")
    benchmark.extra_info["items"] = CHUNKED
    benchmark.extra_info["chunksize"] = CHUNK

    def run() -> None:
        out = list(executor.map(abs, range(-CHUNKED, 0), chunksize=CHUNK))
        assert out[0] == CHUNKED and len(out) == CHUNKED

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="dask-stop-one-call")
def test_dask_stop_by_terminate_task(benchmark) -> None:
    """terminate_task on a 1-worker cluster: until the next call's result."""
    with DaskExecutor(n_workers=1) as ex:
        ex.submit(abs, 1).result(60)

        def setup():
            fut = ex.submit(time.sleep, 60)
            while not fut.running():
                time.sleep(0.005)
            return (fut,), {}

        def stop(fut) -> None:
            ex.terminate_task(fut)
            assert ex.submit(abs, -3).result(60) == 3

        benchmark.pedantic(stop, setup=setup, rounds=5, iterations=1)


@pytest.mark.benchmark(group="dask-stop-one-call")
def test_dask_stop_by_killing_the_worker(benchmark) -> None:
    """SIGKILL the Dask worker running the call (1-worker cluster, nanny): until a result."""
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        client.submit(abs, 1, pure=False).result(60)

        def setup():
            fut = client.submit(time.sleep, 60, pure=False)
            while not client.processing() or not any(client.processing().values()):
                time.sleep(0.005)
            pid = next(iter(client.run(os.getpid).values()))
            return (fut, pid), {}

        def stop(fut, pid) -> None:
            os.kill(pid, signal.SIGKILL)
            client.cancel(fut)
            assert client.submit(abs, -3, pure=False).result(60) == 3

        benchmark.pedantic(stop, setup=setup, rounds=5, iterations=1)


# ---- the two hops a call adds inside a Dask worker: `python bench/test_bench_dask.py` ----


def _hops(trips: int = 300) -> dict[str, float]:
    """In a Dask worker's thread: medians (µs) of a pool round trip and of the judge's rpc."""
    import statistics

    from distributed.utils import sync

    w = distributed.get_worker()
    pool = w.plugins["pyexec-pool"]._pool()
    out = {}
    for name, call in [
        ("pool round trip", lambda: pool.submit(int).result()),
        (
            "judge rpc",  # a key the judge does not know: refused, after the same round trip
            lambda: sync(
                w.loop, w.scheduler.pyexec_start, key="pyexec-none-0", worker=w.address, pid=0
            ),
        ),
    ]:
        for _ in range(20):
            call()
        times = []
        for _ in range(trips):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1e6
    return out


if __name__ == "__main__":
    with DaskExecutor(n_workers=2) as ex:
        ex.submit(abs, 1).result()
        workers = list(ex.client.scheduler_info()["workers"])
        for _ in range(3):
            futures = [ex.client.submit(_hops, pure=False, workers=[w]) for w in workers]
            for w, hops in zip(workers, ex.client.gather(futures), strict=True):
                print(w, ", ".join(f"{k} {v:.0f} µs" for k, v in hops.items()))
