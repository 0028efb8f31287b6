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

A prefix is remembered per owner as a :data:`Prefix`: one plain int packing the network address,
the length and the family, not an ``ipaddress`` network. ``wg setconf`` of 10^5 prefixes builds,
hashes and prints that many; an ``ipaddress`` network costs about ten times as much to parse,
make and format (the UAPI codec, io/uapi.py, reads and writes the packed ints with
inet_pton/inet_ntop), and, like a tuple, it is an object the garbage collector tracks: 10^5 of
them made at once cost 50-130 ms pauses of a full collection, felt by the data path. An int is
not tracked at all. ``networks_of`` still answers with ``ipaddress`` networks, made on first
demand and kept; ``prefixes_of`` with the ints.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Generic, NewType, TypeVar

from . import aead

__all__ = [
    "AllowedIPs", "Addr", "Network", "NetworkLike", "Prefix", "make_prefix", "prefix_network",
    "prefix_of", "prefix_parts", "route_packets",
]  # fmt: skip

_MEMO_MAX = 1 << 16
_MISS = object()

V = TypeVar("V")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# (address << 8 | length) << 1 | is_ipv6, the address with its host bits cleared: equal prefixes
# are equal ints. make_prefix / prefix_parts / prefix_of / prefix_network convert. The UAPI
# codec (io/uapi.py, which may not import this package) packs them the same way; a test of
# each side's output against the other's pins that.
Prefix = NewType("Prefix", int)


def make_prefix(width: int, address: int, plen: int) -> Prefix:
    """The prefix ``address/plen`` of family ``width`` (32 or 128); host bits must be zero."""
    return Prefix((address << 8 | plen) << 1 | (width == 128))


def prefix_parts(p: Prefix) -> tuple[int, int, int]:
    """(width, network address, length) of ``p``."""
    return (128 if p & 1 else 32), p >> 9, (p >> 1) & 0xFF


def prefix_of(network: Network) -> Prefix:
    return make_prefix(network.max_prefixlen, int(network.network_address), network.prefixlen)


def prefix_network(p: Prefix) -> Network:
    width, address, plen = prefix_parts(p)
    if width == 32:
        return ipaddress.IPv4Network((address, plen))
    return ipaddress.IPv6Network((address, plen))


# Also accepted on input: "10.0.0.1/24" strings and interfaces (host bits are dropped).
NetworkLike = Prefix | Network | ipaddress.IPv4Interface | ipaddress.IPv6Interface | str
# Addresses as sliced from a packet: bytes usually, a memoryview or bytearray slice also works.
Addr = bytes | bytearray | memoryview


def _as_prefix(network: NetworkLike) -> Prefix:
    if type(network) is int:  # a Prefix, from parse_prefix or prefix_of: already normalised
        return network
    if isinstance(network, str):
        # strict=False clears host bits: "10.0.0.1/24" means 10.0.0.0/24, as in wg.
        network = ipaddress.ip_network(network, strict=False)
    elif isinstance(network, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        network = network.network
    # An IPv4Network/IPv6Network can never hold host bits, so it is already normalised.
    if isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return prefix_of(network)
    raise TypeError(f"expected an IPv4Network or IPv6Network, got {network!r}")


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

    __slots__ = ("_v4", "_v6", "_owners", "_memo", "version")

    def __init__(self) -> None:
        self._v4: _Family[V] = _Family(32)
        self._v6: _Family[V] = _Family(128)
        # id(value) → (value, {prefix: its ipaddress network once asked for}) in insertion
        # order; id() because peers may be unhashable dataclasses, and holding the value keeps
        # its id from being reused.
        self._owners: dict[int, tuple[V, dict[Prefix, Network | None]]] = {}
        self._memo: dict[object, V | None] = {}
        self.version = 0  # bumped by every change: workers re-copy the table when it moves

    # --- helpers ------------------------------------------------------------------------------

    def _family(self, width: int) -> _Family[V]:
        return self._v4 if width == 32 else self._v6

    def _disown(self, value: V, prefix: Prefix) -> None:
        entry = self._owners.get(id(value))
        if entry is not None:
            nets = entry[1]
            nets.pop(prefix, None)
            if not nets:
                del self._owners[id(value)]

    # --- public API ---------------------------------------------------------------------------

    def insert(self, network: NetworkLike, value: V) -> None:
        """Route `network` to `value`, replacing any previous owner of the identical prefix."""
        self.insert_all((network,), value)

    def insert_all(self, networks: Iterable[NetworkLike], value: V) -> None:
        """`insert` each of `networks` (one memo flush and version bump for all of them)."""
        if value is None:
            raise ValueError("AllowedIPs values must not be None")
        entry = self._owners.get(id(value))
        if entry is None:
            entry = (value, {})
        owned = entry[1]
        mark = owned.setdefault
        tables4, tables6 = self._v4.tables, self._v6.tables
        changed = False
        # (10^5 prefixes in one wg setconf: one dict operation per table in the common case)
        for network in networks:
            if type(network) is int:
                prefix = network
                mark(prefix, None)
            else:
                prefix = _as_prefix(network)
                if isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
                    owned[prefix] = network  # keep the caller's object: networks_of returns it
                else:
                    mark(prefix, None)
            plen = (prefix >> 1) & 0xFF
            if prefix & 1:
                table = tables6.get(plen)
                key = prefix >> (137 - plen)  # the address (prefix >> 9) >> (128 - plen)
            else:
                table = tables4.get(plen)
                key = prefix >> (41 - plen)
            if table is None:
                table = (self._v6 if prefix & 1 else self._v4).table(plen)
            old = table.setdefault(key, value)
            if old is not value:  # it had another owner: it moves
                table[key] = value
                self._disown(old, prefix)
            changed = True
        if changed:
            self._memo.clear()
            self.version += 1
            self._owners[id(value)] = entry

    def remove(self, network: NetworkLike) -> None:
        """Forget `network` (exact prefix); no effect if it is absent."""
        prefix = _as_prefix(network)
        width, address, plen = prefix_parts(prefix)
        fam = self._family(width)
        table = fam.tables.get(plen)
        if table is None:
            return
        old = table.pop(address >> (width - plen), None)
        if old is None:
            return
        self._memo.clear()
        self.version += 1
        self._disown(old, prefix)
        fam.drop_if_empty(plen)

    def remove_value(self, value: V) -> None:
        """Forget every prefix owned by `value` (compared by identity)."""
        entry = self._owners.pop(id(value), None)
        if entry is None:
            return
        self._memo.clear()
        self.version += 1
        self._drop(entry[1])

    def _drop(self, prefixes: Iterable[Prefix]) -> None:
        """Delete `prefixes` from the lookup tables (their owner's entry is the caller's)."""
        tables4, tables6 = self._v4.tables, self._v6.tables
        for p in prefixes:  # (the bit fields of Prefix, inline: 10^5 of them at a time)
            plen = (p >> 1) & 0xFF
            if p & 1:
                del tables6[plen][p >> (137 - plen)]
            else:
                del tables4[plen][p >> (41 - plen)]
        for fam in (self._v4, self._v6):
            for plen in [n for n, table in fam.tables.items() if not table]:
                fam.drop_if_empty(plen)

    def replace(self, networks: Iterable[NetworkLike], value: V) -> None:
        """Make `networks` (in this order) exactly the prefixes of `value`.

        The same as ``remove_value`` then ``insert_all``, but only the difference touches the
        tables: ``wg syncconf`` and ``wg set … allowed-ips`` send a peer's whole list every
        time, and re-setting 10^5 unchanged prefixes is then a few set operations."""
        entry = self._owners.get(id(value))
        given = list(networks)
        if entry is None:
            self.insert_all(given, value)
            return
        old = entry[1]
        if all(type(n) is int for n in given):
            new: dict[Prefix, Network | None] = dict.fromkeys(given)  # type: ignore[arg-type]
        else:
            new = {}
            for n in given:
                prefix = _as_prefix(n)
                is_network = isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network)
                new.setdefault(prefix, n if is_network else old.get(prefix))  # type: ignore[arg-type]
        removed = old.keys() - new.keys()
        if len(removed) * 2 > len(old):
            # mostly a new list: diffing on would cost more than redoing the peer's share
            self.remove_value(value)
            self.insert_all(given, value)
            return
        added = list(new.keys() - old.keys())
        if new:
            self._owners[id(value)] = (value, new)  # the new order, even if nothing moved
        else:
            del self._owners[id(value)]
        if removed:
            self._drop(removed)
            self._memo.clear()
            self.version += 1
        if added:
            self.insert_all(added, value)  # (marks them in `new` again: a no-op)

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

    def prefixes_of(self, value: V) -> list[Prefix]:
        """The prefixes owned by `value`, in the order they were inserted."""
        entry = self._owners.get(id(value))
        return [] if entry is None else list(entry[1])

    def networks_of(self, value: V) -> list[Network]:
        """`prefixes_of` as ipaddress networks (made once, then kept with the prefix)."""
        entry = self._owners.get(id(value))
        if entry is None:
            return []
        owned = entry[1]
        out: list[Network] = []
        for prefix, network in owned.items():
            if network is None:
                network = owned[prefix] = prefix_network(prefix)  # a value change: no resize
            out.append(network)
        return out

    def items(self) -> Iterator[tuple[Network, V]]:
        """Every (network, owner), grouped by owner."""
        for value, _ in list(self._owners.values()):
            for network in self.networks_of(value):
                yield network, value

    def clear(self) -> None:
        self._v4 = _Family(32)
        self._v6 = _Family(128)
        self._owners.clear()
        self._memo.clear()
        self.version += 1

    def __len__(self) -> int:
        # at most 33 + 129 tables: cheaper to add up than to count on every insert
        return sum(map(len, self._v4.tables.values())) + sum(map(len, self._v6.tables.values()))

    def __contains__(self, network: object) -> bool:
        if type(network) is not int and not isinstance(
            network,
            ipaddress.IPv4Network
            | ipaddress.IPv6Network
            | ipaddress.IPv4Interface
            | ipaddress.IPv6Interface
            | str,
        ):
            return False
        width, address, plen = prefix_parts(_as_prefix(network))  # type: ignore[arg-type]
        table = self._family(width).tables.get(plen)
        return table is not None and address >> (width - plen) in table


def _multicast(dst: bytes) -> bool:
    """A multicast or limited-broadcast destination (IPv6 ff00::/8, IPv4 224/4 and
    255.255.255.255): what the kernel itself sends on any new link (MLD reports, router
    solicitations), never routed by AllowedIPs unless a peer claims it."""
    return dst[0] == 0xFF if len(dst) == 16 else (dst[0] & 0xF0) == 0xE0 or dst == b"\xff" * 4


def route_packets(
    packets: Iterable[bytes], table: AllowedIPs[V], drops: Counter[str],
    multicast: Counter[str] | None = None,
) -> dict[V, list[bytes]]:  # fmt: skip
    """Outgoing IP packets grouped by the owner of their destination (cryptokey routing out).

    What is not IPv4/IPv6 counts as ``tun_not_ip``, what has no route as ``tun_no_route`` —
    except multicast without a route, which a fresh interface sends by itself (IPv6 router
    solicitations, MLD): that is no fault, so it counts in ``multicast`` (``tun_multicast``)
    and not among the drops alerts watch. The table is consulted once per run of one
    destination: the segments of a TSO super-packet share it. (The engine and the worker
    processes route with this same loop.)
    """
    by_owner: dict[V, list[bytes]] = {}
    lookup = table.lookup
    last_dst: bytes | None = None
    owner: V | None = None
    bucket: list[bytes] = []
    # The compiled scan tells where a run of one destination (the segments of a super-packet)
    # ends, so the run is looked up once and taken in one slice; without it every packet is a
    # run of one. A packet the scan does not take (not bytes) is a run of one as well.
    items = packets if type(packets) is list else list(packets)
    scan = aead.destination_runs()
    count = len(items)
    i = 0
    while i < count:
        pkt = items[i]
        version = pkt[0] >> 4 if pkt else 0
        if version == 4 and len(pkt) >= 20:
            dst = pkt[16:20]
        elif version == 6 and len(pkt) >= 40:
            dst = pkt[24:40]
        else:
            drops["tun_not_ip"] += 1
            i += 1
            continue
        j = i + 1 if scan is None else max(scan(items, i), i + 1)
        if dst != last_dst:
            last_dst = dst
            owner = lookup(dst)
            if owner is not None:
                found = by_owner.get(owner)
                if found is None:
                    found = by_owner[owner] = []
                bucket = found
        if owner is None:
            if _multicast(dst):
                if multicast is not None:
                    multicast["tun_multicast"] += j - i
            else:
                drops["tun_no_route"] += j - i
        elif j == i + 1:
            bucket.append(pkt)
        else:
            bucket.extend(items[i:j])
        i = j
    return by_owner

