#!/usr/bin/env python3
"""Micro-benchmark of io/udp.py on loopback: CPU per datagram, with and without PKTINFO.

What sticky source addresses cost the socket layer, measured without the engine and without
other load in the numbers as far as one process can: ``time.process_time`` (this process's CPU
only) around the socket calls, variants interleaved round by round so the machine's drift hits
all of them alike, medians printed.

- ``recv``: bursts of 64 small datagrams read with ``recv_batch`` by a socket with PKTINFO on
  (every read parses an IPV6_PKTINFO cmsg) and off. Loopback does no GRO, so every datagram is
  its own recvmsg: the worst case for a per-read cost.
- ``send1``: single 64-byte datagrams, from a sticky source (sendmsg with IP_PKTINFO) and from
  the kernel's choice (sendto).
- ``gso``: 32 × 1400 bytes in one call, with and without the source cmsg next to UDP_SEGMENT.

    python3 bench/udpsock.py [-r ROUNDS] [-b BURSTS]
"""

from __future__ import annotations

import argparse
import select
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunnelpy.io.udp import UdpSocket  # noqa: E402

BURST = 64


def drain(sock: UdpSocket, want: int) -> float:
    """CPU seconds spent in recv_batch until `want` datagrams were read."""
    got = 0
    cpu = 0.0
    while got < want:
        if not select.select([sock.fileno()], [], [], 2)[0]:
            raise SystemExit(f"lost datagrams: {got} of {want}")
        t = time.process_time()
        got += len(sock.recv_batch())
        cpu += time.process_time() - t
    return cpu


def bench_recv(pktinfo: bool, bursts: int) -> float:
    tx, rx = UdpSocket(0, offload=False), UdpSocket(0, pktinfo=pktinfo)
    try:
        dest = ("127.0.0.1", rx.port)
        payload = [b"x" * 64] * BURST
        cpu = 0.0
        for _ in range(bursts):
            tx.send(dest, payload)
            cpu += drain(rx, BURST)
        return cpu / (bursts * BURST)
    finally:
        tx.close()
        rx.close()


def bench_send(src: bool, size: int, per_call: int, bursts: int) -> float:
    tx, rx = UdpSocket(0), UdpSocket(0, pktinfo=False)
    try:
        dest = ("127.0.0.1", rx.port, 0, ("127.0.0.1", 1) if src else None)
        batch = [b"y" * size] * per_call
        cpu = 0.0
        for _ in range(bursts):
            t = time.process_time()
            if per_call == 1:
                for _ in range(BURST):
                    tx.send(dest, batch)
            else:
                tx.send(dest, batch)
            cpu += time.process_time() - t
            while select.select([rx.fileno()], [], [], 0)[0]:
                rx.recv_batch()
        assert tx.send_errors == 0 and not tx.lost_sources
        return cpu / (bursts * (BURST if per_call == 1 else per_call))
    finally:
        tx.close()
        rx.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-r", "--rounds", type=int, default=7)
    ap.add_argument("-b", "--bursts", type=int, default=400)
    args = ap.parse_args()
    variants = {
        "recv  PKTINFO off": lambda: bench_recv(False, args.bursts),
        "recv  PKTINFO on ": lambda: bench_recv(True, args.bursts),
        "send1 kernel src ": lambda: bench_send(False, 64, 1, args.bursts),
        "send1 sticky src ": lambda: bench_send(True, 64, 1, args.bursts),
        "gso   kernel src ": lambda: bench_send(False, 1400, 32, args.bursts * 4),
        "gso   sticky src ": lambda: bench_send(True, 1400, 32, args.bursts * 4),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            results[name].append(run() * 1e6)
    print(f"CPU µs per datagram, median [min-max] of {args.rounds} rounds")
    for name, xs in results.items():
        print(f"  {name}  {statistics.median(xs):6.2f}  [{min(xs):.2f}-{max(xs):.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
