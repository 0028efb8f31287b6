"""What a reload changes: the difference between the running Config and a new one, as operations.

Pure: :func:`diff` compares two parsed :class:`~tunnelpy.config.Config` objects and returns a
:class:`ReloadPlan`; it opens, resolves and starts nothing. The daemon applies the plan in order,
the way ``wg syncconf`` applies a file:

1. interface changes that can be made live (private key, listen port, fwmark, MTU, addresses,
   log level, metrics address); the ones that cannot (Name, Transport, Table, User, Offload,
   Workers) are listed in ``restart_needed`` and left as they are (the daemon logs them);
2. peers removed (identified by public key, or by Name with ``Transport = vxlan`` whose peers have
   no keys), then peers added, then changed peers updated field by field — a peer whose fields are
   all equal gets no operation at all, so its session and handshake time are untouched;
3. segments removed, then added, then changed in place (member peers, hub, aging, FDB size,
   static MACs); a segment whose VNI, device, bridge, MTU or addresses changed is removed and
   added again (its TAP is recreated);
4. topology sections removed (in reverse file order), added and changed (in file order), for the
   log; what the kernel sees is the plan's difference (``netlink.plan.diff``, the ``Reshape``
   operation): only the steps that changed are undone and applied, through the same undo
   journal as at start-up, so a link whose section did not change is not touched.

Removals come before additions so a key, VNI or device name moved from one entry to another
never collides. The plan's ``str()`` lines are what the daemon logs as the reload result.

Applying a plan is two steps, both through the running :class:`~tunnelpy.device.Device`:
:func:`prepare` does everything that can fail without side effects (resolve new endpoints,
bind a new listen port, check that new segment devices are free, validate the topology steps
against the kernel) and raises :class:`ReloadRefused` with one line if anything does;
:func:`apply` then makes the changes, the topology first: a topology step that fails anyway
(what no validation can foresee) is rolled back with everything the reload did to the
topology, and the whole reload is refused before the device changes at all. What the service
layer owns (log level, metrics listener) it applies itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .config import Config, InterfaceConfig, LinkConfig, PeerConfig, SegmentConfig
from .device import DeviceError
from .io.udp import UdpError
from .netlink import plan as planmod

if TYPE_CHECKING:
    from .device import Device
    from .io.udp import UdpSocket
    from .io.vxlan_socket import VxlanSocket
    from .netlink.step import Step
    from .netlink.topology import Topology
    from .protocol.peer import Addr

log = logging.getLogger("tunnelpyd")

# [Interface] fields a reload can apply to a running daemon, and those needing a restart.
LIVE_INTERFACE_FIELDS = (
    "private_key", "listen_port", "fwmark", "mtu", "addresses", "log_level", "log_format",
    "metrics_listen",
    "dns", "pre_up", "post_up", "pre_down", "post_down", "save_config",
)  # fmt: skip
RESTART_INTERFACE_FIELDS = (
    "name", "transport", "table", "user", "offload", "workers", "listen_address",
)  # fmt: skip
PEER_FIELDS = ("name", "preshared_key", "endpoint", "allowed_ips", "persistent_keepalive")
SEGMENT_LIVE_FIELDS = (
    "peers", "hub", "static_macs", "aging", "max_fdb", "allowed_macs", "max_per_peer",
    "move_hold",
)  # fmt: skip
SEGMENT_REPLACE_FIELDS = ("vni", "device", "bridge", "mtu", "addresses")
_SECRET_FIELDS = ("private_key", "preshared_key")
_IGNORED = ("line",)  # moving a section in the file changes nothing


@dataclass(frozen=True)
class SetInterface:
    """Change one [Interface] field to ``value`` (the new config's value)."""

    field: str
    value: Any

    def __str__(self) -> str:
        shown = "(changed)" if self.field in _SECRET_FIELDS else _fmt(self.value)
        return f"interface {self.field} -> {shown}"


@dataclass(frozen=True)
class AddPeer:
    peer: PeerConfig

    def __str__(self) -> str:
        return f"add peer {self.peer.name}"


@dataclass(frozen=True)
class RemovePeer:
    peer: PeerConfig  # as it was in the old config

    def __str__(self) -> str:
        return f"remove peer {self.peer.name}"


@dataclass(frozen=True)
class UpdatePeer:
    """Change the listed fields of an existing peer; ``changes`` maps field -> new value."""

    old: PeerConfig
    new: PeerConfig
    changes: tuple[tuple[str, Any], ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.changes)

    def __str__(self) -> str:
        return f"update peer {self.new.name}: {', '.join(self.fields)}"


@dataclass(frozen=True)
class AddSegment:
    segment: SegmentConfig

    def __str__(self) -> str:
        return f"add segment {self.segment.name} (VNI {self.segment.vni})"


@dataclass(frozen=True)
class RemoveSegment:
    segment: SegmentConfig

    def __str__(self) -> str:
        return f"remove segment {self.segment.name} (VNI {self.segment.vni})"


@dataclass(frozen=True)
class UpdateSegment:
    old: SegmentConfig
    new: SegmentConfig
    changes: tuple[tuple[str, Any], ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.changes)

    def __str__(self) -> str:
        return f"update segment {self.new.name}: {', '.join(self.fields)}"


@dataclass(frozen=True)
class AddLink:
    link: LinkConfig

    def __str__(self) -> str:
        return f"add {self.link.kind} {self.link.name}"


@dataclass(frozen=True)
class RemoveLink:
    link: LinkConfig

    def __str__(self) -> str:
        return f"remove {self.link.kind} {self.link.name}"


@dataclass(frozen=True)
class ChangeLink:
    old: LinkConfig
    new: LinkConfig
    fields: tuple[str, ...]

    def __str__(self) -> str:
        return f"change {self.new.kind} {self.new.name}: {', '.join(self.fields)}"


@dataclass(frozen=True)
class ChangeSection:
    """A [Namespace] or [Netem] section added, removed or changed (for the log)."""

    verb: str  # add, remove, change
    label: str  # "namespace web", "netem web0"
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.verb} {self.label}" + (f": {', '.join(self.fields)}" if self.fields else "")


@dataclass(frozen=True)
class Reshape:
    """What the kernel's topology goes through: the plan's difference."""

    diff: planmod.PlanDiff

    def __str__(self) -> str:
        return str(self.diff)


Operation = (
    SetInterface | AddPeer | RemovePeer | UpdatePeer | AddSegment | RemoveSegment | UpdateSegment
    | AddLink | RemoveLink | ChangeLink | ChangeSection | Reshape
)  # fmt: skip


@dataclass
class ReloadPlan:
    """The operations in the order to apply them, and what only a restart would change."""

    operations: list[Operation] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)  # [Interface] field names

    def __bool__(self) -> bool:
        return bool(self.operations or self.restart_needed)

    def of(self, kind: type) -> list[Any]:
        return [op for op in self.operations if isinstance(op, kind)]

    def summary(self) -> str:
        """One line for the log: what changed, or "no changes"."""
        if not self:
            return "no changes"
        parts = [str(op) for op in self.operations]
        if self.restart_needed:
            parts.append("needs a restart to change " + ", ".join(self.restart_needed))
        return "; ".join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) or "(none)"
    return "(none)" if value is None else str(value)


def _changes(old: Any, new: Any, names: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    out = []
    for name in names:
        if not hasattr(old, name) and not hasattr(new, name):
            continue  # a field this version of config.py does not have (yet)
        a, b = getattr(old, name, None), getattr(new, name, None)
        if name == "allowed_ips":
            a, b = frozenset(a or ()), frozenset(b or ())  # order does not matter
        if a != b:
            out.append((name, getattr(new, name, None)))
    return tuple(out)


def peer_identity(peer: PeerConfig) -> bytes | str:
    """What makes two [Peer] sections the same peer: the key (by Name when there is none)."""
    return peer.public_key or peer.name


def diff(old: Config, new: Config) -> ReloadPlan:
    """The operations that turn a daemon running ``old`` into one running ``new``."""
    plan = ReloadPlan()
    _diff_interface(old.interface, new.interface, plan)

    old_peers = {peer_identity(p): p for p in old.peers}
    new_peers = {peer_identity(p): p for p in new.peers}
    for ident, p in old_peers.items():
        if ident not in new_peers:
            plan.operations.append(RemovePeer(p))
    for ident, p in new_peers.items():
        if ident not in old_peers:
            plan.operations.append(AddPeer(p))
    for ident, p in new_peers.items():
        before = old_peers.get(ident)
        if before is not None:
            changes = _changes(before, p, PEER_FIELDS)
            if changes:
                plan.operations.append(UpdatePeer(before, p, changes))

    old_segs = {s.name: s for s in old.segments}
    new_segs = {s.name: s for s in new.segments}
    replaced = {
        name
        for name, s in new_segs.items()
        if name in old_segs and _changes(old_segs[name], s, SEGMENT_REPLACE_FIELDS)
    }
    for name, s in old_segs.items():
        if name not in new_segs or name in replaced:
            plan.operations.append(RemoveSegment(s))
    for name, s in new_segs.items():
        if name not in old_segs or name in replaced:
            plan.operations.append(AddSegment(s))
    for name, s in new_segs.items():
        if name in old_segs and name not in replaced:
            changes = _changes(old_segs[name], s, SEGMENT_LIVE_FIELDS)
            if changes:
                plan.operations.append(UpdateSegment(old_segs[name], s, changes))

    old_links = {link.name: link for link in old.topology}
    new_links = {link.name: link for link in new.topology}
    for link in reversed(old.topology):
        if link.name not in new_links:
            plan.operations.append(RemoveLink(link))
    for link in new.topology:
        was = old_links.get(link.name)
        if was is None:
            plan.operations.append(AddLink(link))
        elif not _same_link(was, link):
            plan.operations.append(ChangeLink(was, link, _link_fields(was, link)))
    for label, olds, news in (
        ("namespace", {n.name: n for n in old.namespaces}, {n.name: n for n in new.namespaces}),
        ("netem", {n.link: n for n in old.netem}, {n.link: n for n in new.netem}),
    ):
        for name in olds.keys() - news.keys():
            plan.operations.append(ChangeSection("remove", f"{label} {name}"))
        for name, section in news.items():
            if name not in olds:
                plan.operations.append(ChangeSection("add", f"{label} {name}"))
            elif _link_fields(olds[name], section):
                fields_ = _link_fields(olds[name], section)
                plan.operations.append(ChangeSection("change", f"{label} {name}", fields_))
    recreated = frozenset(op.segment.device for op in plan.of(AddSegment))
    reshape = planmod.diff(planmod.build(old), planmod.build(new), recreated)
    if reshape:
        plan.operations.append(Reshape(reshape))
    return plan


def _diff_interface(old: InterfaceConfig, new: InterfaceConfig, plan: ReloadPlan) -> None:
    for name, value in _changes(old, new, LIVE_INTERFACE_FIELDS):
        plan.operations.append(SetInterface(name, value))
    plan.restart_needed.extend(name for name, _ in _changes(old, new, RESTART_INTERFACE_FIELDS))


def _same_link(a: LinkConfig, b: LinkConfig) -> bool:
    if type(a) is not type(b):
        return False
    return all(
        getattr(a, f.name) == getattr(b, f.name) for f in fields(a) if f.name not in _IGNORED
    )


def _link_fields(a: Any, b: Any) -> tuple[str, ...]:
    """The fields of two sections of one name that differ (all of them for another kind)."""
    if type(a) is not type(b):
        return ("kind",)
    ignored = (*_IGNORED, "routes") if hasattr(a, "routes") else _IGNORED
    out = [
        f.name
        for f in fields(a)
        if f.name not in ignored and getattr(a, f.name) != getattr(b, f.name)
    ]
    if "routes" in ignored and [str(r) for r in a.routes] != [str(r) for r in b.routes]:
        out.append("routes")  # compared without their lines
    return tuple(out)


# ------------------------------------------------------------------------------ applying


class ReloadRefused(Exception):
    """The new config cannot be applied; nothing was changed. ``str(e)`` is one line."""


@dataclass
class Prepared:
    """What :func:`prepare` made ready: resolved endpoints and a socket on a new port."""

    endpoints: dict[bytes | str, Addr] = field(default_factory=dict)
    socket: UdpSocket | VxlanSocket | None = None
    topology: Topology | None = None  # the running one, when the reload changes it
    reshape: planmod.PlanDiff | None = None  # validated against the kernel
    later: tuple[Step, ...] = ()  # topology steps on segment TAPs the reload opens

    def discard(self) -> None:
        """The plan was not applied after all: nothing prepared may stay behind."""
        if self.socket is not None:
            self.socket.close()
            self.socket = None


async def prepare(
    plan: ReloadPlan, device: Device, new: Config, topology: Topology | None = None
) -> Prepared:
    """Everything that can fail, before anything changes. Raises ReloadRefused.
    ``topology``: the daemon's running topology (needed when the reload changes it)."""
    from .netlink.topology import TopologyError

    prepared = Prepared()
    resolve_now = [op.peer for op in plan.of(AddPeer)]
    resolve_now += [op.new for op in plan.of(UpdatePeer) if "endpoint" in op.fields]
    try:
        prepared.endpoints = await device.resolve_endpoints(resolve_now, new.path)
        removed_devices = {op.segment.device for op in plan.of(RemoveSegment)}
        await device.check_free(
            [op.segment for op in plan.of(AddSegment)],
            own_links={link.name for link in new.topology}, path=new.path,
            interface=False, removed=removed_devices,
        )  # fmt: skip
    except DeviceError as e:
        raise ReloadRefused(str(e)) from None
    if plan.of(Reshape):
        if topology is None:
            raise ReloadRefused(f"{new.path}: topology sections changed, and this tunnelpyd "
                                "keeps no topology (a restart applies them)")  # fmt: skip
        recreated = frozenset(op.segment.device for op in plan.of(AddSegment))
        try:
            prepared.reshape = await device.blocking(topology.prepare_change, new, recreated)
        except TopologyError as e:
            raise ReloadRefused(str(e)) from None
        prepared.topology = topology
    for op in plan.of(SetInterface):
        if op.field == "listen_port" and device.udp is not None and op.value != device.udp.port:
            try:
                prepared.socket = device.open_socket(op.value)
            except (UdpError, OSError) as e:
                raise ReloadRefused(f"{new.path}: Interface.ListenPort: {e}") from None
    return prepared


async def apply(plan: ReloadPlan, device: Device, new: Config, prepared: Prepared) -> None:
    """Make the running device match ``new`` (prepare() has already done what can fail)."""
    from .netlink.topology import TopologyError

    old = device.conf
    if prepared.topology is not None and prepared.reshape is not None:
        # First: a step that fails is rolled back with the rest of the topology change, and
        # the reload is refused before anything else changed.
        later = frozenset(op.segment.device for op in plan.of(AddSegment))
        try:
            prepared.later = await device.blocking(
                prepared.topology.change, prepared.reshape, later
            )
        except TopologyError as e:
            raise ReloadRefused(str(e)) from None
        prepared.reshape = None
    routes_dirty = False
    with device.batch():
        for op in plan.of(SetInterface):
            routes_dirty |= await _set_interface(op, device, old, prepared)
        for rp in plan.of(RemovePeer):
            device.remove_peer(device.peer_ident(rp.peer))
            routes_dirty = True
        for ap in plan.of(AddPeer):
            endpoint = prepared.endpoints.get(device.peer_ident(ap.peer))
            if device.has_peer(device.peer_ident(ap.peer)):
                # already there (added at run time by `wg set`): the file's values win
                device.update_peer_config(ap.peer, endpoint, PEER_FIELDS)
            else:
                device.add_peer_config(ap.peer, endpoint)
            routes_dirty = True
        for up in plan.of(UpdatePeer):
            endpoint = prepared.endpoints.get(device.peer_ident(up.new))
            device.update_peer_config(up.new, endpoint, up.fields)
            routes_dirty |= "allowed_ips" in up.fields
        for rs in plan.of(RemoveSegment):
            device.remove_segment(rs.segment.vni)
        device.conf = new  # segment_mtu and the segment bindings read the new config
        added = {op.segment.vni for op in plan.of(AddSegment)}
        for op in plan.of(AddSegment):
            await device.add_segment(op.segment)
        peer_changes = bool(plan.of(AddPeer) or plan.of(RemovePeer))
        renamed = any("name" in op.fields for op in plan.of(UpdatePeer))
        for seg in new.segments:
            if seg.vni in added:
                continue
            changed = any(op.new.name == seg.name for op in plan.of(UpdateSegment))
            names = (
                set(seg.peers or ())
                | {n for _, n in seg.static_macs}
                | {n for _, _, n in seg.allowed_macs}
            )
            if changed or (peer_changes or renamed) and (names or seg.peers is None):
                device.bind_segment(seg, keep_fdb=not changed)
    if prepared.topology is not None and prepared.later:
        # the new TAPs exist now: their ports, up and netem (a failure here is part-way)
        steps, prepared.later = prepared.later, ()
        await device.blocking(prepared.topology.finish, steps)
    if routes_dirty:
        await device.sync_routes()


async def _set_interface(op: SetInterface, device: Device, old: Config, prepared: Prepared) -> bool:
    """One live [Interface] change; True when the routes must follow (a new fwmark)."""
    f, value = op.field, op.value
    if f == "private_key" and not device.plain_vxlan:
        device.set_private_key(value)
        log.warning("reload: new private key: every session starts over")
    elif f == "listen_port" and prepared.socket is not None:
        sock, prepared.socket = prepared.socket, None
        device.replace_socket(sock)
    elif f == "fwmark":
        device.set_fwmark(value)
        return True
    elif f == "mtu":
        await device.set_mtu(value)
    elif f == "addresses":
        await device.set_addresses(old.interface.addresses, value)
    return False
