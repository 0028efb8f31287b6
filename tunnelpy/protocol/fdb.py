"""A learning forwarding database: source MAC → the peer it was last seen behind.

Theory of operation
-------------------
One Fdb per L2 segment, like a bridge's FDB. Frames arriving from a peer teach us that their
source MAC lives behind that peer (`learn`); frames leaving the local TAP look their destination
up (`lookup`) to pick one peer instead of flooding. Entries age out `aging` seconds after the MAC
was last seen; a MAC that shows up behind another peer moves there at once (a VM migrated, or a
host re-plugged). Static entries (`MAC = aa:…@peer`) never age or move.

Aging is lazy — an entry is checked against `now` when it is looked up, and expired entries are
swept when the table is full or listed — so the FDB needs no timers of its own. The table holds
at most `max_entries` learned MACs: under a MAC flood, new MACs are refused (and counted) rather
than evicting live ones, which is what keeps known unicast working while an attacker sprays
random source addresses; their frames are still delivered, as unknown unicast would be.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)

DEFAULT_AGING = 300.0
DEFAULT_MAX_ENTRIES = 4096


@dataclass
class FdbEntry(Generic[P]):
    peer: P
    seen: float
    static: bool = False


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


class Fdb(Generic[P]):
    def __init__(self, aging: float = DEFAULT_AGING, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.aging = aging
        self.max_entries = max_entries
        self._table: dict[bytes, FdbEntry[P]] = {}
        self.refused = 0  # learns refused because the table was full
        self.moves = 0

    def __len__(self) -> int:
        return len(self._table)

    def add_static(self, mac: bytes, peer: P) -> None:
        self._table[bytes(mac)] = FdbEntry(peer, 0.0, static=True)

    def learn(self, mac: bytes, peer: P, now: float) -> bool:
        """Record that `mac` is behind `peer`. True when it is new or moved."""
        entry = self._table.get(mac)
        if entry is not None:
            if entry.static:
                return False
            if entry.peer is peer or entry.peer == peer:
                entry.seen = now
                return False
            entry.peer = peer
            entry.seen = now
            self.moves += 1
            return True
        if len(self._table) >= self.max_entries:
            self.expire(now)
            if len(self._table) >= self.max_entries:
                self.refused += 1
                return False
        self._table[bytes(mac)] = FdbEntry(peer, now)
        return True

    def lookup(self, mac: bytes, now: float) -> P | None:
        entry = self._table.get(mac)
        if entry is None:
            return None
        if not entry.static and now - entry.seen > self.aging:
            del self._table[mac]
            return None
        return entry.peer

    def expire(self, now: float) -> int:
        cutoff = now - self.aging
        dead = [m for m, e in self._table.items() if not e.static and e.seen < cutoff]
        for m in dead:
            del self._table[m]
        return len(dead)

    def forget_peer(self, peer: P) -> None:
        for m in [m for m, e in self._table.items() if e.peer is peer or e.peer == peer]:
            del self._table[m]

    def entries(self, now: float) -> list[tuple[bytes, P, float | None]]:
        """(mac, peer, age in seconds or None for static), after sweeping expired entries."""
        self.expire(now)
        return [
            (m, e.peer, None if e.static else now - e.seen) for m, e in sorted(self._table.items())
        ]
