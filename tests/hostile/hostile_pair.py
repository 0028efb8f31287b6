"""Two in-memory engines and a hand-held clock, for building real WireGuard messages to mutate.

`Pair` wires engine A (initiator) and engine B (responder) through a dict "network", like
tests/unit/test_engine.py, but keeps every datagram in `wire` so the fuzzers can take valid
messages of each type (initiation, response, cookie reply, transport data, keepalive, L2 frames)
and mutate them. Nothing sleeps or opens a socket.
"""

from __future__ import annotations

import ipaddress
import random
import struct

from tunnelpy.protocol.actions import Dest
from tunnelpy.protocol.crypto import generate_private_key, public_key
from tunnelpy.protocol.engine import Engine, Output

A_ADDR = ("192.0.2.1", 51820)
B_ADDR = ("192.0.2.2", 51820)
A_IN, B_IN = "10.0.0.1", "10.0.0.2"
VNI = 100
MAC_A = bytes.fromhex("02000000000a")
MAC_B = bytes.fromhex("02000000000b")


def ipv4(src: str, dst: str, payload: bytes = b"x" * 20, proto: int = 17) -> bytes:
    total = 20 + len(payload)
    hdr = struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, proto, 0,
        ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
    )  # fmt: skip
    return hdr + payload


def ipv6(src: str, dst: str, payload: bytes = b"y" * 13) -> bytes:
    hdr = struct.pack(
        ">IHBB16s16s", 0x60000000, len(payload), 17, 64,
        ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
    )  # fmt: skip
    return hdr + payload


def eth(dst: bytes, src: bytes, payload: bytes = b"\x08\x00" + b"p" * 46) -> bytes:
    return dst + src + payload


class Pair:
    def __init__(self, seed: int = 1, *, under_load_threshold: int = 1 << 30) -> None:
        self.now = 1000.0
        r = random.Random(seed)
        self.rng = r.randbytes
        ka, kb = generate_private_key(self.rng), generate_private_key(self.rng)
        self.key_a, self.key_b = ka, kb

        def wall() -> float:
            return 1.7e9 + self.now

        self.a = Engine(ka, rng=self.rng, wall=wall, under_load_threshold=under_load_threshold)
        self.b = Engine(kb, rng=self.rng, wall=wall, under_load_threshold=under_load_threshold)
        self.pa = self.a.add_peer(
            public_key(kb), name="b", endpoint=B_ADDR,
            allowed_ips=[ipaddress.ip_network("10.0.0.2/32"), ipaddress.ip_network("fd00::2/128")],
        )  # fmt: skip
        self.pb = self.b.add_peer(
            public_key(ka), name="a", endpoint=A_ADDR,
            allowed_ips=[ipaddress.ip_network("10.0.0.1/32"), ipaddress.ip_network("fd00::1/128")],
        )  # fmt: skip
        self.has_segments = hasattr(self.a, "add_segment")
        if self.has_segments:
            self.a.add_segment(VNI, max_fdb=64)
            self.b.add_segment(VNI, max_fdb=64)
        self.addr_of = {id(self.a): A_ADDR, id(self.b): B_ADDR}
        self.hosts = {A_ADDR: self.a, B_ADDR: self.b}
        self.wire: list[tuple[str, bytes]] = []
        self.delivered: dict[str, list[bytes]] = {"a": [], "b": []}
        self.frames: dict[str, list[bytes]] = {"a": [], "b": []}

    def name(self, e: Engine) -> str:
        return "a" if e is self.a else "b"

    def run(self, src: Engine, out: Output, max_rounds: int = 20) -> None:
        queue = [(src, out)]
        for _ in range(max_rounds):
            if not queue:
                return
            nxt = []
            for eng, o in queue:
                self.delivered[self.name(eng)].extend(o.packets)
                for frames in getattr(o, "frames", {}).values():
                    self.frames[self.name(eng)].extend(frames)
                for addr, dgs in o.datagrams.items():
                    for d in dgs:
                        self.wire.append((self.name(eng), d))
                    dst = self.hosts.get(addr[:2])
                    if dst is not None and dgs:
                        src_addr = self.addr_of[id(eng)]
                        nxt.append((dst, dst.from_network([(d, src_addr) for d in dgs], self.now)))
            queue = nxt
        raise AssertionError("network did not settle")

    def send(self, src: Engine, packets: list[bytes]) -> None:
        self.run(src, src.from_tunnel(packets, self.now))

    def send_frames(self, src: Engine, frames: list[bytes]) -> None:
        self.run(src, src.from_segment(VNI, frames, self.now))

    def sealed(self, src: Engine, plaintexts: list[bytes]) -> list[bytes]:
        """Transport messages carrying arbitrary `plaintexts` on src's current session.

        This is how an authenticated but hostile peer would speak: whatever it encrypts reaches
        the receiver's inner parsers (IP header checks, cryptokey routing, the L2 header).
        """
        peer = self.pa if src is self.a else self.pb
        out = Output()
        src.send_to_peer(peer, plaintexts, self.now, out)
        return [d for dgs in out.datagrams.values() for d in dgs]

    def established(self) -> Pair:
        """Handshake A->B and data both ways, so every message kind is in `wire`."""
        self.send(self.a, [ipv4(A_IN, B_IN)])
        self.send(self.b, [ipv4(B_IN, A_IN)])
        if self.has_segments:
            self.send_frames(self.a, [eth(b"\xff" * 6, MAC_A)])
            self.send_frames(self.b, [eth(MAC_A, MAC_B)])
        return self

    def cookie_reply(self) -> bytes:
        """A genuine type-3 message: B answers A's next initiation with a cookie under load."""
        out = Output()
        self.a._send_initiation(self.pa, self.now, out, retry=True)
        init = out.datagrams[Dest(*B_ADDR)][0]
        self.wire.append(("a", init))
        saved = self.b.under_load_threshold
        self.b.under_load_threshold = 0
        try:
            reply = self.b.from_network([(init, A_ADDR)], self.now + 0.001)
            reply = self.b.from_network([(init, A_ADDR)], self.now + 0.002)
        finally:
            self.b.under_load_threshold = saved
        return reply.datagrams[Dest(*A_ADDR)][0]

    def messages(self) -> dict[str, bytes]:
        """One valid message of every kind this pair produced, keyed by name."""
        kinds: dict[str, bytes] = {}
        for who, d in self.wire:
            t = d[0]
            if t == 1:
                kinds.setdefault("initiation", d)
            elif t == 2:
                kinds.setdefault("response", d)
            elif t == 4 and len(d) == 32:
                kinds.setdefault("keepalive", d)
            elif t == 4:
                kinds.setdefault(f"transport_from_{who}", d)
        return kinds
