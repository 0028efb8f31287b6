"""The Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake, generic over prologue and payloads.

Theory of operation
-------------------
Noise (noiseprotocol.org, rev 34) builds a handshake from a *symmetric state* — a chaining key
`ck` that accumulates every DH result and a transcript hash `h` that accumulates every byte sent —
and a pattern of tokens. IKpsk2 is::

    <- s                      (pre-message: the initiator already knows the responder's static)
    ...
    -> e, es, s, ss           (message 1; payload 1)
    <- e, ee, se, psk         (message 2; payload 2)

Token semantics used here (psk mode): `e` sends the ephemeral public key in clear and does
MixHash(e) *and* MixKey(e); `es`/`ss`/`ee`/`se` do MixKey(DH(…)); `s` sends the static public key
with EncryptAndHash; `psk` does MixKeyAndHash(psk); each message ends with EncryptAndHash(payload).

WireGuard is this pattern with prologue = its identifier, payload 1 = a TAI64N timestamp and
payload 2 empty; its whitepaper writes MixKey as `(C, k) = KDF2(C, x)` and the `e` token as
`C = KDF1(C, e)`. Every key produced by MixKey is used for exactly one EncryptAndHash before the
next MixKey, so — like WireGuard — the cipher always uses counter 0 and no CipherState counter is
kept during the handshake. The message 1 and message 2 functions below produce and consume the
Noise message *bodies* only; handshake.py adds WireGuard's framing (types, indices, macs).

Failures (bad AEAD tag, low-order DH input, wrong length) return None: network bytes never raise.
The symmetric state is mutated in place; callers that must survive a failed read `copy()` first.
"""

from __future__ import annotations

from functools import lru_cache

from . import crypto
from .constants import CONSTRUCTION

__all__ = [
    "DH_LEN",
    "SymmetricState",
    "initialize",
    "write_message_1",
    "read_message_1",
    "write_message_2",
    "read_message_2",
]

DH_LEN = 32
_TAG = 16
_EMPTY = b""


class SymmetricState:
    """Noise's SymmetricState: chaining key `ck`, handshake hash `h`, current key `k`."""

    __slots__ = ("ck", "h", "k")

    def __init__(self, ck: bytes, h: bytes, k: bytes | None = None) -> None:
        self.ck = ck
        self.h = h
        self.k = k

    @classmethod
    def from_protocol_name(cls, protocol_name: bytes) -> SymmetricState:
        """InitializeSymmetric: h = name padded to 32 bytes, or HASH(name) if longer."""
        if len(protocol_name) <= crypto.HASH_SIZE:
            h = protocol_name.ljust(crypto.HASH_SIZE, b"\x00")
        else:
            h = crypto.blake2s(protocol_name)
        return cls(h, h)

    def copy(self) -> SymmetricState:
        return SymmetricState(self.ck, self.h, self.k)

    def mix_hash(self, data: bytes) -> None:
        self.h = crypto.blake2s(self.h, data)

    def mix_key(self, ikm: bytes) -> None:
        """(ck, k) = KDF2(ck, ikm)."""
        self.ck, self.k = crypto.kdf(self.ck, ikm, 2)

    def mix_chain(self, ikm: bytes) -> None:
        """ck = KDF1(ck, ikm): MixKey when the key it yields is overwritten before use.

        After the `e`, `ee` and `se` tokens the next token is another MixKey, so computing k
        would be a wasted HMAC; WireGuard's whitepaper writes these steps as KDF1 for the same
        reason. The resulting `ck` is identical to MixKey's; `k` is cleared so that a misuse
        (encrypting right after) fails loudly instead of using a stale key.
        """
        self.ck = crypto.kdf(self.ck, ikm, 1)[0]
        self.k = None

    def mix_key_and_hash(self, psk: bytes) -> None:
        """(ck, temp_h, k) = KDF3(ck, psk); MixHash(temp_h)."""
        self.ck, temp_h, self.k = crypto.kdf(self.ck, psk, 3)
        self.h = crypto.blake2s(self.h, temp_h)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """Seal with (k, counter 0, aad=h), then MixHash(ciphertext)."""
        if self.k is None:
            # Noise would send plaintext before the first MixKey; IKpsk2 never does, and
            # mix_chain() clears k, so reaching this is a bug that must not leak cleartext.
            raise RuntimeError("encrypt_and_hash without a key")
        ciphertext = crypto.aead_encrypt(self.k, 0, plaintext, self.h)
        self.h = crypto.blake2s(self.h, ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes | None:
        """Open with (k, counter 0, aad=h), then MixHash(ciphertext); None on a bad tag."""
        if self.k is None:
            raise RuntimeError("decrypt_and_hash without a key")
        plaintext = crypto.aead_decrypt(self.k, 0, ciphertext, self.h)
        if plaintext is None:
            return None
        self.h = crypto.blake2s(self.h, ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """(k1, k2) = KDF2(ck, empty): k1 carries initiator→responder, k2 the reverse."""
        k1, k2 = crypto.kdf(self.ck, _EMPTY, 2)
        return k1, k2


@lru_cache(maxsize=256)
def _initial(protocol_name: bytes, prologue: bytes, responder_static: bytes) -> tuple[bytes, bytes]:
    # The state before message 1 depends only on constants and the responder's static key:
    # cache it so each handshake (and each forged initiation under load) saves two hashes.
    st = SymmetricState.from_protocol_name(protocol_name)
    st.mix_hash(prologue)
    st.mix_hash(responder_static)  # pre-message "<- s"
    return st.ck, st.h


def initialize(
    prologue: bytes, responder_static: bytes, protocol_name: bytes = CONSTRUCTION
) -> SymmetricState:
    """The symmetric state both sides hold before message 1 of IK (prologue and `<- s` mixed)."""
    ck, h = _initial(protocol_name, prologue, responder_static)
    return SymmetricState(ck, h)


def write_message_1(
    st: SymmetricState,
    static_private: bytes,
    static_public: bytes,
    remote_static: bytes,
    ephemeral_private: bytes,
    payload: bytes,
) -> bytes | None:
    """Initiator: `-> e, es, s, ss` + payload. Returns e ‖ enc(s) ‖ enc(payload), or None if a
    DH result is zero (remote_static is a low-order point)."""
    e_pub = crypto.public_key(ephemeral_private)
    st.mix_hash(e_pub)
    st.mix_chain(e_pub)
    es = crypto.dh(ephemeral_private, remote_static)
    if es is None:
        return None
    st.mix_key(es)
    enc_static = st.encrypt_and_hash(static_public)
    ss = crypto.dh(static_private, remote_static)
    if ss is None:
        return None
    st.mix_key(ss)
    enc_payload = st.encrypt_and_hash(payload)
    return e_pub + enc_static + enc_payload


def read_message_1(
    st: SymmetricState, static_private: bytes, message: bytes
) -> tuple[bytes, bytes, bytes] | None:
    """Responder: consume message 1 → (remote_ephemeral, remote_static, payload), or None."""
    if len(message) < DH_LEN + DH_LEN + _TAG + _TAG:
        return None
    re = bytes(message[:DH_LEN])
    st.mix_hash(re)
    st.mix_chain(re)
    es = crypto.dh(static_private, re)
    if es is None:
        return None
    st.mix_key(es)
    rs = st.decrypt_and_hash(bytes(message[DH_LEN : 2 * DH_LEN + _TAG]))
    if rs is None:
        return None
    ss = crypto.dh(static_private, rs)
    if ss is None:
        return None
    st.mix_key(ss)
    payload = st.decrypt_and_hash(bytes(message[2 * DH_LEN + _TAG :]))
    if payload is None:
        return None
    return re, rs, payload


def write_message_2(
    st: SymmetricState,
    ephemeral_private: bytes,
    remote_ephemeral: bytes,
    remote_static: bytes,
    preshared_key: bytes,
    payload: bytes,
) -> bytes | None:
    """Responder: `<- e, ee, se, psk` + payload. Returns e ‖ enc(payload), or None on a zero DH."""
    e_pub = crypto.public_key(ephemeral_private)
    st.mix_hash(e_pub)
    st.mix_chain(e_pub)
    ee = crypto.dh(ephemeral_private, remote_ephemeral)
    if ee is None:
        return None
    st.mix_chain(ee)
    se = crypto.dh(ephemeral_private, remote_static)
    if se is None:
        return None
    st.mix_chain(se)
    st.mix_key_and_hash(preshared_key)
    return e_pub + st.encrypt_and_hash(payload)


def read_message_2(
    st: SymmetricState,
    ephemeral_private: bytes,
    static_private: bytes,
    preshared_key: bytes,
    message: bytes,
) -> tuple[bytes, bytes] | None:
    """Initiator: consume message 2 → (remote_ephemeral, payload), or None."""
    if len(message) < DH_LEN + _TAG:
        return None
    re = bytes(message[:DH_LEN])
    st.mix_hash(re)
    st.mix_chain(re)
    ee = crypto.dh(ephemeral_private, re)
    if ee is None:
        return None
    st.mix_chain(ee)
    se = crypto.dh(static_private, re)
    if se is None:
        return None
    st.mix_chain(se)
    st.mix_key_and_hash(preshared_key)
    payload = st.decrypt_and_hash(bytes(message[DH_LEN:]))
    if payload is None:
        return None
    return re, payload
