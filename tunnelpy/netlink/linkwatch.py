"""Follow our TUN's MTU by rtnetlink, also after the TUN moved to another network namespace.

Theory of operation
-------------------
The MTU of the TUN may change at any time (``ip link set wg0 mtu 34816``; wg-quick sets it
right after the daemon started): the engine pads transport plaintexts per the current MTU and
the worker processes are started with it, so the daemon must hear of it. A raw NETLINK_ROUTE
socket joined to RTMGRP_LINK receives an RTM_NEWLINK for every link change in its namespace;
:meth:`LinkWatch.on_readable` picks those of our link and reports a changed IFLA_MTU. The link
is found first by name (an RTM_GETLINK whose answer gives its index).

The wireguard.com/netns recipe moves the TUN into a container's namespace
(``ip link set wg0 netns X``) while the daemon and its UDP socket stay where they started. The
socket has NETLINK_LISTEN_ALL_NSID set, so it also hears link events of every namespace that has
an id in ours, each tagged with that id in a cmsg (no tag: our own namespace). A move shows as
an RTM_DELLINK of our link carrying IFLA_NEW_NETNSID and IFLA_NEW_IFINDEX — where it went and
its index there — so the watch keeps following it by (namespace id, index); a deletion is an
RTM_DELLINK without them. The kernel checks the right to hear other namespaces against the
credentials the socket was opened with, so this keeps working after the daemon dropped to
``User =`` (no setns(2), no CAP_SYS_ADMIN). A move onwards from a foreign namespace reports the
destination in that namespace's numbering, not ours, and the destination may have no id in
ours at all (then we would hear nothing from it). The watch then asks the TUN where it is
(``TUNGETDEVNETNS`` gives an fd of its namespace), gives that namespace an id in ours if it has
none (RTM_NEWNSID with NETNSA_FD; CAP_NET_ADMIN, which a dropped daemon keeps) and asks for the
link there by name (RTM_GETLINK with IFLA_TARGET_NETNSID).

Everything read here is parsed defensively (lengths checked, unknown messages skipped): a short
or odd message is ignored, never raised.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import rtnl

log = logging.getLogger("tunnelpyd")

RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWNSID, RTM_GETNSID = 88, 90
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
IFLA_IFNAME, IFLA_MTU, IFLA_NEW_NETNSID, IFLA_TARGET_NETNSID, IFLA_NEW_IFINDEX = 3, 4, 45, 46, 49
NETNSA_NSID, NETNSA_FD = 1, 3
TUNGETDEVNETNS = 0x54E3  # _IO('T', 227), Linux 5.2+
SOL_NETLINK = 270
NETLINK_LISTEN_ALL_NSID = 8
_NLMSG = rtnl.NLMSG
_IFINFO = struct.Struct("=BxHiII")
_I32 = struct.Struct("=i")
_CMSG_SPACE = socket.CMSG_SPACE(4)


@dataclass(frozen=True, slots=True)
class LinkMsg:
    """One RTM_NEWLINK/RTM_DELLINK, the attributes the watch needs."""

    kind: int
    index: int
    name: str | None = None
    mtu: int | None = None
    new_nsid: int | None = None  # RTM_DELLINK of a move: where it went, in the sender's ids
    new_index: int | None = None
    target_nsid: int | None = None  # the answer to a request for another namespace's link


def parse_links(data: bytes) -> list[LinkMsg]:
    """Every RTM_NEWLINK/RTM_DELLINK in a netlink read; anything malformed ends the parse."""
    out: list[LinkMsg] = []
    for kind, body, end in rtnl.messages(data):
        if kind not in (RTM_NEWLINK, RTM_DELLINK) or end - body < _IFINFO.size:
            continue
        index = _IFINFO.unpack_from(data, body)[2]
        ints: dict[int, int] = {}
        name: str | None = None
        for atype, v, vend in rtnl.attributes(data, body + _IFINFO.size, end):
            if atype == IFLA_IFNAME:
                name = data[v:vend].split(b"\0", 1)[0].decode(errors="replace")
            elif atype in (IFLA_MTU, IFLA_NEW_NETNSID, IFLA_NEW_IFINDEX, IFLA_TARGET_NETNSID):
                if vend - v >= 4:
                    ints[atype] = _I32.unpack_from(data, v)[0]
        mtu = ints.get(IFLA_MTU)
        out.append(LinkMsg(
            kind, index, name, mtu & 0xFFFFFFFF if mtu is not None else None,
            ints.get(IFLA_NEW_NETNSID), ints.get(IFLA_NEW_IFINDEX),
            ints.get(IFLA_TARGET_NETNSID),
        ))  # fmt: skip
    return out


def getlink_request(name: str, seq: int = 1, nsid: int | None = None) -> bytes:
    """RTM_GETLINK for one link by name, in our namespace or the one with id ``nsid`` (the
    answer is an RTM_NEWLINK like any event, tagged IFLA_TARGET_NETNSID for another one)."""
    attrs = rtnl.attribute(IFLA_IFNAME, name.encode() + b"\0")
    if nsid is not None:
        attrs += rtnl.attribute(IFLA_TARGET_NETNSID, _I32.pack(nsid))
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attrs
    return _NLMSG.pack(_NLMSG.size + len(body), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body


def _nsid_request(kind: int, netns_fd: int, seq: int) -> bytes:
    attrs = rtnl.attribute(NETNSA_FD, struct.pack("=I", netns_fd))
    if kind == RTM_NEWNSID:
        attrs += rtnl.attribute(NETNSA_NSID, _I32.pack(-1))  # -1: the kernel picks a free id
    body = struct.pack("=B3x", socket.AF_UNSPEC) + attrs
    flags = NLM_F_REQUEST | (NLM_F_ACK if kind == RTM_NEWNSID else 0)
    return _NLMSG.pack(_NLMSG.size + len(body), kind, flags, seq, 0) + body


def _parse_nsid(data: bytes) -> int | None:
    """NETNSA_NSID of an RTM_NEWNSID answer (None: none, or an error)."""
    for kind, body, end in rtnl.messages(data):
        if kind != RTM_NEWNSID:
            return None
        for atype, v, vend in rtnl.attributes(data, body + 4, end):  # after struct rtgenmsg
            if atype == NETNSA_NSID and vend - v >= 4:
                nsid: int = _I32.unpack_from(data, v)[0]
                return nsid if nsid >= 0 else None
        return None
    return None


def nsid_for(netns_fd: int) -> int | None:
    """The id our namespace has for the namespace ``netns_fd``, assigned now if it has none
    (RTM_GETNSID, then RTM_NEWNSID): only namespaces with an id are heard (None if refused)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as s:  # fmt: skip
        s.settimeout(1.0)
        try:
            for seq, kind in enumerate((RTM_GETNSID, RTM_NEWNSID, RTM_GETNSID), 1):
                s.send(_nsid_request(kind, netns_fd, seq))
                answer = s.recv(4096)  # an RTM_NEWNSID, or an ack/error for NEWNSID
                if kind == RTM_GETNSID:
                    nsid = _parse_nsid(answer)
                    if nsid is not None:
                        return nsid
        except OSError:
            return None
    return None


def device_netns(tun_fd: int) -> int | None:
    """A new fd of the namespace the TUN is in now, or None (deleted, or a kernel before 5.2)."""
    try:
        return fcntl.ioctl(tun_fd, TUNGETDEVNETNS)
    except OSError:
        return None


def nsid_of(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The namespace id a message came from (None: our own namespace)."""
    for level, kind, data in ancdata:
        if level == SOL_NETLINK and kind == NETLINK_LISTEN_ALL_NSID and len(data) >= 4:
            nsid: int = _I32.unpack_from(data)[0]
            return None if nsid < 0 else nsid
    return None


_ANY = -2  # "from whichever namespace": after a move onwards from a foreign namespace


class LinkWatch:
    """Reports our link's MTU to ``on_mtu`` whenever it changes, wherever the link is."""

    def __init__(self, name: str, on_mtu: Callable[[int], None], tun_fd: int | None = None) -> None:
        self.name = name
        self.on_mtu = on_mtu
        self.tun_fd = tun_fd  # to ask the kernel where the link went (TUNGETDEVNETNS)
        self._relocate = False
        self._pending_index: int | None = None
        self.where: int | None = None  # namespace id of the link (None: ours, _ANY: unknown)
        self.index: int | None = None  # learnt from the answer to our request by name
        self.mtu: int | None = None
        self.sock: socket.socket | None = None
        self.moves = 0  # namespaces the link moved to while we watched
        self.gone = False  # deleted: nothing more to follow
        self.all_nsid = False  # the kernel lets us hear other namespaces

    def open(self) -> socket.socket:
        """Start watching (OSError if netlink is unavailable)."""
        sock = rtnl.event_socket(RTMGRP_LINK)
        try:
            try:
                sock.setsockopt(SOL_NETLINK, NETLINK_LISTEN_ALL_NSID, 1)
                self.all_nsid = True
            except OSError:
                log.info("%s: this kernel cannot follow the link into other namespaces", self.name)
            sock.send(getlink_request(self.name))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def on_readable(self) -> None:
        """Read what is queued and follow the link (see the module docstring)."""
        while self.sock is not None:
            try:
                data, anc, _, _ = self.sock.recvmsg(65536, _CMSG_SPACE)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS and self.where is None:
                    # Events were lost: ask afresh (only possible while the link is here).
                    self.index = None
                    with contextlib.suppress(OSError):
                        self.sock.send(getlink_request(self.name))
                    continue
                return
            if not data:
                return
            nsid = nsid_of(anc)
            for m in parse_links(data):
                self._on_link(m, nsid if m.target_nsid is None else m.target_nsid)
            if self._relocate:
                self._relocate = False
                self._locate()

    def _locate(self) -> None:
        """After a move onwards from a foreign namespace: ask the TUN where it is, give that
        namespace an id in ours (so its events reach us) and ask for the link there."""
        if self.tun_fd is None or self.sock is None:
            return
        fd = device_netns(self.tun_fd)
        if fd is None:
            return
        try:
            here = os.stat("/proc/self/ns/net")
            there = os.fstat(fd)
            if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
                self.where = None  # back in our own namespace: its events carry no id
                with contextlib.suppress(OSError):
                    self.sock.send(getlink_request(self.name))
                return
            nsid = nsid_for(fd)
        finally:
            os.close(fd)
        if nsid is None:
            log.info("%s: cannot follow the link into its new namespace", self.name)
            return
        self.where = nsid
        with contextlib.suppress(OSError):
            self.sock.send(getlink_request(self.name, nsid=nsid))

    def _on_link(self, m: LinkMsg, nsid: int | None) -> None:
        if self.gone:
            return
        if self.index is None:
            if m.kind != RTM_NEWLINK or m.name != self.name:
                return
            if self.where != _ANY and nsid != self.where:
                return
            if self.where == _ANY and self._pending_index not in (None, m.index):
                return
            if self.where == _ANY:
                self.where = nsid
            self.index = m.index
        elif m.index != self.index or nsid != self.where:
            return
        if m.kind == RTM_DELLINK:
            if m.new_index is None:
                self.gone = True  # deleted (the TUN's fd fails with EBADFD too)
                return
            self.moves += 1
            if self.where is None and m.new_nsid is not None:
                self.where, self.index = m.new_nsid, m.new_index  # ids are ours: exact
            else:
                # The sender's numbering, not ours: find it again (by name and index, from
                # any namespace; and ask the TUN which namespace that is, see _locate).
                self.where, self.index = _ANY, None
                self._pending_index = m.new_index
                self._relocate = True
            log.info("%s moved to another network namespace; following it there", self.name)
            return
        if m.name is not None:
            self.name = m.name  # `ip link set … name …` renames follow
        if m.mtu is not None and m.mtu != self.mtu:
            self.mtu = m.mtu
            self.on_mtu(m.mtu)
