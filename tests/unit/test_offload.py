"""tunnelpy.io.offload on hand-made byte buffers: TSO/USO splitting and TCP GRO coalescing.

Checksums are verified with an independent RFC 1071 implementation (a loop over 16-bit words),
not with the module's own arithmetic.
"""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest

from tunnelpy.io import checksum, gro, segmentation
from tunnelpy.io import offload as o

V4_SRC, V4_DST = ipaddress.ip_address("10.98.0.1").packed, ipaddress.ip_address("10.98.0.2").packed
V6_SRC = ipaddress.ip_address("fd98::1").packed
V6_DST = ipaddress.ip_address("fd98::2").packed
TS_OPTS = b"\x01\x01\x08\x0a" + struct.pack(">II", 123456, 654321)  # NOP NOP timestamps
ETH = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
ETH6 = ETH[:12] + b"\x86\xdd"


# ------------------------------------------------------------------ independent reference --


def rfc1071(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ip_ok(pkt: bytes) -> bool:
    ihl = (pkt[0] & 15) * 4
    return rfc1071(pkt[:ihl]) == 0xFFFF


def l4_ok(pkt: bytes, proto: int) -> bool:
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 15) * 4
        seg = pkt[ihl:]
        pseudo = pkt[12:20] + struct.pack(">BBH", 0, proto, len(seg))
    else:
        seg = pkt[40:]
        pseudo = pkt[8:40] + struct.pack(">IxxxB", len(seg), proto)
    return rfc1071(pseudo + seg) == 0xFFFF


# ------------------------------------------------------------------------------ builders --


def ipv4(
    payload: bytes, proto: int, *, ident: int = 0x1000, options: bytes = b"", tos: int = 0
) -> bytes:
    ihl = (20 + len(options)) // 4
    hdr = struct.pack(
        ">BBHHHBBH4s4s", 0x40 | ihl, tos, 20 + len(options) + len(payload), ident, 0x4000, 64,
        proto, 0, V4_SRC, V4_DST,
    ) + options  # fmt: skip
    csum = 0xFFFF - rfc1071(hdr)
    return hdr[:10] + struct.pack(">H", csum) + hdr[12:] + payload


def ipv6(payload: bytes, proto: int) -> bytes:
    return struct.pack(">IHBB16s16s", 0x60000000, len(payload), proto, 64, V6_SRC, V6_DST) + payload


def tcp(seq: int, flags: int, payload: bytes, *, ack: int = 777, opts: bytes = TS_OPTS) -> bytes:
    doff = (20 + len(opts)) // 4
    return (
        struct.pack(">HHIIBBHHH", 40000, 5201, seq, ack, doff << 4, flags, 512, 0, 0)
        + opts
        + payload
    )


def udp(payload: bytes) -> bytes:
    return struct.pack(">HHHH", 40000, 5201, 8 + len(payload), 0) + payload


def with_l4_csum(pkt: bytes, proto: int, l3: int = 0) -> bytes:
    """Fill in a correct TCP/UDP checksum (reference implementation)."""
    ip = pkt[l3:]
    ihl = (ip[0] & 15) * 4 if ip[0] >> 4 == 4 else 40
    at = l3 + ihl + (16 if proto == o.IPPROTO_TCP else 6)
    b = bytearray(pkt)
    b[at : at + 2] = b"\0\0"
    ip = bytes(b[l3:])
    if ip[0] >> 4 == 4:
        pseudo = ip[12:20] + struct.pack(">BBH", 0, proto, len(ip) - ihl)
    else:
        pseudo = ip[8:40] + struct.pack(">IxxxB", len(ip) - 40, proto)
    c = 0xFFFF - rfc1071(pseudo + ip[ihl:])
    b[at : at + 2] = struct.pack(">H", c or 0xFFFF)
    return bytes(b)


def payload_of(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def tso(pkt: bytes, gso_type: int, mss: int, l3: int = 0) -> bytes:
    """What the kernel hands a TUN/TAP with TSO on: NEEDS_CSUM, pseudo sum in the field."""
    ip = pkt[l3:]
    v4 = ip[0] >> 4 == 4
    ihl = (ip[0] & 15) * 4 if v4 else 40
    proto = ip[9] if v4 else ip[6]
    t = l3 + ihl
    hl = (ip[ihl + 12] >> 4) * 4 if proto == o.IPPROTO_TCP else 8
    off = 16 if proto == o.IPPROTO_TCP else 6
    length = len(ip) - ihl
    pseudo = (ip[12:20] if v4 else ip[8:40]) + (
        struct.pack(">BBH", 0, proto, length) if v4 else struct.pack(">IxxxB", length, proto)
    )
    b = bytearray(pkt)
    b[t + off : t + off + 2] = struct.pack(">H", rfc1071(pseudo))
    return o.VNET_HDR.pack(o.F_NEEDS_CSUM, gso_type, t + hl, mss, t, off) + bytes(b)


# --------------------------------------------------------------------------------- split --


def tcp_fields(seg: bytes, l3: int = 0) -> tuple[int, int, bytes]:
    ip = seg[l3:]
    ihl = (ip[0] & 15) * 4 if ip[0] >> 4 == 4 else 40
    doff = (ip[ihl + 12] >> 4) * 4
    seq = struct.unpack_from(">I", ip, ihl + 4)[0]
    return seq, ip[ihl + 13], ip[ihl + doff :]


@pytest.mark.parametrize("numpy", [True, False])
@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("flags", [0x18, 0x19, 0x98, 0x10])
def test_split_tcp_segments_headers_flags_and_checksums(monkeypatch, numpy, v6, flags):
    if not numpy:
        monkeypatch.setattr(checksum, "_np", None)
    mss = 1368
    data = payload_of(mss * 4 + 517)
    seq0 = 0xFFFFF000  # wraps past 2**32 inside the super-packet
    seg = tcp(seq0, flags, data)
    pkt = ipv6(seg, 6) if v6 else ipv4(seg, 6, ident=0xFFFE, options=b"\x01\x01\x01\x00")
    out = o.split(tso(pkt, o.GSO_TCPV6 if v6 else o.GSO_TCPV4, mss))
    assert len(out) == 5
    got = b""
    for i, s in enumerate(out):
        seq, f, pay = tcp_fields(s)
        assert seq == (seq0 + i * mss) & 0xFFFFFFFF
        want = flags
        if i:
            want &= ~0x80  # CWR only on the first
        if i != 4:
            want &= ~0x09  # FIN and PSH only on the last
        assert f == want, (i, hex(f))
        assert len(pay) == (mss if i < 4 else 517)
        assert l4_ok(s, 6)
        if v6:
            assert struct.unpack_from(">H", s, 4)[0] == len(s) - 40
        else:
            assert ip_ok(s)
            assert struct.unpack_from(">H", s, 2)[0] == len(s)
            assert struct.unpack_from(">H", s, 4)[0] == (0xFFFE + i) & 0xFFFF
            assert s[20:24] == b"\x01\x01\x01\x00"  # IP options copied
        assert s[len(s) - len(pay) - 12 : len(s) - len(pay)] == TS_OPTS  # TCP options copied
        got += pay
    assert got == data


@pytest.mark.parametrize("v6", [False, True])
def test_split_tcp_odd_mss_and_exact_multiple(v6):
    for mss, n in ((1001, 3003), (1000, 3000), (1400, 1400)):
        pkt = (ipv6 if v6 else ipv4)(tcp(1, 0x10, payload_of(n)), 6)
        out = o.split(tso(pkt, o.GSO_TCPV6 if v6 else o.GSO_TCPV4, mss))
        assert [len(tcp_fields(s)[2]) for s in out] == [mss] * (n // mss)
        assert all(l4_ok(s, 6) for s in out)


@pytest.mark.parametrize("v6", [False, True])
def test_split_udp_uso(v6):
    size = 1200
    data = payload_of(size * 2 + 33)
    pkt = (ipv6 if v6 else ipv4)(udp(data), 17)
    out = o.split(tso(pkt, o.GSO_UDP_L4, size))
    assert len(out) == 3
    got = b""
    for s in out:
        h = 40 if v6 else 20
        assert struct.unpack_from(">H", s, h + 4)[0] == len(s) - h
        assert l4_ok(s, 17)
        if not v6:
            assert ip_ok(s)
        got += s[h + 8 :]
    assert got == data


def test_plain_packet_needs_csum_is_finished_and_plain_passes():
    pkt = ipv4(udp(b"x" * 37), 17)
    hdr = o.VNET_HDR.pack(o.F_NEEDS_CSUM, 0, 0, 0, 20, 6)
    pseudo = pkt[12:20] + struct.pack(">BBH", 0, 17, len(pkt) - 20)
    partial = pkt[:26] + struct.pack(">H", rfc1071(pseudo)) + pkt[28:]
    (done,) = o.split(hdr + partial)
    assert l4_ok(done, 17) and done[:26] == pkt[:26]
    assert o.split(o.ZERO_VNET_HDR + pkt) == [pkt]


def needs_csum(pkt: bytes, proto: int, l3: int = 0) -> bytes:
    """What the kernel hands over for one plain packet with CSUM offload: NEEDS_CSUM, the
    pseudo-header sum (folded, not complemented) in the checksum field."""
    ip = pkt[l3:]
    ihl = (ip[0] & 15) * 4 if ip[0] >> 4 == 4 else 40
    at = ihl + (16 if proto == o.IPPROTO_TCP else 6)
    if ip[0] >> 4 == 4:
        pseudo = ip[12:20] + struct.pack(">BBH", 0, proto, len(ip) - ihl)
    else:
        pseudo = ip[8:40] + struct.pack(">IxxxB", len(ip) - 40, proto)
    field = struct.pack(">H", rfc1071(pseudo))
    hdr = o.VNET_HDR.pack(o.F_NEEDS_CSUM, 0, 0, 0, l3 + ihl, at - ihl)
    return hdr + pkt[: l3 + at] + field + pkt[l3 + at + 2 :]


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("l2", [False, True])
@pytest.mark.parametrize("size", [0, 1, 2, 63, 64, 1371])
def test_finish_plain_matches_reference(v6, l2, size):
    """finish_plain (the sending side's small-packet path, also taken by split) against the
    reference checksum: UDP and TCP, IPv4 and IPv6, TUN packets and TAP frames, odd lengths."""
    eth = (ETH6 if v6 else ETH) if l2 else b""
    ip = ipv6 if v6 else ipv4
    for proto, l4 in ((17, udp(payload_of(size))), (6, tcp(9, 0x10, payload_of(size)))):
        pkt = eth + ip(l4, proto)
        want = with_l4_csum(pkt, proto, len(eth))
        read = needs_csum(pkt, proto, len(eth))
        assert o.finish_plain(read) == want
        assert o.finish_plain(bytearray(read)) == want
        assert o.split(read, l2=l2) == [want]
        assert l4_ok(want[len(eth) :], proto)
    assert o.finish_plain(o.ZERO_VNET_HDR + pkt) == pkt


def test_finish_plain_rejects_what_it_cannot_finish():
    pkt = ipv4(udp(b"abc"), 17)
    with pytest.raises(o.OffloadError):
        o.finish_plain(o.ZERO_VNET_HDR)
    with pytest.raises(o.OffloadError):  # checksum field beyond the end
        o.finish_plain(o.VNET_HDR.pack(o.F_NEEDS_CSUM, 0, 0, 0, 20, 6) + pkt[:27])
    with pytest.raises(o.OffloadError):
        o.finish_plain(o.VNET_HDR.pack(o.F_NEEDS_CSUM, 0, 0, 0, 60000, 6) + pkt)


@pytest.mark.parametrize("vlan", [False, True])
def test_split_tap_frame_copies_ethernet_header(vlan):
    eth = ETH[:12] + b"\x81\x00\x00\x14" + ETH[12:] if vlan else ETH
    pkt = ipv4(tcp(5, 0x18, payload_of(3000)), 6)
    out = o.split(tso(eth + pkt, o.GSO_TCPV4, 1400, l3=len(eth)), l2=True)
    assert len(out) == 3
    for s in out:
        assert s.startswith(eth)
        assert ip_ok(s[len(eth) :]) and l4_ok(s[len(eth) :], 6)


def test_split_rejects_garbage():
    with pytest.raises(o.OffloadError):
        o.split(b"\0" * 5)
    with pytest.raises(o.OffloadError):
        o.split(o.VNET_HDR.pack(0, o.GSO_UDP, 0, 1000, 0, 0) + ipv4(udp(b"x" * 3000), 17))
    with pytest.raises(o.OffloadError):
        o.split(o.VNET_HDR.pack(0, o.GSO_TCPV4, 0, 1000, 0, 0) + ipv4(udp(b"x" * 3000), 17))
    with pytest.raises(o.OffloadError):
        o.split(o.VNET_HDR.pack(0, o.GSO_TCPV4, 0, 1000, 0, 0) + b"\x45" + bytes(10))


# ------------------------------------------------------------------------------ coalesce --


def segments(v6: bool = False, n: int = 5, mss: int = 1368, flags: int = 0x18, seq0: int = 1000):
    pkt = (ipv6 if v6 else ipv4)(tcp(seq0, flags, payload_of(mss * n - 100)), 6)
    return o.split(tso(pkt, o.GSO_TCPV6 if v6 else o.GSO_TCPV4, mss))


def flatten(unit: list) -> bytes:
    return b"".join(bytes(x) for x in unit)


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_round_trips_through_split(v6):
    segs = segments(v6)
    (unit,) = o.coalesce(segs)
    flags, gso_type, hdr_len, gso_size, start, off = o.VNET_HDR.unpack_from(unit[0])
    assert (flags, gso_type, gso_size, off) == (
        o.F_NEEDS_CSUM, o.GSO_TCPV6 if v6 else o.GSO_TCPV4, 1368, 16,
    )  # fmt: skip
    assert start == (40 if v6 else 20) and hdr_len == start + 32
    big = flatten(unit)
    if not v6:
        assert ip_ok(big[10:])
        assert struct.unpack_from(">H", big, 12)[0] == len(big) - 10
    assert big[10 + start + 13] == 0x18  # PSH of the last segment carried over
    # What the kernel would do with it (segment again) gives back the segments we had.
    assert o.split(big) == segs


def test_coalesce_keeps_order_and_separates_flows_and_kinds():
    a = segments(n=3)
    b = [with_l4_csum(s[:20] + b"\x9c\x41" + s[22:], 6) for s in segments(n=3)]  # other port
    ping = ipv4(b"\x08\x00" + bytes(30), 1)
    units = o.coalesce([a[0], b[0], ping, a[1], b[1], a[2], b[2]])
    assert len(units) == 3
    assert flatten(units[0])[10:] == flatten(o.coalesce(a)[0])[10:]
    assert units[2] == [o.ZERO_VNET_HDR, ping]


def test_coalesce_gap_pure_ack_psh_and_short_segment_end_a_packet():
    s = segments(n=6, flags=0x10)  # last one is short
    # a gap: segment 2 missing
    units = o.coalesce([s[0], s[1], s[3], s[4]])
    assert [len(u) for u in units] == [4, 4]
    # a pure ACK of the same flow goes alone; the data around it still forms one packet
    ack = with_l4_csum(ipv4(tcp(5, 0x10, b""), 6), 6)
    units = o.coalesce([s[0], s[1], ack, s[2], s[3]])
    assert [len(u) for u in units] == [6, 2]
    # a FIN goes alone, after the data before it
    fin = with_l4_csum(ipv4(tcp(1000 + 2 * 1368, 0x11, b"end"), 6), 6)
    assert [len(u) for u in o.coalesce([s[0], s[1], fin])] == [4, 2]
    # after a short segment nothing more joins
    short = s[5]
    more = o.coalesce([s[4], short, s[0]])
    assert [len(u) for u in more] == [4, 2]
    # a PSH segment closes the packet
    p = segments(n=2, flags=0x18, seq0=10)
    q = segments(n=2, flags=0x10, seq0=10 + 1368 * 2 - 100)
    assert [len(u) for u in o.coalesce(p + q)] == [4, 4]


def test_coalesce_refuses_different_headers_and_fragments_and_size_cap():
    s = segments(n=3)
    ttl = bytearray(s[1])
    ttl[8] = 63
    ttl[10:12] = b"\0\0"
    ttl[10:12] = struct.pack(">H", 0xFFFF - rfc1071(bytes(ttl[:20])))
    assert [len(u) for u in o.coalesce([s[0], bytes(ttl), s[2]])] == [2, 2, 2]
    frag = bytearray(s[0])
    frag[6] = 0x20  # MF
    assert o.coalesce([bytes(frag)]) == [[o.ZERO_VNET_HDR, bytes(frag)]]
    big = segments(n=40, mss=1400, flags=0x10)[:39]
    big += segments(n=40, mss=1400, flags=0x10, seq0=1000 + 39 * 1400)[:39]
    units = o.coalesce(big)
    assert len(units) == 2
    assert all(len(flatten(u)) - 10 <= 65535 for u in units)
    assert b"".join(tcp_fields(s)[2] for u in units for s in o.split(flatten(u))) == b"".join(
        tcp_fields(s)[2] for s in big
    )


def test_coalesce_tap_frames():
    segs = [ETH + s for s in segments(n=3)]
    (unit,) = o.coalesce(segs, l2=True)
    big = flatten(unit)
    assert o.VNET_HDR.unpack_from(big)[4] == 14 + 20  # csum_start counts the Ethernet header
    assert o.split(big, l2=True) == segs
    segs6 = [ETH6 + s for s in segments(v6=True, n=2)]
    assert len(o.coalesce(segs6, l2=True)) == 1


def test_coalesce_tap_joins_only_frames_whose_ethertype_says_ip_and_that_hold_it_whole():
    """A frame of another ethertype whose payload looks like IPv4 is not read as IP; one that
    holds less than its IP length is written alone, as it is (joined, its length and checksum
    would be rewritten as if it were whole, and the kernel would not drop it)."""
    segs = segments(n=3)
    other = [ETH[:12] + b"\x88\xb5" + s for s in segs]
    assert o.coalesce(other, l2=True) == [[o.ZERO_VNET_HDR, f] for f in other]
    whole = [ETH + s for s in segs]
    cut = whole[1][:-10]
    units = o.coalesce([whole[0], cut, whole[2]], l2=True)
    assert units == [[o.ZERO_VNET_HDR, whole[0]], [o.ZERO_VNET_HDR, cut], [o.ZERO_VNET_HDR, whole[2]]]
    assert len(o.coalesce(whole, l2=True)) == 1  # (the same frames, whole, join)


def test_single_segment_goes_plain():
    (s,) = segments(n=1)
    assert o.coalesce([s]) == [[o.ZERO_VNET_HDR, s]]


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_udp_only_with_uso_and_round_trips(v6):
    size = 64
    pkt = (ipv6 if v6 else ipv4)(udp(payload_of(size * 70 + 10)), 17)
    dgrams = o.split(tso(pkt, o.GSO_UDP_L4, size))
    assert len(dgrams) == 71
    assert all(u == [o.ZERO_VNET_HDR, d] for u, d in zip(o.coalesce(dgrams), dgrams, strict=True))
    units = o.coalesce(dgrams, uso=True)
    assert [len(u) - 2 for u in units] == [64, 7]  # at most 64 datagrams per USO write
    flags, gso_type, hdr_len, gso_size, start, off = o.VNET_HDR.unpack_from(units[0][0])
    h = 40 if v6 else 20
    assert (flags, gso_type, hdr_len, gso_size, start, off) == (
        o.F_NEEDS_CSUM, o.GSO_UDP_L4, h + 8, size, h, 6,
    )  # fmt: skip
    again = [s for u in units for s in o.split(flatten(u))]
    assert [s[h + 8 :] for s in again] == [d[h + 8 :] for d in dgrams]
    assert all(l4_ok(s, 17) for s in again)


def test_coalesce_udp_other_flow_or_bigger_datagram_starts_anew():
    a = ipv4(udp(b"a" * 64), 17)
    b = with_l4_csum(a[:20] + b"\x9c\x41" + a[22:], 17)  # another source port
    big = ipv4(udp(b"c" * 100), 17)
    short = ipv4(udp(b"d" * 10), 17)
    short = with_l4_csum(short[:20] + b"\x9c\x41" + short[22:], 17)
    units = o.coalesce([a, b, a, big, b, short, a], uso=True)
    assert [len(u) - 2 for u in units] == [2, 3, 2]  # a+a, b+b+short, big+a (shorter ends)


def test_coalesce_tap_ignores_ethernet_padding():
    segs = segments(n=3, mss=1368)
    tiny = [ipv4(tcp(5000 + i, 0x10, b"z"), 6, ident=i) for i in range(2)]
    tiny = [with_l4_csum(t, 6) for t in tiny]
    frames = [ETH + t + bytes(60 - 14 - len(t)) if 14 + len(t) < 60 else ETH + t for t in tiny]
    units = o.coalesce([ETH + s for s in segs] + frames, l2=True)
    assert len(units) == 2
    # one byte each, no padding bytes: segmenting the unit again gives the unpadded frames
    assert o.split(flatten(units[1]), l2=True) == [ETH + t for t in tiny]


def _flow_segments(sport: int, seq0: int, sizes: list[int], mss: int, v6: bool) -> list[bytes]:
    """Segments of consecutive super-packets of one flow, as split() cuts them (PSH last)."""
    out = []
    seq = seq0
    for size in sizes:
        seg = bytearray(tcp(seq, 0x18, payload_of(size)))
        seg[0:2] = sport.to_bytes(2, "big")
        pkt = (ipv6 if v6 else ipv4)(bytes(seg), 6)
        out += o.split(tso(pkt, o.GSO_TCPV6 if v6 else o.GSO_TCPV4, mss))
        seq = (seq + size) & 0xFFFFFFFF
    return out


def _two_random_flows(rng, mss: int, v6: bool) -> list[list[bytes]]:
    """Two flows (source ports 40000, 40001) of three super-packets each, of random sizes
    (9 full segments, 40 and a 5-byte tail, or one short one), cut as split() cuts them."""
    return [
        _flow_segments(
            40000 + f,
            rng.randrange(2**32),
            [rng.choice([mss * 9, mss * 40 + 5, 700]) for _ in range(3)],
            mss,
            v6,
        )
        for f in range(2)
    ]


def _by_flow(pkts: list[bytes]) -> dict[bytes, list[bytes]]:
    """Each flow's packets in order (flows may pass one another, a flow's bytes may not)."""
    flows: dict[bytes, list[bytes]] = {}
    for p in pkts:
        t = 20 if p[0] >> 4 == 4 else 40
        flows.setdefault(p[t : t + 4], []).append(_masked(p))
    return flows


def _masked(pkt: bytes) -> bytes:
    # A GRO super-packet written to the kernel is cut again with IPv4 ids counted from its
    # first segment: ids (and so the IPv4 header checksum) are not what the sender's were.
    if pkt[0] >> 4 == 4:
        return pkt[:4] + b"\0\0" + pkt[6:10] + b"\0\0" + pkt[12:]
    return pkt


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_gives_each_flow_back_in_order_under_loss_repeats_and_interleaving(v6):
    # Randomised bursts: two interleaved flows, super-packets of varying size (short PSH ends),
    # lost and repeated segments, pure ACKs of a third flow. Whatever the units, what the
    # kernel makes of them (split again) must be each flow's packets we were given, in order.
    import random

    rng = random.Random(6)
    mss = 1368
    for _ in range(40):
        flows = _two_random_flows(rng, mss, v6)
        pkts: list[bytes] = []
        while any(flows):
            f = flows[rng.randrange(2)] or flows[0] or flows[1]
            n = rng.choice([1, 5, 30, 60])
            take = f[:n]
            del f[:n]
            pkts += take
            r = rng.random()
            if r < 0.1 and pkts:
                pkts.append(pkts[-2] if len(pkts) > 1 else pkts[-1])  # a repeat
            elif r < 0.2 and len(pkts) > 3:
                del pkts[-2]  # a loss
            elif r < 0.3:
                ack = b"\xc3\x50" + tcp(9, 0x10, b"")[2:]  # a pure ACK of a third flow
                pkts.append(with_l4_csum((ipv6 if v6 else ipv4)(ack, 6), 6))
        units = o.coalesce(pkts)
        assert len(units) < len(pkts)  # it did coalesce
        again = [s for u in units for s in o.split(flatten(u))]
        assert _by_flow(again) == _by_flow(pkts)


def _eth_to_tun(unit: list) -> bytes:
    """A TAP write unit as the same unit for a TUN: Ethernet header out, offsets moved."""
    flags, gso, hdr_len, size, start, off = o.VNET_HDR.unpack(bytes(unit[0]))
    if flags & o.F_NEEDS_CSUM:
        hdr_len, start = hdr_len - 14, start - 14
    body = b"".join(bytes(x) for x in unit[1:])
    return o.VNET_HDR.pack(flags, gso, hdr_len, size, start, off) + body[14:]


def test_coalesce_ipv4_fast_path_equals_the_generic_path():
    """IPv4/TCP without options takes a one-struct fast path, on a TUN and behind a TAP's
    Ethernet header (with or without a VLAN tag); `fast=False` forces the generic path. Both
    must build the same units, also for runs of fragments, bad data offsets, new ack numbers or
    TOS, FIN, timestamps, other MAC addresses, and IP options or UDP between; and a TAP's units
    are a TUN's with the Ethernet header in front."""
    import random

    vlan = ETH[:12] + b"\x81\x00\x00\x07" + ETH[12:]  # VLAN 7
    other_mac = b"\x02\x00\x00\x00\x00\x09" + ETH[6:]

    def fragment(p: bytes) -> bytes:
        return p[:6] + bytes([p[6] | 0x20]) + p[7:]

    def doff4(p: bytes) -> bytes:
        return p[:32] + bytes([0x40]) + p[33:]

    def new_ack(p: bytes) -> bytes:
        return p[:28] + b"\x00\x01\x00\x00" + p[32:]

    def tos(p: bytes) -> bytes:
        return p[:1] + b"\x10" + p[2:]

    def fin(p: bytes) -> bytes:
        return p[:33] + bytes([p[33] | 0x01]) + p[34:]

    def tsval(p: bytes) -> bytes:  # the timestamp option moved on (NOP NOP TS at 40)
        return p[:44] + b"\x00\x09\x99\x99" + p[48:]

    def window(p: bytes) -> bytes:
        return p[:34] + b"\x01\x00" + p[36:]

    rng = random.Random(11)
    mss = 1368
    units = packets = 0
    for _ in range(40):
        flows = _two_random_flows(rng, mss, False)
        eth = rng.choice([ETH, vlan])
        pkts: list[bytes] = []
        heads: list[bytes] = []  # each packet's L2 header on the TAP
        while any(flows):
            f = flows[rng.randrange(2)] or flows[0] or flows[1]
            n = rng.choice([1, 5, 30])
            take = f[:n]
            del f[:n]
            # A run of consecutive segments changed alike: would coalesce if the key or the
            # checks missed the change.
            change = rng.choice(
                [None, None, fragment, doff4, new_ack, tos, fin, tsval, window, "mac"]
            )
            if change == "mac":
                heads += [other_mac] * len(take)
            else:
                if change is not None:
                    take = [change(p) for p in take]
                heads += [eth] * len(take)
            pkts += take
            r = rng.random()
            if r < 0.1:
                pkts.append(ipv4(tcp(5, 0x10, b"o" * 50), 6, options=b"\x01\x01\x01\x00"))
                heads.append(eth)
            elif r < 0.2:
                pkts.append(ipv4(udp(b"u" * 30), 17))
                heads.append(eth)
        tun = [flatten(u) for u in o.coalesce(pkts)]
        assert tun == [flatten(u) for u in o.coalesce(pkts, fast=False)]
        frames = [e + p for e, p in zip(heads, pkts, strict=True)]
        tap = [flatten(u) for u in o.coalesce(frames, l2=True)]
        assert tap == [flatten(u) for u in o.coalesce(frames, l2=True, fast=False)]
        if eth is ETH and other_mac not in heads:
            assert [_eth_to_tun(u) for u in o.coalesce(frames, l2=True)] == tun
        units += len(tun)
        packets += len(pkts)
    assert units < packets * 0.6  # (it did coalesce)


def test_coalesce_ipv4_udp_fast_path_equals_the_generic_path():
    """Small IPv4 datagrams without options take a one-struct USO fast path (TUN, TAP, TAP with
    a VLAN tag). It must build the units of the generic path (`fast=False`) for bursts of two
    flows with datagrams of the flow's size, shorter ones (which end a write), longer ones,
    tiny ones (< 12 payload bytes, under the struct's reach), fragments, another TOS, TTL, DF or
    MAC address, IP options, TCP and IPv6 between; more than 64 datagrams; and without USO, none joins."""
    import random

    vlan = ETH[:12] + b"\x81\x00\x00\x07" + ETH[12:]
    other_mac = b"\x02\x00\x00\x00\x00\x09" + ETH[6:]

    def dgram(sport: int, size: int) -> bytes:
        u = udp(payload_of(size))
        return with_l4_csum(ipv4(sport.to_bytes(2, "big") + u[2:], 17), 17)

    def fragment(p: bytes) -> bytes:
        return p[:6] + bytes([p[6] | 0x20]) + p[7:]

    def no_df(p: bytes) -> bytes:
        return p[:6] + bytes([p[6] & ~0x40]) + p[7:]

    def tos(p: bytes) -> bytes:
        return p[:1] + b"\x10" + p[2:]

    def ttl(p: bytes) -> bytes:
        return p[:8] + b"\x05" + p[9:]

    rng = random.Random(17)
    units = packets = 0
    for _ in range(60):
        eth = rng.choice([ETH, vlan])
        size = rng.choice([12, 64, 200])
        pkts: list[bytes] = []
        heads: list[bytes] = []  # each packet's L2 header on the TAP
        while len(pkts) < 150:
            sport = rng.choice([40000, 40001])
            n = rng.choice([1, 5, 30, 70])
            plen = rng.choice([size] * 6 + [size - 1, size + 1, 1, 11, 0])
            change = rng.choice([None] * 5 + [fragment, no_df, tos, ttl])
            run = [dgram(sport, plen) for _ in range(n)]
            if change is not None:
                run = [change(p) for p in run]
            pkts += run
            heads += [rng.choice([eth, eth, other_mac])] * n
            r = rng.random()
            if r < 0.1:
                pkts.append(ipv4(udp(b"o" * 50), 17, options=b"\x01\x01\x01\x00"))
            elif r < 0.2:
                pkts.append(with_l4_csum(ipv4(tcp(5, 0x18, b"t" * 40), 6), 6))
            elif r < 0.3:
                pkts.append(with_l4_csum(ipv6(udp(payload_of(size)), 17), 17))
            heads += [eth] * (len(pkts) - len(heads))
        frames = [e + p for e, p in zip(heads, pkts, strict=True)]
        for batch, l2 in ((pkts, False), (frames, True)):
            fast = [flatten(u) for u in o.coalesce(batch, l2=l2, uso=True)]
            assert fast == [flatten(u) for u in o.coalesce(batch, l2=l2, uso=True, fast=False)]
            plain = o.coalesce(batch, l2=l2)
            assert [flatten(u) for u in plain] == [o.ZERO_VNET_HDR + p for p in batch]
        units += len(fast)
        packets += len(pkts)
    assert units < packets * 0.3  # (it did coalesce)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("l2", [False, True])
@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_starts_a_new_super_packet_when_the_window_changes(v6, l2, fast):
    """As the kernel's tcp_gro_receive: one super-packet carries one window, so a segment
    advertising another one (a newer one) is not folded under the first's."""
    eth = (ETH6 if v6 else ETH) if l2 else b""
    segs = [eth + p for p in segments(v6, n=6, flags=0x10)]
    at = len(eth) + (40 if v6 else 20) + 14  # the TCP window field
    assert segs[0][at : at + 2] == b"\x02\x00"  # 512, as tcp() makes it
    moved = [p[:at] + b"\x03\x00" + p[at + 2 :] for p in segs[3:]]
    units = o.coalesce(segs[:3] + moved, l2=l2, fast=fast)
    assert len(units) == 2
    # three segments' payload each (a compiled run join may hand several as one piece)
    assert [-(-sum(len(x) for x in u[2:]) // 1368) for u in units] == [3, 3]
    assert b"".join(
        tcp_fields(s, len(eth))[2] for u in units for s in o.split(flatten(u), l2=l2)
    ) == (b"".join(tcp_fields(s, len(eth))[2] for s in segs))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("l2", [False, True])
def test_coalesce_fills_an_ip_packet_to_exactly_65535_bytes(l2, fast):
    """The size cap counts the IP packet, not the Ethernet header in front of it."""
    thl = 20 + len(TS_OPTS)
    mss = 1000

    def flow(total_payload: int) -> list[bytes]:
        # ACK-only segments (no PSH: a PSH would end the super-packet whatever its size); one
        # IP packet of this size could not be built by split(), so they are made one by one.
        sizes = [mss] * (total_payload // mss) + (
            [total_payload % mss] if total_payload % mss else []
        )
        out, seq = [], 5000
        for n in sizes:
            out.append((ETH if l2 else b"") + ipv4(tcp(seq, 0x10, payload_of(n)), 6))
            seq += n
        return out

    fits = 65535 - 20 - thl
    units = o.coalesce(flow(fits), l2=l2, fast=fast)
    assert len(units) == 1
    assert len(flatten(units[0])) - 10 - (14 if l2 else 0) == 65535
    assert len(o.coalesce(flow(fits + 1), l2=l2, fast=fast)) == 2


@pytest.mark.parametrize("l2", [False, True])
def test_coalesce_never_joins_segments_with_a_data_offset_below_five(l2):
    # Malformed (data offset 4, so the "payload" starts inside the TCP header) but consistent:
    # each continues the last by sequence number. Written alone, the kernel drops them.
    pkts = []
    for i in range(3):
        seg = tcp(1000 + i * 88, 0x10, b"d" * 84, opts=b"")  # 88: the length it claims
        seg = seg[:12] + bytes([0x40]) + seg[13:]
        pkts.append((ETH if l2 else b"") + ipv4(seg, 6))
    units = o.coalesce(pkts, l2=l2)
    assert [flatten(u) for u in units] == [o.ZERO_VNET_HDR + p for p in pkts]


def needs_compiled() -> None:
    """The compiled segment loops are built at install (Cython); CI installs them, so there they
    must be present; elsewhere their tests skip without them (or with TUNNELPY_TEST_COMPILED=off)."""
    if not o.compiled():
        knob_off = os.environ.get("TUNNELPY_TEST_COMPILED", "").lower() == "off"
        if os.environ.get("CI") and not knob_off:
            pytest.fail("tunnelpy.io._segments is not built: pip install -e . (Cython)")
        pytest.skip("tunnelpy.io._segments not built")


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_run_join_equals_the_packet_loop(v6):
    """Runs of segments of one flow are taken by the compiled run join (tunnelpy/io/_segments.pyx)
    in one call. The units must be byte for byte those of the packet-at-a-time loop (`fast=False`,
    and the run join turned off) when one segment inside a long run differs: a sequence gap, PSH, FIN or URG, a
    new ack, window, TOS, TTL or timestamp, another source port or destination address, another
    length, another MAC, an IPv4 option (v4's
    generic path); a changed IPv4 id or a bad checksum must not stop a join. Runs cross the
    64 KiB cap, two flows interleave, on a TUN and behind a TAP's Ethernet (+VLAN) header."""
    import random

    needs_compiled()
    vlan = ETH[:12] + b"\x81\x00\x00\x07" + ETH[12:]
    other_mac = b"\x02\x00\x00\x00\x00\x09" + ETH[6:]
    ip = 40 if v6 else 20
    t = ip

    def at(p: bytes, off: int, new: bytes) -> bytes:
        return p[:off] + new + p[off + len(new) :]

    def flag(bit: int):
        return lambda p: at(p, t + 13, bytes([p[t + 13] | bit]))

    changes = {
        "gap": lambda p: at(
            p,
            t + 4,
            ((int.from_bytes(p[t + 4 : t + 8], "big") + 1) & 0xFFFFFFFF).to_bytes(4, "big"),
        ),
        "psh": flag(0x08),
        "fin": flag(0x01),
        "urg": flag(0x20),
        "ack": lambda p: at(p, t + 8, b"\x00\x01\x00\x00"),
        "window": lambda p: at(p, t + 14, b"\x01\x00"),
        "tos": (lambda p: at(p, 0, b"\x60\x10")) if v6 else (lambda p: at(p, 1, b"\x10")),
        "ttl": (lambda p: at(p, 7, b"\x05")) if v6 else (lambda p: at(p, 8, b"\x05")),
        "tsval": lambda p: at(p, t + 24, b"\x00\x09\x99\x99"),
        "short": lambda p: p[:-7] if v6 else at(p[:-7], 2, (len(p) - 7).to_bytes(2, "big")),
        "ipid": (lambda p: p) if v6 else (lambda p: at(p, 4, b"\x77\x77")),
        "csum": lambda p: at(p, t + 16, b"\x12\x34"),
        "sport": lambda p: at(p, t, b"\x99\x99"),
        "dst": (lambda p: at(p, 39, b"\x07")) if v6 else (lambda p: at(p, 19, b"\x07")),
        "mac": "mac",
        None: None,
    }
    if not v6:  # an IPv4 option: that segment takes the generic path
        changes["ipopt"] = lambda p: (
            b"\x46" + p[1:2] + (len(p) + 4).to_bytes(2, "big") + p[4:20] + b"\x01\x01\x01\x00"
            + p[20:]
        )  # fmt: skip
    rng = random.Random(23 if v6 else 29)
    mss = 1368
    joined = runs = 0
    for _ in range(60):
        flows = [
            _flow_segments(
                40000 + f, rng.randrange(2**32), [mss * 40 + 5, mss * 30, mss * 45], mss, v6
            )
            for f in range(2)
        ]
        if rng.random() < 0.5:  # no PSH at the super-packet ends: runs reach the 64 KiB cap
            flows = [[q[: t + 13] + bytes([q[t + 13] & ~0x08]) + q[t + 14 :]
                      for q in f] for f in flows]  # fmt: skip
        eth = rng.choice([ETH6 if v6 else ETH, (ETH6 if v6 else vlan)])
        pkts: list[bytes] = []
        heads: list[bytes] = []
        while any(flows):
            f = flows[rng.randrange(2)] or flows[0] or flows[1]
            take = f[: rng.choice([3, 20, 50, 90])]
            del f[: len(take)]
            name = rng.choice(list(changes))
            k = rng.randrange(len(take))
            hs = [eth] * len(take)
            if name == "mac":
                hs[k] = other_mac
            elif name is not None:
                take[k] = changes[name](take[k])
            pkts += take
            heads += hs
        frames = [e + p for e, p in zip(heads, pkts, strict=True)]
        for batch, l2 in ((pkts, False), (frames, True)):
            fast = o.coalesce(batch, l2=l2)
            want = [flatten(u) for u in o.coalesce(batch, l2=l2, fast=False)]
            assert [flatten(u) for u in fast] == want
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(gro, "_join_run", None)
                assert [flatten(u) for u in o.coalesce(batch, l2=l2)] == want
            # (a unit with a piece of more than one segment came from the run join)
            joined += sum(1 for u in fast for x in u[2:] if len(x) > mss + 14)
            runs += 1
    assert joined > runs  # the run join was taken, many times


def test_coalesce_run_join_of_padded_tiny_frames():
    """A run of tiny segments (2 payload bytes, no TCP options) behind a TAP's Ethernet header
    comes padded to 60 bytes: the run join must take each payload up to the IP length, not the
    frame's end, exactly as the packet loop does."""
    needs_compiled()
    segs = []
    for k in range(30):
        pkt = ipv4(tcp(1000 + 2 * k, 0x10, b"%02d" % k, opts=b""), 6, ident=k)
        segs.append(ETH + pkt + bytes(60 - 14 - len(pkt)))
    assert {len(f) for f in segs} == {60}
    fast = o.coalesce(segs, l2=True)
    assert [flatten(u) for u in fast] == [flatten(u) for u in o.coalesce(segs, l2=True, fast=False)]
    assert len(fast) == 1 and len(fast[0]) == 4  # first piece, then one joined piece of 29
    assert bytes(fast[0][-1]) == b"".join(b"%02d" % k for k in range(1, 30))


def test_compiled_split_equals_the_python_split():
    """split_tcp's segments from the compiled loop (tunnelpy/io/_segments.pyx) are byte for byte
    those of the Python loop: IPv4 (with and without IP options) and IPv6, on a TUN and behind a
    TAP's Ethernet header (with a VLAN tag too), even and odd MSS, payloads that end in a short
    segment, end exactly on a segment, or fit in one; every flag combination split treats
    specially (CWR first only, FIN/PSH last only, ECE/URG kept), sequence numbers and IPv4 ids
    that wrap, and TCP options of several lengths."""
    import random

    needs_compiled()
    rng = random.Random(31)
    vlan = ETH[:12] + b"\x81\x00\x00\x07" + ETH[12:]
    cases = 0
    for _ in range(300):
        v6 = rng.random() < 0.4
        mss = rng.choice([536, 1000, 1001, 1368, 1380, 8960])
        size = rng.choice(
            [
                mss * rng.randrange(1, 48),
                mss * rng.randrange(1, 47) + rng.randrange(1, mss),
                rng.randrange(1, mss),
            ]
        )
        size = min(size, 65535 - 120)
        flags = rng.choice([0x10, 0x18, 0x19, 0x98, 0x90, 0x50, 0x30, 0xD9])
        opts = rng.choice([b"", TS_OPTS, TS_OPTS + b"\x01\x01\x01\x00", b"\x02\x04\x05\xb4"])
        seq0 = rng.choice([rng.randrange(2**32), 0xFFFFFFFF - rng.randrange(3 * mss)])
        seg = tcp(seq0, flags, bytes(rng.randrange(256) for _ in range(size)), opts=opts)
        if v6:
            pkt, eth = ipv6(seg, 6), ETH6
        else:
            ipopt = rng.choice([b"", b"\x01\x01\x01\x00"])
            pkt, eth = (
                ipv4(seg, 6, ident=rng.choice([0xFFFF, rng.randrange(65536)]), options=ipopt),
                rng.choice([ETH, vlan]),
            )
        gso = o.GSO_TCPV6 if v6 else o.GSO_TCPV4
        for frame, l2 in ((pkt, False), (eth + pkt, True)):
            buf = tso(frame, gso, mss, len(eth) if l2 else 0)
            compiled = o.split(buf, l2=l2)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(segmentation, "_split_tcp_c", None)
                assert compiled == o.split(buf, l2=l2), (v6, l2, mss, size, hex(flags))
                mp.setattr(checksum, "_np", None)
                assert compiled == o.split(buf, l2=l2)
            assert all(type(s) is bytes for s in compiled)
            cases += 1
    assert cases == 600


def test_compiled_loops_refuse_inconsistent_offsets():
    """The C loops read and write by offset: offsets that would leave the buffers are refused
    (join_run takes nothing, split_tcp_segments raises) rather than read or written."""
    needs_compiled()
    from tunnelpy.io import _segments as c

    segs = segments(False, n=20, flags=0x10)
    first, rest = segs[0], segs[1:]
    ok = dict(limit=len(rest), first=first, raw=len(first), end=len(first), l3=0, t=20, h=52)
    args = dict(ok, v6=False, next_seq=struct.unpack_from(">I", first, 24)[0] + 1368, gso=1368)
    assert c.join_run(rest, 0, **args)[0] == len(rest) - 1  # (the last one is shorter)
    for bad in (
        {"end": len(first) + 1},  # payload end past the packet
        {"raw": 40},  # packets shorter than the headers
        {"t": 19},  # TCP header inside the IP header
        {"h": 39},  # payload inside the TCP header
        {"gso": 0},
        {"first": first[:40]},  # reference shorter than the headers
    ):
        assert c.join_run(rest, 0, **{**args, **bad}) == (0, False, None), bad
    buf = tso(ipv4(tcp(1, 0x10, payload_of(3000)), 6), o.GSO_TCPV4, 1000)
    hdr = bytes(52)
    good = (buf, 62, 1000, hdr, 0, 20, 20, 32, False, 1, 0x10, 0, 0, 0)
    assert len(c.split_tcp_segments(*good)) == 3
    for at, value in ((2, 0), (1, 70000), (3, hdr[:30]), (5, 40)):
        bad = list(good)
        bad[at] = value
        with pytest.raises(ValueError):
            c.split_tcp_segments(*bad)
