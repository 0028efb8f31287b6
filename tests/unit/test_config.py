"""Tests for tunnelpy.config: valid files, wg-quick files, key files and every error kind."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from tunnelpy import config, keys
from tunnelpy.config import ConfigError

# RFC 7748 §6.1 pairs (Alice, Bob) and one made with wg genkey / wg pubkey.
OWN_PRIVATE = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
OWN_PUBLIC = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
PEER_A = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08="
PEER_B = "5xRorQBUyfD0nGS4oLtjWGDc3UGd3u/DlaH3E7JQH3Y="
PSK = "+VBA3uEc0idAs6BLnop9sEpdUPr5KljAOxJ8SLK6lkQ="  # from wg genpsk


def interface(*extra: str) -> str:
    return "\n".join(["[Interface]", f"PrivateKey = {OWN_PRIVATE}", *extra]) + "\n"


def error_of(text: str, path: str = "site.conf") -> str:
    with pytest.raises(ConfigError) as info:
        config.parse(text, path)
    message = str(info.value)
    assert "\n" not in message
    return message


def expect_error(text: str, line: int, where: str, fragment: str) -> None:
    message = error_of(text)
    prefix = f"site.conf:{line}: {where}: " if where else f"site.conf:{line}: "
    assert message.startswith(prefix), message
    assert fragment in message, message


# ---------------------------------------------------------------------------------------------
# Valid files


FULL = f"""\
# tunnelpy site link, all keys
[Interface]
Name = site-a
PrivateKey = {OWN_PRIVATE}
ListenPort = 51820
Address = 10.10.0.1/24, fd10::1/64
Address = 10.10.1.1/24
MTU = 1380
FwMark = 0x51820
LogLevel = DEBUG

[Peer]
Name = site-b
PublicKey = {PEER_A}
PresharedKey = {PSK}
Endpoint = 203.0.113.7:51820
AllowedIPs = 10.10.0.2/32, 192.168.20.0/24
AllowedIPs = fd10::2/128
PersistentKeepalive = 25

[Peer]  # unnamed, v6 endpoint
PublicKey = {PEER_B}
Endpoint = [2001:db8::7]:4500
AllowedIPs = 10.10.0.3/32
"""


def test_full_valid_file() -> None:
    cfg = config.parse(FULL, "site.conf")
    assert cfg.path == "site.conf"
    assert cfg.warnings == ()
    i = cfg.interface
    assert i.name == "site-a"
    assert i.private_key == keys.decode_key(OWN_PRIVATE)
    assert i.public_key == keys.decode_key(OWN_PUBLIC)
    assert i.listen_port == 51820
    assert i.addresses == (
        ipaddress.ip_interface("10.10.0.1/24"),
        ipaddress.ip_interface("fd10::1/64"),
        ipaddress.ip_interface("10.10.1.1/24"),
    )
    assert i.mtu == 1380
    assert i.fwmark == 0x51820
    assert i.log_level == "debug"
    assert i.line == 2
    a, b = cfg.peers
    assert a.name == "site-b"
    assert a.public_key == keys.decode_key(PEER_A)
    assert a.preshared_key == keys.decode_key(PSK)
    assert a.endpoint == ("203.0.113.7", 51820)
    assert a.allowed_ips == (
        ipaddress.ip_network("10.10.0.2/32"),
        ipaddress.ip_network("192.168.20.0/24"),
        ipaddress.ip_network("fd10::2/128"),
    )
    assert a.persistent_keepalive == 25
    assert a.line == 12
    assert b.name == PEER_B[:8]
    assert b.preshared_key is None
    assert b.endpoint == ("2001:db8::7", 4500)
    assert b.persistent_keepalive is None
    assert b.line == 21


def test_secrets_are_not_in_repr() -> None:
    cfg = config.parse(FULL)
    text = repr(cfg)
    assert repr(keys.decode_key(OWN_PRIVATE)) not in text
    assert repr(keys.decode_key(PSK)) not in text


def test_defaults_and_minimal_file() -> None:
    cfg = config.parse(interface(), default_name="wg7")
    i = cfg.interface
    assert (i.name, i.listen_port, i.addresses, i.mtu, i.fwmark) == ("wg7", None, (), 1420, None)
    assert (i.dns, i.table, i.post_up, i.save_config, i.log_level) == ((), None, (), False, None)
    assert cfg.peers == ()


WG_QUICK = f"""\
[Interface]
Address = 10.200.100.8/24
DNS = 10.200.100.1, example.internal
DNS = fd00::53
PrivateKey = {OWN_PRIVATE}
Table = 1234
PreUp = echo pre-up
PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE
PostUp = ip rule add table 1234 priority 456, really
PreDown = echo pre-down
PostDown = iptables -D FORWARD -i %i -j ACCEPT # trailing comment dropped, as wg-quick does
SaveConfig = true

[Peer]
PublicKey = {PEER_A}
PresharedKey = {PSK}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = demo.wireguard.com:51820
"""


def test_real_wg_quick_file() -> None:
    cfg = config.parse(WG_QUICK, "/etc/wireguard/wg0.conf", default_name="wg0")
    i = cfg.interface
    assert i.name == "wg0"
    assert i.dns == ("10.200.100.1", "example.internal", "fd00::53")
    assert i.table == "1234"
    assert i.pre_up == ("echo pre-up",)
    assert i.post_up == (
        "iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE",
        "ip rule add table 1234 priority 456, really",  # commands are not split on commas
    )
    assert i.pre_down == ("echo pre-down",)
    assert i.post_down == ("iptables -D FORWARD -i %i -j ACCEPT",)
    assert i.save_config is True
    assert cfg.warnings == (
        "/etc/wireguard/wg0.conf:12: Interface.SaveConfig: "
        "SaveConfig is not supported; the file is never rewritten",
    )
    (peer,) = cfg.peers
    assert peer.endpoint == ("demo.wireguard.com", 51820)  # kept unresolved
    assert peer.allowed_ips == (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def test_keys_and_sections_are_case_insensitive() -> None:
    text = f"[INTERFACE]\nprivatekey={OWN_PRIVATE}\nlistenPORT=7\n[peer]\nPUBLICKEY = {PEER_A}\n"
    cfg = config.parse(text)
    assert cfg.interface.listen_port == 7
    assert cfg.peers[0].public_key == keys.decode_key(PEER_A)


def test_comments_blank_lines_crlf_and_bom() -> None:
    text = "\ufeff# head\r\n\r\n" + interface("ListenPort = 9 # port", "  # indented comment")
    assert config.parse(text.replace("\n", "\r\n")).interface.listen_port == 9


def test_allowed_ips_host_bits_normalized_silently() -> None:
    cfg = config.parse(
        interface("[Peer]", f"PublicKey = {PEER_A}", "AllowedIPs = 10.0.0.1/24, 10.9.9.9")
    )
    assert cfg.peers[0].allowed_ips == (
        ipaddress.ip_network("10.0.0.0/24"),
        ipaddress.ip_network("10.9.9.9/32"),
    )
    assert cfg.warnings == ()


def test_empty_allowed_ips() -> None:
    cfg = config.parse(interface("[Peer]", f"PublicKey = {PEER_A}", "AllowedIPs ="))
    assert cfg.peers[0].allowed_ips == ()


def test_overlapping_allowed_ips_warn() -> None:
    cfg = config.parse(
        interface(
            "[Peer]",
            f"PublicKey = {PEER_A}",
            "AllowedIPs = 10.0.0.0/24",
            "[Peer]",
            f"PublicKey = {PEER_B}",
            "AllowedIPs = 10.0.0.0/24",
        ),
        "site.conf",
    )
    assert len(cfg.warnings) == 1
    assert cfg.warnings[0].startswith("site.conf:8: Peer.AllowedIPs: 10.0.0.0/24 is also in peer")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("off", None),
        ("0", None),
        ("0x0", None),
        ("42", 42),
        ("0xFF", 255),
        ("4294967295", 2**32 - 1),
    ],
)
def test_fwmark_values(value: str, expected: int | None) -> None:
    assert config.parse(interface(f"FwMark = {value}")).interface.fwmark == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("off", None), ("0", None), ("25", 25), ("65535", 65535)]
)
def test_keepalive_values(value: str, expected: int | None) -> None:
    cfg = config.parse(
        interface("[Peer]", f"PublicKey = {PEER_A}", f"PersistentKeepalive = {value}")
    )
    assert cfg.peers[0].persistent_keepalive == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("198.51.100.1:1", ("198.51.100.1", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("[fe80::1%eth0]:51820", ("fe80::1%eth0", 51820)),
        ("vpn.example.com:51820", ("vpn.example.com", 51820)),
        ("localhost:5", ("localhost", 5)),
    ],
)
def test_endpoint_values(value: str, expected: tuple[str, int]) -> None:
    cfg = config.parse(interface("[Peer]", f"PublicKey = {PEER_A}", f"Endpoint = {value}"))
    assert cfg.peers[0].endpoint == expected


def test_listen_port_zero_means_any() -> None:
    assert config.parse(interface("ListenPort = 0")).interface.listen_port is None


def test_v4_only_small_mtu_ok() -> None:
    assert config.parse(interface("Address = 10.0.0.1/24", "MTU = 576")).interface.mtu == 576


def test_save_config_false_no_warning() -> None:
    cfg = config.parse(interface("SaveConfig = false"))
    assert cfg.interface.save_config is False
    assert cfg.warnings == ()


# ---------------------------------------------------------------------------------------------
# Errors: one per kind, each checking file, line and key


def test_error_missing_interface() -> None:
    expect_error(f"[Peer]\nPublicKey = {PEER_A}\n", 1, "Interface", "missing [Interface] section")


def test_error_empty_file() -> None:
    expect_error("", 1, "Interface", "missing [Interface] section")


def test_error_interface_twice() -> None:
    expect_error(interface() + "[Interface]\n", 3, "Interface", "given twice (first on line 1)")


def test_error_unknown_section() -> None:
    expect_error(interface("[Zone lab]", "VNI = 100"), 3, "Zone", "unknown section")


def test_error_unknown_section_suggests() -> None:
    expect_error(interface("[Peers]"), 3, "Peers", "did you mean [Peer]?")


def test_error_section_name_not_allowed() -> None:
    expect_error(interface("[Peer site-b]"), 3, "Peer", "takes no name")


def test_error_malformed_header() -> None:
    expect_error(interface("[Peer"), 3, "", "malformed section header")


def test_error_line_without_equals() -> None:
    expect_error(interface("ListenPort 51820"), 3, "", "expected 'Key = Value'")


def test_error_key_before_section() -> None:
    expect_error("ListenPort = 1\n" + interface(), 1, "ListenPort", "before any section")


def test_error_unknown_key_suggests() -> None:
    text = interface("[Peer]", f"PublicKey = {PEER_A}", "AllowedIP = 10.0.0.0/24")
    assert error_of(text) == "site.conf:5: Peer.AllowedIP: unknown key (did you mean AllowedIPs?)"


def test_error_key_in_wrong_section() -> None:
    expect_error(interface("Endpoint = 1.2.3.4:5"), 3, "Interface.Endpoint", "belongs in [Peer]")


def test_error_key_in_wrong_section_beats_near_spelling() -> None:
    text = interface(f"PublicKey = {PEER_A}")
    assert error_of(text) == (
        "site.conf:3: Interface.PublicKey: unknown key in [Interface] (PublicKey belongs in [Peer])"
    )


def test_error_unknown_key_lists_valid_ones() -> None:
    expect_error(interface("Zzzzzz = 1"), 3, "Interface.Zzzzzz", "expected one of Name, PrivateKey")


def test_error_key_twice() -> None:
    expect_error(
        interface("ListenPort = 1", "listenport = 2"),
        4,
        "Interface.ListenPort",
        "given twice (first on line 3)",
    )


def test_error_bad_private_key() -> None:
    message = error_of(interface().replace(OWN_PRIVATE, OWN_PRIVATE[:-2] + "="))
    assert message.startswith("site.conf:2: Interface.PrivateKey: expected a 32-byte base64 key")
    assert OWN_PRIVATE[:10] not in message  # a secret is never echoed


def test_error_bad_public_key() -> None:
    expect_error(
        interface("[Peer]", "PublicKey = abc"), 4, "Peer.PublicKey", "expected a 32-byte base64 key"
    )


def test_error_bad_preshared_key() -> None:
    expect_error(
        interface("[Peer]", f"PublicKey = {PEER_A}", "PresharedKey = x"),
        5,
        "Peer.PresharedKey",
        "32-byte base64",
    )


def test_error_missing_private_key() -> None:
    expect_error(
        "[Interface]\nListenPort = 1\n", 1, "Interface.PrivateKey", "missing, expected PrivateKey"
    )


def test_error_private_key_and_file() -> None:
    expect_error(
        interface("PrivateKeyFile = k"),
        3,
        "Interface.PrivateKeyFile",
        "PrivateKey is already given on line 2",
    )


def test_error_preshared_key_and_file() -> None:
    expect_error(
        interface(
            "[Peer]", f"PublicKey = {PEER_A}", f"PresharedKey = {PSK}", "PresharedKeyFile = k"
        ),
        6,
        "Peer.PresharedKeyFile",
        "PresharedKey is already given on line 5",
    )


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a b", "a:b", ".", ".."])
def test_error_bad_interface_name(name: str) -> None:
    expect_error(interface(f"Name = {name}"), 3, "Interface.Name", "not a valid interface name")


def test_error_bad_default_name() -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(
            interface(), "my very long site name.conf", default_name="my very long site name"
        )
    assert str(info.value).startswith(
        "my very long site name.conf:1: Interface.Name: the default name"
    )


def test_fifteen_char_name_ok() -> None:
    assert config.parse(interface("Name = " + "a" * 15)).interface.name == "a" * 15


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("65536", "out of range"), ("-1", "not a number"), ("x", "not a number")],
)
def test_error_listen_port(value: str, fragment: str) -> None:
    expect_error(interface(f"ListenPort = {value}"), 3, "Interface.ListenPort", fragment)


@pytest.mark.parametrize("value", ["10.0.0.300/24", "10.0.0.1/33", "nonsense"])
def test_error_address(value: str) -> None:
    expect_error(
        interface(f"Address = 10.0.0.1/24, {value}"), 3, "Interface.Address", "not an address"
    )


def test_error_empty_list_item() -> None:
    expect_error(
        interface("Address = 10.0.0.1/24,,10.0.0.2/24"), 3, "Interface.Address", "empty item"
    )


@pytest.mark.parametrize("value", ["575", "65536", "big"])
def test_error_mtu_range(value: str) -> None:
    expect_error(interface(f"MTU = {value}"), 3, "Interface.MTU", "expected an MTU 576-65535")


def test_error_mtu_too_small_for_ipv6() -> None:
    expect_error(
        interface("MTU = 1200", "Address = fd00::1/64"), 3, "Interface.MTU", "at least 1280"
    )


@pytest.mark.parametrize("value", ["0x", "0x1ffffffff", "4294967296", "on", "-1"])
def test_error_fwmark(value: str) -> None:
    expect_error(interface(f"FwMark = {value}"), 3, "Interface.FwMark", "expected a mark")


def test_error_save_config_not_bool() -> None:
    expect_error(interface("SaveConfig = yes"), 3, "Interface.SaveConfig", "expected true or false")


def test_error_log_level() -> None:
    expect_error(interface("LogLevel = warn"), 3, "Interface.LogLevel", "did you mean warning?")


def test_error_table_two_words() -> None:
    expect_error(interface("Table = a b"), 3, "Interface.Table", "expected one word")


def test_error_missing_public_key() -> None:
    expect_error(interface("[Peer]", "AllowedIPs = 10.0.0.0/24"), 3, "Peer.PublicKey", "missing")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("203.0.113.7", "has no port"),
        ("203.0.113.7:", "not a number"),
        ("203.0.113.7:0", "out of range"),
        ("203.0.113.7:65536", "out of range"),
        ("[fd00::1]", "has no port"),
        ("[fd00::1:51820", "no closing ']'"),
        ("fd00::1:51820", "needs brackets"),
        ("[host.example]:1", "not an IPv6 address"),
        ("bad host:1", "not a host name"),
    ],
)
def test_error_endpoint(value: str, fragment: str) -> None:
    expect_error(
        interface("[Peer]", f"PublicKey = {PEER_A}", f"Endpoint = {value}"),
        5,
        "Peer.Endpoint",
        fragment,
    )


def test_error_allowed_ips() -> None:
    expect_error(
        interface(
            "[Peer]",
            f"PublicKey = {PEER_A}",
            "AllowedIPs = 10.0.0.0/24",
            "AllowedIPs = 10.1.0.0/40",
        ),
        6,
        "Peer.AllowedIPs",
        "not a network",
    )


@pytest.mark.parametrize(
    ("value", "fragment"), [("65536", "out of range"), ("always", "not a number")]
)
def test_error_keepalive(value: str, fragment: str) -> None:
    expect_error(
        interface("[Peer]", f"PublicKey = {PEER_A}", f"PersistentKeepalive = {value}"),
        5,
        "Peer.PersistentKeepalive",
        fragment,
    )


def test_error_duplicate_peer() -> None:
    text = interface(
        "[Peer]", f"PublicKey = {PEER_A}", "[Peer]", "Name = other", f"PublicKey = {PEER_A}"
    )
    expect_error(text, 7, "Peer.PublicKey", "already defined on line 3")


def test_error_peer_is_ourselves() -> None:
    expect_error(
        interface("[Peer]", f"PublicKey = {OWN_PUBLIC}"), 4, "Peer.PublicKey", "own public key"
    )


def test_error_duplicate_peer_names() -> None:
    text = interface(
        "[Peer]", "Name = b", f"PublicKey = {PEER_A}", "[Peer]", f"PublicKey = {PEER_B}", "Name = b"
    )
    expect_error(text, 8, "Peer.Name", "already the name of the peer on line 3")


def test_error_peer_name_with_comma() -> None:
    expect_error(
        interface("[Peer]", "Name = a,b", f"PublicKey = {PEER_A}"), 4, "Peer.Name", "without commas"
    )


def test_error_message_is_one_line_for_control_characters() -> None:
    message = error_of(interface("Table = a\x0bb"))
    assert "\\x0b" in message


# ---------------------------------------------------------------------------------------------
# Key files and load()


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_load_uses_stem_and_key_files_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    write(tmp_path / "keys" / "own.key", OWN_PRIVATE + "\n", 0o600)
    write(tmp_path / "keys" / "b.psk", PSK + "\n", 0o400)
    conf = write(
        tmp_path / "siteb.conf",
        f"[Interface]\nPrivateKeyFile = keys/own.key\n[Peer]\nPublicKey = {PEER_A}\n"
        "PresharedKeyFile = keys/b.psk\n",
        0o644,
    )
    cfg = config.load(str(conf))
    assert cfg.interface.name == "siteb"
    assert cfg.interface.private_key == keys.decode_key(OWN_PRIVATE)
    assert cfg.peers[0].preshared_key == keys.decode_key(PSK)
    assert cfg.warnings == ()  # no secrets inline, so the config's own mode does not matter


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    key = write(tmp_path / "own.key", OWN_PRIVATE + "\n", mode)
    conf = write(tmp_path / "site.conf", "[Interface]\nPrivateKeyFile = own.key\n", 0o600)
    with pytest.raises(ConfigError) as info:
        config.load(str(conf))
    assert str(info.value) == (
        f"{conf}:2: Interface.PrivateKeyFile: {key} is accessible by group or others "
        f"(mode {mode:04o}), expected mode 0600 (chmod 600 {key})"
    )


def test_key_file_missing(tmp_path: Path) -> None:
    conf = write(tmp_path / "site.conf", "[Interface]\nPrivateKeyFile = nope.key\n", 0o600)
    with pytest.raises(
        ConfigError, match=r"site.conf:2: Interface.PrivateKeyFile: cannot open .*nope.key"
    ):
        config.load(str(conf))


def test_key_file_with_junk(tmp_path: Path) -> None:
    write(tmp_path / "own.key", OWN_PRIVATE + "\nmore\n", 0o600)
    conf = write(
        tmp_path / "site.conf",
        f"[Interface]\nPrivateKey = {OWN_PRIVATE}\n[Peer]\nPublicKey = {PEER_A}\nPresharedKeyFile = own.key\n",
        0o600,
    )
    with pytest.raises(
        ConfigError, match=r"site.conf:5: Peer.PresharedKeyFile: .* does not hold one 32-byte"
    ):
        config.load(str(conf))


def test_key_file_is_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    conf = write(tmp_path / "site.conf", "[Interface]\nPrivateKeyFile = d\n", 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        config.load(str(conf))


def test_parse_reads_key_file_relative_to_path(tmp_path: Path) -> None:
    write(tmp_path / "own.key", OWN_PRIVATE, 0o600)
    cfg = config.parse("[Interface]\nPrivateKeyFile = own.key\n", str(tmp_path / "x.conf"))
    assert cfg.interface.private_key == keys.decode_key(OWN_PRIVATE)


def test_load_warns_when_inline_secrets_are_world_readable(tmp_path: Path) -> None:
    conf = write(tmp_path / "site.conf", interface(), 0o644)
    cfg = config.load(str(conf))
    assert cfg.warnings == (
        f"{conf}: holds secret keys but is accessible by group or others (mode 0644), "
        f"expected chmod 600 {conf}",
    )
    write(conf, interface(), 0o600)
    assert config.load(str(conf)).warnings == ()


def test_load_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.conf"
    with pytest.raises(ConfigError) as info:
        config.load(str(missing))
    assert str(info.value) == f"{missing}: cannot read the config: No such file or directory"


def test_load_bad_utf8(tmp_path: Path) -> None:
    conf = tmp_path / "site.conf"
    conf.write_bytes(interface().encode() + b"Table = \xff\n")
    with pytest.raises(ConfigError) as info:
        config.load(str(conf))
    assert str(info.value) == f"{conf}:3: not valid UTF-8 text"


def test_example_site_conf_parses(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "conf" / "site.conf"
    # The example points at /etc and holds a placeholder instead of a usable key: fill both in.
    write(tmp_path / "site.key", OWN_PRIVATE, 0o600)
    text = example.read_text()
    text = text.replace("/etc/tunnelpy/site.key", str(tmp_path / "site.key"))
    text = text.replace("REPLACE-WITH-SITE-B-PUBLIC-KEY", PEER_A)
    cfg = config.parse(text, str(example))
    assert cfg.warnings == ()
    assert cfg.interface.name == "site"
    assert cfg.interface.listen_port == 51820
    (peer,) = cfg.peers
    assert peer.name == "site-b"
    assert peer.endpoint == ("site-b.example.net", 51820)
    assert len(peer.allowed_ips) == 3
    assert peer.persistent_keepalive == 25


def test_example_site_conf_placeholder_is_refused() -> None:
    example = Path(__file__).resolve().parents[2] / "conf" / "site.conf"
    text = example.read_text().replace(
        "PrivateKeyFile = /etc/tunnelpy/site.key", f"PrivateKey = {OWN_PRIVATE}"
    )
    with pytest.raises(ConfigError, match="Peer.PublicKey: expected a 32-byte base64 key"):
        config.parse(text, "site.conf")


def test_values_may_contain_equals_signs() -> None:
    cfg = config.parse(interface("PostUp = sysctl -w net.ipv4.ip_forward=1", "Table = off"))
    assert cfg.interface.post_up == ("sysctl -w net.ipv4.ip_forward=1",)
    assert cfg.interface.table == "off"


# ---------------------------------------------------------------------------------------------
# Transport = vxlan


def vxlan_file(*peer_lines: str, iface: tuple[str, ...] = ()) -> str:
    lines = ["[Interface]", "Transport = vxlan", *iface]
    if peer_lines:
        lines += ["[Peer]", *peer_lines]
    return "\n".join(lines) + "\n"


def test_transport_default_is_wireguard() -> None:
    cfg = config.parse(interface())
    assert cfg.interface.transport == "wireguard"
    assert cfg.segments == ()


def test_transport_vxlan_defaults() -> None:
    cfg = config.parse(
        vxlan_file("Name = b", "Endpoint = 192.0.2.2:4789", "AllowedIPs = 10.0.0.0/24")
    )
    i = cfg.interface
    assert i.transport == "vxlan"
    assert i.private_key == b""
    assert i.public_key == b""
    assert i.listen_port == 4789
    (peer,) = cfg.peers
    assert (peer.public_key, peer.name, peer.endpoint) == (b"", "b", ("192.0.2.2", 4789))
    assert peer.preshared_key is None


def test_transport_vxlan_peers_before_interface_and_case() -> None:
    text = "[Peer]\nName = b\nEndpoint = 192.0.2.2:4789\n[Interface]\nTransport = VXLAN\n"
    text += "ListenPort = 8472\n[Peer]\nName = c\nEndpoint = 192.0.2.3:8472\n"
    cfg = config.parse(text)
    assert cfg.interface.listen_port == 8472
    assert [p.name for p in cfg.peers] == ["b", "c"]


def test_transport_explicit_wireguard_unchanged() -> None:
    cfg = config.parse(interface("Transport = WireGuard"))
    assert cfg.interface.transport == "wireguard"
    assert cfg.interface.public_key == keys.decode_key(OWN_PUBLIC)


def test_error_transport_unknown() -> None:
    expect_error(
        interface("Transport = gre"), 3, "Interface.Transport", "expected wireguard or vxlan"
    )


def test_error_vxlan_private_key() -> None:
    expect_error(
        vxlan_file(iface=(f"PrivateKey = {OWN_PRIVATE}",)),
        3,
        "Interface.PrivateKey",
        "plain VXLAN has no keys",
    )


def test_error_vxlan_private_key_file(tmp_path: Path) -> None:
    write(tmp_path / "k", OWN_PRIVATE, 0o600)
    expect_error(
        vxlan_file(iface=(f"PrivateKeyFile = {tmp_path / 'k'}",)),
        3,
        "Interface.PrivateKeyFile",
        "plain VXLAN has no keys",
    )


def test_error_vxlan_listen_port_zero() -> None:
    expect_error(
        vxlan_file(iface=("ListenPort = 0",)), 3, "Interface.ListenPort", "needs a fixed port"
    )


@pytest.mark.parametrize(
    "line", [f"PublicKey = {PEER_A}", f"PresharedKey = {PSK}"], ids=["public", "preshared"]
)
def test_error_vxlan_peer_keys(line: str) -> None:
    key = line.split()[0]
    expect_error(
        vxlan_file("Name = b", line, "Endpoint = 192.0.2.2:4789"),
        5,
        f"Peer.{key}",
        "plain VXLAN peers have no keys",
    )


def test_error_vxlan_peer_preshared_key_file(tmp_path: Path) -> None:
    write(tmp_path / "psk", PSK, 0o600)
    expect_error(
        vxlan_file("Name = b", f"PresharedKeyFile = {tmp_path / 'psk'}", "Endpoint = 192.0.2.2:1"),
        5,
        "Peer.PresharedKeyFile",
        "plain VXLAN peers have no keys",
    )


def test_error_vxlan_peer_needs_endpoint() -> None:
    expect_error(vxlan_file("Name = b"), 3, "Peer.Endpoint", "needs Endpoint = host:port")


def test_error_vxlan_peer_needs_name() -> None:
    expect_error(vxlan_file("Endpoint = 192.0.2.2:4789"), 3, "Peer.Name", "needs Name = label")


def test_error_vxlan_duplicate_peer_names() -> None:
    text = vxlan_file("Name = b", "Endpoint = 192.0.2.2:4789")
    text += "[Peer]\nName = b\nEndpoint = 192.0.2.3:4789\n"
    expect_error(text, 7, "Peer.Name", "already the name of the peer on line 3")


# ---------------------------------------------------------------------------------------------
# [Segment NAME]


def peers_ab() -> list[str]:
    return [
        "[Peer]", "Name = a", f"PublicKey = {PEER_A}",
        "[Peer]", "Name = b", f"PublicKey = {PEER_B}",
    ]  # fmt: skip


def seg_file(*lines: str) -> str:
    """[Interface] (lines 1-2), peers a and b (lines 3-8), then ``lines`` from line 9."""
    return interface(*peers_ab(), *lines)


def test_segment_defaults() -> None:
    cfg = config.parse(seg_file("[Segment lab]", "VNI = 100"))
    (seg,) = cfg.segments
    assert seg == config.SegmentConfig(
        name="lab",
        vni=100,
        device="lab",
        bridge=None,
        peers=None,
        mtu=None,
        addresses=(),
        hub=False,
        static_macs=(),
        aging=300.0,
        max_fdb=4096,
        line=9,
    )


def test_segment_all_keys_and_several() -> None:
    cfg = config.parse(
        seg_file(
            "[Segment lab]",
            "VNI = 16777215",
            "Device = lab0",
            "Bridge = br-lab",
            "Peers = a, b",
            "MTU = 1500",
            "Address = 10.9.0.1/24, fd09::1/64",
            "Address = 10.9.1.1/24",
            "Hub = yes",
            "MAC = 02:00:00:00:00:0A@a",
            "MAC = 02:00:00:00:00:0b@b, 02:00:00:00:00:0c@b",
            "AgingTime = 12.5",
            "MaxFDBEntries = 10",
            "[Segment other]",
            "VNI = 1",
            "Peers = b",
            "Hub = off",
        )
    )
    lab, other = cfg.segments
    assert (lab.name, lab.vni, lab.device, lab.bridge) == ("lab", 16777215, "lab0", "br-lab")
    assert lab.peers == ("a", "b")
    assert lab.mtu == 1500
    assert [str(a) for a in lab.addresses] == ["10.9.0.1/24", "fd09::1/64", "10.9.1.1/24"]
    assert lab.hub is True
    assert lab.static_macs == (
        (bytes.fromhex("02000000000a"), "a"),
        (bytes.fromhex("02000000000b"), "b"),
        (bytes.fromhex("02000000000c"), "b"),
    )
    assert (lab.aging, lab.max_fdb) == (12.5, 10)
    assert (other.vni, other.device, other.peers, other.hub, other.line) == (
        1,
        "other",
        ("b",),
        False,
        22,
    )


def test_segment_empty_peers_means_none() -> None:
    (seg,) = config.parse(seg_file("[Segment lab]", "VNI = 5", "Peers =")).segments
    assert seg.peers == ()


def test_segment_with_vxlan_transport() -> None:
    text = vxlan_file("Name = b", "Endpoint = 192.0.2.2:4789") + "[Segment lab]\nVNI = 7\n"
    (seg,) = config.parse(text).segments
    assert (seg.vni, seg.peers) == (7, None)


def test_error_segment_needs_name() -> None:
    expect_error(seg_file("[Segment]"), 9, "Segment", "needs a name")


def test_error_segment_missing_vni() -> None:
    expect_error(seg_file("[Segment lab]", "Device = x"), 9, "Segment.VNI", "missing")


@pytest.mark.parametrize("value", ["0", "16777216", "x", "-1"])
def test_error_segment_vni_range(value: str) -> None:
    expect_error(
        seg_file("[Segment lab]", f"VNI = {value}"), 10, "Segment.VNI", "expected a VNI 1-16777215"
    )


def test_error_segment_vni_twice() -> None:
    expect_error(
        seg_file("[Segment a1]", "VNI = 5", "[Segment a2]", "VNI = 5"),
        12,
        "Segment.VNI",
        "5 is already the VNI of segment 'a1' (line 9)",
    )


def test_error_segment_name_twice() -> None:
    expect_error(
        seg_file("[Segment a1]", "VNI = 5", "[Segment a1]", "VNI = 6"),
        11,
        "Segment",
        "given twice (first on line 9)",
    )


def test_error_segment_device_twice() -> None:
    expect_error(
        seg_file("[Segment a1]", "VNI = 5", "[Segment a2]", "VNI = 6", "Device = a1"),
        13,
        "Segment.Device",
        "'a1' is already the device of segment 'a1'",
    )


def test_error_segment_device_is_interface() -> None:
    text = seg_file("[Segment lab]", "VNI = 5", "Device = tp0")
    expect_error(text, 11, "Segment.Device", "is the [Interface] Name")


def test_error_segment_bad_device() -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", "Device = a/b"),
        11,
        "Segment.Device",
        "not a valid interface name",
    )


def test_error_segment_default_device_invalid() -> None:
    expect_error(
        seg_file("[Segment a-very-long-segment-name]", "VNI = 5"),
        9,
        "Segment.Device",
        "the default device name",
    )


def test_error_segment_bad_bridge() -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", "Bridge = x y"),
        11,
        "Segment.Bridge",
        "not a valid interface name",
    )


def test_error_segment_bridge_is_own_device() -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", "Bridge = lab"),
        11,
        "Segment.Bridge",
        "expected a bridge's name",
    )


def test_error_segment_unknown_peer() -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", "Peers = a", "Peers = c"),
        12,
        "Segment.Peers",
        "'c' is not the Name of any [Peer]",
    )


def test_error_segment_unknown_peer_suggests() -> None:
    text = interface(
        "[Peer]",
        "Name = site-b",
        f"PublicKey = {PEER_A}",
        "[Segment lab]",
        "VNI = 5",
        "Peers = site-c",
    )
    expect_error(text, 8, "Segment.Peers", "did you mean site-b?")


@pytest.mark.parametrize("value", ["0", "67", "65536", "big"])
def test_error_segment_mtu(value: str) -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", f"MTU = {value}"),
        11,
        "Segment.MTU",
        "expected an MTU 68-65535",
    )


def test_error_segment_mtu_too_small_for_ipv6() -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", "MTU = 1000", "Address = fd00::1/64"),
        11,
        "Segment.MTU",
        "too small for IPv6",
    )


def test_error_segment_address() -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", "Address = 10.0.0.300/24"),
        11,
        "Segment.Address",
        "is not an address",
    )


def test_error_segment_hub() -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", "Hub = maybe"), 11, "Segment.Hub", "expected yes or no"
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("02:00:00:00:00:01", "expected aa:bb:cc:dd:ee:ff@peername"),
        ("02:00:00:00:00:01@", "expected aa:bb:cc:dd:ee:ff@peername"),
        ("02:00:00:00:01@a", "is not a MAC address"),
        ("02-00-00-00-00-01@a", "is not a MAC address"),
        ("01:00:5e:00:00:01@a", "expected a unicast MAC"),
        ("00:00:00:00:00:00@a", "expected a unicast MAC"),
    ],
)
def test_error_segment_mac_syntax(value: str, fragment: str) -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", f"MAC = {value}"), 11, "Segment.MAC", fragment
    )


def test_error_segment_mac_peer_not_in_segment() -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", "Peers = a", "MAC = 02:00:00:00:00:01@b"),
        12,
        "Segment.MAC",
        "peer 'b' is not in segment 'lab'",
    )


def test_error_segment_mac_unknown_peer() -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", "MAC = 02:00:00:00:00:01@zz"),
        11,
        "Segment.MAC",
        "peer 'zz' is not in segment 'lab'",
    )


def test_error_segment_mac_twice() -> None:
    expect_error(
        seg_file(
            "[Segment lab]", "VNI = 5", "MAC = 02:00:00:00:00:01@a", "MAC = 02:00:00:00:00:01@b"
        ),
        12,
        "Segment.MAC",
        "already given on line 11",
    )


@pytest.mark.parametrize("value", ["-1", "x", "nan", "inf", "2000000"])
def test_error_segment_aging(value: str) -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", f"AgingTime = {value}"),
        11,
        "Segment.AgingTime",
        "expected seconds",
    )


@pytest.mark.parametrize("value", ["0", "x", "99999999"])
def test_error_segment_max_fdb(value: str) -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", f"MaxFDBEntries = {value}"),
        11,
        "Segment.MaxFDBEntries",
        "expected a number of entries",
    )


def test_error_segment_unknown_key() -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", "Vni2 = 3"), 11, "Segment.Vni2", "unknown key"
    )


# ---------------------------------------------------------------------------------------------
# Topology sections


TOPO = """\
[Bridge br-lab]
Ports = eth1
STP = yes
VLANFiltering = on
Address = 10.20.0.1/24
MTU = 1450
[Veth v-lab]
Peer = v-lab-ns
Namespace = lab1
Master = br-lab
PeerAddress = 10.20.0.2/24
[VLAN eth1.20]
Link = eth1
Id = 20
Protocol = 802.1AD
[VXLAN vx100]
VNI = 100
Remote = 192.0.2.9
Local = 192.0.2.1
Link = eth0
[MACVLAN mv0]
Link = eth2
Mode = source
SourceMACs = 02:00:00:00:00:01, 02:00:00:00:00:02
MACAddress = 02:00:00:00:00:99
Namespace = lab2
[IPVLAN ipv0]
Link = eth3
Mode = L2
[Bond bond0]
Mode = 802.3ad
Miimon = 50
Ports = eth4, eth5
Primary = eth5
[Team team0]
Runner = lacp
Ports = eth6
"""


def topo_file(*lines: str) -> str:
    """[Interface] on lines 1-2, then ``lines`` from line 3."""
    return interface(*lines)


def test_topology_all_sections() -> None:
    cfg = config.parse(interface() + TOPO)
    kinds = [(link.kind, link.name) for link in cfg.topology]
    assert kinds == [
        ("bridge", "br-lab"),
        ("veth", "v-lab"),
        ("vlan", "eth1.20"),
        ("vxlan", "vx100"),
        ("macvlan", "mv0"),
        ("ipvlan", "ipv0"),
        ("bond", "bond0"),
        ("team", "team0"),
    ]
    br, veth, vlan, vx, mv, ipv, bond, team = cfg.topology
    assert isinstance(br, config.BridgeConfig)
    assert (br.ports, br.stp, br.vlan_filtering, br.mtu) == (("eth1",), True, True, 1450)
    assert [str(a) for a in br.addresses] == ["10.20.0.1/24"]
    assert isinstance(veth, config.VethConfig)
    assert (veth.peer, veth.namespace, veth.master) == ("v-lab-ns", "lab1", "br-lab")
    assert [str(a) for a in veth.peer_addresses] == ["10.20.0.2/24"]
    assert isinstance(vlan, config.VLANConfig)
    assert (vlan.parent, vlan.vlan_id, vlan.protocol) == ("eth1", 20, "802.1ad")
    assert isinstance(vx, config.VXLANConfig)
    assert (vx.vni, str(vx.remote), str(vx.local), vx.dst_port, vx.link) == (
        100, "192.0.2.9", "192.0.2.1", 4789, "eth0",
    )  # fmt: skip
    assert isinstance(mv, config.MACVLANConfig)
    assert mv.mode == "source" and mv.namespace == "lab2"
    assert mv.source_macs == (bytes.fromhex("020000000001"), bytes.fromhex("020000000002"))
    assert mv.mac == bytes.fromhex("020000000099")
    assert isinstance(ipv, config.IPVLANConfig) and ipv.mode == "l2"
    assert isinstance(bond, config.BondConfig)
    assert (bond.mode, bond.miimon, bond.ports, bond.primary) == (
        "802.3ad",
        50,
        ("eth4", "eth5"),
        "eth5",
    )
    assert isinstance(team, config.TeamConfig)
    assert (team.runner, team.ports) == ("lacp", ("eth6",))
    assert cfg.warnings == ()


def test_topology_defaults() -> None:
    cfg = config.parse(
        topo_file("[MACVLAN m]", "Link = e", "[IPVLAN i]", "Link = e2", "[Bond b]", "[Team t]",
                  "[VXLAN x]", "VNI = 1", "[Bridge br]")
    )  # fmt: skip
    m, i, b, t, x, br = cfg.topology
    assert isinstance(m, config.MACVLANConfig) and m.mode == "bridge" and m.namespace is None
    assert isinstance(i, config.IPVLANConfig) and i.mode == "l3"
    assert isinstance(b, config.BondConfig) and (b.mode, b.miimon, b.ports) == (
        "active-backup",
        100,
        (),
    )
    assert isinstance(t, config.TeamConfig) and t.runner == "activebackup"
    assert isinstance(x, config.VXLANConfig) and (x.dst_port, x.remote, x.link) == (
        4789,
        None,
        None,
    )
    assert isinstance(br, config.BridgeConfig) and (br.stp, br.vlan_filtering) == (False, False)


def test_topology_segment_bridge_and_tap_port() -> None:
    cfg = config.parse(
        interface(*peers_ab(), "[Segment lab]", "VNI = 5", "Bridge = br-lab", "[Bridge br-lab]")
    )
    assert cfg.segments[0].bridge == "br-lab"
    assert cfg.topology[0].name == "br-lab"


def test_topology_address_on_port_warns() -> None:
    cfg = config.parse(
        topo_file("[Bridge br]", "[Veth v]", "Peer = vp", "Master = br", "Address = 10.0.0.1/24")
    )
    assert cfg.warnings == (
        "<string>:7: Veth.Address: 'v' is a port of 'br': an address on a port is not used, "
        "put it on the master",
    )


@pytest.mark.parametrize(
    ("lines", "line", "where", "fragment"),
    [
        (["[Bridge]"], 3, "Bridge", "needs a name"),
        (["[Bridge a/b]"], 3, "Bridge", "not a valid interface name"),
        (["[Bridge br]", "STP = maybe"], 4, "Bridge.STP", "expected yes or no"),
        (["[Bridge br]", "Ports = a b"], 4, "Bridge.Ports", "not a valid interface name"),
        (["[Bridge br]", "Namespace = a/b"], 4, "Bridge.Namespace", "not a usable namespace"),
        (["[Bridge br]", "MTU = 10"], 4, "Bridge.MTU", "expected an MTU 68-65535"),
        (["[Bridge br]", "Address = x"], 4, "Bridge.Address", "is not an address"),
        (["[Bridge br]", "Peer = x"], 4, "Bridge.Peer", "Peer belongs in [Veth]"),
        (["[Veth v]"], 3, "Veth.Peer", "missing, expected Peer = NAME"),
        (["[Veth v]", "Peer = x", "PeerAddress = 1"], 5, "Veth.PeerAddress", "not an address"),
        (["[VLAN v]", "Id = 2"], 3, "VLAN.Link", "missing, expected Link ="),
        (["[VLAN v]", "Link = e"], 3, "VLAN.Id", "missing, expected Id = 1-4094"),
        (["[VLAN v]", "Link = e", "Id = 4095"], 5, "VLAN.Id", "expected a VLAN id 1-4094"),
        (["[VLAN v]", "Link = e", "Id = 0"], 5, "VLAN.Id", "expected a VLAN id 1-4094"),
        (["[VLAN v]", "Link = e", "Id = 2", "Protocol = qinq"], 6, "VLAN.Protocol", "802.1Q, 802.1ad"),
        (["[VXLAN x]"], 3, "VXLAN.VNI", "missing, expected VNI = 1-16777215"),
        (["[VXLAN x]", "VNI = 0"], 4, "VXLAN.VNI", "expected a VNI"),
        (["[VXLAN x]", "VNI = 1", "Remote = 1.2.3.4", "Group = 239.1.1.1"], 6, "VXLAN.Group",
         "expected only one of Remote and Group"),
        (["[VXLAN x]", "VNI = 1", "Group = 10.1.1.1"], 5, "VXLAN.Group", "is not multicast"),
        (["[VXLAN x]", "VNI = 1", "Remote = 239.1.1.1"], 5, "VXLAN.Remote", "is multicast"),
        (["[VXLAN x]", "VNI = 1", "Remote = 10.0.0.1", "Local = fd00::1"], 6, "VXLAN.Local",
         "different IP versions"),
        (["[VXLAN x]", "VNI = 1", "Remote = host"], 5, "VXLAN.Remote", "is not an IP address"),
        (["[VXLAN x]", "VNI = 1", "DstPort = 0"], 5, "VXLAN.DstPort", "expected a port 1-65535"),
        (["[MACVLAN m]"], 3, "MACVLAN.Link", "missing"),
        (["[MACVLAN m]", "Link = e", "Mode = bridged"], 5, "MACVLAN.Mode", "did you mean bridge?"),
        (["[MACVLAN m]", "Link = e", "Mode = source"], 3, "MACVLAN.SourceMACs",
         "Mode = source needs SourceMACs"),
        (["[MACVLAN m]", "Link = e", "SourceMACs = 02:00:00:00:00:01"], 5, "MACVLAN.SourceMACs",
         "only used with Mode = source"),
        (["[MACVLAN m]", "Link = e", "Mode = source", "SourceMACs = 02:00:00:00:01"], 6,
         "MACVLAN.SourceMACs", "is not a MAC address"),
        (["[MACVLAN m]", "Link = e", "MACAddress = ff:ff:ff:ff:ff:ff"], 5, "MACVLAN.MACAddress",
         "expected a unicast MAC"),
        (["[IPVLAN i]", "Link = e", "Mode = l4"], 5, "IPVLAN.Mode", "expected one of l2, l3, l3s"),
        (["[Bond b]", "Mode = lacp"], 4, "Bond.Mode", "is not a bonding mode"),
        (["[Bond b]", "Miimon = -1"], 4, "Bond.Miimon", "expected milliseconds"),
        (["[Bond b]", "Ports = e1", "Primary = e2"], 5, "Bond.Primary", "is not one of the bond's Ports"),
        (["[Team t]", "Runner = active-backup"], 4, "Team.Runner", "did you mean activebackup?"),
    ],
)  # fmt: skip
def test_error_topology_keys(lines: list[str], line: int, where: str, fragment: str) -> None:
    expect_error(topo_file(*lines), line, where, fragment)


@pytest.mark.parametrize(
    ("lines", "line", "where", "fragment"),
    [
        (["[Bridge br]", "[Bond br]"], 4, "Bond", "'br' is already the name of [Bridge br] (line 3)"),
        (["[Bridge tp0]"], 3, "Bridge", "already the name of the [Interface]"),
        (["[Veth v]", "Peer = br", "[Bridge br]"], 5, "Bridge", "already the name of [Veth v]"),
        (["[Veth v]", "Peer = v"], 4, "Veth.Peer", "already the name of [Veth v]"),
        (["[VLAN v]", "Link = v", "Id = 2"], 4, "VLAN.Link", "cannot be its own parent"),
        (["[VLAN a]", "Link = b", "Id = 2", "[VLAN b]", "Link = a", "Id = 3"], 4, "VLAN.Link",
         "loop: a -> b"),
        (["[MACVLAN m]", "Link = tp0"], 4, "MACVLAN.Link", "is the TUN device"),
        (["[MACVLAN m1]", "Link = e", "Mode = passthru", "[MACVLAN m2]", "Link = e",
          "Mode = passthru"], 7, "MACVLAN.Link", "already has a passthru MACVLAN (line 3)"),
        (["[Bridge br]", "Ports = br"], 4, "Bridge.Ports", "cannot be a port of itself"),
        (["[Bridge br]", "Ports = tp0"], 4, "Bridge.Ports", "is the TUN device"),
        (["[Bridge b1]", "Ports = e", "[Bond b2]", "Ports = e"], 6, "Bond.Ports",
         "'e' is already a port of 'b1' (line 4)"),
        (["[Bridge b1]", "Master = b1"], 4, "Bridge.Master", "cannot be its own master"),
        (["[VLAN v]", "Link = e", "Id = 2", "[Veth x]", "Peer = xp", "Master = v"], 8,
         "Veth.Master", "'v' is a vlan, expected a bridge, bond or team"),
        (["[Bridge b1]", "Ports = x", "[Veth x]", "Peer = xp", "Master = b2", "[Bridge b2]"], 7,
         "Veth.Master", "'x' is already a port of 'b1'"),
        (["[Bridge br]", "Namespace = ns1", "[Veth v]", "Peer = vp", "Master = br"], 7, "",
         "must be in the same namespace"),
        (["[Bridge br]", "Namespace = ns1", "Ports = v"], 5, "",
         "'v' (namespace of tunnelpyd) and its master 'br' (namespace ns1)"),
        (["[Bridge br]", "Ports = e", "[MACVLAN m]", "Link = e"], 6, "MACVLAN.Link",
         "'e' is a port of 'br'"),
    ],
)  # fmt: skip
def test_error_topology_cross(lines: list[str], line: int, where: str, fragment: str) -> None:
    expect_error(topo_file(*lines), line, where, fragment)


def test_topology_port_in_namespace_ok() -> None:
    cfg = config.parse(
        topo_file("[Bridge br]", "Namespace = ns1", "Ports = vp", "[Veth v]", "Peer = vp",
                  "Namespace = ns1", "[Veth w]", "Peer = wp", "Namespace = ns1",
                  "[MACVLAN m]", "Link = wp", "[VLAN vl]", "Link = m", "Id = 3")
    )  # fmt: skip
    assert [link.name for link in cfg.topology] == ["br", "v", "w", "m", "vl"]


def test_error_segment_bridge_kinds() -> None:
    base = [*peers_ab(), "[Segment lab]", "VNI = 5", "Bridge = b"]
    expect_error(
        interface(*base, "[Bond b]"), 11, "Segment.Bridge", "'b' is a bond, expected a bridge"
    )
    expect_error(
        interface(*base, "[Bridge b]", "Namespace = n"), 11, "Segment.Bridge", "in namespace 'n'"
    )
    expect_error(
        interface(*base, "[Bridge b]", "[Bridge c]", "Ports = lab"),
        11,
        "Segment.Bridge",
        "'lab' is already a port of 'c'",
    )
    expect_error(
        interface(*base, "[Veth v]", "Peer = lab"), 13, "Veth.Peer", "already the name of segment"
    )
