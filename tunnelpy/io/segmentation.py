"""TSO/USO segmentation: one super-packet read from the device -> wire-ready MTU-sized packets.

A read from an IFF_VNET_HDR device may be a TCP super-packet of up to 64 KiB (TSO) or a UDP
super-datagram (USO) behind its virtio_net_hdr; the wire carries ordinary MTU-sized IP packets
inside WireGuard messages, so :func:`split` cuts it into those, every header rewritten and every
checksum full (:mod:`.checksum` says why). Pure: bytes in, bytes out, no syscalls.

split_tcp's per-segment loop runs compiled when tunnelpy/io/_segments is built
(:mod:`.accel`); its Python loop below gives the same bytes.

:func:`fit_frames` uses the same cut for frames on their way *to* a TAP. A Linux vxlan device on
a veth underlay sends a TSO super-packet as one GSO skb through the veth, and the kernel hands
it to a plain UDP socket unsegmented: one datagram, one VXLAN header, one inner TCP packet of
several MSS (2862 or 7056 bytes for a 1450-byte MTU), its checksum partial. Written as it is,
the bridge behind the TAP drops it (longer than the ports' MTU, and not marked GSO). A frame is
cut only when its checksum is recognised as partial (checksum.partial_l4): that is the shape the
kernel leaves, and a full or wrong checksum is never recomputed (a corrupt one stays corrupt).
A USO super-datagram cannot be cut: where its datagrams ended is not in it.
"""

from __future__ import annotations

import functools
import struct

from . import accel
from .checksum import M, finish, finish_plain, ones_sum, partial_l4, payload_sums, pseudo_sum
from .headers import IPPROTO_TCP, IPPROTO_UDP, TCP_CWR, TCP_FIN, TCP_PSH, l3_offset
from .vnet import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VNET_HDR,
    VNET_HDR_LEN,
    Buffer,
    OffloadError,
)

# The compiled split loop, or None (the module global that tests switch off).
_split_tcp_c = accel.split_tcp_segments

# Flags a segment keeps only on the last (FIN, PSH) or only on the first (CWR) piece.
_LAST_ONLY = TCP_FIN | TCP_PSH
_FIRST_ONLY = TCP_CWR

# Structs are module-level names here, not imports: CPython 3.11 compiles `imported.method()`
# as an attribute load that makes a bound method on every call, `local.method()` does not.
_VNET_HDR = VNET_HDR
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U16U16 = struct.Struct(">HH")


def split(buf: Buffer, *, l2: bool = False) -> list[bytes]:
    """One read from an IFF_VNET_HDR device (virtio_net_hdr + packet) -> wire-ready packets.

    `l2`: the device is a TAP (Ethernet frames); the Ethernet header is copied onto every piece.
    A plain packet comes back alone (its checksum finished if the kernel left that to us); a
    TSO/USO super-packet comes back as MTU-sized packets with every header rewritten.
    Raises OffloadError on a buffer that is too short or of a kind never offered (UFO).
    """
    if len(buf) <= VNET_HDR_LEN:
        raise OffloadError("shorter than the virtio_net_hdr")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _VNET_HDR.unpack_from(buf)
    gso = gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        return [finish_plain(buf)]
    off = VNET_HDR_LEN + (l3_offset(memoryview(buf)[VNET_HDR_LEN:]) if l2 else 0)
    if gso in (GSO_TCPV4, GSO_TCPV6):
        return split_tcp(buf, off, gso_size)
    if gso == GSO_UDP_L4:
        return split_udp(buf, off, gso_size)
    raise OffloadError(f"unsupported gso_type {gso_type}")


def _ip_fields(buf: Buffer, off: int, proto: int) -> tuple[int, bool]:
    """(IP header length, is IPv6) of the packet at `off`, checked to carry `proto` directly."""
    if len(buf) < off + 20:
        raise OffloadError("truncated IP header")
    version = buf[off] >> 4
    if version == 4:
        iphl = (buf[off] & 0x0F) * 4
        if iphl < 20 or buf[off + 9] != proto:
            raise OffloadError("not a plain IPv4 packet of the offloaded protocol")
        return iphl, False
    if version == 6:
        # The kernel's TSO6/USO6 packets have no extension headers (wireguard-go assumes so too).
        if len(buf) < off + 40 or buf[off + 6] != proto:
            raise OffloadError("IPv6 super-packet with extension headers")
        return 40, True
    raise OffloadError("not an IP packet")


def _segment_headers(
    buf: Buffer, off: int, iphl: int, v6: bool, l4_hlen: int, proto: int
) -> tuple[bytearray, int, int]:
    """(header template from the frame start, IP header sum without length/id/checksum,
    pseudo-header address+protocol sum)."""
    start = VNET_HDR_LEN
    hdr = bytearray(memoryview(buf)[start : off + iphl + l4_hlen])
    ip = off - start  # offset of the IP header inside hdr
    if v6:
        ip_sum = 0
        addr_sum = pseudo_sum(hdr[ip + 8 : ip + 24], hdr[ip + 24 : ip + 40], proto, 0)
    else:
        _U16U16.pack_into(hdr, ip + 2, 0, 0)  # total length, id
        _U16.pack_into(hdr, ip + 10, 0)  # header checksum
        ip_sum = ones_sum(memoryview(hdr)[ip : ip + iphl])
        addr_sum = pseudo_sum(hdr[ip + 12 : ip + 16], hdr[ip + 16 : ip + 20], proto, 0)
    return hdr, ip_sum, addr_sum


def split_tcp(buf: Buffer, off: int, mss: int) -> list[bytes]:
    """Cut a TSO super-packet (IP header at `off`) into segments of `mss` payload bytes.

    Per segment: IPv4 total length, id (+1 per segment, as the kernel's own GSO does) and
    header checksum; IPv6 payload length; TCP sequence number (+mss each), flags (CWR only on
    the first, FIN and PSH only on the last) and a full checksum.
    """
    iphl, v6 = _ip_fields(buf, off, IPPROTO_TCP)
    t = off + iphl
    if len(buf) < t + 20:
        raise OffloadError("truncated TCP header")
    thl = (buf[t + 12] >> 4) * 4
    h = t + thl
    end = len(buf)
    if thl < 20 or h > end or mss <= 0:
        raise OffloadError("bad TCP header length or gso_size")
    hdr, ip_sum, addr_sum = _segment_headers(buf, off, iphl, v6, thl, IPPROTO_TCP)
    ip = off - VNET_HDR_LEN
    tt = t - VNET_HDR_LEN  # TCP header inside hdr
    seq0 = _U32.unpack_from(hdr, tt + 4)[0]
    flags0 = hdr[tt + 13]
    ipid0 = 0 if v6 else _U16.unpack_from(buf, off + 4)[0]
    # TCP header sum with seq, flags and checksum zeroed: per segment only those are added.
    _U32.pack_into(hdr, tt + 4, 0)
    hdr[tt + 13] = 0
    _U16.pack_into(hdr, tt + 16, 0)
    tcp_sum = ones_sum(memoryview(hdr)[tt:])
    if _split_tcp_c is not None:
        return _split_tcp_c(
            buf, h, mss, bytes(hdr), ip, tt, iphl, thl, v6, seq0, flags0, ipid0, ip_sum,
            addr_sum + tcp_sum,
        )  # fmt: skip
    sums = payload_sums(buf, h, end, mss)
    # One struct.pack per segment writes every changing field between the constant stretches
    # of the header template: the cheapest way to build a header in CPython.
    if v6:
        st = _tcp_header_struct(True, ip + 4, tt - ip - 2, len(hdr) - tt - 18)
        fixed = (hdr[: ip + 4],)
        middle = hdr[ip + 6 : tt + 4]
    else:
        st = _tcp_header_struct(False, ip + 2, tt - ip - 8, len(hdr) - tt - 18)
        fixed = (hdr[: ip + 2],)
        middle = hdr[ip + 6 : ip + 10]
        middle2 = hdr[ip + 12 : tt + 4]
    ack_doff = hdr[tt + 8 : tt + 13]
    window = hdr[tt + 14 : tt + 16]
    rest = hdr[tt + 18 :]
    pack = st.pack
    n = len(sums)
    last = n - 1
    mv = memoryview(buf)
    join = b"".join
    out: list[bytes] = []
    pos = h
    seq = seq0
    plen = mss
    flags = flags0 & ~_LAST_ONLY
    for i in range(n):
        if i == last:
            plen = end - pos
            flags = flags0 if i == 0 else flags0 & ~_FIRST_ONLY
        elif i == 1:
            flags &= ~_FIRST_ONLY
        tsum = addr_sum + thl + plen + tcp_sum + (seq >> 16) + (seq & M) + flags + sums[i]
        if v6:
            head = pack(
                *fixed, thl + plen, middle, seq, ack_doff, flags, window, M - tsum % M, rest
            )
        else:
            total = iphl + thl + plen
            ipid = (ipid0 + i) & M
            head = pack(
                *fixed, total, ipid, middle, M - (ip_sum + total + ipid) % M, middle2, seq,
                ack_doff, flags, window, M - tsum % M, rest,
            )  # fmt: skip
        nxt = pos + plen
        out.append(join((head, mv[pos:nxt])))
        pos = nxt
        seq = (seq + mss) & 0xFFFFFFFF
    return out


@functools.cache
def _tcp_header_struct(v6: bool, lead: int, mid: int, rest: int) -> struct.Struct:
    """Header = constant stretches and the per-segment fields, for split_tcp's single pack.

    IPv6: lead | payload length | next header..ports (mid) | seq | ack+doff | flags | window |
    checksum | rest. IPv4: lead | total length | id | frag/ttl/proto | header checksum |
    addresses..ports (mid) | seq | ack+doff | flags | window | checksum | rest.
    """
    if v6:
        return struct.Struct(f">{lead}sH{mid}sI5sB2sH{rest}s")
    return struct.Struct(f">{lead}sHH4sH{mid}sI5sB2sH{rest}s")


def split_udp(buf: Buffer, off: int, size: int) -> list[bytes]:
    """Cut a USO super-datagram (IP header at `off`) into datagrams of `size` payload bytes."""
    iphl, v6 = _ip_fields(buf, off, IPPROTO_UDP)
    u = off + iphl
    h = u + 8
    end = len(buf)
    if h > end or size <= 0:
        raise OffloadError("truncated UDP header or bad gso_size")
    hdr, ip_sum, addr_sum = _segment_headers(buf, off, iphl, v6, 8, IPPROTO_UDP)
    ip = off - VNET_HDR_LEN
    uu = u - VNET_HDR_LEN
    ipid0 = 0 if v6 else _U16.unpack_from(buf, off + 4)[0]
    _U16U16.pack_into(hdr, uu + 4, 0, 0)  # length, checksum
    ports_sum = ones_sum(memoryview(hdr)[uu:])
    sums = payload_sums(buf, h, end, size)
    mv = memoryview(buf)
    join = b"".join
    out: list[bytes] = []
    pos = h
    for i, psum in enumerate(sums):
        nxt = min(pos + size, end)
        ulen = 8 + nxt - pos
        if v6:
            _U16.pack_into(hdr, ip + 4, ulen)
        else:
            total = iphl + ulen
            ipid = (ipid0 + i) & M
            _U16U16.pack_into(hdr, ip + 2, total, ipid)
            _U16.pack_into(hdr, ip + 10, finish(ip_sum + total + ipid))
        # The length appears twice in the sum: in the pseudo-header and in the UDP header.
        csum = finish(addr_sum + ulen + ports_sum + ulen + psum)
        _U16U16.pack_into(hdr, uu + 4, ulen, csum)
        out.append(join((hdr, mv[pos:nxt])))
        pos = nxt
    return out


def fit_frames(frames: list[bytes], mtu: int) -> list[bytes]:
    """Frames for a TAP of `mtu`: each whose IP packet is longer than `mtu` and carries TCP
    with a partial checksum cut into segments that fit (full checksums, as split_tcp makes
    them); everything else as it is, in order. `frames` itself when no frame is longer than an
    untagged frame of `mtu` (the common case costs one pass over the lengths)."""
    limit = mtu + 14
    if not frames or max(map(len, frames)) <= limit:
        return frames
    out: list[bytes] = []
    for f in frames:
        if len(f) > limit:
            cut = _cut_to_mtu(f, mtu)
            if cut is not None:
                out.extend(cut)
                continue
        out.append(f)
    return out


def _cut_to_mtu(frame: bytes, mtu: int) -> list[bytes] | None:
    """An oversize TAP frame's segments (its TCP checksum partial), or None to leave it."""
    where = partial_l4(frame)
    if where is None or where[1] != 16:  # not TCP, or not partial
        return None
    t, _offset, end = where
    l3 = l3_offset(frame)
    if end - l3 <= mtu:
        return None  # it fits: only its VLAN tags made it long
    v6 = frame[l3] >> 4 == 6
    if v6 and t != l3 + 40:
        return None  # extension headers: split_tcp cuts plain IPv6 only
    thl = (frame[t + 12] >> 4) * 4
    mss = mtu - (t - l3) - thl
    if mss < 1:
        return None
    gso = GSO_TCPV6 if v6 else GSO_TCPV4
    buf = _VNET_HDR.pack(F_NEEDS_CSUM, gso, t + thl, mss, t, 16) + frame[:end]
    try:
        return split_tcp(buf, VNET_HDR_LEN + l3, mss)
    except OffloadError:
        return None
