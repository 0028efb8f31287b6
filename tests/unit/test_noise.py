"""tunnelpy.protocol.noise against the cacophony Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s vector."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunnelpy.protocol import crypto, noise

VECTOR_FILE = Path(__file__).parent / "vectors" / "noise_ikpsk2_25519_chachapoly_blake2s.json"
V = json.loads(VECTOR_FILE.read_text())["vector"]


def h(name: str) -> bytes:
    return bytes.fromhex(V[name])


PROTOCOL = V["protocol_name"].encode()
INIT_STATIC = h("init_static")
INIT_EPHEMERAL = h("init_ephemeral")
RESP_STATIC = h("resp_static")
RESP_EPHEMERAL = h("resp_ephemeral")
PSK = bytes.fromhex(V["init_psks"][0])
MESSAGES = [(bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])) for m in V["messages"]]


def test_vector_is_self_consistent() -> None:
    assert PROTOCOL == b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    assert h("init_prologue") == h("resp_prologue") == b"John Galt"
    assert V["init_psks"] == V["resp_psks"]
    assert crypto.public_key(RESP_STATIC) == h("init_remote_static")


def _handshake() -> tuple[noise.SymmetricState, noise.SymmetricState]:
    """Run both handshake messages, asserting each ciphertext byte for byte."""
    (p1, c1), (p2, c2) = MESSAGES[0], MESSAGES[1]
    resp_static_pub = h("init_remote_static")

    ini = noise.initialize(h("init_prologue"), resp_static_pub, PROTOCOL)
    resp = noise.initialize(h("resp_prologue"), crypto.public_key(RESP_STATIC), PROTOCOL)

    msg1 = noise.write_message_1(
        ini, INIT_STATIC, crypto.public_key(INIT_STATIC), resp_static_pub, INIT_EPHEMERAL, p1
    )
    assert msg1 == c1

    read1 = noise.read_message_1(resp, RESP_STATIC, c1)
    assert read1 is not None
    re, rs, payload1 = read1
    assert re == crypto.public_key(INIT_EPHEMERAL)
    assert rs == crypto.public_key(INIT_STATIC)
    assert payload1 == p1

    msg2 = noise.write_message_2(resp, RESP_EPHEMERAL, re, rs, PSK, p2)
    assert msg2 == c2

    read2 = noise.read_message_2(ini, INIT_EPHEMERAL, INIT_STATIC, PSK, c2)
    assert read2 is not None
    assert read2 == (crypto.public_key(RESP_EPHEMERAL), p2)
    return ini, resp


def test_handshake_messages_and_hash_match_vector() -> None:
    ini, resp = _handshake()
    assert ini.h == resp.h == h("handshake_hash")
    assert ini.ck == resp.ck


def test_transport_messages_match_vector() -> None:
    ini, resp = _handshake()
    i_send, i_recv = ini.split()
    r_recv, r_send = resp.split()
    assert (i_send, i_recv) == (r_recv, r_send)
    counters = {True: 0, False: 0}
    # After the handshake cacophony alternates: initiator (k1), responder (k2), initiator, …
    for i, (payload, ciphertext) in enumerate(MESSAGES[2:]):
        from_initiator = i % 2 == 0
        send_key, recv_key = (i_send, r_recv) if from_initiator else (r_send, i_recv)
        n = counters[from_initiator]
        assert crypto.aead_encrypt(send_key, n, payload, b"") == ciphertext
        assert crypto.aead_decrypt(recv_key, n, ciphertext, b"") == payload
        counters[from_initiator] += 1
    assert counters == {True: 2, False: 2}


def test_initialize_matches_wireguard_whitepaper_formula() -> None:
    # Ci = HASH(construction); Hi = HASH(Ci ‖ identifier); Hi = HASH(Hi ‖ responder static).
    from tunnelpy.protocol.constants import CONSTRUCTION, IDENTIFIER

    pub = crypto.public_key(RESP_STATIC)
    st = noise.initialize(IDENTIFIER, pub)
    ci = crypto.blake2s(CONSTRUCTION)
    assert st.ck == ci
    assert st.h == crypto.blake2s(crypto.blake2s(ci, IDENTIFIER), pub)


def test_short_protocol_name_is_padded_not_hashed() -> None:
    st = noise.SymmetricState.from_protocol_name(b"Noise_NN")
    assert st.h == st.ck == b"Noise_NN" + bytes(24)


def test_wrong_psk_fails_message_2() -> None:
    p1, c2 = MESSAGES[0][0], MESSAGES[1][1]
    ini = noise.initialize(h("init_prologue"), h("init_remote_static"), PROTOCOL)
    noise.write_message_1(
        ini,
        INIT_STATIC,
        crypto.public_key(INIT_STATIC),
        h("init_remote_static"),
        INIT_EPHEMERAL,
        p1,
    )
    assert noise.read_message_2(ini, INIT_EPHEMERAL, INIT_STATIC, b"\x00" * 32, c2) is None


def test_wrong_prologue_fails_message_1() -> None:
    resp = noise.initialize(b"John Gal", crypto.public_key(RESP_STATIC), PROTOCOL)
    assert noise.read_message_1(resp, RESP_STATIC, MESSAGES[0][1]) is None


@pytest.mark.parametrize("index", [0, 31, 32, 40, 79, 80, 95, -1])
def test_tampered_message_1_fails(index: int) -> None:
    c1 = bytearray(MESSAGES[0][1])
    c1[index] ^= 0x80
    resp = noise.initialize(h("resp_prologue"), crypto.public_key(RESP_STATIC), PROTOCOL)
    assert noise.read_message_1(resp, RESP_STATIC, bytes(c1)) is None


def test_truncated_messages_fail() -> None:
    resp = noise.initialize(h("resp_prologue"), crypto.public_key(RESP_STATIC), PROTOCOL)
    assert noise.read_message_1(resp, RESP_STATIC, MESSAGES[0][1][:95]) is None
    ini = noise.initialize(h("init_prologue"), h("init_remote_static"), PROTOCOL)
    assert noise.read_message_2(ini, INIT_EPHEMERAL, INIT_STATIC, PSK, b"\x01" * 47) is None


def test_low_order_remote_static_is_refused() -> None:
    st = noise.initialize(b"", bytes(32))
    out = noise.write_message_1(
        st, INIT_STATIC, crypto.public_key(INIT_STATIC), bytes(32), INIT_EPHEMERAL, b""
    )
    assert out is None


def test_encrypt_without_key_is_a_loud_bug() -> None:
    st = noise.SymmetricState.from_protocol_name(PROTOCOL)
    with pytest.raises(RuntimeError):
        st.encrypt_and_hash(b"secret")
    st.mix_key(b"x" * 32)
    st.encrypt_and_hash(b"secret")
    st.mix_chain(b"y" * 32)
    with pytest.raises(RuntimeError):
        st.decrypt_and_hash(b"z" * 16)
