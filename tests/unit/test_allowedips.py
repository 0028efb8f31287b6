"""AllowedIPs: longest-prefix match, ownership semantics, and a brute-force cross-check."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelpy.protocol.allowedips import (
    AllowedIPs,
    Network,
    Prefix,
    make_prefix,
    prefix_network,
    prefix_of,
    prefix_parts,
)

net = ipaddress.ip_network


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


@dataclass
class Peer:  # eq=True makes it unhashable, like many engine dataclasses: must still work
    name: str


A, B, C, D = Peer("a"), Peer("b"), Peer("c"), Peer("d")


def test_longest_prefix_wins_across_nested_prefixes() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(net("10.0.0.0/8"), A)
    t.insert(net("10.1.0.0/16"), B)
    t.insert(net("10.1.2.0/24"), C)
    t.insert(net("10.1.2.3/32"), D)
    assert t.lookup(ip("10.1.2.3")) is D
    assert t.lookup(ip("10.1.2.4")) is C
    assert t.lookup(ip("10.1.3.1")) is B
    assert t.lookup(ip("10.2.0.0")) is A
    assert t.lookup(ip("11.0.0.0")) is None
    t.remove(net("10.1.2.0/24"))
    assert t.lookup(ip("10.1.2.4")) is B
    assert t.lookup(ip("10.1.2.3")) is D


def test_ipv6_and_families_are_separate() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(net("fd00::/8"), A)
    t.insert(net("fd00:1::/32"), B)
    t.insert(net("fd00:1::7/128"), C)
    t.insert(net("10.0.0.0/8"), D)
    assert t.lookup(ip("fd00:1::7")) is C
    assert t.lookup(ip("fd00:1::8")) is B
    assert t.lookup(ip("fd12::1")) is A
    assert t.lookup(ip("fe80::1")) is None
    # ::ffff:10.0.0.1 and 10.0.0.1 are different keys: no cross-family leaks.
    assert t.lookup(ip("::ffff:10.0.0.1")) is None
    assert t.lookup(ip("10.0.0.1")) is D


def test_default_routes() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(net("0.0.0.0/0"), A)
    t.insert(net("::/0"), B)
    t.insert(net("192.168.0.0/16"), C)
    assert t.lookup(ip("1.2.3.4")) is A
    assert t.lookup(ip("255.255.255.255")) is A
    assert t.lookup(ip("192.168.7.7")) is C
    assert t.lookup(ip("2001:db8::1")) is B
    assert t.lookup(ip("::")) is B


def test_bad_address_lengths() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(net("0.0.0.0/0"), A)
    assert t.lookup(b"") is None
    assert t.lookup(b"\x01\x02\x03") is None
    assert t.lookup(b"\x00" * 5) is None


def test_insert_replaces_owner_of_identical_prefix() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(net("10.0.0.0/24"), A)
    t.insert(net("10.0.1.0/24"), A)
    t.insert(net("10.0.0.0/24"), B)
    assert len(t) == 2
    assert t.lookup(ip("10.0.0.9")) is B
    assert t.networks_of(A) == [net("10.0.1.0/24")]
    assert t.networks_of(B) == [net("10.0.0.0/24")]
    t.insert(net("10.0.0.0/24"), B)  # same owner again: no change
    assert len(t) == 2 and t.networks_of(B) == [net("10.0.0.0/24")]


def test_host_bits_are_normalised() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("10.0.0.1/24", A)
    t.insert(ipaddress.ip_interface("fd00::5/64"), B)
    assert t.networks_of(A) == [net("10.0.0.0/24")]
    assert t.networks_of(B) == [net("fd00::/64")]
    assert t.lookup(ip("10.0.0.200")) is A
    assert net("10.0.0.0/24") in t and "10.0.0.99/24" in t and 42 not in t
    t.insert(net("10.0.0.0/24"), C)  # the same prefix written canonically
    assert len(t) == 2 and t.networks_of(A) == []
    t.remove("10.0.0.7/24")
    assert t.lookup(ip("10.0.0.200")) is None and len(t) == 1


def test_remove_value_and_networks_of() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    nets_a = [net("10.0.0.0/24"), net("fd00::/64"), net("0.0.0.0/0")]
    for n in nets_a:
        t.insert(n, A)
    t.insert(net("10.0.0.128/25"), B)
    assert t.networks_of(A) == nets_a
    assert len(t) == 4
    t.remove_value(A)
    assert t.networks_of(A) == []
    assert len(t) == 1
    assert t.lookup(ip("10.0.0.1")) is None
    assert t.lookup(ip("10.0.0.129")) is B
    assert t.lookup(ip("8.8.8.8")) is None
    t.remove_value(A)  # idempotent
    t.remove(net("192.0.2.0/24"))  # absent: no effect
    assert len(t) == 1


def test_identity_not_equality() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    a2 = Peer("a")  # equal to A, but another peer
    t.insert(net("10.0.0.0/8"), A)
    t.insert(net("11.0.0.0/8"), a2)
    t.remove_value(a2)
    assert t.lookup(ip("10.1.1.1")) is A
    assert t.lookup(ip("11.1.1.1")) is None


def test_none_value_rejected_and_bad_types() -> None:
    t: AllowedIPs[Peer | None] = AllowedIPs()
    with pytest.raises(ValueError):
        t.insert(net("10.0.0.0/8"), None)
    with pytest.raises(TypeError):
        t.insert(ipaddress.ip_address("10.0.0.1"), A)  # type: ignore[arg-type]


def test_items_and_clear() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(net("10.0.0.0/8"), A)
    t.insert(net("fd00::/8"), B)
    t.insert(net("11.0.0.0/8"), A)
    assert sorted((str(n), p.name) for n, p in t.items()) == [
        ("10.0.0.0/8", "a"),
        ("11.0.0.0/8", "a"),
        ("fd00::/8", "b"),
    ]
    t.clear()
    assert len(t) == 0 and t.lookup(ip("10.0.0.1")) is None and list(t.items()) == []


def _random_network(r: random.Random, v6: bool) -> Network:
    bits = 128 if v6 else 32
    # Bias towards a few lengths as in real configs, but cover all of them.
    plen = r.choice([0, 8, 16, 24, 32, 48, 64, 128][: 8 if v6 else 5] + [r.randint(0, bits)])
    plen = min(plen, bits)
    # Draw from a small space so that prefixes nest and collide often.
    top = r.getrandbits(12) << (bits - 12)
    addr = top | r.getrandbits(bits - 12)
    addr = addr >> (bits - plen) << (bits - plen) if plen else 0
    return (ipaddress.IPv6Network if v6 else ipaddress.IPv4Network)((addr, plen))


def _brute_force(routes: dict[Network, Peer], addr: bytes) -> Peer | None:
    a = ipaddress.ip_address(addr)
    best: tuple[int, Peer] | None = None
    for n, p in routes.items():
        if n.version == a.version and a in n and (best is None or n.prefixlen > best[0]):
            best = (n.prefixlen, p)
    return None if best is None else best[1]


Key = tuple[int, int, int]  # (bits, prefix length, network address as int)


def _key(n: Network) -> Key:
    return n.max_prefixlen, n.prefixlen, int(n.network_address)


def _brute_force_indexed(routes: dict[Key, Peer], addr: bytes) -> Peer | None:
    # Same meaning as _brute_force, fast enough for 10^5 routes: try every length.
    a = int.from_bytes(addr, "big")
    bits = len(addr) * 8
    for plen in range(bits, -1, -1):
        p = routes.get((bits, plen, a >> (bits - plen) << (bits - plen)))
        if p is not None:
            return p
    return None


def test_1e5_random_prefixes_match_brute_force() -> None:
    r = random.Random(20261128)
    peers = [Peer(str(i)) for i in range(500)]
    t: AllowedIPs[Peer] = AllowedIPs()
    routes: dict[Key, Peer] = {}
    nets: dict[Key, Network] = {}
    for i in range(100_000):
        n = _random_network(r, v6=i % 2 == 1)
        p = peers[r.randrange(len(peers))]
        t.insert(n, p)
        routes[_key(n)] = p
        nets[_key(n)] = n
    # Remove some prefixes and a few whole peers, as reconfiguration would.
    for k in r.sample(sorted(routes), 2_000):
        t.remove(nets[k])
        del routes[k]
    gone = {id(p) for p in peers[:5]}
    for p in peers[:5]:
        t.remove_value(p)
    routes = {k: q for k, q in routes.items() if id(q) not in gone}
    assert len(t) == len(routes)
    for p in peers[5:15]:
        assert sorted(map(_key, t.networks_of(p))) == sorted(k for k, q in routes.items() if q is p)
    for i in range(4_000):
        bits = 128 if i % 2 else 32
        addr = ((r.getrandbits(12) << (bits - 12)) | r.getrandbits(bits - 12)).to_bytes(
            bits // 8, "big"
        )
        assert t.lookup(addr) is _brute_force_indexed(routes, addr)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 0xFFFF), st.integers(0, 16), st.integers(0, 3), st.booleans()),
        max_size=60,
    ),
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=30),
)
def test_hypothesis_against_linear_scan(
    ops: list[tuple[int, int, int, bool]], probes: list[int]
) -> None:
    """Insert/remove a mix of prefixes inside 10.0.0.0/16 and compare with a linear scan."""
    peers = [A, B, C, D]
    t: AllowedIPs[Peer] = AllowedIPs()
    routes: dict[Network, Peer] = {}
    for low, plen16, who, is_insert in ops:
        plen = 16 + plen16
        addr = (0x0A000000 | low) >> (32 - plen) << (32 - plen)
        n = ipaddress.IPv4Network((addr, plen))
        if is_insert:
            t.insert(n, peers[who])
            routes[n] = peers[who]
        else:
            t.remove(n)
            routes.pop(n, None)
    assert len(t) == len(routes)
    for low in probes:
        packed = (0x0A000000 | low).to_bytes(4, "big")
        assert t.lookup(packed) is _brute_force(routes, packed)


def test_memo_never_returns_a_stale_owner() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    addr = ip("10.1.2.3")
    assert t.lookup(addr) is None  # a memoised miss…
    t.insert(net("10.0.0.0/8"), A)
    assert t.lookup(addr) is A  # …is forgotten on insert
    t.insert(net("10.1.0.0/16"), B)
    assert t.lookup(addr) is B
    t.insert(net("10.1.0.0/16"), C)  # owner replaced
    assert t.lookup(addr) is C
    t.remove(net("10.1.0.0/16"))
    assert t.lookup(addr) is A
    t.remove_value(A)
    assert t.lookup(addr) is None
    t.insert(net("0.0.0.0/0"), D)
    assert t.lookup(addr) is D
    t.clear()
    assert t.lookup(addr) is None


def test_lookup_accepts_memoryview_and_bytearray() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(net("10.0.0.0/8"), A)
    t.insert(net("fd00::/8"), B)
    packet = bytearray(b"\x45" + bytes(15) + ip("10.9.9.9") + ip("10.8.8.8"))
    view = memoryview(bytes(packet))
    assert t.lookup(view[16:20]) is A
    assert t.lookup(view[16:20]) is A  # memoised, same answer
    assert t.lookup(packet[16:20]) is A  # bytearray: unhashable, answered without the memo
    assert t.lookup(bytearray(ip("fd00::1"))) is B
    for key in t._memo:  # noqa: SLF001 - the memo must not pin packet buffers
        assert type(key) is bytes


def test_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunnelpy.protocol import allowedips

    monkeypatch.setattr(allowedips, "_MEMO_MAX", 8)
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(net("10.0.0.0/8"), A)
    for i in range(100):
        assert t.lookup(bytes([10, 0, 0, i])) is A
        assert len(t._memo) <= 8  # noqa: SLF001
    assert t.lookup(ip("11.0.0.0")) is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0xFFFF),
            st.integers(0, 16),
            st.integers(0, 3),
            st.booleans(),
            st.integers(0, 0xFFFF),
        ),
        max_size=60,
    )
)
def test_hypothesis_lookups_interleaved_with_changes(
    ops: list[tuple[int, int, int, bool, int]],
) -> None:
    peers = [A, B, C, D]
    t: AllowedIPs[Peer] = AllowedIPs()
    routes: dict[Network, Peer] = {}
    for low, plen16, who, is_insert, probe in ops:
        plen = 16 + plen16
        addr = (0x0A000000 | low) >> (32 - plen) << (32 - plen)
        n = ipaddress.IPv4Network((addr, plen))
        if is_insert:
            t.insert(n, peers[who])
            routes[n] = peers[who]
        elif who == 3:
            t.remove_value(peers[plen16 % 4])
            routes = {k: v for k, v in routes.items() if v is not peers[plen16 % 4]}
        else:
            t.remove(n)
            routes.pop(n, None)
        for a in (0x0A000000 | probe, 0x0A000000 | low):
            packed = a.to_bytes(4, "big")
            assert t.lookup(packed) is _brute_force(routes, packed)


# --------------------------------------------------------------------------------------------
# Prefix: the packed int (the UAPI codec's parse_prefix/format_prefix: tests/unit/test_uapi.py)


def pp(text: str) -> Prefix:
    return prefix_of(ipaddress.ip_network(text, strict=False))


@pytest.mark.parametrize("text", ["0.0.0.0/0", "10.1.0.0/16", "255.255.255.255/32", "::/0",
                                  "fd00::/64", "::ffff:1.2.3.4/128", "ffff::1/128"])  # fmt: skip
def test_prefix_packing(text: str) -> None:
    network = ipaddress.ip_network(text)
    p = prefix_of(network)
    assert type(p) is int  # not tracked by the garbage collector, unlike a tuple
    assert prefix_parts(p) == (
        network.max_prefixlen,
        int(network.network_address),
        network.prefixlen,
    )
    assert make_prefix(*prefix_parts(p)) == p and prefix_network(p) == network


def test_insert_all_prefixes_of_and_networks_of() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    given_net = net("10.2.0.0/16")
    t.insert_all([pp("10.1.0.0/16"), given_net, "fd00::/64"], A)
    t.insert_all([pp("10.1.0.0/16"), net("10.1.0.0/16")], A)  # duplicates: no change
    assert len(t) == 3
    assert t.prefixes_of(A) == [pp(x) for x in ("10.1.0.0/16", "10.2.0.0/16", "fd00::/64")]
    nets = t.networks_of(A)
    assert nets == [net("10.1.0.0/16"), net("10.2.0.0/16"), net("fd00::/64")]
    assert nets[1] is given_net  # the caller's object comes back
    assert t.networks_of(A)[0] is nets[0]  # made once, then kept
    version = t.version
    t.insert_all([], A)
    assert t.version == version  # nothing inserted, nothing bumped
    t.insert_all([pp("10.1.0.0/16")], B)  # moves to B
    assert t.lookup(ip("10.1.2.3")) is B and t.prefixes_of(B) == [pp("10.1.0.0/16")]
    assert pp("10.1.0.0/16") not in t.prefixes_of(A)
    assert pp("10.1.0.0/16") in t and "10.1.0.0/16" in t
    t.remove(pp("10.2.0.0/16"))
    t.remove_value(A)
    assert len(t) == 1 and t.prefixes_of(A) == [] and t.lookup(ip("10.2.0.1")) is None


def test_replace_touches_only_the_difference() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p = [pp(f"10.{i}.0.0/16") for i in range(6)]
    t.insert_all(p[:4], A)
    t.insert(p[4], B)
    version = t.version
    t.replace(list(reversed(p[:4])), A)  # the same set: the tables do not move
    assert t.version == version and t.prefixes_of(A) == list(reversed(p[:4]))  # request order
    t.replace([p[0], p[4], p[5], p[5]], A)  # drop 1-3, take 4 from B, add 5 (once)
    assert t.version > version and len(t) == 3
    assert t.prefixes_of(A) == [p[0], p[4], p[5]] and t.prefixes_of(B) == []
    assert t.lookup(ip("10.4.0.1")) is A and t.lookup(ip("10.2.0.1")) is None
    given = net("10.7.0.0/16")
    t.replace([given, "10.0.0.0/16"], A)  # networks and strings too; the caller's object kept
    assert t.networks_of(A) == [given, net("10.0.0.0/16")] and t.networks_of(A)[0] is given
    t.replace([], A)
    assert len(t) == 0 and t.prefixes_of(A) == [] and t.lookup(ip("10.0.0.1")) is None
    t.replace([p[1]], C)  # a value with nothing yet
    assert t.lookup(ip("10.1.0.1")) is C


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.lists(st.tuples(st.integers(0, 7), st.integers(14, 16)))),
        max_size=12,
    )
)
def test_replace_is_remove_value_then_insert_all(
    ops: list[tuple[int, list[tuple[int, int]]]],
) -> None:
    peers = [A, B, C, D]
    fast: AllowedIPs[Peer] = AllowedIPs()
    slow: AllowedIPs[Peer] = AllowedIPs()
    for who, nets in ops:
        prefixes = [pp(f"10.{i << 4}.0.0/{plen}") for i, plen in nets]
        fast.replace(prefixes, peers[who])
        slow.remove_value(peers[who])
        slow.insert_all(prefixes, peers[who])
        assert len(fast) == len(slow)
        for peer in peers:
            assert fast.prefixes_of(peer) == slow.prefixes_of(peer)
        for i in range(0, 256, 8):
            assert fast.lookup(bytes([10, i, 0, 1])) is slow.lookup(bytes([10, i, 0, 1]))


def test_kernel_multicast_without_a_route_is_not_a_drop():
    from collections import Counter

    from tests.harness.packets import ipv4, ipv6
    from tunnelpy.protocol.allowedips import AllowedIPs, route_packets

    table: AllowedIPs[str] = AllowedIPs()
    drops: Counter[str] = Counter()
    quiet: Counter[str] = Counter()
    pkts = [ipv6("fe80::1", "ff02::2"), ipv6("fe80::1", "ff02::16"), ipv4("10.0.0.1", "224.0.0.22"),
            ipv4("10.0.0.1", "10.9.9.9")]  # fmt: skip
    assert route_packets(pkts, table, drops, quiet) == {}
    assert quiet == {"tun_multicast": 3} and drops == {"tun_no_route": 1}


def test_the_compiled_run_scan_routes_as_the_python_loop():
    """route_packets with the compiled scan of same-destination runs (aead.destination_runs)
    and without it: the same buckets, in the same order, and the same counts, over random
    lists of runs, lone packets, junk, short headers, multicast, unrouted and non-bytes."""
    from collections import Counter

    from tests.harness.packets import ipv4, ipv6
    from tunnelpy.protocol import aead
    from tunnelpy.protocol.allowedips import AllowedIPs, route_packets

    if not aead.BUILT:
        pytest.skip("the compiled module is not built")
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(ipaddress.ip_network("10.0.1.0/24"), "p1")
    table.insert(ipaddress.ip_network("10.0.2.0/24"), "p2")
    table.insert(ipaddress.ip_network("fd00:2::/64"), "p2")
    table.insert(ipaddress.ip_network("fd00:3::/64"), "p3")
    dsts4 = ["10.0.1.1", "10.0.1.2", "10.0.2.1", "10.9.9.9", "224.0.0.22"]
    dsts6 = ["fd00:2::1", "fd00:3::1", "fd00:9::1", "ff02::2"]
    r = random.Random(3)
    was = aead.enabled()
    try:
        for _ in range(400):
            pkts: list = []
            for _ in range(r.randrange(0, 12)):
                k = r.randrange(10)
                if k < 5:
                    one = ipv4("10.0.0.1", r.choice(dsts4), payload=r.randbytes(r.randrange(30)))
                elif k < 8:
                    one = ipv6("fd00::1", r.choice(dsts6), payload=r.randbytes(r.randrange(30)))
                elif k == 8:
                    one = r.choice([b"", b"\x45" * 19, b"\x60" * 39, b"\x00" * 40, r.randbytes(5)])
                else:
                    one = bytearray(ipv4("10.0.0.1", r.choice(dsts4)))  # not bytes
                pkts.extend([one] * r.choice([1, 1, 2, 45]))
            results = []
            for compiled in (True, False):
                aead.enable(compiled)
                assert (aead.destination_runs() is not None) is compiled
                drops: Counter[str] = Counter()
                quiet: Counter[str] = Counter()
                got = route_packets(list(pkts), table, drops, quiet)
                results.append((list(got.items()), drops, quiet))
            assert results[0] == results[1]
    finally:
        aead.enable(was)
