"""Link kinds: everything that differs between a bridge, a veth pair, a VLAN... in one class each.

Theory of operation
-------------------
A topology section (``[Bridge br0]``, ``[MACVLAN mv0]``...) makes one Linux link of one kind.
Each kind is a ``LinkKind`` subclass next to the frozen dataclass its section parses into, and
it holds all that is particular to the kind, for every stage that handles links:

* config: the section name, its keys (``Key``: spelling and the name of the value parser
  ``config`` applies), the builder from a read section to the dataclass, the capabilities the
  cross-section checks ask about (can it be a master, may its parent be the TUN...) and the
  checks only it needs (``check_parent``);
* plan: the ``Step`` that creates it (``create_step``: its attributes and sentence) and that
  step as the ``ip`` command a person would type (``commands``, ``undo_commands``);
* apply: the step as pyroute2 ``link("add", ...)`` arguments (``pyroute2_args``) and the
  attributes of a throw-away link that proves the kernel can make the kind (``probe_attrs``);
* picture: the node's detail line, far ends and Graphviz shape.

``KINDS`` maps the kind name (``ip link ... type NAME``, ``LinkConfig.kind``) to its one
instance, in the order the sections are listed in messages. ``config``, ``plan``, ``topology``
and ``topology_cli`` look kinds up there instead of branching on them, so a new kind is one
``@register``-ed class here (and its dataclass); nothing else changes.

This module is pure: it imports neither ``config`` nor pyroute2 at run time (``config`` imports
it to build its section table), and every method maps values to values.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from .step import LINK, PRIMARY, TEAMD, Step, attrs

if TYPE_CHECKING:
    from tunnelpy.config import IPInterface, RawSection, _Context

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

VXLAN_PORT = 4789  # IANA; the Linux vxlan device defaults to 8472 unless told dstport 4789
MACVLAN_MODES = ("bridge", "private", "vepa", "passthru", "source")
IPVLAN_MODES = ("l2", "l3", "l3s")
BOND_MODES = (
    "balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb",
    "balance-alb",
)  # fmt: skip
TEAM_RUNNERS = ("activebackup", "roundrobin", "loadbalance", "broadcast", "lacp", "random")
VLAN_PROTOCOLS = ("802.1Q", "802.1ad")

# The numbers pyroute2 wants where the kernel attribute is an enum.
BOND_MODE_NUMBERS = {  # IFLA_BOND_MODE
    "balance-rr": 0,
    "active-backup": 1,
    "balance-xor": 2,
    "broadcast": 3,
    "802.3ad": 4,
    "balance-tlb": 5,
    "balance-alb": 6,
}
IPVLAN_MODE_NUMBERS = {"l2": 0, "l3": 1, "l3s": 2}  # IFLA_IPVLAN_MODE
VLAN_PROTOCOL_NUMBERS = {"802.1Q": 0x8100, "802.1ad": 0x88A8}  # IFLA_VLAN_PROTOCOL


# --------------------------------------------------------------------------------------------
# What every topology section parses into


@dataclass(frozen=True, kw_only=True)
class LinkConfig:
    """What every topology section has. ``kind`` is the Linux link kind (``ip link ... type``).

    ``namespace``: where the link ends up (None: tunnelpyd's own namespace). A VLAN, MACVLAN,
    IPVLAN or VXLAN with ``Link`` is created beside its parent and moved there; its default is
    the parent's namespace. For a veth pair it is where the *peer* end goes.
    """

    KIND: ClassVar[str] = ""
    name: str
    namespace: str | None = None
    master: str | None = None  # enslave to this bridge, bond or team
    addresses: tuple[IPInterface, ...] = ()
    mtu: int | None = None
    line: int = 0

    @property
    def kind(self) -> str:
        return self.KIND

    @property
    def parent(self) -> str | None:
        """The lower device this link is created on (``ip link add ... link PARENT``)."""
        return None

    @property
    def ports(self) -> tuple[str, ...]:
        return ()

    @property
    def pair(self) -> str | None:
        """The name of the link's other end, for a link made as a pair (else None). The local
        end stays in tunnelpyd's namespace; ``namespace`` is where the other end goes."""
        return None

    @property
    def pair_addresses(self) -> tuple[IPInterface, ...]:
        return ()

    @property
    def pair_home(self) -> str | None:
        """For a pair: where this end goes (None: tunnelpyd's namespace)."""
        return None


@dataclass(frozen=True, kw_only=True)
class OnLinkConfig(LinkConfig):
    """A link made on a lower device that its section names with ``Link`` (VLAN, MACVLAN...)."""

    link: str = ""

    @property
    def parent(self) -> str | None:
        return self.link


@dataclass(frozen=True)
class Choice:
    """A key's value that is one of ``options`` (case-insensitive); ``what`` names it in errors."""

    options: tuple[str, ...]
    what: str


@dataclass(frozen=True)
class Key:
    """One key of a kind's section. ``value`` names the value parser of ``config`` that reads it
    (``config.LINK_VALUES``: "ifname", "yes_no", "ip"...) or is a ``Choice``."""

    name: str
    value: str | Choice
    multi: bool = False


def _line_of(section: RawSection, key: str) -> int:
    item = section.get(key)
    return item[0] if item else section.line


def _required(section: RawSection, ctx: _Context, key: str, expected: str) -> Any:
    item = section.get(key)
    if item is None:
        raise ctx.error(section.line, section.where(key), f"missing, expected {key} = {expected}")
    return item[1]


def ip_argv(ns: str | None) -> list[str]:
    """``ip``, or ``ip -n NS`` to run it in namespace ``ns``."""
    return ["ip"] if ns is None else ["ip", "-n", ns]


def in_ns(ns: str | None, argv: list[str]) -> list[str]:
    """``argv`` run inside namespace ``ns`` (for tools without a ``-n`` of their own)."""
    return argv if ns is None else ["ip", "netns", "exec", ns, *argv]


C = TypeVar("C", bound=LinkConfig)
Common = Callable[[], dict[str, Any]]  # the keys every section shares, checked when called


class LinkKind(Generic[C]):
    """One link kind, of links parsed into ``C``. Subclasses set the class attributes and override what differs; the
    defaults describe a plain link made by ``ip link add NAME type KIND``."""

    config: type[C]  # what its section parses into
    section: ClassVar[str] = ""  # the section name: [Bridge br0]
    keys: ClassVar[tuple[Key, ...]] = ()  # its own keys, before the ones every section has
    exclusive: ClassVar[tuple[tuple[str, str], ...]] = ()  # at most one of each pair
    module: ClassVar[str] = ""  # the kernel module it lives in (for "this kernel lacks it")
    master: ClassVar[bool] = False  # can have ports (other links' Master =, its own Ports =)
    switch: ClassVar[bool] = False  # a segment's TAP may be its port ([Segment] Bridge =)
    ports_down: ClassVar[bool] = False  # a port must be down to be enslaved to it
    rx_handler: ClassVar[bool] = False  # sits on its parent's receive path: parent not a port
    l3_parent: ClassVar[bool] = False  # its Link may be the TUN (the parent is an underlay)
    parent_attr: ClassVar[str] = "link"  # the pyroute2 argument carrying the parent's ifindex
    shape: ClassVar[str] = "box"  # Graphviz node shape in ``tunnelpy topology --format dot``
    pair_key: ClassVar[str] = ""  # for a pair: the key naming the other end ...
    pair_address_key: ClassVar[str] = ""  # ... and the one giving its addresses (for messages)
    rivals: ClassVar[tuple[str, ...]] = ()  # kernel kinds a sole child cannot share a parent with

    @property
    def name(self) -> str:
        return self.config.KIND

    # -- config --------------------------------------------------------------------------

    def build(self, section: RawSection, ctx: _Context, common: Common) -> C:
        """The dataclass for a read section; raise ``ctx.error(...)`` for what the keys alone
        cannot refuse. ``common()`` checks the section name and returns the shared fields."""
        return self.config(**common())

    def check_parent(
        self,
        section: RawSection,
        link: C,
        earlier: list[tuple[RawSection, LinkConfig]],
        ctx: _Context,
    ) -> None:
        """A check of ``link``'s parent that only this kind needs, given the links with a
        parent that come before it in the file."""

    # -- plan ----------------------------------------------------------------------------

    def step_attrs(self, link: C) -> dict[str, Any]:
        """The creating step's attributes beyond kind and mtu."""
        return {}

    def describe(self, link: C) -> str:
        """The creating step's sentence."""
        return f"{self.name} {link.name}"

    def create_step(self, link: C, ns: str | None) -> Step:
        """The step that makes ``link`` in namespace ``ns``."""
        return Step(
            LINK,
            link.name,
            ns,
            attrs(kind=self.name, mtu=link.mtu, **self.step_attrs(link)),
            link.line,
            self.describe(link),
        )

    def port_steps(self, link: C, ns: str | None) -> list[Step]:
        """Steps after every port is enslaved (a bond's primary port); ``ns``: where it is."""
        return []

    def ip_lower(self, step: Step) -> list[str]:
        """Where the parent goes on the ``ip link add`` line (before ``type``)."""
        return ["link", step.get("link")] if step.get("link") else []

    def ip_type_args(self, step: Step) -> list[str]:
        """What follows ``type KIND``."""
        return []

    def ip_extra(self, step: Step) -> list[str]:
        """Commands after the ``ip link add`` (already joined)."""
        return []

    def commands(self, step: Step) -> list[str]:
        """The creating step as shell commands (what ``tunnelpy plan`` prints)."""
        argv = [*ip_argv(step.ns), "link", "add", step.name, *self.ip_lower(step)]
        if step.get("mtu"):
            argv += ["mtu", str(step.get("mtu"))]
        if step.get("mac"):
            argv += ["address", step.get("mac")]
        argv += ["type", self.name, *self.ip_type_args(step)]
        return [shlex.join(argv), *self.ip_extra(step)]

    def undo_commands(self, step: Step, final_ns: str | None) -> list[str]:
        """Undoing the creating step; ``final_ns``: where the link ended up."""
        return [shlex.join([*ip_argv(final_ns), "link", "del", step.name])]

    # -- apply ---------------------------------------------------------------------------

    def link_args(self, step: Step) -> dict[str, Any]:
        """pyroute2 arguments particular to the kind."""
        return {}

    def pyroute2_args(self, step: Step, parent: int | None = None) -> dict[str, Any]:
        """pyroute2 ``link("add", ...)`` arguments for the creating step; ``parent``: the ifindex
        of the step's ``link``, looked up by the caller."""
        kw: dict[str, Any] = {"ifname": step.name, "kind": self.name}
        if step.get("mtu"):
            kw["mtu"] = step.get("mtu")
        if step.get("mac"):
            kw["address"] = step.get("mac")
        if parent is not None:
            kw[self.parent_attr] = parent
        kw.update(self.link_args(step))
        return kw

    def probe_attrs(self, mode: str | None, name: str, parent: str) -> dict[str, Any]:
        """Step attributes of a link named ``name`` that proves this kernel can make the kind
        (in ``mode``, if the kind has modes); ``parent``: an Ethernet link to sit on."""
        return {"kind": self.name}

    def sole_child(self, step: Step) -> str | None:
        """What makes the link need its parent to itself (e.g. "passthru"), or None."""
        return None

    # -- picture -------------------------------------------------------------------------

    def detail(self, link: C) -> str:
        """The node's detail in ``tunnelpy topology``: "mode vepa", "VNI 200, port 4789"..."""
        return ""

    def far(self, link: C) -> list[tuple[str, str]]:
        """(far end, label) pairs the picture draws from the node (a VXLAN's remote VTEP)."""
        return []


KINDS: dict[str, LinkKind[Any]] = {}
_K = TypeVar("_K", bound=type[LinkKind[Any]])


def register(cls: _K) -> _K:
    """Add a kind to ``KINDS`` (a class decorator). Register before ``tunnelpy.config`` is first
    imported: its section table is made from ``KINDS`` then."""
    kind = cls()
    if not kind.name or not kind.section:
        raise ValueError(f"{cls.__name__}: a kind needs config.KIND and section")
    if kind.name in KINDS:
        raise ValueError(f"link kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return cls


def of(kind: str | None) -> LinkKind[Any]:
    """The kind called ``kind``; KeyError (naming it) for one nobody registered."""
    try:
        return KINDS[kind or ""]
    except KeyError:
        raise KeyError(f"unknown link kind {kind!r}") from None


def is_master(kind: str | None) -> bool:
    """Whether a link of kernel kind ``kind`` can have ports (unknown kinds cannot)."""
    found = KINDS.get(kind or "")
    return found is not None and found.master


def ports_down(kind: str | None) -> bool:
    """Whether a port must be down before it goes into a master of kernel kind ``kind``."""
    found = KINDS.get(kind or "")
    return found is not None and found.ports_down


# --------------------------------------------------------------------------------------------
# What each kind's section parses into


class ListsPorts:
    """For a master whose section lists its ports (``Ports =``, field ``port_names``)."""

    port_names: tuple[str, ...]

    @property
    def ports(self) -> tuple[str, ...]:
        return self.port_names


@dataclass(frozen=True, kw_only=True)
class BridgeConfig(ListsPorts, LinkConfig):
    KIND: ClassVar[str] = "bridge"
    port_names: tuple[str, ...] = ()
    stp: bool = False
    vlan_filtering: bool = False


@dataclass(frozen=True, kw_only=True)
class VethConfig(LinkConfig):
    """A veth pair. ``namespace`` is where the peer end goes; ``local_namespace`` where this end
    goes (None: tunnelpyd's). The file says ``Namespace = B`` for the first (the local end stays),
    or ``Namespace = A`` and ``PeerNamespace = B`` for a veth straight between A and B."""

    KIND: ClassVar[str] = "veth"
    peer: str = ""  # the other end's name; it goes to ``namespace``
    peer_addresses: tuple[IPInterface, ...] = ()
    local_namespace: str | None = None

    @property
    def pair(self) -> str | None:
        return self.peer

    @property
    def pair_home(self) -> str | None:
        return self.local_namespace

    @property
    def pair_addresses(self) -> tuple[IPInterface, ...]:
        return self.peer_addresses


@dataclass(frozen=True, kw_only=True)
class VLANConfig(OnLinkConfig):
    KIND: ClassVar[str] = "vlan"
    vlan_id: int = 0
    protocol: str = "802.1Q"  # or 802.1ad


@dataclass(frozen=True, kw_only=True)
class VXLANConfig(LinkConfig):
    KIND: ClassVar[str] = "vxlan"
    vni: int = 0
    remote: IPAddress | None = None
    group: IPAddress | None = None
    local: IPAddress | None = None
    dst_port: int = VXLAN_PORT
    link: str | None = None

    @property
    def parent(self) -> str | None:
        return self.link


@dataclass(frozen=True, kw_only=True)
class MACVLANConfig(OnLinkConfig):
    KIND: ClassVar[str] = "macvlan"
    mode: str = "bridge"  # bridge, private, vepa, passthru, source
    source_macs: tuple[bytes, ...] = ()
    mac: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class IPVLANConfig(OnLinkConfig):
    KIND: ClassVar[str] = "ipvlan"
    mode: str = "l3"  # l2, l3, l3s


@dataclass(frozen=True, kw_only=True)
class BondConfig(ListsPorts, LinkConfig):
    KIND: ClassVar[str] = "bond"
    mode: str = "active-backup"
    miimon: int = 100
    port_names: tuple[str, ...] = ()
    primary: str | None = None


@dataclass(frozen=True, kw_only=True)
class TeamConfig(ListsPorts, LinkConfig):
    KIND: ClassVar[str] = "team"
    runner: str = "activebackup"
    port_names: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# The kinds, in the order their sections are listed


@register
class Bridge(LinkKind[BridgeConfig]):
    config = BridgeConfig
    section = "Bridge"
    keys = (
        Key("Ports", "ifname", multi=True),
        Key("STP", "yes_no"),
        Key("VLANFiltering", "yes_no"),
    )
    module = "bridge"
    master = True
    switch = True

    def build(self, section: RawSection, ctx: _Context, common: Common) -> BridgeConfig:
        return BridgeConfig(
            **common(),
            port_names=tuple(p for _, p in section.all("Ports")),
            stp=section.value("STP", False),
            vlan_filtering=section.value("VLANFiltering", False),
        )

    def step_attrs(self, link: BridgeConfig) -> dict[str, Any]:
        return {"stp": link.stp, "vlan_filtering": link.vlan_filtering}

    def ip_type_args(self, step: Step) -> list[str]:
        out = ["stp_state", "1"] if step.get("stp") else []
        return out + (["vlan_filtering", "1"] if step.get("vlan_filtering") else [])

    def link_args(self, step: Step) -> dict[str, Any]:
        kw = {"br_stp_state": 1 if step.get("stp") else 0}
        if step.get("vlan_filtering"):
            kw["br_vlan_filtering"] = 1
        return kw

    def detail(self, link: BridgeConfig) -> str:
        on = (("STP", link.stp), ("VLAN filtering", link.vlan_filtering))
        return ", ".join(x for x, yes in on if yes)


@register
class Veth(LinkKind[VethConfig]):
    config = VethConfig
    section = "Veth"
    keys = (
        Key("Peer", "ifname"),
        Key("PeerAddress", "address", multi=True),
        Key("PeerNamespace", "namespace"),
    )
    module = "veth"
    shape = "ellipse"
    pair_key = "Peer"
    pair_address_key = "PeerAddress"

    def build(self, section: RawSection, ctx: _Context, common: Common) -> VethConfig:
        shared = common()
        peer_ns = section.value("PeerNamespace")
        local = None
        if peer_ns is not None:
            # Both ends named: Namespace is this end's, as for every other kind.
            local, shared["namespace"] = shared["namespace"], peer_ns
        return VethConfig(
            **shared,
            peer=_required(section, ctx, "Peer", "NAME of the other end"),
            peer_addresses=tuple(a for _, a in section.all("PeerAddress")),
            local_namespace=local,
        )

    def step_attrs(self, link: VethConfig) -> dict[str, Any]:
        return {"peer": link.peer, "peer_ns": link.namespace}

    def describe(self, link: VethConfig) -> str:
        here = f" in {link.local_namespace}" if link.local_namespace else ""
        where = f" (in {link.namespace})" if link.namespace else ""
        return f"{super().describe(link)}{here} <-> {link.peer}{where}"

    def ip_type_args(self, step: Step) -> list[str]:
        argv = ["peer", "name", step.get("peer")]
        if step.get("mtu"):
            argv += ["mtu", str(step.get("mtu"))]
        if step.get("peer_ns"):
            argv += ["netns", step.get("peer_ns")]
        return argv

    def link_args(self, step: Step) -> dict[str, Any]:
        peer: dict[str, Any] = {"ifname": step.get("peer")}
        if step.get("mtu"):
            peer["mtu"] = step.get("mtu")
        if step.get("peer_ns"):
            peer["net_ns_fd"] = step.get("peer_ns")  # a name; the caller makes it an fd
        return {"peer": peer}

    def probe_attrs(self, mode: str | None, name: str, parent: str) -> dict[str, Any]:
        return {"kind": self.name, "peer": f"{name}p"}


@register
class VLAN(LinkKind[VLANConfig]):
    config = VLANConfig
    section = "VLAN"
    keys = (
        Key("Link", "ifname"),
        Key("Id", "vlan_id"),
        Key("Protocol", Choice(VLAN_PROTOCOLS, "a VLAN protocol")),
    )
    module = "8021q"

    def build(self, section: RawSection, ctx: _Context, common: Common) -> VLANConfig:
        return VLANConfig(
            **common(),
            link=_required(section, ctx, "Link", "the parent interface"),
            vlan_id=_required(section, ctx, "Id", "1-4094"),
            protocol=section.value("Protocol", "802.1Q"),
        )

    def step_attrs(self, link: VLANConfig) -> dict[str, Any]:
        return {"link": link.link, "vlan_id": link.vlan_id, "protocol": link.protocol}

    def describe(self, link: VLANConfig) -> str:
        return f"{super().describe(link)} on {link.link}, VLAN {link.vlan_id}"

    def ip_type_args(self, step: Step) -> list[str]:
        protocol = step.get("protocol", "802.1Q")
        argv = ["protocol", protocol] if protocol != "802.1Q" else []
        return argv + ["id", str(step.get("vlan_id"))]

    def link_args(self, step: Step) -> dict[str, Any]:
        return {
            "vlan_id": step.get("vlan_id"),
            "vlan_protocol": VLAN_PROTOCOL_NUMBERS[step.get("protocol", "802.1Q")],
        }

    def probe_attrs(self, mode: str | None, name: str, parent: str) -> dict[str, Any]:
        return {"kind": self.name, "link": parent, "vlan_id": 2}

    def detail(self, link: VLANConfig) -> str:
        return f"id {link.vlan_id}" + (f" {link.protocol}" if link.protocol != "802.1Q" else "")


@register
class VXLAN(LinkKind[VXLANConfig]):
    config = VXLANConfig
    section = "VXLAN"
    keys = (
        Key("VNI", "vni"),
        Key("Remote", "ip"),
        Key("Group", "ip"),
        Key("Local", "ip"),
        Key("DstPort", "port"),
        Key("Link", "ifname"),
    )
    exclusive = (("Remote", "Group"),)
    module = "vxlan"
    l3_parent = True  # Link is the underlay the UDP leaves by
    parent_attr = "vxlan_link"

    def build(self, section: RawSection, ctx: _Context, common: Common) -> VXLANConfig:
        vni = _required(section, ctx, "VNI", "1-16777215")
        remote, group, local = (section.get(k) for k in ("Remote", "Group", "Local"))
        if group is not None and not group[1].is_multicast:
            raise ctx.error(
                group[0],
                section.where("Group"),
                f"{group[1]} is not multicast, expected a group address",
            )
        if remote is not None and remote[1].is_multicast:
            raise ctx.error(
                remote[0],
                section.where("Remote"),
                f"{remote[1]} is multicast, expected a unicast address (or Group = {remote[1]})",
            )
        far = remote or group
        if far is not None and local is not None and far[1].version != local[1].version:
            raise ctx.error(
                local[0],
                section.where("Local"),
                f"{local[1]} and {far[1]} are of different IP versions, expected the same",
            )
        return VXLANConfig(
            **common(),
            vni=vni,
            remote=remote[1] if remote else None,
            group=group[1] if group else None,
            local=local[1] if local else None,
            dst_port=section.value("DstPort", VXLAN_PORT),
            link=section.value("Link"),
        )

    def step_attrs(self, link: VXLANConfig) -> dict[str, Any]:
        return {
            "vni": link.vni,
            "remote": None if link.remote is None else str(link.remote),
            "group": None if link.group is None else str(link.group),
            "local": None if link.local is None else str(link.local),
            "dst_port": link.dst_port,
            "link": link.link,
        }

    def describe(self, link: VXLANConfig) -> str:
        return f"{super().describe(link)}, VNI {link.vni}"

    def port_steps(self, link: VXLANConfig, ns: str | None) -> list[Step]:
        """Steps after every port is enslaved (a bond's primary port); ``ns``: where it is."""
        return []

    def ip_lower(self, step: Step) -> list[str]:
        return []  # the underlay is "dev", after the type

    def ip_type_args(self, step: Step) -> list[str]:
        argv = ["id", str(step.get("vni"))]
        for key in ("remote", "group", "local"):
            if step.get(key):
                argv += [key, step.get(key)]
        argv += ["dstport", str(step.get("dst_port"))]
        if step.get("link"):
            argv += ["dev", step.get("link")]
        return argv

    def link_args(self, step: Step) -> dict[str, Any]:
        kw: dict[str, Any] = {"vxlan_id": step.get("vni"), "vxlan_port": step.get("dst_port")}
        far = step.get("remote") or step.get("group")
        if far:
            kw["vxlan_group6" if ":" in far else "vxlan_group"] = far
        local = step.get("local")
        if local:
            kw["vxlan_local6" if ":" in local else "vxlan_local"] = local
        return kw

    def probe_attrs(self, mode: str | None, name: str, parent: str) -> dict[str, Any]:
        return {"kind": self.name, "vni": 1, "dst_port": VXLAN_PORT}

    def detail(self, link: VXLANConfig) -> str:
        return f"VNI {link.vni}, port {link.dst_port}"

    def far(self, link: VXLANConfig) -> list[tuple[str, str]]:
        far = link.remote or link.group
        return [] if far is None else [(f"VTEP {far}", f"VNI {link.vni}")]


@register
class MACVLAN(LinkKind[MACVLANConfig]):
    config = MACVLANConfig
    section = "MACVLAN"
    keys = (
        Key("Link", "ifname"),
        Key("Mode", Choice(MACVLAN_MODES, "a MACVLAN mode")),
        Key("SourceMACs", "unicast_mac", multi=True),
        Key("MACAddress", "unicast_mac"),
    )
    module = "macvlan"
    rx_handler = True
    rivals = ("macvlan", "macvtap")

    def build(self, section: RawSection, ctx: _Context, common: Common) -> MACVLANConfig:
        mode = section.value("Mode", "bridge")
        sources = section.all("SourceMACs")
        if sources and mode != "source":
            raise ctx.error(
                sources[0][0],
                section.where("SourceMACs"),
                f"only used with Mode = source, expected no SourceMACs with Mode = {mode}",
            )
        if mode == "source" and not sources:
            raise ctx.error(
                section.line,
                section.where("SourceMACs"),
                "missing, Mode = source needs SourceMACs = aa:bb:cc:dd:ee:ff, ...",
            )
        return MACVLANConfig(
            **common(),
            link=_required(section, ctx, "Link", "the parent interface"),
            mode=mode,
            source_macs=tuple(dict.fromkeys(m for _, m in sources)),
            mac=section.value("MACAddress"),
        )

    def check_parent(
        self,
        section: RawSection,
        link: MACVLANConfig,
        earlier: list[tuple[RawSection, LinkConfig]],
        ctx: _Context,
    ) -> None:
        # passthru hands the parent's MAC and promiscuity to one child: a second one fails.
        if link.mode != "passthru":
            return
        for first, other in earlier:
            if isinstance(other, MACVLANConfig) and other.mode == "passthru":
                if other.link == link.link:
                    raise ctx.error(
                        _line_of(section, "Link"),
                        section.where("Link"),
                        f"{link.link!r} already has a passthru MACVLAN (line {first.line}), "
                        "expected one passthru child per parent",
                    )

    def step_attrs(self, link: MACVLANConfig) -> dict[str, Any]:
        return {
            "link": link.link,
            "mode": link.mode,
            "source_macs": tuple(m.hex(":") for m in link.source_macs),
            "mac": None if link.mac is None else link.mac.hex(":"),
        }

    def describe(self, link: MACVLANConfig) -> str:
        return f"{super().describe(link)} on {link.link}, mode {link.mode}"

    def ip_type_args(self, step: Step) -> list[str]:
        return ["mode", step.get("mode")]

    def ip_extra(self, step: Step) -> list[str]:
        if not step.get("source_macs"):
            return []
        argv = [*ip_argv(step.ns), "link", "set", step.name, "type", "macvlan", "macaddr", "set"]
        return [shlex.join([*argv, *step.get("source_macs")])]

    def link_args(self, step: Step) -> dict[str, Any]:
        kw: dict[str, Any] = {"macvlan_mode": step.get("mode")}
        if step.get("source_macs"):
            kw["macvlan_macaddr_mode"] = "set"
            kw["macvlan_macaddr_data"] = {
                "attrs": [("IFLA_MACVLAN_MACADDR", mac) for mac in step.get("source_macs")]
            }
        return kw

    def probe_attrs(self, mode: str | None, name: str, parent: str) -> dict[str, Any]:
        found: dict[str, Any] = {"kind": self.name, "link": parent, "mode": mode or "bridge"}
        if mode == "source":
            found["source_macs"] = ("02:00:00:00:00:01",)
        return found

    def sole_child(self, step: Step) -> str | None:
        return "passthru" if step.get("mode") == "passthru" else None

    def detail(self, link: MACVLANConfig) -> str:
        sources = ", ".join(m.hex(":") for m in link.source_macs)
        return f"mode {link.mode}" + (f" from {sources}" if sources else "")


@register
class IPVLAN(LinkKind[IPVLANConfig]):
    config = IPVLANConfig
    section = "IPVLAN"
    keys = (Key("Link", "ifname"), Key("Mode", Choice(IPVLAN_MODES, "an IPVLAN mode")))
    module = "ipvlan"
    rx_handler = True

    def build(self, section: RawSection, ctx: _Context, common: Common) -> IPVLANConfig:
        return IPVLANConfig(
            **common(),
            link=_required(section, ctx, "Link", "the parent interface"),
            mode=section.value("Mode", "l3"),
        )

    def step_attrs(self, link: IPVLANConfig) -> dict[str, Any]:
        return {"link": link.link, "mode": link.mode}

    def describe(self, link: IPVLANConfig) -> str:
        return f"{super().describe(link)} on {link.link}, mode {link.mode}"

    def ip_type_args(self, step: Step) -> list[str]:
        return ["mode", step.get("mode")]

    def link_args(self, step: Step) -> dict[str, Any]:
        return {"ipvlan_mode": IPVLAN_MODE_NUMBERS[step.get("mode")]}

    def probe_attrs(self, mode: str | None, name: str, parent: str) -> dict[str, Any]:
        return {"kind": self.name, "link": parent, "mode": mode or "l3"}

    def detail(self, link: IPVLANConfig) -> str:
        return f"mode {link.mode}"


@register
class Bond(LinkKind[BondConfig]):
    config = BondConfig
    section = "Bond"
    keys = (
        Key("Mode", Choice(BOND_MODES, "a bonding mode")),
        Key("Miimon", "miimon"),
        Key("Ports", "ifname", multi=True),
        Key("Primary", "ifname"),
    )
    module = "bonding"
    master = True
    ports_down = True

    def build(self, section: RawSection, ctx: _Context, common: Common) -> BondConfig:
        ports = tuple(p for _, p in section.all("Ports"))
        primary = section.get("Primary")
        if primary is not None and primary[1] not in ports:
            raise ctx.error(
                primary[0],
                section.where("Primary"),
                f"{primary[1]!r} is not one of the bond's Ports, expected one of: "
                f"{', '.join(ports) or 'none given'}",
            )
        return BondConfig(
            **common(),
            mode=section.value("Mode", "active-backup"),
            miimon=section.value("Miimon", 100),
            port_names=ports,
            primary=primary[1] if primary else None,
        )

    def step_attrs(self, link: BondConfig) -> dict[str, Any]:
        return {"mode": link.mode, "miimon": link.miimon}

    def describe(self, link: BondConfig) -> str:
        return f"{super().describe(link)}, mode {link.mode}"

    def port_steps(self, link: BondConfig, ns: str | None) -> list[Step]:
        if link.primary is None:
            return []
        what = f"{link.primary} is the primary port of {link.name}"
        return [Step(PRIMARY, link.name, ns, attrs(primary=link.primary), link.line, what)]

    def ip_type_args(self, step: Step) -> list[str]:
        return ["mode", step.get("mode"), "miimon", str(step.get("miimon"))]

    def link_args(self, step: Step) -> dict[str, Any]:
        return {"bond_mode": BOND_MODE_NUMBERS[step.get("mode")], "bond_miimon": step.get("miimon")}

    def probe_attrs(self, mode: str | None, name: str, parent: str) -> dict[str, Any]:
        return {"kind": self.name, "mode": "active-backup", "miimon": 100}

    def detail(self, link: BondConfig) -> str:
        primary = f", primary {link.primary}" if link.primary else ""
        return f"{link.mode}, miimon {link.miimon}{primary}"


def teamd_config(runner: str) -> str:
    """The JSON teamd is started with (link watch by ethtool)."""
    return json.dumps({"runner": {"name": runner}, "link_watch": {"name": "ethtool"}})


@register
class Team(LinkKind[TeamConfig]):
    """teamd makes the device (``teamd -d -t NAME``) and runs it; the probe makes a bare one
    through netlink, which proves the kernel module is there."""

    config = TeamConfig
    section = "Team"
    keys = (
        Key("Runner", Choice(TEAM_RUNNERS, "a teamd runner")),
        Key("Ports", "ifname", multi=True),
    )
    module = "team"
    master = True
    ports_down = True

    def build(self, section: RawSection, ctx: _Context, common: Common) -> TeamConfig:
        return TeamConfig(
            **common(),
            runner=section.value("Runner", "activebackup"),
            port_names=tuple(p for _, p in section.all("Ports")),
        )

    def step_attrs(self, link: TeamConfig) -> dict[str, Any]:
        return {"runner": link.runner}

    def describe(self, link: TeamConfig) -> str:
        return f"team {link.name} ({link.runner} runner) through teamd"

    def create_step(self, link: TeamConfig, ns: str | None) -> Step:
        step = super().create_step(link, ns)
        return Step(TEAMD, step.name, step.ns, step.attrs, step.line, step.what)

    def commands(self, step: Step) -> list[str]:
        argv = ["teamd", "-d", "-t", step.name, "-c", teamd_config(step.get("runner"))]
        out = [shlex.join(in_ns(step.ns, argv))]
        if step.get("mtu"):
            out.append(shlex.join([*ip_argv(step.ns), "link", "set", step.name, "mtu",
                                   str(step.get("mtu"))]))  # fmt: skip
        return out

    def undo_commands(self, step: Step, final_ns: str | None) -> list[str]:
        return [shlex.join(in_ns(step.ns, ["teamd", "-k", "-t", step.name]))]

    def detail(self, link: TeamConfig) -> str:
        return f"teamd {link.runner}"
