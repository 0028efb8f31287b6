"""RTM_DELADDR as netlink/addrwatch.py reads it (v4 point-to-point, v6, odd and truncated)."""

from __future__ import annotations

import random
import socket
import struct

from tunnelpy.netlink import addrwatch as aw


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _deladdr(family: int, *attrs: tuple[int, str], kind: int = aw.RTM_DELADDR) -> bytes:
    body = struct.pack("=BBBBI", family, 24, 0, 0, 3)
    for t, text in attrs:
        body += _attr(t, socket.inet_pton(family, text))
    body += _attr(8, b"lo\0")  # IFA_LABEL, ignored
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_deleted_addresses_v4_v6_and_point_to_point():
    data = (
        _deladdr(socket.AF_INET, (aw.IFA_ADDRESS, "127.0.0.1"), (aw.IFA_LOCAL, "127.0.0.1"))
        + _deladdr(socket.AF_INET, (aw.IFA_ADDRESS, "10.0.0.2"), (aw.IFA_LOCAL, "10.0.0.1"))
        + _deladdr(socket.AF_INET6, (aw.IFA_ADDRESS, "fd00::1"))
        + _deladdr(socket.AF_INET, (aw.IFA_LOCAL, "192.0.2.1"), kind=20)  # RTM_NEWADDR
    )
    assert aw.parse_deleted(data) == ["127.0.0.1", "10.0.0.1", "fd00::1"]


def test_malformed_never_raises():
    good = _deladdr(socket.AF_INET6, (aw.IFA_ADDRESS, "fd00::1")) * 2
    r = random.Random(1)
    for cut in range(len(good)):
        aw.parse_deleted(good[:cut])
    for _ in range(3000):
        b = bytearray(good)
        for _ in range(r.randrange(1, 5)):
            b[r.randrange(len(b))] = r.randrange(256)
        for text in aw.parse_deleted(bytes(b)):
            assert isinstance(text, str)
