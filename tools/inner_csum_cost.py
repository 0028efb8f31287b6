#!/usr/bin/env python3
"""Per-frame cost of the inner-checksum work on the way to a TAP (docs/layer2.md, "Kernel VTEPs
on the same host"): recognising a partial checksum, finishing it, and what each TAP path adds.

    PYTHONPATH=. python3 tools/inner_csum_cost.py [--frames 20000] [--runs 7]

The frames are the captured ones in tests/unit/vectors/kernel_vxlan_frames.json: a full-size
IPv4 TCP segment (1464-byte frame), a pure ACK (66 bytes), a full-size IPv6 segment made from the
IPv6 super-frame; "full" is the frame with its correct checksum (a sender whose NIC or stack
finished it: the common case), "partial" the pseudo-header sum only (a kernel vxlan on a veth).
Each figure is the best of `--runs` runs over `--frames` frames, in µs per frame:

* recognise   checksum.partial_l4: what every frame written alone to a TAP with a
              virtio_net_hdr costs (joined segments are not looked at), and what a partial one
              then costs beyond it is one struct.pack of the NEEDS_CSUM header (mark_alone);
* finish      checksum.finish_partial: every frame to a TAP without a virtio_net_hdr;
* vouch       checksum.l4_vouched: every frame from plain VXLAN to a TAP with a
              virtio_net_hdr, before GRO may join it (a full checksum is summed here);
              both in batches of 64 frames (the sums in one numpy call) and of 1 (a quiet
              link: one int.from_bytes per sum);
* fit         segmentation.fit_frames over batches of 64 frames none of which is too long
              (every TAP write), and per segment cut from a 5-MSS super-frame.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Callable
from functools import partial as partial_fn
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run by path: this checkout

from tunnelpy.io import checksum, gro, segmentation  # noqa: E402
from tunnelpy.io.vnet import ZERO_VNET_HDR  # noqa: E402

VECTORS = ROOT / "tests" / "unit" / "vectors" / "kernel_vxlan_frames.json"
MTU = 1450
BATCH = 64  # frames per TAP write in a busy datapath (a receive batch is up to 128 datagrams)


def field_at(frame: bytes) -> int:
    start, offset, _end = checksum.partial_l4(frame) or (0, 0, 0)
    assert offset, "expected a partial frame"
    return start + offset


def full(partial: bytes) -> bytes:
    """The frame with its checksum finished (checked: a full one is not partial any more)."""
    (done,) = checksum.finish_partial([partial])
    assert done != partial and checksum.partial_l4(done) is None and checksum.l4_vouched([done])[0]
    return done


def per_item(fn: Callable[[Any], object], items: list[Any]) -> None:
    for x in items:
        fn(x)


def alone_units(frame: bytes, n: int) -> list[list[bytes | memoryview | bytearray]]:
    return [[ZERO_VNET_HDR, frame] for _ in range(n)]


def mark_fresh(frame: bytes, n: int) -> None:
    gro._mark_partial(alone_units(frame, n))


def fit_to_mtu(frames: list[bytes]) -> list[bytes]:
    return segmentation.fit_frames(frames, MTU)


def best(fn: Callable[[], None], n: int, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    n, runs = args.frames, args.runs
    frames = {k: bytes.fromhex(v) for k, v in json.loads(VECTORS.read_text())["frames"].items()}
    v6_segment = segmentation.fit_frames([frames["ipv6_tcp_super_frame_5_mss"]], MTU)[0]
    # (fit_frames finished it: make it partial again, as the kernel leaves it)
    at = 14 + 40 + 16
    psum = checksum.pseudo_sum(v6_segment[22:38], v6_segment[38:54], 6, len(v6_segment) - 54)
    v6_partial = v6_segment[:at] + struct.pack(">H", checksum.fold(psum)) + v6_segment[at + 2 :]
    shapes = {
        "tcp4_1464": frames["ipv4_tcp_full_size_data"],
        "tcp4_ack_66": frames["ipv4_tcp_ack"],
        "tcp6_1464": v6_partial,
    }
    results: dict[str, float] = {}

    def row(name: str, fn: Callable[[], None], count: int = n) -> None:
        results[name] = round(best(fn, count, runs), 3)

    for shape, partial in shapes.items():
        assert len(partial) in (1464, 66)
        done = full(partial)
        for kind, frame in (("full", done), ("partial", partial)):
            same = [frame] * n
            row(f"recognise/{shape}/{kind}", partial_fn(per_item, checksum.partial_l4, same))
            # (_mark_partial rewrites a partial unit's header: fresh units each run, their
            # making measured apart and taken off)
            make = partial_fn(alone_units, frame, n)
            mark = partial_fn(mark_fresh, frame, n)
            results[f"mark_alone/{shape}/{kind}"] = round(
                best(mark, n, runs) - best(make, n, runs), 3
            )
            for size in (BATCH, 1):
                batches = [same[i : i + size] for i in range(0, n, size)]
                for what, fn in (
                    ("finish", checksum.finish_partial),
                    ("vouch", checksum.l4_vouched),
                ):
                    row(f"{what}/{shape}/{kind}/batch{size}", partial_fn(per_item, fn, batches))
    fits = [[full(shapes["tcp4_1464"])] * 64 for _ in range(n // 64)]
    row("fit/no_long_frame", partial_fn(per_item, fit_to_mtu, fits), count=64 * len(fits))
    reps = max(1, n // 50)
    sup = [[frames["ipv4_tcp_super_frame_5_mss"]]] * reps
    row("fit/per_segment_cut", partial_fn(per_item, fit_to_mtu, sup), count=5 * reps)
    width = max(map(len, results))
    for name, us in results.items():
        print(f"{name:<{width}}  {us:7.3f} µs/frame")
    print(json.dumps({"us_per_frame": results, "frames": n, "runs": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
