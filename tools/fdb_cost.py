#!/usr/bin/env python3
"""Per-frame cost of L2 learning under a MAC flood: a segment's switch with an empty FDB, a
full one, and (where the FDB has quotas) a flooding peer held at its quota.

    PYTHONPATH=. python3 tools/fdb_cost.py [--entries 4096] [--frames 4000] [--members 3]

Each figure is the best of 5 runs of `--frames` frames, each with a source MAC the table has
not seen, through ``Switch.ingress`` (what both engines call per received frame). It runs
against whichever tunnelpy is on the path, so an older checkout gives the before figures (its
full table refused new MACs after scanning every entry). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run by path: this checkout

from tunnelpy.protocol.switch import Switch  # noqa: E402


class Port:
    removed = False


def frames(n: int, seed: int) -> list[bytes]:
    r = random.Random(seed)
    return [
        b"\xff" * 6
        + bytes([0x02 | (r.randrange(64) << 2)])
        + r.randbytes(5)
        + b"\x88\xb5"
        + bytes(46)
        for _ in range(n)
    ]


def per_frame(sw: Switch, peer: Port, batch: list[bytes], now: float) -> float:
    ingress = sw.ingress
    t = time.perf_counter()
    for f in batch:
        ingress(peer, f, now)
    return (time.perf_counter() - t) / len(batch)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=4096)
    ap.add_argument("--frames", type=int, default=4000)
    ap.add_argument("--members", type=int, default=3)
    args = ap.parse_args()
    n = args.entries
    quotas = "max_per_peer" in inspect.signature(Switch).parameters
    ports = {i: Port() for i in range(args.members)}
    a, b = ports[0], ports[1]
    one_peer_fills = {"max_per_peer": n} if quotas else {}

    def empty() -> float:
        return per_frame(
            Switch(7, None, ports, max_fdb=n, **one_peer_fills), a, frames(args.frames, 1), 0.0
        )

    def full() -> float:  # a filled the table with live entries; b's new MACs are refused
        sw = Switch(7, None, ports, max_fdb=n, **one_peer_fills)
        for i, f in enumerate(frames(n, 2)):
            sw.ingress(a, f, i / n)
        assert len(sw.fdb) == n
        return per_frame(sw, b, frames(args.frames, 3), 1.0)

    def at_quota() -> float:  # the default quota: a holds entries // members, keeps flooding
        sw = Switch(7, None, ports, max_fdb=n)
        for f in frames(n, 4):
            sw.ingress(a, f, 0.5)
        return per_frame(sw, a, frames(args.frames, 5), 1.0)

    out: dict[str, object] = {"entries": n, "members": args.members, "quotas": quotas}
    cases = [("empty", empty), ("full", full)] + ([("at_quota", at_quota)] if quotas else [])
    for name, fn in cases:
        out[f"{name}_us"] = round(min(fn() for _ in range(5)) * 1e6, 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
