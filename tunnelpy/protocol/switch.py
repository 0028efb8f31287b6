"""One L2 segment as a learning switch: its VNI, member peers, FDB and forwarding rules.

Theory of operation
-------------------
A segment joins the local TAP of one VNI with the peers that carry it: over encrypted sessions
(engine.py) or plain VXLAN (vxlan.py). Both engines switch with this one class and differ only
in how a frame reaches a peer. The rules are a bridge's:

``egress`` — frames read from the TAP
    A frame longer than ``max_frame`` or shorter than an Ethernet header is dropped. Its
    destination is looked up in the FDB (fdb.py): a known unicast MAC goes to the one peer it
    was learned behind; broadcast, multicast and unknown unicast are flooded to every member
    (head-end replication). The FDB is consulted once per run of frames to one destination (the
    segments of a TSO super-packet share it), and the result comes back as runs, so an engine
    groups its sends per peer with one list operation per run.

``ingress`` — a frame that arrived from a member peer
    A group source MAC is refused; otherwise the source is learned behind that peer. Without
    ``hub`` the frame is only written to the TAP: split horizon, a frame from a peer never goes
    back out to peers, so a full mesh cannot loop. A hub relays between its spokes: known unicast
    to its one peer (not written locally), everything else flooded to the other members and
    written locally; a frame for the peer it came from goes nowhere.

Members are a list, or None for "every peer of the interface" (the engine's peer table, read
when needed, so peers added later are members too). A removed peer is never a member and
``forget_peer`` takes it out of the list and the FDB. Static MACs (``MAC = aa:…@peer``) never age
or move.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from .drops import Drop
from .fdb import DEFAULT_AGING, DEFAULT_MAX_ENTRIES, Fdb
from .vxlan_header import ETH_HLEN, pack_header

DEFAULT_MAX_FRAME = 1514 + 4  # an untagged 1500-byte MTU frame plus one 802.1Q tag


class Port(Hashable, Protocol):
    """What a switch needs of a peer: identity, and whether it was removed."""

    removed: bool


P = TypeVar("P", bound=Port)

_NOWHERE: list[Any] = []  # (shared, never appended to: "relay to no peer")


class Switch(Generic[P]):
    def __init__(
        self,
        vni: int,
        peers: Iterable[P] | None,
        everyone: Mapping[Any, P],
        *,
        hub: bool = False,
        aging: float = DEFAULT_AGING,
        max_fdb: int = DEFAULT_MAX_ENTRIES,
        max_frame: int = DEFAULT_MAX_FRAME,
        static: Iterable[tuple[bytes, P]] = (),
    ) -> None:
        self.vni = vni
        self.header = pack_header(vni)
        self.peers: list[P] | None = None if peers is None else list(peers)  # None: everyone
        self.hub = hub
        self.fdb: Fdb[P] = Fdb(aging, max_fdb)
        self.max_frame = max_frame
        self._everyone = everyone
        for mac, p in static:
            self.fdb.add_static(mac, p)

    def has(self, peer: P) -> bool:
        return self.peers is None or peer in self.peers

    def members(self) -> list[P]:
        if self.peers is None:
            return list(self._everyone.values())
        return [p for p in self.peers if not p.removed]

    def set_members(self, peers: Iterable[P] | None) -> None:
        """Rebind the member list (None: every peer), keeping the FDB."""
        self.peers = None if peers is None else list(peers)

    def forget_peer(self, peer: P) -> None:
        if self.peers is not None and peer in self.peers:
            self.peers.remove(peer)
        self.fdb.forget_peer(peer)

    def egress(
        self, frames: Iterable[bytes], now: float, drops: Counter[str]
    ) -> list[tuple[list[P], list[bytes]]]:
        """Frames from the TAP, switched: (peers, VXLAN-headed payloads) per run of frames to
        one destination MAC, in order. Drops are counted in `drops`."""
        header = self.header
        max_frame = self.max_frame
        lookup = self.fdb.lookup
        runs: list[tuple[list[P], list[bytes]]] = []
        members: list[P] | None = None
        payloads: list[bytes] = []
        last_dst: bytes | None = None
        for f in frames:
            n = len(f)
            if n < ETH_HLEN:
                drops[Drop.FRAME_TOO_SHORT] += 1
                continue
            if n > max_frame:
                drops[Drop.FRAME_TOO_BIG] += 1
                continue
            dst = f[:6]
            if dst != last_dst:
                last_dst = dst
                target = None if f[0] & 1 else lookup(dst, now)
                if target is not None and not target.removed:
                    targets = [target]
                else:
                    if members is None:
                        members = self.members()
                    targets = members  # broadcast, multicast and unknown unicast: flood
                payloads = []
                runs.append((targets, payloads))
            payloads.append(header + f)
        return runs

    def ingress(self, peer: P, frame: bytes, now: float) -> tuple[list[P], bool] | None:
        """A frame (at least an Ethernet header) from member `peer`: learn its source; the peers
        to relay it to and whether to write it to the TAP. None: a group source MAC."""
        if frame[6] & 1:
            return None  # a group address is never a source
        fdb = self.fdb
        fdb.learn(frame[6:12], peer, now)
        if not self.hub:
            return _NOWHERE, True
        target = None if frame[0] & 1 else fdb.lookup(frame[:6], now)
        if target is peer:
            return _NOWHERE, False  # it came from where it is going: nothing to do
        if target is not None:
            return [target], False
        return [p for p in self.members() if p is not peer], True
