"""Wires the cffi builder; all metadata lives in pyproject.toml."""

from setuptools import setup

setup(
    cffi_modules=["pyexec/_build.py:ffibuilder"],
    # One abi3 wheel serves every CPython from 3.10 on: the core uses cffi's
    # out-of-line API mode, which builds against the limited API.
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
