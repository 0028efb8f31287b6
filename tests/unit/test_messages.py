"""Message header validation and layout helpers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnelpy.protocol import messages as m
from tunnelpy.protocol.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MSG_COOKIE_REPLY,
    MSG_INITIATION,
    MSG_RESPONSE,
    MSG_TRANSPORT,
    RESPONSE_SIZE,
)


def msg(t: int, size: int) -> bytes:
    return bytes([t, 0, 0, 0]) + b"\xaa" * (size - 4)


@pytest.mark.parametrize(
    "data, expected",
    [
        (msg(1, 148), 1),
        (msg(2, 92), 2),
        (msg(3, 64), 3),
        (msg(4, 32), 4),
        (msg(4, 1500), 4),
        (msg(1, 147), 0),
        (msg(1, 149), 0),
        (msg(2, 91), 0),
        (msg(2, 148), 0),
        (msg(3, 65), 0),
        (msg(4, 31), 0),
        (msg(5, 148), 0),
        (msg(0, 148), 0),
        (b"", 0),
        (b"\x01", 0),
        (b"\x04\x00\x00", 0),
        (b"\x01\x00\x00\x01" + bytes(144), 0),  # reserved bytes must be zero
        (b"\x04\x01\x00\x00" + bytes(28), 0),
        (b"\x04\x00\x00\x80" + bytes(28), 0),
    ],
)
def test_message_type(data: bytes, expected: int) -> None:
    assert m.message_type(data) == expected
    assert m.message_type(bytearray(data)) == expected
    assert m.message_type(memoryview(data)) == expected


@given(st.binary(max_size=200))
def test_message_type_never_raises(data: bytes) -> None:
    t = m.message_type(data)
    assert t in (0, 1, 2, 3, 4)
    if t:
        assert data[0] == t and data[1:4] == b"\x00\x00\x00"
    m.receiver_index(data)
    m.sender_index(data)
    m.unpack_transport_header(data)


def test_transport_header_round_trip() -> None:
    hdr = m.pack_transport_header(0xDEADBEEF, 0x0102030405060708)
    assert hdr == bytes.fromhex("04000000efbeadde0807060504030201")
    assert len(hdr) == 16
    assert m.unpack_transport_header(hdr) == (0xDEADBEEF, 0x0102030405060708)
    assert m.unpack_transport_header(hdr + b"payload") == (0xDEADBEEF, 0x0102030405060708)
    assert m.unpack_transport_header(hdr[:15]) is None
    assert m.unpack_transport_header(memoryview(hdr)) == (0xDEADBEEF, 0x0102030405060708)


def test_receiver_and_sender_index() -> None:
    resp = m.RESPONSE.pack(MSG_RESPONSE, 11, 22, b"e" * 32, b"x" * 16, b"1" * 16, b"2" * 16)
    assert len(resp) == RESPONSE_SIZE
    assert m.sender_index(resp) == 11
    assert m.receiver_index(resp) == 22

    cookie = m.COOKIE_REPLY.pack(MSG_COOKIE_REPLY, 33, b"n" * 24, b"c" * 32)
    assert len(cookie) == COOKIE_REPLY_SIZE
    assert m.receiver_index(cookie) == 33
    assert m.sender_index(cookie) is None

    transport = m.pack_transport_header(44, 5) + bytes(16)
    assert m.receiver_index(transport) == 44
    assert m.sender_index(transport) is None

    init = m.INITIATION.pack(
        MSG_INITIATION, 55, b"e" * 32, b"s" * 48, b"t" * 28, b"1" * 16, b"2" * 16
    )
    assert len(init) == INITIATION_SIZE
    assert m.sender_index(init) == 55
    assert m.receiver_index(init) is None
    assert m.receiver_index(b"\x02\x00\x00\x00") is None


def test_offsets_agree_with_struct_layouts() -> None:
    init = m.INITIATION.pack(
        MSG_INITIATION, 1, b"E" * 32, b"S" * 48, b"T" * 28, b"M" * 16, b"N" * 16
    )
    assert init[m.INIT_EPHEMERAL : m.INIT_STATIC] == b"E" * 32
    assert init[m.INIT_STATIC : m.INIT_TIMESTAMP] == b"S" * 48
    assert init[m.INIT_TIMESTAMP : m.INIT_MAC1] == b"T" * 28
    assert init[m.INIT_MAC1 : m.INIT_MAC2] == b"M" * 16
    assert init[m.INIT_MAC2 :] == b"N" * 16
    assert m.mac_offsets(init) == (m.INIT_MAC1, m.INIT_MAC2)

    resp = m.RESPONSE.pack(MSG_RESPONSE, 1, 2, b"E" * 32, b"X" * 16, b"M" * 16, b"N" * 16)
    assert resp[m.RESP_EPHEMERAL : m.RESP_EMPTY] == b"E" * 32
    assert resp[m.RESP_EMPTY : m.RESP_MAC1] == b"X" * 16
    assert m.mac_offsets(resp) == (m.RESP_MAC1, m.RESP_MAC2)

    cookie = m.COOKIE_REPLY.pack(MSG_COOKIE_REPLY, 1, b"n" * 24, b"c" * 32)
    assert cookie[m.COOKIE_NONCE : m.COOKIE_ENCRYPTED] == b"n" * 24
    assert cookie[m.COOKIE_ENCRYPTED :] == b"c" * 32
    assert m.TRANSPORT_HEADER.size == m.TRANSPORT_CONTENT == 16


def test_pack_header() -> None:
    assert m.pack_header(MSG_TRANSPORT) == b"\x04\x00\x00\x00"
    assert struct.unpack("<I", m.pack_header(MSG_INITIATION))[0] == 1
