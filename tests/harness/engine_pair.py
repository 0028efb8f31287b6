"""Two sans-I/O engines talking in memory, driven by a hand-held clock.

The "network" is a dict from address to engine: `EnginePair.run` delivers every datagram an
engine emits to the engine at its destination until nothing moves, and keeps each one in `wire`
(sender, bytes), so tests can count message kinds, replay captures or mutate genuine messages.
Engine A (192.0.2.1:51820, tunnel 10.0.0.1 / fd00::1) and B (192.0.2.2:51820, 10.0.0.2 /
fd00::2) are peers of each other; `now` only moves when a test moves it (`tick`). Nothing sleeps
or opens a socket.

`Net` is the pair the unit tests use; `Pair` the fuzzers' and hostile tests' (a segment on both
engines, and never under load unless a test asks).
"""

from __future__ import annotations

import ipaddress
import random

from tests.harness.packets import eth, ipv4
from tunnelpy.protocol import constants as C
from tunnelpy.protocol.actions import Dest
from tunnelpy.protocol.crypto import generate_private_key, public_key
from tunnelpy.protocol.engine import Engine, Output

A_ADDR = ("192.0.2.1", 51820)
B_ADDR = ("192.0.2.2", 51820)
A_IN, B_IN = "10.0.0.1", "10.0.0.2"
VNI = 100
MAC_A = bytes.fromhex("02000000000a")
MAC_B = bytes.fromhex("02000000000b")


class EnginePair:
    def __init__(
        self,
        seed: int = 1,
        under_load_threshold: int = C.MAX_STAGED_PACKETS,
        *,
        vni: int | None = None,
        max_fdb: int = 64,
    ) -> None:
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
        self.vni = vni
        self.has_segments = vni is not None
        if vni is not None:
            self.a.add_segment(vni, max_fdb=max_fdb)
            self.b.add_segment(vni, max_fdb=max_fdb)
        self.addr_of = {id(self.a): A_ADDR, id(self.b): B_ADDR}
        self.hosts = {A_ADDR: self.a, B_ADDR: self.b}
        self.delivered: dict[str, list[bytes]] = {"a": [], "b": []}  # packets for each TUN
        self.frames: dict[str, list[bytes]] = {"a": [], "b": []}  # frames for each TAP
        self.events: list = []
        self.wire: list[tuple[str, bytes]] = []  # (from, datagram) for capture/replay
        self.drop_next: set[int] = set()  # message types to drop once

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
                for frames in o.frames.values():
                    self.frames[self.name(eng)].extend(frames)
                self.events.extend(o.events)
                for addr, dgs in o.datagrams.items():
                    # By (host, port): a destination may be a plain tuple or a named one that
                    # also carries a flow hash.
                    dst = self.hosts.get((addr[0], addr[1]))
                    keep = []
                    for d in dgs:
                        self.wire.append((self.name(eng), d))
                        if d[0] in self.drop_next:
                            self.drop_next.discard(d[0])
                            continue
                        keep.append((d, self.addr_of[id(eng)]))
                    if dst is not None and keep:
                        nxt.append((dst, dst.from_network(keep, self.now)))
            queue = nxt
        raise AssertionError("network did not settle")

    def send(self, src: Engine, packets: list[bytes]) -> None:
        self.run(src, src.from_tunnel(packets, self.now))

    def send_frames(self, src: Engine, frames: list[bytes]) -> None:
        assert self.vni is not None, "this pair has no segment"
        self.run(src, src.from_segment(self.vni, frames, self.now))

    def tick(self, to: float) -> None:
        """Advance the clock to `to`, firing every timer due on the way, in order."""
        while True:
            due = [(e.next_deadline(), e) for e in (self.a, self.b)]
            due = [(t, e) for t, e in due if t is not None and t <= to]
            if not due:
                break
            t, e = min(due, key=lambda x: x[0])
            self.now = max(self.now, t)
            self.run(e, e.on_timer(self.now))
        self.now = to

    def kinds(self, since: int = 0) -> list[int]:
        return [d[0] for _, d in self.wire[since:]]

    def sealed(self, src: Engine, plaintexts: list[bytes]) -> list[bytes]:
        """Transport messages carrying arbitrary `plaintexts` on src's current session.

        This is how an authenticated but hostile peer would speak: whatever it encrypts reaches
        the receiver's inner parsers (IP header checks, cryptokey routing, the L2 header).
        """
        peer = self.pa if src is self.a else self.pb
        out = Output()
        src.send_to_peer(peer, plaintexts, self.now, out)
        return [d for dgs in out.datagrams.values() for d in dgs]

    def established(self) -> EnginePair:
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


Net = EnginePair  # the unit tests' name for it


class Pair(EnginePair):
    """The fuzzers' pair: segment `VNI` on both engines, and B never under load (so cookie mode
    happens only where a test asks for it)."""

    def __init__(self, seed: int = 1, *, under_load_threshold: int = 1 << 30) -> None:
        super().__init__(seed, under_load_threshold, vni=VNI)
