"""A worker process: one TUN queue in, encrypted datagrams out through the daemon's socket.

Forked by the zygote (zygote.py) at the daemon's request with four file descriptors: its TUN
queue, the daemon's UDP socket (it only sends on it), its end of the control channel and the
shared counter memfd. It never opens a device or a socket itself, so it needs no privileges (with
``User`` it runs as that user with none), and it exits when the control channel closes — which
is also what happens when the daemon dies, however it dies. SIGINT and SIGTERM are ignored: the daemon decides when workers
stop (a terminal's Ctrl-C or systemd's SIGTERM reach the whole process group at once).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys

from ..datapath import ProtocolClock, relax_gc
from ..io import knobs
from ..io.tun import Tun
from ..io.udp import UdpSocket
from ..protocol import aead
from .channel import MAX_QUEUED, Channel
from .counters import SharedCounters
from .messages import (
    DaemonMessage,
    Endpoint,
    Keypair,
    Peers,
    PeerSent,
    Rekey,
    Report,
    Stage,
    Stop,
    decode_from_daemon,
)
from .sender import SendEngine

REPORT_INTERVAL = 0.1  # how often sent bytes and drops reach the daemon (wg show, timers)
# What one message to the daemon may hold. The daemon refuses messages over 4 MiB
# (pool.MAX_FROM_WORKER); these keep every message well below it.
STAGE_CHUNK = 256  # packets per Stage message
STAGE_BYTES = 1 << 20  # and bytes (a packet is at most 64 KiB)
ROWS_CHUNK = 16384  # peers per Report, keys per Rekey
MAX_FROM_DAEMON = MAX_QUEUED  # the daemon fails a channel with more queued than that anyway

log = logging.getLogger("tunnelpyd")


class Worker:
    def __init__(self, args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.index = args.index
        self.clock = ProtocolClock(loop, args.time_scale)
        self.counters = SharedCounters(fd=args.counters_fd)
        # (as the daemon's Device)
        aead.enable(not knobs.compiled_forced_off(), copy=knobs.aead_copy())
        self.engine = SendEngine(self.counters, mtu=args.mtu)
        self.tun = Tun.adopt(args.tun_fd, args.name, vnet_hdr=args.vnet_hdr)
        self.udp = UdpSocket.adopt(args.udp_fd, offload=args.offload)
        self.done = asyncio.Event()
        self.channel: Channel[DaemonMessage] = Channel(
            socket.socket(fileno=args.ctl_fd), loop, self._on_message, self.done.set,
            decode=decode_from_daemon, max_message=MAX_FROM_DAEMON,
        )  # fmt: skip
        self._reported = (0, 0, 0)  # tun read drops, udp send errors, tun write drops
        self._expiry: asyncio.TimerHandle | None = None
        loop.add_reader(self.tun.fd, self._on_tun)
        self._report_timer = loop.call_later(REPORT_INTERVAL, self._report)

    def _on_tun(self) -> None:
        packets = self.tun.read_batch()
        if not packets:
            return
        out = self.engine.from_tunnel(packets, self.clock.now())
        send = self.udp.send
        for dest, datagrams in out.datagrams.items():
            send(dest, datagrams)
        lost = self.udp.lost_sources
        if lost:  # sent from the kernel's choice instead (io/udp.py): do not try them again
            self.engine.forget_sources(lost)
            lost.clear()
        for key, pkts in out.to_daemon.items():
            for chunk in stage_chunks(pkts):
                self.channel.send(Stage(key, chunk))
        for at in range(0, len(out.rekey), ROWS_CHUNK):
            self.channel.send(Rekey(out.rekey[at : at + ROWS_CHUNK]))

    def _on_message(self, msg: DaemonMessage) -> None:
        now = self.clock.now()
        if type(msg) is Peers:
            self.engine.set_peers(msg.peers)
        elif type(msg) is Endpoint:
            self.engine.set_endpoint(msg.key, msg.endpoint, msg.src)
        elif type(msg) is Keypair:
            self.engine.set_keypair(msg.key, msg.material, now)
            self._arm_expiry()
        elif type(msg) is Stop:
            self.done.set()

    def _arm_expiry(self) -> None:
        """Forget each sending key once it has expired: the daemon sends no message for that
        (it zeroes its own keys later still), and a key no longer usable is better gone."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        deadline = self.engine.next_expiry()
        if deadline is not None:
            self._expiry = self.loop.call_at(self.clock.loop_at(deadline), self._expire)

    def _expire(self) -> None:
        self._expiry = None
        self.engine.forget_expired(self.clock.now())
        self._arm_expiry()

    def _send_report(self, sent: list[PeerSent], drops: dict[str, int]) -> None:
        for at in range(0, max(len(sent), 1), ROWS_CHUNK):
            self.channel.send(Report(sent[at : at + ROWS_CHUNK], drops if at == 0 else {}))

    def _report(self) -> None:
        sent, drops = self.engine.take_report()
        errors = (self.tun.read_drops, self.udp.send_errors, self.tun.write_drops)
        if errors != self._reported:
            for reason, now_, before in zip(
                ("tun_read_error", "udp_send_error", "tun_write_error"), errors, self._reported,
                strict=True,
            ):  # fmt: skip
                if now_ > before:
                    drops[reason] = drops.get(reason, 0) + now_ - before
            self._reported = errors
        if sent or drops:
            self._send_report(sent, drops)
        self._report_timer = self.loop.call_later(REPORT_INTERVAL, self._report)

    async def run(self) -> None:
        await self.done.wait()
        self._report_timer.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        if self.tun.fd >= 0:
            self.loop.remove_reader(self.tun.fd)
        if not self.channel.closed:
            sent, drops = self.engine.take_report()
            if sent or drops:
                self._send_report(sent, drops)
        self.tun.close()  # detaches this queue: its flows move to the others


def stage_chunks(packets: list[bytes]) -> list[list[bytes]]:
    """``packets`` cut into Stage-sized runs: at most STAGE_CHUNK packets and, past the first
    packet of a run, STAGE_BYTES bytes."""
    chunks: list[list[bytes]] = []
    run: list[bytes] = []
    size = 0
    for p in packets:
        if run and (len(run) >= STAGE_CHUNK or size + len(p) > STAGE_BYTES):
            chunks.append(run)
            run, size = [], 0
        run.append(p)
        size += len(p)
    if run:
        chunks.append(run)
    return chunks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tunnelpyd-worker")
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tun-fd", type=int, required=True)
    ap.add_argument("--udp-fd", type=int, required=True)
    ap.add_argument("--ctl-fd", type=int, required=True)
    ap.add_argument("--counters-fd", type=int, required=True)
    ap.add_argument("--mtu", type=int, default=1420)
    ap.add_argument("--vnet-hdr", type=int, default=0)
    ap.add_argument("--offload", type=int, default=1)
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level,
        format=f"tunnelpyd[{args.name} worker {args.index}]: %(message)s",
    )  # fmt: skip
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    relax_gc()
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        worker = Worker(args, loop)
        loop.run_until_complete(worker.run())
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
