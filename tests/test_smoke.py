"""The first thing to work: one call round trip under every start method."""

from helpers import ident

import pyexec


def test_round_trip(ctx):
    with pyexec.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert ex.submit(ident, 41).result(timeout=30) == 41
        assert list(ex.map(ident, range(100))) == list(range(100))
