"""The asyncio shell: orders start-up and unwinding around the :class:`~tunnelpy.device.Device`.

The daemon owns no interface state itself; the Device does (engine, TUN, TAPs, UDP socket,
routes, workers), and the daemon only decides the order in which it is opened and closed, with
the hooks (PreUp/PostUp/PreDown/PostDown), the topology sections, the UAPI socket and the
service layer (systemd, control socket, metrics, reload) around it.

Start-up is ordered so that a failure changes nothing on the host: names are resolved and every
precondition checked first (interface name free, UAPI socket not served by a live daemon, UDP
port free), then the TUN is created and configured, hooks run, and only then do packets flow.
Anything that fails after the TUN exists unwinds what was done, in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import signal
import subprocess
from collections.abc import Callable

from . import config as cfgmod
from . import dns, wgapi
from .datapath import ProtocolClock
from .device import Device, DeviceError, workers_for
from .io import knobs
from .io.tun import TunError
from .io.uapi import DeviceSnapshot, SetRequest, UapiServer
from .io.udp import UdpError
from .netlink import iface
from .netlink.topology import Topology, TopologyError
from .service import Service
from .version import version

log = logging.getLogger("tunnelpyd")


# How often the daemon checks that its UAPI socket file is still there (exit within 1 s of its
# removal; an inotify watch would be instant but needs ctypes for a once-per-run event).
UAPI_WATCH_EVERY = 0.25


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
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.conf = conf
        # Told once the interface is up and its sockets answer (`tunnelpyd IFNAME` in the
        # background: the waiting parent exits 0 then; tunnelpy/launcher.py).
        self.on_ready = on_ready
        self.name = conf.interface.name
        self.uapi_dir = uapi_dir
        self.control_dir = control_dir
        self.user = user
        self.log_level_override = log_level_override
        self.device = Device(conf, on_lost=self._lost)
        # systemd readiness, control socket, metrics, reload, User drop (service.py)
        self.service: Service | None = None
        self.topology: Topology | None = None
        self._topology_names = {link.name for link in conf.topology}
        self.uapi: UapiServer | None = None
        self._stop = asyncio.Event()
        self._watch: asyncio.TimerHandle | None = None
        self.lost: str | None = None  # why the interface went away under us, if it did
        self.dns: dns.Applied | None = None  # DNS = as set, to be undone exactly

    # ------------------------------------------------------------------ life cycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        scale = knobs.time_scale()
        try:
            clock = ProtocolClock(loop, float(scale) if scale else 1.0)
        except ValueError:
            raise StartupError(
                f"TUNNELPY_TEST_TIME_SCALE={scale}: expected a number between 0.01 and 1"
            ) from None
        if scale:
            log.warning(
                "TUNNELPY_TEST_TIME_SCALE=%s: protocol timers run faster (testing only)", scale
            )
        # Before anything exists: a SIGTERM during start-up then unwinds (after the start
        # completes or fails) instead of killing the process with the UAPI socket in place.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._start(loop, clock)
            # Devices, addresses, routes and topology are up: READY=1 comes from here.
            self.service = Service(
                self.device, topology=self.topology_status, links=self.topology,
                control_dir=self.control_dir, user=self.user,
                log_level_override=self.log_level_override,
            )  # fmt: skip
            await self.service.start()
            if self.on_ready is not None:
                self.on_ready()
        except DeviceError as e:  # the control socket, metrics listener or User drop
            await self._teardown()
            raise StartupError(str(e)) from None
        except BaseException:
            await self._teardown()
            raise
        log.info(
            "%s up: listening on UDP %d, %d peer(s) (tunnelpyd v%s)",
            self.name, self.device.listen_port, len(self.device.engine.peers), version(),
        )  # fmt: skip
        if self.uapi is not None:
            self._watch = loop.call_later(UAPI_WATCH_EVERY, self._watch_uapi)
        try:
            await self._stop.wait()
        finally:
            log.info("%s shutting down", self.name)
            await self._teardown()
        return 0

    def stop(self) -> None:
        self._stop.set()

    def _lost(self, why: str) -> None:
        """The interface went away under us (deleted TUN, removed UAPI socket): as
        wireguard-go does, give up its name at once and exit."""
        if self.lost is None:
            self.lost = why
            log.warning("%s: %s; shutting down", self.name, why)
        self._stop.set()
        if self.uapi is not None:
            # A new daemon for this name may start right away. After a drop to User the file
            # in root's directory cannot be removed: the successor takes the stale socket over.
            with contextlib.suppress(OSError):
                self.uapi.unlink()

    def _watch_uapi(self) -> None:
        """`wg-quick down` on a userspace interface deletes its UAPI socket: that means exit."""
        self._watch = None
        if self.uapi is None:
            return
        if not self.uapi.still_bound():
            self._lost(f"the UAPI socket {self.uapi.path} was removed")
            return
        self._watch = asyncio.get_running_loop().call_later(UAPI_WATCH_EVERY, self._watch_uapi)

    async def _start(self, loop: asyncio.AbstractEventLoop, clock: ProtocolClock) -> None:
        conf = self.conf
        ic = conf.interface
        dev = self.device
        dev.loop = loop
        dev.now = clock.now
        for w in conf.warnings:
            log.warning("%s", w)
        try:
            # 1. Everything that can fail without side effects.
            workers = workers_for(conf)
            endpoints = await dev.resolve_endpoints(conf.peers, conf.path)
            await dev.check_free(conf.segments, own_links=self._topology_names, path=conf.path)
            # Always a Topology, also with no sections yet: a reload may add some (as a diff).
            self.topology = Topology(conf)
            if self.topology.plan.steps:
                # A SIGKILLed predecessor's links go first; then the whole plan is checked
                # against the kernel (kinds it lacks, names taken, parents missing) before
                # anything changes.
                for line in await dev.blocking(self.topology.cleanup_leftovers):
                    log.info("topology: %s", line)
                await dev.blocking(self.topology.validate)

            # 2. Things that need undoing, in order (_teardown undoes whatever got done).
            if not dev.plain_vxlan:
                self.uapi = UapiServer(
                    self.name, self._uapi_get, self._uapi_set, directory=self.uapi_dir
                )
                try:
                    await self.uapi.start()
                except Exception as e:
                    self.uapi = None
                    raise StartupError(str(e)) from None
            dev.open_udp()
            dev.add_configured_peers(endpoints)
            dev.add_configured_segments()
            self._run_hooks("PreUp", ic.pre_up)
            dev.open_devices(workers)
            await dev.configure_devices(own_links=self._topology_names)
            if self.topology.plan.steps:
                # After the TUN and TAPs exist: they can be ports of the topology's bridges.
                # On failure apply() has already undone its own steps.
                await dev.blocking(self.topology.apply)

            # Packets flow from here on: routes can take long to install (10^5 AllowedIPs
            # prefixes are 10^5 netlink round trips), and the peers need not wait for them.
            dev.start(loop, clock)
            dev.start_workers(time_scale=clock.scale, user=self.user or ic.user)
            await dev.install_routes()
            if ic.dns and dev.tun is not None:
                # As wg-quick: after addresses and routes, before PostUp (tunnelpy/dns.py).
                self.dns = await dev.blocking(dns.apply, self.name, list(ic.dns))
                log.info("DNS: %d entr(ies) set through %s", len(ic.dns), self.dns.tool)
        except (
            DeviceError,
            dns.DnsError,
            TopologyError,
            iface.NetlinkSetupError,
            TunError,
            UdpError,
            OSError,
        ) as e:
            raise StartupError(str(e)) from None
        self._run_hooks("PostUp", ic.post_up)

    def topology_status(self) -> list[dict[str, object]]:
        """The links the topology sections describe, for `tunnelpy show` (empty without)."""
        return [
            {"name": link.name, "kind": type(link).__name__.removesuffix("Config").lower(),
             "namespace": getattr(link, "namespace", None),
             "built": self.topology is not None and self.topology.applied}
            for link in self.device.conf.topology  # the running config: reloads change it
        ]  # fmt: skip

    async def _teardown(self) -> None:
        dev = self.device
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.service is not None:
            await self.service.close()  # STOPPING=1; control socket and metrics go first
            self.service = None
        await dev.stop()
        devices_up = dev.devices_open
        if devices_up:
            self._run_hooks("PreDown", self.conf.interface.pre_down)
        if self.dns is not None:
            try:
                await dev.blocking(dns.undo, self.dns)
            except dns.DnsError as e:
                log.warning("DNS: could not remove the resolvers: %s", e)
            self.dns = None
        await dev.remove_rules()
        if self.topology is not None:
            # Before the TUN/TAPs go: restore foreign ports, delete what we created, in reverse.
            for problem in await dev.blocking(self.topology.undo):
                log.warning("topology undo: %s", problem)
            self.topology.close()
            self.topology = None
        dev.close_devices()
        if devices_up:
            self._run_hooks("PostDown", self.conf.interface.post_down)
        dev.close_socket()
        if self.uapi is not None:
            # After a drop to User the socket in root's /run/wireguard cannot be unlinked; the
            # next start takes the stale file over (the systemd unit removes it).
            with contextlib.suppress(PermissionError):
                await self.uapi.close()
            self.uapi = None

    def _run_hooks(self, what: str, commands: tuple[str, ...]) -> None:
        for n, cmd in enumerate(commands, 1):
            # %i quoted for /bin/sh (names are restricted to [a-zA-Z0-9_=+.-] anyway).
            cmd = cmd.replace("%i", shlex.quote(self.name))
            # The command itself only at DEBUG: hooks often carry tokens or addresses.
            log.info("%s: running command %d of %d", what, n, len(commands))
            log.debug("%s: %s", what, cmd)
            r = subprocess.run(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                # Named by position and program, not in full (see above).
                words = cmd.split(None, 1)
                which = f"{what} command {n} ({words[0] if words else ''} …)"
                if what in ("PreUp", "PostUp"):
                    raise StartupError(f"{which} failed with status {r.returncode}")
                log.warning("%s failed with status %d", which, r.returncode)

    # ------------------------------------------------------------------ UAPI

    def _uapi_get(self) -> DeviceSnapshot:
        return wgapi.snapshot(self.device)

    def _uapi_set(self, req: SetRequest) -> None:
        wgapi.apply_set(self.device, req)
