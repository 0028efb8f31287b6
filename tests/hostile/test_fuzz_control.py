"""Fuzzing the text parsers: the UAPI ``set=1`` codec, the UAPI socket server, and site.conf.

Invariants:
- ``uapi.parse_set(text)`` returns a SetRequest or raises UapiError — nothing else escapes;
- the UAPI server answers every byte stream with ``errno=N`` lines (or hangs up on a stream that
  ends mid-request or names an unknown operation) and still answers a proper ``get=1``
  afterwards: no input kills it;
- ``config.parse(text)`` returns a Config or raises ConfigError, whose message is one line
  naming the file.

Inputs are structure-aware (valid requests/files with lines deleted, duplicated, swapped,
re-cased, cut, or with values replaced by hostile ones) and plain random text/bytes.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness.hostile_env import pick
from tunnelpy import config
from tunnelpy.io import uapi
from tunnelpy.io.uapi import DeviceSnapshot, SetRequest, UapiError, UapiServer

SETTINGS = settings(
    max_examples=pick(200, 10000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

K1, K2, K3 = "a" * 64, "b" * 64, "c" * 64
VALID_SET = [
    f"private_key={K1}", "listen_port=51820", "fwmark=0", "replace_peers=true",
    f"public_key={K2}", f"preshared_key={K3}", "endpoint=192.0.2.1:51820",
    "persistent_keepalive_interval=25", "replace_allowed_ips=true", "allowed_ip=10.0.0.0/8",
    "allowed_ip=fd00::/64", "protocol_version=1", f"public_key={K3}", "remove=true",
    "update_only=true", "endpoint=[2001:db8::1]:1",
]  # fmt: skip
HOSTILE_VALUES = [
    "", "=", "-1", "65536", "4294967296", "1" * 400, "0x10", " 1", "1 ", "+1", "１", "true ",
    "TRUE", "[::1]", "[::1]:", ":1", "1.2.3.4:99999", "[1.2.3.4]:1", "::1:1", "10.0.0.0/33",
    "10.0.0.0", "fd00::/129", "0/0", "g" * 64, "A" * 64, "a" * 63, "a" * 65, "\x00", "\u00e9",
    "1.2.3.4%eth0:5", "[fe80::1%eth0]:5", "/8",
]  # fmt: skip
KEYS = [
    "private_key", "listen_port", "fwmark", "replace_peers", "public_key", "preshared_key",
    "endpoint", "persistent_keepalive_interval", "replace_allowed_ips", "allowed_ip",
    "protocol_version", "remove", "update_only", "get", "set", "errno", "", "PUBLIC_KEY",
]  # fmt: skip


@st.composite
def set_bodies(draw) -> str:
    lines = draw(st.lists(st.sampled_from(VALID_SET), max_size=12))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["value", "key", "raw", "dup", "blank", "noeq"]))
        i = draw(st.integers(0, max(0, len(lines))))
        if op == "value" and lines:
            k = lines[i % len(lines)].split("=", 1)[0]
            lines[i % len(lines)] = (
                f"{k}={draw(st.sampled_from(HOSTILE_VALUES) | st.text(max_size=20))}"
            )
        elif op == "key":
            lines.insert(
                i, f"{draw(st.sampled_from(KEYS))}={draw(st.sampled_from(HOSTILE_VALUES))}"
            )
        elif op == "raw":
            lines.insert(i, draw(st.text(max_size=40)))
        elif op == "dup" and lines:
            lines.insert(i, lines[i % len(lines)])
        elif op == "blank":
            lines.insert(i, "")
        elif op == "noeq":
            lines.insert(i, draw(st.sampled_from(KEYS)))
    prefix = draw(st.sampled_from(["", "set=1\n"]))
    return prefix + "\n".join(lines) + draw(st.sampled_from(["", "\n", "\n\n"]))


@SETTINGS
@given(body=st.one_of(set_bodies(), st.text(max_size=200)))
def test_uapi_parse_set_accepts_or_refuses(body):
    try:
        req = uapi.parse_set(body)
    except UapiError as e:
        assert e.errno > 0
        return
    assert isinstance(req, SetRequest)


# ------------------------------------------------------------------------- the server --


def _snapshot() -> DeviceSnapshot:
    return DeviceSnapshot(private_key=bytes(range(32)), listen_port=51820)


async def _exchange(path: str, data: bytes, timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def _chunks_ok(answer: bytes) -> bool:
    # zero or more complete answers; each ends with errno=N and a blank line
    if not answer:
        return True
    if not answer.endswith(b"\n\n"):
        return False
    return all(b"errno=" in part for part in answer.split(b"\n\n")[:-1] if part)


@st.composite
def streams(draw) -> bytes:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["get", "set", "junk", "bytes"]))
        if kind == "get":
            parts.append(
                draw(st.sampled_from(["get=1\n\n", "get=1\nx=1\n\n", "get=1\n", "get=2\n\n"]))
            )
        elif kind == "set":
            parts.append("set=1\n" + draw(set_bodies()).removeprefix("set=1\n") + "\n\n")
        elif kind == "junk":
            parts.append(draw(st.text(max_size=60)))
        else:
            parts.append(draw(st.binary(max_size=60)).decode("latin-1"))
    return "".join(parts).encode("utf-8", "surrogatepass")


FIXED_STREAMS = [
    b"x" * (uapi.MAX_LINE + 10) + b"\n\n",
    b"\xff\xfe\n\n",
    b"set=1\nfwmark=1",
    b"\n\n\n",
    b"get=1\n\n" * 50,
    b"set=1\nlisten_port=1\n",
    b"get=1",
]


def _serve(payloads: list[bytes]) -> None:
    applied: list[SetRequest] = []

    async def main() -> None:
        with tempfile.TemporaryDirectory() as d:
            server = UapiServer("fuzz0", _snapshot, applied.append, directory=d)
            await server.start()
            try:
                for data in payloads:
                    answer = await _exchange(server.path, data)
                    assert _chunks_ok(answer), (data[:80], answer[:200])
                ok = await _exchange(server.path, b"get=1\n\n")
                assert ok.endswith(b"errno=0\n\n") and b"listen_port=51820" in ok
            finally:
                await server.close()
            assert not os.path.exists(server.path)

    asyncio.run(main())


@settings(SETTINGS, max_examples=pick(60, 3000))
@given(payloads=st.lists(streams(), min_size=1, max_size=4))
def test_uapi_server_survives_hostile_streams(payloads):
    _serve(payloads)


def test_uapi_server_survives_fixed_hostile_streams():
    _serve(FIXED_STREAMS)


# --------------------------------------------------------------------------- site.conf --

PRIV = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
PUB_A = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08="
PUB_B = "5xRorQBUyfD0nGS4oLtjWGDc3UGd3u/DlaH3E7JQH3Y="
PSK = "+VBA3uEc0idAs6BLnop9sEpdUPr5KljAOxJ8SLK6lkQ="
BLOCKS = [
    ["[Interface]", "Name = site-a", f"PrivateKey = {PRIV}", "ListenPort = 51820",
     "Address = 10.10.0.1/24, fd10::1/64", "MTU = 1380", "FwMark = 0x51820", "Table = off",
     "DNS = 10.10.0.53", "PostUp = echo up, really", "LogLevel = debug", "SaveConfig = false"],
    ["[Peer]", "Name = site-b", f"PublicKey = {PUB_A}", f"PresharedKey = {PSK}",
     "Endpoint = 192.0.2.7:51820", "AllowedIPs = 10.10.0.2/32, 192.168.20.0/24",
     "PersistentKeepalive = 25"],
    ["[Peer]", "Name = site-c", f"PublicKey = {PUB_B}", "Endpoint = [2001:db8::7]:51820",
     "AllowedIPs = fd10::3/128"],
    ["[Segment lab]", "VNI = 100", "Device = lab0", "Peers = site-b, site-c", "Hub = yes",
     "MAC = 02:00:00:00:00:01@site-b", "AgingTime = 60", "MaxFDBEntries = 128"],
    ["[Bridge br-lab]", "Ports = eth1"],
    ["[VLAN eth1.20]", "Link = eth1", "Id = 20"],
]  # fmt: skip


def _base_lines() -> list[str]:
    """The richest file this config parser accepts (sections it does not know are left out)."""
    lines: list[str] = []
    for block in BLOCKS:
        try:
            config.parse("\n".join(lines + block) + "\n", "fuzz.conf")
        except config.ConfigError:
            continue
        lines += block
    return lines


BASE = _base_lines()
CONF_VALUES = HOSTILE_VALUES + [
    PRIV, PUB_A, "site-b", "site-b, site-b", "nope", "0", "65535", "1280", "575", "0xffffffff",
    "off", "auto", "100, 101", "16777216", "02:00:00:00:00:01@nobody", "ff:ff:ff:ff:ff:ff@site-b",
    "host.invalid:1", "[::1]:0", "a,,b", "#", "= x", "[Peer]", "\t", "/nonexistent/key",
]  # fmt: skip


@st.composite
def conf_texts(draw) -> str:
    lines = list(BASE)
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["del", "dup", "swap", "value", "case", "raw", "cut", "header"]))
        n = len(lines)
        i = draw(st.integers(0, max(0, n - 1)))
        if not lines:
            lines.append(draw(st.text(max_size=30)))
        elif op == "del":
            del lines[i]
        elif op == "dup":
            lines.insert(draw(st.integers(0, n)), lines[i])
        elif op == "swap":
            j = draw(st.integers(0, n - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "value" and "=" in lines[i]:
            k = lines[i].split("=", 1)[0]
            lines[i] = f"{k}= {draw(st.sampled_from(CONF_VALUES) | st.text(max_size=20))}"
        elif op == "case":
            lines[i] = draw(st.sampled_from([str.upper, str.lower, str.swapcase]))(lines[i])
        elif op == "raw":
            lines.insert(i, draw(st.text(max_size=40)))
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "header":
            lines.insert(
                i,
                draw(
                    st.sampled_from(
                        [
                            "[Interface]",
                            "[Peer]",
                            "[Segment lab]",
                            "[Segment]",
                            "[Bogus x]",
                            "[",
                            "[]",
                            "[Peer",
                        ]
                    )
                ),
            )
    return "\n".join(lines) + "\n"


@SETTINGS
@given(text=st.one_of(conf_texts(), st.text(max_size=300)))
def test_config_parse_accepts_or_refuses_with_one_line(text):
    try:
        conf = config.parse(text, "fuzz.conf")
    except config.ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith("fuzz.conf"), msg
        return
    assert conf.interface.private_key


def test_config_base_is_rich():
    # the structure-aware fuzzer starts from a file with interface, peers and (when the parser
    # knows them) segments and topology sections
    conf = config.parse("\n".join(BASE) + "\n", "fuzz.conf")
    assert len(conf.peers) == 2
