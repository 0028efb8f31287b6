"""What a config error may repeat, and which files the daemon trusts (security review items:
a typo printed the private key; a FIFO key file hung start-up; files owned or writable by
others were accepted; interface names reached /bin/sh; low-order peer keys passed)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.unit.test_config import OWN_PRIVATE, PEER_A, error_of, interface
from tunnelpy import config, keys
from tunnelpy.config import ConfigError

NOBODY = 65534


def _secret_fragments(key: str) -> list[str]:
    body = key.rstrip("=")
    return [body[i : i + 8] for i in range(0, len(body) - 8, 4)]


@pytest.mark.parametrize(
    "line",
    [
        f"PrivateKey: {OWN_PRIVATE}",  # a colon for '=': the key's own '=' ends the "key name"
        f"PrivateKey {OWN_PRIVATE}",
        f"PrivateKey:{OWN_PRIVATE}",
        f"{OWN_PRIVATE}",
        f"PresharedKey - {OWN_PRIVATE}",
    ],
)
def test_a_typo_never_repeats_the_key(line: str) -> None:
    message = error_of(f"[Interface]\n{line}\n")
    for frag in _secret_fragments(OWN_PRIVATE):
        assert frag not in message, message
    assert message.startswith("site.conf:2: ")


def test_the_typo_is_still_explained() -> None:
    message = error_of(f"[Interface]\nPrivateKey: {OWN_PRIVATE}\n")
    assert "'PrivateKey'" in message and "did you mean 'PrivateKey = …'?" in message


def test_a_huge_key_name_is_cheap_and_not_repeated() -> None:
    name = "A" * (20 << 20)
    t = time.perf_counter()
    message = error_of(interface() + f"{name}x: = 1\n")
    assert time.perf_counter() - t < 2.0
    assert len(message) < 400, len(message)
    t = time.perf_counter()
    message = error_of(interface() + f"{name} = 1\n")  # a well-formed but absurd name
    assert time.perf_counter() - t < 2.0 and len(message) < 400


def test_unknown_but_plain_key_names_are_still_named() -> None:
    assert "Interface.ListenPrt: unknown key (did you mean ListenPort?)" in error_of(
        interface("ListenPrt = 1")
    )


def test_oversized_config_file_refused(tmp_path: Path) -> None:
    p = tmp_path / "big.conf"
    with open(p, "wb") as f:
        f.write(interface().encode())
        f.truncate(config.MAX_CONFIG_BYTES + 10)
    os.chmod(p, 0o600)
    with pytest.raises(ConfigError, match="larger than 64 MiB"):
        config.load(str(p))


def _key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    kf = tmp_path / "site.key"
    kf.write_text(OWN_PRIVATE + "\n")
    os.chmod(kf, mode)
    return kf


def _conf(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "site.conf"
    p.write_text(text)
    os.chmod(p, mode)
    return p


def test_a_fifo_as_key_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "site.key"
    os.mkfifo(fifo, 0o600)
    p = _conf(tmp_path, f"[Interface]\nPrivateKeyFile = {fifo}\n")
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            config.load(str(p))
            result.append(None)
        except BaseException as e:  # noqa: BLE001 — handed to the main thread
            result.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # unblock the open() so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("PrivateKeyFile = <a FIFO> hung the parser")
    assert isinstance(result[0], ConfigError) and "not a regular file" in str(result[0])


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@needs_root
def test_key_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    kf = _key_file(tmp_path)
    os.chown(kf, NOBODY, NOBODY)
    p = _conf(tmp_path, f"[Interface]\nPrivateKeyFile = {kf}\n")
    with pytest.raises(ConfigError, match=f"owned by uid {NOBODY}"):
        config.load(str(p))


@needs_root
def test_config_owned_or_writable_by_others_is_refused(tmp_path: Path) -> None:
    p = _conf(tmp_path, interface())
    os.chown(p, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=f"owned by uid {NOBODY}"):
        config.load(str(p))
    os.chown(p, 0, NOBODY)
    os.chmod(p, 0o620)  # group-writable by nobody's group
    with pytest.raises(ConfigError, match="writable by others"):
        config.load(str(p))
    os.chmod(p, 0o602)
    with pytest.raises(ConfigError, match="writable by others"):
        config.load(str(p))
    os.chown(p, 0, 0)
    os.chmod(p, 0o600)
    assert config.load(str(p)).interface.name == "site"


@pytest.mark.parametrize("name", ["s;id", "a$(id)", "wg`x`", "wg 0", "w\0g", "wg'", "wg\\"])
def test_interface_names_are_wg_quicks_charset(name: str) -> None:
    assert config.valid_ifname(name) is not None
    assert "may only contain" in error_of(interface(f"Name = {name}")) or name in ("wg 0",)


@pytest.mark.parametrize("name", ["wg0", "site-a", "a_b", "x=y", "v+1", "a.b"])
def test_wg_quick_names_still_accepted(name: str) -> None:
    assert config.valid_ifname(name) is None


LOW_ORDER = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("key", LOW_ORDER)
def test_low_order_peer_keys_refused(key: bytes) -> None:
    assert keys.is_low_order(key)
    text = interface() + f"[Peer]\nPublicKey = {keys.encode_key(key)}\nAllowedIPs = 10.0.0.2/32\n"
    assert "low-order point" in error_of(text)


def test_real_keys_are_not_low_order() -> None:
    assert not keys.is_low_order(keys.decode_key(PEER_A))
