"""``python -m pyexec.bench``: pyexec and the other process pools, side by side.

Every pool runs the same workloads in one process, with the same start method
and worker count, interleaved: run 1 of every pool, then run 2 of every pool
(in a rotated order), and so on, so a noisy neighbour slows every pool alike.
Each timed run uses a fresh pool that has already returned a result (warmed
up), except ``startup``, which times exactly that; ``latency`` first makes a
tenth of its round trips untimed, as the floor program does. A cell is the
median over ``--repeats`` runs and its speed-up over ``concurrent.futures``
(higher is better, whatever the unit).

The ``scale`` workload maps over a million items with default arguments, each
pool in a fresh subprocess, whose peak RSS is then the pool's parent side
alone (VmHWM on Linux, ``ru_maxrss`` elsewhere). Pools that take minutes there
(``map`` with chunksize 1 through a feeder thread) run a twentieth of the items
unless ``--full`` is given; the table says so.

Rows run only when ``--workloads`` names them (issues 16 and 17): big-array,
big-bytes, array-roundtrip, payload-sweep (one row per array size),
payload-rss (peak RSS with 40 pending 8 MiB calls), map-default and
map-unordered (fresh process per pool, like ``scale``). See docs/BENCH.md.

The latency floor is a raw pipe round trip between two processes: a small C
program (``floor.c``) compiled at first use with ``cc`` into a cache directory,
or, when that fails, the same ping-pong between two Python processes.

Modules: ``cli`` (arguments, the interleaved run), ``workloads`` (the registry
of workloads), ``pools`` (the pool adapters), ``floor`` (the pipe floor),
``report`` (table, plot). The bench runs in one thread (the pools under test
have their own threads and processes); no module keeps state between runs but
the floor programs' compile cache, a directory.
"""
