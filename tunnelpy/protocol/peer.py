"""Per-peer protocol state: identity, keypairs, the pending handshake, timers and counters.

A Peer is plain data owned by the Engine. Its timers are absolute deadlines on the engine's
monotonic clock (None = not armed), mirroring wireguard-go's five per-peer timers:

- ``retransmit_at``      resend the initiation (REKEY_TIMEOUT + jitter) until REKEY_ATTEMPT_TIME
- ``send_keepalive_at``  passive keepalive KEEPALIVE_TIMEOUT after data arrived and we sent nothing
- ``new_handshake_at``   we sent data but heard nothing for KEEPALIVE + REKEY_TIMEOUT: rehandshake
- ``zero_keys_at``       forget all key material 3 × REJECT_AFTER_TIME after the last session
- ``persistent_at``      PersistentKeepalive interval after any authenticated packet traversal

The engine keeps one heap of (deadline, peer) entries and only pushes when a peer's earliest
deadline moves earlier, so per-packet timer updates cost a few attribute writes, not heap work.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field

from .actions import Dest, Origin, Src
from .constants import MAX_STAGED_PACKETS
from .cookie import CookieGenerator
from .handshake import InitiationState
from .session import Keypair

Addr = tuple[str, int]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class PeerStats:
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    handshakes: int = 0
    drops: dict[str, int] = field(default_factory=dict)


class Peer:
    def __init__(
        self,
        public_key: bytes,
        *,
        name: str,
        preshared_key: bytes | None,
        endpoint: Addr | None,
        persistent_keepalive: int,
    ) -> None:
        self.public_key = public_key
        self.name = name
        self.preshared_key = preshared_key or bytes(32)
        self.endpoint = endpoint
        # The sticky source: the local address the last authenticated datagram from the peer
        # arrived at, which what we send it leaves from (None: the kernel chooses). Whatever
        # sets `endpoint` from outside (config, UAPI) clears it, as wireguard-go's ClearSrc.
        self.src: Src | None = None
        # The Origin (endpoint and src) of the last authenticated datagram, so that a run of
        # them from the same place costs one comparison (None: compare afresh).
        self.heard: Origin | None = None
        # The Output.datagrams key of `endpoint` and `src` (dest_for is that endpoint object;
        # a change of src resets it), made once per endpoint instead of per batch sent:
        # building a NamedTuple costs about a microsecond.
        self.dest_for: Addr | None = None
        self.dest = Dest("", 0)
        self.persistent_keepalive = persistent_keepalive
        self.cookie_gen = CookieGenerator(public_key)

        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None

        # Initiator side of a handshake in flight.
        self.handshake: InitiationState | None = None
        self.handshake_attempts = 0
        self.last_sent_handshake = float("-inf")
        # Responder side: replay and flood protection of initiations.
        self.last_timestamp = b""
        self.last_initiation_consumed = float("-inf")

        self.last_handshake_wall = 0.0  # unix time of the last completed handshake (for `wg show`)
        self.last_handshake = float("-inf")  # same, monotonic
        self.last_received = float("-inf")  # any authenticated packet

        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED_PACKETS)
        self.stats = PeerStats()

        self.retransmit_at: float | None = None
        self.send_keepalive_at: float | None = None
        self.need_another_keepalive = False
        self.new_handshake_at: float | None = None
        self.zero_keys_at: float | None = None
        self.persistent_at: float | None = None
        self.scheduled_at: float | None = None  # the earliest entry this peer has in the heap
        self.removed = False

    def earliest_deadline(self) -> float | None:
        times = [
            t
            for t in (
                self.retransmit_at,
                self.send_keepalive_at,
                self.new_handshake_at,
                self.zero_keys_at,
                self.persistent_at,
            )
            if t is not None
        ]
        return min(times) if times else None

    def keypairs(self) -> list[Keypair]:
        return [kp for kp in (self.previous, self.current, self.next) if kp is not None]

    def count_drop(self, reason: str) -> None:
        self.stats.drops[reason] = self.stats.drops.get(reason, 0) + 1

    def __repr__(self) -> str:
        return f"Peer({self.name})"
