"""The packet builders of tests/harness/packets.py: layouts, lengths and checksums."""

from __future__ import annotations

import ipaddress
import struct

from tests.harness import packets as P


def ones_sum(data: bytes) -> int:
    """Independent check: the 16-bit one's complement sum, word by word."""
    data += b"\0" * (len(data) % 2)
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_checksum_matches_rfc1071_example():
    # RFC 1071 section 3: the sum of these words is 0xddf2, so the checksum is its complement.
    assert P.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert P.checksum(b"\x01") == 0xFFFF - 0x0100  # odd length: padded with a zero byte


def test_ipv4_header_fields_and_optional_checksum():
    pkt = P.ipv4("10.0.0.1", "10.0.0.2", b"abc", P.PROTO_TCP, ident=7, ttl=3, dont_fragment=True)
    ver_ihl, _, total, ident, frag, ttl, proto, csum = struct.unpack("!BBHHHBBH", pkt[:12])
    assert (ver_ihl, total, ident, frag, ttl, proto, csum) == (0x45, 23, 7, 0x4000, 3, 6, 0)
    assert pkt[12:20] == bytes([10, 0, 0, 1, 10, 0, 0, 2]) and pkt[20:] == b"abc"
    assert ones_sum(P.ipv4("10.0.0.1", "10.0.0.2", csum=True)[:20]) == 0xFFFF


def test_ipv6_header_fields():
    pkt = P.ipv6("fd00::1", "fd00::2", b"hello", P.PROTO_ICMPV6, hops=9)
    assert pkt[0] >> 4 == 6 and struct.unpack("!H", pkt[4:6])[0] == 5
    assert (pkt[6], pkt[7]) == (58, 9)
    assert pkt[8:24] == ipaddress.ip_address("fd00::1").packed and pkt[40:] == b"hello"


def test_transport_checksums_verify_over_the_pseudo_header():
    cases = [
        P.ipv4("10.1.0.1", "10.1.0.2", P.udp(40000, 5201, b"odd"), P.PROTO_UDP),
        P.ipv4("10.1.0.1", "10.1.0.2", P.tcp(1, 2, 99, b"data", options=b"\x02\x04\x05\xb4\x04"),
               P.PROTO_TCP),
        P.ipv6("fd00::1", "fd00::2", P.udp(1, 2, b"six"), P.PROTO_UDP),
        P.ipv6("fd00::1", "fd00::2", P.icmp6_echo(3, 4, b"ping"), P.PROTO_ICMPV6),
    ]  # fmt: skip
    for pkt in cases:
        done = P.with_l4_checksum(pkt)
        v4 = pkt[0] >> 4 == 4
        ihl, proto = (20, pkt[9]) if v4 else (40, pkt[6])
        seg = done[ihl:]
        pseudo = (
            pkt[12:20] + struct.pack("!BBH", 0, proto, len(seg))
            if v4
            else pkt[8:40] + struct.pack("!IxxxB", len(seg), proto)
        )
        assert ones_sum(pseudo + seg) == 0xFFFF, done.hex()
        assert done[:ihl] == pkt[:ihl] and len(done) == len(pkt)


def test_tcp_pads_options_and_sets_the_data_offset():
    seg = P.tcp(1000, 80, 5, b"x", ack=6, flags=P.TCP_SYN | P.TCP_ACK, options=b"\x02\x04\x05")
    assert seg[12] >> 4 == 6 and seg[13] == 0x12 and seg[20:24] == b"\x02\x04\x05\x01"
    assert struct.unpack("!HHII", seg[:12]) == (1000, 80, 5, 6) and seg[24:] == b"x"


def test_icmp_echo_checksum_covers_the_message():
    msg = P.icmp_echo(0x1234, 9, b"tunnelpy")
    assert msg[0] == 8 and ones_sum(msg) == 0xFFFF
    assert P.icmp_echo(1, 1, reply=True)[0] == 0


def test_ethernet_frames_with_and_without_vlan_tag():
    dst, src = P.BROADCAST, P.mac(0x0A)
    plain = P.eth(dst, src, P.ETH_IPV4 + b"ip")
    assert plain == dst + src + b"\x08\x00ip"
    tagged = P.eth(dst, src, P.ETH_IPV6 + b"ip", vlan=20)
    assert tagged[12:16] == b"\x81\x00\x00\x14" and tagged[16:18] == b"\x86\xdd"
    qinq = P.eth(dst, src, vlan=4095, tpid=P.TPID_8021AD)
    assert qinq[12:16] == b"\x88\xa8\x0f\xff" and len(qinq) == 12 + 4 + 48
    assert P.vlan_tag(5, pcp=7) == b"\x81\x00\xe0\x05"
