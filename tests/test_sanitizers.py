"""The C core on its own, under AddressSanitizer and UndefinedBehaviorSanitizer.

``tests/c/test_core.c`` (every decoder edge case, the writer, pipes, rss and
both waiter backends), ``tests/c/test_arena.c`` (segments, mappings, every
slot-table edge case, fd passing), the decoder's fuzz harness
``tests/c/fuzz_decoder.c`` and the slot protocol's ``tests/c/fuzz_slots.c``
are compiled here straight from ``csrc/`` with the system C compiler (gcc or
clang) and run as plain programs: no Python in the process, so any sanitizer
report is the core's own. Each C test runs as its own pytest case.

The fuzz runs are marked ``soak``: about 20 s by default, longer with
``PYEXEC_FUZZ_SECONDS``; ``PYEXEC_FUZZ_SEED`` repeats a run (the seed is in
every failure message).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CDIR = ROOT / "tests" / "c"
CORE_SOURCES = ["frame.c", "io.c", "wait.c", "arena.c"]
SANITIZE = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
    "-O1",
]
COMMON = ["-std=c99", "-D_GNU_SOURCE", "-Wall", "-Wextra"]
SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0:"
    "detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}
# What any sanitizer prints when it finds something.
REPORT = re.compile(
    r"ERROR: (Address|Leak|UndefinedBehavior)Sanitizer|runtime error:|SUMMARY: \w+Sanitizer"
)
FUZZ_SECONDS = float(os.environ.get("PYEXEC_FUZZ_SECONDS") or 20)


def _compiler() -> str | None:
    """$CC, else cc, gcc or clang: whichever exists."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


CC = _compiler()
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler on this machine")


def _c_test_names(source: str = "test_core.c") -> list[str]:
    """The tests listed in a C test file's TESTS table, in order."""
    text = (CDIR / source).read_text()
    table = text.split("#define TESTS(X)", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"X\((\w+)\)", table)


def _build(out: Path, sources: list[Path], extra: list[str] | None = None) -> Path:
    """Compile sources into the program out with the sanitizers on."""
    assert CC is not None
    cmd = [CC, *COMMON, *SANITIZE, *(extra or []), *map(str, sources), "-o", str(out), "-pthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
    return out


def _run(cmd: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a sanitized program, its reports on stderr."""
    env = {**os.environ, **SAN_ENV}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def _assert_clean(proc: subprocess.CompletedProcess, what: str) -> None:
    """Exit 0 and not a word from any sanitizer."""
    report = REPORT.search(proc.stderr)
    assert proc.returncode == 0 and report is None, (
        f"{what}: exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
        f"--- stderr\n{proc.stderr[-8000:]}"
    )


@pytest.fixture(scope="module")
def core_tests(tmp_path_factory) -> Path:
    """test_core built with ASan+UBSan (frame.c is included by it)."""
    out = tmp_path_factory.mktemp("sanitized") / "test_core"
    return _build(out, [CDIR / "test_core.c", CSRC / "io.c", CSRC / "wait.c"])


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory) -> Path:
    """fuzz_decoder built with ASan+UBSan and its own mutation loop."""
    out = tmp_path_factory.mktemp("fuzz") / "fuzz_decoder"
    return _build(out, [CDIR / "fuzz_decoder.c"])


@pytest.fixture(scope="module")
def arena_tests(tmp_path_factory) -> Path:
    """test_arena built with ASan+UBSan."""
    out = tmp_path_factory.mktemp("sanitized") / "test_arena"
    return _build(out, [CDIR / "test_arena.c", CSRC / "arena.c"])


@pytest.fixture(scope="module")
def slots_fuzzer(tmp_path_factory) -> Path:
    """fuzz_slots built with ASan+UBSan and its own random loop."""
    out = tmp_path_factory.mktemp("fuzz") / "fuzz_slots"
    return _build(out, [CDIR / "fuzz_slots.c", CSRC / "arena.c"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", _c_test_names("test_arena.c"))
def test_arena_under_sanitizers(arena_tests: Path, name: str) -> None:
    """One C test of the arena code, run under ASan+UBSan: it passes, nothing reported."""
    proc = _run([str(arena_tests), name], timeout=60)
    _assert_clean(proc, f"test_arena {name}")
    assert f"ok   {name}" in proc.stdout


def _check_table(binary: Path, source: str, at_least: int) -> None:
    """The C driver's --list names every test_* function of its source, in the
    order _c_test_names reads (so none is silently skipped)."""
    proc = _run([str(binary), "--list"], timeout=30)
    _assert_clean(proc, f"{binary.name} --list")
    listed = proc.stdout.split()
    defined = re.findall(r"^static void test_(\w+)\(void\)", (CDIR / source).read_text(), re.M)
    assert sorted(listed) == sorted(defined)
    assert listed == _c_test_names(source)
    assert len(listed) >= at_least


@pytest.mark.timeout(60)
def test_arena_table_lists_every_test(arena_tests: Path) -> None:
    """Every test_* function in test_arena.c is in its table (none silently skipped)."""
    _check_table(arena_tests, "test_arena.c", 20)


# What each fuzzer's closing statistics must show it reached.
DECODER_PATHS = ("runs", "frames", "ebadmsg", "emsgsize", "clean_end", "partial_end", "pipe_reads")
SLOT_OUTCOMES = ("allocs", "releases", "bad_releases", "enospc", "efbig", "einval", "resets")


def _fuzz(
    fuzzer: Path, tmp_path: Path, args: list[str], timeout: float, reached: tuple[str, ...]
) -> dict[str, float]:
    """Run a fuzzer's own loop; return its closing statistics after checking it ran
    clean and reached every one of ``reached``."""
    proc = _run([str(fuzzer), *args], timeout=timeout, cwd=tmp_path)
    crashes = sorted(p.name for p in tmp_path.glob("fuzz-crash-*.bin"))
    _assert_clean(proc, f"{fuzzer.name} {' '.join(args)} (saved inputs: {crashes})")
    last = proc.stdout.strip().splitlines()[-1].split()
    stats = {k: float(v) for k, v in zip(last[::2], last[1::2], strict=True)}
    for key in reached:
        assert stats.get(key, 0) > 0, f"fuzz run never reached {key}: {last}"
    return stats


@pytest.mark.timeout(120)
def test_fuzz_slots_fixed_seed(slots_fuzzer: Path, tmp_path: Path) -> None:
    """A short, repeatable run of the slot protocol against its model."""
    args = ["--seed", "20261206", "--iterations", "1500"]
    stats = _fuzz(slots_fuzzer, tmp_path, args, 100, SLOT_OUTCOMES)
    assert stats["runs"] == 1500


@pytest.mark.soak
@pytest.mark.timeout(FUZZ_SECONDS + 180)
def test_fuzz_slots(slots_fuzzer: Path, tmp_path: Path) -> None:
    """Fuzz the slot protocol for PYEXEC_FUZZ_SECONDS (20 s by default) from a fresh seed."""
    seed = int(os.environ.get("PYEXEC_FUZZ_SEED") or random.randrange(1 << 32))
    args = ["--seed", str(seed), "--seconds", str(FUZZ_SECONDS)]
    stats = _fuzz(slots_fuzzer, tmp_path, args, FUZZ_SECONDS + 150, SLOT_OUTCOMES)
    assert stats["runs"] >= 100, f"seed {seed}: only {stats['runs']} runs"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", _c_test_names())
def test_core_under_sanitizers(core_tests: Path, name: str) -> None:
    """One C test of the core, run under ASan+UBSan: it passes and nothing is reported."""
    proc = _run([str(core_tests), name], timeout=60)
    _assert_clean(proc, f"test_core {name}")
    assert f"ok   {name}" in proc.stdout


@pytest.mark.timeout(60)
def test_core_table_lists_every_test(core_tests: Path) -> None:
    """Every test_* function in test_core.c is in its table (none silently skipped)."""
    _check_table(core_tests, "test_core.c", 40)


@pytest.mark.timeout(120)
def test_core_sources_compile_without_warnings(tmp_path: Path) -> None:
    """csrc/ builds warning-free with -Wall -Wextra -Wpedantic -Wshadow as C99."""
    assert CC is not None
    for name in CORE_SOURCES:
        cmd = [CC, *COMMON, "-O2", "-Wpedantic", "-Wshadow", "-Werror", "-c", str(CSRC / name)]
        proc = subprocess.run(
            [*cmd, "-o", str(tmp_path / (name + ".o"))], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stderr}"


@pytest.mark.timeout(120)
def test_fuzz_corpus_replays(fuzzer: Path) -> None:
    """Every seed in tests/c/corpus runs through the harness's checks cleanly."""
    seeds = sorted((CDIR / "corpus").iterdir())
    assert len(seeds) >= 5
    proc = _run([str(fuzzer), *map(str, seeds)], timeout=60)
    _assert_clean(proc, "fuzz_decoder corpus")
    assert proc.stdout.count(": ok") == len(seeds)


@pytest.mark.timeout(120)
def test_fuzz_decoder_fixed_seed(fuzzer: Path, tmp_path: Path) -> None:
    """A short, repeatable fuzz run (same inputs every time)."""
    stats = _fuzz(
        fuzzer, tmp_path, ["--seed", "20240601", "--iterations", "3000"], 100, DECODER_PATHS
    )
    assert stats["runs"] == 3000


@pytest.mark.soak
@pytest.mark.timeout(FUZZ_SECONDS + 180)
def test_fuzz_decoder(fuzzer: Path, tmp_path: Path) -> None:
    """Fuzz the decoder for PYEXEC_FUZZ_SECONDS (20 s by default) from a fresh seed."""
    seed = int(os.environ.get("PYEXEC_FUZZ_SEED") or random.randrange(1 << 32))
    args = ["--seed", str(seed), "--seconds", str(FUZZ_SECONDS)]
    stats = _fuzz(fuzzer, tmp_path, args, FUZZ_SECONDS + 150, DECODER_PATHS)
    assert stats["runs"] >= 1000, f"seed {seed}: only {stats['runs']} runs"
