"""Cryptokey routing: the AllowedIPs table mapping IP prefixes to peers (longest-prefix match).

Theory of operation
-------------------
WireGuard routes by key: an outgoing packet goes to the peer whose AllowedIPs holds the longest
prefix containing its destination, and an incoming packet is accepted only if its source maps
back to the peer whose session decrypted it. Each prefix has exactly one owner; inserting a
prefix that already exists moves it to the new owner (as `wg set … allowed-ips` does).

Representation: per address family, one dict per prefix length `plen`, keyed by the address's
top `plen` bits as an int (`int(addr) >> (bits - plen)`). A lookup converts the 4 or 16 raw
header bytes with `int.from_bytes` and probes only the prefix lengths actually present, longest
first; the first hit is the longest match. Real configurations use a handful of distinct
lengths (/32, /128, a few subnets, /0), so a lookup is a few dict probes whatever the number of
prefixes; the worst case is bounded by 33 (IPv4) or 129 (IPv6) probes.

Tables with many distinct lengths (a full routing table) would pay for every probe on every
packet, so results are memoised per address in a bounded dict: traffic concentrates on few
destinations and sources, and a hit costs one probe whatever the table. Every mutation clears
the memo (configuration changes are rare), so it never returns a stale owner; when it is full it
is simply cleared, which keeps the cost of a flood of distinct addresses at one extra dict store.

Prefixes are normalised (10.0.0.1/24 is stored as 10.0.0.0/24). Values are compared by
identity for `remove_value`/`networks_of` (peer objects need not be hashable), and must not be
None, which `lookup` uses for "no route".
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["AllowedIPs", "Addr", "Network", "NetworkLike", "route_packets"]

_MEMO_MAX = 1 << 16
_MISS = object()

V = TypeVar("V")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Also accepted on input: "10.0.0.1/24" strings and interfaces (host bits are dropped).
NetworkLike = Network | ipaddress.IPv4Interface | ipaddress.IPv6Interface | str
# Addresses as sliced from a packet: bytes usually, a memoryview or bytearray slice also works.
Addr = bytes | bytearray | memoryview


class _Family(Generic[V]):
    """The per-length tables of one address family."""

    __slots__ = ("bits", "tables", "levels")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.tables: dict[int, dict[int, V]] = {}
        # (shift, table) for each present prefix length, longest prefix first: what lookup walks.
        self.levels: list[tuple[int, dict[int, V]]] = []

    def _relevel(self) -> None:
        bits = self.bits
        self.levels = [
            (bits - plen, self.tables[plen]) for plen in sorted(self.tables, reverse=True)
        ]

    def table(self, plen: int) -> dict[int, V]:
        t = self.tables.get(plen)
        if t is None:
            t = self.tables[plen] = {}
            self._relevel()
        return t

    def drop_if_empty(self, plen: int) -> None:
        if not self.tables.get(plen, True):
            del self.tables[plen]
            self._relevel()


class AllowedIPs(Generic[V]):
    """Longest-prefix-match table from IPv4/IPv6 networks to values (peers)."""

    __slots__ = ("_v4", "_v6", "_owners", "_count", "_memo", "version")

    def __init__(self) -> None:
        self._v4: _Family[V] = _Family(32)
        self._v6: _Family[V] = _Family(128)
        # id(value) → (value, {network: None}) in insertion order; id() because peers may be
        # unhashable dataclasses, and holding the value keeps its id from being reused.
        self._owners: dict[int, tuple[V, dict[Network, None]]] = {}
        self._count = 0
        self._memo: dict[object, V | None] = {}
        self.version = 0  # bumped by every change: workers re-copy the table when it moves

    # --- helpers ------------------------------------------------------------------------------

    def _locate(self, network: NetworkLike) -> tuple[_Family[V], int, int, Network]:
        """(family, plen, key, normalised network) for a network given in any accepted form."""
        if isinstance(network, str):
            # strict=False clears host bits: "10.0.0.1/24" means 10.0.0.0/24, as in wg.
            network = ipaddress.ip_network(network, strict=False)
        elif isinstance(network, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
            network = network.network
        # An IPv4Network/IPv6Network can never hold host bits, so it is already normalised.
        if isinstance(network, ipaddress.IPv4Network):
            fam = self._v4
        elif isinstance(network, ipaddress.IPv6Network):
            fam = self._v6
        else:
            raise TypeError(f"expected an IPv4Network or IPv6Network, got {network!r}")
        plen = network.prefixlen
        return fam, plen, int(network.network_address) >> (fam.bits - plen), network

    def _disown(self, value: V, network: Network) -> None:
        entry = self._owners.get(id(value))
        if entry is not None:
            nets = entry[1]
            nets.pop(network, None)
            if not nets:
                del self._owners[id(value)]

    # --- public API ---------------------------------------------------------------------------

    def insert(self, network: NetworkLike, value: V) -> None:
        """Route `network` to `value`, replacing any previous owner of the identical prefix."""
        if value is None:
            raise ValueError("AllowedIPs values must not be None")
        fam, plen, key, network = self._locate(network)
        self._memo.clear()
        self.version += 1
        table = fam.table(plen)
        old = table.get(key)
        if old is None:
            self._count += 1
        elif old is not value:
            self._disown(old, network)
        table[key] = value
        entry = self._owners.get(id(value))
        if entry is None:
            self._owners[id(value)] = (value, {network: None})
        else:
            entry[1][network] = None

    def remove(self, network: NetworkLike) -> None:
        """Forget `network` (exact prefix); no effect if it is absent."""
        fam, plen, key, network = self._locate(network)
        table = fam.tables.get(plen)
        if table is None:
            return
        old = table.pop(key, None)
        if old is None:
            return
        self._memo.clear()
        self.version += 1
        self._count -= 1
        self._disown(old, network)
        fam.drop_if_empty(plen)

    def remove_value(self, value: V) -> None:
        """Forget every prefix owned by `value` (compared by identity)."""
        entry = self._owners.pop(id(value), None)
        if entry is None:
            return
        self._memo.clear()
        self.version += 1
        for network in entry[1]:
            fam, plen, key, _ = self._locate(network)
            table = fam.tables[plen]
            del table[key]
            self._count -= 1
            fam.drop_if_empty(plen)

    def lookup(self, addr: Addr) -> V | None:
        """The owner of the longest prefix containing `addr` (4 or 16 raw bytes), or None."""
        memo = self._memo
        try:
            v = memo.get(addr, _MISS)
        except TypeError:  # a bytearray is unhashable: answer without the memo
            return self.lookup_uncached(addr)
        if v is not _MISS:
            return v  # type: ignore[return-value]
        v = self.lookup_uncached(addr)
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        # Key by an immutable copy: a memoryview key would pin the whole receive buffer.
        memo[addr if type(addr) is bytes else bytes(addr)] = v
        return v

    def lookup_uncached(self, addr: Addr) -> V | None:
        """`lookup` without the memo: probe each present prefix length, longest first."""
        n = len(addr)
        if n == 4:
            levels = self._v4.levels
        elif n == 16:
            levels = self._v6.levels
        else:
            return None
        a = int.from_bytes(addr, "big")
        for shift, table in levels:
            v = table.get(a >> shift)
            if v is not None:
                return v
        return None

    def networks_of(self, value: V) -> list[Network]:
        """The prefixes owned by `value`, in the order they were inserted."""
        entry = self._owners.get(id(value))
        return [] if entry is None else list(entry[1])

    def items(self) -> Iterator[tuple[Network, V]]:
        """Every (network, owner), grouped by owner."""
        for value, nets in list(self._owners.values()):
            for network in nets:
                yield network, value

    def clear(self) -> None:
        self._v4 = _Family(32)
        self._v6 = _Family(128)
        self._owners.clear()
        self._count = 0
        self._memo.clear()
        self.version += 1

    def __len__(self) -> int:
        return self._count

    def __contains__(self, network: object) -> bool:
        if not isinstance(
            network,
            ipaddress.IPv4Network
            | ipaddress.IPv6Network
            | ipaddress.IPv4Interface
            | ipaddress.IPv6Interface
            | str,
        ):
            return False
        fam, plen, key, _ = self._locate(network)
        table = fam.tables.get(plen)
        return table is not None and key in table


def route_packets(
    packets: Iterable[bytes], table: AllowedIPs[V], drops: Counter[str]
) -> dict[V, list[bytes]]:
    """Outgoing IP packets grouped by the owner of their destination (cryptokey routing out).

    What is not IPv4/IPv6 counts as ``tun_not_ip``, what has no route as ``tun_no_route``. The
    table is consulted once per run of one destination: the segments of a TSO super-packet
    share it. (The engine and the worker processes route with this same loop.)
    """
    by_owner: dict[V, list[bytes]] = {}
    lookup = table.lookup
    last_dst: bytes | None = None
    owner: V | None = None
    bucket: list[bytes] = []
    for pkt in packets:
        version = pkt[0] >> 4 if pkt else 0
        if version == 4 and len(pkt) >= 20:
            dst = pkt[16:20]
        elif version == 6 and len(pkt) >= 40:
            dst = pkt[24:40]
        else:
            drops["tun_not_ip"] += 1
            continue
        if dst != last_dst:
            last_dst = dst
            owner = lookup(dst)
            if owner is not None:
                found = by_owner.get(owner)
                if found is None:
                    found = by_owner[owner] = []
                bucket = found
        if owner is None:
            drops["tun_no_route"] += 1
            continue
        bucket.append(pkt)
    return by_owner
