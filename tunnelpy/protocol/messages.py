"""WireGuard's four message layouts and parse helpers that never raise.

Theory of operation
-------------------
Every WireGuard datagram starts with a little-endian u32 type: one type byte (1-4) and three
zero bytes. The first three types have a fixed size, the transport type a minimum size::

    1 initiation   148 B  type | sender | ephemeral 32 | static 32+16 | timestamp 12+16 | mac1 | mac2
    2 response      92 B  type | sender | receiver | ephemeral 32 | empty 0+16 | mac1 | mac2
    3 cookie reply  64 B  type | receiver | nonce 24 | cookie 16+16
    4 transport   >=32 B  type | receiver | counter u64 | ciphertext (>= 16-byte tag)

`message_type` is the single gate for bytes from the network: it returns 0 for anything that is
not exactly one of these shapes, so code after it may slice at the fixed offsets below without
length checks. The other helpers also return None rather than raise on short input, because a
datagram is attacker-controlled until it has been authenticated.

Offsets are plain ints (fast to slice with); the `struct.Struct` layouts are for the few places
that build or take apart a whole message at once.
"""

from __future__ import annotations

import struct
from typing import Final

from .constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MIN_TRANSPORT_SIZE,
    MSG_COOKIE_REPLY,
    MSG_INITIATION,
    MSG_RESPONSE,
    MSG_TRANSPORT,
    RESPONSE_SIZE,
    TRANSPORT_HEADER_SIZE,
)

__all__ = [
    "INITIATION",
    "RESPONSE",
    "COOKIE_REPLY",
    "TRANSPORT_HEADER",
    "message_type",
    "pack_header",
    "pack_transport_header",
    "unpack_transport_header",
    "receiver_index",
    "sender_index",
    "mac_offsets",
    "MAC_SIZE",
    "INIT_SENDER",
    "INIT_EPHEMERAL",
    "INIT_STATIC",
    "INIT_TIMESTAMP",
    "INIT_MAC1",
    "INIT_MAC2",
    "RESP_SENDER",
    "RESP_RECEIVER",
    "RESP_EPHEMERAL",
    "RESP_EMPTY",
    "RESP_MAC1",
    "RESP_MAC2",
    "COOKIE_RECEIVER",
    "COOKIE_NONCE",
    "COOKIE_ENCRYPTED",
    "TRANSPORT_RECEIVER",
    "TRANSPORT_COUNTER",
    "TRANSPORT_CONTENT",
]

# --- 1: handshake initiation --------------------------------------------------------------------
INIT_SENDER: Final = 4
INIT_EPHEMERAL: Final = 8
INIT_STATIC: Final = 40  # 32-byte key + 16-byte tag
INIT_TIMESTAMP: Final = 88  # 12-byte TAI64N + 16-byte tag
INIT_MAC1: Final = 116
INIT_MAC2: Final = 132
# type(u32) sender(u32) ephemeral static timestamp mac1 mac2
INITIATION: Final = struct.Struct("<II32s48s28s16s16s")

# --- 2: handshake response ----------------------------------------------------------------------
RESP_SENDER: Final = 4
RESP_RECEIVER: Final = 8
RESP_EPHEMERAL: Final = 12
RESP_EMPTY: Final = 44  # 0-byte payload + 16-byte tag
RESP_MAC1: Final = 60
RESP_MAC2: Final = 76
RESPONSE: Final = struct.Struct("<III32s16s16s16s")

# --- 3: cookie reply ----------------------------------------------------------------------------
COOKIE_RECEIVER: Final = 4
COOKIE_NONCE: Final = 8
COOKIE_ENCRYPTED: Final = 32  # 16-byte cookie + 16-byte tag
COOKIE_REPLY: Final = struct.Struct("<II24s32s")

# --- 4: transport data --------------------------------------------------------------------------
TRANSPORT_RECEIVER: Final = 4
TRANSPORT_COUNTER: Final = 8
TRANSPORT_CONTENT: Final = 16
TRANSPORT_HEADER: Final = struct.Struct("<IIQ")

MAC_SIZE: Final = 16

_U32 = struct.Struct("<I")
_unpack_u32 = _U32.unpack_from
_EXACT_SIZE = {
    MSG_INITIATION: INITIATION_SIZE,
    MSG_RESPONSE: RESPONSE_SIZE,
    MSG_COOKIE_REPLY: COOKIE_REPLY_SIZE,
}
_TRANSPORT_TAIL = struct.Struct("<4xIQ")
_unpack_transport = _TRANSPORT_TAIL.unpack_from
_pack_transport = TRANSPORT_HEADER.pack
# Offset of the receiver index for the three types that carry one.
_RECEIVER_AT = {MSG_RESPONSE: RESP_RECEIVER, MSG_COOKIE_REPLY: COOKIE_RECEIVER, MSG_TRANSPORT: 4}


def message_type(data: bytes | bytearray | memoryview) -> int:
    """The message type (1-4) if `data` is a well-formed header of the right size, else 0."""
    n = len(data)
    if n < MIN_TRANSPORT_SIZE:
        # Nothing valid is shorter than a keepalive (32 B); this also makes the u32 read safe.
        return 0
    t: int = _unpack_u32(data)[0]  # reads type byte and the three reserved zero bytes at once
    if t == MSG_TRANSPORT:
        return t
    if _EXACT_SIZE.get(t) == n:
        return t
    return 0


def pack_header(msg_type: int) -> bytes:
    """The 4-byte header of a message: type byte then three zero bytes."""
    return _U32.pack(msg_type)


def pack_transport_header(receiver: int, counter: int) -> bytes:
    """The 16-byte header of a transport message."""
    return _pack_transport(MSG_TRANSPORT, receiver, counter)


def unpack_transport_header(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(receiver, counter) of a transport message; None if shorter than 16 bytes.

    Does not check the type: call `message_type` first (the engine always does).
    """
    if len(data) < TRANSPORT_HEADER_SIZE:
        return None
    receiver, counter = _unpack_transport(data)
    return receiver, counter


def receiver_index(data: bytes | bytearray | memoryview) -> int | None:
    """The receiver index of a response, cookie reply or transport message; None otherwise."""
    at = _RECEIVER_AT.get(message_type(data))
    if at is None:
        return None
    index: int = _unpack_u32(data, at)[0]
    return index


def sender_index(data: bytes | bytearray | memoryview) -> int | None:
    """The sender index of an initiation or response; None otherwise."""
    if message_type(data) not in (MSG_INITIATION, MSG_RESPONSE):
        return None
    index: int = _unpack_u32(data, 4)[0]
    return index


def mac_offsets(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(mac1 offset, mac2 offset) of a handshake message: the last 32 bytes are mac1 ‖ mac2."""
    mac2 = len(data) - MAC_SIZE
    return mac2 - MAC_SIZE, mac2
