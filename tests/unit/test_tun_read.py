"""Tun.read_batch: the compiled read loop (io/_segments.pyx read_packets) against the Python one.

The fd is one end of an AF_UNIX datagram socketpair: read() takes one datagram per call and
fails with EAGAIN when none is left, as a non-blocking TUN/TAP fd does, so the same hostile
reads (plain packets with and without NEEDS_CSUM, odd lengths, checksum fields beyond the end,
reads no longer than the virtio_net_hdr, TSO super-packets, empty reads) reach both loops and
must give the same packets, the same read_drops and the same batch bounds.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import struct

import pytest

from tests.unit.test_offload import ETH, ipv4, ipv6, needs_csum, payload_of, tcp, tso, udp
from tunnelpy.io import accel, tun
from tunnelpy.io import offload as o

pytestmark = pytest.mark.skipif(accel.read_packets is None, reason="compiled module not built")


def _pair(reads: list[bytes]) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    for r in reads:
        a.send(r)
    return a, b


def _read_all(
    reads: list[bytes], *, compiled: bool, vnet: bool, tap: bool = False, max_batch: int = 64
) -> tuple[list[list[bytes]], int]:
    """Every batch read_batch returns until the fd is drained, and the read drops."""
    a, b = _pair(reads)
    saved = tun._read_packets
    tun._read_packets = accel.read_packets if compiled else None
    try:
        dev = tun.Tun.adopt(os.dup(b.fileno()), "t0", vnet_hdr=vnet)
        dev.tap = tap
        batches = []
        while True:
            got = dev.read_batch(max_batch)
            if not got and dev.read_batch(max_batch) == []:
                break
            batches.append(got)
        os.close(dev.fd)
        return batches, dev.read_drops
    finally:
        tun._read_packets = saved
        a.close()
        b.close()


def _hostile_reads(rng: random.Random) -> list[bytes]:
    reads: list[bytes] = []
    for _ in range(400):
        kind = rng.randrange(8)
        size = rng.choice([0, 1, 2, 17, 63, 64, 65, 1371, 1400])
        v6 = rng.random() < 0.5
        ip = ipv6 if v6 else ipv4
        proto, l4 = rng.choice([(17, udp(payload_of(size))), (6, tcp(9, 0x10, payload_of(size)))])
        pkt = ip(l4, proto)
        if kind == 0:
            reads.append(needs_csum(pkt, proto))
        elif kind == 1:
            reads.append(o.ZERO_VNET_HDR + pkt)
        elif kind == 2:  # a checksum field at or beyond the end
            hdr = o.VNET_HDR.pack(o.F_NEEDS_CSUM, 0, 0, 0, len(pkt) - rng.randrange(2), 1)
            reads.append(hdr + pkt)
        elif kind == 3:
            reads.append(bytes(rng.randrange(256) for _ in range(rng.randrange(11))))
        elif kind == 4:  # a TSO super-packet of a few segments
            big = ip(tcp(1000, 0x18, payload_of(rng.choice([2000, 4001, 9000]))), 6)
            gso = o.GSO_TCPV6 if v6 else o.GSO_TCPV4
            reads.append(tso(big, gso, rng.choice([536, 1368])))
        elif kind == 5:  # a super-packet that cannot be split (UFO)
            reads.append(o.VNET_HDR.pack(0, 3, 0, 0, 0, 0) + pkt)
        elif kind == 6:  # gso_type NONE with the ECN bit: Python's split takes it
            reads.append(o.VNET_HDR.pack(0, 0x80, 0, 0, 0, 0) + pkt)
        else:  # a random tail behind a NEEDS_CSUM header
            start, at = rng.randrange(80), rng.randrange(80)
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(120)))
            reads.append(o.VNET_HDR.pack(o.F_NEEDS_CSUM, 0, 0, 0, start, at) + body)
    return reads


@pytest.mark.parametrize("seed", range(4))
def test_compiled_read_equals_python(seed):
    reads = _hostile_reads(random.Random(seed))
    want = _read_all(reads, compiled=False, vnet=True)
    got = _read_all(reads, compiled=True, vnet=True)
    assert got == want
    assert sum(map(len, want[0])) > 300  # (most reads give packets: the test compares packets)


def test_compiled_read_plain_device_and_tap():
    reads = [ipv4(udp(payload_of(n)), 17) for n in range(0, 300, 7)] + [b""]
    assert _read_all(reads, compiled=True, vnet=False) == _read_all(
        reads, compiled=False, vnet=False
    )
    frame = ETH + ipv4(udp(payload_of(33)), 17)
    tap_reads = [needs_csum(frame, 17, 14), o.ZERO_VNET_HDR + frame]
    got = _read_all(tap_reads, compiled=True, vnet=True, tap=True)
    assert got == _read_all(tap_reads, compiled=False, vnet=True, tap=True)
    (batch,), _ = got
    assert len(batch) == 2 and batch[0][:14] == ETH


def test_compiled_read_checksums_and_bounds():
    """Finished checksums are right (not only equal to Python's), and a batch stops at
    max_batch reads or MAX_SEGMENTS packets, whichever comes first, in both loops."""
    pkt = ipv4(udp(payload_of(45)), 17)
    ((first, *_), *_), _ = _read_all([needs_csum(pkt, 17)], compiled=True, vnet=True)
    pseudo = first[12:20] + struct.pack(">BBH", 0, 17, len(first) - 20)
    total = sum(struct.unpack(f">{(len(pseudo + first[20:]) + 1) // 2}H",
                              (pseudo + first[20:]).ljust(len(pseudo + first[20:]) + 1 & ~1, b"\0")))  # fmt: skip
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF
    small = [o.ZERO_VNET_HDR + pkt] * 150
    for compiled in (False, True):
        batches, drops = _read_all(small, compiled=compiled, vnet=True, max_batch=64)
        assert [len(b) for b in batches] == [64, 64, 22] and drops == 0
    # 30 super-packets of 45 segments: the batch ends once MAX_SEGMENTS packets are in hand.
    big = tso(ipv4(tcp(1, 0x10, payload_of(45 * 1000)), 6), o.GSO_TCPV4, 1000)
    for compiled in (False, True):
        batches, _ = _read_all([big] * 30, compiled=compiled, vnet=True, max_batch=64)
        assert [len(b) for b in batches] == [1035, 315]


def test_outcome_numbers_agree_with_the_module():
    from tunnelpy.io import _segments

    assert (tun._READ_SUPER, tun._READ_ERROR) == (_segments.READ_SUPER, _segments.READ_ERROR)


def test_compiled_read_errors():
    """A closed fd raises as os.read does; a bad buffer size is refused before any read."""
    a, b = _pair([b"x" * 20])
    fd = os.dup(b.fileno())
    dev = tun.Tun.adopt(fd, "t0", vnet_hdr=False)
    os.close(fd)
    with pytest.raises(OSError) as e:
        dev._read_compiled(accel.read_packets, 4)
    assert e.value.errno == errno.EBADF
    with pytest.raises(ValueError):
        accel.read_packets(b.fileno(), [], 1, 1, bytearray(10), True)
    a.close()
    b.close()
