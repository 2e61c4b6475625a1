"""Functions test_payloads sends to workers: importable by name under spawn."""

import os


def nbytes_of(x):
    return x.nbytes if hasattr(x, "nbytes") else len(x)


def fill(x, value):
    """Write into an argument in place (the worker's view); return its sum."""
    x[...] = value
    return float(x.sum())


def pid_and(x=None, **kwargs):
    return os.getpid(), (x if not kwargs else kwargs)


def die(_x):
    os._exit(7)


def big_bytes(seed, n):
    """n bytes that differ with seed: a result the parent copies out of shared memory."""
    return (seed.to_bytes(4, "little") + bytes(range(252))) * (n // 256)


def _made_here(pid):
    if os.getpid() != pid:
        raise ValueError("this object loads only in the process that pickled it")


class LoadsOnlyWhereMade:
    """Pickles anywhere; unpickling it in another process raises."""

    def __reduce__(self):
        return _made_here, (os.getpid(),)


def big_bytes_and_unloadable(n):
    """A result with big bytes (copied apart in the parent) that then fails to unpickle."""
    return big_bytes(0, n), LoadsOnlyWhereMade()
