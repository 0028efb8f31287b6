"""Follow our TUN's MTU by rtnetlink, also after the TUN moved to another network namespace.

Theory of operation
-------------------
The MTU of the TUN may change at any time (``ip link set wg0 mtu 34816``; wg-quick sets it
right after the daemon started): the engine pads transport plaintexts per the current MTU and
the worker processes are started with it, so the daemon must hear of it. A raw NETLINK_ROUTE
socket joined to RTMGRP_LINK receives an RTM_NEWLINK for every link change in its namespace;
:meth:`LinkWatch.on_readable` picks those of our link and reports a changed IFLA_MTU.

The wireguard.com/netns recipe moves the TUN into a container's namespace
(``ip link set wg0 netns X``) while the daemon and its UDP socket stay where they started.
The daemon's namespace then sees an RTM_DELLINK for our index, exactly as for a deletion. A
deletion also makes the TUN's file descriptor fail with EBADFD (the data path handles that);
a move does not, and ``TUNGETDEVNETNS`` on the TUN's fd returns the namespace the device is in
now. The watch then opens its netlink socket *inside* that namespace — setns(2) in a
short-lived thread, since it changes only the calling thread's namespace and a socket stays in
the namespace it was created in — and asks for the link by name, so it learns the new index
(it may change on a move) and the MTU there. Moving the TUN back works the same way.

Everything read here is parsed defensively (lengths checked, unknown messages skipped): a short
or odd message is ignored, never raised.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable

log = logging.getLogger("tunnelpyd")

RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST = 1
IFLA_IFNAME, IFLA_MTU = 3, 4
TUNGETDEVNETNS = 0x54E3  # _IO('T', 227), Linux 5.2+
CLONE_NEWNET = 0x40000000
_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_RTA = struct.Struct("=HH")


def parse_links(data: bytes) -> list[tuple[int, int, str | None, int | None]]:
    """(message type, ifindex, IFLA_IFNAME, IFLA_MTU) of each RTM_NEWLINK/RTM_DELLINK in a
    netlink read; anything malformed ends the parse quietly."""
    out: list[tuple[int, int, str | None, int | None]] = []
    off, n = 0, len(data)
    while off + _NLMSG.size <= n:
        length, kind = _NLMSG.unpack_from(data, off)[:2]
        if length < _NLMSG.size or off + length > n:
            break
        body = off + _NLMSG.size
        if kind in (RTM_NEWLINK, RTM_DELLINK) and length >= _NLMSG.size + _IFINFO.size:
            index = _IFINFO.unpack_from(data, body)[2]
            name: str | None = None
            mtu: int | None = None
            a, end = body + _IFINFO.size, off + length
            while a + _RTA.size <= end:
                alen, atype = _RTA.unpack_from(data, a)
                if alen < _RTA.size or a + alen > end:
                    break
                value = data[a + _RTA.size : a + alen]
                if atype == IFLA_MTU and len(value) >= 4:
                    mtu = struct.unpack_from("=I", value)[0]
                elif atype == IFLA_IFNAME:
                    name = value.split(b"\0", 1)[0].decode(errors="replace")
                a += (alen + 3) & ~3
            out.append((kind, index, name, mtu))
        off += (length + 3) & ~3
    return out


def getlink_request(name: str, seq: int = 1) -> bytes:
    """RTM_GETLINK for one link by name (the answer is an RTM_NEWLINK like any event)."""
    raw = name.encode() + b"\0"
    attr = _RTA.pack(_RTA.size + len(raw), IFLA_IFNAME) + raw
    attr += b"\0" * (-len(attr) % 4)
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr
    return _NLMSG.pack(_NLMSG.size + len(body), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body


def _netlink_socket() -> socket.socket:
    s = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
        socket.NETLINK_ROUTE,
    )  # fmt: skip
    s.bind((0, RTMGRP_LINK))
    return s


def _netlink_socket_in(netns_fd: int) -> socket.socket:
    """A netlink socket created in the namespace ``netns_fd`` (OSError if it cannot be)."""
    result: list[socket.socket | OSError] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(netns_fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            result.append(OSError(e, os.strerror(e)))
            return
        try:
            result.append(_netlink_socket())
        except OSError as e:
            result.append(e)

    t = threading.Thread(target=run, name="tunnelpy-setns", daemon=True)
    t.start()
    t.join()
    r = result[0]
    if isinstance(r, OSError):
        raise r
    return r


def device_netns(tun_fd: int) -> int | None:
    """A new fd of the namespace the TUN is in now, or None (deleted, or a kernel before 5.2)."""
    try:
        return fcntl.ioctl(tun_fd, TUNGETDEVNETNS)
    except OSError:
        return None


class LinkWatch:
    """Reports our link's MTU to ``on_mtu`` whenever it changes, wherever the link is."""

    def __init__(self, name: str, tun_fd: int, on_mtu: Callable[[int], None]) -> None:
        self.name = name
        self.tun_fd = tun_fd
        self.on_mtu = on_mtu
        self.index: int | None = None  # learnt from the answer to our request by name
        self.mtu: int | None = None
        self.sock: socket.socket | None = None
        self.moves = 0  # namespaces the link moved to while we watched

    def open(self) -> socket.socket:
        """Watch in the namespace the TUN is in now (the daemon's at start-up)."""
        ns = device_netns(self.tun_fd)
        try:
            sock = _netlink_socket_in(ns) if ns is not None else _netlink_socket()
        finally:
            if ns is not None:
                os.close(ns)
        self.close()
        self.sock = sock
        self.index = None
        sock.send(getlink_request(self.name))
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def on_readable(self) -> bool:
        """Read what is queued; True when the link left the socket's namespace (then call
        :meth:`open` again to follow it, if it still exists)."""
        left = False
        while self.sock is not None:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # events were lost: ask afresh
                    self.index = None
                    self.sock.send(getlink_request(self.name))
                    continue
                break
            if not data:
                break
            for kind, index, name, mtu in parse_links(data):
                if self.index is None and name == self.name and kind == RTM_NEWLINK:
                    self.index = index
                if index != self.index:
                    continue
                if kind == RTM_DELLINK:
                    left = True
                    self.index = None
                    continue
                if name is not None:
                    self.name = name  # `ip link set … name …` renames follow
                if mtu is not None and mtu != self.mtu:
                    self.mtu = mtu
                    self.on_mtu(mtu)
        return left
