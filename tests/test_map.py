"""The map family (issue 17) and map's points of issue 14: the default map's
chunks keep every per-item promise, unordered=, progress=, a wrapped or
overridden submit, results let go of as yielded, items pickled in the
caller's thread, stats() per item."""

from __future__ import annotations

import ast
import concurrent.futures as cf
import functools
import gc
import io
import itertools
import multiprocessing
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import pytest
from map_funcs import (
    Adder,
    Gate,
    add,
    exit_at,
    fail_at,
    ident,
    lock_at,
    make_big,
    nap_or_fail,
    return_lock,
    sleepy,
    square,
)

import pyexec

# ---- the default map: chunks, with every per-item promise ------------------------


@pytest.mark.timeout(60)
def test_default_map_results_in_order_for_every_input_shape(ctx):
    """A range, a list, a generator and several iterables: the stdlib's results."""
    gen = (i for i in range(5000))
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert list(ex.map(square, range(5000))) == [i * i for i in range(5000)]
        assert list(ex.map(ident, list("abcdef"))) == list("abcdef")
        assert list(ex.map(square, gen)) == [i * i for i in range(5000)]
        assert list(ex.map(add, range(3000), range(10, 20000))) == [2 * i + 10 for i in range(3000)]
        assert list(ex.map(ident, [])) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", [0, 7, 999, 4321])
def test_default_map_raises_at_its_own_item(bad):
    """Every result before the failing item is delivered, then its exception."""
    with pyexec.ProcessPoolExecutor(2) as ex:
        got = []
        with pytest.raises(ValueError) as info:
            for x in ex.map(fail_at, range(5000), itertools.repeat(bad)):
                got.append(x)
    assert got == list(range(bad))
    assert info.value.args == (bad,)
    assert "fail_at" in str(info.value.__cause__)  # the worker's traceback


@pytest.mark.timeout(60)
def test_default_map_unpicklable_item_and_result_fail_at_their_item():
    """An item that cannot be pickled, or a result that cannot, fails at its own place."""
    with pyexec.ProcessPoolExecutor(2) as ex:
        items: list = list(range(100))
        items[40] = threading.Lock()
        got = []
        with pytest.raises(TypeError):
            for x in ex.map(ident, items):
                got.append(x)
        assert got == list(range(40))
        got = []
        with pytest.raises(TypeError):
            for x in ex.map(lock_at, range(3000), itertools.repeat(2500)):
                got.append(x)
        assert got == list(range(2500))
        with pytest.raises(TypeError):
            list(ex.map(return_lock, range(3)))
        assert list(ex.map(ident, range(3))) == [0, 1, 2]  # the pool is fine


@pytest.mark.timeout(60)
def test_items_beyond_what_map_pickles_ahead(monkeypatch):
    """Past PICKLE_AHEAD bytes, map() leaves the items to the manager, which
    pickles them as it sends them: same results, same failure at its own item."""
    from pyexec import _tasks

    monkeypatch.setattr(_tasks, "PICKLE_AHEAD", 100)
    with pyexec.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(square, list(range(5000)))) == [i * i for i in range(5000)]
        items: list = list(range(3000))
        items[2222] = threading.Lock()
        got = []
        with pytest.raises(TypeError):
            for x in ex.map(ident, items):
                got.append(x)
        assert got == list(range(2222))


@pytest.mark.timeout(60)
def test_default_map_lambda_fails_as_with_pickle():
    """The default serializer is pickle: a lambda fails as the stdlib's does."""
    with pyexec.ProcessPoolExecutor(1) as ex:
        it = ex.map(lambda x: x, range(3))
        with pytest.raises((AttributeError, TypeError, Exception)) as info:
            next(it)
    assert "pickle" in repr(info.value).lower() or "lambda" in repr(info.value)


@pytest.mark.timeout(60)
def test_default_map_timeout_and_infinite_input_with_buffersize():
    """timeout counts from the call; an infinite input works with buffersize."""
    with pyexec.ProcessPoolExecutor(2) as ex:
        it = ex.map(sleepy, [0.0, 5.0, 0.0], timeout=0.5)
        assert next(it) == 0.0
        with pytest.raises(cf.TimeoutError):
            next(it)
        pulled = [0]

        def count():
            for i in itertools.count():
                pulled[0] += 1
                yield i

        it = ex.map(square, count(), buffersize=8)
        assert list(itertools.islice(it, 100)) == [i * i for i in range(100)]
        it.close()
        assert pulled[0] == 108  # 3.14: one more call submitted per step


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kwargs", [{}, {"chunksize": 1}, {"chunksize": 3}, {"buffersize": 4}])
def test_closed_map_iterator_yields_nothing_more(kwargs):
    """As the stdlib's generator: after close(), next() raises StopIteration."""
    with pyexec.ProcessPoolExecutor(2) as ex:
        it = ex.map(ident, range(5000), **kwargs)
        assert next(it) == 0
        it.close()
        assert list(it) == []


@pytest.mark.timeout(60)
def test_per_call_guarantees_keep_one_call_per_item(tmp_path):
    """With a deadline each item has its own: one slow item times out, the rest do not."""
    with pyexec.ProcessPoolExecutor(2, task_timeout=1.0) as ex:
        it = ex.map(sleepy, [0.0, 0.0, 30.0, 0.0])
        assert [next(it), next(it)] == [0.0, 0.0]
        with pytest.raises(pyexec.TaskTimeout):
            next(it)


# ---- issue 14: results let go of, items pickled by the caller, stats per item ----


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"chunksize": 1}, {"chunksize": 3}, {"unordered": True}, {"buffersize": 2}],
)
def test_map_iterator_keeps_no_yielded_result(kwargs):
    """bpo-14406 (CPython's test_free_reference): a result the caller dropped is freed
    while the iteration goes on."""
    with pyexec.ProcessPoolExecutor(2) as ex:
        alive = []
        for obj in ex.map(make_big, range(20), **kwargs):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            alive.append(ref() is not None)
    assert not any(alive), alive


@pytest.mark.timeout(60)
def test_map_items_are_pickled_in_the_callers_thread():
    """An item whose pickling blocks stalls map()'s own thread, not the manager:
    an unrelated submit completes while the pickling is still blocked."""
    Gate.started.clear()
    Gate.release.clear()
    with pyexec.ProcessPoolExecutor(2) as ex:
        ex.submit(ident, 0).result(30)  # the pool is up
        mapper = threading.Thread(target=lambda: list(ex.map(ident, [Gate(), 1, 2])))
        mapper.start()
        try:
            assert Gate.started.wait(30)
            # Before the fix the manager itself pickled the item and this waited.
            assert ex.submit(ident, "other").result(timeout=10) == "other"
            assert not Gate.release.is_set()
        finally:
            Gate.release.set()
            mapper.join(30)
    assert not mapper.is_alive()


@pytest.mark.timeout(60)
def test_stats_count_a_chunked_maps_items_as_calls():
    """A default map's items count one by one: submitted, completed, failed."""
    with pyexec.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(ident, range(10000))) == list(range(10000))
        s = ex.stats()
        assert (s.submitted, s.completed, s.failed, s.pending) == (10000, 10000, 0, 0)
        with pytest.raises(ValueError):
            list(ex.map(fail_at, range(3), itertools.repeat(2)))
        s = ex.stats()
    assert (s.submitted, s.completed, s.failed) == (10003, 10002, 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kwargs", [{}, {"chunksize": 1}])
def test_stats_drop_an_abandoned_maps_items_from_pending(kwargs):
    """Items of a map whose iterator was closed are no longer pending (they will
    never run), while the worker is still busy with the ones it holds."""
    with pyexec.ProcessPoolExecutor(1) as ex:
        it = ex.map(sleepy, [0.0] + [0.2] * 200, **kwargs)
        assert next(it) == 0.0
        s = ex.stats()
        assert s.pending + s.running >= 190, s  # a chunk in flight counts its items
        it.close()
        s = ex.stats()
        assert s.pending == 0, s
        assert s.submitted == 201


# ---- unordered ---------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kwargs", [{}, {"chunksize": 1}, {"chunksize": 4}, {"buffersize": 3}])
def test_unordered_yields_each_item_once_as_they_finish(kwargs):
    """A slow first item comes late (with the few queued behind it on its
    worker); every result once."""
    with pyexec.ProcessPoolExecutor(2) as ex:
        # Both workers up, and a window of one call (tiny calls before would
        # let one worker queue every item behind the slow one).
        assert list(ex.map(sleepy, [0.3, 0.3], chunksize=1)) == [0.3, 0.3]
        items = [1.0] + [0.0] * 40
        got = list(ex.map(sleepy, items, unordered=True, **kwargs))
    assert sorted(got) == sorted(items)
    assert got.index(1.0) >= len(items) // 2, got


@pytest.mark.timeout(60)
def test_unordered_raises_when_its_item_is_reached():
    with pyexec.ProcessPoolExecutor(2) as ex:
        with pytest.raises(ValueError):
            list(ex.map(fail_at, range(100), unordered=True))
        with pytest.raises(cf.TimeoutError):
            list(ex.map(sleepy, [5.0, 0.0], unordered=True, timeout=0.5))


def test_bad_new_arguments_name_themselves():
    with pyexec.ProcessPoolExecutor(1) as ex:
        with pytest.raises(TypeError, match="unordered"):
            ex.map(ident, range(3), unordered="yes")
        with pytest.raises(TypeError, match="progress"):
            ex.map(ident, range(3), progress=42)
        assert ex.stats().submitted == 0


# ---- progress ----------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.closed = False
        self.lock = threading.Lock()

    def update(self, n: int = 1) -> None:
        with self.lock:
            self.n += n

    def close(self) -> None:
        self.closed = True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kwargs", [{}, {"chunksize": 1}, {"chunksize": 7}, {"unordered": True}])
def test_progress_object_counts_every_item_and_stays_open(kwargs):
    bar = Counter()
    with pyexec.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(ident, range(500), progress=bar, **kwargs)) is not None
    assert bar.n == 500 and not bar.closed


@pytest.mark.timeout(60)
def test_progress_true_draws_a_tqdm_bar(monkeypatch, capfd):
    tqdm = pytest.importorskip("tqdm")
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)  # no monitor thread
    with pyexec.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(ident, range(300), progress=True)) == list(range(300))
    err = capfd.readouterr().err
    assert "300/300" in err


def test_progress_true_without_tqdm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pyexec.ProcessPoolExecutor(1) as ex:
        with pytest.raises(ImportError, match=r"pyexec\[progress\]"):
            ex.map(ident, range(3), progress=True)
        assert ex.stats().submitted == 0  # raised before any work was sent


# ---- a wrapped or overridden submit sees map's calls ----------------------------


@pytest.mark.timeout(60)
def test_tqdm_process_map_bar_reaches_the_end():
    """tqdm's process_map wraps ex.submit on the instance and counts in a done-callback."""
    concurrent = pytest.importorskip("tqdm.contrib.concurrent")
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0
        last = None

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            Bar.last = self

    for chunksize in (1, 4):
        out = concurrent._executor_map(
            pyexec.ProcessPoolExecutor,
            square,
            range(50),
            max_workers=2,
            chunksize=chunksize,
            tqdm_class=Bar,
            file=io.StringIO(),
        )
        assert out == [i * i for i in range(50)]
        assert Bar.last.n == (50 if chunksize == 1 else 13), chunksize


@pytest.mark.timeout(60)
def test_subclass_submit_sees_every_call_of_map():
    calls = []

    class Counting(pyexec.ProcessPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            calls.append(args)
            return super().submit(fn, *args, **kwargs)

    with Counting(2) as ex:
        assert list(ex.map(square, range(10))) == [i * i for i in range(10)]
        assert len(calls) == 10
        assert list(ex.map(square, range(10), chunksize=4)) == [i * i for i in range(10)]
        assert len(calls) == 13
        assert sorted(ex.map(square, range(10), unordered=True)) == [i * i for i in range(10)]
        bar = Counter()
        it = ex.map(square, range(10), chunksize=3, buffersize=2, progress=bar)
        assert list(it) == [i * i for i in range(10)]
        assert len(calls) == 23 + 4 and bar.n == 10  # 4 chunks of 3


# ---- serializer="cloudpickle" ----------------------------------------------------


@pytest.mark.timeout(90)
def test_cloudpickle_sends_lambdas_and_closures_both_ways(ctx):
    """Functions and arguments go with cloudpickle under every start method, and
    results come back the same way (a lambda returned)."""
    pytest.importorskip("cloudpickle")
    k = 3
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx, serializer="cloudpickle") as ex:
        assert list(ex.map(lambda x: x * k, range(2000))) == [3 * i for i in range(2000)]
        assert list(ex.map(lambda a, b: a + b, range(5), range(5), chunksize=2)) == [
            0,
            2,
            4,
            6,
            8,
        ]
        assert ex.submit(lambda: lambda y: y + k).result(30)(1) == 4
        assert ex.submit(map_apply, lambda v: -v, 5).result(30) == -5


def map_apply(f, x):
    return f(x)


def test_cloudpickle_pickles_a_function_once(monkeypatch):
    """Once per map, and once per function object for submit."""
    cloudpickle = pytest.importorskip("cloudpickle")
    fn = lambda x: x + 1  # noqa: E731
    seen = []
    real = cloudpickle.dumps

    def counting(obj, *a, **k):
        seen.append(obj)
        return real(obj, *a, **k)

    with pyexec.ProcessPoolExecutor(2, serializer="cloudpickle") as ex:
        monkeypatch.setattr(ex, "_dumps", counting)
        assert list(ex.map(fn, range(3000))) == list(range(1, 3001))
        assert sum(1 for o in seen if o is fn) == 1
        assert [ex.submit(fn, i).result(30) for i in range(3)] == [1, 2, 3]
    assert sum(1 for o in seen if o is fn) == 2  # once for map, once for 3 submits


@pytest.mark.timeout(60)
def test_cloudpickle_sends_a_bound_methods_object_as_it_is_now():
    """Only plain functions are cached: a bound method (equal to every other
    binding of its object) and a partial carry state the caller changes between
    calls, and each call sees it as the default pickle does."""
    pytest.importorskip("cloudpickle")
    obj, items = Adder(), [1]
    with pyexec.ProcessPoolExecutor(1, serializer="cloudpickle") as ex:
        got = []
        for k in (0, 100, 200):
            obj.k = k
            got.append(ex.submit(obj.add, 1).result(30))
        part = functools.partial(add, items)
        first = ex.submit(part, [2]).result(30)
        items.append(3)
        second = ex.submit(part, [2]).result(30)
    assert got == [1, 101, 201]
    assert (first, second) == ([1, 2], [1, 3, 2])


REDEFINED_SCRIPT = """
import multiprocessing, pyexec

def f(x):
    return ("old", x)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    with pyexec.ProcessPoolExecutor(1, mp_context=ctx, serializer="cloudpickle") as ex:
        assert ex.submit(f, 0).result(60) == ("old", 0)  # the worker forked with this f
        exec("def f(x):\\n    return ('new', x)\\n")  # redefined, as in a notebook cell
        subs = [ex.submit(f, i).result(60)[0] for i in range(3)]
        print(subs, {r[0] for r in ex.map(f, range(9))})
"""


@pytest.mark.timeout(60)
def test_cloudpickle_runs_a_redefined_main_function_every_time():
    """A __main__ function redefined after the workers forked travels by value:
    every call runs the new one, not the old one the worker's __main__ still names."""
    pytest.importorskip("cloudpickle")
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    done = subprocess.run(
        [sys.executable, "-c", REDEFINED_SCRIPT], capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['new', 'new', 'new'] {'new'}"


def test_default_serializer_fails_a_lambda_as_pickle_does():
    with pyexec.ProcessPoolExecutor(1) as ex:
        with pytest.raises(Exception, match="lambda"):
            ex.submit(lambda: 1).result(30)


def test_serializer_argument_checked():
    with pytest.raises(ValueError, match="serializer"):
        pyexec.ProcessPoolExecutor(1, serializer="dill")
    with pytest.raises(TypeError, match="serializer"):
        pyexec.ProcessPoolExecutor(1, serializer=None)


def test_cloudpickle_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    with pytest.raises(ImportError, match=r"pyexec\[cloudpickle\]"):
        pyexec.ProcessPoolExecutor(1, serializer="cloudpickle")


# ---- the README's examples -------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
SECTIONS = ("### The map family", "### Lambdas and closures")


def _readme_examples() -> list[str]:
    """The python blocks of the README's map family and cloudpickle sections."""
    text = README.read_text()
    out = []
    for head in SECTIONS:
        body = text[text.index(head) :]
        body = body[: body.index("\n### ", 1)]
        out += [b.split("```", 1)[0] for b in body.split("```python\n")[1:]]
    return out


@pytest.mark.timeout(120)
def test_readme_map_examples_run(tmp_path):
    examples = _readme_examples()
    assert len(examples) == 4
    outputs = []
    for i, code in enumerate(examples):
        script = tmp_path / f"example{i}.py"
        script.write_text(code)
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=100
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.strip())
    assert outputs[0] == str(sum(i * i for i in range(1_000_000)))
    assert sorted(ast.literal_eval(outputs[1])) == [0.0, 0.0, 0.1, 0.5]
    assert outputs[2] == "1000"
    assert outputs[3] == "[10, 11, 12, 13, 14]"


# ---- issue 17, clause by clause: what the tests above left unshown ----------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("drop", ["del", "close", "outer generator closed"])
@pytest.mark.parametrize("kwargs", [{}, {"chunksize": 1}, {"buffersize": 4}, {"unordered": True}])
def test_dropped_map_iterator_cancels_the_rest(kwargs, drop):
    """An iterator dropped (del), closed, or closed through a generator that
    wraps it: the items not yet sent never run (the pool is then shut down with
    wait=True, which would run every queued item). Every item takes 0.05 s, the
    first too: a first item that took no time made the default map size its
    chunks and its window for instant items, and a loaded machine then had all
    200 items in the workers' pipes before the iterator was dropped."""
    n = 200
    with pyexec.ProcessPoolExecutor(2) as ex:
        it = ex.map(sleepy, [0.05] * n, **kwargs)
        if drop == "outer generator closed":

            def outer():
                yield from it

            gen = outer()
            assert next(gen) == 0.05
            del it
            gen.close()
        else:
            assert next(it) == 0.05
            if drop == "close":
                it.close()
            del it
        assert ex.stats().pending == 0
    s = ex.stats()
    # Calls already in a worker's pipe run (the stdlib's call queue too); the
    # rest never do: without the cancel all n complete and none is cancelled.
    assert s.completed < n and s.cancelled == s.submitted - s.completed, s


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, 3, 4])
def test_explicit_chunksize_delivers_as_the_stdlib(chunksize):
    """With an explicit chunksize a failing item fails its whole chunk, as in the
    stdlib: the results delivered before the exception are the stdlib's."""

    def run(cls):
        got = []
        with cls(2) as ex:
            try:
                for x in ex.map(fail_at, range(20), itertools.repeat(7), chunksize=chunksize):
                    got.append(x)
            except ValueError as exc:
                return got, exc.args
        return got, None

    assert run(pyexec.ProcessPoolExecutor) == run(cf.ProcessPoolExecutor)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kwargs", [{}, {"chunksize": 1}, {"buffersize": 30}])
def test_unordered_raises_in_completion_order(kwargs):
    """A quick failing item behind a slow one: unordered raises before the slow
    result is back; in order, the slow result and those up to the failure come first."""
    items = [1.5] + [0.0] * 20 + [-1.0] + [0.0] * 20
    with pyexec.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(sleepy, [0.3, 0.3], chunksize=1)) == [0.3, 0.3]  # both up
        got = []
        with pytest.raises(ValueError):
            for x in ex.map(nap_or_fail, items, unordered=True, **kwargs):
                got.append(x)
        assert 1.5 not in got, got
        got = []
        with pytest.raises(ValueError):
            for x in ex.map(nap_or_fail, items, **kwargs):
                got.append(x)
        assert got == items[:21]


@pytest.mark.timeout(60)
def test_unordered_infinite_input_with_buffersize():
    """unordered=True with buffersize over an endless generator: each item once."""
    with pyexec.ProcessPoolExecutor(2) as ex:
        it = ex.map(square, itertools.count(), buffersize=8, unordered=True)
        got = list(itertools.islice(it, 200))
        it.close()
    assert len(set(got)) == 200
    assert set(got) <= {i * i for i in range(208)}


@pytest.mark.timeout(60)
def test_map_with_on_crash_restart_fails_only_the_crashed_item():
    """on_crash="restart" keeps one call per item: a crash fails its own item
    alone, every item before it is delivered (a chunk would lose its neighbours)."""
    with pyexec.ProcessPoolExecutor(2, on_crash="restart") as ex:
        got = []
        with pytest.raises(pyexec.WorkerDied):
            for x in ex.map(exit_at, range(3000), itertools.repeat(1500)):
                got.append(x)
        assert got == list(range(1500))
        assert ex.stats().failed == 1
        assert list(ex.map(square, range(5))) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize(
    "name, value, error",
    [
        ("chunksize", "a", TypeError),
        ("chunksize", 1.5, TypeError),
        ("chunksize", 0, ValueError),
        ("buffersize", "a", TypeError),
        ("buffersize", 0, ValueError),
        ("unordered", "yes", TypeError),
        ("unordered", None, TypeError),
        ("progress", 42, TypeError),
        ("progress", "yes", TypeError),
    ],
)
def test_bad_map_arguments_name_themselves(name, value, error):
    """A bad value raises ValueError or TypeError naming the argument, before any work."""
    with pyexec.ProcessPoolExecutor(1) as ex:
        with pytest.raises(error, match=name):
            ex.map(ident, range(3), **{name: value})
        assert ex.stats().submitted == 0 and ex._mgr is None  # no worker started


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kwargs", [{}, {"chunksize": 1}, {"unordered": True}])
def test_progress_counts_items_as_they_finish(kwargs):
    """The bar counts finished items, not submitted ones."""
    bar = Counter()
    with pyexec.ProcessPoolExecutor(2) as ex:
        ex.submit(ident, 0).result(30)
        it = ex.map(sleepy, [0.0] + [1.0] * 4, progress=bar, **kwargs)
        assert next(it) == 0.0
        assert bar.n <= 2, bar.n
        assert list(it) == [1.0] * 4
    assert bar.n == 5 and not bar.closed


@pytest.mark.timeout(60)
def test_extras_imported_only_when_used():
    """Neither tqdm nor cloudpickle is imported by pyexec or a default map, submit
    or unordered map: progress=None and serializer="pickle" cost nothing."""
    code = (
        "import sys, pyexec\n"
        "if __name__ == '__main__':\n"
        "    with pyexec.ProcessPoolExecutor(2) as ex:\n"
        "        assert list(ex.map(abs, range(-500, 0))) == list(range(500, 0, -1))\n"
        "        assert sorted(ex.map(abs, range(-5, 0), unordered=True)) == [1, 2, 3, 4, 5]\n"
        "        assert ex.submit(abs, -1).result() == 1\n"
        "    print('tqdm' in sys.modules, 'cloudpickle' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


MAIN_SCRIPT = """
import multiprocessing, sys, pyexec

def double(x):
    return 2 * x

def make(k):
    return lambda x: x + k

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx, serializer=sys.argv[2]) as ex:
        print(list(ex.map(double, range(5))), list(ex.map(make(10), range(3), chunksize=2)))
        print(ex.submit(double, 21).result(60), ex.submit(lambda: make(1)).result(60)(1))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_cloudpickle_sends_main_functions_under_every_start_method(method):
    """Functions of a __main__ the workers cannot import (python -c): with
    cloudpickle they travel by value, and a lambda result comes back."""
    pytest.importorskip("cloudpickle")
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} here")
    done = subprocess.run(
        [sys.executable, "-c", MAIN_SCRIPT, method, "cloudpickle"],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[0, 2, 4, 6, 8] [10, 11, 12]", "42 2"]


@pytest.mark.timeout(60)
def test_default_pickle_fails_a_lambda_with_the_stdlibs_exception():
    """serializer="pickle" (the default): a lambda fails in submit and map with
    the exception type the stdlib raises."""

    def run(cls):
        with cls(1) as ex:
            out = [type(ex.submit(lambda: 1).exception(30))]
            try:
                list(ex.map(lambda x: x, range(3)))
            except Exception as exc:
                out.append(type(exc))
        return out

    got = run(pyexec.ProcessPoolExecutor)
    assert got == run(cf.ProcessPoolExecutor)
    assert len(got) == 2
