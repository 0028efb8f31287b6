"""Tests for tunnelpy.keys: text form and public keys identical to the wg tool's."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from tunnelpy import keys

# RFC 7748 §6.1 (Alice); `wg pubkey` prints the same public key for this private key.
RFC7748_PRIVATE = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
RFC7748_PUBLIC = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
# Made with `wg genkey | tee /dev/stderr | wg pubkey` (wireguard-tools v1.0.20210914).
WG_PRIVATE = "kDjG5G47LUPZsVlIWRDN+gTgsG7iPaYyiesK0G+f32c="
WG_PUBLIC = "5xRorQBUyfD0nGS4oLtjWGDc3UGd3u/DlaH3E7JQH3Y="


@pytest.mark.parametrize(
    ("private", "public"), [(RFC7748_PRIVATE, RFC7748_PUBLIC), (WG_PRIVATE, WG_PUBLIC)]
)
def test_public_from_private_known_pairs(private: str, public: str) -> None:
    assert keys.public_from_private(private) == public


@pytest.mark.skipif(shutil.which("wg") is None, reason="wg not installed")
def test_public_matches_wg_pubkey_for_generated_keys() -> None:
    for _ in range(3):
        private = keys.generate_private()
        out = subprocess.run(
            ["wg", "pubkey"], input=private + "\n", capture_output=True, text=True, check=True
        ).stdout.strip()
        assert keys.public_from_private(private) == out


@pytest.mark.skipif(shutil.which("wg") is None, reason="wg not installed")
def test_wg_genkey_output_decodes_and_is_clamped() -> None:
    out = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    raw = keys.decode_key(out.strip())
    assert keys.clamp(raw) == raw


def test_generate_private_is_clamped_and_random() -> None:
    a, b = keys.generate_private(), keys.generate_private()
    assert a != b
    raw = keys.decode_key(a)
    assert raw[0] & 7 == 0
    assert raw[31] & 0x80 == 0
    assert raw[31] & 0x40 == 0x40


def test_generate_psk() -> None:
    psk = keys.generate_psk()
    assert len(psk) == 44
    assert len(keys.decode_key(psk)) == 32
    assert psk != keys.generate_psk()


def test_encode_decode_round_trip() -> None:
    raw = bytes(range(32))
    assert keys.decode_key(keys.encode_key(raw)) == raw


def test_encode_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        keys.encode_key(b"\x00" * 31)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        RFC7748_PRIVATE[:-1],  # 43 characters
        RFC7748_PRIVATE + "=",  # 45 characters
        base64.b64encode(b"\x00" * 33).decode(),  # 33 bytes
        base64.b64encode(b"\x00" * 31).decode() + "AA",  # 44 characters of 31 bytes
        "!" * 43 + "=",  # not base64
        " " + RFC7748_PRIVATE[1:],  # whitespace is not silently skipped
        "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCp=",  # non-zero trailing bits: wg refuses
        "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCé=",  # non-ASCII
    ],
)
def test_decode_key_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="32-byte base64 key"):
        keys.decode_key(bad)


def test_clamp() -> None:
    assert keys.clamp(b"\xff" * 32) == b"\xf8" + b"\xff" * 30 + b"\x7f"
    assert keys.clamp(b"\x00" * 32) == b"\x00" * 31 + b"\x40"
