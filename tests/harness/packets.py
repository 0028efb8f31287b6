"""Hand-built packets for tests: IPv4/IPv6 headers, UDP/TCP/ICMP, Ethernet frames (VLAN-tagged).

The builders compose: ``ipv4(src, dst, udp(40000, 5201, b"hi"))`` is an IPv4/UDP packet, and
``eth(dst_mac, src_mac, ETH_IPV4 + that)`` the Ethernet frame carrying it. The defaults give the
exact bytes the engine tests have always used (header checksums zero: the engine never checks
them); ``csum=True`` on `ipv4` and `with_l4_checksum` fill in correct RFC 1071 checksums
for tests whose packets go to a real kernel or to the offload code.
"""

from __future__ import annotations

import ipaddress
import struct

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58
ETH_IPV4 = b"\x08\x00"  # ethertypes as the two bytes that start an `eth` payload
ETH_IPV6 = b"\x86\xdd"
TPID_8021Q, TPID_8021AD = 0x8100, 0x88A8
BROADCAST = b"\xff" * 6
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def checksum(data: bytes) -> int:
    """The RFC 1071 Internet checksum of `data` (the value that goes in the header field)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(
    src: str,
    dst: str,
    payload: bytes = b"x" * 20,
    proto: int = PROTO_UDP,
    *,
    ident: int = 0,
    ttl: int = 64,
    tos: int = 0,
    dont_fragment: bool = False,
    csum: bool = False,
) -> bytes:
    """An IPv4 packet (20-byte header, no options) around `payload`."""
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), ident, 0x4000 if dont_fragment else 0,
        ttl, proto, 0, ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    if csum:
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(
    src: str, dst: str, payload: bytes = b"y" * 13, next_header: int = PROTO_UDP, *, hops: int = 64
) -> bytes:
    """An IPv6 packet (fixed header, no extension headers) around `payload`."""
    hdr = struct.pack(
        "!IHBB16s16s", 0x60000000, len(payload), next_header, hops,
        ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed,
    )  # fmt: skip
    return hdr + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP header and payload, checksum zero (see `with_l4_checksum`)."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(
    sport: int,
    dport: int,
    seq: int,
    payload: bytes = b"",
    *,
    ack: int = 0,
    flags: int = TCP_ACK,
    window: int = 512,
    options: bytes = b"",
) -> bytes:
    """A TCP header (options padded to 32 bits) and payload, checksum zero."""
    options += b"\x01" * (-len(options) % 4)  # NOPs
    offset = (20 + len(options)) // 4
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, window, 0, 0)
    return hdr + options + payload


def icmp_echo(ident: int, seq: int, payload: bytes = b"", *, reply: bool = False) -> bytes:
    """An ICMPv4 echo request (or reply) with its checksum filled in (it covers only itself)."""
    msg = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + payload
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def icmp6_echo(ident: int, seq: int, payload: bytes = b"", *, reply: bool = False) -> bytes:
    """An ICMPv6 echo request (or reply), checksum zero: it covers the IPv6 pseudo-header, so
    wrap it with `ipv6(..., next_header=PROTO_ICMPV6)` and call `with_l4_checksum`."""
    return struct.pack("!BBHHH", 129 if reply else 128, 0, 0, ident, seq) + payload


_L4_CSUM_AT = {PROTO_TCP: 16, PROTO_UDP: 6, PROTO_ICMPV6: 2}


def with_l4_checksum(packet: bytes) -> bytes:
    """`packet` (IPv4 or IPv6 carrying TCP, UDP or ICMPv6) with its transport checksum filled in
    over the pseudo-header. A computed UDP checksum of 0 is sent as 0xFFFF (RFC 768)."""
    v4 = packet[0] >> 4 == 4
    ihl = (packet[0] & 15) * 4 if v4 else 40
    proto = packet[9] if v4 else packet[6]
    at = ihl + _L4_CSUM_AT[proto]
    seg = packet[ihl:at] + b"\0\0" + packet[at + 2 :]
    if v4:
        pseudo = packet[12:20] + struct.pack("!BBH", 0, proto, len(seg))
    else:
        pseudo = packet[8:40] + struct.pack("!IxxxB", len(seg), proto)
    value = checksum(pseudo + seg)
    if proto == PROTO_UDP and value == 0:
        value = 0xFFFF
    return packet[:at] + struct.pack("!H", value) + packet[at + 2 :]


def vlan_tag(vid: int, *, pcp: int = 0, tpid: int = TPID_8021Q) -> bytes:
    """The 4-byte 802.1Q (or, with TPID_8021AD, 802.1ad) tag: TPID then PCP/DEI/VID."""
    return struct.pack("!HH", tpid, (pcp << 13) | (vid & 0xFFF))


def eth(
    dst: bytes,
    src: bytes,
    payload: bytes = ETH_IPV4 + b"p" * 46,
    *,
    vlan: int | None = None,
    tpid: int = TPID_8021Q,
) -> bytes:
    """An Ethernet frame (no FCS). `payload` starts with the two-byte ethertype, so
    ``eth(dst, src, ETH_IPV4 + packet)``; with `vlan` the tag goes between the source MAC and
    that ethertype, where it sits on the wire."""
    tag = vlan_tag(vlan, tpid=tpid) if vlan is not None else b""
    return dst + src + tag + payload


def mac(n: int) -> bytes:
    """A locally administered unicast MAC ending in `n` (0..255): 02:00:00:00:00:nn."""
    return bytes([0x02, 0, 0, 0, 0, n])
