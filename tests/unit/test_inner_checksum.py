"""Partial inner checksums on the way to a TAP (tunnelpy.io.checksum.partial_l4 / finish_partial,
gro.coalesce's NEEDS_CSUM marking, segmentation.fit_frames, Tun.write_batch).

The frames in vectors/kernel_vxlan_frames.json were captured from the Linux vxlan device on a veth
underlay (how they were made is in the file): TCP and UDP with the pseudo-header sum only in their
checksum field, TSO super-frames, fragments. Everything else is built here from them. Checksums
are verified with an independent RFC 1071 loop, never with the module's own arithmetic.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
from pathlib import Path

import pytest

from tunnelpy.io import checksum, gro, segmentation
from tunnelpy.io import offload as o
from tunnelpy.io.tun import Tun

VECTORS = json.loads((Path(__file__).parent / "vectors" / "kernel_vxlan_frames.json").read_text())
FRAMES = {name: bytes.fromhex(h) for name, h in VECTORS["frames"].items()}
PARTIAL = [n for n in FRAMES if "tcp" in n or n.endswith("_udp")]
NOT_TCP_UDP = ["ipv4_igmp", "ipv6_hop_by_hop_mld"]
FRAGMENTS = [n for n in FRAMES if "fragment" in n]


def finish1(frame: bytes) -> bytes:
    (out,) = checksum.finish_partial([frame])
    return out


def vouched1(frame: bytes) -> bool:
    (out,) = checksum.l4_vouched([frame])
    return out


MTU = 1450  # the hosts' MTU when captured (TCP MSS with timestamps: 1398 on IPv4, 1378 on IPv6)

# ------------------------------------------------------------------ independent reference --


def rfc1071(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def layout(frame: bytes) -> tuple[int, int, int, int, bool]:
    """(l3, l4 start, l4 end, protocol, v6) of an untagged or tagged frame, IPv6 extension
    headers 0/60 skipped: a plain reading, separate from the module's."""
    l3 = 12
    while frame[l3 : l3 + 2] in (b"\x81\x00", b"\x88\xa8"):
        l3 += 4
    l3 += 2
    if frame[l3] >> 4 == 4:
        t = l3 + (frame[l3] & 15) * 4
        return l3, t, l3 + struct.unpack_from(">H", frame, l3 + 2)[0], frame[l3 + 9], False
    proto, t = frame[l3 + 6], l3 + 40
    while proto in (0, 60):
        proto, t = frame[t], t + (frame[t + 1] + 1) * 8
    return l3, t, l3 + 40 + struct.unpack_from(">H", frame, l3 + 4)[0], proto, True


def pseudo(frame: bytes) -> int:
    """The folded pseudo-header sum (1..0xFFFF), as the kernel leaves it in a partial field."""
    l3, t, end, proto, v6 = layout(frame)
    addrs = frame[l3 + 8 : l3 + 40] if v6 else frame[l3 + 12 : l3 + 20]
    if v6:
        return rfc1071(addrs + struct.pack(">IxxxB", end - t, proto))
    return rfc1071(addrs + struct.pack(">BBH", 0, proto, end - t))


def l4_ok(frame: bytes) -> bool:
    l3, t, end, proto, v6 = layout(frame)
    addrs = frame[l3 + 8 : l3 + 40] if v6 else frame[l3 + 12 : l3 + 20]
    tail = struct.pack(">IxxxB", end - t, proto) if v6 else struct.pack(">BBH", 0, proto, end - t)
    return rfc1071(addrs + tail + frame[t:end]) == 0xFFFF


def field_at(frame: bytes) -> int:
    _l3, t, _end, proto, _v6 = layout(frame)
    return t + (16 if proto == 6 else 6)


def with_field(frame: bytes, value: int) -> bytes:
    at = field_at(frame)
    return frame[:at] + struct.pack(">H", value) + frame[at + 2 :]


def full(frame: bytes) -> bytes:
    """`frame` with its correct full checksum (reference), from any field value."""
    zeroed = with_field(frame, 0)
    value = 0xFFFF - rfc1071_l4(zeroed)
    return with_field(zeroed, value or 0xFFFF)


def rfc1071_l4(frame: bytes) -> int:
    l3, t, end, proto, v6 = layout(frame)
    addrs = frame[l3 + 8 : l3 + 40] if v6 else frame[l3 + 12 : l3 + 20]
    tail = struct.pack(">IxxxB", end - t, proto) if v6 else struct.pack(">BBH", 0, proto, end - t)
    return rfc1071(addrs + tail + frame[t:end])


def tagged(frame: bytes, *tpids: int) -> bytes:
    tags = b"".join(struct.pack(">HH", tpid, 0x2000 | 7) for tpid in tpids)
    return frame[:12] + tags + frame[12:]


def set_ip_length(frame: bytes, l3: int, v6: bool, length: int) -> bytes:
    b = bytearray(frame)
    if v6:
        struct.pack_into(">H", b, l3 + 4, length - 40)
    else:
        struct.pack_into(">H", b, l3 + 2, length)
        struct.pack_into(">H", b, l3 + 10, 0)
        struct.pack_into(">H", b, l3 + 10, 0xFFFF - rfc1071(bytes(b[l3 : l3 + 20])))
    return bytes(b)


# ----------------------------------------------------------------------- the vectors --


def test_the_captured_frames_are_what_they_claim():
    for name in PARTIAL:
        f = FRAMES[name]
        assert struct.unpack_from(">H", f, field_at(f))[0] == pseudo(f), name
        assert not l4_ok(f), name
    assert len(FRAMES["ipv4_tcp_super_frame_5_mss"]) == 14 + 20 + 32 + 5 * 1398
    assert len(FRAMES["ipv6_tcp_super_frame_5_mss"]) == 14 + 40 + 32 + 5 * 1378


@pytest.mark.parametrize("name", PARTIAL)
def test_a_captured_partial_checksum_is_recognised_and_finished(name):
    f = FRAMES[name]
    _l3, t, end, proto, _v6 = layout(f)
    assert checksum.partial_l4(f) == (t, 16 if proto == 6 else 6, end)
    done = finish1(f)
    assert l4_ok(done)
    at = field_at(f)
    assert len(done) == len(f) and done[:at] == f[:at] and done[at + 2 :] == f[at + 2 :]
    assert done == full(f)


@pytest.mark.parametrize("name", PARTIAL)
def test_a_full_checksum_is_not_partial_and_is_left_as_it_is(name):
    f = full(FRAMES[name])
    assert checksum.partial_l4(f) is None
    assert finish1(f) is f


@pytest.mark.parametrize("name", PARTIAL)
def test_a_wrong_checksum_stays_wrong(name):
    f = FRAMES[name]
    psum = pseudo(f)
    rng = random.Random(name)
    good = full(f)[field_at(f) :][:2]
    values = {0, 1, 0xFFFF, psum ^ 1, (psum + 1) & 0xFFFF, *rng.sample(range(0x10000), 200)}
    for value in values:
        if value % 0xFFFF == psum % 0xFFFF or struct.pack(">H", value) == good:
            continue
        if value == 0 and "udp" in name:
            continue  # (UDP's "no checksum": its own test)
        bad = with_field(f, value)
        assert checksum.partial_l4(bad) is None, hex(value)
        assert finish1(bad) is bad
    # A full checksum over corrupted data: also left alone (the receiver drops it).
    g = bytearray(full(f))
    g[-1] ^= 0x40
    assert finish1(bytes(g)) == bytes(g) and not l4_ok(bytes(g))


@pytest.mark.parametrize("name", FRAGMENTS + NOT_TCP_UDP)
def test_fragments_and_other_protocols_are_never_touched(name):
    f = FRAMES[name]
    assert checksum.partial_l4(f) is None
    assert finish1(f) is f


def test_a_first_fragment_whose_field_looks_partial_is_still_left_alone():
    # The sender's kernel finishes a checksum before it fragments, and a fragment does not hold
    # the datagram its checksum covers: even a field equal to this fragment's pseudo sum is left.
    f = FRAMES["ipv4_udp_fragment_first"]
    l3, t, end, _proto, _v6 = layout(f)
    b = bytearray(f)
    struct.pack_into(">H", b, t + 4, end - t)  # UDP length of this fragment alone
    struct.pack_into(">H", b, t + 6, pseudo(bytes(b)))
    assert checksum.partial_l4(bytes(b)) is None
    unfragmented = bytearray(b)
    struct.pack_into(">H", unfragmented, l3 + 6, 0x4000)  # DF, no MF: now it is a whole one
    assert checksum.partial_l4(bytes(unfragmented)) is not None


# ------------------------------------------------------------------------ shapes built --


def _with_pseudo_sum_zero(proto: int) -> bytes:
    """A captured IPv4 frame re-addressed so its pseudo-header sum is ≡ 0 modulo 0xFFFF."""
    f = FRAMES["ipv4_tcp_syn" if proto == 6 else "ipv4_udp"]
    l3, _t, _end, _p, _v6 = layout(f)
    b = bytearray(f)
    struct.pack_into(">H", b, l3 + 18, 0)
    rest = pseudo(bytes(b))  # the sum without the last 16 bits of the destination
    struct.pack_into(">H", b, l3 + 18, 0xFFFF - rest)
    assert pseudo(bytes(b)) == 0xFFFF  # folded: 0xFFFF, the same sum as 0
    return set_ip_length(bytes(b), l3, False, struct.unpack_from(">H", b, l3 + 2)[0])


def test_both_representations_of_a_zero_pseudo_sum_count_for_tcp():
    f = _with_pseudo_sum_zero(6)
    for value in (0x0000, 0xFFFF):
        g = with_field(f, value)
        assert checksum.partial_l4(g) is not None, hex(value)
        assert l4_ok(finish1(g))


def test_udp_without_a_checksum_is_never_touched():
    f = _with_pseudo_sum_zero(17)
    assert checksum.partial_l4(with_field(f, 0)) is None  # IPv4: "no checksum"
    g = with_field(f, 0xFFFF)
    assert checksum.partial_l4(g) is not None
    done = finish1(g)
    assert l4_ok(done) and struct.unpack_from(">H", done, field_at(done))[0] != 0
    assert checksum.partial_l4(with_field(FRAMES["ipv6_udp"], 0)) is None  # IPv6: invalid


@pytest.mark.parametrize("tpids", [(0x8100,), (0x88A8, 0x8100)])
@pytest.mark.parametrize("name", ["ipv4_tcp_syn", "ipv6_tcp_psh_data", "ipv4_udp", "ipv6_udp"])
def test_vlan_tagged_frames(name, tpids):
    f = tagged(FRAMES[name], *tpids)
    start, offset, end = checksum.partial_l4(f)
    assert start == checksum.partial_l4(FRAMES[name])[0] + 4 * len(tpids)
    assert end == len(f) and offset in (6, 16)
    assert l4_ok(finish1(f))
    assert checksum.partial_l4(full(f)) is None


def ipv6_with_ext(frame: bytes, headers: list[tuple[int, int]]) -> bytes:
    """The IPv6 TCP frame with extension headers (type, 8-byte units beyond the first) before
    its TCP header, lengths fixed, the checksum field the new pseudo sum (partial again)."""
    l3 = 14
    proto = frame[l3 + 6]
    chain = b""
    types = [h for h, _ in headers]
    for i, (_kind, units) in enumerate(headers):
        nxt = types[i + 1] if i + 1 < len(types) else proto
        chain += bytes([nxt, units]) + bytes(6 + 8 * units)
    b = bytearray(frame[: l3 + 40] + chain + frame[l3 + 40 :])
    b[l3 + 6] = types[0]
    struct.pack_into(">H", b, l3 + 4, len(b) - l3 - 40)
    return bytes(b)


def test_ipv6_hop_by_hop_and_destination_options_are_stepped_over():
    f = FRAMES["ipv6_tcp_syn"]
    g = ipv6_with_ext(f, [(0, 0), (60, 1)])
    g = with_field(g, pseudo(g))  # (the L4 length is unchanged; the sum is the same)
    start, offset, end = checksum.partial_l4(g)
    assert (start, offset, end) == (14 + 40 + 8 + 16, 16, len(g))
    assert l4_ok(finish1(g))


@pytest.mark.parametrize(
    "headers",
    [
        [(43, 0)],  # routing: the pseudo-header holds the final destination
        [(44, 0)],  # fragment
        [(0, 0), (44, 0)],
        [(60, 0)] * 5,  # more than a sender has reason to stack
        [(51, 0)],  # AH
    ],
)
def test_ipv6_headers_that_cannot_be_read_safely_are_skipped(headers):
    g = ipv6_with_ext(FRAMES["ipv6_tcp_syn"], headers)
    g = with_field(g, pseudo(g)) if all(h in (0, 60) for h, _ in headers) else g
    assert checksum.partial_l4(g) is None
    assert finish1(g) is g


def test_ethernet_padding_is_neither_summed_nor_removed():
    f = FRAMES["ipv4_tcp_ack"]  # 66 bytes; padded here with bytes that would change a sum
    padded = f + b"\xab\xcd\xef"
    start, _offset, end = checksum.partial_l4(padded)
    assert end == len(f)
    done = finish1(padded)
    assert done.endswith(b"\xab\xcd\xef") and l4_ok(done[: len(f)])


def test_a_correct_checksum_that_equals_the_pseudo_sum_is_kept_correct():
    # Once in 65535 packets a full checksum happens to equal the pseudo-header sum: it then
    # counts as partial, and finishing it must give back a correct checksum (the same one).
    f = FRAMES["ipv4_tcp_psh_data"]
    psum = pseudo(f)
    at = len(f) - 2
    # The last payload word w that makes the full checksum ~(T0 + w) equal psum, where T0 is
    # the sum with field and word zero: T0 + w ≡ -psum (mod 0xFFFF).
    zero = with_field(f[:at] + b"\0\0", 0)
    word = 0xFFFF - (rfc1071_l4(zero) + psum) % 0xFFFF
    g = full(zero[:at] + struct.pack(">H", word))
    assert struct.unpack_from(">H", g, field_at(g))[0] % 0xFFFF == psum % 0xFFFF
    assert l4_ok(g) and checksum.partial_l4(g) is not None
    assert finish1(g) == g


def test_malformed_and_truncated_frames_never_raise_and_are_left_alone():
    rng = random.Random(20)
    for f in FRAMES.values():
        for n in range(0, min(len(f), 120)):
            cut = f[:n]
            assert checksum.partial_l4(cut) is None  # the IP length reaches beyond the frame
            assert finish1(cut) is cut
        assert checksum.partial_l4(f[: len(f) - 1]) is None
    bad_cases = []
    f = FRAMES["ipv4_udp"]
    l3, t, end, _p, _v6 = layout(f)
    b = bytearray(f)
    struct.pack_into(">H", b, t + 4, end - t - 2)  # UDP length disagrees with IP
    bad_cases.append(bytes(b))
    b = bytearray(f)
    b[l3] = 0x44  # IHL 4
    bad_cases.append(bytes(b))
    g = bytearray(FRAMES["ipv4_tcp_syn"])
    _l3, tt, _e, _p, _v = layout(bytes(g))
    g[tt + 12] = 0x40  # data offset 4
    bad_cases.append(bytes(g))
    h = bytearray(FRAMES["ipv6_tcp_syn"])
    struct.pack_into(">H", h, 14 + 4, 0)  # payload length 0 (a jumbogram)
    bad_cases.append(bytes(h))
    for case in bad_cases:
        assert checksum.partial_l4(case) is None
    for _ in range(3000):
        junk = rng.randbytes(rng.randrange(0, 200))
        if rng.random() < 0.5:
            junk = junk[:12] + rng.choice([b"\x08\x00", b"\x86\xdd", b"\x81\x00"]) + junk[14:]
        finish1(junk)


# ---------------------------------------------------------------- a TAP with vnet headers --


def kernel_finishes(unit: list) -> bytes:
    """What the kernel makes of one write unit that carries one frame (NEEDS_CSUM: finished
    from csum_start, the field included — the same rule as finish_plain)."""
    return o.finish_plain(b"".join(bytes(x) for x in unit))


@pytest.mark.parametrize("name", ["ipv4_tcp_syn", "ipv4_tcp_ack", "ipv4_udp", "ipv6_udp",
                                  "ipv6_tcp_syn", "ipv6_tcp_ack"])  # fmt: skip
def test_coalesce_hands_a_lone_partial_frame_to_the_kernel_as_needs_csum(name):
    f = FRAMES[name]
    (unit,) = o.coalesce([f], l2=True)
    flags, gso_type, hdr_len, gso_size, start, offset = o.VNET_HDR.unpack(unit[0])
    want_start, want_offset, _end = checksum.partial_l4(f)
    assert (flags, gso_type, gso_size, start, offset) == (
        o.F_NEEDS_CSUM, o.GSO_NONE, 0, want_start, want_offset,
    )  # fmt: skip
    assert hdr_len == start + offset + 2
    assert unit[1] == f
    assert l4_ok(kernel_finishes(unit))


def test_coalesce_leaves_full_and_wrong_checksums_to_the_kernel():
    f = FRAMES["ipv4_tcp_syn"]
    good = full(f)
    wrong = with_field(f, pseudo(f) ^ 0x0101)
    assert o.coalesce([good, wrong], l2=True) == [[o.ZERO_VNET_HDR, good], [o.ZERO_VNET_HDR, wrong]]
    # and IP packets on a TUN are never looked at
    assert o.coalesce([f[14:]]) == [[o.ZERO_VNET_HDR, f[14:]]]


def test_partial_data_segments_still_coalesce_into_one_gso_write():
    segs = o.split(_as_tso(), l2=True)
    partial = [with_field(s, pseudo(s)) for s in segs]  # what a kernel leaves in each
    (unit,) = o.coalesce(partial, l2=True)
    assert o.VNET_HDR.unpack_from(unit[0])[:2] == (o.F_NEEDS_CSUM, o.GSO_TCPV4)
    again = o.split(b"".join(bytes(x) for x in unit), l2=True)
    assert all(l4_ok(s) for s in again) and [s[66:] for s in again] == [s[66:] for s in segs]


def _as_tso(name: str = "ipv4_tcp_super_frame_5_mss") -> bytes:
    f = FRAMES[name]
    start, offset, _end = checksum.partial_l4(f)
    gso = o.GSO_TCPV6 if "ipv6" in name else o.GSO_TCPV4
    mss = 1398 if gso == o.GSO_TCPV4 else 1378
    return o.VNET_HDR.pack(o.F_NEEDS_CSUM, gso, start + 32, mss, start, offset) + f


# ------------------------------------------------------------------- super-frames --


@pytest.mark.parametrize("name", ["ipv4_tcp_super_frame_5_mss", "ipv6_tcp_super_frame_5_mss"])
def test_a_partial_super_frame_is_cut_to_the_mtu(name):
    f = FRAMES[name]
    l3, t, end, _proto, v6 = layout(f)
    h = t + 32  # (timestamps)
    mss = MTU - (t - l3) - 32
    out = segmentation.fit_frames([f], MTU)
    assert len(out) == 5
    assert all(len(s) == 14 + MTU for s in out)
    assert all(l4_ok(s) for s in out)
    assert b"".join(s[h:] for s in out) == f[h:end]
    seq0 = struct.unpack_from(">I", f, t + 4)[0]
    assert [struct.unpack_from(">I", s, t + 4)[0] for s in out] == [
        (seq0 + i * mss) & 0xFFFFFFFF for i in range(5)
    ]
    flags = [s[t + 13] for s in out]
    assert flags == [0x10] * 4 + [f[t + 13]]  # PSH on the last only
    assert all(s[:l3] == f[:l3] for s in out)


def test_fit_frames_keeps_order_and_everything_that_fits():
    small = [FRAMES["ipv4_tcp_ack"], FRAMES["ipv4_udp"]]
    assert segmentation.fit_frames(small, MTU) is small
    sup = FRAMES["ipv4_tcp_super_frame_5_mss"]
    out = segmentation.fit_frames([small[0], sup, small[1]], MTU)
    assert out[0] is small[0] and out[-1] is small[1] and len(out) == 7
    # a tagged frame of a full MTU only looks long: it is not cut
    tagged_full = tagged(full(FRAMES["ipv4_tcp_full_size_data"]), 0x8100)
    tagged_partial = tagged(FRAMES["ipv4_tcp_full_size_data"], 0x8100)
    assert segmentation.fit_frames([tagged_partial], MTU) == [tagged_partial]
    assert segmentation.fit_frames([tagged_full], MTU) == [tagged_full]


def test_fit_frames_never_recomputes_a_full_or_wrong_checksum():
    sup = FRAMES["ipv4_tcp_super_frame_5_mss"]
    good = full(sup)
    wrong = with_field(sup, pseudo(sup) ^ 0x0400)
    udp = FRAMES["ipv4_udp"]  # a USO super-datagram cannot be cut: made long here
    l3, t, _end, _p, _v6 = layout(udp)
    long_udp = udp + bytes(3000)
    long_udp = set_ip_length(long_udp, l3, False, len(long_udp) - l3)
    b = bytearray(long_udp)
    struct.pack_into(">H", b, t + 4, len(b) - t)
    long_udp = with_field(bytes(b), 0)
    long_udp = with_field(long_udp, pseudo(long_udp))
    assert checksum.partial_l4(long_udp) is not None
    frames = [good, wrong, long_udp]
    assert segmentation.fit_frames(frames, MTU) == frames


# ------------------------------------------------------------ Tun.write_batch end to end --


def _tap_on(sock: socket.socket, *, vnet_hdr: bool, mtu: int) -> Tun:
    tap = Tun.adopt(os.dup(sock.fileno()), "test-tap", vnet_hdr=vnet_hdr)
    tap.tap = True
    tap.mtu = mtu
    return tap


@pytest.mark.parametrize("vnet_hdr", [False, True])
def test_tun_write_batch_delivers_every_checksum_finished(vnet_hdr):
    # A SOCK_SEQPACKET pair stands in for the TAP fd: each write arrives as one message.
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap = _tap_on(ours, vnet_hdr=vnet_hdr, mtu=MTU)
    try:
        frames = [
            FRAMES["ipv4_tcp_syn"], FRAMES["ipv6_udp"], FRAMES["ipv4_tcp_super_frame_5_mss"],
            FRAMES["ipv6_tcp_ack"], FRAMES["ipv4_udp_fragment_first"],
        ]  # fmt: skip
        wrong = with_field(FRAMES["ipv4_udp"], 0x1234)
        tap.write_batch([*frames, wrong])
        kernel.setblocking(False)
        got: list[bytes] = []
        while True:
            try:
                msg = kernel.recv(70000)
            except BlockingIOError:
                break
            got.extend(o.split(msg, l2=True) if vnet_hdr else [msg])
        assert tap.write_drops == 0
        assert len(got) == 1 + 1 + 5 + 1 + 1 + 1
        assert all(l4_ok(g) for g in got[:8])
        assert got[8] == FRAMES["ipv4_udp_fragment_first"]
        assert got[9] == wrong and not l4_ok(got[9])
    finally:
        tap.close()
        ours.close()
        kernel.close()


def test_gro_module_marks_only_tap_frames():
    # (the TUN path's units are the zero header's, whatever the packet)
    f = FRAMES["ipv4_udp"]
    assert gro.coalesce([f[14:]], l2=False)[0][0] is o.ZERO_VNET_HDR
    assert gro.coalesce([f], l2=True)[0][0] is not o.ZERO_VNET_HDR


# ------------------------------------------- GRO for senders nobody authenticated --


def test_l4_vouched_partial_right_or_absent_only():
    for name in PARTIAL:
        f = FRAMES[name]
        assert vouched1(f) and vouched1(full(f)), name
        assert not vouched1(with_field(f, pseudo(f) ^ 0x0101)), name
        g = bytearray(full(f))
        g[len(f) - 1] ^= 0x10  # the data, not the field
        assert not vouched1(bytes(g)), name
    assert vouched1(with_field(FRAMES["ipv4_udp"], 0))  # no checksum on IPv4
    assert not vouched1(with_field(FRAMES["ipv6_udp"], 0))  # invalid on IPv6
    for name in FRAGMENTS + NOT_TCP_UDP:
        assert not vouched1(FRAMES[name])  # not read here: the kernel checks it


def _units_frames(units: list) -> list[list[bytes]]:
    """Each unit's frames as the kernel would see them (a GSO write cut again)."""
    return [o.split(b"".join(bytes(x) for x in u), l2=True) for u in units]


def test_coalesce_vouched_never_joins_a_wrong_checksum():
    segs = o.split(_as_tso(), l2=True)  # five full-checksum segments of one flow
    partial = [with_field(s, pseudo(s)) for s in segs]
    bad = bytearray(segs[2])
    bad[-1] ^= 0x01
    batch = [partial[0], segs[1], bytes(bad), partial[3], segs[4]]
    units = gro.coalesce_vouched(batch)
    assert [len(fs) for fs in _units_frames(units)] == [2, 1, 2]
    assert units[1] == [o.ZERO_VNET_HDR, bytes(bad)]  # alone, for the kernel to drop
    assert o.VNET_HDR.unpack_from(units[0][0])[1] == o.GSO_TCPV4
    # (what plain coalesce does: all five in one write the kernel would trust)
    assert len(o.coalesce(batch, l2=True)) == 1
    # UDP with USO: a wrong datagram next to a partial one of the same flow
    f = FRAMES["ipv4_udp"]
    wrong = with_field(f, pseudo(f) ^ 0x0101)
    assert len(o.coalesce([f, wrong], l2=True, uso=True)) == 1
    units = gro.coalesce_vouched([f, wrong, f], uso=True)
    assert units[1] == [o.ZERO_VNET_HDR, wrong] and len(units) == 3
    assert all(l4_ok(kernel_finishes(u)) for u in (units[0], units[2]))


def test_coalesce_vouched_equals_coalesce_when_every_frame_is_vouched_for():
    segs = o.split(_as_tso("ipv6_tcp_super_frame_5_mss"), l2=True)
    batch = [FRAMES["ipv4_tcp_ack"], *segs, FRAMES["ipv6_udp"], FRAMES["ipv4_udp_fragment_first"]]
    assert gro.coalesce_vouched(batch) == o.coalesce(batch, l2=True)


def test_tun_write_batch_with_vouch_keeps_a_wrong_checksum_wrong():
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap = _tap_on(ours, vnet_hdr=True, mtu=MTU)
    tap.uso = True
    try:
        f = FRAMES["ipv4_udp"]
        wrong = with_field(f, pseudo(f) ^ 0x0101)
        for vouch, want in ((False, 1), (True, 3)):
            tap.vouch = vouch
            tap.write_batch([f, wrong, f])
            msgs = []
            kernel.setblocking(False)
            while True:
                try:
                    msgs.append(kernel.recv(70000))
                except BlockingIOError:
                    break
            assert len(msgs) == want, vouch
        assert msgs[1] == o.ZERO_VNET_HDR + wrong
    finally:
        tap.close()
        ours.close()
        kernel.close()


# ------------------------------------------------------------------ batched sums --


@pytest.mark.parametrize("numpy", [True, False])
def test_segment_sums_equal_the_reference_for_any_lengths(monkeypatch, numpy):
    if not numpy:
        monkeypatch.setattr(checksum, "_np", None)
    elif checksum._np is None:
        pytest.skip("numpy is not installed")
    rng = random.Random(7)
    for _ in range(200):
        items = []
        for _ in range(rng.randrange(1, 12)):
            buf = rng.randbytes(rng.randrange(1, 1600))
            start = rng.randrange(0, len(buf))
            if rng.random() < 0.9:
                start &= ~1  # (an odd start is taken by the per-buffer path)
            end = rng.randrange(start, len(buf) + 1)
            items.append((buf, start, end))
        want = [rfc1071(b[s:e]) % 0xFFFF for b, s, e in items]
        assert checksum.segment_sums(items) == want


@pytest.mark.parametrize("numpy", [True, False])
def test_batches_give_what_each_frame_alone_gives(monkeypatch, numpy):
    if not numpy:
        monkeypatch.setattr(checksum, "_np", None)
    rng = random.Random(11)
    names = list(FRAMES)
    pool = [FRAMES[n] for n in names] + [full(FRAMES[n]) for n in PARTIAL]
    pool += [with_field(FRAMES[n], pseudo(FRAMES[n]) ^ 0x0202) for n in PARTIAL]
    pool += [tagged(FRAMES[n], 0x8100) for n in PARTIAL] + [
        FRAMES["ipv4_tcp_ack"] + b"\x01\x02\x03"
    ]
    for _ in range(40):
        batch = rng.sample(pool, rng.randrange(1, len(pool)))
        assert checksum.finish_partial(batch) == [finish1(f) for f in batch]
        assert checksum.l4_vouched(batch) == [vouched1(f) for f in batch]


# ------------------------------------------------------- compiled vouch == Python --


def with_options(frame: bytes, k: int) -> bytes:
    """An untagged IPv6 `frame` with `k` empty destination options headers (PadN) in front of
    its transport header (checksum._l4 reads at most four)."""
    b = bytearray(frame)
    proto = b[20]
    b[20] = 60
    opts = b"".join(bytes((60 if i < k - 1 else proto, 0, 1, 4, 0, 0, 0, 0)) for i in range(k))
    struct.pack_into(">H", b, 18, struct.unpack_from(">H", b, 18)[0] + 8 * k)
    return bytes(b[:54]) + opts + bytes(b[54:])


def _vouch_pool() -> list[bytes]:
    """Frames every branch of checksum._l4 takes: the captured ones with partial, full, wrong
    and zero fields, tagged (802.1Q, stacked 802.1ad), odd lengths, padded, and every header
    byte of some of them set to values that flip a check (version, IHL, fragment bits, lengths,
    protocol, extension headers, TCP data offset, UDP length)."""
    pool = list(FRAMES.values())
    for name in PARTIAL:
        f = FRAMES[name]
        pool += [full(f), with_field(f, pseudo(f) ^ 0x0101), with_field(f, 0),
                 with_field(f, 0xFFFF), with_field(f, pseudo(f) % 0xFFFF or 0xFFFF)]  # fmt: skip
        pool += [tagged(full(f), 0x8100), tagged(f, 0x88A8, 0x8100), full(f) + b"\0" * 7]
    pool.append(set_ip_length(full(FRAMES["ipv4_tcp_psh_data"]), 14, False,
                              len(FRAMES["ipv4_tcp_psh_data"]) - 14 - 1))  # fmt: skip
    pool += [full(with_options(FRAMES["ipv6_udp"], k)) for k in range(1, 7)]
    rng = random.Random(23)
    bases = [full(FRAMES[n]) for n in ("ipv4_tcp_psh_data", "ipv6_tcp_psh_data", "ipv4_udp",
                                       "ipv6_udp", "ipv6_hop_by_hop_mld")]  # fmt: skip
    for base in bases:
        for at in range(0, min(len(base), 90)):
            for value in {0, 0xFF, base[at] ^ 1, base[at] ^ 0x10, rng.randrange(256)}:
                b = bytearray(base)
                b[at] = value
                pool.append(bytes(b))
        pool += [base[:k] for k in range(0, min(len(base), 100))]
    pool += [rng.randbytes(rng.randrange(0, 200)) for _ in range(300)]
    return pool


@pytest.mark.skipif(checksum._vouch_frames is None, reason="the compiled segment loops are not built")
def test_compiled_vouch_equals_the_python_loop(monkeypatch):
    pool = _vouch_pool()
    compiled = checksum.l4_vouched(pool)
    assert sum(compiled) > 100 and not all(compiled)  # (both outcomes well represented)
    assert [vouched1(full(with_options(FRAMES["ipv6_udp"], k))) for k in (4, 5)] == [True, False]
    monkeypatch.setattr(checksum, "_vouch_frames", None)
    assert checksum.l4_vouched(pool) == compiled
    assert checksum.l4_vouched(tuple(pool)) == compiled


def test_vouch_takes_the_python_loop_for_items_not_bytes():
    f = full(FRAMES["ipv4_tcp_psh_data"])
    assert checksum.l4_vouched([f, bytearray(f), memoryview(f)]) == [True, True, True]
