"""Addresses, MTU, link state, routes and policy rules of the tunnel device, through pyroute2.

Everything here is blocking netlink I/O: the daemon calls it from an executor thread with a
synchronous IPRoute (pyroute2's AsyncIPRoute does not work under uvloop).

Routes follow wg-quick: one route per AllowedIPs prefix via the tunnel, in the main table or the
configured `Table`; `Table = off` adds none. A default route (/0) is installed wg-quick style,
in table 51820 (or FwMark's value) with `not fwmark MARK lookup TABLE` and
`lookup main suppress_prefixlength 0` rules, so the encrypted UDP itself, which carries the mark,
keeps using the main table. Routes vanish with the device; the rules are removed explicitly.

Routes go in batches (``sync_routes``): 10^5 AllowedIPs prefixes as 10^5 request/ack round trips
through pyroute2 took about 55 s. Instead the RTM_NEWROUTE/RTM_DELROUTE messages are packed by
hand and written to a raw rtnetlink socket up to ``ROUTE_BATCH`` at a time in one ``send()``;
the kernel handles every message of a send before it returns, and the acks (one per message,
matched by sequence number) are read after. A failed message does not stop the ones after it,
so the route state records exactly the ones the kernel took.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

DEFAULT_ROUTE_TABLE = 51820
RULE_PRIORITY = 32761  # below main (32766), the slot wg-quick's rules usually land in


class NetlinkSetupError(Exception):
    pass


@dataclass
class RouteState:
    """What we added beyond the device itself, so teardown and reloads remove exactly that."""

    routes: set[tuple[Network, int]] = field(default_factory=set)  # (prefix, table)
    rules: list[dict] = field(default_factory=list)


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def configure_device(name: str, mtu: int, addresses: list[Interface]) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NetlinkSetupError(f"interface {name} vanished during setup")
        idx = found[0]
        ipr.link("set", index=idx, mtu=mtu)
        _add_addresses(ipr, idx, name, addresses)
        ipr.link("set", index=idx, state="up")


def _add_addresses(ipr: IPRoute, idx: int, name: str, addresses: Iterable[Interface]) -> None:
    for a in addresses:
        try:
            ipr.addr("add", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
        except NetlinkError as e:
            if e.code != 17:  # EEXIST: already there is fine
                raise NetlinkSetupError(f"cannot add address {a} to {name}: {e}") from None


def _route_table(table: str | None, net: Network, fwmark: int | None) -> int | None:
    """The table a prefix goes in, or None when routes are off."""
    if table is not None and table.lower() == "off":
        return None
    if table is not None and table.lower() != "auto":
        return int(table)
    if net.prefixlen == 0:
        return fwmark or DEFAULT_ROUTE_TABLE
    return 254  # main


def needs_default_route_rules(nets: list[Network], table: str | None) -> bool:
    auto = table is None or table.lower() == "auto"
    return auto and any(n.prefixlen == 0 for n in nets)


# rtnetlink, as <linux/netlink.h> and <linux/rtnetlink.h> spell it
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
RTPROT_STATIC = 4  # what pyroute2's route("add") used: `ip route` shows "proto static"
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
RTN_UNICAST = 1
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
ROUTE_BATCH = 1024  # messages per send(); their acks must fit the receive buffer (see below)
ROUTE_RCVBUF = 8 << 20


def _rta(kind: int, data: bytes) -> bytes:
    pad = -len(data) % 4
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * pad


def _route_message(add: bool, seq: int, net: Network, oif: int, table: int) -> bytes:
    """One RTM_NEWROUTE (create, fail if it exists) or RTM_DELROUTE for `net` on `oif`."""
    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    if add:
        kind, flags = RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        header = struct.pack(
            "=BBBBBBBBI", family, net.prefixlen, 0, 0, table if table < 256 else 0,
            RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0,
        )  # fmt: skip
    else:
        # protocol 0, scope NOWHERE, type 0: match the route whatever made it (as `ip route del`)
        kind, flags = RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK
        header = struct.pack(
            "=BBBBBBBBI", family, net.prefixlen, 0, 0, table if table < 256 else 0,
            0, RT_SCOPE_NOWHERE, 0, 0,
        )  # fmt: skip
    body = (
        header
        + _rta(RTA_DST, net.network_address.packed)
        + _rta(RTA_OIF, struct.pack("=I", oif))
        + _rta(RTA_TABLE, struct.pack("=I", table))
    )
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


class _RouteSocket:
    """A raw rtnetlink socket for batches of route requests; the acks come back by sequence."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        # Acks without a copy of the request: 36 bytes each instead of the whole message.
        with contextlib.suppress(OSError):
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        # Every ack is its own skb (~0.5-1 KiB of buffer accounting): a batch's acks must all
        # fit, or the kernel drops some (ENOBUFS) and the outcome of their requests is unknown.
        # SO_RCVBUFFORCE (CAP_NET_ADMIN, which route changes need anyway) passes rmem_max.
        for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, ROUTE_RCVBUF)
                break
            except OSError:
                continue
        rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.batch = max(16, min(ROUTE_BATCH, rcvbuf // 2048))
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def run(self, requests: list[tuple[bool, Network, int, int]]) -> list[int]:
        """Send (add, net, oif, table) requests in batches; the errno of each (0: done)."""
        results = [0] * len(requests)
        for start in range(0, len(requests), self.batch):
            chunk = requests[start : start + self.batch]
            first = self.seq + 1
            self.seq += len(chunk)
            self.sock.send(
                b"".join(
                    _route_message(add, first + i, net, oif, table)
                    for i, (add, net, oif, table) in enumerate(chunk)
                )
            )
            self._acks(first, len(chunk), results, start)
        return results

    def _acks(self, first: int, count: int, results: list[int], offset: int) -> None:
        pending = count
        while pending:
            try:
                data = self.sock.recv(1 << 20)
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # acks lost: cannot happen with the sizes above
                    raise NetlinkSetupError(
                        "netlink receive buffer overflow while adding routes"
                    ) from None
                raise
            at = 0
            while at + 16 <= len(data):
                length, kind, _flags, seq = struct.unpack_from("=IHHI", data, at)
                if length < 16:
                    break
                if kind == NLMSG_ERROR and first <= seq < first + count:
                    code = -struct.unpack_from("=i", data, at + 16)[0]
                    results[offset + seq - first] = code
                    pending -= 1
                at += (length + 3) & ~3


def sync_routes(
    name: str, nets: list[Network], table: str | None, fwmark: int | None, state: RouteState
) -> None:
    """Make the routes via `name` equal `nets` (adds new, removes ones no longer wanted)."""
    wanted: set[tuple[Network, int]] = set()
    for n in nets:
        t = _route_table(table, n, fwmark)
        if t is not None:
            wanted.add((n, t))
    try:
        idx = socket.if_nametoindex(name)
    except OSError:
        return  # the device is gone, and its routes with it
    gone = list(state.routes - wanted)
    new = list(wanted - state.routes)
    if not gone and not new:
        return
    rs = _RouteSocket()
    try:
        # Removals first: a prefix that moves to another table must not collide with itself.
        results = rs.run(
            [(False, net, idx, t) for net, t in gone] + [(True, net, idx, t) for net, t in new]
        )
    finally:
        rs.close()
    state.routes.difference_update(gone)  # a failed delete: already gone, nothing to undo
    failed: tuple[Network, int] | None = None
    for (net, t), code in zip(new, results[len(gone) :], strict=True):
        # EEXIST: e.g. the connected route of an interface address: present, as wanted
        if code in (0, errno.EEXIST):
            state.routes.add((net, t))
        elif failed is None:
            failed = (net, code)
    if failed is not None:
        net, code = failed
        raise NetlinkSetupError(
            f"cannot add route {net} via {name}: {os.strerror(code)} (errno {code})"
        )


def add_default_route_rules(fwmark: int, families: set[int], state: RouteState) -> None:
    """wg-quick's policy rules for a /0 route, per address family present."""
    with IPRoute() as ipr:
        for fam in sorted(families):
            rules = [
                dict(family=fam, table=fwmark, fwmark=fwmark, priority=RULE_PRIORITY, flags=2),
                dict(family=fam, table=254, suppress_prefixlen=0, priority=RULE_PRIORITY - 1),
            ]
            for r in rules:
                try:
                    ipr.rule("add", **r)
                except NetlinkError as e:
                    if e.code != 17:
                        raise NetlinkSetupError(f"cannot add policy rule: {e}") from None
                state.rules.append(r)


def remove_rules(state: RouteState) -> None:
    with IPRoute() as ipr:
        for r in reversed(state.rules):
            try:
                ipr.rule("del", **r)
            except NetlinkError:
                pass
    state.rules.clear()


def family_of(net: Network) -> int:
    return socket.AF_INET6 if net.version == 6 else socket.AF_INET


def enslave(name: str, master: str) -> None:
    """`ip link set NAME master MASTER` (the master must exist: we never create it here)."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        midx = ipr.link_lookup(ifname=master)
        if not idx:
            raise NetlinkSetupError(f"interface {name} vanished during setup")
        if not midx:
            raise NetlinkSetupError(f"bridge {master} does not exist")
        try:
            ipr.link("set", index=idx[0], master=midx[0])
        except NetlinkError as e:
            raise NetlinkSetupError(f"cannot enslave {name} to {master}: {e}") from None


def link_kind(name: str) -> str | None:
    """The link kind ("bridge", "tun", …), "" for kindless devices, None when absent."""
    with IPRoute() as ipr:
        links = ipr.get_links(ifname=name)
        if not links:
            return None
        info = links[0].get_attr("IFLA_LINKINFO")
        return (info.get_attr("IFLA_INFO_KIND") if info else None) or ""


def set_mtu(name: str, mtu: int) -> None:
    """`ip link set NAME mtu MTU` on a running device (gone already: nothing to do)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("set", index=found[0], mtu=mtu)


def set_addresses(name: str, old: Iterable[Interface], new: Iterable[Interface]) -> None:
    """Make the device's configured addresses go from ``old`` to ``new`` (others untouched)."""
    new = tuple(new)
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        idx = found[0]
        for a in set(old) - set(new):
            with contextlib.suppress(NetlinkError):
                ipr.addr("del", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
        _add_addresses(ipr, idx, name, new)
