"""VXLAN framing (RFC 7348) and the plain, unencrypted VXLAN engine.

Header (8 bytes): flags (0x08 = the I bit, "VNI is valid"), 3 reserved bytes, the 24-bit VNI,
1 reserved byte. Receivers require the I bit and ignore the reserved bits, as the RFC says.

The same header serves two purposes:
- inside an encrypted WireGuard transport message it marks an L2 plaintext (the first byte of an
  IP packet is 0x4X or 0x6X, so 0x08 cannot be confused with one), see engine.py;
- with `Transport = vxlan`, ``VxlanEngine`` speaks plain RFC 7348 over UDP to the Linux vxlan
  device and hardware VTEPs: no keys, no handshake, static endpoints (head-end replication of
  broadcast, unknown unicast and multicast to every peer of the segment), and the same learning
  FDB and split horizon as the encrypted segments.

The outer UDP source port is chosen from a hash of the inner frame's addresses (RFC 7348 §5:
"it is recommended that the UDP source port number be calculated using a hash of fields from the
inner packet"), so ECMP in the underlay spreads flows while keeping each flow on one path. The
engine returns that hash as the third element of the datagram's destination key; the socket
layer maps it to one of its source ports.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable

from .actions import Output
from .fdb import Fdb

FLAG_I = 0x08
HEADER_LEN = 8
ETH_HLEN = 14
MAX_VNI = (1 << 24) - 1

Addr = tuple[str, int]


def pack_header(vni: int) -> bytes:
    return bytes((FLAG_I, 0, 0, 0)) + vni.to_bytes(3, "big") + b"\x00"


def parse_header(data: bytes) -> int | None:
    """The VNI of a VXLAN header, or None when it is not one (too short, I flag clear)."""
    if len(data) < HEADER_LEN or not data[0] & FLAG_I:
        return None
    return int.from_bytes(data[4:7], "big")


def flow_hash(frame: bytes) -> int:
    """A stable hash of the inner Ethernet addresses and, for IP, the inner IP addresses."""
    key = frame[:12]
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00" and len(frame) >= 34:
        key += frame[26:34]
    elif ethertype == b"\x86\xdd" and len(frame) >= 54:
        key += frame[22:54]
    return zlib.crc32(key)


class VxlanPeer:
    __slots__ = ("name", "endpoint", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets")

    def __init__(self, name: str, endpoint: Addr) -> None:
        self.name = name
        self.endpoint = endpoint
        self.rx_bytes = self.tx_bytes = self.rx_packets = self.tx_packets = 0

    def __repr__(self) -> str:
        return f"VxlanPeer({self.name})"


class VxlanSegment:
    def __init__(
        self, vni: int, peers: list[VxlanPeer], *, hub: bool, fdb: Fdb[VxlanPeer], max_frame: int
    ) -> None:
        self.vni = vni
        self.header = pack_header(vni)
        self.peers = peers
        self.hub = hub
        self.fdb = fdb
        self.max_frame = max_frame


class VxlanEngine:
    """Plain RFC 7348 VXLAN with the Engine's batch interface (from_segment / from_network)."""

    def __init__(self) -> None:
        self.peers: dict[str, VxlanPeer] = {}
        self.by_addr: dict[str, VxlanPeer] = {}  # source IP -> peer (kernel VTEPs vary the port)
        self.segments: dict[int, VxlanSegment] = {}
        self.drops: Counter[str] = Counter()

    def add_peer(self, name: str, endpoint: Addr) -> VxlanPeer:
        peer = VxlanPeer(name, endpoint)
        self.peers[name] = peer
        self.by_addr[endpoint[0]] = peer
        return peer

    def add_segment(
        self,
        vni: int,
        peers: Iterable[VxlanPeer],
        *,
        hub: bool = False,
        aging: float = 300.0,
        max_fdb: int = 4096,
        max_frame: int = 1514 + 4,
        static: Iterable[tuple[bytes, VxlanPeer]] = (),
    ) -> VxlanSegment:
        seg = VxlanSegment(vni, list(peers), hub=hub, fdb=Fdb(aging, max_fdb), max_frame=max_frame)
        for mac, p in static:
            seg.fdb.add_static(mac, p)
        self.segments[vni] = seg
        return seg

    def next_deadline(self) -> float | None:
        return None  # no handshakes, no timers: aging is lazy

    def on_timer(self, now: float) -> Output:
        return Output()

    def from_tunnel(self, packets: list[bytes], now: float) -> Output:
        self.drops["no_l3_in_vxlan_mode"] += len(packets)
        return Output()

    def _send(self, out: Output, peer: VxlanPeer, data: bytes, flow: int) -> None:
        key = (peer.endpoint[0], peer.endpoint[1], flow)
        bucket = out.datagrams.get(key)
        if bucket is None:
            out.datagrams[key] = [data]
        else:
            bucket.append(data)
        peer.tx_bytes += len(data)
        peer.tx_packets += 1

    def from_segment(self, vni: int, frames: list[bytes], now: float) -> Output:
        out = Output()
        seg = self.segments.get(vni)
        if seg is None:
            self.drops["unknown_vni"] += len(frames)
            return out
        for f in frames:
            if len(f) < ETH_HLEN:
                self.drops["frame_too_short"] += 1
                continue
            if len(f) > seg.max_frame:
                self.drops["frame_too_big"] += 1
                continue
            data = seg.header + f
            flow = flow_hash(f)
            target = None if f[0] & 1 else seg.fdb.lookup(f[:6], now)
            for p in [target] if target is not None else seg.peers:
                self._send(out, p, data, flow)
        return out

    def from_network(self, datagrams: Iterable[tuple[bytes, Addr]], now: float) -> Output:
        out = Output()
        for data, addr in datagrams:
            vni = parse_header(data)
            if vni is None:
                self.drops["bad_vxlan_header"] += 1
                continue
            peer = self.by_addr.get(addr[0])
            if peer is None:
                self.drops["unknown_source"] += 1
                continue
            seg = self.segments.get(vni)
            if seg is None:
                self.drops["unknown_vni"] += 1
                continue
            if peer not in seg.peers:
                self.drops["peer_not_in_segment"] += 1
                continue
            frame = data[HEADER_LEN:]
            if len(frame) < ETH_HLEN:
                self.drops["frame_too_short"] += 1
                continue
            if frame[6] & 1:
                self.drops["bad_src_mac"] += 1
                continue
            peer.rx_bytes += len(data)
            peer.rx_packets += 1
            seg.fdb.learn(frame[6:12], peer, now)
            local = True
            if seg.hub:
                target = None if frame[0] & 1 else seg.fdb.lookup(frame[:6], now)
                if target is peer:
                    continue  # it came from where it is going: nothing to do
                targets = [target] if target is not None else [p for p in seg.peers if p is not peer]
                local = target is None
                flow = flow_hash(frame)
                for p in targets:
                    self._send(out, p, data, flow)
            if local:
                out.frames.setdefault(vni, []).append(frame)
        return out
