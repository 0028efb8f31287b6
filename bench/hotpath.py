#!/usr/bin/env python3
"""Micro-benchmark of the per-segment Python on the bulk path, without syscalls.

Two engines are handshaken in memory; then a TSO super-packet (virtio_net_hdr + 64 KiB TCP, as
the TUN hands it over) goes through every stage the daemons run on it:

    split  ->  engine.from_tunnel (route, pad, encrypt)  ->  engine.from_network (decrypt,
    replay, cryptokey routing)  ->  coalesce (GRO super-packet for the TUN write)

and the CPU time of each stage is printed in microseconds per segment. With ``--udp SIZE`` the
same stages run on the small-packet path instead: plain UDP datagrams of SIZE payload bytes as
the TUN hands them over one per read (NEEDS_CSUM: the checksum finished by us), 64 per engine
batch, coalesced into one USO write on the receiving side. It answers "what does
one 1420-byte segment cost in Python" in seconds, so a change to the hot path can be judged
before the slower, noisier end-to-end bench (bench/run.sh). Run it twice around a change; the
machine's speed drifts, so only compare figures from back-to-back runs.

    python3 bench/hotpath.py [-n ITERATIONS] [--mss 1380] [--v6] [--udp SIZE]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunnelpy.io import knobs, offload  # noqa: E402
from tunnelpy.protocol import aead  # noqa: E402
from tunnelpy.protocol.crypto import generate_private_key, public_key  # noqa: E402
from tunnelpy.protocol.engine import Engine  # noqa: E402

# TUNNELPY_TEST_COMPILED=off: the Python paths (segment loops and `cryptography`), as a daemon.
aead.enable(not knobs.compiled_forced_off())

A_ADDR = ("192.0.2.1", 51820)
B_ADDR = ("192.0.2.2", 51820)


def engines(v6: bool) -> tuple[Engine, Engine, float]:
    rng = random.Random(7).randbytes
    now = 1000.0
    ka, kb = generate_private_key(rng), generate_private_key(rng)
    a = Engine(ka, rng=rng, wall=lambda: 1.7e9 + now)
    b = Engine(kb, rng=rng, wall=lambda: 1.7e9 + now)
    a.add_peer(public_key(kb), name="b", endpoint=B_ADDR,
               allowed_ips=[ipaddress.ip_network("10.0.0.2/32"),
                            ipaddress.ip_network("fd00::2/128")])
    b.add_peer(public_key(ka), name="a", endpoint=A_ADDR,
               allowed_ips=[ipaddress.ip_network("10.0.0.1/32"),
                            ipaddress.ip_network("fd00::1/128")])
    # Handshake: initiation a->b, response b->a, then a's first data confirms b's session.
    out = a.from_tunnel([tcp_packet(v6, b"hello", 1)], now)
    for _ in range(4):
        nxt = []
        for addr, dgs in out.datagrams.items():
            dst, src = (b, A_ADDR) if addr[:2] == B_ADDR else (a, B_ADDR)
            nxt.append(dst.from_network([(d, src) for d in dgs], now))
        if not nxt:
            break
        out = nxt[0]
        for o in nxt[1:]:
            out.datagrams.update(o.datagrams)
    return a, b, now


def tcp_packet(v6: bool, payload: bytes, seq: int) -> bytes:
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, seq, 1, 0x80, 0x10, 512, 0, 0)
    tcp += bytes.fromhex("0101080a0000000100000002")  # NOP NOP timestamps
    if v6:
        ip = struct.pack(">IHBB", 0x60000000, len(tcp) + len(payload), 6, 64)
        ip += ipaddress.ip_address("fd00::1").packed + ipaddress.ip_address("fd00::2").packed
    else:
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64,
                         6, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return ip + tcp + payload


def super_packet(v6: bool, mss: int, size: int) -> bytes:
    pkt = tcp_packet(v6, os.urandom(size), 1)
    hl = (40 if v6 else 20) + 32
    gso = offload.GSO_TCPV6 if v6 else offload.GSO_TCPV4
    vnet = offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, gso, hl, mss, hl - 32, 16)
    return vnet + pkt


def udp_read(v6: bool, payload: bytes) -> bytes:
    """One read of a UDP datagram from the TUN: virtio_net_hdr (NEEDS_CSUM) + IP + UDP, the
    UDP checksum field holding only the pseudo-header sum, as the kernel leaves it."""
    n = 8 + len(payload)
    if v6:
        src, dst = ipaddress.ip_address("fd00::1").packed, ipaddress.ip_address("fd00::2").packed
        ip = struct.pack(">IHBB", 0x60000000, n, 17, 64) + src + dst
    else:
        src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + n, 1, 0x4000, 64, 17, 0, src, dst)
    pseudo = offload.pseudo_sum(src, dst, 17, n)
    udp = struct.pack(">HHHH", 40000, 5201, n, offload.fold(pseudo))
    vnet = offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, offload.GSO_NONE, 0, 0, len(ip), 6)
    return vnet + ip + udp + payload


def small_path(args: argparse.Namespace) -> None:
    a, b, now = engines(args.v6)
    reads = [udp_read(args.v6, os.urandom(args.udp)) for _ in range(64)]
    t_read = t_send = t_recv = t_coal = 0.0
    packets = 0
    clock = time.process_time
    finish = offload.finish_plain
    for _ in range(args.n):
        t0 = clock()
        pkts = [finish(r) for r in reads]
        t1 = clock()
        out = a.from_tunnel(pkts, now)
        t2 = clock()
        ((_, dgs),) = out.datagrams.items()
        got = b.from_network([(d, A_ADDR) for d in dgs], now)
        t3 = clock()
        units = offload.coalesce(got.packets, uso=True)
        t4 = clock()
        assert len(got.packets) == len(pkts), (len(got.packets), len(pkts), dict(b.drops))
        assert len(units) == 1, len(units)
        t_read += t1 - t0
        t_send += t2 - t1
        t_recv += t3 - t2
        t_coal += t4 - t3
        packets += len(pkts)
    us = 1e6 / packets
    print(f"{packets} UDP datagrams of {args.udp} bytes ({'IPv6' if args.v6 else 'IPv4'}), "
          f"64 per batch; CPU µs per datagram:")
    print(f"  checksum     {t_read * us:5.2f}")
    print(f"  engine send  {t_send * us:5.2f}")
    print(f"  engine recv  {t_recv * us:5.2f}")
    print(f"  coalesce     {t_coal * us:5.2f}")
    print(f"  sender {(t_read + t_send) * us:5.2f}  receiver {(t_recv + t_coal) * us:5.2f}  "
          f"total {(t_read + t_send + t_recv + t_coal) * us:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=400, help="super-packets (default 400)")
    ap.add_argument("--mss", type=int, default=1368, help="TCP payload per segment")
    ap.add_argument("--v6", action="store_true")
    ap.add_argument("--udp", type=int, metavar="SIZE", help="the small-packet path instead")
    args = ap.parse_args()
    if args.udp is not None:
        small_path(args)
        return
    a, b, now = engines(args.v6)
    size = 65000 - 100
    size -= size % args.mss
    buf = super_packet(args.v6, args.mss, size)
    t_split = t_send = t_recv = t_coal = 0.0
    segments = 0
    clock = time.process_time
    for _ in range(args.n):
        t0 = clock()
        segs = offload.split(buf)
        t1 = clock()
        out = a.from_tunnel(segs, now)
        t2 = clock()
        ((_, dgs),) = out.datagrams.items()
        got = b.from_network([(d, A_ADDR) for d in dgs], now)
        t3 = clock()
        units = offload.coalesce(got.packets)
        t4 = clock()
        assert len(got.packets) == len(segs), (len(got.packets), len(segs), dict(b.drops))
        assert len(units) == 1, len(units)
        t_split += t1 - t0
        t_send += t2 - t1
        t_recv += t3 - t2
        t_coal += t4 - t3
        segments += len(segs)
    us = 1e6 / segments
    print(f"{segments} segments of {args.mss} bytes ({'IPv6' if args.v6 else 'IPv4'}), "
          f"{len(segs)} per super-packet; CPU µs per segment:")
    print(f"  split        {t_split * us:5.2f}")
    print(f"  engine send  {t_send * us:5.2f}")
    print(f"  engine recv  {t_recv * us:5.2f}")
    print(f"  coalesce     {t_coal * us:5.2f}")
    print(f"  sender {(t_split + t_send) * us:5.2f}  receiver {(t_recv + t_coal) * us:5.2f}  "
          f"total {(t_split + t_send + t_recv + t_coal) * us:5.2f}")


if __name__ == "__main__":
    main()
