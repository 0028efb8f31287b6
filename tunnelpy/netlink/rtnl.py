"""The few rtnetlink pieces the daemon's own watches share (netlink/linkwatch.py, addrwatch.py).

pyroute2 does the configuration work; these watches only *listen*, on the event loop, to a
handful of message types, so they read the wire format directly: a netlink message is a 16-byte
header (length, type, flags, seq, pid) then a family header and 4-byte-aligned attributes
(length, type, value). Everything here is defensive: a short or inconsistent length ends the
walk, nothing raises.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

NLMSG = struct.Struct("=IHHII")
RTA = struct.Struct("=HH")


def messages(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(type, body offset, end offset) of each whole message in a netlink read."""
    off, n = 0, len(data)
    while off + NLMSG.size <= n:
        length, kind = NLMSG.unpack_from(data, off)[:2]
        if length < NLMSG.size or off + length > n:
            return
        yield kind, off + NLMSG.size, off + length
        off += (length + 3) & ~3


def attributes(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, value offset, value end) of each attribute between ``start`` and ``end``."""
    a = start
    while a + RTA.size <= end:
        alen, atype = RTA.unpack_from(data, a)
        if alen < RTA.size or a + alen > end:
            return
        yield atype, a + RTA.size, a + alen
        a += (alen + 3) & ~3


def attribute(kind: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    raw = RTA.pack(RTA.size + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def event_socket(groups: int) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket joined to ``groups`` (OSError if refused)."""
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
        socket.NETLINK_ROUTE,
    )  # fmt: skip
    try:
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock
