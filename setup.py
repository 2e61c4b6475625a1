"""Wires the cffi builder; all metadata lives in pyproject.toml."""

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithoutBuilder(build_py):
    """Leave the cffi builder out of wheels: it needs csrc/, which only the sdist has."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) != ("pyexec", "_build")]


setup(
    cffi_modules=["src/pyexec/_build.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithoutBuilder},
    # One abi3 wheel serves every CPython from 3.10 on: the core uses cffi's
    # out-of-line API mode, which builds against the limited API.
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
