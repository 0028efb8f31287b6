"""WireGuard's framing of the Noise_IKpsk2 handshake: initiation and response messages.

Theory of operation
-------------------
WireGuard (whitepaper §5.4.2-5.4.5) is noise.py's IKpsk2 with prologue = the identifier
"WireGuard v1 zx2c4 Jason@zx2c4.com", payload 1 = a 12-byte TAI64N timestamp and payload 2
empty. This module wraps the Noise bodies in the wire layout (messages.py)::

    initiation: type=1 | sender | [ e | enc(s) | enc(timestamp) ] | mac1 | mac2
    response:   type=2 | sender | receiver | [ e | enc(empty) ] | mac1 | mac2

and leaves mac1/mac2 zeroed: cookie.py fills and checks them, because only the engine knows
whether it is under load. The flow is::

    initiator                                   responder
    create_initiation → InitiationState  ──1──► consume_initiation → ConsumedInitiation
                                                (engine: peer by remote_static, timestamp check)
    consume_response(state) → keys      ◄──2── create_response(consumed, psk) → keys

Keys: both sides finish with (T1, T2) = KDF2(ck, ""); the initiator sends with T1 and
receives with T2, the responder the reverse. The responder may use its keys only after the
initiator's first transport message arrives (key confirmation); that rule is the engine's.

Everything here is a pure function of its arguments: the caller supplies ephemeral keys,
indices and the timestamp, so a handshake can be replayed byte for byte. Bytes from the network
never raise — `consume_*` return None — while an unusable *local* key (a low-order peer public
key from the config) raises ValueError from `create_initiation`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import noise
from .constants import (
    IDENTIFIER,
    INITIATION_SIZE,
    MSG_INITIATION,
    MSG_RESPONSE,
    RESPONSE_SIZE,
)
from .messages import (
    INIT_EPHEMERAL,
    INIT_MAC1,
    INIT_SENDER,
    RESP_EPHEMERAL,
    RESP_MAC1,
    RESP_RECEIVER,
    RESP_SENDER,
)

__all__ = [
    "InitiationState",
    "ConsumedInitiation",
    "create_initiation",
    "consume_initiation",
    "create_response",
    "consume_response",
]

_HEADER_INDEX = struct.Struct("<II")  # type (u32 LE) and one index
_HEADER_2INDEX = struct.Struct("<III")
_u32_at = struct.Struct("<I").unpack_from
_MACS_ZERO = bytes(32)
_TIMESTAMP_SIZE = 12


@dataclass
class InitiationState:
    """Kept by the initiator between sending message 1 and receiving message 2."""

    sender_index: int
    ephemeral_private: bytes
    chaining_key: bytes
    hash: bytes
    remote_static: bytes
    preshared_key: bytes


@dataclass
class ConsumedInitiation:
    """What the responder learns from message 1 (authenticated: remote_static is genuine)."""

    sender_index: int
    remote_static: bytes
    remote_ephemeral: bytes
    timestamp: bytes
    chaining_key: bytes
    hash: bytes


def create_initiation(
    static_private: bytes,
    static_public: bytes,
    remote_static: bytes,
    preshared_key: bytes,
    sender_index: int,
    ephemeral_private: bytes,
    timestamp: bytes,
) -> tuple[bytes, InitiationState]:
    """Message 1 (148 bytes, mac1/mac2 zero) and the state to finish the handshake with.

    Raises ValueError if `remote_static` is a low-order point (a bad peer key in the config).
    """
    if len(timestamp) != _TIMESTAMP_SIZE:
        raise ValueError("timestamp must be 12 bytes of TAI64N")
    st = noise.initialize(IDENTIFIER, remote_static)
    body = noise.write_message_1(
        st, static_private, static_public, remote_static, ephemeral_private, timestamp
    )
    if body is None:
        raise ValueError("peer public key is a low-order point: no handshake is possible")
    msg = _HEADER_INDEX.pack(MSG_INITIATION, sender_index) + body + _MACS_ZERO
    state = InitiationState(
        sender_index=sender_index,
        ephemeral_private=ephemeral_private,
        chaining_key=st.ck,
        hash=st.h,
        remote_static=remote_static,
        preshared_key=preshared_key,
    )
    return msg, state


def consume_initiation(
    static_private: bytes, static_public: bytes, msg: bytes
) -> ConsumedInitiation | None:
    """Authenticate and decrypt message 1; None on any failure. mac1/mac2 are not looked at."""
    if len(msg) != INITIATION_SIZE or _u32_at(msg)[0] != MSG_INITIATION:
        return None
    st = noise.initialize(IDENTIFIER, static_public)
    read = noise.read_message_1(st, static_private, bytes(msg[INIT_EPHEMERAL:INIT_MAC1]))
    if read is None:
        return None
    remote_ephemeral, remote_static, timestamp = read
    return ConsumedInitiation(
        sender_index=_u32_at(msg, INIT_SENDER)[0],
        remote_static=remote_static,
        remote_ephemeral=remote_ephemeral,
        timestamp=timestamp,
        chaining_key=st.ck,
        hash=st.h,
    )


def create_response(
    consumed: ConsumedInitiation,
    preshared_key: bytes,
    sender_index: int,
    ephemeral_private: bytes,
) -> tuple[bytes, bytes, bytes]:
    """Message 2 (92 bytes, macs zero), then the responder's (sending_key, receiving_key)."""
    st = noise.SymmetricState(consumed.chaining_key, consumed.hash)
    body = noise.write_message_2(
        st,
        ephemeral_private,
        consumed.remote_ephemeral,
        consumed.remote_static,
        preshared_key,
        b"",
    )
    if body is None:
        # consume_initiation already proved both remote keys give non-zero DH results with our
        # static key; a fresh ephemeral cannot change that, so this is a caller bug.
        raise ValueError("response DH produced zero: ConsumedInitiation was not from consume")
    msg = _HEADER_2INDEX.pack(MSG_RESPONSE, sender_index, consumed.sender_index) + body + _MACS_ZERO
    initiator_to_responder, responder_to_initiator = st.split()
    return msg, responder_to_initiator, initiator_to_responder


def consume_response(
    state: InitiationState, static_private: bytes, msg: bytes
) -> tuple[int, bytes, bytes] | None:
    """Finish the handshake from message 2 → (responder's sender_index, sending_key,
    receiving_key) for the initiator; None on any failure (macs are not looked at)."""
    if len(msg) != RESPONSE_SIZE or _u32_at(msg)[0] != MSG_RESPONSE:
        return None
    if _u32_at(msg, RESP_RECEIVER)[0] != state.sender_index:
        return None
    st = noise.SymmetricState(state.chaining_key, state.hash)
    read = noise.read_message_2(
        st,
        state.ephemeral_private,
        static_private,
        state.preshared_key,
        bytes(msg[RESP_EPHEMERAL:RESP_MAC1]),
    )
    if read is None:
        return None
    _remote_ephemeral, payload = read
    if payload:  # WireGuard's payload 2 is empty; cannot happen with a 92-byte message
        return None
    sending, receiving = st.split()
    return _u32_at(msg, RESP_SENDER)[0], sending, receiving
