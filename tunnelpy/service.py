"""Running tunnelpyd as a service: systemd readiness and watchdog, status, control socket,
metrics, live reload and the privilege drop. The daemon's life cycle calls three methods:

``await Service.start()``  after the devices, addresses, routes and topology are up:
    control socket (``/run/tunnelpy/NAME.ctl``), metrics listener (``MetricsListen``), SIGHUP
    handler, then the drop to ``User`` (keeping CAP_NET_ADMIN), then READY=1 with a STATUS line,
    then the periodic timers (WATCHDOG=1 every WatchdogSec/2 from the loop; STATUS and peer
    up/down every few seconds; the log rate limiter's summaries).
``await Service.reload()``  on SIGHUP or the control socket's ``reload``: see below.
``await Service.close()``   first thing in teardown: STOPPING=1, control and metrics closed.

Reload, like ``wg syncconf`` with a file: the config file is read and parsed again; any error
refuses the whole file (one log line; the old config keeps running). Otherwise
``reload.diff(old, new)`` says what changed and it is applied in two phases: *prepare*
everything that can fail without side effects (resolve new endpoints, bind a new listen port or
metrics address, check new segment devices are free), then *apply* the operations. Peers whose
section did not change are not touched at all: their sessions, counters and handshake time
carry on. Changes that need a restart (Name, Transport, Table, User) are logged and left.

The file-vs-file difference is applied, not file-vs-runtime: a change made by ``wg set`` to a
peer whose section did not change survives a reload (``wg syncconf`` would revert it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from . import config as cfgmod
from . import control, logsetup, privileges
from . import reload as rl
from .io import systemd
from .io.metrics import MetricsServer, MetricsUnavailable, is_loopback
from .io.udp import UdpError, UdpSocket, is_literal, resolve
from .io.vxlan_socket import VxlanSocket
from .netlink import iface
from .protocol.constants import REJECT_AFTER_TIME
from .protocol.vxlan import VxlanEngine

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("tunnelpyd")

STATUS_EVERY = 5.0  # seconds between STATUS= updates / peer up-down checks


class ReloadRefused(Exception):
    """The new config cannot be applied; nothing was changed. ``str(e)`` is one line."""


class Service:
    def __init__(
        self,
        daemon: Daemon,
        *,
        control_dir: str = control.DEFAULT_DIRECTORY,
        user: str | None = None,
        log_level_override: str | None = None,
        notifier: systemd.Notifier | None = None,
    ) -> None:
        self.d = daemon
        self.control_dir = control_dir
        self.user_override = user
        self.log_level_override = log_level_override
        self.notifier = notifier or systemd.Notifier()
        self.watchdog = systemd.watchdog_interval()
        # Like sd_notify(unset_environment=1): hooks run later must not talk to systemd as us.
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(var, None)
        self.control: control.ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.started = time.time()
        self.reloads = {"ok": 0, "error": 0}
        self.last_reload: dict[str, Any] | None = None
        self.user: str | None = None
        self._lock = asyncio.Lock()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._up: dict[bytes | str, bool] = {}
        self._last_status = ""
        self._sighup_installed = False

    # ------------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        from .daemon import StartupError

        d = self.d
        loop = asyncio.get_running_loop()
        self.control = control.ControlServer(
            d.name, {"show": self._show, "reload": self._reload_cmd}, directory=self.control_dir
        )
        try:
            await self.control.start()
        except (control.ControlSocketError, OSError) as e:
            self.control = None
            raise StartupError(str(e)) from None
        listen = d.conf.interface.metrics_listen
        if listen is not None:
            try:
                self.metrics = await self._start_metrics(listen)
            except (MetricsUnavailable, OSError) as e:
                raise StartupError(f"MetricsListen = {listen[0]}:{listen[1]}: {e}") from None
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self._sighup_installed = True
        user = self.user_override or d.conf.interface.user
        if user:
            self._drop(user)
        self.notifier.ready(self.status_line())
        self._last_status = self.status_line()
        interval = self.watchdog
        if interval:
            log.debug("systemd watchdog: WATCHDOG=1 every %.1f s", interval)
            self._every(interval, self.notifier.watchdog)
        self._every(STATUS_EVERY, self._tick)

    async def _start_metrics(self, listen: tuple[str, int]) -> MetricsServer:
        host, port = listen
        srv = MetricsServer(host, port, lambda: [self.status()])
        await srv.start()
        if not is_loopback(host):
            log.warning("metrics are served on %s, which is not a loopback address", srv.url)
        else:
            log.info("metrics on %s", srv.url)
        return srv

    def _drop(self, user: str) -> None:
        from .daemon import StartupError

        try:
            target = privileges.drop_privileges(user)
        except (privileges.PrivilegeError, OSError) as e:
            raise StartupError(str(e)) from None
        # Capabilities are per thread: executor threads born before the drop have none left
        # (or too many). New ones are cloned from this thread, with exactly the kept set.
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="tunnelpyd"))
        self.user = target.user
        log.info(
            "running as %s (uid %d, gid %d) with CAP_NET_ADMIN only",
            target.user,
            target.uid,
            target.gid,
        )

    def _every(self, seconds: float, fn: Any) -> None:
        """Call ``fn`` every ``seconds`` from the loop (so a stuck loop stops the calls)."""
        loop = asyncio.get_running_loop()
        key = len(self._timers)

        def tick() -> None:
            self._timers[key] = loop.call_later(seconds, tick)
            fn()

        self._timers[key] = loop.call_later(seconds, tick)

    async def close(self) -> None:
        self.notifier.stopping(f"{self.d.name} shutting down")
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        if self._sighup_installed:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self.metrics is not None:
            await self.metrics.close()
            self.metrics = None
        if self.control is not None:
            await self.control.close()
            self.control = None
        if self.user and self.d.uapi is not None:
            # After the drop the sockets in root's /run/wireguard and /run/tunnelpy cannot be
            # unlinked; the next start takes the stale files over (the systemd unit removes them).
            with contextlib.suppress(PermissionError):
                await self.d.uapi.close()
            self.d.uapi = None

    # ------------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        d = self.d
        ic = d.conf.interface
        extra: dict[str, Any] = {
            "config": d.conf.path,
            "started": self.started,
            "reloads": dict(self.reloads),
            "last_reload": self.last_reload,
            "user": self.user,
            "metrics": self.metrics.url if self.metrics else None,
            # data-path processes: the daemon itself plus one per extra TUN queue (Workers)
            "workers": d.pool.status() if d.pool is not None else [
                {"index": 0, "pid": os.getpid(), "tx_packets": None}
            ],
        }
        # The links the daemon built from topology sections, once it builds them: a method
        # returning [{"kind", "name", "namespace", ...}] (the documented "topology" field).
        topology = getattr(d, "topology_status", None)
        if callable(topology):
            extra["topology"] = topology()
        return control.device_status(
            name=d.name,
            engine=d.engine,
            segments=d.conf.segments,
            now=d.clock.now(),
            listen_port=d.udp.port if d.udp else 0,
            fwmark=d.fwmark or 0,
            transport=ic.transport,
            extra=extra,
        )

    def _show(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    def status_line(self) -> str:
        e = self.d.engine
        n = len(e.peers)
        if isinstance(e, VxlanEngine):
            return f"{self.d.name}: {n} VXLAN peer(s), {len(e.segments)} segment(s)"
        up = sum(1 for p in e.peers.values() if self._is_up(p))
        segs = f", {len(e.segments)} segment(s)" if e.segments else ""
        return f"{self.d.name}: {n} peer(s), {up} with a live session{segs}"

    def _is_up(self, peer: Any) -> bool:
        wall = getattr(peer, "last_handshake_wall", 0.0)
        return bool(wall) and time.time() - wall < REJECT_AFTER_TIME

    def _tick(self) -> None:
        e = self.d.engine
        if not isinstance(e, VxlanEngine):
            for key, p in e.peers.items():
                up = self._is_up(p)
                was = self._up.get(key)
                if up and not was:
                    log.info("peer %s: up (endpoint %s)", p.name, control._endpoint(p.endpoint))
                elif was and not up:
                    log.warning(
                        "peer %s: down (no handshake for %d s)", p.name, int(REJECT_AFTER_TIME)
                    )
                self._up[key] = up
            for key in [k for k in self._up if k not in e.peers]:
                del self._up[key]
        line = self.status_line()
        if line != self._last_status:
            self.notifier.status(line)
            self._last_status = line
        limiter = logsetup.rate_limiter()
        if limiter is not None:
            limiter.flush(log)

    # ------------------------------------------------------------------------ reload

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.d.conf.path)
        task = asyncio.get_running_loop().create_task(self.reload())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _reload_cmd(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.reload()
        except ReloadRefused as e:
            raise control.ControlError(str(e)) from None

    async def reload(self) -> dict[str, Any]:
        """Re-read the config and apply the difference; ReloadRefused (nothing changed) if not."""
        async with self._lock:
            self.notifier.reloading(f"{self.d.name}: reloading")
            try:
                result = await self._reload()
            except ReloadRefused as e:
                self.reloads["error"] += 1
                self.last_reload = {"time": time.time(), "ok": False, "error": str(e)}
                log.error("reload refused, keeping the running config: %s", e)
                raise
            except Exception as e:  # a bug half-way: say so, keep running
                self.reloads["error"] += 1
                self.last_reload = {"time": time.time(), "ok": False, "error": repr(e)}
                log.exception("reload failed part-way")
                raise ReloadRefused(f"reload failed part-way: {e}") from e
            finally:
                self.notifier.ready(self.status_line())
            self.reloads["ok"] += 1
            self.last_reload = {"time": time.time(), "ok": True, **result}
            return result

    async def _reload(self) -> dict[str, Any]:
        d = self.d
        old = d.conf
        try:
            new = await d._blocking(cfgmod.load, old.path)
        except cfgmod.ConfigError as e:
            raise ReloadRefused(str(e)) from None
        except OSError as e:
            raise ReloadRefused(f"{old.path}: {e.strerror or e}") from None
        for w in new.warnings:
            if w not in old.warnings:
                log.warning("%s", w)
        plan = rl.diff(old, new)
        if plan.restart_needed:
            log.warning(
                "reload: %s changed; that needs a restart (the running value stays)",
                ", ".join(plan.restart_needed),
            )
        prepared = await self._prepare(plan, old, new)
        try:
            await self._apply(plan, old, new, prepared)
        except BaseException:
            for sock in prepared.get("close_on_failure", []):
                sock.close()
            raise
        summary = plan.summary()
        log.info("reload of %s: %s", new.path, summary)
        return {
            "operations": [str(op) for op in plan.operations],
            "restart_needed": plan.restart_needed,
            "summary": summary,
        }

    async def _prepare(
        self, plan: rl.ReloadPlan, old: cfgmod.Config, new: cfgmod.Config
    ) -> dict[str, Any]:
        """Everything that can fail, before anything changes. Raises ReloadRefused."""
        d = self.d
        prepared: dict[str, Any] = {"endpoints": {}, "close_on_failure": []}
        for op in plan.operations:
            peer = None
            if isinstance(op, rl.AddPeer):
                peer = op.peer
            elif isinstance(op, rl.UpdatePeer) and "endpoint" in op.fields:
                peer = op.new
            if peer is None or peer.endpoint is None:
                continue
            host, port = peer.endpoint
            try:
                addr = await d._blocking(resolve, host, port)
            except OSError as e:
                raise ReloadRefused(
                    f"{new.path}:{peer.line}: Peer.Endpoint: cannot resolve {host}: {e}"
                ) from None
            prepared["endpoints"][rl.peer_identity(peer)] = addr
        removed_devices = {op.segment.device for op in plan.of(rl.RemoveSegment)}
        for op in plan.of(rl.AddSegment):
            seg = op.segment
            if seg.device not in removed_devices and await d._blocking(
                iface.link_exists, seg.device
            ):
                raise ReloadRefused(
                    f"{new.path}:{seg.line}: Segment {seg.name}: interface {seg.device} already exists"
                )
            if seg.bridge is not None:
                kind = await d._blocking(iface.link_kind, seg.bridge)
                if kind != "bridge":
                    raise ReloadRefused(
                        f"{new.path}:{seg.line}: Segment {seg.name}.Bridge: {seg.bridge} is not a bridge"
                    )
        for op in plan.of(rl.SetInterface):
            if op.field == "listen_port" and d.udp is not None and op.value != d.udp.port:
                try:
                    if d.plain_vxlan:
                        sock = VxlanSocket(op.value, d.fwmark, offload=d.offload)
                    else:
                        sock = UdpSocket(op.value, d.fwmark, offload=d.offload)
                except (UdpError, OSError) as e:
                    raise ReloadRefused(f"{new.path}: Interface.ListenPort: {e}") from None
                prepared["udp"] = sock
                prepared["close_on_failure"].append(sock)
            elif op.field == "metrics_listen" and op.value is not None:
                old_listen = old.interface.metrics_listen
                if (
                    self.metrics is not None
                    and old_listen is not None
                    and op.value[1] == old_listen[1]
                ):
                    # same port, other address: the old listener must go first
                    prepared["metrics_replace_first"] = True
                    continue
                try:
                    prepared["metrics"] = await self._start_metrics(op.value)
                except (MetricsUnavailable, OSError) as e:
                    raise ReloadRefused(f"{new.path}: Interface.MetricsListen: {e}") from None
        return prepared

    async def _apply(
        self,
        plan: rl.ReloadPlan,
        old: cfgmod.Config,
        new: cfgmod.Config,
        prepared: dict[str, Any],
    ) -> None:
        d = self.d
        e = d.engine
        now = d.clock.now()
        routes_dirty = False
        for op in plan.of(rl.SetInterface):
            routes_dirty |= await self._set_interface(op, old, new, prepared)
        # peers: removals, additions, updates
        for op in plan.of(rl.RemovePeer):
            self._remove_peer(op.peer)
            routes_dirty = True
        for op in plan.of(rl.AddPeer):
            p = op.peer
            ep = prepared["endpoints"].get(rl.peer_identity(p))
            if isinstance(e, VxlanEngine):
                assert ep is not None
                e.add_peer(p.name, ep)
            elif p.public_key in e.peers:
                # already there: added at run time by `wg set`; the file's values win
                fields = tuple((f, getattr(p, f)) for f in rl.PEER_FIELDS)
                self._update_peer(rl.UpdatePeer(p, p, fields), prepared, now)
            else:
                e.add_peer(
                    p.public_key, name=p.name, preshared_key=p.preshared_key, endpoint=ep,
                    allowed_ips=p.allowed_ips, persistent_keepalive=p.persistent_keepalive or 0,
                    now=now,
                )  # fmt: skip
            if p.endpoint is not None and not is_literal(p.endpoint[0]) and p.public_key:
                d._hostnames[p.public_key] = p.endpoint
            routes_dirty = True
        for op in plan.of(rl.UpdatePeer):
            routes_dirty |= self._update_peer(op, prepared, now)
        # segments
        for op in plan.of(rl.RemoveSegment):
            seg = op.segment
            if d.datapath is not None:
                tap = d.datapath.remove_tap(seg.vni)
            else:
                tap = None
            tap = d.taps.pop(seg.vni, None) or tap
            if tap is not None:
                tap.close()
            e.segments.pop(seg.vni, None)
        d.conf = new  # segment_mtu and the add-segment helpers read the new config from here
        added = {op.segment.vni for op in plan.of(rl.AddSegment)}
        for op in plan.of(rl.AddSegment):
            await self._add_segment(op.segment)
        peer_changes = bool(plan.of(rl.AddPeer) or plan.of(rl.RemovePeer))
        for seg in new.segments:
            if seg.vni in added:
                continue
            changed = any(op.new.name == seg.name for op in plan.of(rl.UpdateSegment))
            names = set(seg.peers or ()) | {n for _, n in seg.static_macs}
            renamed = any("name" in op.fields for op in plan.of(rl.UpdatePeer))
            if changed or (peer_changes or renamed) and (names or seg.peers is None):
                self._rebind_segment(seg, keep_fdb=not changed)
        if routes_dirty and d.tun is not None:
            nets = [n for p in new.peers for n in p.allowed_ips]
            ic = new.interface
            try:
                await d._blocking(iface.sync_routes, d.name, nets, ic.table, d.fwmark, d.routes)
            except iface.NetlinkSetupError as err:
                log.error("reload: routes: %s", err)
            if iface.needs_default_route_rules(nets, ic.table) and not d.routes.rules:
                log.warning(
                    "reload: a default route (0.0.0.0/0 or ::/0) needs a restart to be routed"
                )
        if plan.of(rl.AddLink) or plan.of(rl.RemoveLink):
            log.warning("reload: topology section changes are applied on the next restart")
        if d.datapath is not None:
            d.datapath.perform(e.on_timer(d.clock.now()))
        if d.pool is not None:
            d.pool.sync()  # peers, AllowedIPs, endpoints, keys: the workers are not polling

    async def _set_interface(
        self, op: rl.SetInterface, old: cfgmod.Config, new: cfgmod.Config, prepared: dict[str, Any]
    ) -> bool:
        d = self.d
        f, value = op.field, op.value
        if f == "private_key" and not d.plain_vxlan:
            d.engine.set_private_key(value)
            log.warning("reload: new private key: every session starts over")
        elif f == "listen_port" and "udp" in prepared:
            new_sock, old_sock = prepared["udp"], d.udp
            d.udp = new_sock
            if d.datapath is not None:
                d.datapath.replace_udp(new_sock)
            if d.pool is not None:
                d.pool.replace_udp(new_sock)  # the workers send through the new socket
            if old_sock is not None:
                old_sock.close()
        elif f == "fwmark":
            d.fwmark = value
            if d.udp is not None:
                d.udp.set_fwmark(value or 0)
            return True
        elif f == "mtu":
            if not d.plain_vxlan:
                d.engine.mtu = value
            if d.tun is not None:
                await d._blocking(iface.configure_device, d.name, value, [])
        elif f == "addresses" and d.tun is not None:
            await d._blocking(_set_addresses, d.name, old.interface.addresses, value)
        elif f == "log_level" and not self.log_level_override:
            logsetup.set_level(value or "info")
        elif f == "metrics_listen":
            old_srv = self.metrics
            self.metrics = None
            if old_srv is not None:
                await old_srv.close()
            if value is not None:
                self.metrics = prepared.get("metrics") or await self._start_metrics(value)
        return False

    def _remove_peer(self, p: cfgmod.PeerConfig) -> None:
        d, e = self.d, self.d.engine
        if isinstance(e, VxlanEngine):
            peer = e.peers.pop(p.name, None)
            if peer is None:
                return
            if e.by_addr.get(peer.endpoint[0]) is peer:
                del e.by_addr[peer.endpoint[0]]
            for seg in e.segments.values():
                if peer in seg.peers:
                    seg.peers.remove(peer)
                seg.fdb.forget_peer(peer)
            return
        e.remove_peer(p.public_key)
        d._hostnames.pop(p.public_key, None)

    def _update_peer(self, op: rl.UpdatePeer, prepared: dict[str, Any], now: float) -> bool:
        d, e = self.d, self.d.engine
        new = op.new
        changes = dict(op.changes)
        if isinstance(e, VxlanEngine):
            peer = e.peers.get(op.old.name)
            if peer is None:
                return False
            ep = prepared["endpoints"].get(rl.peer_identity(new))
            if ep is not None:
                if e.by_addr.get(peer.endpoint[0]) is peer:
                    del e.by_addr[peer.endpoint[0]]
                peer.endpoint = ep
                e.by_addr[ep[0]] = peer
            return False
        peer = e.peers.get(new.public_key)
        if peer is None:
            return False
        routes = False
        if "name" in changes:
            peer.name = new.name
        if "preshared_key" in changes:
            peer.preshared_key = new.preshared_key or bytes(32)
        if "endpoint" in changes:
            ep = prepared["endpoints"].get(rl.peer_identity(new))
            if ep is not None:
                peer.endpoint = ep
            d._hostnames.pop(new.public_key, None)
            if new.endpoint is not None and not is_literal(new.endpoint[0]):
                d._hostnames[new.public_key] = new.endpoint
        if "allowed_ips" in changes:
            e.set_allowed_ips(peer, new.allowed_ips)
            routes = True
        if "persistent_keepalive" in changes:
            e.set_persistent_keepalive(peer, new.persistent_keepalive or 0, now)
        return routes

    async def _add_segment(self, seg: cfgmod.SegmentConfig) -> None:
        from .io.tun import Tun

        d = self.d
        tap = Tun(seg.device, tap=True, offload=d.offload)
        try:
            await d._blocking(
                iface.configure_device, seg.device, d.segment_mtu(seg), list(seg.addresses)
            )
            if seg.bridge is not None:
                await d._blocking(iface.enslave, seg.device, seg.bridge)
        except BaseException:
            tap.close()
            raise
        d.taps[seg.vni] = tap
        self._rebind_segment(seg, keep_fdb=False)
        if d.datapath is not None:
            d.datapath.add_tap(seg.vni, tap, running=True)

    def _rebind_segment(self, seg: cfgmod.SegmentConfig, *, keep_fdb: bool) -> None:
        """(Re)create the engine's segment from config; keep_fdb: only rebind the peer list."""
        from .protocol.vxlan import ETH_HLEN

        d, e = self.d, self.d.engine
        by_name = (
            dict(e.peers) if isinstance(e, VxlanEngine) else {p.name: p for p in e.peers.values()}
        )
        members = None if seg.peers is None else [by_name[n] for n in seg.peers if n in by_name]
        if isinstance(e, VxlanEngine) and members is None:
            members = list(by_name.values())
        current = e.segments.get(seg.vni)
        if keep_fdb and current is not None and not seg.static_macs:
            current.peers = members
            return
        e.add_segment(
            seg.vni,
            members,
            hub=seg.hub,
            aging=seg.aging,
            max_fdb=seg.max_fdb,
            max_frame=d.segment_mtu(seg) + ETH_HLEN + 4,
            static=[(mac, by_name[n]) for mac, n in seg.static_macs if n in by_name],
        )


def _set_addresses(name: str, old: tuple[Any, ...], new: tuple[Any, ...]) -> None:
    """Make the device's configured addresses go from ``old`` to ``new`` (others untouched)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        idx = found[0]
        for a in set(old) - set(new):
            with contextlib.suppress(NetlinkError):
                ipr.addr("del", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
        for a in new:
            try:
                ipr.addr("add", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
            except NetlinkError as err:
                if err.code != 17:
                    raise iface.NetlinkSetupError(
                        f"cannot add address {a} to {name}: {err}"
                    ) from None
