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
    A group source MAC is refused; otherwise the FDB learns the source behind that peer, and may
    refuse it (outside the peer's AllowedMACs or pinned to another peer, the peer at its MAC
    quota, the table full: fdb.py) — the frame is then dropped with that reason. Without ``hub``
    the frame is only written to the TAP: split horizon, a frame from a peer never goes back out
    to peers, so a full mesh cannot loop. A hub relays between its spokes: known unicast to its
    one peer (not written locally), everything else flooded to the other members and written
    locally; a frame for the peer it came from goes nowhere. With ``relay_floods`` off (plain
    VXLAN, whose senders are not authenticated) a hub relays known unicast only: one datagram
    in, at most one out, so a spoofed datagram is never multiplied; floods are written locally.

Members are a list, or None for "every peer of the interface" (the engine's peer table, read
when needed, so peers added later are members too). A removed peer is never a member and
``forget_peer`` takes it out of the list and the FDB. Static MACs (``MAC = aa:…@peer``) never age
or move. The per-peer MAC quota defaults to an equal share of ``max_fdb`` among the members.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from . import aead
from .drops import Drop
from .fdb import DEFAULT_AGING, DEFAULT_MAX_ENTRIES, DEFAULT_MOVE_HOLD, Fdb, MacFilter
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
        allowed_macs: Iterable[tuple[bytes, int, P]] = (),
        max_per_peer: int | None = None,
        move_hold: float = DEFAULT_MOVE_HOLD,
        relay_floods: bool = True,
    ) -> None:
        self.vni = vni
        self.header = pack_header(vni)
        self.peers: list[P] | None = None if peers is None else list(peers)  # None: everyone
        self.hub = hub
        self.relay_floods = relay_floods
        self.fdb: Fdb[P] = Fdb(
            aging, max_fdb, per_peer=max_per_peer, move_hold=move_hold,
            allowed=MacFilter(allowed_macs), members=self._member_count,
        )  # fmt: skip
        self.max_frame = max_frame
        self._everyone = everyone
        for mac, p in static:
            self.fdb.add_static(mac, p)

    def has(self, peer: P) -> bool:
        return self.peers is None or peer in self.peers

    def _member_count(self) -> int:
        return len(self._everyone) if self.peers is None else len(self.peers)

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
        self, frames: Iterable[bytes], now: float, drops: Counter[str], *, headed: bool = True
    ) -> list[tuple[list[P], list[bytes]]]:
        """Frames from the TAP, switched: (peers, VXLAN-headed payloads) per run of frames to
        one destination MAC, in order. Drops are counted in `drops`. `headed=False`: the
        frames themselves, for a caller that puts `header` before each as it seals it (the
        WireGuard engine: no joined copy of every frame)."""
        header = self.header if headed else b""
        max_frame = self.max_frame
        lookup = self.fdb.lookup
        runs: list[tuple[list[P], list[bytes]]] = []
        members: list[P] | None = None
        payloads: list[bytes] = []
        last_dst: bytes | None = None
        # The compiled loop takes each run of frames to one destination, from its first, in
        # one call; without it (or for a frame it does not take: not bytes) the frame here.
        items = frames if type(frames) is list else list(frames)
        scan = aead.egress_runs()
        count = len(items)
        i = 0
        while i < count:
            f = items[i]
            n = len(f)
            if n < ETH_HLEN:
                drops[Drop.FRAME_TOO_SHORT] += 1
                i += 1
                continue
            if n > max_frame:
                drops[Drop.FRAME_TOO_BIG] += 1
                i += 1
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
            j = i if scan is None else scan(items, i, header, max_frame, payloads)
            if j == i:
                payloads.append(header + f if header else f)
                j = i + 1
            i = j
        return runs

    def ingress(self, peer: P, frame: bytes, now: float) -> tuple[list[P], bool] | Drop:
        """A frame (at least an Ethernet header) from member `peer`: learn its source; the peers
        to relay it to and whether to write it to the TAP, or why it is dropped."""
        if frame[6] & 1:
            return Drop.BAD_SRC_MAC  # a group address is never a source
        fdb = self.fdb
        refused = fdb.learn(frame[6:12], peer, now)
        if refused is not None:
            return refused
        if not self.hub:
            return _NOWHERE, True
        target = None if frame[0] & 1 else fdb.lookup(frame[:6], now)
        if target is peer:
            return _NOWHERE, False  # it came from where it is going: nothing to do
        if target is not None:
            return [target], False
        if not self.relay_floods:
            return _NOWHERE, True
        return [p for p in self.members() if p is not peer], True
