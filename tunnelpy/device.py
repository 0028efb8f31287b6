"""The running interface: one owner of the engine, its devices, its sockets and its routes.

A :class:`Device` holds everything one tunnelpyd interface has while it runs: the protocol
engine (WireGuard's :class:`~tunnelpy.protocol.engine.Engine` or the plain-VXLAN
:class:`~tunnelpy.protocol.vxlan.VxlanEngine`), the TUN, one TAP per L2 segment, the UDP
socket, the routes and policy rules it installed, the endpoint host names it re-resolves, the
packet pump (:class:`~tunnelpy.datapath.DataPath`) and the worker processes (``Workers = N``).

Its methods are the only code that changes any of that. Four drivers call them:

* the daemon (daemon.py) at start-up and on the way down, which only orders the steps;
* the UAPI (``wg set``/``wg setconf``), through :mod:`tunnelpy.wgapi`;
* a reload (SIGHUP, ``tunnelpy reload``), through :func:`tunnelpy.reload.apply`;
* the engine's own events (a handshake completed, a peer roamed or went quiet and its endpoint
  name is resolved again), delivered by the data path to :meth:`Device.on_event`.

Every changing method *flushes* once when it is done: the engine's timers are run (a new peer
with a keepalive sends it, a removed peer's staged packets are gone) and the worker pool is told
to mirror the new state. ``with device.batch():`` defers the flush to the end of the block, so a
``wg setconf`` of 10^4 peers flushes once rather than 10^4 times.

Kernel changes (addresses, MTU, routes, enslaving a TAP) are blocking netlink calls; they go
through the injected :class:`Host` (pyroute2 by default) on the loop's executor, which is what
lets unit tests drive a Device with fakes and no root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, Protocol

from . import config as cfgmod
from .datapath import DataPath, ProtocolClock
from .io import knobs
from .io import offload as offload_mod
from .io.tun import Tun, TunError
from .io.udp import UdpSocket, is_literal, resolve
from .io.vxlan_socket import VxlanSocket
from .netlink import iface
from .netlink.addrwatch import AddressWatch
from .netlink.linkwatch import LinkWatch
from .protocol import aead
from .protocol import events as ev
from .protocol.allowedips import NetworkLike
from .protocol.engine import Engine
from .protocol.packet_engine import UNSET
from .protocol.peer import Addr, Network
from .protocol.vxlan import ETH_HLEN, VxlanEngine
from .protocol.vxlan import HEADER_LEN as VXLAN_HLEN
from .workers.pool import WorkerPool, resolve_workers

log = logging.getLogger("tunnelpyd")

UNDERLAY_MTU = 1500  # what plain-VXLAN segments assume of the underlay unless MTU is set
RESOLVE_RETRY_FIRST = 1.0  # seconds before an endpoint name that did not resolve is tried again
RESOLVE_RETRY_MAX = 60.0


class DeviceError(Exception):
    """A one-line, user-facing reason a change could not be made (nothing was changed)."""


class Host(Protocol):
    """The kernel operations a Device makes (netlink); all blocking, run on the executor."""

    def link_exists(self, name: str) -> bool: ...
    def link_kind(self, name: str) -> str | None: ...
    def configure_device(self, name: str, mtu: int, addresses: list[Any]) -> None: ...
    def set_mtu(self, name: str, mtu: int) -> None: ...
    def set_addresses(self, name: str, old: Iterable[Any], new: Iterable[Any]) -> None: ...
    def enslave(self, name: str, master: str) -> None: ...
    def sync_routes(
        self, name: str, nets: list[Network], table: str | None, fwmark: int | None,
        state: iface.RouteState,
    ) -> None: ...  # fmt: skip
    def add_default_route_rules(
        self, fwmark: int, families: set[int], state: iface.RouteState
    ) -> None: ...
    def remove_rules(self, state: iface.RouteState) -> None: ...


class Netlink:
    """:class:`Host` on the real kernel, through pyroute2 (tunnelpy.netlink.iface)."""

    link_exists = staticmethod(iface.link_exists)
    link_kind = staticmethod(iface.link_kind)
    configure_device = staticmethod(iface.configure_device)
    set_mtu = staticmethod(iface.set_mtu)
    set_addresses = staticmethod(iface.set_addresses)
    enslave = staticmethod(iface.enslave)
    sync_routes = staticmethod(iface.sync_routes)
    add_default_route_rules = staticmethod(iface.add_default_route_rules)
    remove_rules = staticmethod(iface.remove_rules)


TunFactory = Callable[..., Tun]
UdpFactory = Callable[[int | None, int | None], UdpSocket | VxlanSocket]


class Device:
    """One running interface (see the module docstring for who calls what)."""

    def __init__(
        self,
        conf: cfgmod.Config,
        *,
        clock: Callable[[], float] | None = None,
        host: Host | None = None,
        open_tun: TunFactory | None = None,
        open_udp: UdpFactory | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        wall: Callable[[], float] = time.time,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        ic = conf.interface
        self.conf = conf
        self.name = ic.name
        self.plain_vxlan = ic.transport == cfgmod.TRANSPORT_VXLAN
        # Offload = auto: TUN/TAP TSO+GRO and UDP GSO+GRO (docs/performance.md); off: none.
        self.offload = ic.offload != cfgmod.OFFLOAD_OFF
        self.engine: Engine | VxlanEngine
        if self.plain_vxlan:
            self.engine = VxlanEngine()
        else:
            # The compiled AEAD (protocol/_aead.pyx) unless the testing knob turns it off
            # together with the compiled segment loops (TUNNELPY_TEST_COMPILED=off).
            aead.enable(not knobs.compiled_forced_off(), copy=knobs.aead_copy())
            if aead.copying():
                log.warning("TUNNELPY_TEST_AEAD=copy: transport data is NOT encrypted (bench)")
            self.engine = Engine(ic.private_key, rng=rng, wall=wall, mtu=ic.mtu)
        self.host: Host = host or Netlink()
        # Told (with a reason) when the interface itself is gone: the kernel deleted the TUN.
        self.on_lost = on_lost
        self._open_tun: TunFactory = open_tun or Tun
        self._open_udp: UdpFactory = open_udp or self._default_udp
        self.now: Callable[[], float] = clock or time.monotonic
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tun: Tun | None = None
        self.taps: dict[int, Tun] = {}  # VNI -> the segment's TAP
        self.udp: UdpSocket | VxlanSocket | None = None
        self.fwmark: int | None = ic.fwmark
        self.routes = iface.RouteState()
        self.datapath: DataPath | None = None
        self.pool: WorkerPool | None = None
        self.linkwatch: LinkWatch | None = None  # follows the TUN's MTU (netlink/linkwatch.py)
        self.addrwatch: AddressWatch | None = None  # removed addresses (netlink/addrwatch.py)
        self.workers = 1
        self.hostnames: dict[bytes | str, tuple[str, int]] = {}  # peer -> configured host:port
        self._resolving: set[bytes | str] = set()
        # Endpoint names that did not resolve when their peer was added: retried with backoff
        # once the loop runs (RESOLVE_RETRY_FIRST .. RESOLVE_RETRY_MAX seconds apart).
        self._unresolved: set[bytes | str] = set()
        self._batch_depth = 0
        self._dirty = False

    # ------------------------------------------------------------------ helpers

    def _default_udp(self, port: int | None, fwmark: int | None) -> UdpSocket | VxlanSocket:
        if self.plain_vxlan:
            # ListenAddress: bound to that address only, so datagrams to any other address of
            # this host (unauthenticated as they are) never reach the segments.
            host = self.conf.interface.listen_address
            return VxlanSocket(port, fwmark, offload=self.offload, host=host)
        return UdpSocket(port, fwmark, offload=self.offload)

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call (netlink, DNS) on the loop's executor."""
        loop = self.loop or asyncio.get_running_loop()
        return await loop.run_in_executor(None, fn, *args)

    @property
    def listen_port(self) -> int:
        return self.udp.port if self.udp is not None else 0

    def peer_ident(self, p: cfgmod.PeerConfig) -> bytes | str:
        """A peer's key in the engine: its public key (its Name with Transport = vxlan)."""
        return p.name if self.plain_vxlan else p.public_key

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

    # ------------------------------------------------------------------ flushing

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Changes inside the block flush once, at its end."""
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            if self._batch_depth == 0 and self._dirty:
                self._flush()

    def _changed(self) -> None:
        self._dirty = True
        if self._batch_depth == 0:
            self._flush()

    def _flush(self) -> None:
        self._dirty = False
        if self.datapath is not None:
            self.datapath.perform(self.engine.on_timer(self.now()))
        if self.pool is not None:
            self.pool.sync()

    # ------------------------------------------------------------------ start-up checks

    async def resolve_endpoints(
        self, peers: Iterable[cfgmod.PeerConfig], path: str
    ) -> dict[bytes | str, Addr]:
        """Resolve the peers' Endpoint names.

        A WireGuard peer whose name does not resolve yet (at boot, before DNS is up) is not an
        error: it comes up without an endpoint (it can still be reached *by*, and roams to
        where it writes from) and the name is tried again with backoff once the device runs
        (:meth:`_retry_resolve`). A plain-VXLAN peer is nothing without its address: there the
        failure is a DeviceError naming file:line."""
        found: dict[bytes | str, Addr] = {}
        for p in peers:
            if p.endpoint is None:
                continue
            host, port = p.endpoint
            try:
                found[self.peer_ident(p)] = await self.blocking(resolve, host, port)
            except OSError as e:
                if self.plain_vxlan:
                    raise DeviceError(
                        f"{path}:{p.line}: Peer.Endpoint: cannot resolve {host}: {e}"
                    ) from None
                log.warning(
                    "peer %s: %s does not resolve yet (%s); the peer starts without an "
                    "endpoint and the name is tried again", p.name, host, e.strerror or e,
                )  # fmt: skip
        return found

    async def check_free(
        self, segments: Iterable[cfgmod.SegmentConfig], *, own_links: set[str], path: str,
        interface: bool = True, removed: Collection[str] = frozenset(),
    ) -> None:  # fmt: skip
        """The names we will create are free and the bridges we join exist (DeviceError)."""
        if (
            interface
            and not self.plain_vxlan
            and await self.blocking(self.host.link_exists, self.name)
        ):
            raise DeviceError(f"interface {self.name} already exists")
        for seg in segments:
            if seg.device not in removed and await self.blocking(self.host.link_exists, seg.device):
                raise DeviceError(
                    f"{path}:{seg.line}: Segment {seg.name}: interface {seg.device} already exists"
                )
            if seg.bridge is not None and seg.bridge not in own_links:
                kind = await self.blocking(self.host.link_kind, seg.bridge)
                if kind != "bridge":
                    what = (
                        "does not exist"
                        if kind is None
                        else f"is a {kind or 'plain'} link, not a bridge"
                    )
                    raise DeviceError(
                        f"{path}:{seg.line}: Segment {seg.name}.Bridge: {seg.bridge} {what}"
                    )

    # ------------------------------------------------------------------ opening, in order

    def open_socket(self, port: int | None = None) -> UdpSocket | VxlanSocket:
        """A new listening socket with the current fwmark (OSError/UdpError if not)."""
        return self._open_udp(self.conf.interface.listen_port if port is None else port,
                              self.fwmark)  # fmt: skip

    def open_udp(self) -> None:
        nets = [n for p in self.conf.peers for n in p.allowed_ips]
        if iface.needs_default_route_rules(nets, self.conf.interface.table) and not self.fwmark:
            # wg-quick's rule: the tunnel's own datagrams carry a mark that skips its table
            self.fwmark = iface.DEFAULT_ROUTE_TABLE
        self.udp = self.open_socket()

    def open_devices(self, workers: int) -> None:
        """The TUN (WireGuard transport) and one TAP per configured segment."""
        self.workers = workers
        if not self.plain_vxlan:
            self.tun = self._open_tun(self.name, offload=self.offload, multi_queue=workers > 1)
        for seg in self.conf.segments:
            tap = self.taps[seg.vni] = self._open_tun(seg.device, tap=True, offload=self.offload)
            self._tap_checks(tap, seg)
        if self.tun is not None and isinstance(self.udp, UdpSocket):
            log.info(
                "%s: offloads %s; UDP GSO %s, GRO %s; segment loops %s; AEAD %s", self.name,
                self.tun.offloads or "off", "on" if self.udp.gso else "off",
                "on" if self.udp.gro else "off",
                "compiled" if offload_mod.compiled() else "in Python",
                ("a COPY (TUNNELPY_TEST_AEAD: no encryption)" if aead.copying()
                 else "compiled (OpenSSL)" if aead.enabled() else "cryptography"),
            )  # fmt: skip

    def _tap_checks(self, tap: Tun, seg: cfgmod.SegmentConfig) -> None:
        """What a TAP checks in the frames written to it (io/tun.py): its MTU, so a TSO
        super-packet from a kernel vxlan is cut to it; with plain VXLAN, whose senders nobody
        authenticated, that GRO joins only frames with a partial or right checksum."""
        tap.mtu = self.segment_mtu(seg)
        tap.vouch = self.plain_vxlan

    async def configure_devices(self, *, own_links: set[str]) -> None:
        """MTU, addresses and link up on the TUN and TAPs; TAPs join foreign bridges."""
        ic = self.conf.interface
        if self.tun is not None:
            await self.blocking(self.host.configure_device, self.name, ic.mtu, list(ic.addresses))
        for seg in self.conf.segments:
            await self.blocking(
                self.host.configure_device, seg.device, self.segment_mtu(seg), list(seg.addresses)
            )
            if seg.bridge is not None and seg.bridge not in own_links:
                await self.blocking(self.host.enslave, seg.device, seg.bridge)

    def start(self, loop: asyncio.AbstractEventLoop, clock: ProtocolClock) -> None:
        """Packets flow from here: the pump reads the TUN, the TAPs and the socket."""
        assert self.udp is not None
        self.loop = loop
        self.now = clock.now
        self._set_receive_units()
        self.datapath = DataPath(
            loop, self.engine, self.udp, self.tun, self.on_event, clock,
            on_device_gone=self._device_gone,
        )  # fmt: skip
        for vni, tap in self.taps.items():
            self.datapath.add_tap(vni, tap, running=False)
        self.datapath.start()
        self._start_retries()
        if self.tun is not None and isinstance(self.engine, Engine):
            self._watch_link()
        if isinstance(self.engine, Engine):
            self._watch_addresses()

    def _set_receive_units(self) -> None:
        """What the compiled receive may hand the devices as joined write units (io/gro.py):
        TCP units to a TUN that takes GSO writes (Engine.tcp_units); frame units when every
        segment's TAP takes them and vouches for nothing (frame_units); UDP joined into USO
        writes when the TUN and every TAP took USO (uso_units, gro.coalesce's `uso`)."""
        if not isinstance(self.engine, Engine):
            return
        tun, taps = self.tun, list(self.taps.values())
        self.engine.tcp_units = tun is not None and tun.vnet_hdr
        self.engine.frame_units = all(tap.vnet_hdr and not tap.vouch for tap in taps)
        self.engine.uso_units = tun is not None and all(
            d.vnet_hdr and d.uso for d in [tun, *taps]
        )

    # ------------------------------------------------------------------ following the TUN

    def _watch_link(self) -> None:
        """The TUN's MTU may change under us (wg-quick sets it after we started, `ip link set
        … mtu`), also after a move to another namespace: follow it by rtnetlink."""
        assert self.tun is not None and self.loop is not None
        watch = LinkWatch(self.name, self.mtu_changed, self.tun.fd)
        try:
            sock = watch.open()
        except OSError as e:
            log.warning("%s: cannot watch the link's MTU (%s); it stays %d", self.name,
                        e.strerror, self.conf.interface.mtu)  # fmt: skip
            return
        self.linkwatch = watch
        self.loop.add_reader(sock.fileno(), watch.on_readable)

    def _watch_addresses(self) -> None:
        """Sticky sources whose address is removed are forgotten at once (netlink/addrwatch)."""
        assert self.loop is not None
        watch = AddressWatch(self.address_removed)
        try:
            sock = watch.open()
        except OSError as e:
            log.info("%s: cannot watch local addresses (%s)", self.name, e.strerror)
            return
        self.addrwatch = watch
        self.loop.add_reader(sock.fileno(), watch.on_readable)

    def address_removed(self, address: str) -> None:
        """A local address is gone: peers answered from it go back to the kernel's choice."""
        e = self.engine
        if not isinstance(e, Engine) or self.datapath is None:
            return
        srcs = {p.src for p in e.peers.values() if p.src is not None and p.src[0] == address}
        if srcs:
            self.datapath.forget_sources(srcs)

    def mtu_changed(self, mtu: int) -> None:
        """The kernel says the TUN's MTU is ``mtu`` now: pad to it, workers too."""
        if not isinstance(self.engine, Engine) or mtu == self.engine.mtu:
            return
        log.info("%s: MTU is %d now (was %d)", self.name, mtu, self.engine.mtu)
        self.engine.set_mtu(mtu)
        if self.pool is not None:
            self.pool.restart()  # workers pad to the MTU they were started with

    def _unwatch_link(self) -> None:
        aw, self.addrwatch = self.addrwatch, None
        if aw is not None:
            if aw.sock is not None and self.loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(aw.sock.fileno())
            aw.close()
        watch, self.linkwatch = self.linkwatch, None
        if watch is None:
            return
        if watch.sock is not None and self.loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(watch.sock.fileno())
        watch.close()

    def start_workers(self, *, time_scale: float, user: str | None) -> None:
        """Workers = N: N-1 more processes read TUN queues and encrypt (tunnelpy/workers)."""
        if self.workers <= 1 or self.tun is None or not isinstance(self.udp, UdpSocket):
            return
        assert self.loop is not None and self.datapath is not None
        assert isinstance(self.engine, Engine)
        self.pool = WorkerPool(
            self.loop, self.engine, self.now, self.tun, self.udp, self.workers,
            self.datapath.perform, offload=self.offload, time_scale=time_scale, user=user,
        )  # fmt: skip
        try:
            self.pool.start()
        except (OSError, TunError) as e:
            raise DeviceError(f"cannot start workers: {e}") from None
        log.info("%s: %d data-path processes (Workers)", self.name, self.workers)

    async def install_routes(self) -> None:
        """The AllowedIPs routes, and wg-quick's policy rules for a default route."""
        try:
            nets = await self._routes()
            if nets and iface.needs_default_route_rules(nets, self.conf.interface.table):
                fams = {iface.family_of(n) for n in nets if n.prefixlen == 0}
                await self.blocking(
                    self.host.add_default_route_rules, self.fwmark, fams, self.routes
                )
        except iface.NetlinkSetupError as e:
            raise DeviceError(str(e)) from None

    async def sync_routes(self) -> None:
        """After a reload changed AllowedIPs: the routes follow (errors are logged)."""
        try:
            nets = await self._routes()
        except iface.NetlinkSetupError as err:
            log.error("reload: routes: %s", err)
            return
        if (
            iface.needs_default_route_rules(nets, self.conf.interface.table)
            and not self.routes.rules
        ):
            log.warning("reload: a default route (0.0.0.0/0 or ::/0) needs a restart to be routed")

    async def _routes(self) -> list[Network]:
        """One route per configured AllowedIPs prefix (none without a TUN); the prefixes."""
        if self.tun is None:
            return []
        ic = self.conf.interface
        nets = [n for p in self.conf.peers for n in p.allowed_ips]
        await self.blocking(
            self.host.sync_routes, self.name, nets, ic.table, self.fwmark, self.routes
        )
        return nets

    # ------------------------------------------------------------------ closing, in order

    async def stop(self) -> None:
        """Packets stop: workers first (the last TUN queue closed deletes the device)."""
        self._unwatch_link()
        if self.pool is not None:
            await self.pool.stop()
            self.pool = None
        if self.datapath is not None:
            self.datapath.stop()
            self.datapath = None

    @property
    def devices_open(self) -> bool:
        return self.tun is not None or bool(self.taps)

    async def remove_rules(self) -> None:
        if self.routes.rules:
            await self.blocking(self.host.remove_rules, self.routes)

    def close_devices(self) -> None:
        """Closing the TUN deletes it with its addresses and routes; a TAP leaves its bridge."""
        if self.tun is not None:
            self.tun.close()
            self.tun = None
        for tap in self.taps.values():
            tap.close()
        self.taps.clear()

    def close_socket(self) -> None:
        if self.udp is not None:
            self.udp.close()
            self.udp = None

    # ------------------------------------------------------------------ interface settings

    def set_private_key(self, key: bytes) -> None:
        if isinstance(self.engine, Engine):
            self.engine.set_private_key(key)
            self._changed()

    def replace_socket(self, new: UdpSocket | VxlanSocket) -> None:
        """Swap in a socket opened beforehand (the only step that can fail is before this)."""
        old = self.udp
        self.udp = new
        if self.datapath is not None:
            self.datapath.replace_udp(new)
        if self.pool is not None and isinstance(new, UdpSocket):
            self.pool.replace_udp(new)  # the workers send through the new socket
        if old is not None:
            old.close()
        self._changed()

    def set_listen_port(self, port: int) -> None:
        """Rebind to ``port`` (UdpError/OSError, nothing changed, if it is taken)."""
        if self.udp is not None and port == self.udp.port:
            return
        self.replace_socket(self.open_socket(port))

    def set_fwmark(self, mark: int | None) -> None:
        """OSError (nothing changed) if the socket refuses the mark (no CAP_NET_ADMIN)."""
        if self.udp is not None:
            self.udp.set_fwmark(mark or 0)
        self.fwmark = mark or None

    async def set_mtu(self, mtu: int) -> None:
        self.mtu_changed(mtu)
        if self.tun is not None:
            await self.blocking(self.host.set_mtu, self.name, mtu)

    async def set_addresses(self, old: Iterable[Any], new: Iterable[Any]) -> None:
        if self.tun is not None:
            await self.blocking(self.host.set_addresses, self.name, tuple(old), tuple(new))

    # ------------------------------------------------------------------ peers

    def add_peer(
        self,
        ident: bytes | str,
        *,
        name: str | None = None,
        preshared_key: bytes | None = None,
        endpoint: Addr | None = None,
        allowed_ips: Iterable[NetworkLike] = (),
        persistent_keepalive: int = 0,
        hostname: tuple[str, int] | None = None,
    ) -> None:
        """A new peer (with Transport = vxlan ``ident`` is its Name and only the endpoint counts).

        ``hostname``: the configured ``host:port`` when the host is a name, re-resolved when the
        peer goes quiet."""
        e = self.engine
        if isinstance(e, VxlanEngine):
            assert isinstance(ident, str) and endpoint is not None
            e.add_peer(ident, endpoint)
        else:
            assert isinstance(ident, bytes)
            e.add_peer(
                ident, name=name, preshared_key=preshared_key, endpoint=endpoint,
                allowed_ips=allowed_ips, persistent_keepalive=persistent_keepalive,
                now=self.now(),
            )  # fmt: skip
        self._set_hostname(ident, hostname)
        if endpoint is None and ident in self.hostnames:
            self._unresolved.add(ident)
            self._start_retries()
        self._changed()

    def has_peer(self, ident: bytes | str) -> bool:
        return ident in self.engine.peers

    def update_peer(
        self,
        ident: bytes | str,
        *,
        name: Any = UNSET,
        preshared_key: Any = UNSET,
        endpoint: Any = UNSET,
        allowed_ips: Any = UNSET,
        add_allowed_ips: Iterable[NetworkLike] = (),
        persistent_keepalive: Any = UNSET,
        hostname: Any = UNSET,
    ) -> bool:
        """Change the given fields of a peer; False if there is no such peer.

        ``allowed_ips`` replaces the peer's prefixes, ``add_allowed_ips`` adds to them;
        ``preshared_key=None`` removes it; ``hostname`` as in :meth:`add_peer`."""
        e = self.engine
        if isinstance(e, VxlanEngine):
            if ident not in e.peers:
                return False
            if endpoint is not UNSET and endpoint is not None:
                e.update_peer(str(ident), endpoint)
        else:
            if ident not in e.peers:
                return False
            assert isinstance(ident, bytes)
            e.update_peer(
                ident, name=name, preshared_key=preshared_key, endpoint=endpoint,
                allowed_ips=allowed_ips, add_allowed_ips=add_allowed_ips,
                persistent_keepalive=persistent_keepalive, now=self.now(),
            )  # fmt: skip
        if hostname is not UNSET:
            self._set_hostname(ident, hostname)
        self._changed()
        return True

    def remove_peer(self, ident: bytes | str) -> None:
        e = self.engine
        if isinstance(e, VxlanEngine):
            e.remove_peer(str(ident))
        elif isinstance(ident, bytes):
            e.remove_peer(ident)
        self.hostnames.pop(ident, None)
        self._resolving.discard(ident)
        self._changed()

    def remove_all_peers(self) -> None:
        with self.batch():
            for ident in self.peer_idents():
                self.remove_peer(ident)

    def peer_idents(self) -> list[bytes | str]:
        return list(self.engine.peers)

    def _peer(self, ident: bytes | str) -> Any:
        """The engine's peer object of ``ident`` (a WireGuard or VXLAN peer), or None."""
        peers: dict[Any, Any] = self.engine.peers
        return peers.get(ident)

    def _set_hostname(self, ident: bytes | str, hostname: tuple[str, int] | None) -> None:
        if hostname is not None and not is_literal(hostname[0]):
            self.hostnames[ident] = hostname
        else:
            self.hostnames.pop(ident, None)

    def add_configured_peers(self, endpoints: dict[bytes | str, Addr]) -> None:
        """Every [Peer] of the config, with the endpoints resolved beforehand."""
        with self.batch():
            for p in self.conf.peers:
                self.add_peer_config(p, endpoints.get(self.peer_ident(p)))

    def add_peer_config(self, p: cfgmod.PeerConfig, endpoint: Addr | None) -> None:
        self.add_peer(
            self.peer_ident(p), name=p.name, preshared_key=p.preshared_key, endpoint=endpoint,
            allowed_ips=p.allowed_ips, persistent_keepalive=p.persistent_keepalive or 0,
            hostname=p.endpoint,
        )  # fmt: skip

    def update_peer_config(
        self, p: cfgmod.PeerConfig, endpoint: Addr | None, fields: Iterable[str]
    ) -> None:
        """Apply the named fields of a [Peer] section to the running peer."""
        names = set(fields)
        kw: dict[str, Any] = {}
        if "name" in names:
            kw["name"] = p.name
        if "preshared_key" in names:
            kw["preshared_key"] = p.preshared_key
        if "endpoint" in names:
            if endpoint is not None:
                kw["endpoint"] = endpoint
            kw["hostname"] = p.endpoint
        if "allowed_ips" in names:
            kw["allowed_ips"] = p.allowed_ips
        if "persistent_keepalive" in names:
            kw["persistent_keepalive"] = p.persistent_keepalive or 0
        self.update_peer(self.peer_ident(p), **kw)

    # ------------------------------------------------------------------ segments

    def _segment_members(
        self, seg: cfgmod.SegmentConfig
    ) -> tuple[list[Any] | None, list[tuple[bytes, Any]], list[tuple[bytes, int, Any]]]:
        e = self.engine
        by_name: dict[str, Any] = (
            dict(e.peers) if isinstance(e, VxlanEngine) else {p.name: p for p in e.peers.values()}
        )
        # None: every peer, also those added later (both engines)
        members = None if seg.peers is None else [by_name[n] for n in seg.peers if n in by_name]
        static = [(mac, by_name[n]) for mac, n in seg.static_macs if n in by_name]
        allowed = [(mac, n, by_name[p]) for mac, n, p in seg.allowed_macs if p in by_name]
        return members, static, allowed

    def bind_segment(self, seg: cfgmod.SegmentConfig, *, keep_fdb: bool = False) -> None:
        """(Re)create the engine's segment from its section; keep_fdb: only rebind members
        (when no static MAC or AllowedMACs names a peer object that may have changed)."""
        members, static, allowed = self._segment_members(seg)
        current = self.engine.segments.get(seg.vni)
        if keep_fdb and current is not None and not seg.static_macs and not seg.allowed_macs:
            current.set_members(members)
        else:
            self.engine.add_segment(
                seg.vni, members, hub=seg.hub, aging=seg.aging, max_fdb=seg.max_fdb,
                # the TAP MTU plus the Ethernet header and one 802.1Q tag
                max_frame=self.segment_mtu(seg) + ETH_HLEN + 4, static=static,
                allowed_macs=allowed, max_per_peer=seg.max_per_peer, move_hold=seg.move_hold,
            )  # fmt: skip
        self._changed()

    def add_configured_segments(self) -> None:
        with self.batch():
            for seg in self.conf.segments:
                self.bind_segment(seg)

    async def add_segment(self, seg: cfgmod.SegmentConfig) -> None:
        """A new segment while running: its TAP, configured and enslaved, then the engine's."""
        tap = self._open_tun(seg.device, tap=True, offload=self.offload)
        self._tap_checks(tap, seg)
        try:
            await self.blocking(
                self.host.configure_device, seg.device, self.segment_mtu(seg), list(seg.addresses)
            )
            if seg.bridge is not None:
                await self.blocking(self.host.enslave, seg.device, seg.bridge)
        except BaseException:
            tap.close()
            raise
        self.taps[seg.vni] = tap
        if self.datapath is not None:
            self._set_receive_units()
        self.bind_segment(seg)
        if self.datapath is not None:
            self.datapath.add_tap(seg.vni, tap, running=True)

    def remove_segment(self, vni: int) -> None:
        tap = self.datapath.remove_tap(vni) if self.datapath is not None else None
        tap = self.taps.pop(vni, None) or tap
        if tap is not None:
            tap.close()
        self.engine.remove_segment(vni)
        self._changed()

    def _device_gone(self, dev: Tun) -> None:
        """The kernel deleted one of our devices (`ip link del`) while we held it."""
        if dev is self.tun:
            if self.on_lost is not None:
                self.on_lost(f"interface {self.name} was deleted")
            return
        for vni, tap in list(self.taps.items()):
            if tap is dev:
                log.warning(
                    "%s: segment device %s was deleted; VNI %d stops", self.name, dev.name, vni
                )
                self.remove_segment(vni)

    # ------------------------------------------------------------------ engine events

    def on_event(self, event: ev.Event) -> None:
        """What the engine reports: logged, mirrored to the workers, names re-resolved."""
        tag = {"peer": getattr(event, "peer_name", None)}  # the log record's peer field
        if (
            isinstance(event, ev.HandshakeComplete | ev.Roamed | ev.SourceChanged)
            and self.pool is not None
        ):
            self.pool.sync_soon()  # the workers use the new session / address / source
        if isinstance(event, ev.HandshakeComplete):
            log.info("peer %s: handshake complete (%s)", event.peer_name, event, extra=tag)
        elif isinstance(event, ev.HandshakeFailed):
            log.warning("peer %s: handshake did not complete after %s", event.peer_name, event, extra=tag)
        elif isinstance(event, ev.Roamed):
            # Peer addresses stay out of INFO logs (who talks to whom is not the journal's
            # readers' business); `tunnelpy show` and `wg show` have the endpoint.
            log.debug("peer %s: endpoint moved %s", event.peer_name, event, extra=tag)
        elif isinstance(event, ev.SourceChanged):
            # An address lost is worth a line; one learned (every new session) is not.
            level = logging.INFO if event.new is None else logging.DEBUG
            log.log(level, "peer %s: source address %s", event.peer_name, event)
        elif isinstance(event, ev.HandshakeSent):
            log.debug("peer %s: handshake initiation sent %s", event.peer_name, event, extra=tag)
        elif isinstance(event, ev.ResolveEndpoint):
            self._re_resolve(event.peer_key)

    def _start_retries(self) -> None:
        if self.loop is None or self.datapath is None:
            return  # start() calls again once packets flow
        for ident in list(self._unresolved):
            self._unresolved.discard(ident)
            if ident not in self._resolving:
                self._resolving.add(ident)
                self.loop.create_task(self._retry_resolve(ident))

    async def _retry_resolve(self, ident: bytes | str) -> None:
        """Try a peer's endpoint name again and again (backoff, logged once per change) until
        it resolves, the peer got an endpoint some other way, or its name was changed."""
        delay = RESOLVE_RETRY_FIRST
        configured = self.hostnames.get(ident)
        failing = False
        try:
            while configured is not None and self.hostnames.get(ident) == configured:
                peer = self._peer(ident)
                if peer is None or peer.endpoint is not None:
                    return
                host, port = configured
                try:
                    addr = await self.blocking(resolve, host, port)
                except OSError as e:
                    if not failing:
                        log.info("peer %s: %s still does not resolve (%s); retrying every "
                                 "%.0f s at most", peer.name, host, e.strerror or e,
                                 RESOLVE_RETRY_MAX)  # fmt: skip
                        failing = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RESOLVE_RETRY_MAX)
                    continue
                if self.hostnames.get(ident) == configured and self._peer(ident) is not None:
                    log.info("peer %s: %s resolves now; endpoint set", peer.name, host)
                    self.update_peer(ident, endpoint=addr)
                return
        finally:
            self._resolving.discard(ident)

    def _re_resolve(self, ident: bytes | str) -> None:
        """Endpoints given as names are resolved again when the peer goes quiet (DNS moved)."""
        if ident in self.hostnames and ident not in self._resolving and self.loop is not None:
            self._resolving.add(ident)
            self.loop.create_task(self._resolve_task(ident))

    async def _resolve_task(self, ident: bytes | str) -> None:
        host, port = self.hostnames[ident]
        peer = self._peer(ident)
        name = getattr(peer, "name", str(ident))
        try:
            addr = await self.blocking(resolve, host, port)
        except OSError as e:
            log.warning("peer %s: cannot resolve %s: %s", name, host, e, extra={"peer": name})
        else:
            peer = self._peer(ident)
            if peer is not None and addr != peer.endpoint and ident in self.hostnames:
                log.info("peer %s: its endpoint name resolves to a new address", name,
                         extra={"peer": name})  # fmt: skip
                log.debug("peer %s: %s now resolves to %s", name, host, addr[0])
                self.update_peer(ident, endpoint=addr)
        finally:
            self._resolving.discard(ident)


def workers_for(conf: cfgmod.Config) -> int:
    """How many data-path processes this config runs (DeviceError if it cannot have them)."""
    ic = conf.interface
    if ic.transport == cfgmod.TRANSPORT_VXLAN:
        if ic.workers is not None and ic.workers > 1:
            raise DeviceError(
                f"{conf.path}: Interface.Workers = {ic.workers}: workers need Transport = wireguard"
            )
        return 1
    forced = knobs.forced_workers()
    if forced is not None:
        log.warning("TUNNELPY_TEST_WORKERS=%d: Workers forced (testing only)", forced)
    return forced or resolve_workers(ic.workers)
