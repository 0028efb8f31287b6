"""``tunnelpy plan`` and ``tunnelpy topology``: what a site.conf builds, as commands and as a picture.

Theory of operation
-------------------
Both commands only read the file, and not the key files it names: nothing here touches the
host, and drawing a lab needs none of its secrets. ``plan`` prints
``netlink.plan.render`` (numbered steps, each with the ``ip``/``bridge``/``teamd`` commands a
person would type and its file:line, then the undo order). ``topology`` draws the same config
as the hand-drawn diagrams people keep next to their ``ip`` commands:

* ``--format text`` (default): one block per namespace; inside it a tree in which a master's
  ports and a parent's children (macvlan, ipvlan, vlan, vxlan on ``Link``) hang below it, and a
  veth end names its other end and where that lives. Peers and far VTEPs are listed on top. A
  namespace's routes and forwarding (``[Namespace]``) are listed under its heading, a link's
  shaping (``[Netem]``) after its addresses.
* ``--format dot``: Graphviz source with one cluster per namespace; edges: port -> master
  ("port"), child -> parent (dashed, "on"), veth pairs (bold, both ways), segment TAP -> peer
  and kernel vxlan -> remote (dotted, with the VNI).
* ``--format svg``: that DOT rendered by Graphviz's ``dot`` when it is installed; otherwise a
  one-line error naming the package to install (and ``--format dot`` as the way around).

The picture model (``Picture``) is built from the Config alone, so it is unit-tested without
root, and it agrees with the plan about where every link ends up (``plan.build(conf).created``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from . import config as cfgmod
from .config import Config
from .netlink import kinds
from .netlink import plan as planmod

OWN = ""  # the namespace key for tunnelpyd's own namespace


@dataclass
class Node:
    name: str
    ns: str  # OWN for tunnelpyd's namespace
    kind: str  # tun, tap, bridge, veth, vlan, vxlan, macvlan, ipvlan, bond, team, existing
    detail: str = ""  # "mode vepa", "VNI 200 -> 192.0.2.3:4789"...
    addresses: list[str] = field(default_factory=list)
    master: str | None = None
    parent: str | None = None
    pair: str | None = None  # the other end of a veth
    far: list[tuple[str, str]] = field(default_factory=list)  # (far end, label): peers, VTEPs
    shaping: str = ""  # "netem delay 20ms loss 1%"

    def label(self) -> str:
        parts = [self.name, self.kind]
        if self.detail:
            parts.append(self.detail)
        parts += self.addresses
        if self.shaping:
            parts.append(self.shaping)
        return "  ".join(parts)


@dataclass
class Picture:
    title: str
    nodes: dict[str, Node]
    namespaces: list[str]  # OWN first, then file order
    created_ns: set[str]
    peers: list[str]  # "site-b 192.0.2.2:4789"
    notes: dict[str, list[str]] = field(default_factory=dict)  # ns -> "route default via ..."

    def in_ns(self, ns: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.ns == ns]


def _transport(conf: Config) -> str:
    i = conf.interface
    if i.transport == cfgmod.TRANSPORT_VXLAN:
        return f"plain VXLAN, UDP {i.listen_port}"
    return f"WireGuard, UDP {i.listen_port or 'any port'}"


def build_picture(conf: Config) -> Picture:
    """The diagram's model: every device the file makes or uses, where it lives, how linked."""
    plan = planmod.build(conf)
    final = {name: (ns or OWN) for ns, name in plan.created}
    nodes: dict[str, Node] = {}
    i = conf.interface
    if i.transport != cfgmod.TRANSPORT_VXLAN:  # plain VXLAN has no TUN: only segment TAPs
        nodes[i.name] = Node(i.name, OWN, "tun", addresses=[str(a) for a in i.addresses])
        nodes[i.name].far = [(p.name, "") for p in conf.peers]
    for seg in conf.segments:
        members = seg.peers if seg.peers is not None else tuple(p.name for p in conf.peers)
        nodes[seg.device] = Node(
            seg.device,
            OWN,
            "tap",
            f"segment {seg.name}, VNI {seg.vni}" + (", hub" if seg.hub else ""),
            [str(a) for a in seg.addresses],
            master=seg.bridge,
            far=[(m, f"VNI {seg.vni}") for m in members],
        )
    for link in conf.topology:
        ns = final.get(link.name, link.namespace or OWN)
        node = Node(link.name, ns, link.kind, addresses=[str(a) for a in link.addresses])
        node.master = link.master
        node.parent = link.parent
        kind = kinds.of(link.kind)
        node.detail = kind.detail(link)
        node.far = kind.far(link)
        if link.pair is not None:
            node.pair = link.pair
            nodes[link.pair] = Node(
                link.pair, link.namespace or OWN, link.kind,
                addresses=[str(a) for a in link.pair_addresses], pair=link.name,
            )  # fmt: skip
        nodes[link.name] = node
    # ports named only in a master's Ports list, and pre-existing parents/masters
    for link in conf.topology:
        for port in link.ports:
            if port in nodes:
                nodes[port].master = link.name
            else:
                nodes[port] = Node(port, final.get(link.name, OWN), "existing", master=link.name)
    for used_ns, name, _ in plan.existing:
        nodes.setdefault(name, Node(name, used_ns or OWN, "existing"))
    for node in list(nodes.values()):
        if node.parent is not None and node.parent not in nodes:
            nodes[node.parent] = Node(node.parent, OWN, "existing")
    for netem in conf.netem:
        if netem.link in nodes:
            nodes[netem.link].shaping = f"netem {netem.describe()}"
    notes: dict[str, list[str]] = {}
    for ns_conf in conf.namespaces:
        lines = notes.setdefault(ns_conf.name, [])
        if ns_conf.forwarding:
            lines.append("forwarding on")
        lines += [f"route {route}" for route in ns_conf.routes]
    namespaces = [OWN]  # then in the plan's order (the file's)
    for ns in [*plan.namespaces, *(node.ns for node in nodes.values()), *notes]:
        if ns not in namespaces:
            namespaces.append(ns)
    peers = []
    for p in conf.peers:
        where = f"{p.endpoint[0]}:{p.endpoint[1]}" if p.endpoint else "(no endpoint)"
        peers.append(f"{p.name}  {where}")
    return Picture(
        title=f"{conf.path}: tunnelpyd {i.name} ({_transport(conf)})",
        nodes=nodes,
        namespaces=namespaces,
        created_ns=set(plan.namespaces),
        peers=peers,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# Text


def _children(pic: Picture, node: Node) -> list[tuple[str, Node]]:
    """(relation, node) pairs that hang below ``node`` in the tree: ports and child links."""
    out: list[tuple[str, Node]] = []
    for other in pic.nodes.values():
        if other.ns != node.ns or other is node:
            continue
        if other.master == node.name:
            out.append(("port", other))
        elif other.parent == node.name and other.master is None:
            out.append(("on", other))
    return out


def _line(pic: Picture, node: Node, relation: str) -> str:
    text = node.label()
    if relation == "on":
        text = f"{node.name}  {node.kind} on {node.parent}" + (
            f"  {node.detail}" if node.detail else ""
        ) + "".join(f"  {a}" for a in node.addresses)  # fmt: skip
    if node.pair is not None:
        other = pic.nodes.get(node.pair)
        where = ""
        if other is not None and other.ns != node.ns:
            where = " [tunnelpyd's namespace]" if other.ns == OWN else f" [namespace {other.ns}]"
        text += f"  <=> {node.pair}{where}"
    if node.parent is not None and relation != "on":
        parent = pic.nodes.get(node.parent)
        if parent is not None and parent.ns != node.ns:
            text += f"  (on {node.parent} in {parent.ns or 'tunnelpyd' + chr(39) + 's namespace'})"
    for far, label in node.far:
        text += f"  -> {far}" + (f" ({label})" if label else "")
    return text


def _tree(pic: Picture, node: Node, prefix: str, last: bool, relation: str, out: list[str]) -> None:
    branch = "└─ " if last else "├─ "
    out.append(prefix + branch + _line(pic, node, relation))
    kids = _children(pic, node)
    for i, (rel, kid) in enumerate(kids):
        _tree(pic, kid, prefix + ("   " if last else "│  "), i == len(kids) - 1, rel, out)


def render_text(pic: Picture) -> str:
    out = [pic.title]
    if pic.peers:
        out.append("peers:")
        out += [f"  {p}" for p in pic.peers]
    for ns in pic.namespaces:
        nodes = pic.in_ns(ns)
        if not nodes and not pic.notes.get(ns):
            continue
        if ns == OWN:
            out.append("namespace of tunnelpyd:")
        else:
            made = "created and removed by tunnelpyd" if ns in pic.created_ns else "pre-existing"
            out.append(f"namespace {ns} ({made}; lo up):")
        out += [f"   {note}" for note in pic.notes.get(ns, [])]
        roots = [
            n for n in nodes
            if not (n.master in pic.nodes and pic.nodes[n.master].ns == ns)
            and not (n.parent in pic.nodes and pic.nodes[n.parent].ns == ns and n.master is None)
        ]  # fmt: skip
        for i, node in enumerate(roots):
            _tree(pic, node, "", i == len(roots) - 1, "", out)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# DOT

_SHAPES = {"tun": "box3d", "tap": "box3d", "existing": "box"}  # nodes that are not link kinds


def _shape(kind: str) -> str:
    if kind in _SHAPES:
        return _SHAPES[kind]
    return kinds.KINDS[kind].shape if kind in kinds.KINDS else "box"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_dot(pic: Picture) -> str:
    lines = [
        "digraph topology {",
        "  graph [fontname=Helvetica, fontsize=11, label=" + _q(pic.title) + ", labelloc=t];",
        "  node [fontname=Helvetica, fontsize=10, shape=box, style=rounded];",
        "  edge [fontname=Helvetica, fontsize=9];",
    ]
    for index, ns in enumerate(pic.namespaces):
        nodes = pic.in_ns(ns)
        if not nodes and not pic.notes.get(ns):
            continue
        label = "tunnelpyd's namespace" if ns == OWN else f"namespace {ns}"
        if ns and ns not in pic.created_ns:
            label += " (pre-existing)"
        label = "\n".join([label, *pic.notes.get(ns, [])])
        lines.append(f"  subgraph cluster_{index} {{")
        lines.append(f"    label={_q(label)}; style=dashed;")
        for node in nodes:
            text = "\n".join(
                x
                for x in (f"{node.name}", node.kind, node.detail, *node.addresses, node.shaping)
                if x
            )
            shape = _shape(node.kind)
            style = ', style="rounded,dashed"' if node.kind == "existing" else ""
            lines.append(f"    {_q(node.name)} [label={_q(text)}, shape={shape}{style}];")
        lines.append("  }")
    far_nodes: dict[str, None] = {}
    for node in pic.nodes.values():
        if node.master is not None:
            lines.append(f"  {_q(node.name)} -> {_q(node.master)} [label=port];")
        if node.parent is not None:
            lines.append(f"  {_q(node.name)} -> {_q(node.parent)} [label=on, style=dashed];")
        if node.pair is not None and node.name < node.pair:
            lines.append(
                f"  {_q(node.name)} -> {_q(node.pair)} [dir=both, style=bold, label=veth];"
            )
        for far, label in node.far:
            far_nodes[far] = None
            lines.append(f"  {_q(node.name)} -> {_q(far)} [style=dotted, label={_q(label)}];")
    for far in far_nodes:
        lines.append(f"  {_q(far)} [shape=cds, style=filled, fillcolor=lightgrey];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_svg(pic: Picture) -> str:
    """SVG through Graphviz's ``dot``; RuntimeError (one line) when it is missing or fails."""
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError(
            "--format svg needs Graphviz's dot (Debian: apt-get install graphviz); "
            "--format dot prints the source to render elsewhere"
        )
    res = subprocess.run(
        [dot, "-Tsvg"], input=render_dot(pic), capture_output=True, text=True, timeout=60
    )
    if res.returncode != 0:
        raise RuntimeError(f"dot -Tsvg failed: {res.stderr.strip()[-300:]}")
    return res.stdout


# --------------------------------------------------------------------------------------------
# Commands


def _load(path: str) -> Config:
    # Drawing needs no keys: a PrivateKeyFile that is missing here (a CI job, a laptop) is not
    # opened. `tunnelpy check` and the daemon still read it.
    conf = cfgmod.load(path, secrets=False)
    for warning in conf.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return conf


def cmd_plan(args: argparse.Namespace) -> int:
    """``tunnelpy plan -c FILE``."""
    try:
        conf = _load(args.config)
    except cfgmod.ConfigError as e:
        print(f"tunnelpy: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(planmod.render(planmod.build(conf)))
    return 0


def cmd_topology(args: argparse.Namespace) -> int:
    """``tunnelpy topology -c FILE [--format text|dot|svg]``."""
    try:
        pic = build_picture(_load(args.config))
        out = {"text": render_text, "dot": render_dot, "svg": render_svg}[args.format](pic)
    except (cfgmod.ConfigError, RuntimeError) as e:
        print(f"tunnelpy: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``plan`` and ``topology`` on the ``tunnelpy`` subcommand parser."""
    p = sub.add_parser("plan", help="the topology steps a config builds, as ip commands")
    p.add_argument("-c", "--config", metavar="FILE", required=True, help="the config file")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("topology", help="draw what a config builds (text, dot or svg)")
    p.add_argument("-c", "--config", metavar="FILE", required=True, help="the config file")
    p.add_argument("--format", choices=("text", "dot", "svg"), default="text", help="the output")
    p.set_defaults(fn=cmd_topology)
