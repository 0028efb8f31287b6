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
``reload.diff(old, new)`` says what changed and it is applied in two phases:
``reload.prepare`` (plus a new metrics listener here) does everything that can fail without
side effects, then ``reload.apply`` changes the running Device. Peers whose section did not
change are not touched at all: their sessions, counters and handshake time carry on. Changes
that need a restart (Name, Transport, Table, User) are logged and left.

The service reads the Device (status, peers up/down) and never changes it except through
``reload.apply``.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import config as cfgmod
from . import control, logsetup, privileges
from . import reload as rl
from .confreader import ConfigReader, ReaderError
from .device import Device, DeviceError
from .io import metrics as metricsmod
from .io import systemd
from .io.metrics import Listen, MetricsServer, MetricsUnavailable
from .netlink import topology as topomod
from .protocol.constants import REJECT_AFTER_TIME
from .protocol.vxlan import VxlanEngine
from .reload import ReloadRefused
from .version import version

__all__ = ["ReloadRefused", "Service"]

log = logging.getLogger("tunnelpyd")

STATUS_EVERY = 5.0  # seconds between STATUS= updates / peer up-down checks


class Service:
    def __init__(
        self,
        device: Device,
        *,
        topology: Callable[[], list[dict[str, object]]] | None = None,
        links: topomod.Topology | None = None,
        control_dir: str = control.DEFAULT_DIRECTORY,
        user: str | None = None,
        log_level_override: str | None = None,
        notifier: systemd.Notifier | None = None,
    ) -> None:
        self.device = device
        self.topology = topology  # the daemon's topology_status (the "topology" field)
        self.links = links  # the daemon's running topology: a reload changes it as a diff
        self.control_dir = control_dir
        self.user_override = user
        self.log_level_override = log_level_override
        self.notifier = notifier or systemd.Notifier()
        self.watchdog = systemd.watchdog_interval()
        # Like sd_notify(unset_environment=1): hooks run later must not talk to systemd as us.
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(var, None)
        self.control: control.ControlServer | None = None
        self.reader: ConfigReader | None = None  # after a drop to User (confreader.py)
        self.metrics: MetricsServer | None = None
        self.started = time.time()
        # Read now: after a drop to User the interpreter's files (importlib.metadata, the
        # dist-info) may be unreadable.
        self.version = version()
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
        d = self.device
        loop = asyncio.get_running_loop()
        self.control = control.ControlServer(
            d.name, {"show": self._show, "reload": self._reload_cmd}, directory=self.control_dir
        )
        try:
            await self.control.start()
        except (control.ControlSocketError, OSError) as e:
            self.control = None
            raise DeviceError(str(e)) from None
        user = self.user_override or d.conf.interface.user
        listen = d.conf.interface.metrics_listen
        if listen is not None:
            try:
                self.metrics = await self._start_metrics(listen, user)
            except (MetricsUnavailable, OSError, privileges.PrivilegeError) as e:
                raise DeviceError(f"MetricsListen = {_show_listen(listen)}: {e}") from None
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self._sighup_installed = True
        if user:
            # Everything a scrape imports, imported while the interpreter's files are still
            # readable: also for a listener that a reload adds after the drop.
            with contextlib.suppress(MetricsUnavailable):
                metricsmod.preload()
            if d.conf.path:
                # The config stays root's: reloads after the drop ask a root helper for it.
                self.reader = ConfigReader(d.conf.path)
                try:
                    self.reader.start()
                except ReaderError as e:
                    raise DeviceError(str(e)) from None
            self._drop(user)
        else:
            self._limit_root()
        self.notifier.ready(self.status_line())
        self._last_status = self.status_line()
        interval = self.watchdog
        if interval:
            log.debug("systemd watchdog: WATCHDOG=1 every %.1f s", interval)
            self._every(interval, self.notifier.watchdog)
        self._every(STATUS_EVERY, self._tick)

    async def _start_metrics(self, listen: Listen, user: str | None) -> MetricsServer:
        # A unix socket is root's (made before the drop) with the User's primary group, 0660.
        # (A non-loopback TCP address was already warned about with the config's warnings.)
        group = privileges.resolve_user(user).gid if user and isinstance(listen, str) else None
        srv = MetricsServer(listen, lambda: [self.metrics_status()], group=group)
        await srv.start()
        log.info("metrics on %s", srv.url)
        return srv

    def _limit_root(self) -> None:
        """Without User =: stay root, but keep only what running needs (privileges.py)."""
        if os.geteuid() != 0:
            return
        keep = [privileges.CAP_NET_ADMIN, privileges.CAP_NET_BIND_SERVICE]
        conf = self.device.conf
        if conf.namespaces or any(getattr(link, "namespace", None) for link in conf.topology):
            keep.append(privileges.CAP_SYS_ADMIN)  # undoing a namespace is a umount
            if topomod.private_mounts():  # ...in the starter's mount namespace: setns
                keep.append(privileges.CAP_SYS_CHROOT)
        try:
            privileges.limit_root(tuple(keep))
        except (privileges.PrivilegeError, OSError) as e:
            raise DeviceError(str(e)) from None
        self._new_executor()
        log.debug("running as root with capabilities %s only", ", ".join(map(str, keep)))

    def _new_executor(self) -> None:
        # Capabilities are per thread: executor threads born before have their own sets. New
        # ones are cloned from this thread, with exactly the kept set; the old ones end.
        loop = asyncio.get_running_loop()
        old = getattr(loop, "_default_executor", None)
        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="tunnelpyd"))
        if old is not None:
            old.shutdown(wait=False)

    def _drop(self, user: str) -> None:
        try:
            target = privileges.drop_privileges(user)
        except (privileges.PrivilegeError, OSError) as e:
            raise DeviceError(str(e)) from None
        self._new_executor()
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
        self.notifier.stopping(f"{self.device.name} shutting down")
        if self.reader is not None:
            await self.device.blocking(self.reader.close)
            self.reader = None
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

    # ------------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        d = self.device
        ic = d.conf.interface
        extra: dict[str, Any] = {
            "version": self.version,
            "config": d.conf.path,
            "started": self.started,
            "reloads": dict(self.reloads),
            "last_reload": self.last_reload,
            "user": self.user,
            "metrics": self.metrics.url if self.metrics else None,
            # the TUN MTU the engine pads to (followed by rtnetlink: netlink/linkwatch.py)
            "mtu": getattr(d.engine, "mtu", None),
            # data-path processes: the daemon itself plus one per extra TUN queue (Workers)
            "workers": d.pool.status()
            if d.pool is not None
            else [{"index": 0, "pid": os.getpid(), "tx_packets": None}],
        }
        # The links the daemon built from topology sections: [{"kind", "name", "namespace",
        # ...}] (the documented "topology" field).
        if self.topology is not None:
            extra["topology"] = self.topology()
        return control.device_status(
            name=d.name,
            engine=d.engine,
            segments=d.conf.segments,
            now=d.now(),
            listen_port=d.listen_port,
            fwmark=d.fwmark or 0,
            transport=ic.transport,
            extra=extra,
        )

    def metrics_status(self) -> dict[str, Any]:
        """What the metrics exporter reads: control.metrics_status, counters only (cheap)."""
        d = self.device
        return control.metrics_status(
            name=d.name,
            engine=d.engine,
            segments=d.conf.segments,
            now=d.now(),
            transport=d.conf.interface.transport,
            extra={"reloads": dict(self.reloads)},
        )

    def _show(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    def status_line(self) -> str:
        e = self.device.engine
        n = len(e.peers)
        # `systemctl status` keeps the last refusal in sight until a reload succeeds.
        last = self.last_reload
        refused = f"; reload refused: {last['error']}" if last and not last["ok"] else ""
        if isinstance(e, VxlanEngine):
            return f"{self.device.name}: {n} VXLAN peer(s), {len(e.segments)} segment(s){refused}"
        up = sum(1 for p in e.peers.values() if self._is_up(p))
        segs = f", {len(e.segments)} segment(s)" if e.segments else ""
        return f"{self.device.name}: {n} peer(s), {up} with a live session{segs}{refused}"

    def _is_up(self, peer: Any) -> bool:
        wall = getattr(peer, "last_handshake_wall", 0.0)
        return bool(wall) and time.time() - wall < REJECT_AFTER_TIME

    def _tick(self) -> None:
        e = self.device.engine
        if not isinstance(e, VxlanEngine):
            for key, p in e.peers.items():
                up = self._is_up(p)
                was = self._up.get(key)
                peer = {"peer": p.name}  # logsetup: JSON "peer", journald PEER=
                if up and not was:
                    log.info("peer %s: up", p.name, extra=peer)
                    ep = control._endpoint(p.endpoint)
                    log.debug("peer %s: endpoint %s", p.name, ep, extra=peer)
                elif was and not up:
                    log.warning(
                        "peer %s: down (no handshake for %d s)",
                        p.name,
                        int(REJECT_AFTER_TIME),
                        extra=peer,
                    )
                self._up[key] = up
            for gone in [k for k in self._up if not self.device.has_peer(k)]:
                del self._up[gone]
        line = self.status_line()
        if line != self._last_status:
            self.notifier.status(line)
            self._last_status = line
        limiter = logsetup.rate_limiter()
        if limiter is not None:
            limiter.flush(log)

    # ------------------------------------------------------------------------ reload

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.device.conf.path)
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
            self.notifier.reloading(f"{self.device.name}: reloading")
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
            else:  # before the STATUS= below, which must no longer name an old refusal
                self.reloads["ok"] += 1
                self.last_reload = {"time": time.time(), "ok": True, **result}
            finally:
                self.notifier.ready(self.status_line())
            return result

    def _load(self, path: str) -> cfgmod.Config:
        """The config as it is now: read directly, or after a drop by the root reader."""
        if self.reader is not None:
            return cfgmod.load(path, opener=self.reader.opener())
        return cfgmod.load(path)

    async def _reload(self) -> dict[str, Any]:
        d = self.device
        old = d.conf
        if not old.path:
            raise ReloadRefused(
                f"{d.name} was started as `tunnelpyd {d.name}`: there is no file to re-read "
                "(configure it with wg)"
            )
        try:
            new = await d.blocking(self._load, old.path)
        except cfgmod.ConfigError as e:
            raise ReloadRefused(str(e)) from None
        except ReaderError as e:
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
        prepared = await rl.prepare(plan, d, new, self.links)
        try:
            metrics = await self._prepare_metrics(plan, old, new)
        except BaseException:
            prepared.discard()
            raise
        try:
            await rl.apply(plan, d, new, prepared)
        except BaseException:
            prepared.discard()
            if metrics is not None:
                await metrics.close()
            raise
        await self._apply_service(plan, metrics)
        summary = plan.summary()
        log.info("reload of %s: %s", new.path, summary)
        return {
            "operations": [str(op) for op in plan.operations],
            "restart_needed": plan.restart_needed,
            "summary": summary,
        }

    async def _prepare_metrics(
        self, plan: rl.ReloadPlan, old: cfgmod.Config, new: cfgmod.Config
    ) -> MetricsServer | None:
        """A listener on a new MetricsListen, opened before anything changes (ReloadRefused)."""
        for op in plan.of(rl.SetInterface):
            if op.field != "metrics_listen" or op.value is None:
                continue
            old_listen = old.interface.metrics_listen
            if (
                self.metrics is not None
                and isinstance(old_listen, tuple)
                and isinstance(op.value, tuple)
                and op.value[1] == old_listen[1]
            ):
                return None  # same port, other address: the old listener must go first
            try:
                return await self._start_metrics(op.value, self.user)
            except (MetricsUnavailable, OSError, privileges.PrivilegeError) as e:
                raise ReloadRefused(f"{new.path}: Interface.MetricsListen: {e}") from None
        return None

    async def _apply_service(self, plan: rl.ReloadPlan, metrics: MetricsServer | None) -> None:
        """The [Interface] fields the service owns: log level and metrics listener."""
        for op in plan.of(rl.SetInterface):
            if op.field == "log_level" and not self.log_level_override:
                logsetup.set_level(op.value or "info")
            elif op.field == "log_format":
                logsetup.set_format(op.value)  # a no-op when --log-format pinned one
            elif op.field == "metrics_listen":
                old_srv, self.metrics = self.metrics, None
                if old_srv is not None:
                    await old_srv.close()
                if op.value is not None:
                    self.metrics = metrics or await self._start_metrics(op.value, self.user)


def _show_listen(listen: Listen) -> str:
    if isinstance(listen, str):
        return f"unix:{listen}"
    host, port = listen
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
