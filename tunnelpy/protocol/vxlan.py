"""The plain, unencrypted VXLAN engine (``Transport = vxlan``), and VXLAN framing's home.

``VxlanEngine`` speaks RFC 7348 over UDP to the Linux vxlan device and hardware VTEPs: no keys,
no handshake, static endpoints (head-end replication of broadcast, unknown unicast and multicast
to every peer of the segment), and the same L2 switch as the encrypted segments (switch.py:
learning FDB, split horizon, hubs). It has the Engine's batch interface (packet_engine.py) so the
daemon drives both alike; ``from_tunnel`` only counts: there is no L3 in this mode.

Peers are keyed by name. A datagram is attributed to a peer by its source IP alone (kernel VTEPs
vary the source port per flow), so ``by_addr`` follows every endpoint change. Nothing here is
authenticated: anyone who can send a datagram with a peer's source address is that peer. So a
hub segment never relays a flood received from the network (Switch ``relay_floods`` off): a
datagram yields at most one datagram, and the rest of the L2 checks (MAC quota, AllowedMACs)
limit what a spoofer does to the FDB; docs/layer2.md has the trust model.

The outer UDP source port is chosen from the flow hash of the inner frame (vxlan_header.py): the
engine returns it as ``Dest.flow`` and the socket layer maps it to one of its source ports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from . import aead
from .actions import Dest, Origin, Output, Src
from .drops import Drop
from .fdb import DEFAULT_AGING, DEFAULT_MAX_ENTRIES, DEFAULT_MOVE_HOLD
from .packet_engine import UNSET, Unset
from .switch import DEFAULT_MAX_FRAME, Switch
from .vxlan_header import ETH_HLEN, FLAG_I, HEADER_LEN, flow_hash, pack_header, parse_header

__all__ = [
    "ETH_HLEN",
    "FLAG_I",
    "HEADER_LEN",
    "VxlanEngine",
    "VxlanPeer",
    "flow_hash",
    "pack_header",
    "parse_header",
]

Addr = tuple[str, int]
_RUN_KEY = HEADER_LEN + 12  # what the datagrams of one run share: header, both MACs
_RUN_MIN = HEADER_LEN + ETH_HLEN  # (a frame shorter than an Ethernet header is dropped)


class VxlanPeer:
    __slots__ = (
        "name", "endpoint", "removed", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets",
    )  # fmt: skip

    def __init__(self, name: str, endpoint: Addr) -> None:
        self.name = name
        self.endpoint = endpoint
        self.removed = False
        self.rx_bytes = self.tx_bytes = self.rx_packets = self.tx_packets = 0

    def __repr__(self) -> str:
        return f"VxlanPeer({self.name})"


class VxlanEngine:
    """Plain RFC 7348 VXLAN with the Engine's batch interface (from_segment / from_network)."""

    def __init__(self) -> None:
        self.peers: dict[str, VxlanPeer] = {}
        self.by_addr: dict[str, VxlanPeer] = {}  # source IP -> peer (kernel VTEPs vary the port)
        self.segments: dict[int, Switch[VxlanPeer]] = {}
        self.drops: Counter[str] = Counter()

    # ---------------------------------------------------------------- configuration

    def add_peer(self, name: str, endpoint: Addr) -> VxlanPeer:
        peer = VxlanPeer(name, endpoint)
        self.peers[name] = peer
        self.by_addr[endpoint[0]] = peer
        return peer

    def update_peer(
        self, name: str, endpoint: Addr | Unset = UNSET, *, now: float | None = None
    ) -> VxlanPeer | None:
        """Move a peer to a new endpoint (UNSET: unchanged). None when there is no such peer.
        (`now` is accepted for the common engine interface; nothing here depends on time.)"""
        peer = self.peers.get(name)
        if peer is None or isinstance(endpoint, Unset):
            return peer
        if self.by_addr.get(peer.endpoint[0]) is peer:
            del self.by_addr[peer.endpoint[0]]
        peer.endpoint = endpoint
        self.by_addr[endpoint[0]] = peer
        return peer

    def remove_peer(self, name: str) -> None:
        """Forget a peer: its address, its membership of every segment and its FDB entries."""
        peer = self.peers.pop(name, None)
        if peer is None:
            return
        if self.by_addr.get(peer.endpoint[0]) is peer:
            del self.by_addr[peer.endpoint[0]]
        for seg in self.segments.values():
            seg.forget_peer(peer)
        peer.removed = True

    def add_segment(
        self,
        vni: int,
        peers: Iterable[VxlanPeer] | None = None,
        *,
        hub: bool = False,
        aging: float = DEFAULT_AGING,
        max_fdb: int = DEFAULT_MAX_ENTRIES,
        max_frame: int = DEFAULT_MAX_FRAME,
        static: Iterable[tuple[bytes, VxlanPeer]] = (),
        allowed_macs: Iterable[tuple[bytes, int, VxlanPeer]] = (),
        max_per_peer: int | None = None,
        move_hold: float = DEFAULT_MOVE_HOLD,
    ) -> Switch[VxlanPeer]:
        """A segment of `peers` (None: every peer, also those added later), replacing any
        segment of that VNI. A hub relays known unicast only (relay_floods off): anyone can
        send a datagram with a peer's source address, and a flood relayed to every other
        member would turn each such datagram into one per member."""
        seg = Switch(
            vni, peers, self.peers, hub=hub, aging=aging, max_fdb=max_fdb, max_frame=max_frame,
            static=static, allowed_macs=allowed_macs, max_per_peer=max_per_peer,
            move_hold=move_hold, relay_floods=False,
        )  # fmt: skip
        self.segments[vni] = seg
        return seg

    def remove_segment(self, vni: int) -> None:
        self.segments.pop(vni, None)

    # ---------------------------------------------------------------- batches

    def next_deadline(self) -> float | None:
        return None  # no handshakes, no timers: aging is lazy

    def on_timer(self, now: float) -> Output:
        return Output()

    def from_tunnel(self, packets: Sequence[bytes], now: float) -> Output:
        self.drops[Drop.NO_L3_IN_VXLAN_MODE] += len(packets)
        return Output()

    def from_segment(self, vni: int, frames: Sequence[bytes], now: float) -> Output:
        out = Output()
        seg = self.segments.get(vni)
        if seg is None:
            self.drops[Drop.UNKNOWN_VNI] += len(frames)
            return out
        datagrams = out.datagrams
        run_end = aead.flow_runs()
        for targets, payloads in seg.egress(frames, now, self.drops):
            # One bucket per (peer, flow): looked up again only when the flow changes, which
            # within a run of one destination MAC is rare (one TCP connection, one hash). The
            # compiled scan says how far the frames hash alike, so each run is hashed once.
            last_flow = -1
            buckets: list[list[bytes]] = []
            i, n = 0, len(payloads)
            while i < n:
                data = payloads[i]
                flow = flow_hash(data, HEADER_LEN)
                j = i + 1 if run_end is None else run_end(payloads, i, HEADER_LEN)
                if flow != last_flow:
                    last_flow = flow
                    buckets = []
                    for p in targets:
                        key = Dest(p.endpoint[0], p.endpoint[1], flow)
                        bucket = datagrams.get(key)
                        if bucket is None:
                            bucket = datagrams[key] = []
                        buckets.append(bucket)
                if j == i + 1:
                    for bucket in buckets:
                        bucket.append(data)
                else:
                    run = payloads[i:j]
                    for bucket in buckets:
                        bucket.extend(run)
                i = j
            nbytes = sum(map(len, payloads))
            for p in targets:
                p.tx_bytes += nbytes
                p.tx_packets += len(payloads)
        return out

    def forget_sources(self, srcs: Iterable[Src]) -> Output:
        """(The common engine interface: VXLAN peers send from the kernel's choice, so no
        source of theirs can be lost.)"""
        return Output()

    def from_network(self, datagrams: Iterable[tuple[bytes, Origin]], now: float) -> Output:
        """Datagrams -> frames for the TAPs (and, on a hub, relayed datagrams), drops counted.

        A datagram from the same source IP that starts (VXLAN header, destination and source
        MAC: 20 bytes) like the one before it, when that one was written to a TAP of a segment
        without a hub and its source MAC is learnt behind its peer, goes straight to the same
        TAP: header, peer, segment, membership and the FDB would all answer as they just did
        (one `now` for the batch, so learning it again changes nothing). That is every datagram
        but the first of a UDP GRO read of one flow; without it the per-datagram checks were
        28 % of the receiving daemon (bench/profile.sh with VXLAN=1), and the run in Python
        still 20 %: the compiled scan (_aead.vxlan_run) takes it, the same test per datagram."""
        out = Output()
        key: bytes | None = None  # the 20 bytes of the run's datagrams (None: no run open)
        key_ip = ""
        run_peer: VxlanPeer | None = None
        run: list[bytes] = []
        items = datagrams if isinstance(datagrams, list) else list(datagrams)
        scan = aead.vxlan_runs()
        i, n = 0, len(items)
        while i < n:
            data, addr = items[i]
            if key is not None:
                assert run_peer is not None  # (set with `key`)
                if scan is not None:
                    j, nbytes = scan(items, i, key, key_ip, run)
                    if j > i:
                        run_peer.rx_bytes += nbytes
                        run_peer.rx_packets += j - i
                        i = j
                        continue
                elif data[:_RUN_KEY] == key and addr[0] == key_ip and len(data) >= _RUN_MIN:
                    run.append(data[HEADER_LEN:])
                    run_peer.rx_bytes += len(data)
                    run_peer.rx_packets += 1
                    i += 1
                    continue
            i += 1
            key = None
            vni = parse_header(data)
            if vni is None:
                self.drops[Drop.BAD_VXLAN_HEADER] += 1
                continue
            peer = self.by_addr.get(addr[0])
            if peer is None:
                self.drops[Drop.UNKNOWN_SOURCE] += 1
                continue
            seg = self.segments.get(vni)
            if seg is None:
                self.drops[Drop.UNKNOWN_VNI] += 1
                continue
            if not seg.has(peer):
                self.drops[Drop.PEER_NOT_IN_SEGMENT] += 1
                continue
            frame = data[HEADER_LEN:]
            if len(frame) < ETH_HLEN:
                self.drops[Drop.FRAME_TOO_SHORT] += 1
                continue
            forward = seg.ingress(peer, frame, now)
            if isinstance(forward, Drop):
                self.drops[forward] += 1
                continue
            peer.rx_bytes += len(data)
            peer.rx_packets += 1
            relay, local = forward
            if relay:
                flow = flow_hash(frame)
                for p in relay:
                    out.send(Dest(p.endpoint[0], p.endpoint[1], flow), data)
                    p.tx_bytes += len(data)
                    p.tx_packets += 1
            if local:
                bucket = out.write_frame(vni, frame)
                if not relay and not seg.hub and seg.fdb.learned_by(frame[6:12]) is peer:
                    key, key_ip, run_peer, run = data[:_RUN_KEY], addr[0], peer, bucket
        return out
