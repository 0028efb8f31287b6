"""mac1/mac2 and the cookie reply round trip, with a hand-held clock."""

from __future__ import annotations

import ipaddress
import random

import pytest

from tunnelpy.protocol import crypto, handshake
from tunnelpy.protocol.constants import COOKIE_REFRESH_TIME, LABEL_COOKIE, LABEL_MAC1
from tunnelpy.protocol.cookie import CookieChecker, CookieGenerator
from tunnelpy.protocol.messages import message_type, receiver_index, sender_index
from tunnelpy.protocol.tai64n import tai64n


def make_rng(seed: int) -> crypto.Rng:
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


RNG = make_rng(7)
I_PRIV = crypto.generate_private_key(RNG)
R_PRIV = crypto.generate_private_key(RNG)
I_PUB, R_PUB = crypto.public_key(I_PRIV), crypto.public_key(R_PRIV)
SRC = ipaddress.ip_address("192.0.2.7").packed + (51820).to_bytes(2, "big")
OTHER_SRC = ipaddress.ip_address("192.0.2.8").packed + (51820).to_bytes(2, "big")
SRC6 = ipaddress.ip_address("2001:db8::1").packed + (4242).to_bytes(2, "big")


def initiation(index: int = 99) -> bytes:
    msg, _ = handshake.create_initiation(
        I_PRIV, I_PUB, R_PUB, bytes(32), index, crypto.generate_private_key(RNG), tai64n(1e9)
    )
    return msg


def test_mac1_matches_formula_and_checks() -> None:
    gen = CookieGenerator(R_PUB)
    checker = CookieChecker(R_PUB, make_rng(1))
    msg = gen.add_macs(initiation(), now=0.0)
    assert len(msg) == 148
    assert msg[116:132] == crypto.mac(crypto.blake2s(LABEL_MAC1, R_PUB), msg[:116])
    assert msg[132:] == bytes(16)  # no cookie yet
    assert checker.check_mac1(msg)
    assert not checker.check_mac2(msg, SRC, now=0.0)  # no secret yet: no cookie is valid


def test_mac1_fails_for_other_key_and_tampering() -> None:
    msg = CookieGenerator(R_PUB).add_macs(initiation(), now=0.0)
    assert not CookieChecker(I_PUB, make_rng(1)).check_mac1(msg)
    checker = CookieChecker(R_PUB, make_rng(1))
    for i in (0, 50, 115, 116, 131):
        bad = bytearray(msg)
        bad[i] ^= 1
        assert not checker.check_mac1(bytes(bad))
    # mac2 is not covered by mac1.
    assert checker.check_mac1(msg[:132] + b"\xff" * 16)
    assert not checker.check_mac1(b"")
    assert not checker.check_mac1(b"\x01" * 20)


def test_cookie_round_trip_and_expiry() -> None:
    gen = CookieGenerator(R_PUB)
    checker = CookieChecker(R_PUB, make_rng(2))

    t = 1000.0
    first = gen.add_macs(initiation(), now=t)
    assert checker.check_mac1(first) and not checker.check_mac2(first, SRC, now=t)

    # Under load: the responder answers with a cookie reply addressed to the sender index.
    idx = sender_index(first)
    assert idx is not None
    reply = checker.create_reply(first, idx, SRC, now=t)
    assert len(reply) == 64 and message_type(reply) == 3
    assert receiver_index(reply) == 99

    t += 1.0
    assert gen.consume_reply(reply, now=t)
    assert gen.has_cookie
    # The same reply cannot be consumed twice (the mac1 it answers is used up).
    assert not gen.consume_reply(reply, now=t)

    second = gen.add_macs(initiation(), now=t)
    expected_cookie = crypto.mac(checker._secret, SRC)  # noqa: SLF001 - white-box check
    assert second[132:] == crypto.mac(expected_cookie, second[:132])
    assert checker.check_mac1(second)
    assert checker.check_mac2(second, SRC, now=t)
    assert not checker.check_mac2(second, OTHER_SRC, now=t)  # the cookie is bound to the address

    # The initiator stops using the cookie once it is COOKIE_REFRESH_TIME old.
    late = gen.add_macs(initiation(), now=t + COOKIE_REFRESH_TIME - 0.001)
    assert late[132:] != bytes(16)
    # …but the responder's secret dates from the reply (t-1), so it stopped accepting a second
    # earlier: the window in which a stale mac2 is sent is the reply's transit time.
    assert checker.check_mac2(late, SRC, now=t - 1.0 + COOKIE_REFRESH_TIME)
    assert not checker.check_mac2(late, SRC, now=t + COOKIE_REFRESH_TIME - 0.001)
    expired = gen.add_macs(initiation(), now=t + COOKIE_REFRESH_TIME)
    assert expired[132:] == bytes(16)

    # The responder's secret (set at t-1) expires after COOKIE_REFRESH_TIME too.
    assert checker.check_mac2(second, SRC, now=t - 1.0 + COOKIE_REFRESH_TIME)
    assert not checker.check_mac2(second, SRC, now=t - 1.0 + COOKIE_REFRESH_TIME + 0.001)


def test_secret_rotates_only_after_refresh_time() -> None:
    calls: list[int] = []
    inner = make_rng(3)

    def rng(n: int) -> bytes:
        calls.append(n)
        return inner(n)

    checker = CookieChecker(R_PUB, rng)
    gen = CookieGenerator(R_PUB)
    msg = gen.add_macs(initiation(), now=0.0)
    checker.create_reply(msg, 1, SRC, now=0.0)
    assert calls == [32, 24]  # new secret, then the nonce
    secret = checker._secret  # noqa: SLF001
    checker.create_reply(msg, 1, SRC, now=COOKIE_REFRESH_TIME)
    assert calls == [32, 24, 24] and checker._secret == secret  # noqa: SLF001
    checker.create_reply(msg, 1, SRC, now=COOKIE_REFRESH_TIME + 0.5)
    assert calls == [32, 24, 24, 32, 24] and checker._secret != secret  # noqa: SLF001


def test_cookie_from_an_old_secret_is_refused_after_rotation() -> None:
    gen = CookieGenerator(R_PUB)
    checker = CookieChecker(R_PUB, make_rng(4))
    msg = gen.add_macs(initiation(), now=0.0)
    assert gen.consume_reply(checker.create_reply(msg, 1, SRC, now=0.0), now=0.0)
    # The responder rotates (a reply to someone else after expiry) while the initiator's cookie
    # is still "fresh" from its own point of view (it got it at t=100).
    gen2 = CookieGenerator(R_PUB)
    m2 = gen2.add_macs(initiation(), now=100.0)
    assert gen2.consume_reply(checker.create_reply(m2, 2, SRC, now=100.0), now=100.0)
    other = gen.add_macs(initiation(), now=130.0)  # gen's cookie is from the first secret
    checker.create_reply(other, 3, OTHER_SRC, now=130.0)  # rotates: first secret was set at 0
    assert not checker.check_mac2(gen.add_macs(initiation(), now=131.0), SRC, now=131.0)


def test_reply_only_accepted_for_our_last_mac1() -> None:
    gen = CookieGenerator(R_PUB)
    checker = CookieChecker(R_PUB, make_rng(5))
    assert not gen.consume_reply(bytes(64), now=0.0)  # nothing sent yet

    sent = gen.add_macs(initiation(), now=0.0)
    # A reply to someone else's message (different mac1 as AAD) does not authenticate.
    foreign = CookieGenerator(R_PUB).add_macs(initiation(), now=0.0)
    assert not gen.consume_reply(checker.create_reply(foreign, 1, SRC, now=0.0), now=0.0)
    # A reply sealed for another responder key does not authenticate either.
    other_checker = CookieChecker(I_PUB, make_rng(6))
    assert not gen.consume_reply(other_checker.create_reply(sent, 1, SRC, now=0.0), now=0.0)
    good = checker.create_reply(sent, 1, SRC, now=0.0)
    bad = bytearray(good)
    bad[40] ^= 1
    assert not gen.consume_reply(bytes(bad), now=0.0)
    assert not gen.consume_reply(good[:63], now=0.0)
    assert not gen.consume_reply(b"\x04" + good[1:], now=0.0)
    assert gen.consume_reply(good, now=0.0)


def test_reply_encryption_matches_formula() -> None:
    gen = CookieGenerator(R_PUB)
    checker = CookieChecker(R_PUB, make_rng(8))
    msg = gen.add_macs(initiation(), now=5.0)
    reply = checker.create_reply(msg, 0xA1B2C3D4, SRC6, now=5.0)
    assert reply[:8] == b"\x03\x00\x00\x00" + (0xA1B2C3D4).to_bytes(4, "little")
    nonce, sealed = reply[8:32], reply[32:]
    cookie = crypto.xaead_decrypt(crypto.blake2s(LABEL_COOKIE, R_PUB), nonce, sealed, msg[116:132])
    assert cookie == crypto.mac(checker._secret, SRC6)  # noqa: SLF001


def test_response_messages_use_the_same_macs() -> None:
    """The responder adds macs to its 92-byte response with a generator for the initiator."""
    msg1, state = handshake.create_initiation(
        I_PRIV, I_PUB, R_PUB, bytes(32), 5, crypto.generate_private_key(RNG), tai64n(1e9)
    )
    consumed = handshake.consume_initiation(R_PRIV, R_PUB, msg1)
    assert consumed is not None
    msg2, _, _ = handshake.create_response(consumed, bytes(32), 6, crypto.generate_private_key(RNG))
    msg2 = CookieGenerator(I_PUB).add_macs(msg2, now=0.0)
    assert CookieChecker(I_PUB, make_rng(9)).check_mac1(msg2)
    assert not CookieChecker(R_PUB, make_rng(9)).check_mac1(msg2)
    assert handshake.consume_response(state, I_PRIV, msg2) is not None


@pytest.mark.parametrize("now", [0.0, 1e9])
def test_rekeyed_checker(now: float) -> None:
    checker = CookieChecker(I_PUB, make_rng(10))
    msg = CookieGenerator(R_PUB).add_macs(initiation(), now=now)
    assert not checker.check_mac1(msg)
    checker.set_local_static_public(R_PUB)
    assert checker.check_mac1(msg)
