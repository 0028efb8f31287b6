"""Addresses, MTU, link state, routes and policy rules of the tunnel device, through pyroute2.

Everything here is blocking netlink I/O: the daemon calls it from an executor thread with a
synchronous IPRoute (pyroute2's AsyncIPRoute does not work under uvloop).

Routes follow wg-quick: one route per AllowedIPs prefix via the tunnel, in the main table or the
configured `Table`; `Table = off` adds none. A default route (/0) is installed wg-quick style,
in table 51820 (or FwMark's value) with `not fwmark MARK lookup TABLE` and
`lookup main suppress_prefixlength 0` rules, so the encrypted UDP itself, which carries the mark,
keeps using the main table. Routes vanish with the device; the rules are removed explicitly.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
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


def sync_routes(
    name: str, nets: list[Network], table: str | None, fwmark: int | None, state: RouteState
) -> None:
    """Make the routes via `name` equal `nets` (adds new, removes ones no longer wanted)."""
    wanted: set[tuple[Network, int]] = set()
    for n in nets:
        t = _route_table(table, n, fwmark)
        if t is not None:
            wanted.add((n, t))
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        idx = found[0]
        for net, t in sorted(state.routes - wanted, key=str):
            try:
                ipr.route("del", dst=str(net), oif=idx, table=t)
            except NetlinkError:
                pass  # already gone (e.g. removed by hand): nothing to undo
            state.routes.discard((net, t))
        for net, t in sorted(wanted - state.routes, key=str):
            try:
                ipr.route("add", dst=str(net), oif=idx, table=t)
            except NetlinkError as e:
                if e.code != 17:  # EEXIST: e.g. the connected route of an interface address
                    raise NetlinkSetupError(f"cannot add route {net} via {name}: {e}") from None
            state.routes.add((net, t))


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
