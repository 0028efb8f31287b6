"""Keypairs: the symmetric state of one completed handshake.

A keypair holds the two ChaCha20-Poly1305 keys derived at the end of a handshake, the next
sending counter, the receive replay window and the indices both sides use to find it. A peer keeps
up to three (previous, current, next) exactly like wireguard-go's `Keypairs`: the responder's
fresh keypair waits in `next` until the initiator proves it has it by sending on it, and the one it
replaces lingers as `previous` so packets in flight still decrypt.

Keypairs expire by age (REJECT_AFTER_TIME) and by counter (REJECT_AFTER_MESSAGES); the engine asks
`usable_for_sending` with `now` rather than the keypair reading a clock, and checks the age of a
receiving keypair itself on the receive path.

With worker processes (``Workers = N``) the sending counter of a keypair lives in a shared slot
(tunnelpy/workers/counters.py): ``slot``/``ident`` name it, and ``send_counter`` is only this
process's view of it. :func:`seal` is the encryption step that the engine and the workers
share, so a transport message is built the same way wherever it is encrypted.

Two implementations of one step: a keypair made while the compiled AEAD is enabled (aead.py)
holds a :class:`~._aead.Sealer`, an :class:`~._aead.Opener` (one OpenSSL context each for its
whole life) and a compiled replay :class:`~._aead.Window`; otherwise `cryptography` objects
and :class:`~.replay.ReplayWindow`. :func:`seal` gives the same datagrams either way
(:func:`seal_batch` is the Python loop, and the reference), the compiled ones in one
contiguous :class:`~.actions.Sealed` buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import aead
from .actions import Datagrams, Sealed
from .constants import MSG_TRANSPORT, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from .replay import ReplayWindow

_TRANSPORT_HEADER = struct.Struct("<IIQ")
_NONCE = struct.Struct("<IQ")  # 4 zero bytes, then the 64-bit little-endian counter
_ZERO_PAD = bytes(16)


def seal_batch(
    encrypt: Callable[[bytes, bytes, bytes | None], bytes],
    remote_index: int,
    counter: int,
    payloads: list[bytes],
    mtu: int,
    prefix: bytes = b"",
) -> tuple[list[bytes], int]:
    """Transport messages for `payloads` with counters `counter`, `counter`+1, …; and their bytes.

    Only IP packets are padded to a multiple of 16 (their length field says where padding
    starts); L2 plaintexts (first byte 0x08) and keepalives (empty) travel as they are.
    `prefix` (a segment's L2 header): each plaintext is prefix ‖ payload.
    """
    pack = _TRANSPORT_HEADER.pack
    nonce = _NONCE.pack
    datagrams = []
    sent = 0
    for p in payloads:
        if prefix:
            p = prefix + p
        n = len(p)
        if n and n < mtu and p[0] & 0xC0 == 0x40:
            pad = (-n) % 16
            if n + pad > mtu:
                pad = mtu - n
            if pad:
                p = p + _ZERO_PAD[:pad]
        data = pack(MSG_TRANSPORT, remote_index, counter) + encrypt(nonce(0, counter), p, None)
        counter += 1
        sent += len(data)
        datagrams.append(data)
    return datagrams, sent


def seal(
    sealer: aead.Sealer | None,
    encrypt: Callable[[bytes, bytes, bytes | None], bytes],
    remote_index: int,
    counter: int,
    payloads: list[bytes],
    mtu: int,
    prefix: bytes = b"",
) -> tuple[Datagrams, int, int]:
    """Transport messages for `payloads` from `counter` on -> (datagrams, their bytes, how many).

    Never a counter at or above REJECT_AFTER_MESSAGES: the batch is cut there (the count says
    how many were sealed), so no nonce is ever used past the limit. With a compiled `sealer`
    the datagrams are one Sealed buffer; else `encrypt` (`cryptography`) seals them one by one.
    `prefix`: every plaintext is prefix ‖ payload (seal_batch).
    """
    if sealer is not None:
        buf, runs, count, sent = sealer.seal(
            remote_index, counter, payloads, mtu, REJECT_AFTER_MESSAGES, prefix or None
        )
        return Sealed(buf, runs, count), sent, count
    room = REJECT_AFTER_MESSAGES - counter
    if len(payloads) > room:
        payloads = payloads[: max(0, room)]
    datagrams, sent = seal_batch(encrypt, remote_index, counter, payloads, mtu, prefix)
    return datagrams, sent, len(datagrams)


class Keypair:
    __slots__ = (
        "send",
        "recv",
        "sealer",
        "opener",
        "send_key",
        "slot",
        "ident",
        "send_counter",
        "replay",
        "local_index",
        "remote_index",
        "created",
        "is_initiator",
    )

    def __init__(
        self,
        send_key: bytes,
        recv_key: bytes,
        local_index: int,
        remote_index: int,
        created: float,
        is_initiator: bool,
    ) -> None:
        # The AEAD objects are made once per session: constructing them per packet costs more
        # than the encryption of a small packet.
        self.send = ChaCha20Poly1305(send_key)
        self.send_key = send_key  # handed to workers (they encrypt, never decrypt)
        self.slot = 0
        self.ident = 0  # 0: the counter is local to this process; else a shared slot's identity
        self.recv = ChaCha20Poly1305(recv_key)
        self.send_counter = 0
        self.sealer: aead.Sealer | None
        self.opener: aead.Opener | None
        self.replay: ReplayWindow | aead.Window
        if aead.enabled():
            copy = aead.copying()  # (the bench's floor only)
            self.sealer = aead.Sealer(send_key, copy)
            self.opener = aead.Opener(recv_key, copy)
            self.replay = aead.Window()
        else:
            self.sealer = self.opener = None
            self.replay = ReplayWindow()
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.is_initiator = is_initiator

    def usable_for_sending(self, now: float) -> bool:
        return self.send_counter < REJECT_AFTER_MESSAGES and now - self.created < REJECT_AFTER_TIME
