"""Keypairs: the symmetric state of one completed handshake.

A keypair holds the two ChaCha20-Poly1305 keys derived at the end of a handshake, the next
sending counter, the receive replay window and the indices both sides use to find it. A peer keeps
up to three (previous, current, next) exactly like wireguard-go's `Keypairs`: the responder's
fresh keypair waits in `next` until the initiator proves it has it by sending on it, and the one it
replaces lingers as `previous` so packets in flight still decrypt.

Keypairs expire by age (REJECT_AFTER_TIME) and by counter (REJECT_AFTER_MESSAGES); the engine asks
`usable_for_sending` / `usable_for_receiving` with `now` rather than the keypair reading a clock.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from .replay import ReplayWindow


class Keypair:
    __slots__ = (
        "send",
        "recv",
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
        self.recv = ChaCha20Poly1305(recv_key)
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.is_initiator = is_initiator

    def usable_for_sending(self, now: float) -> bool:
        return (
            self.send_counter < REJECT_AFTER_MESSAGES
            and now - self.created < REJECT_AFTER_TIME
        )

    def usable_for_receiving(self, now: float) -> bool:
        return now - self.created < REJECT_AFTER_TIME
