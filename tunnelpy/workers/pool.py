"""The daemon's side of ``Workers = N``: start the worker processes, keep them in step, merge
what they report.

The daemon itself reads queue 0 of the multi-queue TUN and is the only process that receives on
the UDP socket; workers 1…N-1 each read one more queue and encrypt (sender.py). The pool:

- starts the zygote (zygote.py) while still root, then for each worker opens a queue and has
  the zygote fork a worker with the queue, the socket, a control socketpair and the shared
  counter memfd; then closes its own copy of the queue (so a dead worker's queue detaches and
  its flows move to the live queues);
- mirrors the engine's state to the workers (messages.py): the peer list with AllowedIPs when
  either changes (AllowedIPs.version), each peer's endpoint with its sticky source (the local
  address to send from), and the sending half of its current keypair. It does not poll: whoever changes that state calls ``sync()`` (``wg set``, reload,
  name resolution) or ``sync_soon()`` (a handshake or roam, from the engine's events). A worker
  drops a keypair by itself once it has expired, so expiry needs no message;
- applies reports: sent bytes and send-side timers (``Engine.note_worker_sent``), drops, packets
  a worker could not send (re-routed on the daemon's own table, then staged behind a handshake
  by the engine), rekey requests;
- reads what workers send as hostile (workers run with fewer privileges): a message that does
  not decode fails that worker's channel, the worker is killed, counted in ``malformed`` and
  restarted like one that exited;
- restarts a worker that exits (at most MAX_RESTARTS per RESTART_WINDOW), and stops them all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..io.tun import Tun, TunError
from ..io.udp import UdpSocket
from ..protocol.actions import Output
from ..protocol.engine import Engine
from ..protocol.peer import Peer
from . import channel as chmod
from .counters import SharedCounters
from .messages import (
    DaemonMessage,
    Endpoint,
    Keypair,
    KeypairMaterial,
    PeerRoutes,
    Peers,
    Rekey,
    Report,
    Stage,
    Stop,
    WorkerMessage,
    decode_from_worker,
    encode,
)
from .zygote import encode_request, parse_answer

# The largest message a worker may send: its sender cuts stages and reports well below this
# (child.py), so only a broken or hostile worker reaches it.
MAX_FROM_WORKER = 4 << 20
COUNTER_SLOTS = 1 << 16  # three live keypairs per peer fit many thousands of peers
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
RESTART_DELAY = 1.0

ZYGOTE_TIMEOUT = 10.0  # a fork answers in milliseconds; a stuck zygote must not hang us

log = logging.getLogger("tunnelpyd")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # (a zombie also answers; the zygote ignores SIGCHLD, so its children never become one)
    return True


def _parent_of(pid: int) -> int | None:
    """The parent of `pid`, or None if it is gone already."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so from the last ")"
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def resolve_workers(configured: int | None, cpus: int | None = None) -> int:
    """``Workers = auto`` (None): one process on machines of up to two CPUs — measured there,
    a second process only competes with the first and with the applications for the same two
    cores (docs/performance.md) — else half the CPUs, at most 4. A number is taken as given."""
    if configured is not None:
        return configured
    if cpus is None:
        cpus = len(os.sched_getaffinity(0))
    return 1 if cpus <= 2 else min(cpus // 2, 4)


@dataclass
class WorkerProc:
    index: int
    pid: int  # a child of the zygote, reaped by the kernel
    channel: chmod.Channel[WorkerMessage] | None = None
    retired: bool = False  # stopped on purpose: its exit is not a failure
    tx_packets: int = 0  # encrypted and sent by this worker (from its reports)
    started: float = field(default_factory=time.monotonic)


class WorkerPool:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: Engine,
        now: Callable[[], float],
        tun: Tun,
        udp: UdpSocket,
        count: int,
        perform: Callable[[Output], None],
        *,
        offload: bool,
        time_scale: float = 1.0,
        user: str | None = None,
    ) -> None:
        self.loop = loop
        self.engine = engine
        self.now = now
        self.tun = tun
        self.udp = udp
        self.count = count
        self.perform = perform
        self.offload = offload
        self.time_scale = time_scale
        self.user = user or ""  # the daemon's User: workers drop to it with no capabilities
        self.counters = SharedCounters(slots=COUNTER_SLOTS)
        engine.set_counter_bank(self.counters)
        self.workers: dict[int, WorkerProc] = {}
        self.zygote: subprocess.Popen | None = None
        self._zsock: socket.socket | None = None
        self.stopping = False
        self._restarts: list[float] = []
        self._sig: tuple | None = None
        # peer key -> ((endpoint, source), keypair identity) as last sent to the workers
        self._sent: dict[bytes, tuple] = {}
        self._sync_pending = False
        self.malformed = 0  # workers failed for breaking the control protocol (channel.error)

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        self.tun.detach_writes()  # else every flow is steered back to the daemon's queue
        self._start_zygote()
        for i in range(1, self.count):
            self._spawn(i)

    def _start_zygote(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.zygote = subprocess.Popen(
                [sys.executable, "-m", "tunnelpy.workers.zygote",
                 "--sock-fd", str(theirs.fileno()), "--user", self.user],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            theirs.close()
        ours.settimeout(ZYGOTE_TIMEOUT)
        self._zsock = ours

    def _spawn(self, index: int) -> None:
        pid, ours = self._fork(index)
        w = WorkerProc(index, pid)
        w.channel = chmod.Channel(
            ours, self.loop, lambda m: self._on_message(w, m), lambda: self._on_exit(w),
            decode=decode_from_worker, max_message=MAX_FROM_WORKER,
        )  # fmt: skip
        self.workers[index] = w
        for msg in self._full_state():
            w.channel.send(msg)
        log.info("%s: worker %d started (pid %d)", self.tun.name, index, pid)

    def _fork(self, index: int) -> tuple[int, socket.socket]:
        """Have the zygote fork worker `index`: its pid and our end of its control channel."""
        if self._zsock is None:
            raise OSError("the worker zygote is gone")
        queue = self.tun.open_queue()
        ours, theirs = chmod.pair()
        argv = [
            "--index", str(index), "--name", self.tun.name,
            "--tun-fd", "{tun}", "--udp-fd", "{udp}", "--ctl-fd", "{ctl}",
            "--counters-fd", "{counters}",
            "--mtu", str(self.engine.mtu), "--vnet-hdr", str(int(self.tun.vnet_hdr)),
            "--offload", str(int(self.offload)), "--time-scale", str(self.time_scale),
            "--log-level", logging.getLevelName(log.getEffectiveLevel()),
        ]  # fmt: skip
        try:
            fds = [queue, self.udp.fileno(), theirs.fileno(), self.counters.fd]
            socket.send_fds(self._zsock, [encode_request(argv)], fds)
            pid = parse_answer(self._zsock.recv(256))
            if self.zygote is not None and _parent_of(pid) not in (None, self.zygote.pid):
                # The daemon kills this pid later: it must be the worker, not any process.
                raise OSError(f"the worker zygote answered pid {pid}, not a child of its own")
        except OSError:
            ours.close()
            raise
        finally:
            os.close(queue)  # the worker holds the queue now; if it dies, the queue detaches
            theirs.close()
        return pid, ours

    async def stop(self) -> None:
        self.stopping = True
        pids = [w.pid for w in self.workers.values()]
        self._retire_all()
        if self._zsock is not None:
            self._zsock.close()  # the zygote exits on end of file
            self._zsock = None
        deadline = time.monotonic() + 3.0
        while any(map(_alive, pids)) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for pid in filter(_alive, pids):
            os.kill(pid, signal.SIGKILL)
        if self.zygote is not None:
            while self.zygote.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self.zygote.poll() is None:
                self.zygote.kill()
                self.zygote.wait()
        # The counter bank stays mapped: the engine's keypairs reserve from it until the daemon
        # has stopped sending (the memfd goes with the process).

    def replace_udp(self, udp: UdpSocket) -> None:
        """A new listen port: workers send through the new socket (they are restarted)."""
        self.udp = udp
        self.restart()

    def restart(self) -> None:
        """Start every worker afresh: what they get only at spawn (socket, MTU) changed."""
        self._retire_all()
        for i in range(1, self.count):
            try:
                self._spawn(i)
            except (OSError, TunError) as e:
                log.error("%s: cannot restart worker %d: %s", self.tun.name, i, e)

    def _retire_all(self) -> None:
        for w in list(self.workers.values()):
            w.retired = True
            assert w.channel is not None
            w.channel.send(Stop())
            w.channel.close()
        self.workers.clear()

    def _on_exit(self, w: WorkerProc) -> None:
        if self.stopping or w.retired:
            return
        index = w.index
        error = w.channel.error if w.channel is not None else None
        if error is not None:
            # It may still be running and holding its queue: its flows would go nowhere.
            self.malformed += 1
            log.error("%s: worker %d broke the control protocol (%s); killing it",
                      self.tun.name, index, error)  # fmt: skip
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.workers.get(index) is w:
            del self.workers[index]
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW] + [now]
        if len(self._restarts) > MAX_RESTARTS:
            log.error(
                "%s: worker %d exited; %d restarts within %.0f s, not restarting (its flows moved "
                "to the other queues)", self.tun.name, index, MAX_RESTARTS, RESTART_WINDOW,
            )  # fmt: skip
            return
        log.warning("%s: worker %d exited; restarting", self.tun.name, index)
        self.loop.call_later(RESTART_DELAY, self._respawn, index)

    def _respawn(self, index: int) -> None:
        if self.stopping or index in self.workers:
            return
        try:
            self._spawn(index)
        except (OSError, TunError) as e:
            log.error("%s: cannot restart worker %d: %s", self.tun.name, index, e)

    def status(self) -> list[dict[str, object]]:
        """For `tunnelpy show --json`: the daemon (index 0) and each live worker."""
        rows: list[dict[str, object]] = [{"index": 0, "pid": os.getpid(), "tx_packets": None}]
        for i, w in sorted(self.workers.items()):
            rows.append({"index": i, "pid": w.pid, "tx_packets": w.tx_packets})
        return rows

    # ---------------------------------------------------------------- engine state -> workers

    def _peers_msg(self) -> Peers:
        e = self.engine
        networks_of = e.allowed.networks_of
        return Peers([
            PeerRoutes(key, p.endpoint, networks_of(p), p.src) for key, p in e.peers.items()
        ])  # fmt: skip

    def _keypair_msg(self, key: bytes, now: float) -> Keypair:
        kp = self.engine.peers[key].current
        if kp is None or not kp.ident:
            return Keypair(key, None)
        return Keypair(key, KeypairMaterial(
            kp.send_key, kp.remote_index, kp.slot, kp.ident, now - kp.created, kp.is_initiator,
        ))  # fmt: skip

    def _state_of(self, peer: Peer) -> tuple:
        kp = peer.current
        return ((peer.endpoint, peer.src), kp.ident if kp is not None else 0)

    def _full_state(self) -> list[DaemonMessage]:
        now = self.now()
        msgs: list[DaemonMessage] = [self._peers_msg()]
        msgs += [self._keypair_msg(key, now) for key in self.engine.peers]
        return msgs

    def _broadcast(self, msg: DaemonMessage) -> None:
        if not self.workers:
            return
        data = encode(msg)  # once, whatever the number of workers
        for w in self.workers.values():
            if w.channel is not None:
                w.channel.send_bytes(data)

    def sync(self) -> None:
        """Send the workers whatever changed since the last sync. Whoever changes peers,
        AllowedIPs, endpoints or keypairs calls this (or ``sync_soon``): nothing polls."""
        self._sync_pending = False
        e = self.engine
        now = self.now()
        sig = (e.allowed.version, tuple(e.peers))
        if sig != self._sig:
            self._sig = sig
            self._broadcast(self._peers_msg())  # carries every endpoint
            # A worker keeps the sending key of a peer it already had (and a new peer has
            # none, as for identity 0): only keypairs that changed follow.
            old = self._sent
            self._sent = {
                k: ((p.endpoint, p.src), old.get(k, (None, 0))[1]) for k, p in e.peers.items()
            }
        for key, peer in e.peers.items():
            state = self._state_of(peer)
            sent = self._sent.get(key)
            if sent == state:
                continue
            if sent is None or sent[0] != state[0]:
                self._broadcast(Endpoint(key, peer.endpoint, peer.src))
            if sent is None or sent[1] != state[1]:
                self._broadcast(self._keypair_msg(key, now))
            self._sent[key] = state

    def sync_soon(self) -> None:
        """``sync`` once the current callback is done (many events of one batch, one sync)."""
        if not self._sync_pending:
            self._sync_pending = True
            self.loop.call_soon(self.sync)

    # ---------------------------------------------------------------- workers -> engine

    def _on_message(self, w: WorkerProc, msg: WorkerMessage) -> None:
        """A decoded message (types and sizes checked by the codec): only its meaning is left
        to judge — peer keys may be unknown, staged packets are routed again here."""
        e = self.engine
        now = self.now()
        if type(msg) is Report:
            for s in msg.sent:
                w.tx_packets += s.tx_packets
                peer = e.peers.get(s.key)
                if peer is not None:
                    e.note_worker_sent(peer, s.tx_bytes, s.tx_packets, s.data_sent, now)
            e.count_drops(msg.drops)
            self.perform(Output())  # (re-arms the timer for deadlines the report moved)
        elif type(msg) is Stage:
            self.perform(e.send_staged(msg.key, msg.packets, now))
        elif type(msg) is Rekey:
            out = Output()
            for key in msg.keys:
                peer = e.peers.get(key)
                if peer is not None:
                    e.rekey_if_due(peer, now, out)
            self.perform(out)
