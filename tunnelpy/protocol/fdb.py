"""A learning forwarding database: source MAC → the peer it was last seen behind.

Theory of operation
-------------------
One Fdb per L2 segment, like a bridge's FDB. Frames arriving from a peer teach us that their
source MAC lives behind that peer (`learn`); frames leaving the local TAP look their destination
up (`lookup`) to pick one peer instead of flooding. Entries age out `aging` seconds after the MAC
was last seen. Static entries (`MAC = aa:…@peer`) never age or move.

Every member can send any source MAC, so the table is also an attack surface (docs/layer2.md,
"Trust model"). What keeps one member from hurting the others:

* **Cost.** Learned entries live in an OrderedDict kept in last-seen order: a refresh moves its
  entry to the end (O(1)), so the expired entries are always at the front and `expire` pops them
  without looking at live ones. A new MAC therefore costs O(1) amortised whether the table is
  empty or full — the old table scanned all its entries for every new MAC once it was full.
  (The order assumes `now` does not go backwards, as a monotonic clock never does; if it did, an
  entry would only expire late — `lookup` still checks every entry's age.)
* **Quota.** A peer holds at most `quota()` learned MACs: `per_peer` if configured
  (`MaxMACsPerPeer`), else an equal share of the table, `max_entries // members`. A frame whose
  source MAC cannot be learnt, because its peer is at its quota or the table is full, is refused
  (the caller drops and counts it): delivering it would make every answer to it unknown unicast,
  flooded to every member.
* **Pinning.** `allowed` (a MacFilter: `AllowedMACs = prefix@peer`) gives MAC prefixes to peers,
  the L2 analogue of AllowedIPs: a MAC inside a peer's prefix is accepted from that peer only
  (longest prefix wins), and a peer with prefixes of its own may send no other source MAC.
  Static MACs are pinned to their peer the same way. A pinned MAC never moves.
* **Mobility.** A learnt MAC that shows up behind another peer moves there only once it has been
  quiet behind its current peer for `move_hold` seconds (a VM migrated, a laptop re-plugged: the
  old site falls silent). Until then the frame is delivered, since the MAC is known the frame's
  answers do not flood, but the entry keeps pointing where it did, so a member cannot steer to
  itself the traffic of a host that is talking; the newcomer is remembered as the contender, and
  the entry moves to it as soon as the old peer has been quiet long enough (checked on `lookup`
  too, so a migrated host that only answers is reached without sending again). This is the
  "quiet" rule of EVPN MAC mobility's duplicate detection and the kernel bridge's sticky
  entries in spirit: a host in a conversation cannot be taken over, a host that left can be.

Aging is lazy — an entry is checked against `now` when it is looked up, and expired entries are
popped from the front when room is needed or the table is listed — so the FDB needs no timers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from .drops import Drop

P = TypeVar("P", bound=Hashable)

DEFAULT_AGING = 300.0
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MOVE_HOLD = 5.0
MAC_BITS = 48


class FdbEntry(Generic[P]):
    __slots__ = ("peer", "seen", "contender", "contested")

    def __init__(self, peer: P, seen: float) -> None:
        self.peer = peer
        self.seen = seen
        self.contender: P | None = None  # another peer that sent this MAC while it was held
        self.contested = 0.0  # when the contender last sent it


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def mac_prefix(mac: bytes, length: int) -> int:
    """The first `length` bits of a 6-byte MAC, as an integer."""
    return int.from_bytes(mac, "big") >> (MAC_BITS - length)


class MacFilter(Generic[P]):
    """MAC prefixes → the peer each belongs to (``AllowedMACs``), longest prefix first.

    A handful of prefix lengths at most in practice, so a match is one dict probe per distinct
    length, longest first."""

    def __init__(self, prefixes: Iterable[tuple[bytes, int, P]]) -> None:
        by_len: dict[int, dict[int, P]] = {}
        restricted: set[P] = set()
        for mac, length, peer in prefixes:
            by_len.setdefault(length, {})[mac_prefix(mac, length)] = peer
            restricted.add(peer)
        self._tables = [(MAC_BITS - n, by_len[n]) for n in sorted(by_len, reverse=True)]
        self.restricted = restricted  # peers that may send only their own prefixes

    def __bool__(self) -> bool:
        return bool(self._tables)

    def owner(self, mac: bytes) -> P | None:
        value = int.from_bytes(mac, "big")
        for shift, table in self._tables:
            peer = table.get(value >> shift)
            if peer is not None:
                return peer
        return None

    def allows(self, mac: bytes, peer: P) -> bool:
        owner = self.owner(mac)
        if owner is not None:
            return owner is peer or owner == peer
        return peer not in self.restricted


class Fdb(Generic[P]):
    def __init__(
        self,
        aging: float = DEFAULT_AGING,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        per_peer: int | None = None,
        move_hold: float = DEFAULT_MOVE_HOLD,
        allowed: MacFilter[P] | None = None,
        members: Callable[[], int] | None = None,
    ) -> None:
        self.aging = aging
        self.max_entries = max_entries  # learned entries; static ones are not counted
        self.per_peer = per_peer  # None: an equal share of the table (quota())
        self.move_hold = move_hold
        self.allowed = allowed if allowed else None
        self._members = members or (lambda: 1)
        self._learned: OrderedDict[bytes, FdbEntry[P]] = OrderedDict()  # oldest seen first
        self._static: dict[bytes, P] = {}
        self._count: dict[P, int] = {}  # learned entries per peer
        self.refused = 0  # new MACs not learnt: their peer at its quota, or the table full
        self.moves = 0
        self.held = 0  # frames from a peer contesting a MAC still active behind another

    def __len__(self) -> int:
        return len(self._learned) + len(self._static)

    def quota(self) -> int:
        """How many learned MACs one peer may hold."""
        if self.per_peer is not None:
            return self.per_peer
        return max(1, self.max_entries // max(1, self._members()))

    def count(self, peer: P) -> int:
        return self._count.get(peer, 0)

    def add_static(self, mac: bytes, peer: P) -> None:
        mac = bytes(mac)
        entry = self._learned.pop(mac, None)
        if entry is not None:
            self._uncount(entry.peer)
        self._static[mac] = peer

    def learn(self, mac: bytes, peer: P, now: float) -> Drop | None:
        """`mac` was seen as a source behind `peer`. None: deliver the frame (learnt,
        refreshed, held, or a static MAC of this peer); otherwise why it must be dropped."""
        learned = self._learned
        entry = learned.get(mac)
        if entry is not None and (entry.peer is peer or entry.peer == peer):
            if entry.seen != now:  # (a batch shares one `now`: one reorder per batch)
                entry.seen = now
                learned.move_to_end(mac)
            return None
        return self._learn_other(mac, peer, now, entry)

    def learned_by(self, mac: bytes) -> P | None:
        """The peer `mac` is learnt behind (None when it is not learnt: unknown or static),
        without refreshing it. A fast path checks it before it skips learning that source again
        within one batch, where learn() would change nothing."""
        entry = self._learned.get(mac)
        return None if entry is None else entry.peer

    def _learn_other(
        self, mac: bytes, peer: P, now: float, entry: FdbEntry[P] | None
    ) -> Drop | None:
        owner = self._static.get(mac)
        if owner is not None:
            return None if owner is peer or owner == peer else Drop.MAC_NOT_ALLOWED
        if self.allowed is not None and not self.allowed.allows(mac, peer):
            return Drop.MAC_NOT_ALLOWED
        if entry is not None:
            quiet = now - entry.seen
            if quiet <= self.aging:
                if quiet < self.move_hold:
                    entry.contender = peer
                    entry.contested = now
                    self.held += 1
                    return None
                return self._move(mac, entry, peer, now)
            del self._learned[mac]  # expired: learnt afresh below
            self._uncount(entry.peer)
        reason = self._room_for(peer, now)
        if reason is not None:
            return reason
        self._learned[bytes(mac)] = FdbEntry(peer, now)
        self._count[peer] = self._count.get(peer, 0) + 1
        return None

    def _room_for(self, peer: P, now: float) -> Drop | None:
        """None if `peer` may learn one more MAC (expired entries are swept first)."""
        full = len(self._learned) >= self.max_entries
        if full or self._count.get(peer, 0) >= self.quota():
            self.expire(now)
            if self._count.get(peer, 0) >= self.quota():
                self.refused += 1
                return Drop.MAC_QUOTA
            if len(self._learned) >= self.max_entries:
                self.refused += 1
                return Drop.FDB_FULL
        return None

    def _move(self, mac: bytes, entry: FdbEntry[P], peer: P, seen: float) -> Drop | None:
        if self._count.get(peer, 0) >= self.quota():
            self.refused += 1
            entry.contender = None
            return Drop.MAC_QUOTA
        self._uncount(entry.peer)
        self._count[peer] = self._count.get(peer, 0) + 1
        entry.peer = peer
        entry.seen = seen
        entry.contender = None
        self._learned.move_to_end(mac)
        self.moves += 1
        return None

    def _uncount(self, peer: P) -> None:
        n = self._count.get(peer, 0) - 1
        if n > 0:
            self._count[peer] = n
        else:
            self._count.pop(peer, None)

    def lookup(self, mac: bytes, now: float) -> P | None:
        entry = self._learned.get(mac)
        if entry is None:
            return self._static.get(mac)
        quiet = now - entry.seen
        if quiet > self.aging:
            del self._learned[mac]
            self._uncount(entry.peer)
            return None
        contender = entry.contender
        if contender is not None and quiet >= self.move_hold and entry.contested >= entry.seen:
            # The old peer fell silent after another claimed the MAC: it moved.
            self._move(mac, entry, contender, entry.contested)
        return entry.peer

    def expire(self, now: float) -> int:
        """Drop the entries not seen for `aging` seconds: all at the front, oldest first."""
        cutoff = now - self.aging
        learned = self._learned
        dead = 0
        for entry in learned.values():
            if entry.seen >= cutoff:
                break  # the rest are newer
            dead += 1
        for _ in range(dead):
            _, entry = learned.popitem(last=False)
            self._uncount(entry.peer)
        return dead

    def forget_peer(self, peer: P) -> None:
        for m, e in list(self._learned.items()):
            if e.peer is peer or e.peer == peer:
                del self._learned[m]
            elif e.contender is peer or e.contender == peer:
                e.contender = None
        self._count.pop(peer, None)
        for m in [m for m, p in self._static.items() if p is peer or p == peer]:
            del self._static[m]

    def entries(self, now: float) -> list[tuple[bytes, P, float | None]]:
        """(mac, peer, age in seconds or None for static), after sweeping expired entries."""
        self.expire(now)
        out: list[tuple[bytes, P, float | None]] = [(m, p, None) for m, p in self._static.items()]
        out += [(m, e.peer, now - e.seen) for m, e in self._learned.items()]
        out.sort(key=lambda t: t[0])
        return out
