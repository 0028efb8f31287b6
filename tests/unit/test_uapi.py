"""Tests for tunnelpy.io.uapi: the codec, the server over a real socket, and the real wg tool."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import stat
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelpy import keys
from tunnelpy.io import uapi
from tunnelpy.io.uapi import (
    UNSET,
    DeviceSnapshot,
    Limits,
    PeerChange,
    PeerSnapshot,
    SetParser,
    SetRequest,
    UapiError,
    UapiServer,
    UapiSocketError,
)
from tunnelpy.protocol.allowedips import (
    Prefix,
    make_prefix,
    prefix_network,
    prefix_of,
    prefix_parts,
)

PRIVATE = keys.decode_key("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=")  # RFC 7748 Alice
PUBLIC = keys.decode_key("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=")
PEER1 = keys.decode_key("3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=")  # RFC 7748 Bob
PEER2 = keys.decode_key("5xRorQBUyfD0nGS4oLtjWGDc3UGd3u/DlaH3E7JQH3Y=")
PSK = bytes(range(1, 33))
ZERO_HEX = "0" * 64


def net(text: str) -> Prefix:
    return prefix_of(ipaddress.ip_network(text))


def snapshot() -> DeviceSnapshot:
    return DeviceSnapshot(
        private_key=PRIVATE,
        listen_port=51820,
        fwmark=0x51820,
        peers=[
            PeerSnapshot(
                public_key=PEER1,
                preshared_key=PSK,
                endpoint=("203.0.113.7", 51820),
                persistent_keepalive=25,
                last_handshake=1_700_000_000.25,
                rx_bytes=1000,
                tx_bytes=2000,
                allowed_ips=[net("10.10.0.2/32"), net("192.168.20.0/24")],
            ),
            PeerSnapshot(
                public_key=PEER2,
                endpoint=("2001:db8::7", 4500),
                allowed_ips=[net("fd10::/64")],
            ),
        ],
    )


# ---------------------------------------------------------------------------------------------
# format_get


def test_format_get_exact() -> None:
    assert uapi.format_get(snapshot()).decode() == (
        f"private_key={PRIVATE.hex()}\n"
        "listen_port=51820\n"
        f"fwmark={0x51820}\n"
        f"public_key={PEER1.hex()}\n"
        f"preshared_key={PSK.hex()}\n"
        "protocol_version=1\n"
        "endpoint=203.0.113.7:51820\n"
        "last_handshake_time_sec=1700000000\n"
        "last_handshake_time_nsec=250000000\n"
        "tx_bytes=2000\n"
        "rx_bytes=1000\n"
        "persistent_keepalive_interval=25\n"
        "allowed_ip=10.10.0.2/32\n"
        "allowed_ip=192.168.20.0/24\n"
        f"public_key={PEER2.hex()}\n"
        f"preshared_key={ZERO_HEX}\n"
        "protocol_version=1\n"
        "endpoint=[2001:db8::7]:4500\n"
        "last_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\n"
        "tx_bytes=0\n"
        "rx_bytes=0\n"
        "persistent_keepalive_interval=0\n"
        "allowed_ip=fd10::/64\n"
        "errno=0\n"
        "\n"
    )


def test_format_get_empty_device_omits_unset_fields() -> None:
    assert uapi.format_get(DeviceSnapshot(None, 0)) == b"errno=0\n\n"
    assert uapi.format_get(DeviceSnapshot(bytes(32), 0, 0)) == b"errno=0\n\n"


def test_format_get_peer_without_endpoint() -> None:
    text = uapi.format_get(DeviceSnapshot(None, 0, peers=[PeerSnapshot(PEER1)])).decode()
    assert "endpoint" not in text
    assert text.startswith(f"public_key={PEER1.hex()}\npreshared_key={ZERO_HEX}\n")


@pytest.mark.parametrize(
    ("t", "sec", "nsec"),
    [(0.0, 0, 0), (-5.0, 0, 0), (12.5, 12, 500_000_000), (3.9999999999, 3, 999_999_999)],
)
def test_format_get_handshake_time(t: float, sec: int, nsec: int) -> None:
    text = uapi.format_get(DeviceSnapshot(None, 0, peers=[PeerSnapshot(PEER1, last_handshake=t)]))
    assert f"last_handshake_time_sec={sec}\nlast_handshake_time_nsec={nsec}\n" in text.decode()


def test_format_endpoint() -> None:
    assert uapi.format_endpoint(("10.0.0.1", 1)) == "10.0.0.1:1"
    assert uapi.format_endpoint(("fe80::1%eth0", 2)) == "[fe80::1%eth0]:2"


# ---------------------------------------------------------------------------------------------
# parse_set


def test_parse_set_full_request() -> None:
    body = (
        f"private_key={PRIVATE.hex()}\n"
        "listen_port=51820\n"
        "fwmark=0\n"
        "replace_peers=true\n"
        f"public_key={PEER1.hex()}\n"
        "protocol_version=1\n"
        f"preshared_key={PSK.hex().upper()}\n"
        "endpoint=[2001:DB8::7]:4500\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.10.0.2/32\n"
        "allowed_ip=192.168.20.1/24\n"
        f"public_key={PEER2.hex()}\n"
        "update_only=true\n"
        f"preshared_key={ZERO_HEX}\n"
        "endpoint=198.51.100.1:1\n"
        "persistent_keepalive_interval=0\n"
        f"public_key={PUBLIC.hex()}\n"
        "remove=true\n"
        "\n"
    )
    assert uapi.parse_set(body) == SetRequest(
        private_key=PRIVATE,
        listen_port=51820,
        fwmark=0,
        replace_peers=True,
        peers=[
            PeerChange(
                public_key=PEER1,
                preshared_key=PSK,
                endpoint=("2001:db8::7", 4500),
                persistent_keepalive=25,
                replace_allowed_ips=True,
                allowed_ips=[net("10.10.0.2/32"), net("192.168.20.0/24")],
            ),
            PeerChange(
                public_key=PEER2,
                update_only=True,
                preshared_key=None,
                endpoint=("198.51.100.1", 1),
                persistent_keepalive=0,
            ),
            PeerChange(public_key=PUBLIC, remove=True),
        ],
    )


def test_parse_set_empty_and_defaults() -> None:
    for body in ("", "\n", "set=1\n\n"):
        request = uapi.parse_set(body)
        assert request == SetRequest()
        assert request.private_key is UNSET


def test_parse_set_zero_private_key_means_remove() -> None:
    assert uapi.parse_set(f"private_key={ZERO_HEX}\n").private_key is None


def test_parse_set_unmentioned_peer_fields() -> None:
    (peer,) = uapi.parse_set(f"public_key={PEER1.hex()}\n").peers
    assert peer.preshared_key is UNSET
    assert (peer.endpoint, peer.persistent_keepalive, peer.allowed_ips) == (None, None, [])


def test_parse_set_same_peer_twice_keeps_order() -> None:
    body = (
        f"public_key={PEER1.hex()}\nallowed_ip=10.0.0.0/8\npublic_key={PEER1.hex()}\nremove=true\n"
    )
    first, second = uapi.parse_set(body).peers
    assert first.allowed_ips == [net("10.0.0.0/8")]
    assert second.remove


def test_parse_set_endpoint_with_zone() -> None:
    body = f"public_key={PEER1.hex()}\nendpoint=[fe80::1%eth0]:51820\n"
    assert uapi.parse_set(body).peers[0].endpoint == ("fe80::1%eth0", 51820)


PEER = f"public_key={PEER1.hex()}\n"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("listen_port\n", errno.EPROTO),
        (PEER + "garbage\n", errno.EPROTO),
        ("private_key=abc\n", errno.EINVAL),
        (f"private_key={PRIVATE.hex()}0\n", errno.EINVAL),
        (f"private_key={'g' * 64}\n", errno.EINVAL),
        ("public_key=\n", errno.EINVAL),
        ("listen_port=65536\n", errno.EINVAL),
        ("listen_port=-1\n", errno.EINVAL),
        ("listen_port=+1\n", errno.EINVAL),
        ("listen_port= 1\n", errno.EINVAL),
        ("listen_port=1_0\n", errno.EINVAL),
        ("listen_port=\n", errno.EINVAL),
        ("fwmark=4294967296\n", errno.EINVAL),
        ("replace_peers=false\n", errno.EINVAL),
        ("Listen_Port=1\n", errno.EINVAL),  # keys are case-sensitive
        ("nonsense=1\n", errno.EINVAL),
        ("endpoint=1.2.3.4:5\n", errno.EINVAL),  # a peer key before any public_key
        ("protocol_version=1\n", errno.EINVAL),  # likewise
        (PEER + "remove=1\n", errno.EINVAL),
        (PEER + "update_only=false\n", errno.EINVAL),
        (PEER + "replace_allowed_ips=yes\n", errno.EINVAL),
        (PEER + "preshared_key=00\n", errno.EINVAL),
        (PEER + "endpoint=host.example:51820\n", errno.EINVAL),
        (PEER + "endpoint=1.2.3.4\n", errno.EINVAL),
        (PEER + "endpoint=1.2.3.4:65536\n", errno.EINVAL),
        (PEER + "endpoint=2001:db8::1:51820\n", errno.EINVAL),
        (PEER + "endpoint=[1.2.3.4]:5\n", errno.EINVAL),
        (PEER + "endpoint=[2001:db8::1]:\n", errno.EINVAL),
        (PEER + "persistent_keepalive_interval=65536\n", errno.EINVAL),
        (PEER + "allowed_ip=10.0.0.1\n", errno.EINVAL),
        (PEER + "allowed_ip=10.0.0.0/33\n", errno.EINVAL),
        (PEER + "allowed_ip=fd00::/129\n", errno.EINVAL),
        (PEER + "allowed_ip=nonsense/8\n", errno.EINVAL),
        (PEER + "protocol_version=2\n", errno.EINVAL),
        (PEER + "private_key=" + ZERO_HEX + "\n", errno.EINVAL),  # a device key inside a peer
        (PEER + "last_handshake_time_sec=0\n", errno.EINVAL),  # a get-only key
        ("listen_port=1\n\nlisten_port=2\n", errno.EINVAL),  # text after the end
    ],
)
def test_parse_set_errors(body: str, code: int) -> None:
    with pytest.raises(UapiError) as info:
        uapi.parse_set(body)
    assert info.value.errno == code


def test_format_errno_is_negative_like_wireguard_go() -> None:
    assert uapi.format_errno(0) == b"errno=0\n\n"
    assert uapi.format_errno(errno.EINVAL) == b"errno=-22\n\n"
    assert uapi.format_errno(-errno.EINVAL) == b"errno=-22\n\n"


# ---------------------------------------------------------------------------------------------
# The server over a real socket


class Device:
    """A stand-in daemon: records set requests, answers get from a snapshot."""

    def __init__(self) -> None:
        self.snapshot = snapshot()
        self.requests: list[SetRequest] = []
        self.fail_with: BaseException | None = None

    def get(self) -> DeviceSnapshot:
        if self.fail_with is not None:
            raise self.fail_with
        return self.snapshot

    def set(self, request: SetRequest) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.requests.append(request)
        if request.listen_port is not None:
            self.snapshot.listen_port = request.listen_port


Runner = Callable[[Coroutine[Any, Any, None]], None]
RUNNERS = [pytest.param(asyncio.run, id="asyncio"), pytest.param(uvloop.run, id="uvloop")]


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """Everything up to and including ``errno=N`` and its blank line."""
    data = b""
    while True:
        line = await asyncio.wait_for(reader.readline(), 5)
        if not line:
            raise EOFError(data)
        data += line
        if line.startswith(b"errno="):
            assert await asyncio.wait_for(reader.readline(), 5) == b"\n"
            return data + b"\n"


def serve(
    tmp_path: Path, run: Runner, body: Callable[[UapiServer, Device], Awaitable[None]]
) -> Device:
    device = Device()

    async def main() -> None:
        server = UapiServer("tp9", device.get, device.set, directory=str(tmp_path / "wg"))
        await server.start()
        try:
            await body(server, device)
        finally:
            await server.close()

    run(main())
    return device


async def connect(server: UapiServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(server.path)


@pytest.mark.parametrize("run", RUNNERS)
def test_server_socket_file_and_directory(tmp_path: Path, run: Runner) -> None:
    async def body(server: UapiServer, device: Device) -> None:
        assert server.path == str(tmp_path / "wg" / "tp9.sock")
        st = os.stat(server.path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "wg").st_mode) == 0o755

    serve(tmp_path, run, body)
    assert not (tmp_path / "wg" / "tp9.sock").exists()


@pytest.mark.parametrize("run", RUNNERS)
def test_server_several_requests_on_one_connection(tmp_path: Path, run: Runner) -> None:
    async def body(server: UapiServer, device: Device) -> None:
        reader, writer = await connect(server)
        writer.write(b"get=1\n\n")
        assert await read_answer(reader) == uapi.format_get(snapshot())
        writer.write(b"set=1\nlisten_port=4242\n" + PEER.encode() + b"allowed_ip=10.0.0.0/8\n\n")
        assert await read_answer(reader) == b"errno=0\n\n"
        writer.write(b"get=1\n\n")
        assert b"\nlisten_port=4242\n" in await read_answer(reader)
        writer.close()

    device = serve(tmp_path, run, body)
    (request,) = device.requests
    assert request.listen_port == 4242
    assert request.peers == [PeerChange(PEER1, allowed_ips=[net("10.0.0.0/8")])]


@pytest.mark.parametrize("run", RUNNERS)
def test_server_malformed_requests_get_errno_and_connection_survives(
    tmp_path: Path, run: Runner
) -> None:
    # Each is answered with wireguard-go's errno, and the connection goes on.
    cases = [
        (b"set=1\nlisten_port=99999\n\n", b"errno=-22\n\n"),
        (b"set=1\nno equals sign\n\n", b"errno=-71\n\n"),  # EPROTO
        (b"set=1\n" + PEER.encode() + b"endpoint=nowhere\n\n", b"errno=-22\n\n"),
        (b"set=1\nlisten_port=\xff\n\n", b"errno=-22\n\n"),  # not UTF-8
        (b"set=1\nprivate_key=" + b"g" * 64 + b"\n\n", b"errno=-22\n\n"),  # bad hex key
        (b"set=1\nprivate_key=abcd\n\n", b"errno=-22\n\n"),  # short key
        (b"set=1\npublic_key=xyz\n\n", b"errno=-22\n\n"),
        (b"set=1\nfrobnicate=1\n\n", b"errno=-22\n\n"),  # unknown device key
        (b"set=1\n" + PEER.encode() + b"frobnicate=1\n\n", b"errno=-22\n\n"),  # unknown peer key
        (b"set=1\nendpoint=1.2.3.4:5\n\n", b"errno=-22\n\n"),  # a peer key before public_key
        (b"set=1\nallowed_ip=10.0.0.0/8\n\n", b"errno=-22\n\n"),  # likewise
        (b"set=1\n" + PEER.encode() + b"allowed_ip=10.0.0.0/33\n\n", b"errno=-22\n\n"),
        (b"set=1\n" + PEER.encode() + b"allowed_ip=10.0.0.1\n\n", b"errno=-22\n\n"),
        (b"set=1\n" + PEER.encode() + b"allowed_ip=010.0.0.0/8\n\n", b"errno=-22\n\n"),
        (b"set=1\n" + PEER.encode() + b"allowed_ip=fe80::/64%eth0\n\n", b"errno=-22\n\n"),
        (b"set=1\n" + PEER.encode() + b"protocol_version=2\n\n", b"errno=-22\n\n"),
        # the first bad line decides, and everything after it up to the blank line is skipped
        (b"set=1\nlisten_port=1\nx\nlisten_port=-1\n\n", b"errno=-71\n\n"),
    ]

    async def body(server: UapiServer, device: Device) -> None:
        reader, writer = await connect(server)
        for request, answer in cases:
            writer.write(request)
            assert await read_answer(reader) == answer, request
        writer.write(b"get=1\n\n")
        assert (await read_answer(reader)).endswith(b"errno=0\n\n")
        writer.close()

    device = serve(tmp_path, run, body)
    assert device.requests == []  # nothing malformed was applied, not even in part


@pytest.mark.parametrize("run", RUNNERS)
@pytest.mark.parametrize(
    ("request_", "answer"),
    [
        # wireguard-go reads one byte after get=1: not the blank line is EINVAL, and what
        # follows cannot be an operation, so it hangs up.
        (b"get=1\nlisten_port=1\n\n", b"errno=-22\n\n"),
        (b"get=1\nx", b"errno=-22\n\n"),  # answered at once: no blank line is waited for
        # an unknown operation (or none) is not answered at all
        (b"frobnicate=1\nx=y\n\n", b""),
        (b"get=2\n\n", b""),
        (b"set=1 \n\n", b""),
        (b"\n", b""),
        # a line over 64 KiB: bufio.Scanner's ErrTooLong, answered EIO
        (b"set=1\nlisten_port=" + b"1" * (uapi.MAX_LINE + 10) + b"\n\n", b"errno=-5\n\n"),
        (b"set=1\nlisten_port=" + b"1" * (uapi.MAX_LINE + 10), b"errno=-5\n\n"),
        (b"set=1\nfwmark=1\n" + b"x" * (4 * uapi.MAX_LINE) + b"\n\n", b"errno=-5\n\n"),
        (b"x" * (uapi.MAX_LINE + 10), b""),  # an operation line that long is none we know
        # much more still coming after the hang-up: drained, so the end is clean, no reset
        (b"bogus=1\n" + b"x=y\n" * 200_000, b""),
        (b"get=1\nx=y\n" + b"x=y\n" * 200_000, b"errno=-22\n\n"),
    ],
    ids=lambda v: repr(v[:24]) if isinstance(v, bytes) else None,
)
def test_server_answers_and_hangs_up_like_wireguard_go(
    tmp_path: Path, run: Runner, request_: bytes, answer: bytes
) -> None:
    async def body(server: UapiServer, device: Device) -> None:
        reader, writer = await connect(server)
        writer.write(request_ + b"get=1\n\n")  # never answered: the connection is over
        assert await asyncio.wait_for(reader.read(), 5) == answer
        writer.close()

    assert serve(tmp_path, run, body).requests == []


@pytest.mark.parametrize("run", RUNNERS)
def test_server_callback_errors(tmp_path: Path, run: Runner) -> None:
    async def body(server: UapiServer, device: Device) -> None:
        reader, writer = await connect(server)
        device.fail_with = UapiError(errno.EADDRINUSE, "port taken")
        writer.write(b"set=1\nlisten_port=53\n\n")
        assert await read_answer(reader) == b"errno=-98\n\n"
        device.fail_with = RuntimeError("a bug in the daemon")
        writer.write(b"set=1\nlisten_port=53\n\n")
        assert await read_answer(reader) == b"errno=-55\n\n"
        writer.write(b"get=1\n\n")
        assert await read_answer(reader) == b"errno=-55\n\n"
        device.fail_with = None
        writer.write(b"get=1\n\n")
        assert (await read_answer(reader)).endswith(b"errno=0\n\n")
        writer.close()

    serve(tmp_path, run, body)


@pytest.mark.parametrize("run", RUNNERS)
def test_server_async_callbacks(tmp_path: Path, run: Runner) -> None:
    seen: list[SetRequest] = []

    async def get() -> DeviceSnapshot:
        await asyncio.sleep(0)
        return DeviceSnapshot(None, 7)

    async def set_(request: SetRequest) -> None:
        await asyncio.sleep(0)
        seen.append(request)

    async def main() -> None:
        async with UapiServer("tp8", get, set_, directory=str(tmp_path)) as server:
            reader, writer = await connect(server)
            writer.write(b"get=1\n\nset=1\nfwmark=3\n\n")  # two requests in one write
            assert await read_answer(reader) == b"listen_port=7\nerrno=0\n\n"
            assert await read_answer(reader) == b"errno=0\n\n"
            writer.close()

    run(main())
    assert seen == [SetRequest(fwmark=3)]


@pytest.mark.parametrize("run", RUNNERS)
def test_server_set_ended_by_eof_applies_nothing(tmp_path: Path, run: Runner) -> None:
    async def body(server: UapiServer, device: Device) -> None:
        # Complete lines, then the end of the stream: wireguard-go would have applied them as
        # it read them; here the blank line commits a request, and a client that died
        # half-way through `wg setconf` must not leave half its peers behind.
        for cut in (b"set=1\nlisten_port=7\n", b"set=1\nlisten_port=6", b"set=1\n"):
            reader, writer = await connect(server)
            writer.write(cut)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"errno=-22\n\n"
            writer.close()
        # get without its blank line: no answer, like wireguard-go.
        reader, writer = await connect(server)
        writer.write(b"get=1\n")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

    assert serve(tmp_path, run, body).requests == []


@pytest.mark.parametrize("run", RUNNERS)
def test_server_refuses_a_set_over_max_set_bytes(tmp_path: Path, run: Runner) -> None:
    big = b"set=1\n" + PEER.encode() + b"allowed_ip=10.0.0.0/8\n" * 200 + b"\n"
    small = b"set=1\n" + PEER.encode() + b"allowed_ip=10.0.0.0/8\n" * 100 + b"\n"

    async def main() -> None:
        device = Device()
        limits = Limits(max_set_bytes=len(big) - 10)
        async with UapiServer("tp2", device.get, device.set, str(tmp_path), limits) as server:
            reader, writer = await connect(server)
            writer.write(big)
            assert await asyncio.wait_for(reader.read(), 5) == b"errno=-12\n\n"  # ENOMEM
            writer.close()
            reader, writer = await connect(server)
            writer.write(small)  # under the limit: fine
            assert await read_answer(reader) == b"errno=0\n\n"
            writer.close()
        assert len(device.requests) == 1

    run(main())


@pytest.mark.parametrize("run", RUNNERS)
def test_server_close_ends_open_connections(tmp_path: Path, run: Runner) -> None:
    async def main() -> None:
        server = UapiServer("tp7", Device().get, Device().set, directory=str(tmp_path))
        await server.start()
        reader, writer = await connect(server)
        writer.write(b"set=1\n")  # a request left half-way
        await asyncio.sleep(0.05)
        await asyncio.wait_for(server.close(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await server.close()  # closing twice is harmless

    run(main())
    assert not (tmp_path / "tp7.sock").exists()


# ---------------------------------------------------------------------------------------------
# allowed_ip values: netip.ParsePrefix / Prefix.String, packed as AllowedIPs keeps them


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("10.1.2.3/8", "10.0.0.0/8"),  # host bits cleared
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("255.255.255.255/32", "255.255.255.255/32"),
        ("fd00::1/64", "fd00::/64"),
        ("FD00:0:0:0:0:0:0:1/128", "fd00::1/128"),  # lower case, RFC 5952
        ("::/0", "::/0"),
        ("::1/128", "::1/128"),
        ("::2/128", "::2/128"),  # some libcs print ::0.0.0.2
        ("::1.2.3.4/128", "::102:304/128"),  # IPv4-compatible: Go prints hex
        ("::ffff:1.2.3.4/128", "::ffff:1.2.3.4/128"),  # IPv4-mapped keeps its dotted quad
        ("::ffff:0:0/96", "::ffff:0.0.0.0/96"),
        ("1:0:0:1:0:0:0:1/128", "1:0:0:1::1/128"),  # the longest run of zeros
        ("1:0:0:2:0:0:3:4/128", "1::2:0:0:3:4/128"),  # the first of two as long
        ("1:0:2:3:4:5:6:7/128", "1:0:2:3:4:5:6:7/128"),  # one zero field is not compressed
        ("2001:db8::/32", "2001:db8::/32"),
    ],
)
def test_parse_and_format_prefix(text: str, canonical: str) -> None:
    p = uapi.parse_prefix(text)
    assert uapi.format_prefix(p) == canonical
    assert uapi.parse_prefix(canonical) == p
    assert prefix_network(p) == ipaddress.ip_network(text, strict=False)
    # the codec packs prefixes exactly as AllowedIPs keeps them
    assert prefix_of(prefix_network(p)) == p == uapi.prefix_of_network(prefix_network(p))
    assert make_prefix(*prefix_parts(p)) == p and type(p) is int  # untracked by the collector


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.1", "10.0.0.0/33", "fd00::/129", "10.0.0.0/", "/8", "10.0.0.0/08", "10.0.0.0/+8",
        "10.0.0.0/ 8", "10.0.0.0/8 ", " 10.0.0.0/8", "010.0.0.0/8", "10.0.0/8", "10.0.0.0.0/8",
        "1.2.3.256/32", "0x1.2.3.4/32", "fe80::1%eth0/64", "fe80::/64%eth0", "1::2::3/64",
        "nonsense/8", "10.0.0.0/8/8", "10.0.0.0\x00/8", "١.2.3.4/32", "10.0.0.0/٨", "",
        "10.0.0.0/" + "9" * 5000, "::ffff:1.2.3.04/128",
    ],
)  # fmt: skip
def test_parse_prefix_refuses_what_netip_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        uapi.parse_prefix(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, (1 << 128) - 1), st.integers(0, 128), st.booleans())
def test_prefix_round_trips_like_ipaddress(address: int, plen: int, v4: bool) -> None:
    if v4:
        address, plen = address >> 96, plen % 33
    network = ipaddress.ip_network((address, plen), strict=False)
    p = uapi.parse_prefix(f"{network.network_address}/{plen}")
    assert p == prefix_of(network) and prefix_network(p) == network
    text = uapi.format_prefix(p)
    assert uapi.parse_prefix(text) == p
    if v4 or address >> 48:  # outside ::/80 Python and Go write IPv6 alike
        assert text == str(network)


# ---------------------------------------------------------------------------------------------
# SetParser: incremental, nothing kept of a refused request

MANY = f"private_key={PRIVATE.hex()}\nlisten_port=51820\nreplace_peers=true\n" + "".join(
    f"public_key={(bytes([i + 1]) * 32).hex()}\n"
    f"endpoint=10.0.0.{i}:{1000 + i}\nreplace_allowed_ips=true\n"
    + "".join(f"allowed_ip=10.{i}.{j}.0/24\nallowed_ip=fd{i:02x}::{j:x}/128\n" for j in range(50))
    for i in range(20)
)


def feed_all(chunks: list[bytes]) -> tuple[SetRequest, int]:
    parser = SetParser()
    for n, chunk in enumerate(chunks):
        used = parser.feed(chunk)
        if parser.done:
            return parser.result(), sum(map(len, chunks[:n])) + used
    raise AssertionError("no blank line found")


def test_set_parser_is_incremental() -> None:
    data = MANY.encode() + b"\n" + b"get=1\n\n"  # the next request follows at once
    whole, used = feed_all([data])
    assert data[used:] == b"get=1\n\n"
    assert len(whole.peers) == 20 and len(whole.peers[7].allowed_ips) == 100
    assert whole == uapi.parse_set(MANY)
    for size in (1, 2, 3, 7, 64, 1000):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert feed_all(chunks) == (whole, used), size
    # the blank line right at the start of a chunk, after a chunk that ended a line
    assert feed_all([b"listen_port=1\n", b"\nrest"]) == (SetRequest(listen_port=1), 15)
    assert feed_all([b"\n"]) == (SetRequest(), 1)


def test_set_parser_keeps_nothing_after_the_first_error() -> None:
    parser = SetParser()
    parser.feed(b"listen_port=1\n" + PEER.encode() + b"allowed_ip=10.0.0.0/33\n")
    assert parser.error is not None and parser.error.errno == errno.EINVAL
    assert parser._request is None  # noqa: SLF001 - what was parsed is dropped at once
    for _ in range(1000):
        assert parser.feed(b"garbage without an equals sign\n") > 0
    assert not parser.done and parser.feed(b"\nnext") == 1 and parser.done
    with pytest.raises(UapiError, match="allowed_ip") as info:
        parser.result()
    assert info.value.errno == errno.EINVAL  # the first error, not the EPROTO ones after it


def test_set_parser_limits_are_fatal() -> None:
    parser = SetParser(max_bytes=100)
    parser.feed(b"fwmark=1\n" * 20)
    assert parser.fatal and parser.error is not None and parser.error.errno == errno.ENOMEM
    assert parser.feed(b"\n") == 0  # nothing more is taken
    parser = SetParser()
    parser.feed(b"fwmark=" + b"1" * uapi.MAX_LINE)
    assert parser.fatal and parser.error is not None and parser.error.errno == errno.EIO
    parser = SetParser()
    parser.end_of_stream()
    with pytest.raises(UapiError, match="before its blank line"):
        parser.result()


@pytest.mark.parametrize("lines", [1, 2, 3, 13, 10_000])
def test_format_get_chunks_add_up_to_format_get(lines: int) -> None:
    s = snapshot()
    s.peers[1].allowed_ips = [net(f"10.{i}.0.0/16") for i in range(40)]
    chunks = list(uapi.format_get_chunks(s, lines))
    assert b"".join(chunks) == uapi.format_get(s)
    n_lines = uapi.format_get(s).count(b"\n") - 1  # every line, errno=0 too; not the blank
    assert n_lines == 3 + (9 + 2) + (9 + 40) + 1
    assert len(chunks) == n_lines // lines + 1  # full chunks, then the rest and the blank line


def test_format_get_writes_mapped_addresses_as_go_does() -> None:
    s = DeviceSnapshot(
        None, 0, peers=[PeerSnapshot(PEER1, allowed_ips=[net("::ffff:1.2.3.4/128")])]
    )
    assert b"\nallowed_ip=::ffff:1.2.3.4/128\n" in uapi.format_get(s)


# ---------------------------------------------------------------------------------------------
# Clients that stall, never read, or come in crowds


def serve_with(
    tmp_path: Path, limits: Limits, body: Callable[[UapiServer, Device], Awaitable[None]]
) -> Device:
    device = Device()

    async def main() -> None:
        server = UapiServer("tp1", device.get, device.set, str(tmp_path / "wg"), limits)
        await server.start()
        try:
            await body(server, device)
        finally:
            await server.close()

    asyncio.run(main())
    return device


async def timed(coro: Awaitable[bytes]) -> tuple[bytes, float]:
    loop = asyncio.get_running_loop()
    t = loop.time()
    out = await coro
    return out, loop.time() - t


def test_a_stalled_set_blocks_nobody_and_is_dropped_unapplied(tmp_path: Path) -> None:
    async def body(server: UapiServer, device: Device) -> None:
        stalled_r, stalled_w = await connect(server)
        stalled_w.write(f"set=1\nprivate_key={PRIVATE.hex()}\nlisten_port=1\n".encode())
        stalled_get_r, stalled_get_w = await connect(server)
        stalled_get_w.write(b"get=1\n")  # and never the blank line
        half_r, half_w = await connect(server)
        half_w.write(b"se")  # half an operation line
        await asyncio.sleep(0.1)
        reader, writer = await connect(server)
        for _ in range(3):  # others are served at once meanwhile
            writer.write(b"get=1\n\n")
            answer, took = await timed(read_answer(reader))
            assert answer == uapi.format_get(snapshot()) and took < 0.5
            writer.write(b"set=1\nfwmark=9\n\n")
            answer, took = await timed(read_answer(reader))
            assert answer == b"errno=0\n\n" and took < 0.5
        # past request_timeout the stalled ones are answered EIO and closed
        for r in (stalled_r, stalled_get_r, half_r):
            answer, took = await timed(asyncio.wait_for(r.read(), 5))
            assert answer == b"errno=-5\n\n"
        writer.write(b"get=1\n\n")  # the healthy connection is still served
        assert (await read_answer(reader)).endswith(b"errno=0\n\n")
        for w in (stalled_w, stalled_get_w, half_w, writer):
            w.close()

    device = serve_with(tmp_path, Limits(request_timeout=1.0), body)
    assert [r.fwmark for r in device.requests] == [9, 9, 9]  # the stalled set: never applied


def test_an_idle_connection_is_closed_between_requests(tmp_path: Path) -> None:
    async def body(server: UapiServer, device: Device) -> None:
        reader, writer = await connect(server)
        writer.write(b"get=1\n\n")
        await read_answer(reader)
        answer, took = await timed(asyncio.wait_for(reader.read(), 5))
        assert answer == b"" and 0.2 < took < 3  # closed without a word
        writer.close()

    serve_with(tmp_path, Limits(idle_timeout=0.3), body)


def test_a_client_that_never_reads_a_huge_get_is_dropped(tmp_path: Path) -> None:
    huge = [make_prefix(32, i << 8, 24) for i in range(200_000)]  # a 6 MB answer

    async def body(server: UapiServer, device: Device) -> None:
        device.snapshot.peers[0].allowed_ips = huge
        expected = uapi.format_get(device.snapshot)
        deaf_r, deaf_w = await connect(server)
        deaf_w.write(b"get=1\n\n")  # and it never reads
        await asyncio.sleep(0.2)
        reader, writer = await connect(server)
        writer.write(b"set=1\nlisten_port=7\n\n")
        answer, took = await timed(read_answer(reader))
        assert answer == b"errno=0\n\n" and took < 0.5  # not stuck behind the deaf client
        writer.write(b"get=1\n\n")
        got = b""
        while not got.endswith(b"errno=0\n\n"):
            got += await asyncio.wait_for(reader.read(1 << 20), 5)
        assert got == expected.replace(b"listen_port=51820", b"listen_port=7")
        # write_timeout after it stopped reading, the deaf client is dropped mid-answer
        await asyncio.sleep(1.0)
        assert len(server._connections) == 1  # noqa: SLF001 - only the reading client is left
        data = await asyncio.wait_for(deaf_r.read(), 5)
        assert 0 < len(data) < len(expected)
        writer.close()
        deaf_w.close()

    serve_with(tmp_path, Limits(write_timeout=0.5), body)


def test_connections_over_the_limit_are_closed_at_once(tmp_path: Path) -> None:
    async def body(server: UapiServer, device: Device) -> None:
        held = [await connect(server) for _ in range(2)]
        await asyncio.sleep(0.1)
        reader, writer = await connect(server)
        writer.write(b"get=1\n\n")
        try:
            answer, took = await timed(asyncio.wait_for(reader.read(), 5))
        except ConnectionResetError:  # (closed with its request unread: the kernel's choice)
            answer, took = b"", 0.0
        assert answer == b"" and took < 0.5 and server.refused == 1
        writer.close()
        held[0][1].close()  # one leaves: there is room again
        await asyncio.sleep(0.1)
        reader, writer = await connect(server)
        writer.write(b"get=1\n\n")
        assert (await read_answer(reader)).endswith(b"errno=0\n\n")
        writer.close()
        held[1][1].close()

    serve_with(tmp_path, Limits(max_connections=2), body)


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a crashed daemon leaves behind."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


@pytest.mark.parametrize("run", RUNNERS)
def test_server_replaces_stale_socket(tmp_path: Path, run: Runner) -> None:
    stale_socket(tmp_path / "tp6.sock")

    async def main() -> None:
        async with UapiServer("tp6", Device().get, Device().set, directory=str(tmp_path)) as s:
            reader, writer = await connect(s)
            writer.write(b"get=1\n\n")
            assert (await read_answer(reader)).endswith(b"errno=0\n\n")
            writer.close()

    run(main())


@pytest.mark.parametrize("run", RUNNERS)
def test_server_refuses_live_socket(tmp_path: Path, run: Runner) -> None:
    async def main() -> None:
        first = UapiServer("tp5", Device().get, Device().set, directory=str(tmp_path))
        await first.start()
        second = UapiServer("tp5", Device().get, Device().set, directory=str(tmp_path))
        with pytest.raises(UapiSocketError) as info:
            await second.start()
        assert str(info.value) == (
            f"interface tp5 is already served by another daemon: {tmp_path / 'tp5.sock'}"
        )
        # The first server is untouched and still answers.
        reader, writer = await connect(first)
        writer.write(b"get=1\n\n")
        assert (await read_answer(reader)).endswith(b"errno=0\n\n")
        writer.close()
        await first.close()

    run(main())


def test_server_refuses_to_remove_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "tp4.sock").write_text("not a socket")
    server = UapiServer("tp4", Device().get, Device().set, directory=str(tmp_path))
    with pytest.raises(UapiSocketError, match="exists and is not a socket"):
        asyncio.run(server.start())
    assert (tmp_path / "tp4.sock").read_text() == "not a socket"


def test_close_leaves_a_successors_socket(tmp_path: Path) -> None:
    async def main() -> None:
        server = UapiServer("tp3", Device().get, Device().set, directory=str(tmp_path))
        await server.start()
        # A successor took the path over (believing it stale): our exit must not remove it.
        os.unlink(server.path)
        stale_socket(Path(server.path))
        await server.close()

    asyncio.run(main())
    assert (tmp_path / "tp3.sock").exists()


@pytest.mark.parametrize("name", ["", "a/b", ".", ".."])
def test_server_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        UapiServer(name, Device().get, Device().set)


# ---------------------------------------------------------------------------------------------
# Against the real wg tool, which looks for sockets in /var/run/wireguard

needs_wg = pytest.mark.skipif(
    shutil.which("wg") is None or os.geteuid() != 0, reason="needs wg and root"
)


async def wg(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "wg",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def with_wg(run: Runner, body: Callable[[str, Device], Awaitable[None]]) -> Device:
    device = Device()
    name = "tpt" + secrets.token_hex(4)  # unique: other tests and daemons use this directory

    async def main() -> None:
        server = UapiServer(name, device.get, device.set)
        await server.start()
        try:
            await body(name, device)
        finally:
            await server.close()

    try:
        run(main())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/var/run/wireguard/{name}.sock")
    assert not os.path.exists(f"/var/run/wireguard/{name}.sock")
    return device


@needs_wg
@pytest.mark.parametrize("run", RUNNERS)
def test_wg_show(run: Runner) -> None:
    async def body(name: str, device: Device) -> None:
        code, out, err = await wg("show", name, "dump", env={"WG_HIDE_KEYS": "never"})
        assert (code, err) == (0, "")
        assert out.splitlines() == [
            "\t".join([keys.encode_key(PRIVATE), keys.encode_key(PUBLIC), "51820", "0x51820"]),
            "\t".join(
                [
                    keys.encode_key(PEER1),
                    keys.encode_key(PSK),
                    "203.0.113.7:51820",
                    "10.10.0.2/32,192.168.20.0/24",
                    "1700000000",
                    "1000",
                    "2000",
                    "25",
                ]
            ),
            "\t".join(
                [
                    keys.encode_key(PEER2),
                    "(none)",
                    "[2001:db8::7]:4500",
                    "fd10::/64",
                    "0",
                    "0",
                    "0",
                    "off",
                ]
            ),
        ]
        code, out, _ = await wg("show", name)
        assert code == 0
        assert f"interface: {name}" in out
        assert f"public key: {keys.encode_key(PUBLIC)}" in out
        code, out, _ = await wg("show", "interfaces")
        assert name in out.split()

    with_wg(run, body)


@needs_wg
@pytest.mark.parametrize("run", RUNNERS)
def test_wg_set(run: Runner) -> None:
    async def body(name: str, device: Device) -> None:
        args = ["set", name, "listen-port", "5555", "fwmark", "0x10"]
        args += ["peer", keys.encode_key(PEER1), "endpoint", "[2001:db8::9]:7"]
        args += ["allowed-ips", "10.1.0.0/16,fd01::/64", "persistent-keepalive", "off"]
        args += ["peer", keys.encode_key(PEER2), "remove"]
        assert await wg(*args) == (0, "", "")
        device.fail_with = UapiError(errno.EADDRINUSE, "port taken")
        code, _, err = await wg("set", name, "listen-port", "53")
        # The negative errno on the wire is what makes wg print the right reason.
        assert (code, err) == (1, "Unable to modify interface: Address already in use\n")

    device = with_wg(run, body)
    (request,) = device.requests
    assert request == SetRequest(
        listen_port=5555,
        fwmark=16,
        peers=[
            PeerChange(
                PEER1,
                endpoint=("2001:db8::9", 7),
                persistent_keepalive=0,
                replace_allowed_ips=True,
                allowed_ips=[net("10.1.0.0/16"), net("fd01::/64")],
            ),
            PeerChange(PEER2, remove=True),
        ],
    )


@needs_wg
def test_wg_syncconf(tmp_path: Path) -> None:
    conf = tmp_path / "sync.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {keys.encode_key(PRIVATE)}\nListenPort = 51820\n"
        f"[Peer]\nPublicKey = {keys.encode_key(PEER1)}\nAllowedIPs = 10.9.0.0/16\n"
    )

    async def body(name: str, device: Device) -> None:
        code, _, err = await wg("syncconf", name, str(conf))
        assert (code, err) == (0, "")

    device = with_wg(asyncio.run, body)
    # syncconf reads the device, then sends only the differences: PEER2 is not in the file.
    (request,) = device.requests
    removed = [p.public_key for p in request.peers if p.remove]
    assert removed == [PEER2]
    (peer1,) = [p for p in request.peers if p.public_key == PEER1]
    assert peer1.replace_allowed_ips
    assert peer1.allowed_ips == [net("10.9.0.0/16")]


@pytest.mark.parametrize("run", RUNNERS)
def test_what_a_client_sends_is_never_logged(tmp_path: Path, run: Runner, caplog) -> None:
    secret = "a1" * 32

    async def body(server: UapiServer, device: Device) -> None:
        for first in (f"private_key={secret}\n", f"set=1\nprivate_key {secret}\n\n"):
            reader, writer = await connect(server)
            writer.write(first.encode())
            await writer.drain()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.readline(), 5)  # errno=…, or the hang-up
            writer.close()

    with caplog.at_level(logging.DEBUG):
        serve(tmp_path, run, body)
    assert secret[:16] not in caplog.text and "invalid operation" in caplog.text


@pytest.mark.parametrize("key", ["listen_port", "fwmark"])
def test_absurdly_long_numbers_are_einval_not_a_traceback(key: str) -> None:
    with pytest.raises(UapiError) as e:
        uapi.parse_set(f"{key}={'9' * 5000}\n")
    assert e.value.errno == errno.EINVAL and len(str(e.value)) < 100
