"""The worker's half of the engine: route and encrypt what one TUN queue yields.

Theory of operation
-------------------
With ``Workers = N`` the TUN has N queues; the kernel spreads outgoing flows over them by flow
hash, and each worker process reads one queue. A worker runs no handshakes and holds no receive
state: the daemon (the main process) owns the static key, every handshake, every receive path
(replay windows, keypair rotation, roaming) and every timer, and tells the workers what they need
to encrypt: per peer its endpoint and sticky source (the local address to send from, which only
the daemon learns: it receives), its AllowedIPs, and the sending half of its current keypair
(key, remote index, the keypair's age and its shared counter slot). A source the worker's socket
finds gone is forgotten here at once (``forget_sources``), as the daemon's engine does for its
own sends, until the daemon sends the peer's endpoint and source again.

``from_tunnel(packets, now)`` routes each packet through AllowedIPs exactly as the engine does
and, when the peer's sending state is usable (young enough, counters left, an endpoint, and the
shared slot still the keypair's), reserves counters for the whole batch and encrypts it with the
engine's own :func:`seal` (compiled or `cryptography`, as the daemon's keypairs: aead.py). Anything it cannot send — no keypair yet, an expired one, a
retired slot — goes to the daemon (``to_daemon``), whose engine stages it and starts the
handshake exactly as for its own queue. An initiator keypair past REKEY_AFTER_TIME asks the
daemon for a rekey (``rekey``), at most once per REKEY_TIMEOUT.

A sending key is forgotten once it has expired (``forget_expired`` at ``next_expiry``): the
daemon announces new keypairs, not the end of old ones.

What was sent is summed per peer for ``take_report``: the daemon adds the bytes to ``wg show``'s
transfer counters and runs the send-side timers for it. The class is sans-I/O like the engine:
bytes and ``now`` in, lists out; counters come from an injected bank.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..protocol import aead
from ..protocol.actions import Dest, Src, add_datagrams
from ..protocol.allowedips import AllowedIPs, route_packets
from ..protocol.constants import (
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
)
from ..protocol.engine import CounterBank
from ..protocol.peer import Addr
from ..protocol.session import seal
from .messages import KeypairMaterial, PeerRoutes, PeerSent


class SendKey:
    """The sending half of a keypair, as a worker holds it."""

    __slots__ = ("encrypt", "sealer", "remote_index", "slot", "ident", "created", "is_initiator",
                 "counter")  # fmt: skip

    def __init__(
        self, key: bytes, remote_index: int, slot: int, ident: int, created: float,
        is_initiator: bool,
    ) -> None:  # fmt: skip
        self.encrypt = ChaCha20Poly1305(key).encrypt
        self.sealer = aead.Sealer(key, aead.copying()) if aead.enabled() else None
        self.remote_index = remote_index
        self.slot = slot
        self.ident = ident
        self.created = created
        self.is_initiator = is_initiator
        self.counter = 0  # this worker's view: the highest counter it reserved


class WorkerPeer:
    __slots__ = ("key", "endpoint", "src", "dest", "send", "tx_bytes", "tx_packets",
                 "data_sent", "any_sent", "rekey_asked")  # fmt: skip

    def __init__(self, key: bytes, endpoint: Addr | None, src: Src | None = None) -> None:
        self.key = key
        self.endpoint = endpoint
        self.src = src
        self.dest: Dest | None = None  # the datagrams' key: endpoint and src (None: no endpoint)
        self.set_path(endpoint, src)
        self.send: SendKey | None = None
        self.tx_bytes = self.tx_packets = 0
        self.data_sent = self.any_sent = False
        self.rekey_asked = float("-inf")

    def set_path(self, endpoint: Addr | None, src: Src | None) -> None:
        self.endpoint = endpoint
        self.src = src
        self.dest = None if endpoint is None else Dest(endpoint[0], endpoint[1], 0, src)


@dataclass
class SendOutput:
    # Grouped by destination; a value may be a Sealed (protocol.actions.add_datagrams).
    datagrams: dict[Dest, list[bytes]] = field(default_factory=dict)
    to_daemon: dict[bytes, list[bytes]] = field(default_factory=dict)  # peer key -> packets
    rekey: list[bytes] = field(default_factory=list)  # peer keys


class SendEngine:
    def __init__(self, counters: CounterBank, mtu: int = 1420) -> None:
        self.counters = counters
        self.mtu = mtu
        self.peers: dict[bytes, WorkerPeer] = {}
        self.allowed: AllowedIPs[WorkerPeer] = AllowedIPs()
        self.drops: Counter[str] = Counter()

    # ---------------------------------------------------------------- state from the daemon

    def set_peers(self, peers: Iterable[PeerRoutes]) -> None:
        """The daemon's whole peer list and routing table (sent when either changed)."""
        old = self.peers
        self.peers = {}
        self.allowed = AllowedIPs()
        insert = self.allowed.insert
        for p in peers:
            wp = old.get(p.key)
            if wp is None:
                wp = WorkerPeer(p.key, p.endpoint, p.src)
            else:
                wp.set_path(p.endpoint, p.src)
            self.peers[p.key] = wp
            for net in p.networks:
                insert(net, wp)

    def set_endpoint(self, key: bytes, endpoint: Addr | None, src: Src | None = None) -> None:
        wp = self.peers.get(key)
        if wp is not None:
            wp.set_path(endpoint, src)

    def forget_sources(self, srcs: Iterable[Src]) -> None:
        """The socket could not send from these local addresses (and sent from the kernel's
        choice instead): stop naming them."""
        lost = set(srcs)
        for wp in self.peers.values():
            if wp.src is not None and wp.src in lost:
                wp.set_path(wp.endpoint, None)

    def set_keypair(self, key: bytes, material: KeypairMaterial | None, now: float) -> None:
        """The sending half of the peer's current keypair, or None when it has no session to
        send on."""
        wp = self.peers.get(key)
        if wp is None:
            return
        if material is None:
            wp.send = None
            return
        m = material
        wp.send = SendKey(m.send_key, m.remote_index, m.slot, m.ident, now - m.age, m.is_initiator)

    def next_expiry(self) -> float | None:
        """When the oldest sending key expires (REJECT_AFTER_TIME after it was made)."""
        created = [wp.send.created for wp in self.peers.values() if wp.send is not None]
        return min(created) + REJECT_AFTER_TIME if created else None

    def forget_expired(self, now: float) -> None:
        for wp in self.peers.values():
            if wp.send is not None and now - wp.send.created >= REJECT_AFTER_TIME:
                wp.send = None

    # ---------------------------------------------------------------- data

    def from_tunnel(self, packets: list[bytes], now: float) -> SendOutput:
        out = SendOutput()
        for peer, pkts in route_packets(packets, self.allowed, self.drops).items():
            self._send(peer, pkts, now, out)
        return out

    def _send(self, peer: WorkerPeer, payloads: list[bytes], now: float, out: SendOutput) -> None:
        sk = peer.send
        n = len(payloads)
        dest = peer.dest
        if sk is None or dest is None or now - sk.created >= REJECT_AFTER_TIME:
            out.to_daemon.setdefault(peer.key, []).extend(payloads)
            return
        counter = self.counters.reserve(sk.slot, sk.ident, n)
        if counter is None:
            peer.send = None  # the slot went to a newer keypair: this one is retired
        if counter is None or counter + n >= REJECT_AFTER_MESSAGES:
            out.to_daemon.setdefault(peer.key, []).extend(payloads)
            return
        assert sk is not None
        datagrams, sent, _ = seal(
            sk.sealer, sk.encrypt, sk.remote_index, counter, payloads, self.mtu
        )  # (all n: the batch stays below REJECT_AFTER_MESSAGES, checked above)
        sk.counter = counter + n
        add_datagrams(out.datagrams, dest, datagrams)
        peer.tx_bytes += sent
        peer.tx_packets += n
        peer.any_sent = True
        peer.data_sent = True  # (TUN packets are never empty)
        if (
            sk.is_initiator
            and (sk.counter > REKEY_AFTER_MESSAGES or now - sk.created > REKEY_AFTER_TIME)
            and now - peer.rekey_asked >= REKEY_TIMEOUT
        ):
            peer.rekey_asked = now
            out.rekey.append(peer.key)

    # ---------------------------------------------------------------- reporting

    def take_report(self) -> tuple[list[PeerSent], dict[str, int]]:
        """What was sent per peer since the last report and the drops by reason; both
        reset."""
        sent = []
        for wp in self.peers.values():
            if wp.any_sent:
                sent.append(PeerSent(wp.key, wp.tx_bytes, wp.tx_packets, wp.data_sent))
                wp.tx_bytes = wp.tx_packets = 0
                wp.any_sent = wp.data_sent = False
        drops = dict(self.drops)
        self.drops.clear()
        return sent, drops
