"""GRO: a batch of decrypted packets to write to the device -> write units, runs joined.

The kernel accepts on an IFF_VNET_HDR device the GSO super-packets its own GRO would build, so
the decrypted TCP segments of one flow that continue one another are written as one up-to-64 KiB
packet behind a virtio_net_hdr (one ``writev`` for ~45 segments), and with USO the small UDP
datagrams of one flow as one GSO_UDP_L4 write. Pure: bytes in, write units out, no syscalls.

:func:`coalesce` works in two layers. The first reads a packet's headers and computes its flow
key (the header bytes every packet of one write must share) with where its transport header and
payload start, or writes the packet alone; it has a fast path for IPv4 without options (every
field from one struct call) and a generic one (IPv6, options, Ethernet frames of any kind).
The second, the same for every packet, joins the packet to its flow's open write or starts one;
after a TCP segment it hands the following ones to the compiled run join (:mod:`.accel`), which
takes in one call every segment the packet loop would also have joined.

Frames for a TAP (`l2`) may carry a TCP/UDP checksum their sender left partial (a kernel vxlan
device on a veth underlay does: checksum.py). A joined segment needs nothing, since the super-
packet's field is rewritten and marked NEEDS_CSUM anyway; a frame written alone whose field is
recognised as partial (checksum.partial_l4) gets a NEEDS_CSUM header with its offsets instead of
the zero one, so the kernel finishes the checksum as it would its own. Everything else keeps the
zero header and is verified by the kernel as usual: a wrong checksum is dropped there.

Joining trusts the segments' checksums (the kernel never verifies a NEEDS_CSUM write). That is
the kernel's trust too for what arrives over WireGuard (authenticated: it marks decrypted packets
CHECKSUM_UNNECESSARY); frames from plain VXLAN, which nobody authenticated and whose outer UDP
checksum may be 0, go through :func:`coalesce_vouched`, which joins only frames whose checksum is
partial or was summed and found right.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from . import accel
from .checksum import finish, finish_partial, fold, l4_vouched, ones_sum, partial_l4, pseudo_sum
from .headers import IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_PSH, l3_offset
from .vnet import (
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VNET_HDR,
    ZERO_VNET_HDR,
    Buffer,
)

# The compiled run join, or None (the module global that tests switch off).
_join_run = accel.join_run

# What a GRO super-packet may reach: IPv4's total length (and IPv6's payload length) is 16 bits.
MAX_COALESCED = 65535
USO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS of older kernels: the most a UDP GSO packet may carry
# The flags of a TCP segment that may join, PSH included (PSH ends the write after it).
_DATA = TCP_ACK | TCP_PSH

# Structs are module-level names here, not imports: CPython 3.11 compiles `imported.method()`
# as an attribute load that makes a bound method on every call, `local.method()` does not.
_VNET_HDR = VNET_HDR
_U16 = struct.Struct(">H")
_U16U16 = struct.Struct(">HH")
# An IPv4 header without options and the TCP header after it, as the fast path reads them in
# one call: version/IHL+TOS, fragment field, TTL+protocol, addresses+ports, sequence number,
# ack+data offset, flags, window (length, id and both checksums skipped).
_V4_TCP = struct.Struct(">2s4xH2s2x12sI5sB2s")
# The same for IPv4/UDP: version/IHL+TOS, fragment field, TTL+protocol, addresses+ports.
_V4_UDP = struct.Struct(">2s4xH2s2x12s")

# The header bytes every packet of one write shares. The fast path makes a tuple of them (the L2
# header last), the generic path one bytes object, so the two kinds never compare equal.
FlowKey = tuple[bytes | int, ...] | bytes


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
        self, first: bytes, l3: int, iphl: int, h: int, v6: bool, seq: int, plen: int, udp: bool
    ) -> None:
        self.first = first
        self.l3 = l3
        self.iphl = iphl
        self.h = h  # payload offset: L2 + IP + TCP/UDP headers
        self.v6 = v6
        self.pieces: list[Buffer] = [memoryview(first)[h:]]
        self.size = plen  # payload bytes so far
        self.gso = plen  # every piece but the last has exactly this size
        self.next_seq = (seq + plen) & 0xFFFFFFFF
        self.open = True  # False once a shorter piece or PSH ended it
        self.psh = False
        self.udp = udp


def coalesce(
    packets: Sequence[bytes], *, l2: bool = False, uso: bool = False, fast: bool = True
) -> list[list[Buffer]]:
    """Packets (or frames, `l2`) to write -> write units: [virtio_net_hdr, piece, piece...].

    TCP segments that continue one another in sequence and share every header field but
    length, IP id, checksums, sequence number and PSH (same addresses, ports, ack, window,
    flags but PSH, options, TTL, TOS) become one GSO super-packet with NEEDS_CSUM, as the
    kernel's own GRO would build it (tcp_gro_receive flushes on a window change too: the one
    super-packet carries one window, and a later segment's may be the newer); everything else
    is written alone behind a zero header, so the kernel checks its checksum as usual (a TAP
    frame whose checksum its sender left partial behind a NEEDS_CSUM one instead). A segment
    joins only the super-packet it directly continues, so the bytes of one flow reach the kernel
    in sequence order. Units keep the order of their first packet. Each IP packet must have its
    exact length (padding trimmed).

    `uso` (the device took TUN_F_USO4/6): UDP datagrams of one flow (same addresses, ports,
    TOS, TTL) and one payload size, the last possibly shorter, become one GSO_UDP_L4 write, which
    the kernel cuts again before any socket sees it: one syscall for a burst of small datagrams.

    `fast=False` sends IPv4 through the generic path too and leaves the run join out, so tests
    can compare the two.
    """
    units: list[list[Buffer]] = []
    flows: dict[FlowKey, _Flow] = {}
    builders: list[tuple[int, _Flow]] = []
    v4_tcp = _V4_TCP.unpack_from
    v4_udp = _V4_UDP.unpack_from
    # The compiled run join works on a list of bytes; without it, or with `fast=False`, the
    # packet-at-a-time loop does all.
    runs = (
        packets
        if fast and _join_run is not None and type(packets) is list and len(packets) > 2
        else None
    )
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
                # Only a frame whose ethertype says IP is read as IP, and one that holds less
                # than its IP length is written alone, for the kernel to drop (joined, its
                # length and checksums would be rewritten as if it were whole).
                v = p[l3] >> 4
                e0, e1 = p[l3 - 2], p[l3 - 1]
                if v == 4 and e0 == 0x08 and e1 == 0x00:
                    end = l3 + ((p[l3 + 2] << 8) | p[l3 + 3])
                elif v == 6 and e0 == 0x86 and e1 == 0xDD:
                    end = l3 + 40 + ((p[l3 + 4] << 8) | p[l3 + 5])
                else:
                    units.append([ZERO_VNET_HDR, p])
                    continue
                if end > n:
                    units.append([ZERO_VNET_HDR, p])
                    continue
                if l3 + 20 <= end < n:
                    p = p[:end]
                    n = end
        if n < l3 + 28:  # shorter than IPv4 + UDP headers
            if type(p) is list:
                # A unit the receive path already joined (_aead's units mode): as it is. (A
                # unit is a list of one or two buffers, so it always lands here.) Nothing
                # before it joins anything after it: the unit may hold the same flow's
                # packets between them (a UDP datagram has no sequence number to tell).
                units.append(p)
                flows.clear()
                continue
            units.append([ZERO_VNET_HDR, p])
            continue
        # Layer 1: the flow key, whether it is a UDP one, where the transport header (t) and the
        # payload (h) start and, for TCP, the sequence number and flags; or the packet is
        # written alone.
        key: FlowKey | None = None
        if fast and p[l3] == 0x45:
            # The bulk case, IPv4 without options (on a TUN, or behind the Ethernet header of a
            # TAP frame): one struct call reads what the generic path slices out, and the key is
            # a tuple of the same header bytes. A fragment falls through to the generic path.
            proto = p[l3 + 9]
            t = l3 + 20
            v6 = False
            if proto == IPPROTO_TCP and n >= t + 20:
                vt, frag, ttl_proto, addrs, seq, ack_doff, flags, window = v4_tcp(p, l3)
                if not frag & 0x3FFF:
                    h = t + (ack_doff[4] >> 4) * 4
                    if h < t + 20 or n <= h or flags | TCP_PSH != _DATA:
                        units.append([ZERO_VNET_HDR, p])
                        continue
                    key = (vt, frag, ttl_proto, addrs, ack_doff, window, p[t + 20 : h])
                    if l3:
                        key += (p[:l3],)
                    udp = False
            elif proto == IPPROTO_UDP and uso and n > t + 8:
                vt, frag, ttl_proto, addrs = v4_udp(p, l3)
                if not frag & 0x3FFF:
                    key = (vt, frag, ttl_proto, addrs)
                    if l3:
                        key += (p[:l3],)
                    h = t + 8
                    udp = True
        if key is None:
            b0 = p[l3]
            if b0 >> 4 == 4:
                if p[l3 + 6] & 0x3F or p[l3 + 7]:  # a fragment (MF or a fragment offset)
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
                # [L2,] version..TOS (flow label), TTL/protocol (and IPv4 DF), addresses, ports.
                if v6:
                    key = p[: l3 + 4] + p[l3 + 6 : t + 4]
                else:
                    key = p[: l3 + 2] + p[l3 + 6 : l3 + 10] + p[l3 + 12 : t + 4]
                h = t + 8
                udp = True
            elif proto == IPPROTO_TCP and n >= t + 20:
                h = t + (p[t + 12] >> 4) * 4
                flags = p[t + 13]
                if h < t + 20 or n <= h or flags | TCP_PSH != _DATA:
                    # SYN, FIN, RST, URG, ECE/CWR, a pure ACK or a data offset below 5: alone.
                    units.append([ZERO_VNET_HDR, p])
                    continue
                # [L2,] version..TOS (flow label), TTL/protocol (and IPv4 DF), addresses, ports,
                # ack, data offset, window, options.
                if v6:
                    key = (
                        p[: l3 + 4] + p[l3 + 6 : t + 4] + p[t + 8 : t + 13] + p[t + 14 : t + 16]
                        + p[t + 20 : h]
                    )  # fmt: skip
                else:
                    key = (
                        p[: l3 + 2] + p[l3 + 6 : l3 + 10] + p[l3 + 12 : t + 4] + p[t + 8 : t + 13]
                        + p[t + 14 : t + 16]
                    )  # fmt: skip
                    if h > t + 20:
                        key += p[t + 20 : h]
                seq = int.from_bytes(p[t + 4 : t + 8], "big")
                udp = False
            else:
                units.append([ZERO_VNET_HDR, p])
                continue
        # Layer 2, one for every path: join the flow's open write if the packet continues it
        # (a TCP segment in sequence; a datagram while the write has room for one more), else
        # start a write.
        plen = n - h
        flow = flows.get(key)
        if (
            flow is not None
            and flow.open
            and plen <= flow.gso
            and flow.size + plen + h - l3 <= MAX_COALESCED
            and (len(flow.pieces) < USO_MAX_SEGMENTS if udp else seq == flow.next_seq)
        ):
            flow.pieces.append(memoryview(p)[h:])
            flow.size += plen
            if plen < flow.gso:
                flow.open = False
        else:
            # (a datagram has no sequence number: `seq` is only read for TCP)
            flow = _Flow(p, l3, t - l3, h, v6, 0 if udp else seq, plen, udp)
            flows[key] = flow
            builders.append((len(units), flow))
            units.append([])  # filled below, when the flow is complete
        if udp:
            continue
        flow.next_seq = (seq + plen) & 0xFFFFFFFF
        if flags & TCP_PSH:
            flow.open = False
            flow.psh = True
        elif runs is not None and flow.open and i < count:
            i = _take_run(flow, runs, i, raw, n, t)
    for index, flow in builders:
        units[index] = _unit(flow)
    if l2:
        _mark_partial(units)
    return units


def coalesce_vouched(packets: list[bytes], *, uso: bool = False) -> list[list[Buffer]]:
    """:func:`coalesce` for TAP frames from senders nobody authenticated (plain VXLAN).

    A joined write carries NEEDS_CSUM, which the kernel trusts: a segment with a wrong checksum
    joined into one would be delivered as if right (the kernel's own GRO checks each segment
    first). So each frame must be vouched for (checksum.l4_vouched: partial, or summed here and
    correct) to be joined; any other is written alone, in its place, for the kernel to check
    and drop. Costs a sum over each full-checksum frame (the batch's in one numpy call);
    partial ones (a kernel vxlan on a veth) cost the header reads only.
    """
    vouched = l4_vouched(packets)
    if all(vouched):
        return coalesce(packets, l2=True, uso=uso)
    units: list[list[Buffer]] = []
    start = 0
    for i, p in enumerate(packets):
        if not vouched[i]:
            if start < i:
                units.extend(coalesce(packets[start:i], l2=True, uso=uso))
            units.append([ZERO_VNET_HDR, p])
            start = i + 1
    if start < len(packets):
        units.extend(coalesce(packets[start:], l2=True, uso=uso))
    return units


def _mark_partial(units: list[list[Buffer]]) -> None:
    """Frames written alone whose TCP/UDP checksum holds only the pseudo-header sum: a
    NEEDS_CSUM header with the offsets, so the kernel finishes it (hdr_len covers the field, as
    the kernel itself would set it). Only these frames are looked at: a joined segment's field
    is replaced by the super-packet's."""
    for unit in units:
        if unit[0] is ZERO_VNET_HDR:
            where = partial_l4(unit[1])
            if where is None:
                continue
            start, offset, end = where
            frame = unit[1]
            if end == len(frame):
                unit[0] = _VNET_HDR.pack(
                    F_NEEDS_CSUM, GSO_NONE, start + offset + 2, 0, start, offset
                )
            elif type(frame) is bytes:  # (padding is trimmed above: not expected)
                unit[1] = finish_partial([frame])[0]  # the kernel would sum the padding too


def _take_run(flow: _Flow, packets: list[bytes], i: int, raw: int, end: int, t: int) -> int:
    """Append to the open TCP `flow` the segments from packets[i] on that continue it, taken by
    the compiled `join_run` in one call (`raw`, `end`: the raw length and payload end of the
    segment just taken; `t`: where its TCP header starts). Returns the next index to look at."""
    first = flow.first
    if type(first) is not bytes or _join_run is None:
        return i
    gso = flow.gso
    room = (MAX_COALESCED - (flow.h - flow.l3) - flow.size) // gso
    m, psh, payload = _join_run(
        packets, i, min(len(packets), i + room), first, raw, end, flow.l3, t, flow.h, flow.v6,
        flow.next_seq, gso,
    )  # fmt: skip
    if payload is not None:  # (m > 0)
        flow.pieces.append(payload)
        flow.size += m * gso
        flow.next_seq = (flow.next_seq + m * gso) & 0xFFFFFFFF
        if psh:
            flow.open = False
            flow.psh = True
    return i + m


def _unit(flow: _Flow) -> list[Buffer]:
    """The write unit of a finished flow: the packet alone, or a GSO write with NEEDS_CSUM (the
    checksum field holds the folded pseudo-header sum; the kernel adds the rest)."""
    first = flow.first
    if len(flow.pieces) == 1:
        return [ZERO_VNET_HDR, first]
    l3, h = flow.l3, flow.h
    hdr = bytearray(memoryview(first)[:h])
    t = l3 + flow.iphl
    udp = flow.udp
    # GSO_UDP_L4: the UDP length and pseudo-header sum are those of the whole, as the kernel's
    # segmentation replaces the length in both per datagram.
    proto, l4_len = (IPPROTO_UDP, 8 + flow.size) if udp else (IPPROTO_TCP, h - t + flow.size)
    if flow.v6:
        _U16.pack_into(hdr, l3 + 4, l4_len)
        psum = pseudo_sum(hdr[l3 + 8 : l3 + 24], hdr[l3 + 24 : l3 + 40], proto, l4_len)
    else:
        _U16.pack_into(hdr, l3 + 2, t - l3 + l4_len)
        _U16.pack_into(hdr, l3 + 10, 0)
        _U16.pack_into(hdr, l3 + 10, finish(ones_sum(memoryview(hdr)[l3:t])))
        psum = pseudo_sum(hdr[l3 + 12 : l3 + 16], hdr[l3 + 16 : l3 + 20], proto, l4_len)
    if udp:
        _U16U16.pack_into(hdr, t + 4, l4_len, fold(psum))
        vnet = _VNET_HDR.pack(F_NEEDS_CSUM, GSO_UDP_L4, t + 8, flow.gso, t, 6)
    else:
        if flow.psh:
            hdr[t + 13] |= TCP_PSH
        _U16.pack_into(hdr, t + 16, fold(psum))
        gso_type = GSO_TCPV6 if flow.v6 else GSO_TCPV4
        vnet = _VNET_HDR.pack(F_NEEDS_CSUM, gso_type, h, flow.gso, t, 16)
    return [vnet, hdr, *flow.pieces]
