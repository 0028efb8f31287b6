"""The asyncio shell around the engine: the only code that knows the loop, the clock and signals.

Start-up is ordered so that a failure changes nothing on the host: names are resolved and every
precondition checked first (interface name free, UAPI socket not served by a live daemon, UDP
port free), then the TUN is created and configured, hooks run, and only then do packets flow.
Anything that fails after the TUN exists unwinds what was done, in reverse.

The data path: a readiness callback on the TUN fd drains a batch of packets and gives it to
``engine.from_tunnel``; one on the UDP socket drains a batch of datagrams and gives it to
``engine.from_network``; the Output of either is performed at once (datagrams grouped by
destination, packets written to the TUN). One loop timer is kept at ``engine.next_deadline()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable

from . import config as cfgmod
from .datapath import DataPath, ProtocolClock
from .io import offload as offload_mod
from .io.tun import Tun, TunError
from .io.uapi import UNSET, DeviceSnapshot, PeerChange, PeerSnapshot, SetRequest, UapiServer
from .io.udp import UdpSocket, is_literal, resolve
from .io.vxlan_socket import VxlanSocket
from .netlink import iface
from .netlink.topology import Topology, TopologyError
from .protocol.engine import Engine
from .protocol.events import (
    Event,
    HandshakeComplete,
    HandshakeFailed,
    HandshakeSent,
    ResolveEndpoint,
    Roamed,
)
from .protocol.peer import Peer
from .protocol.vxlan import ETH_HLEN, VxlanEngine
from .protocol.vxlan import HEADER_LEN as VXLAN_HLEN
from .service import Service
from .workers.pool import WorkerPool, forced_workers, resolve_workers

log = logging.getLogger("tunnelpyd")

UNDERLAY_MTU = 1500  # what plain-VXLAN segments assume of the underlay unless MTU is set


class StartupError(Exception):
    """A one-line, user-facing reason the daemon could not start (nothing was left behind)."""


class Daemon:
    def __init__(
        self,
        conf: cfgmod.Config,
        *,
        uapi_dir: str = "/var/run/wireguard",
        control_dir: str = "/run/tunnelpy",
        user: str | None = None,
        log_level_override: str | None = None,
    ) -> None:
        self.conf = conf
        # systemd readiness, control socket, metrics, reload, User drop (service.py)
        self.service: Service | None = None
        self._service_args = {
            "control_dir": control_dir, "user": user, "log_level_override": log_level_override,
        }  # fmt: skip
        self.name = conf.interface.name
        self.uapi_dir = uapi_dir
        self.plain_vxlan = conf.interface.transport == cfgmod.TRANSPORT_VXLAN
        self.engine: Engine | VxlanEngine
        if self.plain_vxlan:
            self.engine = VxlanEngine()
        else:
            self.engine = Engine(
                conf.interface.private_key, rng=os.urandom, wall=time.time, mtu=conf.interface.mtu
            )
        self.taps: dict[int, Tun] = {}
        self.topology: Topology | None = None
        self._topology_names = {link.name for link in conf.topology}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tun: Tun | None = None
        self.udp: UdpSocket | VxlanSocket | None = None
        self.uapi: UapiServer | None = None
        self.routes = iface.RouteState()
        self.fwmark: int | None = conf.interface.fwmark
        self.datapath: DataPath | None = None
        self.pool: WorkerPool | None = None  # Workers > 1 (tunnelpy/workers/)
        self.workers = 1
        self.clock: ProtocolClock
        self._stop = asyncio.Event()
        self._undo: list[Callable[[], None]] = []
        self._hostnames: dict[bytes, tuple[str, int]] = {}  # peer key -> configured host:port
        self._resolving: set[bytes] = set()
        # Offload = auto: TUN/TAP TSO+GRO and UDP GSO+GRO (docs/performance.md); off: none.
        self.offload = conf.interface.offload != cfgmod.OFFLOAD_OFF

    # ------------------------------------------------------------------ life cycle

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        scale = os.environ.get("TUNNELPY_TEST_TIME_SCALE")
        try:
            self.clock = ProtocolClock(self.loop, float(scale) if scale else 1.0)
        except ValueError:
            raise StartupError(
                f"TUNNELPY_TEST_TIME_SCALE={scale}: expected a number between 0.01 and 1"
            ) from None
        if scale:
            log.warning("TUNNELPY_TEST_TIME_SCALE=%s: protocol timers run faster (testing only)", scale)
        try:
            await self._start()
            # Devices, addresses, routes and topology are up: READY=1 comes from here.
            self.service = Service(self, **self._service_args)
            await self.service.start()
        except StartupError:
            await self._teardown()
            raise
        except BaseException:
            await self._teardown()
            raise
        log.info(
            "%s up: listening on UDP %d, %d peer(s)", self.name, self.udp.port, len(self.engine.peers)
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._stop.wait()
        finally:
            log.info("%s shutting down", self.name)
            await self._teardown()
        return 0

    def stop(self) -> None:
        self._stop.set()

    async def _blocking(self, fn: Callable, *args):
        assert self.loop is not None
        return await self.loop.run_in_executor(None, fn, *args)

    async def _start(self) -> None:
        conf = self.conf
        ic = conf.interface
        vxlan = self.plain_vxlan
        for w in conf.warnings:
            log.warning("%s", w)
        if ic.dns:
            log.warning("DNS = %s is not applied by tunnelpyd (configure your resolver)", ", ".join(ic.dns))
        if vxlan and ic.workers is not None and ic.workers > 1:
            raise StartupError(
                f"{conf.path}: Interface.Workers = {ic.workers}: workers need Transport = wireguard"
            )
        forced = None if vxlan else forced_workers()
        if forced is not None:
            log.warning("TUNNELPY_TEST_WORKERS=%d: Workers forced (testing only)", forced)
        self.workers = 1 if vxlan else forced or resolve_workers(ic.workers)

        # 1. Everything that can fail without side effects.
        endpoints: list[tuple[str, int] | None] = []
        for p in conf.peers:
            if p.endpoint is None:
                endpoints.append(None)
                continue
            host, port = p.endpoint
            if not is_literal(host):
                self._hostnames[p.public_key] = (host, port)
            try:
                endpoints.append(await self._blocking(resolve, host, port))
            except OSError as e:
                raise StartupError(
                    f"{conf.path}:{p.line}: Peer.Endpoint: cannot resolve {host}: {e}"
                ) from None
        if not vxlan and await self._blocking(iface.link_exists, self.name):
            raise StartupError(f"interface {self.name} already exists")
        for seg in conf.segments:
            if await self._blocking(iface.link_exists, seg.device):
                raise StartupError(
                    f"{conf.path}:{seg.line}: Segment {seg.name}: interface {seg.device} already exists"
                )
            if seg.bridge is not None and seg.bridge not in self._topology_names:
                kind = await self._blocking(iface.link_kind, seg.bridge)
                if kind != "bridge":
                    what = "does not exist" if kind is None else f"is a {kind or 'plain'} link, not a bridge"
                    raise StartupError(
                        f"{conf.path}:{seg.line}: Segment {seg.name}.Bridge: {seg.bridge} {what}"
                    )

        if conf.topology:
            # A SIGKILLed predecessor's links go first; then the whole plan is checked against
            # the kernel (kinds it lacks, names taken, parents missing) before anything changes.
            self.topology = Topology(conf)
            try:
                for line in await self._blocking(self.topology.cleanup_leftovers):
                    log.info("topology: %s", line)
                await self._blocking(self.topology.validate)
            except TopologyError as e:
                raise StartupError(str(e)) from None

        # 2. Things that need undoing, in order (_teardown undoes whatever got done).
        if not vxlan:
            self.uapi = UapiServer(self.name, self._uapi_get, self._uapi_set, directory=self.uapi_dir)
            try:
                await self.uapi.start()
            except Exception as e:
                self.uapi = None
                raise StartupError(str(e)) from None
        nets = [n for p in conf.peers for n in p.allowed_ips]
        if iface.needs_default_route_rules(nets, ic.table) and not self.fwmark:
            self.fwmark = iface.DEFAULT_ROUTE_TABLE
        try:
            self.udp = (
                VxlanSocket(ic.listen_port, self.fwmark, offload=self.offload)
                if vxlan
                else UdpSocket(ic.listen_port, self.fwmark, offload=self.offload)
            )
        except OSError as e:
            raise StartupError(str(e)) from None
        self._add_peers(endpoints)
        self._add_segments()
        self._run_hooks("PreUp", ic.pre_up)
        try:
            if not vxlan:
                self.tun = Tun(self.name, offload=self.offload, multi_queue=self.workers > 1)
            for seg in conf.segments:
                self.taps[seg.vni] = Tun(seg.device, tap=True, offload=self.offload)
        except Exception as e:
            raise StartupError(str(e)) from None
        if self.tun is not None and isinstance(self.udp, UdpSocket):
            log.info(
                "%s: offloads %s; UDP GSO %s, GRO %s; segment loops %s", self.name,
                self.tun.offloads or "off", "on" if self.udp.gso else "off",
                "on" if self.udp.gro else "off",
                "compiled" if offload_mod.compiled() else "in Python",
            )  # fmt: skip
        try:
            if self.tun is not None:
                await self._blocking(iface.configure_device, self.name, ic.mtu, list(ic.addresses))
            for seg in conf.segments:
                await self._blocking(
                    iface.configure_device, seg.device, self.segment_mtu(seg), list(seg.addresses)
                )
                if seg.bridge is not None and seg.bridge not in self._topology_names:
                    await self._blocking(iface.enslave, seg.device, seg.bridge)
            if self.topology is not None:
                # After the TUN and TAPs exist: they can be ports of the topology's bridges.
                # On failure apply() has already undone its own steps.
                await self._blocking(self.topology.apply)
        except iface.NetlinkSetupError as e:
            raise StartupError(str(e)) from None
        except TopologyError as e:
            raise StartupError(str(e)) from None

        # Packets flow from here on: routes can take long to install (10^5 AllowedIPs prefixes
        # are 10^5 netlink round trips), and the peers need not wait for them.
        self.datapath = DataPath(
            self.loop, self.engine, self.udp, self.tun, self._on_event, self.clock
        )
        for vni, tap in self.taps.items():
            self.datapath.add_tap(vni, tap, running=False)
        self.datapath.start()
        if self.workers > 1 and self.tun is not None and isinstance(self.udp, UdpSocket):
            assert isinstance(self.engine, Engine)
            self.pool = WorkerPool(
                self.loop, self.engine, self.clock.now, self.tun, self.udp, self.workers,
                self.datapath.perform, offload=self.offload, time_scale=self.clock.scale,
                user=self._service_args["user"] or ic.user,
            )  # fmt: skip
            try:
                self.pool.start()
            except (OSError, TunError) as e:
                raise StartupError(f"cannot start workers: {e}") from None
            log.info("%s: %d data-path processes (Workers)", self.name, self.workers)

        try:
            if self.tun is not None:
                await self._blocking(iface.sync_routes, self.name, nets, ic.table, self.fwmark, self.routes)
                if iface.needs_default_route_rules(nets, ic.table):
                    fams = {iface.family_of(n) for n in nets if n.prefixlen == 0}
                    await self._blocking(iface.add_default_route_rules, self.fwmark, fams, self.routes)
        except iface.NetlinkSetupError as e:
            raise StartupError(str(e)) from None
        self._run_hooks("PostUp", ic.post_up)

    def topology_status(self) -> list[dict[str, object]]:
        """The links the topology sections describe, for `tunnelpy show` (empty without)."""
        return [
            {"name": link.name, "kind": type(link).__name__.removesuffix("Config").lower(),
             "namespace": getattr(link, "namespace", None),
             "built": self.topology is not None and self.topology.applied}
            for link in self.conf.topology
        ]  # fmt: skip

    def _add_peers(self, endpoints: list[tuple[str, int] | None]) -> None:
        assert self.loop is not None
        for p, ep in zip(self.conf.peers, endpoints, strict=True):
            if isinstance(self.engine, VxlanEngine):
                assert ep is not None  # config requires Endpoint with Transport = vxlan
                self.engine.add_peer(p.name, ep)
                continue
            self.engine.add_peer(
                p.public_key,
                name=p.name,
                preshared_key=p.preshared_key,
                endpoint=ep,
                allowed_ips=p.allowed_ips,
                persistent_keepalive=p.persistent_keepalive or 0,
                now=self.clock.now(),
            )

    def _add_segments(self) -> None:
        e = self.engine
        by_name = (
            dict(e.peers) if isinstance(e, VxlanEngine) else {p.name: p for p in e.peers.values()}
        )
        for seg in self.conf.segments:
            members = None if seg.peers is None else [by_name[n] for n in seg.peers]
            if isinstance(e, VxlanEngine) and members is None:
                members = list(by_name.values())
            e.add_segment(
                seg.vni,
                members,
                hub=seg.hub,
                aging=seg.aging,
                max_fdb=seg.max_fdb,
                # the TAP MTU plus the Ethernet header and one 802.1Q tag
                max_frame=self.segment_mtu(seg) + ETH_HLEN + 4,
                static=[(mac, by_name[n]) for mac, n in seg.static_macs],
            )

    def segment_mtu(self, seg: cfgmod.SegmentConfig) -> int:
        """The TAP MTU: what fits the underlay without fragmentation (docs/layer2.md)."""
        if seg.mtu is not None:
            return seg.mtu
        if self.plain_vxlan:
            v6 = any(p.endpoint and ":" in p.endpoint[0] for p in self.conf.peers)
            return UNDERLAY_MTU - (40 if v6 else 20) - 8 - VXLAN_HLEN - ETH_HLEN
        # The tunnel MTU already excludes outer IP, UDP and WireGuard's 32 bytes (as wg-quick's
        # 1420 does for a 1500 underlay); the L2 plaintext adds the VXLAN-style header and the
        # Ethernet header on top of the frame's payload.
        return self.conf.interface.mtu - VXLAN_HLEN - ETH_HLEN

    async def _teardown(self) -> None:
        if self.service is not None:
            await self.service.close()  # STOPPING=1; control socket and metrics go first
            self.service = None
        if self.pool is not None:
            await self.pool.stop()  # before the TUN goes: the last queue closed deletes it
            self.pool = None
        if self.datapath is not None:
            self.datapath.stop()
            self.datapath = None
        devices_up = self.tun is not None or bool(self.taps)
        if devices_up:
            self._run_hooks("PreDown", self.conf.interface.pre_down)
        if self.routes.rules:
            await self._blocking(iface.remove_rules, self.routes)
        if self.topology is not None:
            # Before the TUN/TAPs go: restore foreign ports, delete what we created, in reverse.
            for problem in await self._blocking(self.topology.undo):
                log.warning("topology undo: %s", problem)
            self.topology.close()
            self.topology = None
        if self.tun is not None:
            # Closing the TUN deletes the device with its addresses and routes.
            self.tun.close()
            self.tun = None
        for tap in self.taps.values():
            tap.close()  # the TAP vanishes, leaving a foreign bridge without this port
        self.taps.clear()
        if devices_up:
            self._run_hooks("PostDown", self.conf.interface.post_down)
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self.uapi is not None:
            await self.uapi.close()
            self.uapi = None

    def _run_hooks(self, what: str, commands: tuple[str, ...]) -> None:
        for cmd in commands:
            cmd = cmd.replace("%i", self.name)
            log.info("%s: %s", what, cmd)
            r = subprocess.run(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                if what in ("PreUp", "PostUp"):
                    raise StartupError(f"{what} command failed with status {r.returncode}: {cmd}")
                log.warning("%s command failed with status %d: %s", what, r.returncode, cmd)

    # ------------------------------------------------------------------ events

    def _on_event(self, ev: Event) -> None:
        if self.pool is not None and isinstance(ev, HandshakeComplete | Roamed):
            self.pool.sync_soon()  # the workers encrypt on the new session / to the new address
        if isinstance(ev, HandshakeComplete):
            log.info("peer %s: handshake complete (%s)", ev.peer_name, ev)
        elif isinstance(ev, HandshakeFailed):
            log.warning("peer %s: handshake did not complete after %s", ev.peer_name, ev)
        elif isinstance(ev, Roamed):
            log.info("peer %s: endpoint moved %s", ev.peer_name, ev)
        elif isinstance(ev, HandshakeSent):
            log.debug("peer %s: handshake initiation sent %s", ev.peer_name, ev)
        elif isinstance(ev, ResolveEndpoint):
            self._re_resolve(ev.peer_name)

    def _re_resolve(self, peer_name: str) -> None:
        """Endpoints given as names are resolved again when the peer goes quiet (DNS moved)."""
        for key, peer in self.engine.peers.items():
            if peer.name == peer_name and key in self._hostnames and key not in self._resolving:
                self._resolving.add(key)
                assert self.loop is not None
                self.loop.create_task(self._resolve_task(key, peer))

    async def _resolve_task(self, key: bytes, peer: Peer) -> None:
        host, port = self._hostnames[key]
        try:
            addr = await self._blocking(resolve, host, port)
        except OSError as e:
            log.warning("peer %s: cannot resolve %s: %s", peer.name, host, e)
        else:
            if addr != peer.endpoint and not peer.removed:
                log.info("peer %s: %s now resolves to %s", peer.name, host, addr[0])
                peer.endpoint = addr
        finally:
            self._resolving.discard(key)

    # ------------------------------------------------------------------ UAPI

    def _uapi_get(self) -> DeviceSnapshot:
        e = self.engine
        peers = [
            PeerSnapshot(
                public_key=p.public_key,
                preshared_key=p.preshared_key if any(p.preshared_key) else None,
                endpoint=p.endpoint,
                persistent_keepalive=p.persistent_keepalive,
                last_handshake=p.last_handshake_wall,
                rx_bytes=p.stats.rx_bytes,
                tx_bytes=p.stats.tx_bytes,
                allowed_ips=e.allowed.networks_of(p),
            )
            for p in e.peers.values()
        ]
        return DeviceSnapshot(
            private_key=e.private_key,
            listen_port=self.udp.port if self.udp else 0,
            fwmark=self.fwmark or 0,
            peers=peers,
        )

    def _uapi_set(self, req: SetRequest) -> None:
        assert self.loop is not None
        now = self.clock.now()
        e = self.engine
        if isinstance(req.private_key, bytes):
            e.set_private_key(req.private_key)
        elif req.private_key is None:
            log.warning("UAPI: removing the private key is not supported; key kept")
        if req.listen_port is not None and self.udp is not None and req.listen_port != self.udp.port:
            new = UdpSocket(req.listen_port, self.fwmark, offload=self.offload)
            old = self.udp
            self.udp = new
            if self.datapath is not None:
                self.datapath.replace_udp(new)
            if self.pool is not None:
                self.pool.replace_udp(new)
            old.close()
        if req.fwmark is not None and self.udp is not None:
            self.fwmark = req.fwmark or None
            self.udp.set_fwmark(req.fwmark)
        if req.replace_peers:
            for key in list(e.peers):
                e.remove_peer(key)
        for ch in req.peers:
            self._apply_peer_change(ch, now)
        if self.datapath is not None:
            self.datapath.perform(e.on_timer(now))
        if self.pool is not None:
            self.pool.sync()

    def _apply_peer_change(self, ch: PeerChange, now: float) -> None:
        e = self.engine
        if ch.public_key == e.public_key:
            return  # wireguard-go ignores a peer block carrying our own key; so do we
        peer = e.peers.get(ch.public_key)
        if ch.remove:
            e.remove_peer(ch.public_key)
            self._hostnames.pop(ch.public_key, None)
            return
        if peer is None:
            if ch.update_only:
                return
            peer = e.add_peer(ch.public_key)
        if ch.preshared_key is not UNSET:
            peer.preshared_key = ch.preshared_key or bytes(32)
        if ch.endpoint is not None:
            peer.endpoint = ch.endpoint
            self._hostnames.pop(ch.public_key, None)
        if ch.replace_allowed_ips:
            e.set_allowed_ips(peer, ch.allowed_ips)
        else:
            for net in ch.allowed_ips:
                e.allowed.insert(net, peer)
        if ch.persistent_keepalive is not None:
            e.set_persistent_keepalive(peer, ch.persistent_keepalive, now)

