"""Drive N live WireGuard peers from one process over real UDP: tunnelpy engines, one socket each.

    python3 tests/hostile/live_peers.py SPEC.json

It is run as a script inside a namespace, so it imports nothing from tests/ and finds tunnelpy
like every daemon the tests start: through PYTHONPATH or the installed package.

SPEC: {"server_public": b64, "server": [host, port], "target": "10.70.0.254",
       "peers": [[private_key_hex, "10.70.0.1"], ...], "timeout": 60}

Each engine handshakes with the daemon under test and sends one ICMP echo request from its own
tunnel address to ``target``; the daemon's kernel answers, and the reply must come back through
the daemon to that engine. Prints one JSON line: handshakes completed, echo replies received,
and the times (from start) when the first and the last peer got its reply.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import select
import socket
import struct
import sys
import time

from tunnelpy.protocol.engine import Engine


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(src: str, dst: str, ident: int) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"tunnelpy-scale"
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ident, 0, 64, 1, 0,
                      ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)  # fmt: skip
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + icmp


def main() -> int:
    spec = json.load(open(sys.argv[1]))
    server = (spec["server"][0], int(spec["server"][1]))
    server_pub = base64.b64decode(spec["server_public"])
    target = spec["target"]
    t0 = time.monotonic()
    clock = time.monotonic
    peers = []
    for i, (priv_hex, addr) in enumerate(spec["peers"]):
        e = Engine(bytes.fromhex(priv_hex), rng=os.urandom, wall=time.time)
        e.add_peer(server_pub, name="daemon", endpoint=server,
                   allowed_ips=[ipaddress.ip_network(target + "/32")])  # fmt: skip
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # one loopback address each (all of 127/8 is local): the responder's per-source rate
        # limit is per IP, and real peers do not share one
        s.bind((f"127.1.{i // 250}.{i % 250 + 1}", 0))
        s.setblocking(False)
        peers.append({"e": e, "s": s, "addr": addr, "ident": i + 1, "reply_at": None})
    by_fd = {p["s"].fileno(): p for p in peers}

    def perform(p, out) -> None:
        for dst, dgs in out.datagrams.items():
            for d in dgs:
                try:
                    p["s"].sendto(d, dst[:2])  # (a Dest: host, port, flow)
                except OSError:
                    pass
        for pkt in out.packets:
            if pkt[9] == 1 and pkt[20] == 0 and p["reply_at"] is None:  # ICMP echo reply
                p["reply_at"] = clock() - t0

    for p in peers:
        perform(p, p["e"].from_tunnel([echo_request(p["addr"], target, p["ident"])], clock()))
    deadline = t0 + float(spec.get("timeout", 60))
    last_resend = clock()
    while clock() < deadline and any(p["reply_at"] is None for p in peers):
        ready, _, _ = select.select(list(by_fd), [], [], 0.05)
        now = clock()
        for fd in ready:
            p = by_fd[fd]
            batch = []
            while True:
                try:
                    data, src = p["s"].recvfrom(65535)
                except BlockingIOError:
                    break
                batch.append((data, src[:2]))
            if batch:
                perform(p, p["e"].from_network(batch, now))
        for p in peers:
            perform(p, p["e"].on_timer(now))
        if now - last_resend > 1.0:  # ICMP has no retransmission of its own
            last_resend = now
            for p in peers:
                if p["reply_at"] is None and p["e"].peers[server_pub].current is not None:
                    perform(
                        p, p["e"].from_tunnel([echo_request(p["addr"], target, p["ident"])], now)
                    )
    replies = [p["reply_at"] for p in peers if p["reply_at"] is not None]
    result = {
        "peers": len(peers),
        "handshakes": sum(1 for p in peers if p["e"].peers[server_pub].stats.handshakes),
        "replies": len(replies),
        "first": round(min(replies), 3) if replies else None,
        "last": round(max(replies), 3) if replies else None,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
