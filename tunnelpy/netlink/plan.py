"""The topology plan: site.conf's topology sections become an ordered list of steps (pure data).

Theory of operation
-------------------
``build(conf)`` turns ``Config.topology`` (plus the segments' ``Bridge =`` lines) into a
``Plan``: a tuple of frozen ``Step`` records in the order they must happen. Nothing here touches
the host, so the order and the rendered commands are unit-tested without root; ``topology.py``
executes the same steps through pyroute2, and ``tunnelpy plan`` prints them as the ``ip`` /
``bridge`` / ``teamd`` commands a person would type (``commands(step)``).

The order is fixed by phases, and inside a phase by file order:

1. ``netns``   namespaces named by any ``Namespace =``, ``PeerNamespace =`` or ``[Namespace]``
               (created only if missing);
2. ``link``    links, parents before children (a stable topological sort over ``Link =``); a
               child is created beside its parent and, when its ``Namespace`` differs, followed
               at once by a ``move`` (so grandchildren find it where they expect it); a team is a
               ``teamd`` step instead (teamd creates the device);
3. ``master``  ports enslaved to their bridge, bond or team (teamd notices ports added by
               netlink); every master exists by now; bond ``primary`` after its ports;
4. ``up``      ``lo`` in every namespace named here (only namespaces tunnelpyd creates keep no
               record: ``lo`` of a pre-existing one gets its state back), every link created
               here, then pre-existing ports (their old state is restored);
5. ``address`` addresses, when the links they go on are in place;
6. ``qdisc``   ``[Netem]`` shaping on its link, wherever the link ended up;
7. ``sysctl``  ``Forwarding = yes`` of a ``[Namespace]``;
8. ``route``   ``Route =`` of a ``[Namespace]``, last: a gateway is reachable only once the
               addresses are there.

A step names the namespace it runs in (``ns``; None is tunnelpyd's own) and the config line it
comes from, so an error while applying it points back into the file.

Devices tunnelpyd makes itself (the TUN and the segment TAPs) are ``provided``: they may be
ports or parents, they exist before ``apply`` runs, and the plan never creates or deletes them.
Names that are neither made here nor provided are pre-existing links: they are looked up in the
kernel by ``topology.validate`` and are only enslaved and brought up, never deleted.

A reload compares two plans (``diff``): a step is the same in both when everything but its line
and sentence is (``step_key``), so only what changed is undone and applied. A link whose own
making changed (kind, attributes, namespace, bond primary) is deleted and made again, and with it
everything that hangs on it: its children (the kernel deletes them with their parent), its
ports' enslaving, its addresses, up and netem; the routes of every namespace whose links or
addresses change are set again (a route goes with the address that made its gateway on-link).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from tunnelpy import config as cfgmod
from tunnelpy.config import Config, LinkConfig

from . import kinds, labkeys
from .kinds import ip_argv as _ip
from .kinds import teamd_config as teamd_config
from .step import (  # noqa: F401
    ADDRESS,
    LINK,
    MASTER,
    MOVE,
    NETNS,
    OPS,
    PRIMARY,
    QDISC,
    ROUTE,
    SYSCTL,
    TEAMD,
    UP,
    Step,
)
from .step import attrs as _attrs


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
        """(kind, mode) pairs the kernel must support: what ``validate`` probes. A qdisc is
        ("qdisc:KIND", None)."""
        return kinds_of(self.steps)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps if s.op == NETNS)


def kinds_of(steps: Iterable[Step]) -> set[tuple[str, str | None]]:
    found: set[tuple[str, str | None]] = set()
    for step in steps:
        if step.op in (LINK, TEAMD):
            found.add((step.get("kind"), step.get("mode")))
        elif step.op == QDISC:
            found.add((f"qdisc:{step.get('kind')}", None))
    return found


def _sorted_links(links: Iterable[LinkConfig]) -> list[LinkConfig]:
    """Parents before children, file order otherwise (config has already refused loops)."""
    pending = list(links)
    names = {link.name for link in pending}
    peer_of = {link.pair: link.name for link in pending if link.pair is not None}
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
    peer_ends = {link.pair: link for link in links if link.pair is not None}
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
    mentions = [(link.line, ns) for link in links for ns in (link.pair_home, link.namespace)]
    mentions += [(ns.line, ns.name) for ns in conf.namespaces]
    seen_ns: dict[str, int] = {}
    for line, ns in sorted((m for m in mentions if m[1] is not None), key=lambda m: m[0]):
        assert ns is not None
        if ns not in seen_ns:
            seen_ns[ns] = line
            steps.append(Step(NETNS, ns, line=line, what=f"namespace {ns}"))

    # 2. links, parents first
    created: list[tuple[str | None, str]] = []
    for link in _sorted_links(links):
        parent = link.parent
        if parent is not None and parent not in by_name and parent not in peer_ends:
            if parent not in provided:
                existing.setdefault((None, parent), link.line)
        home = where(parent) if parent is not None else link.namespace
        if link.pair is not None:
            home = link.pair_home  # this end's namespace; the other end is made in namespace
        steps.append(kinds.of(link.kind).create_step(link, home))
        final[link.name] = home
        created.append((home, link.name))
        if link.pair is not None:
            created.append((link.namespace, link.pair))
            final[link.pair] = link.namespace
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
        steps += kinds.of(link.kind).port_steps(link, final[link.name])

    # 4. up: lo in every namespace, what was made here, then the pre-existing ports it uses
    for ns, line in seen_ns.items():
        steps.append(Step(UP, "lo", ns, _attrs(loopback=True), line, f"lo up in namespace {ns}"))
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
        if link.pair is not None:
            for address in link.pair_addresses:
                steps.append(_address_step(link.pair, link.namespace, address, link.line))

    # 6.-8. shaping, forwarding, routes
    for netem in conf.netem:
        steps.append(labkeys.netem_step(netem, where(netem.link)))
    for ns_conf in conf.namespaces:
        if ns_conf.forwarding:
            steps.append(labkeys.forwarding_step(ns_conf))
    for ns_conf in conf.namespaces:
        steps += [labkeys.route_step(ns_conf.name, route) for route in ns_conf.routes]

    return Plan(
        path=conf.path,
        interface=conf.interface.name,
        steps=tuple(steps),
        provided=provided,
        created=tuple(created),
        existing=tuple((ns, name, line) for (ns, name), line in existing.items()),
    )


def step_key(step: Step) -> str:
    """What identifies a step across two plans: everything but its line and sentence (moving a
    section in the file changes nothing)."""
    return json.dumps([step.op, step.ns, step.name, step.attrs])


@dataclass(frozen=True)
class PlanDiff:
    """What turns the running plan ``old`` into ``new``: the old steps to undo (by key, undone
    in reverse order of application) and the new steps to apply (in the new plan's order)."""

    old: Plan
    new: Plan
    undo: frozenset[str]
    apply: tuple[Step, ...]

    def __bool__(self) -> bool:
        return bool(self.undo or self.apply)

    @property
    def undone(self) -> tuple[Step, ...]:
        return tuple(s for s in self.old.steps if step_key(s) in self.undo)

    def __str__(self) -> str:
        return f"topology: {len(self.undo)} step(s) undone, {len(self.apply)} applied"


_MAKES = (LINK, TEAMD, MOVE, PRIMARY)  # the steps that make a link what it is


def _refers(step: Step, names: set[str]) -> bool:
    """Whether ``step`` acts on or depends on one of the links ``names``."""
    if step.op not in (NETNS, SYSCTL, ROUTE) and step.name in names:
        return True
    return any(step.get(k) in names for k in ("master", "link", "primary", "peer"))


def diff(old: Plan, new: Plan, recreated: frozenset[str] = frozenset()) -> PlanDiff:
    """The steps a reload from ``old`` to ``new`` undoes and applies (see the module doc).
    ``recreated``: devices tunnelpyd itself makes again (a replaced segment's TAP): what the
    plan does to them is done again too."""
    old_keys = {step_key(s) for s in old.steps}
    new_keys = {step_key(s) for s in new.steps}
    removed = [s for s in old.steps if step_key(s) not in new_keys]
    # Links that are deleted (and maybe made again): their own making changed or went...
    dead: set[str] = set(recreated)
    for s in removed:
        if s.op in _MAKES:
            dead.add(s.name)
            if s.get("peer"):
                dead.add(s.get("peer"))
    # ...or they sit on such a link (the kernel deletes children with their parent).
    grew = True
    while grew:
        grew = False
        for s in old.steps:
            if s.op in (LINK, TEAMD) and s.name not in dead and s.get("link") in dead:
                dead.add(s.name)
                if s.get("peer"):
                    dead.add(s.get("peer"))
                grew = True
    undo = {step_key(s) for s in removed} | {step_key(s) for s in old.steps if _refers(s, dead)}
    apply = [s for s in new.steps if step_key(s) not in old_keys or _refers(s, dead)]
    # A route goes when the link or address that made its gateway on-link goes: set the routes
    # of every namespace something is undone in again (additions take no route away).
    moved: set[str | None] = set()
    for s in old.steps:
        if step_key(s) in undo and s.op not in (ROUTE, SYSCTL):
            moved.update((s.ns, s.get("to"), s.get("peer_ns")))
    undo |= {step_key(s) for s in old.steps if s.op == ROUTE and s.ns in moved}
    applied = {step_key(s) for s in apply}
    apply += [
        s for s in new.steps if s.op == ROUTE and s.ns in moved and step_key(s) not in applied
    ]
    order = {step_key(s): i for i, s in enumerate(new.steps)}
    return PlanDiff(
        old, new, frozenset(undo), tuple(sorted(apply, key=lambda s: order[step_key(s)]))
    )


def _line_of(links: list[LinkConfig], name: str) -> int:
    for link in links:
        if name in (link.name, link.pair):
            return link.line
    return 0


def _address_step(name: str, ns: str | None, address: cfgmod.IPInterface, line: int) -> Step:
    return Step(ADDRESS, name, ns, _attrs(address=str(address)), line, f"{address} on {name}")


# --------------------------------------------------------------------------------------------
# Rendering: the commands a person would type for each step


def _join(argv: list[str]) -> str:
    return shlex.join(argv)


def commands(step: Step) -> list[str]:
    """The shell commands equivalent to ``step`` (what ``tunnelpy plan`` prints)."""
    ip, name = _ip(step.ns), step.name
    if step.op == NETNS:
        return [_join(["ip", "netns", "add", name])]
    if step.op in (LINK, TEAMD):
        return kinds.of(step.kind).commands(step)
    if step.op == MOVE:
        return [_join([*ip, "link", "set", name, "netns", step.get("to")])]
    if step.op == MASTER:
        set_master = _join([*ip, "link", "set", name, "master", step.get("master")])
        if kinds.ports_down(step.get("master_kind")):  # bond and team want their ports down
            return [_join([*ip, "link", "set", name, "down"]), set_master]
        return [set_master]
    if step.op == PRIMARY:
        return [_join([*ip, "link", "set", name, "type", "bond", "primary", step.get("primary")])]
    if step.op == UP:
        return [_join([*ip, "link", "set", name, "up"])]
    if step.op == ADDRESS:
        return [_join([*ip, "addr", "add", step.get("address"), "dev", name])]
    if step.op in (QDISC, SYSCTL, ROUTE):
        return labkeys.commands(step)
    raise ValueError(f"unknown step op {step.op!r}")


def undo_commands(step: Step, made_here: bool = True, final_ns: str | None = None) -> list[str]:
    """What undoing ``step`` amounts to, as commands (for the ``tunnelpy plan`` listing).

    ``made_here``: whether the step's link is created by the plan (then enslaving it needs no
    undo of its own: deleting the link does it)."""
    ip, name = _ip(step.ns), step.name
    if step.op == NETNS:
        return [_join(["ip", "netns", "del", name]) + "   # only if tunnelpyd created it"]
    if step.op in (LINK, TEAMD):
        return kinds.of(step.kind).undo_commands(step, final_ns)
    if step.op == MOVE:
        return []  # the link is deleted where it ended up
    if step.op == MASTER and not made_here:
        return [_join([*ip, "link", "set", name, "nomaster"]) + "   # its old master, if any, back"]
    if step.op == UP and not made_here:
        return ["# " + _join([*ip, "link", "set", name, "down"]) + "   # only if it was down"]
    if step.op in (QDISC, SYSCTL, ROUTE):
        return labkeys.undo_commands(step)
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
