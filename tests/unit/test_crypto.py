"""Known-answer and failure-mode tests for tunnelpy.protocol.crypto."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunnelpy.protocol import crypto

# draft-irtf-cfrg-xchacha-03 §2.2.1 (HChaCha20) and §A.3.1 (AEAD_XChaCha20_Poly1305).
# Cross-checked against libsodium's and several independent implementations' test suites.
HCHACHA_KEY = bytes(range(0x00, 0x20))
HCHACHA_NONCE = bytes.fromhex("000000090000004a0000000031415927")
HCHACHA_SUBKEY = bytes.fromhex("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")

XAEAD_KEY = bytes(range(0x80, 0xA0))
XAEAD_NONCE = bytes(range(0x40, 0x58))
XAEAD_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
XAEAD_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
XAEAD_CIPHERTEXT = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
)
XAEAD_TAG = bytes.fromhex("c0875924c1c7987947deafd8780acf49")

# RFC 7748 §6.1.
ALICE_PRIV = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIV = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_hchacha20_draft_vector() -> None:
    assert crypto.hchacha20(HCHACHA_KEY, HCHACHA_NONCE) == HCHACHA_SUBKEY


def test_hchacha20_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError):
        crypto.hchacha20(HCHACHA_KEY, HCHACHA_NONCE[:15])
    with pytest.raises(ValueError):
        crypto.hchacha20(HCHACHA_KEY[:31], HCHACHA_NONCE)


def test_xchacha20_poly1305_draft_vector() -> None:
    sealed = crypto.xaead_encrypt(XAEAD_KEY, XAEAD_NONCE, XAEAD_PLAINTEXT, XAEAD_AAD)
    assert sealed == XAEAD_CIPHERTEXT + XAEAD_TAG
    assert crypto.xaead_decrypt(XAEAD_KEY, XAEAD_NONCE, sealed, XAEAD_AAD) == XAEAD_PLAINTEXT


def test_xchacha20_poly1305_failures_return_none() -> None:
    sealed = XAEAD_CIPHERTEXT + XAEAD_TAG
    flipped = bytearray(sealed)
    flipped[7] ^= 0x01
    assert crypto.xaead_decrypt(XAEAD_KEY, XAEAD_NONCE, bytes(flipped), XAEAD_AAD) is None
    assert crypto.xaead_decrypt(XAEAD_KEY, XAEAD_NONCE, sealed, b"other aad") is None
    assert crypto.xaead_decrypt(XAEAD_KEY, XAEAD_NONCE[:23], sealed, XAEAD_AAD) is None
    assert crypto.xaead_decrypt(XAEAD_KEY, XAEAD_NONCE, b"", XAEAD_AAD) is None
    assert crypto.xaead_decrypt(XAEAD_KEY, XAEAD_NONCE, b"short", XAEAD_AAD) is None


def test_blake2s_is_hash_of_concatenation() -> None:
    assert crypto.blake2s(b"ab", b"", b"cd") == hashlib.blake2s(b"abcd").digest()
    assert crypto.blake2s() == hashlib.blake2s(b"").digest()
    # RFC 7693 Appendix B: BLAKE2s-256("abc").
    assert crypto.blake2s(b"abc").hex() == (
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    )


def test_mac_is_keyed_blake2s_128() -> None:
    key = b"k" * 32
    out = crypto.mac(key, b"data")
    assert len(out) == 16
    assert out == hashlib.blake2s(b"data", key=key, digest_size=16).digest()


def test_hmac_and_kdf_follow_rfc2104_and_hkdf() -> None:
    key, data = b"\x01" * 32, b"input keying material"
    assert crypto.hmac_blake2s(key, data) == hmac.new(key, data, hashlib.blake2s).digest()
    prk = hmac.new(key, data, hashlib.blake2s).digest()
    t1 = hmac.new(prk, b"\x01", hashlib.blake2s).digest()
    t2 = hmac.new(prk, t1 + b"\x02", hashlib.blake2s).digest()
    t3 = hmac.new(prk, t2 + b"\x03", hashlib.blake2s).digest()
    assert crypto.kdf(key, data, 1) == (t1,)
    assert crypto.kdf(key, data, 2) == (t1, t2)
    assert crypto.kdf(key, data, 3) == (t1, t2, t3)
    with pytest.raises(ValueError):
        crypto.kdf(key, data, 4)


def test_nonce_layout() -> None:
    assert crypto.nonce(0) == bytes(12)
    assert crypto.nonce(1) == bytes(4) + b"\x01" + bytes(7)
    assert crypto.nonce(0x0102030405060708) == bytes(4) + bytes.fromhex("0807060504030201")
    assert crypto.nonce((1 << 64) - 1) == bytes(4) + b"\xff" * 8


def test_aead_round_trip_matches_library_with_wireguard_nonce() -> None:
    key = bytes(range(32))
    sealed = crypto.aead_encrypt(key, 7, b"hello", b"aad")
    assert sealed == ChaCha20Poly1305(key).encrypt(
        bytes(4) + (7).to_bytes(8, "little"), b"hello", b"aad"
    )
    assert crypto.aead_decrypt(key, 7, sealed, b"aad") == b"hello"
    assert crypto.aead_encrypt(key, 0, b"", b"") != crypto.aead_encrypt(key, 1, b"", b"")
    assert len(crypto.aead_encrypt(key, 0, b"", b"")) == 16


@pytest.mark.parametrize(
    "counter, ciphertext, aad",
    [
        (8, None, b"aad"),  # wrong counter
        (7, None, b"AAD"),  # wrong aad
        (7, b"", b"aad"),  # empty
        (7, b"x" * 15, b"aad"),  # shorter than a tag
        (7, b"x" * 21, b"aad"),  # garbage
    ],
)
def test_aead_decrypt_returns_none_on_bad_input(
    counter: int, ciphertext: bytes | None, aad: bytes
) -> None:
    key = bytes(range(32))
    sealed = crypto.aead_encrypt(key, 7, b"hello", b"aad")
    assert (
        crypto.aead_decrypt(key, counter, sealed if ciphertext is None else ciphertext, aad) is None
    )


def test_x25519_rfc7748_vector() -> None:
    assert crypto.public_key(ALICE_PRIV) == ALICE_PUB
    assert crypto.public_key(BOB_PRIV) == BOB_PUB
    assert crypto.dh(ALICE_PRIV, BOB_PUB) == SHARED
    assert crypto.dh(BOB_PRIV, ALICE_PUB) == SHARED


@pytest.mark.parametrize(
    "pub",
    [
        bytes(32),  # the identity: an all-zero shared secret
        b"\x01" + bytes(31),  # order-1 point
        bytes.fromhex(
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"
        ),  # order 8
        b"\x00" * 31,  # too short
        b"\x00" * 33,  # too long
    ],
)
def test_dh_returns_none_for_low_order_or_malformed(pub: bytes) -> None:
    assert crypto.dh(ALICE_PRIV, pub) is None


def test_dh_never_raises_on_arbitrary_32_bytes() -> None:
    seen_none = 0
    for i in range(256):
        pub = bytes([i]) * 32
        out = crypto.dh(ALICE_PRIV, pub)
        assert out is None or len(out) == 32
        seen_none += out is None
    assert seen_none >= 1  # 0x00…00 at least


def test_generate_private_key_clamps_and_uses_rng() -> None:
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return b"\xff" * n

    key = crypto.generate_private_key(rng)
    assert calls == [32]
    assert key[0] == 0xF8
    assert key[31] == 0x7F
    assert key[1:31] == b"\xff" * 30
    assert crypto.generate_private_key(lambda n: bytes(n))[31] == 0x40
    with pytest.raises(ValueError):
        crypto.generate_private_key(lambda n: bytes(n - 1))
