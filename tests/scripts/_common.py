"""Shared by the scripts: make tests/ importable and pick the executor class by name."""

from __future__ import annotations

import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


def executor_class(impl: str):
    """concurrent.futures' or pyexec's ProcessPoolExecutor."""
    if impl == "stdlib":
        from concurrent.futures import ProcessPoolExecutor
    else:
        from pyexec import ProcessPoolExecutor
    return ProcessPoolExecutor
