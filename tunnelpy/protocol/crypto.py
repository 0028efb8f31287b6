"""Cryptographic primitives of WireGuard, as thin functions over hashlib and `cryptography`.

Theory of operation
-------------------
WireGuard fixes its primitives (whitepaper §5.4): BLAKE2s for HASH/MAC/HMAC/KDF, X25519 for DH,
ChaCha20-Poly1305 with a 64-bit little-endian counter nonce for every AEAD, and
XChaCha20-Poly1305 (random 24-byte nonce) for cookie replies only. This module exposes exactly
those as pure functions of bytes, so the Noise and cookie layers above read like the whitepaper.

Rules kept here:

* Nothing raises on bad bytes from the network: `aead_decrypt`, `xaead_decrypt` and `dh` return
  None instead, so callers turn failures into counted drops rather than exceptions. A wrong key
  *length* is a programming error and still raises.
* No randomness is created here: `generate_private_key` takes an `rng(n) -> bytes` so that
  handshakes can be replayed byte for byte in tests (protocol/ is sans-I/O).
* `cryptography` has no HChaCha20/XChaCha20-Poly1305 (pyca/cryptography#8966). HChaCha20 is
  recovered from one block of its raw ChaCha20 keystream (see `hchacha20`).
* Per-packet callers (sessions) keep their own `ChaCha20Poly1305` object and call it with
  `nonce(counter)`; the convenience `aead_*` functions build a cipher per call, which is fine for
  the handful of AEAD operations in a handshake.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = [
    "KEY_SIZE",
    "HASH_SIZE",
    "MAC_SIZE",
    "XNONCE_SIZE",
    "Rng",
    "blake2s",
    "mac",
    "hmac_blake2s",
    "kdf",
    "nonce",
    "aead_encrypt",
    "aead_decrypt",
    "hchacha20",
    "xaead_encrypt",
    "xaead_decrypt",
    "generate_private_key",
    "public_key",
    "dh",
]

KEY_SIZE = 32
HASH_SIZE = 32
MAC_SIZE = 16
XNONCE_SIZE = 24

Rng = Callable[[int], bytes]

_blake2s = hashlib.blake2s
_hmac_digest = hmac.digest
# The nonce is 32 zero bits then the counter as u64 LE; "<4xQ" writes both in one call.
_NONCE = struct.Struct("<4xQ")
_pack_nonce = _NONCE.pack
_ZERO_BLOCK = bytes(64)
# The ChaCha20 state's words 0-3: "expand 32-byte k".
_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_WORDS16 = struct.Struct("<16I")
_WORDS8 = struct.Struct("<8I")
_MASK32 = 0xFFFFFFFF


def blake2s(*parts: bytes) -> bytes:
    """HASH(parts[0] ‖ parts[1] ‖ …): BLAKE2s-256 of the concatenation."""
    h = _blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, data): keyed BLAKE2s with a 16-byte digest (mac1, mac2, cookies)."""
    return _blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s-256 (RFC 2104 over BLAKE2s, not BLAKE2s' own keyed mode)."""
    # hmac.digest with the constructor (not the name "blake2s") measured ~2.5x faster here.
    return _hmac_digest(key, data, _blake2s)


def kdf(key: bytes, input: bytes, n: int) -> tuple[bytes, ...]:
    """KDFn(key, input) for n in 1..3: HKDF with HMAC-BLAKE2s and an empty info string.

    (`input` shadows the builtin on purpose: it is the whitepaper's name and the agreed API.)

    prk = HMAC(key, input); T1 = HMAC(prk, 0x1); Ti = HMAC(prk, Ti-1 ‖ i).
    """
    if not 1 <= n <= 3:
        raise ValueError(f"kdf: n must be 1, 2 or 3, got {n}")
    prk = _hmac_digest(key, input, _blake2s)
    t = _hmac_digest(prk, b"\x01", _blake2s)
    out = [t]
    for i in range(2, n + 1):
        t = _hmac_digest(prk, t + bytes((i,)), _blake2s)
        out.append(t)
    return tuple(out)


def nonce(counter: int) -> bytes:
    """The 12-byte ChaCha20-Poly1305 nonce for a message counter: 4 zero bytes ‖ u64 LE."""
    return _pack_nonce(counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    """AEAD(key, counter, plaintext, aad) → ciphertext ‖ 16-byte tag."""
    return ChaCha20Poly1305(key).encrypt(_pack_nonce(counter), plaintext, aad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, aad: bytes) -> bytes | None:
    """Inverse of `aead_encrypt`; None when authentication fails (never raises on bad bytes)."""
    try:
        return ChaCha20Poly1305(key).decrypt(_pack_nonce(counter), ciphertext, aad)
    except InvalidTag:
        return None


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20(key, nonce16) → 32-byte subkey (draft-irtf-cfrg-xchacha §2.2).

    HChaCha20 runs the 20 ChaCha rounds over (constants, key, nonce16) and outputs state words
    0-3 and 12-15 *without* the final feed-forward addition. `cryptography`'s raw ChaCha20 takes a
    16-byte nonce that fills exactly words 12-15 (counter ‖ nonce), so one 64-byte keystream
    block is rounds(state) + state per word. Words 0-3 and 12-15 of the input are known
    (constants and nonce16), so subtracting them mod 2^32 recovers the HChaCha20 output; the key
    words are never needed.
    """
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("hchacha20: key must be 32 bytes and nonce 16 bytes")
    encryptor = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor()
    block = _WORDS16.unpack(encryptor.update(_ZERO_BLOCK))
    n = struct.unpack("<4I", nonce16)
    return _WORDS8.pack(
        (block[0] - _SIGMA[0]) & _MASK32,
        (block[1] - _SIGMA[1]) & _MASK32,
        (block[2] - _SIGMA[2]) & _MASK32,
        (block[3] - _SIGMA[3]) & _MASK32,
        (block[12] - n[0]) & _MASK32,
        (block[13] - n[1]) & _MASK32,
        (block[14] - n[2]) & _MASK32,
        (block[15] - n[3]) & _MASK32,
    )


def _xchacha(key: bytes, nonce24: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    if len(nonce24) != XNONCE_SIZE:
        raise ValueError("XChaCha20-Poly1305 needs a 24-byte nonce")
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey), b"\x00\x00\x00\x00" + nonce24[16:]


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """XChaCha20-Poly1305 seal → ciphertext ‖ tag (used for cookie replies)."""
    cipher, n12 = _xchacha(key, nonce24)
    return cipher.encrypt(n12, plaintext, aad)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, aad: bytes) -> bytes | None:
    """XChaCha20-Poly1305 open; None on authentication failure or a malformed nonce."""
    if len(nonce24) != XNONCE_SIZE:
        return None
    cipher, n12 = _xchacha(key, nonce24)
    try:
        return cipher.decrypt(n12, ciphertext, aad)
    except InvalidTag:
        return None


def generate_private_key(rng: Rng) -> bytes:
    """A Curve25519 private key from 32 bytes of `rng`, clamped as `wg genkey` does."""
    raw = rng(32)
    if len(raw) != 32:
        raise ValueError("rng returned the wrong number of bytes")
    key = bytearray(raw)
    # Clamping (RFC 7748 §5): clear the cofactor bits, set the top bit's position. X25519
    # clamps again internally; storing clamped keys keeps the text form identical to wg's.
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def public_key(priv: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key."""
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw()


def dh(priv: bytes, pub: bytes) -> bytes | None:
    """X25519(priv, pub); None for a low-order `pub` (all-zero result) or a malformed input.

    WireGuard rejects an all-zero shared secret: it would make the handshake keys independent
    of one party's key. `cryptography` raises ValueError in exactly that case, which becomes
    None here so a hostile ephemeral is an ordinary drop.
    """
    try:
        return X25519PrivateKey.from_private_bytes(priv).exchange(
            X25519PublicKey.from_public_bytes(pub)
        )
    except ValueError:
        return None
