"""The topology plan: site.conf's topology sections become an ordered list of steps (pure data).

Theory of operation
-------------------
``build(conf)`` turns ``Config.topology`` (plus the segments' ``Bridge =`` lines) into a
``Plan``: a tuple of frozen ``Step`` records in the order they must happen. Nothing here touches
the host, so the order and the rendered commands are unit-tested without root; ``topology.py``
executes the same steps through pyroute2, and ``tunnelpy plan`` prints them as the ``ip`` /
``bridge`` / ``teamd`` commands a person would type (``commands(step)``).

The order is fixed by phases, and inside a phase by file order:

1. ``netns``   namespaces named by any ``Namespace =`` (created only if missing);
2. ``link``    links, parents before children (a stable topological sort over ``Link =``); a
               child is created beside its parent and, when its ``Namespace`` differs, followed
               at once by a ``move`` (so grandchildren find it where they expect it); a team is a
               ``teamd`` step instead (teamd creates the device);
3. ``master``  ports enslaved to their bridge, bond or team (teamd notices ports added by
               netlink); every master exists by now; bond ``primary`` after its ports;
4. ``up``      every link created here, then pre-existing ports (their old state is restored);
5. ``address`` addresses last, when the links they go on are in place.

A step names the namespace it runs in (``ns``; None is tunnelpyd's own) and the config line it
comes from, so an error while applying it points back into the file.

Devices tunnelpyd makes itself (the TUN and the segment TAPs) are ``provided``: they may be
ports or parents, they exist before ``apply`` runs, and the plan never creates or deletes them.
Names that are neither made here nor provided are pre-existing links: they are looked up in the
kernel by ``topology.validate`` and are only enslaved and brought up, never deleted.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tunnelpy import config as cfgmod
from tunnelpy.config import (
    BondConfig,
    BridgeConfig,
    Config,
    IPVLANConfig,
    LinkConfig,
    MACVLANConfig,
    TeamConfig,
    VethConfig,
    VLANConfig,
    VXLANConfig,
)

# Step operations, in the order their phases run.
NETNS = "netns"
LINK = "link"
MOVE = "move"
TEAMD = "teamd"
MASTER = "master"
PRIMARY = "primary"
UP = "up"
ADDRESS = "address"
OPS = (NETNS, LINK, MOVE, TEAMD, MASTER, PRIMARY, UP, ADDRESS)

IPVLAN_MODE_NUMBERS = {"l2": 0, "l3": 1, "l3s": 2}  # IFLA_IPVLAN_MODE (pyroute2 wants the number)
VLAN_PROTOCOL_NUMBERS = {"802.1Q": 0x8100, "802.1ad": 0x88A8}
TEAMD_RUNNERS = cfgmod.TEAM_RUNNERS


@dataclass(frozen=True)
class Step:
    """One thing to do. ``attrs`` holds the op's details as sorted (key, value) pairs of plain
    JSON-able values, so a Step is hashable, comparable and printable."""

    op: str
    name: str  # the interface acted on (for ``netns``: the namespace)
    ns: str | None = None  # where it runs; None: tunnelpyd's own namespace
    attrs: tuple[tuple[str, Any], ...] = ()
    line: int = 0  # the config line it comes from
    what: str = ""  # one human sentence

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def kind(self) -> str | None:
        return self.get("kind")


def _attrs(**kw: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, v) for k, v in kw.items() if v is not None and v != ()))


@dataclass(frozen=True)
class Plan:
    """The ordered steps, plus what ``topology`` needs to validate and undo them."""

    path: str
    interface: str  # tunnelpyd's interface name: the state file is /run/tunnelpy/<interface>.state
    steps: tuple[Step, ...]
    provided: frozenset[str]  # made by tunnelpyd itself before apply: the TUN and the TAPs
    created: tuple[tuple[str | None, str], ...]  # (final namespace, name) of every link made here
    existing: tuple[tuple[str | None, str, int], ...]  # (ns, name, line) of links it only uses

    def __len__(self) -> int:
        return len(self.steps)

    def kinds(self) -> set[tuple[str, str | None]]:
        """(kind, mode) pairs the kernel must support: what ``validate`` probes."""
        found: set[tuple[str, str | None]] = set()
        for step in self.steps:
            if step.op == LINK:
                found.add((step.get("kind"), step.get("mode")))
            elif step.op == TEAMD:
                found.add(("team", None))
        return found

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps if s.op == NETNS)


def _mac(mac: bytes | None) -> str | None:
    return None if mac is None else mac.hex(":")


def _sorted_links(links: Iterable[LinkConfig]) -> list[LinkConfig]:
    """Parents before children, file order otherwise (config has already refused loops)."""
    pending = list(links)
    names = {link.name for link in pending}
    peer_of = {link.peer: link.name for link in pending if isinstance(link, VethConfig)}
    done: set[str] = set()
    out: list[LinkConfig] = []
    while pending:
        for i, link in enumerate(pending):
            parent = link.parent
            owner = peer_of.get(parent, parent) if parent is not None else None
            if owner is None or owner not in names or owner in done:
                out.append(pending.pop(i))
                done.add(link.name)
                break
        else:  # pragma: no cover - config.py rejects dependency loops
            raise ValueError(f"dependency loop among {', '.join(x.name for x in pending)}")
    return out


def build(conf: Config) -> Plan:
    """The plan for ``conf``'s topology. Pure: reads nothing but ``conf``."""
    links = list(conf.topology)
    by_name = {link.name: link for link in links}
    peer_ends = {link.peer: link for link in links if isinstance(link, VethConfig)}
    provided = frozenset({conf.interface.name} | {s.device for s in conf.segments})
    final: dict[str, str | None] = {}  # where each link made here ends up

    def where(name: str) -> str | None:
        if name in final:
            return final[name]
        if name in peer_ends:
            return peer_ends[name].namespace
        return None  # pre-existing links and the devices tunnelpyd provides live in its namespace

    steps: list[Step] = []
    existing: dict[tuple[str | None, str], int] = {}

    # 1. namespaces, in order of first mention
    seen_ns: list[str] = []
    for link in links:
        if link.namespace is not None and link.namespace not in seen_ns:
            seen_ns.append(link.namespace)
            steps.append(
                Step(NETNS, link.namespace, line=link.line, what=f"namespace {link.namespace}")
            )

    # 2. links, parents first
    created: list[tuple[str | None, str]] = []
    for link in _sorted_links(links):
        parent = link.parent
        if parent is not None and parent not in by_name and parent not in peer_ends:
            if parent not in provided:
                existing.setdefault((None, parent), link.line)
        if isinstance(link, TeamConfig):
            final[link.name] = link.namespace
            steps.append(
                Step(
                    TEAMD,
                    link.name,
                    link.namespace,
                    _attrs(kind="team", runner=link.runner, mtu=link.mtu),
                    link.line,
                    f"team {link.name} ({link.runner} runner) through teamd",
                )
            )
            created.append((link.namespace, link.name))
            continue
        home = where(parent) if parent is not None else link.namespace
        if isinstance(link, VethConfig):
            home = None
        steps.append(_link_step(link, home))
        final[link.name] = home
        created.append((home, link.name))
        if isinstance(link, VethConfig):
            created.append((link.namespace, link.peer))
            final[link.peer] = link.namespace
        elif parent is not None and link.namespace is not None and link.namespace != home:
            steps.append(
                Step(
                    MOVE,
                    link.name,
                    home,
                    _attrs(to=link.namespace),
                    link.line,
                    f"move {link.name} into namespace {link.namespace}",
                )
            )
            final[link.name] = link.namespace
            created[-1] = (link.namespace, link.name)

    # 3. ports: the masters' Ports lists, then Master = lines, then segment TAPs
    enslave: list[tuple[str, str, int]] = []  # (port, master, line)
    for link in links:
        enslave += [(port, link.name, link.line) for port in link.ports]
    for link in links:
        if link.master is not None and (link.name, link.master) not in {
            (p, m) for p, m, _ in enslave
        }:
            enslave.append((link.name, link.master, link.line))
    for seg in conf.segments:
        if seg.bridge is not None:
            enslave.append((seg.device, seg.bridge, seg.line))
    made = set(final)
    for port, master, line in enslave:
        ns = where(master) if master in made else where(port)
        master_kind = by_name[master].kind if master in by_name else None
        if port not in made and port not in provided:
            existing.setdefault((ns, port), line)
        if master not in made:
            existing.setdefault((ns, master), line)
        steps.append(
            Step(
                MASTER,
                port,
                ns,
                _attrs(master=master, master_kind=master_kind),
                line,
                f"{port} into {master_kind or 'master'} {master}",
            )
        )
    for link in links:
        if isinstance(link, BondConfig) and link.primary is not None:
            steps.append(
                Step(
                    PRIMARY,
                    link.name,
                    final[link.name],
                    _attrs(primary=link.primary),
                    link.line,
                    f"{link.primary} is the primary port of {link.name}",
                )
            )

    # 4. up: what was made here, then the pre-existing ports it uses
    for ns, name in created:
        steps.append(Step(UP, name, ns, line=_line_of(links, name), what=f"{name} up"))
    for port, master, line in enslave:
        if port not in made and port not in provided:
            steps.append(Step(UP, port, where(master) if master in made else None, line=line,
                              what=f"{port} up (pre-existing port)"))  # fmt: skip

    # 5. addresses
    for link in links:
        for address in link.addresses:
            steps.append(_address_step(link.name, final[link.name], address, link.line))
        if isinstance(link, VethConfig):
            for address in link.peer_addresses:
                steps.append(_address_step(link.peer, link.namespace, address, link.line))

    return Plan(
        path=conf.path,
        interface=conf.interface.name,
        steps=tuple(steps),
        provided=provided,
        created=tuple(created),
        existing=tuple((ns, name, line) for (ns, name), line in existing.items()),
    )


def _line_of(links: list[LinkConfig], name: str) -> int:
    for link in links:
        if link.name == name or (isinstance(link, VethConfig) and link.peer == name):
            return link.line
    return 0


def _address_step(name: str, ns: str | None, address: cfgmod.IPInterface, line: int) -> Step:
    return Step(ADDRESS, name, ns, _attrs(address=str(address)), line, f"{address} on {name}")


def _link_step(link: LinkConfig, ns: str | None) -> Step:
    common: dict[str, Any] = {"kind": link.kind, "mtu": link.mtu}
    what = f"{link.kind} {link.name}"
    if isinstance(link, BridgeConfig):
        common.update(stp=link.stp, vlan_filtering=link.vlan_filtering)
    elif isinstance(link, VethConfig):
        common.update(peer=link.peer, peer_ns=link.namespace)
        what += f" <-> {link.peer}" + (f" (in {link.namespace})" if link.namespace else "")
    elif isinstance(link, VLANConfig):
        common.update(link=link.link, vlan_id=link.vlan_id, protocol=link.protocol)
        what += f" on {link.link}, VLAN {link.vlan_id}"
    elif isinstance(link, VXLANConfig):
        common.update(
            vni=link.vni,
            remote=None if link.remote is None else str(link.remote),
            group=None if link.group is None else str(link.group),
            local=None if link.local is None else str(link.local),
            dst_port=link.dst_port,
            link=link.link,
        )
        what += f", VNI {link.vni}"
    elif isinstance(link, MACVLANConfig):
        common.update(
            link=link.link,
            mode=link.mode,
            source_macs=tuple(m.hex(":") for m in link.source_macs),
            mac=_mac(link.mac),
        )
        what += f" on {link.link}, mode {link.mode}"
    elif isinstance(link, IPVLANConfig):
        common.update(link=link.link, mode=link.mode)
        what += f" on {link.link}, mode {link.mode}"
    elif isinstance(link, BondConfig):
        common.update(mode=link.mode, miimon=link.miimon)
        what += f", mode {link.mode}"
    return Step(LINK, link.name, ns, _attrs(**common), link.line, what)


# --------------------------------------------------------------------------------------------
# Rendering: the commands a person would type for each step


def _ip(ns: str | None) -> list[str]:
    return ["ip"] if ns is None else ["ip", "-n", ns]


def _in_ns(ns: str | None, argv: list[str]) -> list[str]:
    return argv if ns is None else ["ip", "netns", "exec", ns, *argv]


def _join(argv: list[str]) -> str:
    return shlex.join(argv)


def teamd_config(runner: str) -> str:
    """The JSON teamd is started with (link watch by ethtool, as in the seed note)."""
    return json.dumps({"runner": {"name": runner}, "link_watch": {"name": "ethtool"}})


def commands(step: Step) -> list[str]:
    """The shell commands equivalent to ``step`` (what ``tunnelpy plan`` prints)."""
    ip, name, ns = _ip(step.ns), step.name, step.ns
    if step.op == NETNS:
        return [_join(["ip", "netns", "add", name])]
    if step.op == LINK:
        return _link_commands(step)
    if step.op == MOVE:
        return [_join([*ip, "link", "set", name, "netns", step.get("to")])]
    if step.op == TEAMD:
        argv = ["teamd", "-d", "-t", name, "-c", teamd_config(step.get("runner"))]
        out = [_join(_in_ns(ns, argv))]
        if step.get("mtu"):
            out.append(_join([*ip, "link", "set", name, "mtu", str(step.get("mtu"))]))
        return out
    if step.op == MASTER:
        set_master = _join([*ip, "link", "set", name, "master", step.get("master")])
        if step.get("master_kind") in ("bond", "team"):  # both want their ports down
            return [_join([*ip, "link", "set", name, "down"]), set_master]
        return [set_master]
    if step.op == PRIMARY:
        return [_join([*ip, "link", "set", name, "type", "bond", "primary", step.get("primary")])]
    if step.op == UP:
        return [_join([*ip, "link", "set", name, "up"])]
    if step.op == ADDRESS:
        return [_join([*ip, "addr", "add", step.get("address"), "dev", name])]
    raise ValueError(f"unknown step op {step.op!r}")


def _link_commands(step: Step) -> list[str]:
    kind, name = step.get("kind"), step.name
    argv = [*_ip(step.ns), "link", "add", name]
    if kind != "vxlan" and step.get("link"):
        argv += ["link", step.get("link")]
    if step.get("mtu"):
        argv += ["mtu", str(step.get("mtu"))]
    if step.get("mac"):
        argv += ["address", step.get("mac")]
    argv += ["type", kind]
    extra: list[str] = []
    if kind == "bridge":
        if step.get("stp"):
            argv += ["stp_state", "1"]
        if step.get("vlan_filtering"):
            argv += ["vlan_filtering", "1"]
    elif kind == "veth":
        argv += ["peer", "name", step.get("peer")]
        if step.get("mtu"):
            argv += ["mtu", str(step.get("mtu"))]
        if step.get("peer_ns"):
            argv += ["netns", step.get("peer_ns")]
    elif kind == "vlan":
        if step.get("protocol", "802.1Q") != "802.1Q":
            argv += ["protocol", step.get("protocol")]
        argv += ["id", str(step.get("vlan_id"))]
    elif kind == "vxlan":
        argv += ["id", str(step.get("vni"))]
        for key in ("remote", "group", "local"):
            if step.get(key):
                argv += [key, step.get(key)]
        argv += ["dstport", str(step.get("dst_port"))]
        if step.get("link"):
            argv += ["dev", step.get("link")]
    elif kind == "macvlan":
        argv += ["mode", step.get("mode")]
        if step.get("source_macs"):
            extra.append(
                _join(
                    [
                        *_ip(step.ns),
                        "link",
                        "set",
                        name,
                        "type",
                        "macvlan",
                        "macaddr",
                        "set",
                        *step.get("source_macs"),
                    ]
                )  # fmt: skip
            )
    elif kind == "ipvlan":
        argv += ["mode", step.get("mode")]
    elif kind == "bond":
        argv += ["mode", step.get("mode"), "miimon", str(step.get("miimon"))]
    return [_join(argv), *extra]


def undo_commands(step: Step, made_here: bool = True, final_ns: str | None = None) -> list[str]:
    """What undoing ``step`` amounts to, as commands (for the ``tunnelpy plan`` listing).

    ``made_here``: whether the step's link is created by the plan (then enslaving it needs no
    undo of its own: deleting the link does it)."""
    ip, name = _ip(step.ns), step.name
    if step.op == NETNS:
        return [_join(["ip", "netns", "del", name]) + "   # only if tunnelpyd created it"]
    if step.op == LINK:
        return [_join([*_ip(final_ns), "link", "del", name])]
    if step.op == MOVE:
        return []  # the link is deleted where it ended up
    if step.op == TEAMD:
        return [_join(_in_ns(step.ns, ["teamd", "-k", "-t", name]))]
    if step.op == MASTER and not made_here:
        return [_join([*ip, "link", "set", name, "nomaster"]) + "   # its old master, if any, back"]
    if step.op == UP and not made_here:
        return ["# " + _join([*ip, "link", "set", name, "down"]) + "   # only if it was down"]
    return []


def render(plan: Plan) -> str:
    """The whole plan as text: numbered steps with their file lines, then the undo order."""
    lines = [
        f"# tunnelpy plan for {plan.path}: {len(plan.steps)} step(s), applied after "
        f"{plan.interface} and its TAPs exist, undone in reverse on exit"
    ]
    if not plan.steps:
        lines.append("# (no topology sections: nothing to build)")
        return "\n".join(lines) + "\n"
    for number, step in enumerate(plan.steps, 1):
        lines.append(f"# {number}. {step.what or step.op}  [{plan.path}:{step.line}]")
        lines += commands(step)
    lines.append("# on exit (and on a failed start), in reverse; links it did not create stay:")
    final = {name: ns for ns, name in plan.created}
    for step in reversed(plan.steps):
        made_here = step.name in final or step.name in plan.provided
        lines += undo_commands(step, made_here, final.get(step.name, step.ns))
    for ns, name, line in plan.existing:
        where = f" in {ns}" if ns else ""
        lines.append(f"# uses pre-existing {name}{where} [{plan.path}:{line}]: never deleted")
    return "\n".join(lines) + "\n"
