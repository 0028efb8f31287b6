"""Key generation and encoding, in the same text form as the ``wg`` tool.

Keys travel as 44-character standard base64 (32 bytes), exactly as ``wg genkey``, ``wg pubkey``
and ``wg genpsk`` print them, so keys are interchangeable between tunnelpy and WireGuard.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

KEY_LEN = 32
KEY_LEN_BASE64 = 44  # 32 bytes -> 43 significant characters plus one "=" of padding


def encode_key(key: bytes) -> str:
    """Return the 44-character base64 text of a 32-byte key."""
    if len(key) != KEY_LEN:
        raise ValueError(f"a key is {KEY_LEN} bytes, got {len(key)}")
    return base64.b64encode(key).decode("ascii")


def decode_key(b64: str) -> bytes:
    """Decode a 44-character base64 key to 32 bytes; raise ValueError otherwise."""
    if len(b64) != KEY_LEN_BASE64 or not b64.isascii():
        raise ValueError("expected a 32-byte base64 key (44 characters)")
    try:
        key = base64.b64decode(b64, validate=True)
    except binascii.Error:
        raise ValueError("expected a 32-byte base64 key (44 characters)") from None
    # wg refuses non-zero trailing bits in the last character, so an encoding that does not
    # round-trip would be a key wg itself rejects: refuse it here too.
    if len(key) != KEY_LEN or base64.b64encode(key).decode("ascii") != b64:
        raise ValueError("expected a 32-byte base64 key (44 characters)")
    return key


def clamp(key: bytes) -> bytes:
    """Clamp 32 random bytes into a Curve25519 private scalar (RFC 7748 §5), as wg genkey does."""
    k = bytearray(key)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def generate_private() -> str:
    """A new private key in base64, like ``wg genkey``."""
    return encode_key(clamp(os.urandom(KEY_LEN)))


def generate_psk() -> str:
    """A new preshared key in base64, like ``wg genpsk`` (plain random bytes, no clamping)."""
    return encode_key(os.urandom(KEY_LEN))


def public_from_private_bytes(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key (clamping is applied by X25519 itself)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def public_from_private(b64: str) -> str:
    """The base64 public key of a base64 private key, like ``wg pubkey``."""
    return encode_key(public_from_private_bytes(decode_key(b64)))


_PROBE = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def is_low_order(public: bytes) -> bool:
    """True for a public key on which X25519 gives the all-zero secret (all zeros, and the
    other small-order points): WireGuard refuses it, no handshake with it can complete."""
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return True
    return False
