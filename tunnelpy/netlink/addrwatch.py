"""Hear local addresses disappear, so sticky sources stop naming them at once.

Theory of operation
-------------------
Replies to a peer leave from the local address its last authenticated datagram arrived at
(the sticky source, io/udp.py). When that address is removed from the host, sending from it
usually fails (ENETUNREACH, EINVAL) and the socket falls back to the kernel's choice. But not
always: an address inside a *local route* stays usable as a source after it was removed —
all of 127/8 on ``lo`` is local, so ``ip addr del 127.0.0.1/8`` followed by ``ip addr add
127.212.121.99/8`` still lets 127.0.0.1 send, and the peer would never learn the new address
(the kernel module checks that a source is still configured, ``inet_confirm_addr``, for the
same reason). So the daemon also listens for RTM_DELADDR (RTMGRP_IPV4_IFADDR and
RTMGRP_IPV6_IFADDR) in the namespace of its UDP socket and forgets every sticky source with
that address.

Messages are parsed defensively: lengths checked, anything odd skipped, nothing raised.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x10, 0x100
RTM_DELADDR = 21
IFA_ADDRESS, IFA_LOCAL = 1, 2
_NLMSG = struct.Struct("=IHHII")
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTA = struct.Struct("=HH")


def parse_deleted(data: bytes) -> list[str]:
    """The addresses (inet_ntop text) of every RTM_DELADDR in a netlink read."""
    out: list[str] = []
    off, n = 0, len(data)
    while off + _NLMSG.size <= n:
        length, kind = _NLMSG.unpack_from(data, off)[:2]
        if length < _NLMSG.size or off + length > n:
            break
        body = off + _NLMSG.size
        if kind == RTM_DELADDR and length >= _NLMSG.size + _IFADDR.size:
            family = data[body]
            width = 4 if family == socket.AF_INET else 16 if family == socket.AF_INET6 else 0
            found: dict[int, bytes] = {}
            a, end = body + _IFADDR.size, off + length
            while width and a + _RTA.size <= end:
                alen, atype = _RTA.unpack_from(data, a)
                if alen < _RTA.size or a + alen > end:
                    break
                if atype in (IFA_ADDRESS, IFA_LOCAL) and alen == _RTA.size + width:
                    found[atype] = data[a + _RTA.size : a + alen]
                a += (alen + 3) & ~3
            # IPv4 point-to-point: IFA_ADDRESS is the peer's, IFA_LOCAL ours.
            packed = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
            if packed is not None:
                out.append(socket.inet_ntop(family, packed))
        off += (length + 3) & ~3
    return out


class AddressWatch:
    """Calls ``on_deleted(address)`` for every local address removed in this namespace."""

    def __init__(self, on_deleted: Callable[[str], None]) -> None:
        self.on_deleted = on_deleted
        self.sock: socket.socket | None = None

    def open(self) -> socket.socket:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            socket.NETLINK_ROUTE,
        )  # fmt: skip
        try:
            sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        return sock

    def on_readable(self) -> None:
        while self.sock is not None:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                return  # ENOBUFS: a lost event costs only a late fall-back (send errors)
            if not data:
                return
            for address in parse_deleted(data):
                self.on_deleted(address)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
