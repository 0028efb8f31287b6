"""What the daemon and its worker processes tell each other, and the bytes that carry it.

Theory of operation
-------------------
The daemon mirrors to each worker what it needs to encrypt (:class:`Peers`, :class:`Endpoint`,
:class:`Keypair`; an endpoint travels with the peer's sticky source, the local address to send
from, see protocol/actions.py) and ends it (:class:`Stop`); a worker answers with what it sent and dropped
(:class:`Report`), packets it could not send (:class:`Stage`) and sessions due for renewal
(:class:`Rekey`). The control channel (channel.py) carries each message as one byte string.

Messages are plain slotted dataclasses (not frozen: a frozen one costs three times as much to
make, and a report's rows are made per batch). The codec is fixed: one tag byte, then fields in a layout defined here with :mod:`struct`
(little-endian; keys are 32 raw bytes, prefixes are packed integers and lengths). There is no
self-describing format to interpret, so decoding can produce nothing but these types — unlike
pickle, which would let whoever writes the bytes run code in the reader. That matters in one
direction above all: workers run with fewer privileges than the daemon, and a compromised
worker must not gain the daemon's. So :func:`decode_from_worker` treats its input as hostile:
it accepts only the three worker messages, checks every count against the bytes actually
present before reading or allocating, every range (32-byte keys, drop reasons from a fixed
table, 0/1 flags, packet sizes), and that nothing trails. Whatever is wrong raises
:class:`MessageError`, the only exception decoding raises; the caller closes the channel and
treats the worker as failed. :func:`decode_from_daemon` applies the same checks to the other
direction.

Speed: a :class:`Report` goes once per worker batch, so its rows are fixed-size structs; a
:class:`Peers` message may carry 10^5 prefixes, so its prefixes travel as arrays (addresses
packed together, then their lengths) converted with one ``struct`` call per family.
"""

from __future__ import annotations

import ipaddress
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ..protocol.actions import Src
from ..protocol.peer import Addr, Network

KEY_LEN = 32
MAX_PACKET = 65575  # an IPv6 packet of the largest payload length (no jumbograms)
MAX_HOST = 255  # an endpoint's host: an address literal, perhaps with a %scope
MAX_SRC = 45  # a source's host: an address literal (the longest IPv6 text form), no scope
MAX_IFINDEX = (1 << 31) - 1  # interface indexes are positive C ints

# The drop reasons a worker can report, by index on the wire (a worker cannot invent labels
# for the daemon's metrics). The values are the engine's drop reason names.
WORKER_DROPS = ("tun_not_ip", "tun_no_route", "tun_read_error", "udp_send_error",
                "tun_write_error")  # fmt: skip
_DROP_INDEX = {reason: i for i, reason in enumerate(WORKER_DROPS)}


class MessageError(ValueError):
    """Bytes that are not a well-formed message of the expected direction."""


# ---------------------------------------------------------------- daemon -> worker


@dataclass(slots=True)
class PeerRoutes:
    """One peer as a worker needs it: where to send, and the prefixes routed to it."""

    key: bytes
    endpoint: Addr | None
    networks: list[Network]
    src: Src | None = None  # the sticky source: the local address to send from


@dataclass(slots=True)
class Peers:
    """The daemon's whole peer list and routing table (sent when either changed)."""

    peers: list[PeerRoutes]


@dataclass(slots=True)
class Endpoint:
    key: bytes
    endpoint: Addr | None
    src: Src | None = None  # as in PeerRoutes


@dataclass(slots=True)
class KeypairMaterial:
    """The sending half of a peer's current keypair. ``age`` (seconds) rather than a time:
    the two processes' clocks share no origin."""

    send_key: bytes
    remote_index: int
    slot: int  # in the shared counter bank (counters.py)
    ident: int  # the slot's owner; a newer keypair in the slot retires this one
    age: float
    is_initiator: bool


@dataclass(slots=True)
class Keypair:
    """``material`` None: the peer has no session to send on."""

    key: bytes
    material: KeypairMaterial | None


@dataclass(slots=True)
class Stop:
    pass


# ---------------------------------------------------------------- worker -> daemon


@dataclass(slots=True)
class PeerSent:
    key: bytes
    tx_bytes: int
    tx_packets: int
    data_sent: bool  # (False: only keepalives, which a worker never sends today)


@dataclass(slots=True)
class Report:
    """What was sent per peer and dropped by reason since the last report."""

    sent: list[PeerSent]
    drops: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Stage:
    """Packets routed to ``key`` that the worker could not encrypt (no usable session)."""

    key: bytes
    packets: list[bytes]


@dataclass(slots=True)
class Rekey:
    keys: list[bytes]


DaemonMessage = Peers | Endpoint | Keypair | Stop
WorkerMessage = Report | Stage | Rekey
Message = DaemonMessage | WorkerMessage

# ---------------------------------------------------------------- layout

_PEERS, _ENDPOINT, _KEYPAIR, _STOP = 1, 2, 3, 4
_REPORT, _STAGE, _REKEY = 16, 17, 18

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_COUNTS = struct.Struct("<II")  # IPv4 and IPv6 prefixes of one peer
_KEYPAIR_HEAD = struct.Struct("<B32sB")  # tag, peer key, 1 = material follows
_MATERIAL = struct.Struct("<32sIIQdB")
_SENT = struct.Struct("<32sQQB")
_DROP = struct.Struct("<BQ")
_STAGE_HEAD = struct.Struct("<B32sI")
_U64_MAX = (1 << 64) - 1


def _key(key: bytes) -> bytes:
    if type(key) is not bytes or len(key) != KEY_LEN:
        raise ValueError(f"a peer key is {KEY_LEN} bytes, not {key!r}")
    return key


def _flag(b: int) -> bool:
    if b > 1:
        raise MessageError(f"flag byte {b}")
    return b == 1


# ---------------------------------------------------------------- encoding


def _put_endpoint(out: list[bytes], endpoint: Addr | None) -> None:
    if endpoint is None:
        out.append(b"\x00")
        return
    host = endpoint[0].encode("ascii")
    if not 0 < len(host) <= MAX_HOST:
        raise ValueError(f"endpoint host {endpoint[0]!r}")
    out += (_U8.pack(len(host)), host, _U16.pack(endpoint[1]))


def _put_src(out: list[bytes], src: Src | None) -> None:
    """A sticky source: host length (0: none), host, 32-bit interface index."""
    if src is None:
        out.append(b"\x00")
        return
    host = src[0].encode("ascii")
    if not 0 < len(host) <= MAX_SRC or not 0 <= src[1] <= MAX_IFINDEX:
        raise ValueError(f"source {src!r}")
    out += (_U8.pack(len(host)), host, _U32.pack(src[1]))


def _encode_peers(m: Peers) -> bytes:
    out = [bytes((_PEERS,)), _U32.pack(len(m.peers))]
    v4type = ipaddress.IPv4Network
    for p in m.peers:
        out.append(_key(p.key))
        _put_endpoint(out, p.endpoint)
        _put_src(out, p.src)
        a4: list[int] = []
        l4: list[int] = []
        a6: list[int] = []
        l6: list[int] = []
        for net in p.networks:
            if type(net) is v4type:
                a4.append(int(net.network_address))
                l4.append(net.prefixlen)
            else:
                a = int(net.network_address)
                a6 += (a >> 64, a & 0xFFFF_FFFF_FFFF_FFFF)
                l6.append(net.prefixlen)
        out.append(_COUNTS.pack(len(l4), len(l6)))
        out += (struct.pack(f"<{len(a4)}I", *a4), bytes(l4))
        out += (struct.pack(f"<{len(a6)}Q", *a6), bytes(l6))
    return b"".join(out)


def _encode_endpoint(m: Endpoint) -> bytes:
    out = [bytes((_ENDPOINT,)), _key(m.key)]
    _put_endpoint(out, m.endpoint)
    _put_src(out, m.src)
    return b"".join(out)


def _encode_keypair(m: Keypair) -> bytes:
    k = m.material
    head = _KEYPAIR_HEAD.pack(_KEYPAIR, _key(m.key), k is not None)
    if k is None:
        return head
    return head + _MATERIAL.pack(
        _key(k.send_key), k.remote_index, k.slot, k.ident, k.age, k.is_initiator
    )


def _encode_stop(m: Stop) -> bytes:
    return bytes((_STOP,))


def _encode_report(m: Report) -> bytes:
    pack = _SENT.pack
    out = [bytes((_REPORT,)), _U32.pack(len(m.sent))]
    out += [pack(_key(s.key), s.tx_bytes, s.tx_packets, s.data_sent) for s in m.sent]
    out.append(_U8.pack(len(m.drops)))
    out += [_DROP.pack(_DROP_INDEX[reason], n) for reason, n in m.drops.items()]
    return b"".join(out)


def _encode_stage(m: Stage) -> bytes:
    n = len(m.packets)
    lengths = [len(p) for p in m.packets]
    if n and not (0 < min(lengths) and max(lengths) <= MAX_PACKET):
        raise ValueError(f"staged packets are 1..{MAX_PACKET} bytes")
    head = _STAGE_HEAD.pack(_STAGE, _key(m.key), n) + struct.pack(f"<{n}I", *lengths)
    return b"".join([head, *m.packets])


def _encode_rekey(m: Rekey) -> bytes:
    return b"".join([bytes((_REKEY,)), _U32.pack(len(m.keys)), *map(_key, m.keys)])


_ENCODERS: dict[type, Callable] = {
    Peers: _encode_peers, Endpoint: _encode_endpoint, Keypair: _encode_keypair,
    Stop: _encode_stop, Report: _encode_report, Stage: _encode_stage, Rekey: _encode_rekey,
}  # fmt: skip


def encode(msg: Message) -> bytes:
    """The wire form of one message. A value that does not fit its field (a key that is not
    32 bytes, a drop reason workers do not report) is a bug of the sender: ValueError or
    struct.error."""
    return _ENCODERS[type(msg)](msg)


# ---------------------------------------------------------------- decoding


def _need(data: bytes, at: int, n: int) -> None:
    if n < 0 or at + n > len(data):
        raise MessageError(f"truncated: {n} bytes wanted at {at} of {len(data)}")


def _get_endpoint(data: bytes, at: int) -> tuple[Addr | None, int]:
    _need(data, at, 1)
    n = data[at]
    at += 1
    if n == 0:
        return None, at
    _need(data, at, n + 2)
    try:
        host = data[at : at + n].decode("ascii")
        ipaddress.ip_address(host)  # a literal (a %scope is allowed): names are resolved first
    except ValueError as e:  # (UnicodeDecodeError is one)
        raise MessageError(f"endpoint host: {e}") from None
    (port,) = _U16.unpack_from(data, at + n)
    return (host, port), at + n + 2


def _get_src(data: bytes, at: int) -> tuple[Src | None, int]:
    _need(data, at, 1)
    n = data[at]
    at += 1
    if n == 0:
        return None, at
    if n > MAX_SRC:
        raise MessageError(f"source host of {n} bytes")
    _need(data, at, n + 4)
    try:
        host = data[at : at + n].decode("ascii")
        if "%" in host:
            raise ValueError("a scope in a source address")
        ipaddress.ip_address(host)
    except ValueError as e:
        raise MessageError(f"source host: {e}") from None
    (ifindex,) = _U32.unpack_from(data, at + n)
    if ifindex > MAX_IFINDEX:
        raise MessageError(f"interface index {ifindex}")
    return (host, ifindex), at + n + 4


def _get_networks(data: bytes, at: int) -> tuple[list[Network], int]:
    _need(data, at, _COUNTS.size)
    n4, n6 = _COUNTS.unpack_from(data, at)
    at += _COUNTS.size
    _need(data, at, 5 * n4 + 17 * n6)  # (checked before any allocation sized by the counts)
    a4 = struct.unpack_from(f"<{n4}I", data, at)
    at += 4 * n4
    l4 = data[at : at + n4]
    at += n4
    a6 = struct.unpack_from(f"<{2 * n6}Q", data, at)
    at += 16 * n6
    l6 = data[at : at + n6]
    at += n6
    # strict: a prefix with host bits set, or a length past 32/128, is refused (ValueError)
    v4, v6 = ipaddress.IPv4Network, ipaddress.IPv6Network
    nets: list[Network] = [v4((a, plen)) for a, plen in zip(a4, l4, strict=True)]
    it = iter(a6)
    nets += [v6(((hi << 64) | lo, plen)) for hi, lo, plen in zip(it, it, l6, strict=True)]
    return nets, at


def _decode_peers(data: bytes) -> Peers:
    _need(data, 1, 4)
    (n,) = _U32.unpack_from(data, 1)
    at = 5
    _need(data, at, n * (KEY_LEN + 2 + _COUNTS.size))  # the smallest peer entry
    peers = []
    for _ in range(n):
        _need(data, at, KEY_LEN)
        key = data[at : at + KEY_LEN]
        endpoint, at = _get_endpoint(data, at + KEY_LEN)
        src, at = _get_src(data, at)
        nets, at = _get_networks(data, at)
        peers.append(PeerRoutes(key, endpoint, nets, src))
    _end(data, at)
    return Peers(peers)


def _decode_endpoint(data: bytes) -> Endpoint:
    _need(data, 1, KEY_LEN)
    endpoint, at = _get_endpoint(data, 1 + KEY_LEN)
    src, at = _get_src(data, at)
    _end(data, at)
    return Endpoint(data[1 : 1 + KEY_LEN], endpoint, src)


def _decode_keypair(data: bytes) -> Keypair:
    _need(data, 0, _KEYPAIR_HEAD.size)
    _, key, present = _KEYPAIR_HEAD.unpack_from(data)
    if not _flag(present):
        _end(data, _KEYPAIR_HEAD.size)
        return Keypair(key, None)
    _need(data, _KEYPAIR_HEAD.size, _MATERIAL.size)
    send_key, remote, slot, ident, age, initiator = _MATERIAL.unpack_from(data, _KEYPAIR_HEAD.size)
    _end(data, _KEYPAIR_HEAD.size + _MATERIAL.size)
    if not math.isfinite(age):
        raise MessageError(f"keypair age {age}")
    return Keypair(key, KeypairMaterial(send_key, remote, slot, ident, age, _flag(initiator)))


def _decode_stop(data: bytes) -> Stop:
    _end(data, 1)
    return Stop()


def _decode_report(data: bytes) -> Report:
    _need(data, 1, 4)
    (n,) = _U32.unpack_from(data, 1)
    at = 5
    _need(data, at, n * _SENT.size + 1)
    end = at + n * _SENT.size
    rows = _SENT.iter_unpack(memoryview(data)[at:end])
    sent = [PeerSent(key, nb, npk, d == 1) for key, nb, npk, d in rows if d <= 1]
    if len(sent) != n:
        raise MessageError("a sent-flag byte is neither 0 nor 1")
    at = end
    ndrops = data[at]
    at += 1
    _need(data, at, ndrops * _DROP.size)
    drops: dict[str, int] = {}
    for _ in range(ndrops):
        i, count = _DROP.unpack_from(data, at)
        at += _DROP.size
        if i >= len(WORKER_DROPS) or WORKER_DROPS[i] in drops:
            raise MessageError(f"drop reason {i}")
        drops[WORKER_DROPS[i]] = count
    _end(data, at)
    return Report(sent, drops)


def _decode_stage(data: bytes) -> Stage:
    _need(data, 0, _STAGE_HEAD.size)
    _, key, n = _STAGE_HEAD.unpack_from(data)
    at = _STAGE_HEAD.size
    _need(data, at, 5 * n)  # a length and at least one byte per packet
    lengths = struct.unpack_from(f"<{n}I", data, at)
    at += 4 * n
    if n and not (0 < min(lengths) and max(lengths) <= MAX_PACKET):
        raise MessageError(f"staged packet lengths outside 1..{MAX_PACKET}")
    if sum(lengths) != len(data) - at:
        raise MessageError("staged packets do not fill the message")
    packets = []
    for length in lengths:
        packets.append(data[at : at + length])
        at += length
    return Stage(key, packets)


def _decode_rekey(data: bytes) -> Rekey:
    _need(data, 1, 4)
    (n,) = _U32.unpack_from(data, 1)
    _need(data, 5, n * KEY_LEN)
    _end(data, 5 + n * KEY_LEN)
    return Rekey([data[at : at + KEY_LEN] for at in range(5, 5 + n * KEY_LEN, KEY_LEN)])


def _end(data: bytes, at: int) -> None:
    if at != len(data):
        raise MessageError(f"{len(data) - at} bytes after the message")


_FROM_DAEMON: dict[int, Callable[[bytes], DaemonMessage]] = {
    _PEERS: _decode_peers, _ENDPOINT: _decode_endpoint, _KEYPAIR: _decode_keypair,
    _STOP: _decode_stop,
}  # fmt: skip
_FROM_WORKER: dict[int, Callable[[bytes], WorkerMessage]] = {
    _REPORT: _decode_report, _STAGE: _decode_stage, _REKEY: _decode_rekey,
}  # fmt: skip


_M = TypeVar("_M", bound=Message)


def _decode(table: dict[int, Callable[[bytes], _M]], data: bytes, who: str) -> _M:
    if type(data) is not bytes or not data:
        raise MessageError("empty message")
    decoder = table.get(data[0])
    if decoder is None:
        raise MessageError(f"tag {data[0]} is no message {who} sends")
    try:
        return decoder(data)
    except (struct.error, ValueError, OverflowError) as e:
        # Every check above raises MessageError; this is the net under them (ipaddress's own
        # refusals are ValueErrors too), so that nothing else ever escapes to the caller.
        if isinstance(e, MessageError):
            raise
        raise MessageError(f"{type(e).__name__}: {e}") from None


def decode_from_worker(data: bytes) -> WorkerMessage:
    """A message a worker sent, checked as hostile input; MessageError if it is not one."""
    return _decode(_FROM_WORKER, data, "a worker")


def decode_from_daemon(data: bytes) -> DaemonMessage:
    """A message the daemon sent; MessageError if it is not one."""
    return _decode(_FROM_DAEMON, data, "the daemon")
