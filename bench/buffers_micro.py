"""Microbenchmark of pyexec._buffers alone (no pool): one numpy array, 8 MiB by default.

    python bench/buffers_micro.py [--mib 8] [--rounds 7] [--n 20] [--kind numpy|bytes]
                                  [--arena-mib 64]

In one process: Sender.dumps + Receiver.loads + the release, against
pickle.dumps/loads protocol 5 in-band. Across a fork: a round trip to an echo child
(there through one arena, back through the other; descriptors and pickles over a
pipe, overflow fds over a Unix socket) against in-band pickles over the same kind of
pipe. Prints the median time of each (over --rounds rounds of --n operations, the
two alternated round by round) and their ratio.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import socket
import statistics
import struct
import time

import numpy as np

from pyexec import _buffers as B
from pyexec._native import ffi, lib

ARENA = 64 << 20


def _pipe() -> tuple[int, int]:
    fds = ffi.new("int[2]")
    assert lib.px_pipe(fds, 0, 1 << 20) == 0
    return fds[0], fds[1]


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise EOFError
        got += k
    return buf


def _send(fd, sock, payload, desc=b"", rel=b"", fds=()) -> None:
    head = struct.pack("<QQQI", len(payload), len(desc), len(rel), len(fds))
    _write_all(fd, head + desc + rel)
    _write_all(fd, payload)
    if fds:
        B.send_fds(sock, list(fds))


def _recv(fd, sock):
    np_, nd, nr, nf = struct.unpack("<QQQI", _read_exact(fd, 28))
    meta = bytes(_read_exact(fd, nd + nr))
    payload = _read_exact(fd, np_)
    fds = B.recv_fds(sock, nf) if nf else []
    return payload, meta[:nd], meta[nd:], fds


def _child(mode, down, up, rfd, wfd, sock) -> None:
    if mode == "arena":
        receiver, sender = B.Receiver(down, ARENA), B.Sender(up, ARENA)
    while True:
        try:
            payload, desc, rel, fds = _recv(rfd, sock)
        except EOFError:
            return
        if mode == "arena":
            sender.on_release(rel)
            obj = receiver.loads(payload, desc, fds)
            enc = sender.dumps(obj)
            del obj
            _send(wfd, sock, enc.payload, enc.descriptors, receiver.take_releases(), enc.fds)
            enc.close()
        else:
            _send(wfd, sock, pickle.dumps(pickle.loads(payload), protocol=5))


def _fork_pair(mode):
    down, up = B.create_arena(ARENA), B.create_arena(ARENA)
    p2c_r, p2c_w = _pipe()
    c2p_r, c2p_w = _pipe()
    sa, sb = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(p2c_w)
            os.close(c2p_r)
            _child(mode, down, up, p2c_r, c2p_w, sb.fileno())
        finally:
            os._exit(0)
    os.close(p2c_r)
    os.close(c2p_w)
    sb.close()
    return pid, down, up, p2c_w, c2p_r, sa


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--kind", choices=["numpy", "bytes"], default="numpy")
    ap.add_argument("--arena-mib", type=float, default=64, help="under 2x --mib: overflow path")
    a = ap.parse_args()
    global ARENA
    ARENA = int(a.arena_mib * (1 << 20))
    nbytes = int(a.mib * (1 << 20))
    obj = np.random.default_rng(0).random(nbytes // 8) if a.kind == "numpy" else os.urandom(nbytes)

    # ---- in one process
    fd = B.create_arena(ARENA)
    sender, receiver = B.Sender(fd, ARENA), B.Receiver(fd, ARENA)
    os.close(fd)

    def arena_once():
        enc = sender.dumps(obj)
        got = receiver.loads(enc.payload, enc.descriptors, enc.fds)
        enc.fds = []
        del got
        sender.on_release(receiver.take_releases())

    def inband_once():
        pickle.loads(pickle.dumps(obj, protocol=5))

    # ---- across a fork
    forks = {m: _fork_pair(m) for m in ("arena", "inband")}
    psend = B.Sender(forks["arena"][1], ARENA)
    precv = B.Receiver(forks["arena"][2], ARENA)

    def fork_arena_once():
        _, _, _, w, r, s = forks["arena"]
        enc = psend.dumps(obj)
        _send(w, s.fileno(), enc.payload, enc.descriptors, precv.take_releases(), enc.fds)
        enc.close()
        payload, desc, rel, fds = _recv(r, s.fileno())
        psend.on_release(rel)
        got = precv.loads(payload, desc, fds)
        del got

    def fork_inband_once():
        _, _, _, w, r, s = forks["inband"]
        _send(w, s.fileno(), pickle.dumps(obj, protocol=5))
        payload, _, _, _ = _recv(r, s.fileno())
        pickle.loads(payload)

    cases = {
        "in-process arena": arena_once,
        "in-process pickle5 in-band": inband_once,
        "fork round trip arena": fork_arena_once,
        "fork round trip pickle5 in-band over a pipe": fork_inband_once,
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm up (page faults of the first use)
        fn()
        fn()
    gc.disable()
    for _ in range(a.rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            for _ in range(a.n):
                fn()
            times[name].append((time.perf_counter() - t0) / a.n)
    gc.enable()
    for _, _, _, w, _, _ in forks.values():
        os.close(w)  # all first: the later child holds a copy of the earlier one's pipe
    for pid, down, up, _, r, s in forks.values():
        os.waitpid(pid, 0)
        os.close(r)
        s.close()
        os.close(down)
        os.close(up)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{a.kind} of {a.mib:g} MiB, arena {a.arena_mib:g} MiB,", end=" ")
    print(f"median of {a.rounds} rounds x {a.n}:")
    for k, v in med.items():
        print(f"  {k:45s} {v:8.3f} ms")
    print(
        f"  in-process speedup {med['in-process pickle5 in-band'] / med['in-process arena']:.1f}x;"
        f" fork round trip speedup "
        f"{med['fork round trip pickle5 in-band over a pipe'] / med['fork round trip arena']:.1f}x"
    )


if __name__ == "__main__":
    main()
