"""TUN/TAP offloads on byte buffers: virtio_net_hdr, TSO/USO splitting and TCP GRO coalescing.

Why this exists
---------------
A userspace tunnel that moves one packet per syscall tops out well below 1 Gbit/s whatever its
cipher. With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` the kernel hands the device up to 64 KiB TCP
"super-packets" (TSO) with a 10-byte ``virtio_net_hdr`` in front, and accepts the same on write
(GRO), so one read and one write carry ~45 MTU-sized segments. The wire still carries ordinary
MTU-sized IP packets inside WireGuard messages: this module turns a super-packet read from the
device into those packets (:func:`split`), and a run of decrypted packets of one TCP flow back
into one super-packet to write (:func:`coalesce`). Everything here is pure: bytes in, bytes out,
no syscalls, so it is unit-tested on hand-made buffers.

Checksums
---------
A super-packet read from the device carries only the pseudo-header sum in its TCP checksum field
(``NEEDS_CSUM``): the kernel expects "hardware" to finish it. The segments we send must carry full
checksums, because a WireGuard receiver (the kernel module marks decrypted packets
CHECKSUM_UNNECESSARY) may forward them. Headers are summed incrementally (the template's sum
once, then per segment only the fields that change, RFC 1624 style); payload sums are computed
for all full-size segments in one vectorised call when numpy is importable, else with
``int.from_bytes(...) % 0xFFFF`` per segment (the one's complement sum of 16-bit words equals
the big-endian integer modulo 0xFFFF, since 2**16 ≡ 1). A coalesced packet we write goes the
other way: its header carries ``NEEDS_CSUM`` and the pseudo-header sum, so the kernel never
verifies (it trusts locally-finished checksums, as for its own GRO) and we never compute one.

Layout of ``virtio_net_hdr`` (little-endian on this host, as TUN uses by default):
flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16, csum_offset u16.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Sequence

# numpy's OpenBLAS starts a thread per CPU at import, which we never use (sums are not BLAS)
# and which under valgrind was seen spinning: one thread, no pool.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
try:  # optional: one vectorised pass for the payload sums of all segments of a super-packet
    import numpy as _np
except ImportError:  # pragma: no cover - depends on the environment
    _np = None
try:  # optional, compiled at install (setup.py, Cython): the per-segment loops in C
    from ._segments import join_run as _join_run
    from ._segments import split_tcp_segments as _split_tcp_c
except ImportError:  # pragma: no cover - depends on the build
    _join_run = None
    _split_tcp_c = None
# Testing knob: TUNNELPY_TEST_COMPILED=off runs the Python loops although the module is built,
# so a test run (or a bench row) can compare the two end to end.
if os.environ.get("TUNNELPY_TEST_COMPILED", "").lower() == "off":
    _join_run = None
    _split_tcp_c = None

Buffer = bytes | bytearray | memoryview

VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)

# virtio_net_hdr flags and gso types (linux/virtio_net.h)
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO: never offered, so never read
GSO_TCPV6 = 4
GSO_UDP_L4 = 5  # USO (kernel >= 6.2)
GSO_ECN = 0x80

# TUNSETOFFLOAD bits (linux/if_tun.h) and the ioctls (PROTOCOL.md, checked on this kernel)
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8

IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_CWR = 0x80
# Flags a segment keeps only on the last (FIN, PSH) or only on the first (CWR) piece.
_LAST_ONLY = TCP_FIN | TCP_PSH
_FIRST_ONLY = TCP_CWR

MAX_IP_LEN = 65535
# What a GRO super-packet may reach: IPv4's total length (and IPv6's payload length) is 16 bits.
MAX_COALESCED = 65535
USO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS of older kernels: the most a UDP GSO packet may carry
_M = 0xFFFF

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U16U16 = struct.Struct(">HH")
_VNET_CSUM = struct.Struct("<HH")  # csum_start, csum_offset at offset 6 of virtio_net_hdr
# An IPv4 header without options and the TCP header after it, as coalesce's fast path reads
# them in one call: version/IHL+TOS, fragment field, TTL+protocol, addresses+ports, sequence
# number, ack+data offset, flags, window (length, id and both checksums skipped).
_V4_TCP = struct.Struct(">2s4xH2s2x12sI5sB2s")
# The same for IPv4/UDP: version/IHL+TOS, fragment field, TTL+protocol, addresses+ports.
_V4_UDP = struct.Struct(">2s4xH2s2x12s")


def compiled() -> bool:
    """True when the compiled segment loops (tunnelpy/io/_segments.pyx) are in use."""
    return _join_run is not None


def forced_off() -> bool:
    """Testing knob: ``TUNNELPY_TEST_OFFLOAD=off`` turns every offload off whatever the config
    says, so the whole integration suite can run once with offloads and once without."""
    return os.environ.get("TUNNELPY_TEST_OFFLOAD", "").lower() == "off"


class OffloadError(ValueError):
    """A buffer read from the device that cannot be split (malformed or unsupported)."""


# ------------------------------------------------------------------------------ checksums --


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """The one's complement sum of `data` as 16-bit big-endian words, reduced modulo 0xFFFF.

    An odd length is padded with a zero byte, as RFC 1071 says. The result is in [0, 0xFFFE];
    0 stands for both one's complement zeros.
    """
    s = int.from_bytes(data, "big")
    if len(data) & 1:
        s <<= 8
    return (s + initial) % _M


def finish(total: int) -> int:
    """The checksum field for a sum: its one's complement, never 0 (UDP's "no checksum")."""
    return _M - total % _M


def fold(total: int) -> int:
    """A sum folded to 16 bits, not complemented: what a NEEDS_CSUM field holds."""
    total %= _M
    return total if total else _M


def pseudo_sum(src: Buffer, dst: Buffer, proto: int, length: int) -> int:
    """The TCP/UDP pseudo-header sum (IPv4 or IPv6 by address size), modulo 0xFFFF."""
    return (int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length) % _M


def _payload_sums(buf: Buffer, start: int, end: int, size: int) -> list[int]:
    """Sums of buf[start:end] cut into pieces of `size` bytes (the last may be shorter)."""
    sums: list[int] = []
    n_full = (end - start) // size
    if _np is not None and n_full > 2 and not size & 1:
        words = _np.frombuffer(buf, dtype=">u2", count=n_full * size // 2, offset=start)
        # uint64 cannot overflow: at most 32767 words of 0xFFFF per segment.
        sums = (words.reshape(n_full, size // 2).sum(axis=1, dtype=_np.uint64) % _M).tolist()
        pos = start + n_full * size
    else:
        mv = memoryview(buf)
        pos = start
        for _ in range(n_full):
            sums.append(ones_sum(mv[pos : pos + size]))
            pos += size
    if pos < end:
        sums.append(ones_sum(memoryview(buf)[pos:end]))
    return sums


def finish_plain(buf: Buffer) -> bytes:
    """A read that is one plain packet (gso_type NONE) behind its virtio_net_hdr -> the packet,
    its checksum finished when the header says NEEDS_CSUM: the field holds the pseudo-header
    sum, to which the sum from csum_start to the end is added.

    Every small packet on the sending side (a UDP datagram, a TCP ACK) takes this path, so it
    works on `bytes` slices: for a ~100-byte packet two slices and two concatenations cost
    ~0.6 µs less than memoryviews and a join did (docs/performance.md).
    """
    n = len(buf)
    if n <= VNET_HDR_LEN:
        raise OffloadError("shorter than the virtio_net_hdr")
    if not buf[0] & F_NEEDS_CSUM:
        return bytes(buf[VNET_HDR_LEN:])
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    csum_start, csum_offset = _VNET_CSUM.unpack_from(buf, 6)
    start = VNET_HDR_LEN + csum_start
    at = start + csum_offset
    if at + 2 > n:
        raise OffloadError("checksum offset beyond the packet")
    tail = buf[start:]
    total = int.from_bytes(tail, "big")
    if len(tail) & 1:
        total <<= 8
    return buf[VNET_HDR_LEN:at] + _U16.pack(_M - total % _M) + buf[at + 2 :]


# ------------------------------------------------------------------------------ splitting --


def l3_offset(frame: Buffer) -> int:
    """Where the IP header starts in an Ethernet frame (after one or two VLAN tags)."""
    off = 12
    n = len(frame)
    # (Byte comparisons, not 2-byte slices: every received frame of a TAP comes through here.)
    while off + 2 <= n:
        t, u = frame[off], frame[off + 1]
        if not (t == 0x81 and u == 0x00 or t == 0x88 and u == 0xA8):
            break
        off += 4
    return off + 2


def split(buf: Buffer, *, l2: bool = False) -> list[bytes]:
    """One read from an IFF_VNET_HDR device (virtio_net_hdr + packet) -> wire-ready packets.

    `l2`: the device is a TAP (Ethernet frames); the Ethernet header is copied onto every piece.
    A plain packet comes back alone (its checksum finished if the kernel left that to us); a
    TSO/USO super-packet comes back as MTU-sized packets with every header rewritten.
    Raises OffloadError on a buffer that is too short or of a kind never offered (UFO).
    """
    if len(buf) <= VNET_HDR_LEN:
        raise OffloadError("shorter than the virtio_net_hdr")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buf)
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
        return _split_tcp_c(  # type: ignore[no-any-return]
            buf, h, mss, bytes(hdr), ip, tt, iphl, thl, v6, seq0, flags0, ipid0, ip_sum,
            addr_sum + tcp_sum,
        )  # fmt: skip
    sums = _payload_sums(buf, h, end, mss)
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
        tsum = addr_sum + thl + plen + tcp_sum + (seq >> 16) + (seq & _M) + flags + sums[i]
        if v6:
            head = pack(
                *fixed, thl + plen, middle, seq, ack_doff, flags, window, _M - tsum % _M, rest
            )
        else:
            total = iphl + thl + plen
            ipid = (ipid0 + i) & _M
            head = pack(
                *fixed, total, ipid, middle, _M - (ip_sum + total + ipid) % _M, middle2, seq,
                ack_doff, flags, window, _M - tsum % _M, rest,
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
    sums = _payload_sums(buf, h, end, size)
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
            ipid = (ipid0 + i) & _M
            _U16U16.pack_into(hdr, ip + 2, total, ipid)
            _U16.pack_into(hdr, ip + 10, finish(ip_sum + total + ipid))
        # The length appears twice in the sum: in the pseudo-header and in the UDP header.
        csum = finish(addr_sum + ulen + ports_sum + ulen + psum)
        _U16U16.pack_into(hdr, uu + 4, ulen, csum)
        out.append(join((hdr, mv[pos:nxt])))
        pos = nxt
    return out


# ------------------------------------------------------------------------------ coalescing --


class _Flow:
    """A GRO super-packet being built: the first segment's headers, then payload pieces."""

    __slots__ = (
        "first",
        "l3",
        "iphl",
        "h",
        "v6",
        "pieces",
        "size",
        "gso",
        "next_seq",
        "open",
        "psh",
        "udp",
    )

    def __init__(
        self, first: Buffer, l3: int, iphl: int, h: int, v6: bool, seq: int, plen: int
    ) -> None:
        self.first = first
        self.l3 = l3
        self.iphl = iphl
        self.h = h  # payload offset: L2 + IP + TCP headers
        self.v6 = v6
        self.pieces: list[Buffer] = [memoryview(first)[h:]]
        self.size = plen  # payload bytes so far
        self.gso = plen  # every piece but the last has exactly this size
        self.next_seq = (seq + plen) & 0xFFFFFFFF
        self.open = True  # False once a shorter piece or PSH ended it
        self.psh = False
        self.udp = False


def coalesce(
    packets: Sequence[Buffer], *, l2: bool = False, uso: bool = False, fast: bool = True
) -> list[list[Buffer]]:
    """Packets (or frames, `l2`) to write -> write units: [virtio_net_hdr, piece, piece...].

    TCP segments that continue one another in sequence and share every header field but
    length, IP id, checksums, sequence number and PSH (same addresses, ports, ack, window,
    flags but PSH, options, TTL, TOS) become one GSO super-packet with NEEDS_CSUM, as the
    kernel's own GRO would build it (tcp_gro_receive flushes on a window change too: the one
    super-packet carries one window, and a later segment's may be the newer); everything else
    is written alone behind a zero header, so the kernel checks its checksum as usual. A segment joins only the super-packet it directly continues,
    so the bytes of one flow reach the kernel in sequence order. Units keep the order of their
    first packet. Each IP packet must have its exact length (padding trimmed).

    `uso` (the device took TUN_F_USO4/6): UDP datagrams of one flow (same addresses, ports,
    TOS, TTL) and one payload size, the last possibly shorter, become one GSO_UDP_L4 write, which
    the kernel cuts again before any socket sees it: one syscall for a burst of small datagrams.

    `fast=False` sends IPv4/TCP through the generic path too, so tests can compare the two.
    """
    units: list[list[Buffer]] = []
    flows: dict[bytes | tuple, _Flow] = {}
    _V4_TCP_unpack = _V4_TCP.unpack_from
    _V4_UDP_unpack = _V4_UDP.unpack_from
    builders: list[tuple[int, _Flow]] = []
    # The compiled run taker (see _take_run) works on a list of bytes; `fast=False` keeps the
    # packet-at-a-time loop whole, for the tests that compare the two.
    runs = fast and _join_run is not None and type(packets) is list and len(packets) > 2
    count = len(packets)
    i = 0
    while i < count:
        p = packets[i]
        i += 1
        n = raw = len(p)
        l3 = 0
        if l2:
            l3 = l3_offset(p)
            if n >= l3 + 20:
                # Ethernet pads short frames to 60 bytes: the IP length says where data ends.
                v = p[l3] >> 4
                end = n
                if v == 4:
                    end = l3 + ((p[l3 + 2] << 8) | p[l3 + 3])
                elif v == 6:
                    end = l3 + 40 + ((p[l3 + 4] << 8) | p[l3 + 5])
                if l3 + 20 <= end < n:
                    p = p[:end]
                    n = end
        if n < l3 + 28:  # shorter than IPv4 + UDP headers
            units.append([ZERO_VNET_HDR, p])
            continue
        sig: bytes | tuple | None = None  # set for a datagram that may join a USO write
        if fast and p[l3] == 0x45 and p[l3 + 9] == IPPROTO_UDP and uso and n > l3 + 28:
            # A flood of small datagrams over IPv4 without options: the USO key from one struct
            # call (version..TOS, DF, TTL/protocol, addresses and ports), a tuple.
            vt, frag, ttl_proto, addrs = _V4_UDP_unpack(p, l3)
            if not frag & 0x3FFF:
                sig = (vt, frag, ttl_proto, addrs)
                if l3:
                    sig += (p[:l3],)
                t = l3 + 20
                v6 = False
        elif fast and p[l3] == 0x45 and n >= l3 + 40:
            # The bulk case, TCP over IPv4 without options (on a TUN, or behind the Ethernet
            # header of a TAP frame): every field the generic path below slices out comes from
            # one struct call, and the flow key is a tuple of the same header bytes, the L2
            # header last (never equal to a generic key: those are bytes).
            vt, frag, ttl_proto, addrs, seq, ack_doff, flags, window = _V4_TCP_unpack(p, l3)
            if ttl_proto[1] == IPPROTO_TCP and not frag & 0x3FFF:
                h = l3 + 20 + (ack_doff[4] >> 4) * 4
                plen = n - h
                if h < l3 + 40 or plen <= 0 or flags | TCP_PSH != TCP_ACK | TCP_PSH:
                    units.append([ZERO_VNET_HDR, p])
                    continue
                key = (vt, frag, ttl_proto, addrs, ack_doff, window, p[l3 + 40 : h])
                if l3:
                    key += (p[:l3],)
                flow = flows.get(key)
                if (
                    flow is not None
                    and flow.open
                    and seq == flow.next_seq
                    and plen <= flow.gso
                    and flow.size + plen + h - l3 <= MAX_COALESCED
                ):
                    flow.pieces.append(memoryview(p)[h:])
                    flow.size += plen
                    flow.next_seq = (seq + plen) & 0xFFFFFFFF
                    if plen < flow.gso or flags & TCP_PSH:
                        flow.open = False
                        flow.psh = bool(flags & TCP_PSH)
                    elif runs and i < count:
                        i = _take_run(flow, packets, i, raw, n, l3 + 20)
                    continue
                flow = _Flow(p, l3, 20, h, False, seq, plen)
                if flags & TCP_PSH:
                    flow.open = False
                    flow.psh = True
                elif runs and i < count:
                    i = _take_run(flow, packets, i, raw, n, l3 + 20)
                flows[key] = flow
                builders.append((len(units), flow))
                units.append([])
                continue
        if sig is None:
            b0 = p[l3]
            if b0 >> 4 == 4:
                # not a fragment (MF and fragment offset zero)
                if p[l3 + 6] & 0x3F or p[l3 + 7]:
                    units.append([ZERO_VNET_HDR, p])
                    continue
                proto = p[l3 + 9]
                t = l3 + (b0 & 0x0F) * 4
                v6 = False
            elif b0 >> 4 == 6 and n >= l3 + 48:
                proto = p[l3 + 6]
                t = l3 + 40
                v6 = True
            else:
                units.append([ZERO_VNET_HDR, p])
                continue
            if proto == IPPROTO_UDP and uso and n > t + 8:
                if v6:
                    sig = p[: l3 + 4] + p[l3 + 6 : t + 4]
                else:
                    sig = p[: l3 + 2] + p[l3 + 6 : l3 + 10] + p[l3 + 12 : t + 4]
        if sig is not None:
            # UDP datagrams of one flow and one size (the last may be shorter) -> one USO write.
            h = t + 8
            plen = n - h
            flow = flows.get(sig)
            if (
                flow is not None
                and flow.open
                and plen <= flow.gso
                and len(flow.pieces) < USO_MAX_SEGMENTS
                and flow.size + plen + h - l3 <= MAX_COALESCED
            ):
                flow.pieces.append(memoryview(p)[h:])
                flow.size += plen
                if plen < flow.gso:
                    flow.open = False
                continue
            flow = _Flow(p, l3, t - l3, h, v6, 0, plen)
            flow.udp = True
            flows[sig] = flow
            builders.append((len(units), flow))
            units.append([])
            continue
        if proto != IPPROTO_TCP:
            units.append([ZERO_VNET_HDR, p])
            continue
        if n < t + 20:
            units.append([ZERO_VNET_HDR, p])
            continue
        h = t + (p[t + 12] >> 4) * 4
        plen = n - h
        flags = p[t + 13]
        if plen <= 0 or h < t + 20 or flags | TCP_PSH != TCP_ACK | TCP_PSH:
            # SYN, FIN, RST, URG, ECE/CWR, a pure ACK or a data offset below 5: alone.
            units.append([ZERO_VNET_HDR, p])
            continue
        # Everything that must match, in one key: [L2,] version..TOS (flow label), TTL/protocol
        # (and IPv4 DF), addresses, ports, ack, data offset, window, options.
        if v6:
            sig = (
                p[: l3 + 4] + p[l3 + 6 : t + 4] + p[t + 8 : t + 13] + p[t + 14 : t + 16]
                + p[t + 20 : h]
            )  # fmt: skip
        else:
            sig = (
                p[: l3 + 2] + p[l3 + 6 : l3 + 10] + p[l3 + 12 : t + 4] + p[t + 8 : t + 13]
                + p[t + 14 : t + 16]
            )  # fmt: skip
            if h > t + 20:
                sig += p[t + 20 : h]
        seq = int.from_bytes(p[t + 4 : t + 8], "big")
        flow = flows.get(sig)
        if (
            flow is not None
            and flow.open
            and seq == flow.next_seq
            and plen <= flow.gso
            and flow.size + plen + h - l3 <= MAX_COALESCED
        ):
            flow.pieces.append(memoryview(p)[h:])
            flow.size += plen
            flow.next_seq = (seq + plen) & 0xFFFFFFFF
            if plen < flow.gso or flags & TCP_PSH:
                flow.open = False
                flow.psh = bool(flags & TCP_PSH)
            elif runs and i < count:
                i = _take_run(flow, packets, i, raw, n, t)
            continue
        flow = _Flow(p, l3, t - l3, h, v6, seq, plen)
        if flags & TCP_PSH:
            flow.open = False
            flow.psh = True
        elif runs and i < count:
            i = _take_run(flow, packets, i, raw, n, t)
        flows[sig] = flow
        builders.append((len(units), flow))
        units.append([])  # filled below, when the flow is complete
    for index, flow in builders:
        units[index] = _unit(flow)
    return units


def _take_run(flow: _Flow, packets: list, i: int, raw: int, end: int, t: int) -> int:
    """Append to the open TCP `flow` the segments from packets[i] on that continue it, taken by
    the compiled `join_run` in one call (`raw`, `end`: the raw length and payload end of the
    segment just taken; `t`: where its TCP header starts). Returns the next index to look at."""
    first = flow.first
    if type(first) is not bytes:
        return i
    gso = flow.gso
    room = (MAX_COALESCED - (flow.h - flow.l3) - flow.size) // gso
    m, psh, payload = _join_run(  # type: ignore[misc]
        packets, i, min(len(packets), i + room), first, raw, end, flow.l3, t, flow.h, flow.v6,
        flow.next_seq, gso,
    )  # fmt: skip
    if m:
        flow.pieces.append(payload)
        flow.size += m * gso
        flow.next_seq = (flow.next_seq + m * gso) & 0xFFFFFFFF
        if psh:
            flow.open = False
            flow.psh = True
    return i + m


def _unit(flow: _Flow) -> list[Buffer]:
    first = flow.first
    if len(flow.pieces) == 1:
        return [ZERO_VNET_HDR, first]
    l3, h = flow.l3, flow.h
    hdr = bytearray(memoryview(first)[:h])
    t = l3 + flow.iphl
    if flow.udp:
        return _udp_unit(flow, hdr, t)
    thl = h - t
    l4_len = thl + flow.size
    if flow.v6:
        _U16.pack_into(hdr, l3 + 4, l4_len)
        psum = pseudo_sum(hdr[l3 + 8 : l3 + 24], hdr[l3 + 24 : l3 + 40], IPPROTO_TCP, l4_len)
        gso_type = GSO_TCPV6
    else:
        _U16.pack_into(hdr, l3 + 2, flow.iphl + l4_len)
        _U16.pack_into(hdr, l3 + 10, 0)
        _U16.pack_into(hdr, l3 + 10, finish(ones_sum(memoryview(hdr)[l3:t])))
        psum = pseudo_sum(hdr[l3 + 12 : l3 + 16], hdr[l3 + 16 : l3 + 20], IPPROTO_TCP, l4_len)
        gso_type = GSO_TCPV4
    if flow.psh:
        hdr[t + 13] |= TCP_PSH
    # NEEDS_CSUM: the field holds the folded pseudo-header sum; the kernel adds the rest.
    _U16.pack_into(hdr, t + 16, fold(psum))
    vnet = VNET_HDR.pack(F_NEEDS_CSUM, gso_type, h, flow.gso, t, 16)
    return [vnet, hdr, *flow.pieces]


def _udp_unit(flow: _Flow, hdr: bytearray, t: int) -> list[Buffer]:
    """A GSO_UDP_L4 write: the UDP length and pseudo-header sum are those of the whole, as the
    kernel's segmentation replaces the length in both per datagram."""
    l3 = flow.l3
    l4_len = 8 + flow.size
    if flow.v6:
        _U16.pack_into(hdr, l3 + 4, l4_len)
        psum = pseudo_sum(hdr[l3 + 8 : l3 + 24], hdr[l3 + 24 : l3 + 40], IPPROTO_UDP, l4_len)
    else:
        _U16.pack_into(hdr, l3 + 2, flow.iphl + l4_len)
        _U16.pack_into(hdr, l3 + 10, 0)
        _U16.pack_into(hdr, l3 + 10, finish(ones_sum(memoryview(hdr)[l3:t])))
        psum = pseudo_sum(hdr[l3 + 12 : l3 + 16], hdr[l3 + 16 : l3 + 20], IPPROTO_UDP, l4_len)
    _U16U16.pack_into(hdr, t + 4, l4_len, fold(psum))
    vnet = VNET_HDR.pack(F_NEEDS_CSUM, GSO_UDP_L4, t + 8, flow.gso, t, 6)
    return [vnet, hdr, *flow.pieces]
