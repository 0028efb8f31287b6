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

from . import rtnl

RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x10, 0x100
RTM_DELADDR = 21
IFA_ADDRESS, IFA_LOCAL = 1, 2
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index


def parse_deleted(data: bytes) -> list[str]:
    """The addresses (inet_ntop text) of every RTM_DELADDR in a netlink read."""
    out: list[str] = []
    for kind, body, end in rtnl.messages(data):
        if kind != RTM_DELADDR or end - body < _IFADDR.size:
            continue
        family = data[body]
        width = 4 if family == socket.AF_INET else 16 if family == socket.AF_INET6 else 0
        if not width:
            continue
        found: dict[int, bytes] = {}
        for atype, v, vend in rtnl.attributes(data, body + _IFADDR.size, end):
            if atype in (IFA_ADDRESS, IFA_LOCAL) and vend - v == width:
                found[atype] = data[v:vend]
        # IPv4 point-to-point: IFA_ADDRESS is the peer's, IFA_LOCAL ours.
        packed = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
        if packed is not None:
            out.append(socket.inet_ntop(family, packed))
    return out


class AddressWatch:
    """Calls ``on_deleted(address)`` for every local address removed in this namespace."""

    def __init__(self, on_deleted: Callable[[str], None]) -> None:
        self.on_deleted = on_deleted
        self.sock: socket.socket | None = None

    def open(self) -> socket.socket:
        sock = rtnl.event_socket(RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
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
