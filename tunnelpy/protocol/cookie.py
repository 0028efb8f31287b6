"""mac1/mac2 and cookie replies: WireGuard's DoS mitigation (whitepaper §5.3, §5.4.7).

Theory of operation
-------------------
Every handshake message ends in two 16-byte MACs over the bytes before them:

* mac1 = MAC(HASH("mac1----" ‖ receiver's static public), msg[:mac1]). Anyone who knows the
  receiver's public key can compute it, so it only proves the sender knows whom it is talking to;
  it lets a responder drop junk before any Diffie-Hellman.
* mac2 = MAC(cookie, msg[:mac2]) or 16 zero bytes. A cookie is MAC(secret, source IP ‖ port),
  with a responder secret that rotates every COOKIE_REFRESH_TIME. It proves the sender can
  receive at the address it claims.

Under load the responder (`CookieChecker`) answers an initiation whose mac2 is not valid with a
type-3 cookie reply instead of a handshake response: the cookie, XChaCha20-Poly1305-sealed with
key HASH("cookie--" ‖ responder static public), a random 24-byte nonce, and the mac1 of the
triggering message as AAD (so only the real sender, who knows that mac1, can accept it). The
initiator (`CookieGenerator`) stores the cookie and puts mac2 on its next messages while the
cookie is younger than COOKIE_REFRESH_TIME.

Deciding *when* the responder is under load, rate limiting, and matching a reply's receiver
index to a peer are the engine's job; this module only computes and checks. Time is the caller's
monotonic `now`; randomness (secret, nonce) comes from the injected `rng`.
"""

from __future__ import annotations

import hmac

from . import crypto
from .constants import (
    COOKIE_REFRESH_TIME,
    LABEL_COOKIE,
    LABEL_MAC1,
    MSG_COOKIE_REPLY,
)
from .messages import COOKIE_ENCRYPTED, COOKIE_NONCE, COOKIE_REPLY, MAC_SIZE, message_type

__all__ = ["CookieChecker", "CookieGenerator"]

_ZERO_MAC = bytes(MAC_SIZE)
_compare = hmac.compare_digest
_mac = crypto.mac
_MIN_HANDSHAKE = 2 * MAC_SIZE + 4  # anything shorter cannot carry a header and two macs


class CookieChecker:
    """Responder side, one per interface: checks mac1/mac2 and makes cookie replies."""

    __slots__ = ("_mac1_key", "_cookie_key", "_rng", "_secret", "_secret_set")

    def __init__(self, local_static_public: bytes, rng: crypto.Rng) -> None:
        self._rng = rng
        self._secret = b""
        self._secret_set: float | None = None  # None: no secret yet, so no cookie is valid
        self.set_local_static_public(local_static_public)

    def set_local_static_public(self, local_static_public: bytes) -> None:
        """Rekey after the interface's private key changes (`wg set … private-key`)."""
        self._mac1_key = crypto.blake2s(LABEL_MAC1, local_static_public)
        self._cookie_key = crypto.blake2s(LABEL_COOKIE, local_static_public)

    def check_mac1(self, msg: bytes) -> bool:
        """True if the message's mac1 is right for our static public key."""
        n = len(msg)
        if n < _MIN_HANDSHAKE:
            return False
        smac1 = n - 2 * MAC_SIZE
        return _compare(_mac(self._mac1_key, msg[:smac1]), msg[smac1 : smac1 + MAC_SIZE])

    def _cookie(self, src: bytes) -> bytes:
        return _mac(self._secret, src)

    def check_mac2(self, msg: bytes, src: bytes, now: float) -> bool:
        """True if mac2 proves the sender holds a current cookie for `src` (ip bytes ‖ u16 BE port).

        Call after `check_mac1`: mac2 covers mac1, so a valid mac2 implies nothing about mac1.
        """
        n = len(msg)
        if n < _MIN_HANDSHAKE:
            return False
        if self._secret_set is None or now - self._secret_set > COOKIE_REFRESH_TIME:
            # Cookies made with an expired secret are stale even if the secret has not been
            # replaced yet (it is only replaced when a new reply is made).
            return False
        smac2 = n - MAC_SIZE
        return _compare(_mac(self._cookie(src), msg[:smac2]), msg[smac2:])

    def create_reply(self, msg: bytes, receiver_index: int, src: bytes, now: float) -> bytes:
        """The 64-byte type-3 cookie reply to handshake message `msg` from `src`.

        `receiver_index` is the sender index found in `msg` (the reply is addressed to it).
        """
        if self._secret_set is None or now - self._secret_set > COOKIE_REFRESH_TIME:
            self._secret = self._rng(32)
            self._secret_set = now
        n = len(msg)
        smac1 = n - 2 * MAC_SIZE
        mac1 = msg[smac1 : smac1 + MAC_SIZE]
        nonce = self._rng(crypto.XNONCE_SIZE)
        sealed = crypto.xaead_encrypt(self._cookie_key, nonce, self._cookie(src), mac1)
        return COOKIE_REPLY.pack(MSG_COOKIE_REPLY, receiver_index, nonce, sealed)


class CookieGenerator:
    """Initiator side, one per peer: adds mac1/mac2 and accepts cookie replies."""

    __slots__ = ("_mac1_key", "_cookie_key", "_last_mac1", "_cookie", "_cookie_set")

    def __init__(self, remote_static_public: bytes) -> None:
        self._mac1_key = crypto.blake2s(LABEL_MAC1, remote_static_public)
        self._cookie_key = crypto.blake2s(LABEL_COOKIE, remote_static_public)
        self._last_mac1: bytes | None = None  # a reply is only accepted for a mac1 we sent
        self._cookie = b""
        self._cookie_set: float | None = None

    def add_macs(self, msg: bytes, now: float) -> bytes:
        """`msg` with mac1 and mac2 filled in (the last 32 bytes are replaced)."""
        body = msg[: len(msg) - 2 * MAC_SIZE]
        mac1 = _mac(self._mac1_key, body)
        self._last_mac1 = mac1
        if self._cookie_set is None or now - self._cookie_set >= COOKIE_REFRESH_TIME:
            mac2 = _ZERO_MAC
        else:
            mac2 = _mac(self._cookie, body + mac1)  # mac2 covers everything before it
        return body + mac1 + mac2

    def consume_reply(self, msg: bytes, now: float) -> bool:
        """Decrypt a cookie reply with the last mac1 sent as AAD and keep its cookie.

        False if there is no outstanding mac1, the message is malformed, or it does not
        authenticate. Each mac1 is good for one reply, as in wireguard-go.
        """
        if self._last_mac1 is None or message_type(msg) != MSG_COOKIE_REPLY:
            return False
        cookie = crypto.xaead_decrypt(
            self._cookie_key,
            bytes(msg[COOKIE_NONCE:COOKIE_ENCRYPTED]),
            bytes(msg[COOKIE_ENCRYPTED:]),
            self._last_mac1,
        )
        if cookie is None:
            return False
        self._cookie = cookie
        self._cookie_set = now
        self._last_mac1 = None
        return True

    @property
    def has_cookie(self) -> bool:
        """True while a cookie is stored (whether or not it is still fresh)."""
        return self._cookie_set is not None
