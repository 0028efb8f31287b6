"""The sans-I/O WireGuard engine: batches of bytes and `now` in, actions out.

Theory of operation
-------------------
The engine is the whole protocol of one interface: its static key, its peers, the index table
that maps the 32-bit receiver index of an incoming message to a keypair or pending handshake, and
the cryptokey routing table (AllowedIPs). It never touches a socket, a device or a clock. The
daemon feeds it four kinds of batch and performs what comes back in an :class:`Output`:

``from_tunnel(packets, now)``
    IP packets read from the TUN. Each is routed by destination through AllowedIPs to a peer,
    padded, encrypted with the peer's current keypair and queued as a transport message for the
    peer's endpoint. A peer with no usable keypair stages the packet (bounded) and starts a
    handshake; staged packets leave as soon as the handshake completes.

``from_network(datagrams, now)``
    UDP payloads with their source address. Handshake messages are checked (mac1, then under load
    mac2 or a cookie reply), consumed, and answered; transport messages are looked up by receiver
    index, decrypted, checked against the replay window, and their inner source must be routed to
    the sending peer (cryptokey routing inbound) before the packet is handed to the TUN. An
    authenticated packet from a new address moves the peer's endpoint there (roaming), and the
    local address it arrived at (the third element of its Origin, when the socket tells)
    becomes the peer's sticky source, which every Dest for the peer names (actions.py).

``from_segment(vni, frames, now)``
    Ethernet frames read from a segment's TAP, switched by that segment's :class:`Switch`
    (switch.py: FDB lookup, flooding, hubs) and sent to the chosen peers as L2 plaintexts (a
    VXLAN header and the frame) on the same sessions as IP. Received L2 plaintexts go through
    the same switch (learning, split horizon, hub relay) to ``Output.frames``.

``on_timer(now)``
    Fires the per-peer timers whose deadline passed (see peer.py); ``next_deadline()`` tells the
    daemon when to call it next.

Nothing from the network raises: every rejected datagram increments ``drops[reason]`` (a
:class:`~.drops.Drop`; and the peer's own counter where a peer is known) and is forgotten. The
output groups datagrams by destination (:class:`~.actions.Dest`), so a batch for one peer can
leave in one GSO send; events (events.py) say what happened to peers.

The state machine follows wireguard-go (device/send.go, receive.go, timers.go, noise-protocol.go)
so timing behaviour, not only the bytes, matches what WireGuard peers expect.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from . import aead
from . import handshake as hs
from .actions import Dest, Origin, Output, Src, add_datagrams
from .allowedips import AllowedIPs, NetworkLike, route_packets
from .constants import (
    COOKIE_REPLY_SIZE,
    HANDSHAKE_INITIATION_RATE,
    INITIATION_SIZE,
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    MSG_COOKIE_REPLY,
    MSG_INITIATION,
    MSG_RESPONSE,
    MSG_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    RESPONSE_SIZE,
    TRANSPORT_HEADER_SIZE,
)
from .cookie import CookieChecker
from .crypto import generate_private_key, public_key
from .drops import Drop
from .events import (
    HandshakeComplete,
    HandshakeFailed,
    HandshakeSent,
    ResolveEndpoint,
    Roamed,
    SourceChanged,
)
from .fdb import DEFAULT_AGING, DEFAULT_MAX_ENTRIES, DEFAULT_MOVE_HOLD
from .packet_engine import UNSET, Unset
from .peer import Addr, Peer
from .session import Keypair, seal
from .switch import DEFAULT_MAX_FRAME, Switch
from .tai64n import tai64n
from .vxlan_header import ETH_HLEN, FLAG_I, HEADER_LEN

Rng = Callable[[int], bytes]


class CounterBank(Protocol):
    """Shared send counters (tunnelpy/workers/counters.py): slots handed out per keypair."""

    def claim(self, now: float | None = None) -> tuple[int, int] | None: ...
    def reserve(self, slot: int, ident: int, n: int) -> int | None: ...
    def peek(self, slot: int, ident: int) -> int | None: ...


WallClock = Callable[[], float]

_TRANSPORT_HEADER = struct.Struct("<IIQ")
_L2_MIN = HEADER_LEN + ETH_HLEN  # the shortest L2 plaintext: header + Ethernet header
# What _deliver knows about a peer's L2 frames in a batch: the first 20 bytes (header,
# destination and source MAC) of the last frame it wrote to a TAP and that TAP's frame list.
L2Known = tuple[bytes | None, list[bytes] | None]
_NO_L2: L2Known = (None, None)
_NONCE = struct.Struct("<IQ")  # 4 zero bytes, then the 64-bit little-endian counter

# The responder is "under load" (and demands cookies) when it has processed more than this many
# handshake messages within the last second; it stays so for UNDER_LOAD_AFTER seconds afterwards.
# wireguard-go's trigger is a handshake queue 1/8 full (128 of 1024 entries).
UNDER_LOAD_THRESHOLD = 128
UNDER_LOAD_AFTER = 1.0
# Per source, while under load: 20 initiations per second, burst 5 (wireguard-go ratelimiter).
# A source is an IPv4 address or an IPv6 /64 (the kernel module's ratelimiter.c keys v6 so: one
# routed /64 is 2^64 addresses, one host's worth). When the table is full, new sources share the
# bucket of their wider prefix (IPv4 /16, IPv6 /32) in a second table of the same size, then one
# last bucket for all: a flood degrades its own neighbourhood, not every newcomer. Sources that
# completed a handshake within TRUSTED_FOR seconds skip the limit (their mac2 shows the cookie
# reached them there, and their sessions must survive a flood).
RATELIMIT_PER_SECOND = 20.0
RATELIMIT_BURST = 5.0
RATELIMIT_MAX_SOURCES = 4096
TRUSTED_FOR = 3 * REJECT_AFTER_TIME
TRUSTED_MAX = 16384


def addr_bytes(addr: Origin) -> bytes:
    """The source identity that cookies are bound to: packed IP then big-endian port."""
    try:
        return ipaddress.ip_address(addr[0]).packed + struct.pack(">H", addr[1] & 0xFFFF)
    except ValueError:
        return addr[0].encode() + struct.pack(">H", addr[1] & 0xFFFF)


class Engine:
    def __init__(
        self,
        private_key: bytes,
        *,
        rng: Rng,
        wall: WallClock,
        mtu: int = 1420,
        under_load_threshold: int = UNDER_LOAD_THRESHOLD,
    ) -> None:
        self.rng = rng
        self.wall = wall
        self.mtu = mtu
        self.under_load_threshold = under_load_threshold
        # The shell sets this when its TUN takes GSO writes (io/gro.py): the compiled receive
        # then joins TCP segments into write units as it opens them, and out.packets may hold
        # such units (lists) beside packets. Off, out.packets holds packets only.
        self.tcp_units = False
        # The same for the segments' TAPs (every one takes GSO writes and joins what it is
        # given unvouched: WireGuard authenticated it): out.frames may then hold units too.
        self.frame_units = False
        # And when the TUN and every TAP took USO: UDP datagrams are joined into USO writes.
        self.uso_units = False
        self.peers: dict[bytes, Peer] = {}
        self.allowed: AllowedIPs[Peer] = AllowedIPs()
        # local index -> (peer, keypair); keypair None = our pending initiation.
        self.indices: dict[int, tuple[Peer, Keypair | None]] = {}
        self.drops: Counter[str] = Counter()
        # Not drops: multicast the kernel sends on the TUN by itself (allowedips.route_packets)
        self.unrouted: Counter[str] = Counter()
        self.segments: dict[int, Switch[Peer]] = {}
        self._heap: list[tuple[float, int, Peer]] = []
        self._seq = itertools.count()
        self._handshake_times: list[float] = []
        self._under_load_until = float("-inf")
        self._buckets: dict[bytes, tuple[float, float]] = {}  # src prefix -> (tokens, last)
        self._wide: dict[bytes, tuple[float, float]] = {}  # the wider prefixes, when full
        self._buckets_pruned = float("-inf")
        self._trusted: dict[bytes, float] = {}  # source (ip+port) -> last handshake completed
        # Set (before any handshake) when worker processes encrypt too: every new keypair then
        # takes a shared counter slot (tunnelpy/workers/counters.py).
        self.counters: CounterBank | None = None
        self.set_private_key(private_key)

    # ---------------------------------------------------------------- configuration

    def set_private_key(self, private_key: bytes) -> None:
        """Our identity; b"" means none yet (``tunnelpyd IFNAME`` starts so, as wireguard-go
        does, until ``wg set … private-key``): no handshake is sent or answered without one."""
        self.private_key = private_key
        self.public_key = public_key(private_key) if private_key else b""
        self.cookie_checker = CookieChecker(self.public_key, self.rng)
        # A new identity invalidates every session: the peers would not recognise us.
        for peer in self.peers.values():
            self._clear_sessions(peer)

    def add_peer(
        self,
        public_key: bytes,
        *,
        name: str | None = None,
        preshared_key: bytes | None = None,
        endpoint: Addr | None = None,
        allowed_ips: Iterable[NetworkLike] = (),
        persistent_keepalive: int = 0,
        now: float | None = None,
    ) -> Peer:
        if public_key in self.peers:
            raise ValueError("peer already exists")
        peer = Peer(
            public_key,
            name=name or _short(public_key),
            preshared_key=preshared_key,
            endpoint=endpoint,
            persistent_keepalive=persistent_keepalive,
        )
        self.peers[public_key] = peer
        self.allowed.insert_all(allowed_ips, peer)
        if persistent_keepalive and now is not None:
            # wg sends a keepalive at once when a persistent keepalive is configured, so a peer
            # behind NAT becomes reachable without waiting for traffic.
            peer.persistent_at = now
            self._schedule(peer)
        return peer

    def update_peer(
        self,
        public_key: bytes,
        *,
        name: str | Unset = UNSET,
        preshared_key: bytes | None | Unset = UNSET,
        endpoint: Addr | None | Unset = UNSET,
        allowed_ips: Iterable[NetworkLike] | Unset = UNSET,
        add_allowed_ips: Iterable[NetworkLike] = (),
        persistent_keepalive: int | Unset = UNSET,
        now: float,
    ) -> Peer | None:
        """Change a peer in place; its sessions survive. A keyword left UNSET is unchanged;
        None is a value: ``preshared_key=None`` means none (all zeros, as wg), ``endpoint=None``
        means no endpoint. ``allowed_ips`` replaces the peer's networks, ``add_allowed_ips``
        adds to them (after any replacement), as ``wg set``'s replace-allowed-ips does.
        ``persistent_keepalive`` 0 turns it off. Returns the peer, None when there is none."""
        peer = self.peers.get(public_key)
        if peer is None:
            return None
        if not isinstance(name, Unset):
            peer.name = name
        if not isinstance(preshared_key, Unset):
            peer.preshared_key = preshared_key or bytes(32)
        if not isinstance(endpoint, Unset):
            # A configured endpoint starts without a sticky source (wireguard-go: ClearSrc):
            # the kernel chooses until an authenticated datagram arrives.
            peer.endpoint = endpoint
            peer.src = None
            peer.heard = None
            peer.dest_for = None
        if not isinstance(allowed_ips, Unset):
            self.set_allowed_ips(peer, allowed_ips)
        self.allowed.insert_all(add_allowed_ips, peer)
        if not isinstance(persistent_keepalive, Unset):
            self.set_persistent_keepalive(peer, persistent_keepalive, now)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self.allowed.remove_value(peer)
        self._clear_sessions(peer)
        for seg in self.segments.values():
            seg.forget_peer(peer)
        peer.removed = True

    def set_allowed_ips(self, peer: Peer, networks: Iterable[NetworkLike]) -> None:
        self.allowed.replace(networks, peer)

    def set_persistent_keepalive(self, peer: Peer, interval: int, now: float) -> None:
        was = peer.persistent_keepalive
        peer.persistent_keepalive = interval
        if interval and not was:
            peer.persistent_at = now
            self._schedule(peer)
        elif not interval:
            peer.persistent_at = None

    def set_mtu(self, mtu: int) -> None:
        """The TUN MTU: IP packets are padded up to a multiple of 16 below it."""
        self.mtu = mtu

    def set_counter_bank(self, bank: CounterBank | None) -> None:
        """Worker processes encrypt too: every keypair made from now on takes a slot of `bank`
        for its send counter (set it before any handshake; None: counters stay local)."""
        self.counters = bank

    def add_segment(
        self,
        vni: int,
        peers: Iterable[Peer] | None = None,
        *,
        hub: bool = False,
        aging: float = DEFAULT_AGING,
        max_fdb: int = DEFAULT_MAX_ENTRIES,
        max_frame: int = DEFAULT_MAX_FRAME,
        static: Iterable[tuple[bytes, Peer]] = (),
        allowed_macs: Iterable[tuple[bytes, int, Peer]] = (),
        max_per_peer: int | None = None,
        move_hold: float = DEFAULT_MOVE_HOLD,
    ) -> Switch[Peer]:
        """An L2 segment over the sessions of `peers` (None: every peer, also those added
        later), replacing any segment of that VNI. A hub relays floods too: its members are
        authenticated, so a flood it multiplies came from a peer holding a key."""
        seg = Switch(
            vni, peers, self.peers, hub=hub, aging=aging, max_fdb=max_fdb, max_frame=max_frame,
            static=static, allowed_macs=allowed_macs, max_per_peer=max_per_peer,
            move_hold=move_hold,
        )  # fmt: skip
        self.segments[vni] = seg
        return seg

    def remove_segment(self, vni: int) -> None:
        self.segments.pop(vni, None)

    # ---------------------------------------------------------------- timers

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            t, _, peer = heap[0]
            if peer.removed or peer.scheduled_at != t:
                heapq.heappop(heap)  # superseded entry
                continue
            return t
        return None

    def _schedule(self, peer: Peer) -> None:
        t = peer.earliest_deadline()
        if t is None:
            return
        if peer.scheduled_at is None or t < peer.scheduled_at:
            peer.scheduled_at = t
            heapq.heappush(self._heap, (t, next(self._seq), peer))

    def on_timer(self, now: float) -> Output:
        out = Output()
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, peer = heapq.heappop(heap)
            if peer.removed or peer.scheduled_at != t:
                continue
            peer.scheduled_at = None
            self._fire_timers(peer, now, out)
            self._schedule(peer)
        return out

    def _jitter(self) -> float:
        return int.from_bytes(self.rng(4), "little") / 2**32 * REKEY_TIMEOUT_JITTER_MAX

    def _fire_timers(self, peer: Peer, now: float, out: Output) -> None:
        if peer.retransmit_at is not None and peer.retransmit_at <= now:
            peer.retransmit_at = None
            if peer.handshake_attempts > MAX_TIMER_HANDSHAKES:
                # Gave up after REKEY_ATTEMPT_TIME: drop what waited and stop keepalives.
                out.events.append(
                    HandshakeFailed(peer.public_key, peer.name, peer.handshake_attempts + 1)
                )
                peer.send_keepalive_at = None
                peer.staged.clear()
                self._drop_pending(peer)
                if peer.zero_keys_at is None:
                    peer.zero_keys_at = now + REJECT_AFTER_TIME * 3
            else:
                peer.handshake_attempts += 1
                if peer.handshake_attempts % 3 == 0:
                    out.events.append(
                        ResolveEndpoint(peer.public_key, peer.name, "no handshake response")
                    )
                self._send_initiation(peer, now, out, retry=True)
        if peer.send_keepalive_at is not None and peer.send_keepalive_at <= now:
            peer.send_keepalive_at = None
            self._send_keepalive(peer, now, out)
            if peer.need_another_keepalive:
                peer.need_another_keepalive = False
                peer.send_keepalive_at = now + KEEPALIVE_TIMEOUT
        if peer.new_handshake_at is not None and peer.new_handshake_at <= now:
            peer.new_handshake_at = None
            # We sent data and heard nothing back: the path or the peer changed.
            out.events.append(ResolveEndpoint(peer.public_key, peer.name, "peer went quiet"))
            self._send_initiation(peer, now, out, retry=False)
        if peer.zero_keys_at is not None and peer.zero_keys_at <= now:
            peer.zero_keys_at = None
            self._clear_sessions(peer)
        if peer.persistent_at is not None and peer.persistent_at <= now:
            peer.persistent_at = None
            if peer.persistent_keepalive:
                self._send_keepalive(peer, now, out)

    # Timer events, named after wireguard-go's timers.go so the two can be read side by side.

    def _t_data_sent(self, peer: Peer, now: float) -> None:
        if peer.new_handshake_at is None:
            peer.new_handshake_at = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter()

    def _t_data_received(self, peer: Peer, now: float) -> None:
        if peer.send_keepalive_at is None:
            peer.send_keepalive_at = now + KEEPALIVE_TIMEOUT
        else:
            peer.need_another_keepalive = True

    def _t_authenticated_sent(self, peer: Peer, now: float) -> None:
        peer.send_keepalive_at = None
        self._t_traversal(peer, now)

    def _t_authenticated_received(self, peer: Peer, now: float) -> None:
        peer.new_handshake_at = None
        peer.last_received = now
        self._t_traversal(peer, now)

    def _t_traversal(self, peer: Peer, now: float) -> None:
        if peer.persistent_keepalive:
            peer.persistent_at = now + peer.persistent_keepalive

    def _t_handshake_complete(self, peer: Peer, now: float) -> None:
        peer.retransmit_at = None
        peer.handshake_attempts = 0
        peer.last_handshake = now
        peer.last_handshake_wall = self.wall()
        peer.stats.handshakes += 1

    def _t_session_derived(self, peer: Peer, now: float) -> None:
        peer.zero_keys_at = now + REJECT_AFTER_TIME * 3

    # ---------------------------------------------------------------- outbound

    def from_tunnel(self, packets: Iterable[bytes], now: float) -> Output:
        out = Output()
        by_peer = route_packets(packets, self.allowed, self.drops, self.unrouted)
        for peer, pkts in by_peer.items():
            self.send_to_peer(peer, pkts, now, out)
        for peer in by_peer:
            self._schedule(peer)
        return out

    def from_segment(self, vni: int, frames: Iterable[bytes], now: float) -> Output:
        """Ethernet frames read from a segment's TAP: switch them to peers by the FDB."""
        out = Output()
        seg = self.segments.get(vni)
        if seg is None:
            self.drops[Drop.UNKNOWN_VNI] += 1
            return out
        by_peer: dict[Peer, list[bytes]] = {}
        # The frames as they are: the segment's header goes before each as it is sealed.
        for targets, payloads in seg.egress(frames, now, self.drops, headed=False):
            for p in targets:
                bucket = by_peer.get(p)
                if bucket is None:
                    by_peer[p] = payloads[:]  # (a copy: a flood shares the run's list)
                else:
                    bucket.extend(payloads)
        for peer, payloads in by_peer.items():
            self.send_to_peer(peer, payloads, now, out, seg.header)
            self._schedule(peer)
        return out

    def send_to_peer(
        self, peer: Peer, payloads: list[bytes], now: float, out: Output, prefix: bytes = b""
    ) -> None:
        """Encrypt payloads (IP packets, or L2 plaintexts) for one peer, or stage them.
        `prefix`: each plaintext is prefix ‖ payload (a segment's header and a frame)."""
        kp = peer.current
        if kp is None or not kp.usable_for_sending(now) or peer.endpoint is None:
            for p in payloads:
                if len(peer.staged) == peer.staged.maxlen:
                    self.drops[Drop.STAGED_OVERFLOW] += 1
                    peer.count_drop(Drop.STAGED_OVERFLOW)
                peer.staged.append(prefix + p if prefix else p)
            if peer.endpoint is None:
                self.drops[Drop.NO_ENDPOINT] += 1
                peer.count_drop(Drop.NO_ENDPOINT)
                return
            self._send_initiation(peer, now, out, retry=False)
            return
        self._encrypt_batch(peer, kp, payloads, now, out, prefix)
        # keepKeyFreshSending: the initiator rekeys an old or much-used session before it expires.
        if kp.is_initiator and (
            kp.send_counter > REKEY_AFTER_MESSAGES or now - kp.created > REKEY_AFTER_TIME
        ):
            self._send_initiation(peer, now, out, retry=False)

    def _encrypt_batch(
        self,
        peer: Peer,
        kp: Keypair,
        payloads: list[bytes],
        now: float,
        out: Output,
        prefix: bytes = b"",
    ) -> None:
        n = len(payloads)
        if kp.ident:
            # Workers encrypt on this keypair too: reserve the batch's counters in the shared slot.
            counter = self.counters.reserve(kp.slot, kp.ident, n)  # type: ignore[union-attr]
            if counter is None:  # the slot was reused: this keypair is long retired
                self._drop(peer, Drop.STALE_KEYPAIR)
                return
        else:
            counter = kp.send_counter
        datagrams, sent, sealed = seal(
            kp.sealer, kp.send.encrypt, kp.remote_index, counter, payloads, self.mtu, prefix
        )
        # Never reuse a nonce: past REJECT_AFTER_MESSAGES the batch was cut (seal), and the
        # keypair is done for sending, which forces a rekey.
        counter = min(counter + n, REJECT_AFTER_MESSAGES)
        if counter > kp.send_counter:
            kp.send_counter = counter
        addr = peer.endpoint
        assert addr is not None
        dest = peer.dest
        if peer.dest_for is not addr:  # (a new endpoint or source: roamed, resolved or set)
            dest = peer.dest = Dest(addr[0], addr[1], 0, peer.src)
            peer.dest_for = addr
        add_datagrams(out.datagrams, dest, datagrams)
        peer.stats.tx_bytes += sent
        peer.stats.tx_packets += sealed
        if any(payloads):
            self._t_data_sent(peer, now)
        self._t_authenticated_sent(peer, now)

    # ---------------------------------------------------------------- worker reports

    def note_worker_sent(
        self, peer: Peer, tx_bytes: int, tx_packets: int, data: bool, now: float
    ) -> None:
        """A worker process sent on `peer`'s session: count it and run the send-side timers
        (the passive keepalive is not needed, the rekey-if-no-reply timer starts)."""
        if peer.removed:
            return
        peer.stats.tx_bytes += tx_bytes
        peer.stats.tx_packets += tx_packets
        if data:
            self._t_data_sent(peer, now)
        self._t_authenticated_sent(peer, now)
        self._schedule(peer)

    def send_packets(self, peer: Peer, packets: list[bytes], now: float) -> Output:
        """Packets a worker routed to `peer` but could not encrypt (no session yet, or a retired
        one): sent, or staged behind a handshake, exactly as if read from our own queue."""
        out = Output()
        if not peer.removed:
            self.send_to_peer(peer, packets, now, out)
            self._schedule(peer)
        return out

    def send_staged(self, public_key: bytes, packets: list[bytes], now: float) -> Output:
        """A worker's packets for the peer `public_key` (see send_packets), routed again on
        our own table first: a worker's table may lag, and a worker must not get arbitrary
        plaintext encrypted to a peer of its choosing. What does not route there is dropped
        as tun_no_route."""
        peer = self.peers.get(public_key)
        routed = route_packets(packets, self.allowed, self.drops, self.unrouted)
        mine = routed.pop(peer, None) if peer is not None else None
        if routed:
            self.drops[Drop.TUN_NO_ROUTE] += sum(map(len, routed.values()))
        if peer is None or not mine:
            return Output()
        return self.send_packets(peer, mine, now)

    def count_drops(self, counts: Mapping[str, int]) -> None:
        """Drops counted in another process (a worker's report), merged into ours."""
        self.drops.update(counts)

    def rekey_if_due(self, peer: Peer, now: float, out: Output) -> None:
        """keepKeyFreshSending on a worker's behalf: the initiator renews an old or much-used
        session (the worker cannot start handshakes; one initiation per REKEY_TIMEOUT)."""
        kp = peer.current
        if peer.removed or kp is None or not kp.is_initiator:
            return
        counter = kp.send_counter
        if kp.ident and self.counters is not None:
            counter = self.counters.peek(kp.slot, kp.ident) or counter
        if counter > REKEY_AFTER_MESSAGES or now - kp.created > REKEY_AFTER_TIME:
            self._send_initiation(peer, now, out, retry=False)

    def _send_keepalive(self, peer: Peer, now: float, out: Output) -> None:
        if peer.staged:
            self._flush_staged(peer, now, out)
            return
        self.send_to_peer(peer, [b""], now, out)

    def _flush_staged(self, peer: Peer, now: float, out: Output) -> None:
        staged = list(peer.staged)
        peer.staged.clear()
        self.send_to_peer(peer, staged, now, out)

    def _new_index(self, peer: Peer, kp: Keypair | None) -> int:
        while True:
            idx = int.from_bytes(self.rng(4), "little")
            if idx not in self.indices:
                self.indices[idx] = (peer, kp)
                return idx

    def _drop_pending(self, peer: Peer) -> None:
        if peer.handshake is not None:
            self.indices.pop(peer.handshake.sender_index, None)
            peer.handshake = None

    def _send_initiation(self, peer: Peer, now: float, out: Output, *, retry: bool) -> None:
        if not retry:
            peer.handshake_attempts = 0
        if peer.endpoint is None or not self.private_key:
            return
        if now - peer.last_sent_handshake < REKEY_TIMEOUT and not retry:
            return  # one initiation per REKEY_TIMEOUT unless the retransmit timer asks
        peer.last_sent_handshake = now
        self._drop_pending(peer)
        index = self._new_index(peer, None)
        try:
            msg, state = hs.create_initiation(
                self.private_key,
                self.public_key,
                peer.public_key,
                peer.preshared_key,
                index,
                generate_private_key(self.rng),
                tai64n(self.wall()),
            )
        except ValueError:
            # A low-order peer key (refused where keys enter, but never let one peer's bad key
            # raise out of a batch: the other peers' output and the timers must go on).
            self.indices.pop(index, None)
            peer.staged.clear()
            self.drops[Drop.BAD_PEER_KEY] += 1
            return
        peer.handshake = state
        msg = peer.cookie_gen.add_macs(msg, now)
        out.send(self._dest(peer), msg)
        peer.stats.tx_bytes += len(msg)
        out.events.append(HandshakeSent(peer.public_key, peer.name, retry))
        self._t_authenticated_sent(peer, now)
        peer.retransmit_at = now + REKEY_TIMEOUT + self._jitter()
        self._schedule(peer)

    # ---------------------------------------------------------------- inbound

    def from_network(self, datagrams: Iterable[tuple[bytes, Origin]], now: float) -> Output:
        out = Output()
        touched: set[Peer] = set()
        # Fast path for a run of transport messages on one session from one address (a GSO/GRO
        # burst): once the first of them went through _receive_transport, which did the
        # per-peer work (promotion, roaming, timers, rekey checks) for this `now`, the rest only
        # need decryption and the replay window. Their plaintexts wait in `plains` and are
        # handed to _deliver together, as the first one's: before anything else is processed
        # (so the results are those of one message at a time) and at the end. A keypair with
        # the compiled AEAD (aead.py) takes the rest of the run in one call instead
        # (_open_run): the same step, the same checks and drops.
        items = datagrams if type(datagrams) is list else list(datagrams)
        run_index = -1
        run_addr: Origin | None = None
        run_peer: Peer | None = None
        run_kp: Keypair | None = None
        run_decrypt: Callable[[bytes, bytes, bytes | None], bytes] | None = None
        run_accept: Callable[[int], bool] | None = None
        run_packets = run_bytes = 0
        known_src: bytes | None = None  # (compiled runs) the inner source last routed to run_peer
        # (compiled runs) the L2 header and bucket _deliver last found for run_peer's frames
        l2: L2Known = _NO_L2
        plains: list[bytes] = []
        unpack = _TRANSPORT_HEADER.unpack_from
        nonce = _NONCE.pack
        count = len(items)
        i = 0
        while i < count:
            data, addr = items[i]
            i += 1
            n = len(data)
            if n >= 32:
                kind4, receiver, counter = unpack(data)
                if kind4 == MSG_TRANSPORT and receiver == run_index and addr == run_addr:
                    assert run_peer is not None and run_kp is not None
                    if run_kp.opener is not None:
                        if plains:  # (the run's first plaintext goes first)
                            l2 = self._deliver(run_peer, plains, now, out, l2)
                            plains = []
                        j, accepted, nbytes, known_src, l2 = self._open_run(
                            run_peer, run_kp, items, i - 1, addr, known_src, l2, now, out
                        )
                        run_packets += accepted
                        run_bytes += nbytes
                        if j >= i:
                            i = j
                            continue
                        # (not a tuple of bytes: the full path below takes this one)
                    else:
                        assert run_decrypt and run_accept
                        if counter >= REJECT_AFTER_MESSAGES:
                            self._drop(run_peer, Drop.EXPIRED_SESSION)
                            continue
                        try:
                            plain = run_decrypt(nonce(0, counter), data[16:], None)
                        except Exception:  # InvalidTag
                            self._drop(run_peer, Drop.BAD_AUTH)
                            continue
                        if not run_accept(counter):
                            self._drop(run_peer, Drop.REPLAY)
                            continue
                        run_packets += 1
                        run_bytes += n
                        if plain:  # (empty: a keepalive)
                            plains.append(plain)
                        continue
            if plains:
                assert run_peer is not None
                l2 = self._deliver(run_peer, plains, now, out, l2)
                plains = []
            if n < 4 or data[1:4] != b"\x00\x00\x00":
                self.drops[Drop.BAD_HEADER] += 1
                continue
            kind = data[0]
            if kind == MSG_TRANSPORT:
                if n < TRANSPORT_HEADER_SIZE + 16:
                    self.drops[Drop.TOO_SHORT] += 1
                    continue
                received = self._receive_transport(data, addr, now, out, touched)
                if received is not None:
                    if run_peer is not None:
                        self._run_received(run_peer, run_packets, run_bytes)
                        run_packets = run_bytes = 0
                    peer, kp, plain = received
                    if peer is not run_peer:
                        known_src = None
                        l2 = _NO_L2
                    run_peer = peer
                    run_kp = kp
                    if plain:
                        plains.append(plain)
                    run_index = kp.local_index
                    run_addr = addr  # (the endpoint now: roaming happened in the slow path)
                    run_decrypt = kp.recv.decrypt
                    run_accept = kp.replay.accept
            elif kind == MSG_INITIATION:
                run_index = -1  # a handshake may retire keypairs: back to the full checks
                if n != INITIATION_SIZE:
                    self.drops[Drop.BAD_SIZE] += 1
                    continue
                self._receive_initiation(data, addr, now, out, touched)
            elif kind == MSG_RESPONSE:
                run_index = -1
                if n != RESPONSE_SIZE:
                    self.drops[Drop.BAD_SIZE] += 1
                    continue
                self._receive_response(data, addr, now, out, touched)
            elif kind == MSG_COOKIE_REPLY:
                if n != COOKIE_REPLY_SIZE:
                    self.drops[Drop.BAD_SIZE] += 1
                    continue
                self._receive_cookie(data, now)
            else:
                self.drops[Drop.BAD_TYPE] += 1
        if run_peer is not None:
            if plains:
                self._deliver(run_peer, plains, now, out, l2)
            self._run_received(run_peer, run_packets, run_bytes)
        for peer in touched:
            self._schedule(peer)
        return out

    def _open_run(
        self,
        peer: Peer,
        kp: Keypair,
        items: list[tuple[bytes, Origin]],
        i: int,
        addr: Origin,
        known_src: bytes | None,
        l2: L2Known,
        now: float,
        out: Output,
    ) -> tuple[int, int, int, bytes | None, L2Known]:
        """from_network's fast path with the compiled AEAD: items[i:] from `addr` on `kp`,
        opened, replay-checked and delivered (IP packets straight to out.packets, the inner
        source routed once per change; an L2 frame that starts like the last one _deliver
        wrote, as `l2` says, straight to that bucket, any other through _deliver, which ends
        the call so that the frames keep their order) in one call. Returns the next index, the
        messages accepted and their bytes, the inner source last routed and the L2 state."""
        window = kp.replay
        assert kp.opener is not None and isinstance(window, aead.Window)  # (made together)
        lookup = self.allowed.lookup
        rest: list[bytes] = []
        (j, accepted, nbytes, delivered, known_src,
         expired, bad_auth, replay, bad_inner, not_allowed) = kp.opener.open_run(
            items, i, kp.local_index, addr, window, REJECT_AFTER_MESSAGES,
            out.packets, rest, lambda src: lookup(src) is peer, known_src, self.tcp_units,
            l2[0], l2[1], self.frame_units, self.uso_units,
        )  # fmt: skip
        if expired or bad_auth or replay or bad_inner or not_allowed:
            for reason, k in (
                (Drop.EXPIRED_SESSION, expired), (Drop.BAD_AUTH, bad_auth),
                (Drop.REPLAY, replay), (Drop.BAD_INNER_PACKET, bad_inner),
                (Drop.NOT_ALLOWED_SOURCE, not_allowed),
            ):  # fmt: skip
                if k:
                    self.drops[reason] += k
                    peer.stats.drops[reason] = peer.stats.drops.get(reason, 0) + k
        if delivered:
            self._data_received(peer, now, delivered)
        if rest:
            l2 = self._deliver(peer, rest, now, out, l2)
        return j, accepted, nbytes, known_src, l2

    @staticmethod
    def _run_received(peer: Peer, packets: int, nbytes: int) -> None:
        """The counters of from_network's fast path, once per run instead of per packet."""
        peer.stats.rx_packets += packets
        peer.stats.rx_bytes += nbytes

    def _receive_transport(
        self, data: bytes, addr: Origin, now: float, out: Output, touched: set[Peer]
    ) -> tuple[Peer, Keypair, bytes] | None:
        """Receive one transport message: its peer, keypair and plaintext (to deliver), or None
        when it was dropped. More messages on that keypair from `addr` in this batch (same
        `now`) can then skip the per-peer work done here (see from_network)."""
        # The ciphertext goes to decrypt() as a bytes slice: copying 1.4 KB costs less than
        # making a memoryview and cryptography's buffer path for it (0.4 µs per datagram).
        _, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
        peer, kp = self.indices.get(receiver) or (None, None)
        if peer is None or kp is None:  # (kp None: the index of our pending initiation)
            self.drops[Drop.UNKNOWN_INDEX] += 1
            return None
        if now - kp.created >= REJECT_AFTER_TIME or counter >= REJECT_AFTER_MESSAGES:
            self._drop(peer, Drop.EXPIRED_SESSION)
            return None
        opener = kp.opener
        if opener is not None:
            got = opener.open(counter, data)
            if got is None:
                self._drop(peer, Drop.BAD_AUTH)
                return None
            plain = got
        else:
            try:
                plain = kp.recv.decrypt(_NONCE.pack(0, counter), data[16:], None)
            except Exception:  # InvalidTag: forged, corrupted or for a key we no longer hold
                self._drop(peer, Drop.BAD_AUTH)
                return None
        if not kp.replay.accept(counter):
            self._drop(peer, Drop.REPLAY)
            return None
        touched.add(peer)
        peer.stats.rx_bytes += len(data)
        peer.stats.rx_packets += 1
        if kp is peer.next:
            # The initiator used the new session: promote it (ReceivedWithKeypair).
            peer.previous = peer.current
            peer.current = kp
            peer.next = None
            # The responder's handshake is complete only now (wireguard-go receive.go).
            self._t_handshake_complete(peer, now)
            self._trust(addr, now)
            self._claim_slot(kp, now)  # confirmed: now it may send, workers too
            out.events.append(HandshakeComplete(peer.public_key, peer.name, "responder"))
            if peer.staged:
                self._flush_staged(peer, now, out)
        if addr != peer.heard:
            self._heard_from(peer, addr, out)
        if peer.last_received != now or peer.new_handshake_at is not None:
            # (Once per peer and batch: repeated with the same `now` it changes nothing.)
            self._t_authenticated_received(peer, now)
        # keepKeyFreshReceiving: the initiator renews a session about to be rejected.
        if (
            kp.is_initiator
            and peer.current is kp
            and now - kp.created > REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
            and peer.handshake is None
        ):
            self._send_initiation(peer, now, out, retry=False)
        return peer, kp, plain

    def _deliver(
        self, peer: Peer, plains: list[bytes], now: float, out: Output, l2: L2Known = _NO_L2
    ) -> L2Known:
        """Hand authenticated plaintexts from `peer` on: IP packets whose inner source routes
        back to `peer` (cryptokey routing inbound) to the TUN, L2 plaintexts to their segment.
        Called once per run of messages from one peer, so what the messages of a burst share
        is checked once: the inner source last found routed to `peer` (the segments of a TSO
        super-packet share it) costs a comparison instead of a table lookup, and a frame that
        starts (VXLAN header, destination and source MAC: 20 bytes) like the last one
        _deliver_frame wrote to a segment's TAP needs no segment, membership or FDB work.
        That holds for the whole batch (one `out`, one `now`): `l2` carries it from the call
        before for the same peer, and the state at the end is returned for the next."""
        lookup = self.allowed.lookup
        append = out.packets.append
        known_src: bytes | None = None
        l2_key: bytes | None = None
        l2_frames: list[bytes] = []
        key, frames = l2
        if key is not None and frames is not None:
            l2_key, l2_frames = key, frames
        data = 0  # plaintexts delivered here: each is one _t_data_received
        for plain in plains:
            n = len(plain)
            version = plain[0] >> 4
            if version == 4:
                if n < 20:
                    self._drop(peer, Drop.BAD_INNER_PACKET)
                    continue
                length = (plain[2] << 8) | plain[3]
                src = plain[12:16]
            elif version == 6:
                if n < 40:
                    self._drop(peer, Drop.BAD_INNER_PACKET)
                    continue
                length = 40 + ((plain[4] << 8) | plain[5])
                src = plain[8:24]
            elif plain[0] == FLAG_I:
                if n >= _L2_MIN and plain[:20] == l2_key:
                    l2_frames.append(plain[HEADER_LEN:])
                    data += 1
                else:
                    bucket = self._deliver_frame(peer, plain, now, out)
                    if bucket is not None:
                        l2_key = plain[:20]
                        l2_frames = bucket
                continue
            else:
                self._drop(peer, Drop.BAD_INNER_PACKET)
                continue
            if length > n or length < 20:
                self._drop(peer, Drop.BAD_INNER_PACKET)
                continue
            if src != known_src:
                if lookup(src) is not peer:
                    self._drop(peer, Drop.NOT_ALLOWED_SOURCE)
                    continue
                known_src = src
            append(plain if length == n else plain[:length])
            data += 1
        if data:
            self._data_received(peer, now, data)
        return (l2_key, l2_frames) if l2_key is not None else _NO_L2

    @staticmethod
    def _data_received(peer: Peer, now: float, data: int) -> None:
        """_t_data_received once per plaintext delivered (`data` of them): the first arms the
        passive keepalive if it is not armed, every further one asks for another."""
        if peer.send_keepalive_at is None:
            peer.send_keepalive_at = now + KEEPALIVE_TIMEOUT
            data -= 1
        if data:
            peer.need_another_keepalive = True

    def _deliver_frame(
        self, peer: Peer, plain: bytes, now: float, out: Output
    ) -> list[bytes] | None:
        """Hand an authenticated L2 plaintext to its segment's switch. Returns the segment's
        list of frames to write when the frame went there and nothing else could happen to a
        frame with the same header and source MAC from `peer` in this batch (a segment without
        hub relay): _deliver then appends such frames directly."""
        if len(plain) < _L2_MIN:
            self._drop(peer, Drop.BAD_INNER_FRAME)
            return None
        vni = int.from_bytes(plain[4:7], "big")
        seg = self.segments.get(vni)
        if seg is None:
            self._drop(peer, Drop.UNKNOWN_VNI)
            return None
        if not seg.has(peer):
            self._drop(peer, Drop.PEER_NOT_IN_SEGMENT)
            return None
        frame = plain[HEADER_LEN:]
        forward = seg.ingress(peer, frame, now)
        if isinstance(forward, Drop):
            self._drop(peer, forward)
            return None
        self._t_data_received(peer, now)
        relay, local = forward
        for p in relay:
            self.send_to_peer(p, [plain], now, out)
            self._schedule(p)
        if not local:
            return None
        bucket = out.write_frame(vni, frame)
        return None if seg.hub else bucket

    def _drop(self, peer: Peer, reason: Drop) -> None:
        self.drops[reason] += 1
        peer.count_drop(reason)

    def _under_load(self, now: float) -> bool:
        times = self._handshake_times
        times.append(now)
        if len(times) > self.under_load_threshold:
            # keep only the last second's worth
            cutoff = now - 1.0
            i = 0
            while i < len(times) and times[i] < cutoff:
                i += 1
            del times[:i]
            if len(times) > self.under_load_threshold:
                self._under_load_until = now + UNDER_LOAD_AFTER
                del times[: len(times) - self.under_load_threshold]
        return now < self._under_load_until

    def _check_macs(self, data: bytes, addr: Origin, sender: int, now: float, out: Output) -> bool:
        """mac1 always; under load, mac2 or answer with a cookie. True = go on."""
        if not self.cookie_checker.check_mac1(data):
            self.drops[Drop.BAD_MAC1] += 1
            return False
        if not self._under_load(now):
            return True
        src = addr_bytes(addr)
        if not self.cookie_checker.check_mac2(data, src, now):
            # (From the local address it was sent to, like every answer: see actions.py.)
            dest = Dest(addr[0], addr[1], 0, addr[2] if len(addr) == 3 else None)
            out.send(dest, self.cookie_checker.create_reply(data, sender, src, now))
            self.drops[Drop.COOKIE_SENT] += 1
            return False
        if data[0] == MSG_INITIATION and not self._ratelimit(src, now):
            self.drops[Drop.RATELIMITED] += 1
            return False
        return True

    def _claim_slot(self, kp: Keypair, now: float) -> None:
        """A confirmed keypair's shared send counter, when workers encrypt too (none free: it
        keeps a local counter and only this process sends on it)."""
        if self.counters is not None and not kp.ident:
            # (Before the keypair's first send: a slot's counter starts at 0.)
            claimed = self.counters.claim(now)
            if claimed is not None:
                kp.slot, kp.ident = claimed

    def _trust(self, addr: Addr | Origin, now: float) -> None:
        """A handshake completed with ``addr``: its next initiations skip the rate limit."""
        if len(self._trusted) >= TRUSTED_MAX:
            cutoff = now - TRUSTED_FOR
            self._trusted = {k: t for k, t in self._trusted.items() if t > cutoff}
            while len(self._trusted) >= TRUSTED_MAX:  # all recent: forget the oldest
                del self._trusted[next(iter(self._trusted))]
        src = addr_bytes(addr)
        self._trusted.pop(src, None)  # re-insert: insertion order is age order
        self._trusted[src] = now

    def _ratelimit(self, src: bytes, now: float) -> bool:
        """True if an initiation from ``src`` (packed ip + port) may go on to the DH."""
        seen = self._trusted.get(src)
        if seen is not None and now - seen < TRUSTED_FOR:
            return True
        ip = src[:-2]
        key = ip if len(ip) == 4 else ip[:8]  # IPv4 address, IPv6 /64
        table = self._buckets
        if key not in table and len(table) >= RATELIMIT_MAX_SOURCES:
            self._prune(now)
            if len(table) >= RATELIMIT_MAX_SOURCES:
                # Full of busy sources: share the wider prefix's bucket (then one for all).
                table = self._wide
                key = ip[:2] if len(ip) == 4 else ip[:4]
                if key not in table and len(table) >= RATELIMIT_MAX_SOURCES:
                    key = b""
        return self._take(table, key, now)

    def _prune(self, now: float) -> None:
        # Bounded memory and CPU under a many-source flood: forget buckets that have refilled,
        # at most once per refill time.
        refill = RATELIMIT_BURST / RATELIMIT_PER_SECOND
        if now - self._buckets_pruned >= refill:
            self._buckets_pruned = now
            cutoff = now - refill
            self._buckets = {k: v for k, v in self._buckets.items() if v[1] > cutoff}
            self._wide = {k: v for k, v in self._wide.items() if v[1] > cutoff}

    @staticmethod
    def _take(table: dict[bytes, tuple[float, float]], key: bytes, now: float) -> bool:
        tokens, last = table.get(key) or (RATELIMIT_BURST, now)
        tokens = min(RATELIMIT_BURST, tokens + (now - last) * RATELIMIT_PER_SECOND)
        if tokens < 1.0:
            table[key] = (tokens, now)
            return False
        table[key] = (tokens - 1.0, now)
        return True

    def _receive_initiation(
        self, data: bytes, addr: Origin, now: float, out: Output, touched: set[Peer]
    ) -> None:
        if not self.private_key:
            self.drops[Drop.NO_PRIVATE_KEY] += 1
            return
        sender = int.from_bytes(data[4:8], "little")
        if not self._check_macs(data, addr, sender, now, out):
            return
        consumed = hs.consume_initiation(self.private_key, self.public_key, data)
        if consumed is None:
            self.drops[Drop.BAD_INITIATION] += 1
            return
        peer = self.peers.get(consumed.remote_static)
        if peer is None:
            self.drops[Drop.UNKNOWN_PEER] += 1
            return
        if consumed.timestamp <= peer.last_timestamp:
            self._drop(peer, Drop.REPLAYED_INITIATION)
            return
        if now - peer.last_initiation_consumed < HANDSHAKE_INITIATION_RATE:
            self._drop(peer, Drop.INITIATION_FLOOD)
            return
        peer.last_timestamp = consumed.timestamp
        peer.last_initiation_consumed = now
        index = self._new_index(peer, None)
        msg, send_key, recv_key = hs.create_response(
            consumed, peer.preshared_key, index, generate_private_key(self.rng)
        )
        kp = Keypair(send_key, recv_key, index, consumed.sender_index, now, is_initiator=False)
        # (No counter slot yet: it is claimed when the initiator confirms the keypair, so a
        # flood of initiations cannot wrap the slots of live keypairs; workers/counters.py.)
        self.indices[index] = (peer, kp)
        # BeginSymmetricSession, responder side: the new keypair waits in `next`.
        for old in (peer.next, peer.previous):
            if old is not None:
                self.indices.pop(old.local_index, None)
        peer.next = kp
        peer.previous = None
        if addr != peer.heard:
            self._heard_from(peer, addr, out, announce_first=False)
        msg = peer.cookie_gen.add_macs(msg, now)
        out.send(self._dest(peer), msg)
        peer.stats.rx_bytes += len(data)
        peer.stats.tx_bytes += len(msg)
        touched.add(peer)
        self._t_authenticated_received(peer, now)
        self._t_authenticated_sent(peer, now)
        self._t_session_derived(peer, now)

    def _receive_response(
        self, data: bytes, addr: Origin, now: float, out: Output, touched: set[Peer]
    ) -> None:
        sender = int.from_bytes(data[4:8], "little")
        if not self._check_macs(data, addr, sender, now, out):
            return
        receiver = int.from_bytes(data[8:12], "little")
        entry = self.indices.get(receiver)
        if entry is None or entry[1] is not None:
            self.drops[Drop.UNKNOWN_INDEX] += 1
            return
        peer = entry[0]
        state = peer.handshake
        if state is None or state.sender_index != receiver:
            self.drops[Drop.UNKNOWN_INDEX] += 1
            return
        result = hs.consume_response(state, self.private_key, data)
        if result is None:
            self._drop(peer, Drop.BAD_RESPONSE)
            return
        remote_index, send_key, recv_key = result
        peer.handshake = None
        kp = Keypair(send_key, recv_key, receiver, remote_index, now, is_initiator=True)
        self._claim_slot(kp, now)
        self.indices[receiver] = (peer, kp)
        # BeginSymmetricSession, initiator side: the new keypair is current at once.
        if peer.next is not None:
            if peer.previous is not None:
                self.indices.pop(peer.previous.local_index, None)
            if peer.current is not None:
                self.indices.pop(peer.current.local_index, None)
            peer.previous = peer.next
            peer.next = None
        else:
            if peer.previous is not None:
                self.indices.pop(peer.previous.local_index, None)
            peer.previous = peer.current
        peer.current = kp
        if addr != peer.heard:
            self._heard_from(peer, addr, out)
        peer.stats.rx_bytes += len(data)
        touched.add(peer)
        self._t_authenticated_received(peer, now)
        self._t_handshake_complete(peer, now)
        self._t_session_derived(peer, now)
        self._trust(addr, now)
        out.events.append(HandshakeComplete(peer.public_key, peer.name, "initiator"))
        # Confirm the session to the responder: staged data if we have it, else a keepalive.
        self._send_keepalive(peer, now, out)

    def _receive_cookie(self, data: bytes, now: float) -> None:
        receiver = int.from_bytes(data[4:8], "little")
        entry = self.indices.get(receiver)
        if entry is None:
            self.drops[Drop.UNKNOWN_INDEX] += 1
            return
        peer = entry[0]
        if not peer.cookie_gen.consume_reply(data, now):
            self._drop(peer, Drop.BAD_COOKIE)
            return
        self.drops[Drop.COOKIE_RECEIVED] += 1  # counted, not an error: the retry will carry mac2

    # ---------------------------------------------------------------- helpers

    def _heard_from(
        self, peer: Peer, origin: Origin, out: Output, *, announce_first: bool = True
    ) -> None:
        """An authenticated datagram from `peer` came from `origin`: roaming moves the endpoint
        to the sender's address, and the local address it arrived at becomes the peer's sticky
        source. Only authenticated datagrams get here, so a forged or replayed one moves
        neither. `announce_first`: a Roamed event also when the peer had no endpoint."""
        if len(origin) == 3:
            endpoint: Addr = (origin[0], origin[1])
            src = origin[2]
        else:
            endpoint, src = origin, None
        old = peer.endpoint
        if old != endpoint:
            if old is not None or announce_first:
                out.events.append(Roamed(peer.public_key, peer.name, old, endpoint))
            peer.endpoint = endpoint
        if src != peer.src:
            out.events.append(SourceChanged(peer.public_key, peer.name, peer.src, src))
            peer.src = src
            peer.dest_for = None
        peer.heard = origin

    def _dest(self, peer: Peer) -> Dest:
        """The Output.datagrams key for `peer`, which has an endpoint (made once per endpoint
        and source, see Peer.dest)."""
        addr = peer.endpoint
        assert addr is not None
        if peer.dest_for is not addr:
            peer.dest = Dest(addr[0], addr[1], 0, peer.src)
            peer.dest_for = addr
        return peer.dest

    def forget_sources(self, srcs: Iterable[Src]) -> Output:
        """The socket could not send from these local addresses (removed from the host, or
        never usable): the peers that sent from one go back to the kernel's choice until an
        authenticated datagram arrives at a local address again. The socket already resent
        what failed without the source; this only stops the next sends from trying it."""
        lost = set(srcs)
        out = Output()
        if not lost:
            return out
        for peer in self.peers.values():
            if peer.src is not None and peer.src in lost:
                out.events.append(SourceChanged(peer.public_key, peer.name, peer.src, None))
                peer.src = None
                peer.heard = None
                peer.dest_for = None
        return out

    def _clear_sessions(self, peer: Peer) -> None:
        for kp in peer.keypairs():
            self.indices.pop(kp.local_index, None)
        peer.previous = peer.current = peer.next = None
        self._drop_pending(peer)


def _short(key: bytes) -> str:
    import base64

    return base64.b64encode(key).decode()[:8]
