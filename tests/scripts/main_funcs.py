"""Functions and a class defined in a script's __main__, and a module importable only
through a sys.path entry added at run time, used from a pool's workers.

argv: impl (stdlib|pyexec), start method, a directory holding pathonly_mod.py.
Prints the results as JSON.
"""

import json
import multiprocessing
import sys

import _common


class Point:
    """A class that lives in __main__."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


def cube(x: int) -> int:
    return x**3


def norm1(p: Point) -> Point:
    return Point(abs(p.x) + abs(p.y), 0)


def use_path_module(x: int) -> int:
    import pathonly_mod

    return pathonly_mod.VALUE + x


if __name__ == "__main__":
    impl, method, moddir = sys.argv[1:4]
    sys.path.append(moddir)
    cls = _common.executor_class(impl)
    with cls(1, mp_context=multiprocessing.get_context(method)) as ex:
        out = {
            "cube": list(ex.map(cube, range(6))),
            "point": ex.submit(norm1, Point(-3, 4)).result(60).x,
            "path": ex.submit(use_path_module, 1).result(60),
        }
    print(json.dumps(out), flush=True)
