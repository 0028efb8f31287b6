"""The packet pump: device and socket readiness → engine batches → device writes and sends.

This is the only per-packet code outside the engine, so it is kept apart from the daemon's
life-cycle and control code (and is where TUN offloads, UDP GSO/GRO and worker processes plug in).
Each readiness callback drains a bounded batch, makes one engine call, and performs the Output:
datagrams grouped by destination go out in one `send` per destination (a sticky source the socket
found gone is forgotten by the engine at once, see io/udp.py), packets for the TUN and frames for
each segment's TAP are written, events go to the daemon, and the single loop timer is moved to
the engine's next deadline.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterable

from .io.tun import Tun
from .io.udp import UdpSocket
from .io.vxlan_socket import VxlanSocket
from .protocol.actions import Output, Src
from .protocol.drops import Drop
from .protocol.events import Event
from .protocol.packet_engine import PacketEngine

# CPython's cycle collector runs its youngest generation whenever the tracked objects allocated
# minus those freed pass 700. A data-path batch holds a few hundred tracked objects at once
# (the datagram tuples, the memoryviews of coalesced pieces), so that ran every batch or two and
# walked them all: 3-6 % of the receiving daemon's cycles (perf, bench/profile.sh -k). They never
# form cycles (reference counting frees them), so the threshold goes up: cyclic garbage is still
# collected, after 50 000 net allocations instead of 700.
GC_GEN0_THRESHOLD = 50_000


def relax_gc() -> None:
    """Raise the cycle collector's first threshold for a data-path process (see above)."""
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GC_GEN0_THRESHOLD, gen0), gen1, gen2)


class ProtocolClock:
    """The engine's `now`, from the loop's monotonic clock.

    Normally the identity. The testing knob ``TUNNELPY_TEST_TIME_SCALE=S`` (0.01 ≤ S ≤ 1) makes
    protocol time run 1/S times faster than real time, so a test can watch rekeys (120 s) or
    session expiry (180 s) happen in seconds: ``now = t0 + (loop.time() − t0) / S`` and a
    deadline is armed on the loop at ``t0 + (deadline − t0) × S``. The wall clock (TAI64N,
    ``wg show``'s handshake time) stays real. S ≥ 0.01 keeps REKEY_TIMEOUT × S (50 ms) above
    TAI64N's 2^24 ns whitening step, so retried initiations never carry the same timestamp.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, scale: float = 1.0) -> None:
        if not 0.01 <= scale <= 1:
            raise ValueError("TUNNELPY_TEST_TIME_SCALE must be between 0.01 and 1")
        self.loop = loop
        self.scale = scale
        self.t0 = loop.time()

    def now(self) -> float:
        if self.scale == 1.0:
            return self.loop.time()
        return self.t0 + (self.loop.time() - self.t0) / self.scale

    def loop_at(self, deadline: float) -> float:
        if self.scale == 1.0:
            return deadline
        return self.t0 + (deadline - self.t0) * self.scale


class DataPath:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: PacketEngine,
        udp: UdpSocket | VxlanSocket,
        tun: Tun | None,
        on_event: Callable[[Event], None],
        clock: ProtocolClock | None = None,
        *,
        on_device_gone: Callable[[Tun], None] | None = None,
    ) -> None:
        self.loop = loop
        self.clock = clock or ProtocolClock(loop)
        self.engine = engine
        self.udp = udp
        self.tun = tun
        self.taps: dict[int, Tun] = {}  # VNI -> TAP device of that segment
        self.on_event = on_event
        # A device deleted under us (Tun.gone): its reader is removed, then this is told.
        self.on_device_gone = on_device_gone
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    # -- wiring --------------------------------------------------------------------------------

    def start(self) -> None:
        if self.tun is not None:
            self.loop.add_reader(self.tun.fd, self._on_tun)
        self.loop.add_reader(self.udp.fileno(), self._on_udp)
        for vni, tap in self.taps.items():
            self.loop.add_reader(tap.fd, self._on_tap, vni, tap)
        self.perform(self.engine.on_timer(self.clock.now()))

    def add_tap(self, vni: int, tap: Tun, *, running: bool) -> None:
        self.taps[vni] = tap
        if running:
            self.loop.add_reader(tap.fd, self._on_tap, vni, tap)

    def remove_tap(self, vni: int) -> Tun | None:
        tap = self.taps.pop(vni, None)
        if tap is not None and tap.fd >= 0:
            self.loop.remove_reader(tap.fd)
        return tap

    def replace_udp(self, udp: UdpSocket | VxlanSocket) -> None:
        self.loop.remove_reader(self.udp.fileno())
        self.udp = udp
        self.loop.add_reader(udp.fileno(), self._on_udp)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.tun is not None and self.tun.fd >= 0:
            self.loop.remove_reader(self.tun.fd)
        for tap in self.taps.values():
            if tap.fd >= 0:
                self.loop.remove_reader(tap.fd)
        self.loop.remove_reader(self.udp.fileno())

    # -- readiness callbacks -------------------------------------------------------------------

    def _on_tun(self) -> None:
        tun = self.tun
        assert tun is not None
        packets = tun.read_batch()
        if packets:
            self.perform(self.engine.from_tunnel(packets, self.clock.now()))
        if tun.gone:
            self._lost(tun)

    def _on_tap(self, vni: int, tap: Tun) -> None:
        frames = tap.read_batch()
        if frames:
            self.perform(self.engine.from_segment(vni, frames, self.clock.now()))
        if tap.gone:
            self._lost(tap)

    def _lost(self, dev: Tun) -> None:
        """The kernel deleted ``dev``: stop watching its fd (it would be ready for ever)."""
        self.loop.remove_reader(dev.fd)
        if self.on_device_gone is not None:
            self.on_device_gone(dev)

    def _on_udp(self) -> None:
        udp = self.udp
        datagrams = udp.recv_batch()
        codel = getattr(udp, "codel", None)  # (a VxlanSocket has none)
        if codel is not None and codel.drops:
            self.engine.drops[Drop.QUEUE_DELAY] += codel.drops
            codel.drops = 0
        if datagrams:
            self.perform(self.engine.from_network(datagrams, self.clock.now()))

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.perform(self.engine.on_timer(self.clock.now()))

    # -- performing an Output ------------------------------------------------------------------

    def perform(self, out: Output) -> None:
        send = self.udp.send
        for dest, datagrams in out.datagrams.items():
            send(dest, datagrams)
        if self.udp.lost_sources:
            self._sources_lost()
        if out.packets and self.tun is not None:
            self.tun.write_batch(out.packets)
        if out.frames:
            for vni, frames in out.frames.items():
                tap = self.taps.get(vni)
                if tap is not None:
                    tap.write_batch(frames)
        for ev in out.events:
            self.on_event(ev)
        self._arm_timer()

    def forget_sources(self, srcs: Iterable[Src]) -> None:
        """Sticky sources that must not be used any more (an address removed from the host)."""
        for ev in self.engine.forget_sources(srcs).events:
            self.on_event(ev)

    def _sources_lost(self) -> None:
        """The socket could not send from some sticky sources (the address is gone) and sent
        from the kernel's choice instead: the engine stops naming them, the Device hears of it
        (the workers must stop too)."""
        lost = self.udp.lost_sources
        srcs = lost[:]
        lost.clear()
        for ev in self.engine.forget_sources(srcs).events:
            self.on_event(ev)

    def _arm_timer(self) -> None:
        deadline = self.engine.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self.loop.call_at(self.clock.loop_at(deadline), self._on_timer)
