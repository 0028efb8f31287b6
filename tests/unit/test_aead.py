"""The compiled transport AEAD (tunnelpy/protocol/_aead.pyx) against the `cryptography` path.

The compiled module is a faster implementation of the engine's own step, so every test here is
differential or against an outside reference:

* the RFC 8439 AEAD vector (A.5), sealed and opened;
* seal: random runs (sizes, padding, MTUs, keepalives, L2 plaintexts, counters near the
  limits) give byte for byte the datagrams of session.seal_batch, in the layout one GSO send
  takes;
* open: two engines that differ only in the path (same keys, same state) fed the same hostile
  batches (bit flips, replays, reordering, truncation, foreign indices, counters past the limit,
  junk and foreign inner packets, L2 frames, keepalives, non-tuples) produce the same packets,
  frames, drops, statistics, timers and replay windows;
* every tag bit flip is refused; the replay Window equals replay.py's over random sequences;
* counters are never reused across batches, rekeys and a worker sharing the keypair, and
  nothing is sealed at or past REJECT_AFTER_MESSAGES;
* the sockets send a Sealed buffer's datagrams as a list's (GSO, without, fallbacks);
* a fuzz of the compiled open with more than 10^6 inputs; once more under ASan/UBSan where the
  toolchain has them (test_aead_sanitizers.py).
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tests.harness.engine_pair import A_ADDR, A_IN, B_IN, Net
from tests.harness.packets import eth, ipv4, ipv6
from tunnelpy.protocol import aead
from tunnelpy.protocol import constants as C
from tunnelpy.protocol.actions import Dest, Output, Sealed, add_datagrams
from tunnelpy.protocol.crypto import nonce
from tunnelpy.protocol.replay import ReplayWindow
from tunnelpy.protocol.session import seal, seal_batch
from tunnelpy.protocol.vxlan_header import pack_header

REJECT = C.REJECT_AFTER_MESSAGES
U64 = (1 << 64) - 1


def needs_compiled() -> None:
    """The module is built at install (Cython + libssl-dev); CI installs both, so there its
    absence fails; elsewhere these tests skip. Keypairs made after this use it (also in a run
    with TUNNELPY_TEST_COMPILED=off: these tests are about the compiled path)."""
    if not aead.BUILT:
        knob_off = os.environ.get("TUNNELPY_TEST_COMPILED", "").lower() == "off"
        if os.environ.get("CI") and not knob_off:
            pytest.fail("tunnelpy.protocol._aead is not built (CI installs it)")
        pytest.skip("the compiled AEAD is not built")
    aead.enable(True)


@pytest.fixture(autouse=True)
def _restore_enabled():
    was = aead.enabled()
    yield
    aead.enable(was)


# ---------------------------------------------------------------- outside references

# RFC 8439, appendix A.5: the AEAD decryption vector. Its nonce is 4 zero bytes and then
# 01..08, which is exactly WireGuard's nonce layout (counter as u64 little-endian).
A5_KEY = bytes.fromhex("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0")
A5_COUNTER = int.from_bytes(bytes.fromhex("0102030405060708"), "little")
A5_AAD = bytes.fromhex("f33388860000000000004e91")
A5_CT = bytes.fromhex(
    "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb24c6cfc18755d43eea09ee94e"
    "382d26b0bdb7b73c321b0100d4f03b7f355894cf332f830e710b97ce98c8a84abd0b948114ad176e008d33bd"
    "60f982b1ff37c8559797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4b9166c76"
    "7b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523eaf4534d7f83fa1155b0047718cbc546a"
    "0d072b04b3564eea1b422273f548271a0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a67276"
    "27097a1049e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29a6ad5cb4022b0270"
    "9b"
)
A5_TAG = bytes.fromhex("eead9d67890cbb22392336fea1851f38")
A5_PLAIN = (
    b"Internet-Drafts are draft documents valid for a maximum of six months and may be updated,"
    b" replaced, or obsoleted by other documents at any time. It is inappropriate to use"
    b" Internet-Drafts as reference material or to cite them other than as /\xe2\x80\x9cwork in"
    b" progress./\xe2\x80\x9d"
)


def test_rfc8439_aead_vector():
    needs_compiled()
    assert nonce(A5_COUNTER) == bytes.fromhex("000000000102030405060708")
    header = bytes(16)  # (open takes a whole transport message: the header is skipped)
    assert aead.Opener(A5_KEY).open(A5_COUNTER, header + A5_CT + A5_TAG, A5_AAD) == A5_PLAIN
    assert aead.Sealer(A5_KEY).encrypt(A5_COUNTER, A5_PLAIN, A5_AAD) == A5_CT + A5_TAG
    # One byte off anywhere (ciphertext, tag, AAD, nonce): refused.
    assert aead.Opener(A5_KEY).open(A5_COUNTER, header + A5_CT + A5_TAG, A5_AAD[:-1]) is None
    assert aead.Opener(A5_KEY).open(A5_COUNTER + 1, header + A5_CT + A5_TAG, A5_AAD) is None


def test_single_messages_equal_cryptography():
    needs_compiled()
    r = random.Random(8439)
    for _ in range(300):
        key = r.randbytes(32)
        counter = r.choice([0, 1, r.getrandbits(64), U64, REJECT - 1])
        plain = r.randbytes(r.choice([0, 1, 15, 16, 17, 63, 64, 65, 1420, r.randrange(3000)]))
        ref = ChaCha20Poly1305(key).encrypt(nonce(counter), plain, None)
        assert aead.Sealer(key).encrypt(counter, plain) == ref
        assert aead.Opener(key).open(counter, bytes(16) + ref) == plain
        assert aead.Opener(key).open(counter, bytearray(16) + ref) == plain
        assert aead.Opener(key).open(counter, memoryview(bytes(16) + ref)) == plain


def test_keys_must_be_32_bytes():
    needs_compiled()
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError):
            aead.Sealer(bad)
        with pytest.raises(ValueError):
            aead.Opener(bad)


# ---------------------------------------------------------------- seal, differential


def random_payload(r: random.Random, mtu: int) -> bytes | bytearray:
    kind = r.randrange(8)
    if kind == 0:
        p = b""  # keepalive
    elif kind == 1:
        p = b"\x08" + r.randbytes(r.randrange(0, 1600))  # L2 plaintext: never padded
    elif kind == 2:
        p = bytes([r.randrange(256)]) + r.randbytes(r.randrange(0, 200))  # any first byte
    elif kind == 3:
        p = b"\x60" + r.randbytes(r.choice([39, 40, 41, mtu - 2, mtu - 1, mtu, mtu + 1]))
    elif kind == 4:
        p = b"\x45" + r.randbytes(r.randrange(mtu - 20, mtu + 20))  # around the MTU cap
    elif kind == 5:
        p = b"\x45" + r.randbytes(r.randrange(0, 64000) if r.random() < 0.05 else 1419)
    else:
        p = bytes([r.choice([0x40, 0x45, 0x4F, 0x60, 0x7F])]) + r.randbytes(r.randrange(120))
    if r.random() < 0.05:
        return bytearray(p)  # (the compiled seal takes any buffer; the TUN gives bytes)
    return p


def gso_runs(sizes: list[int]) -> list[tuple[int, int, int]]:
    """What io/udp.py's _send_gso would group (without its 64/65000 caps, which the socket
    applies to a run): equal sizes, a shorter datagram ends a run."""
    runs: list[tuple[int, int, int]] = []
    at = 0
    i = 0
    while i < len(sizes):
        size = sizes[i]
        start = at
        at += size
        i += 1
        while i < len(sizes) and sizes[i] <= size:
            at += sizes[i]
            i += 1
            if sizes[i - 1] < size:
                break
        runs.append((start, at, size))
    return runs


def test_seal_equals_the_python_seal_for_random_runs():
    needs_compiled()
    r = random.Random(1)
    for trial in range(400):
        key = r.randbytes(32)
        mtu = r.choice([1280, 1420, 1421, 1500, 9000, 65535])
        counter = r.choice(
            [0, r.getrandbits(32), (1 << 32) - 1, r.getrandbits(63), REJECT - r.randrange(1, 70),
             REJECT, REJECT + 3, U64 - 10]
        )  # fmt: skip
        payloads = [random_payload(r, mtu) for _ in range(r.choice([0, 1, 2, 5, 44, 64, 130]))]
        index = r.getrandbits(32)
        got, sent, count = seal(aead.Sealer(key), lambda *a: b"", index, counter, payloads, mtu)
        ref, ref_sent, ref_count = seal(
            None, ChaCha20Poly1305(key).encrypt, index, counter, payloads, mtu
        )
        assert isinstance(got, Sealed)
        assert list(got) == ref and (sent, count) == (ref_sent, ref_count), trial
        assert count == max(0, min(len(payloads), REJECT - counter))
        assert len(got.buf) == sent and got.runs == gso_runs([len(d) for d in ref])
        for k, d in enumerate(ref):  # counters in order, none at or past the limit
            assert struct.unpack_from("<IIQ", d) == (4, index, counter + k)
            assert counter + k < REJECT


def test_seal_with_a_prefix_equals_sealing_the_joined_plaintexts():
    """Sealer.seal's `prefix` (a segment's L2 header before each frame, sealed in place) gives
    the bytes of sealing prefix + payload, in the compiled seal and the `cryptography` one, for
    random runs (frames, any first byte, empty ones, bytearrays, counters near the limit) and
    in the floor's copy mode; the plaintext with the prefix is what the other end opens."""
    needs_compiled()
    from tunnelpy.protocol.vxlan_header import pack_header

    r = random.Random(2)
    for trial in range(300):
        key = r.randbytes(32)
        mtu = r.choice([1280, 1420, 9000])
        counter = r.choice([0, r.getrandbits(40), REJECT - r.randrange(1, 70), REJECT])
        prefix = r.choice([pack_header(r.randrange(1 << 24)), b"\x45" + r.randbytes(7)])
        payloads = [random_payload(r, mtu) for _ in range(r.choice([0, 1, 3, 44, 64]))]
        joined = [prefix + bytes(p) for p in payloads]
        index = r.getrandbits(32)
        copy = r.random() < 0.2
        got, sent, count = seal(aead.Sealer(key, copy), lambda *a: b"", index, counter,
                                payloads, mtu, prefix)  # fmt: skip
        ref, ref_sent, ref_count = seal(aead.Sealer(key, copy), lambda *a: b"", index, counter,
                                        joined, mtu)  # fmt: skip
        assert list(got) == list(ref) and (sent, count) == (ref_sent, ref_count), trial
        assert isinstance(got, Sealed) and isinstance(ref, Sealed) and got.runs == ref.runs
        if not copy:
            py, py_sent, py_count = seal(None, ChaCha20Poly1305(key).encrypt, index, counter,
                                         payloads, mtu, prefix)  # fmt: skip
            assert list(got) == py and (sent, count) == (py_sent, py_count), trial
            opener = aead.Opener(key)
            for k, d in enumerate(py[:3]):
                plain = opener.open(counter + k, d)
                assert plain is not None and plain[: len(joined[k])] == joined[k]


def test_seal_batch_padding_rule_is_the_reference():
    """The Python seal's padding, stated: IP (0x4_..0x7_) up to 16, capped at the MTU."""
    key = bytes(32)
    enc = ChaCha20Poly1305(key).encrypt
    for first, n, mtu, padded in [
        (0x45, 20, 1420, 32), (0x45, 1419, 1420, 1420), (0x45, 1420, 1420, 1420),
        (0x45, 1421, 1420, 1421), (0x60, 41, 1420, 48), (0x45, 17, 20, 20), (0x08, 17, 1420, 17),
        (0x80, 17, 1420, 17), (0x3F, 17, 1420, 17), (0x7F, 17, 1420, 32),
    ]:  # fmt: skip
        (d,), _ = seal_batch(enc, 1, 0, [bytes([first]) + bytes(n - 1)], mtu)
        assert len(d) == 32 + padded, (hex(first), n, mtu)
    (d,), _ = seal_batch(enc, 1, 0, [b""], 1420)
    assert len(d) == 32  # a keepalive


# ---------------------------------------------------------------- the Sealed sequence


def test_sealed_reads_as_its_datagrams():
    needs_compiled()
    payloads = [b"\x45" + bytes(99)] * 3 + [b"\x45" + bytes(40), b"", b"\x08" + bytes(500)]
    buf, runs, count, _ = aead.Sealer(bytes(32)).seal(7, 0, payloads, 1420, REJECT)
    s = Sealed(buf, runs, count)
    ref, _ = seal_batch(ChaCha20Poly1305(bytes(32)).encrypt, 7, 0, payloads, 1420)
    assert len(s) == 6 and list(s) == ref and s == ref and s == Sealed(buf, runs, count)
    assert [s[i] for i in range(-6, 6)] == ref + ref and s[1:3] == ref[1:3]
    assert b"".join(s) == buf and sum(map(len, s)) == len(buf)
    with pytest.raises(IndexError):
        s[6]
    out = Output()
    dest = Dest("192.0.2.9", 1)
    add_datagrams(out.datagrams, dest, s)
    assert out.datagrams[dest] is s  # (kept whole: the socket sends it as is)
    out.send(dest, b"handshake")
    assert out.datagrams[dest] == [*ref, b"handshake"]
    add_datagrams(out.datagrams, dest, s)
    assert out.datagrams[dest] == [*ref, b"handshake", *ref]


# ---------------------------------------------------------------- tags


def test_every_tag_bit_flip_is_refused():
    needs_compiled()
    key = bytes(range(32))
    opener = aead.Opener(key)
    for size in (0, 1, 100, 1420):
        plain = b"\x45" + bytes(size - 1) if size else b""
        (msg,), _ = seal_batch(ChaCha20Poly1305(key).encrypt, 1, 77, [plain], 1420)
        assert opener.open(77, msg) is not None
        for bit in range((len(msg) - 16) * 8, len(msg) * 8):  # every bit of the ciphertext and tag
            flipped = bytearray(msg)
            flipped[bit // 8] ^= 1 << (bit % 8)
            assert opener.open(77, bytes(flipped)) is None, (size, bit)
        assert opener.open(78, msg) is None  # another nonce
        assert opener.open(77, msg[:-1]) is None and opener.open(77, msg[:31]) is None


def test_flipped_tags_are_bad_auth_in_both_engines():
    needs_compiled()
    outs = []
    for compiled in (True, False):
        aead.enable(compiled)
        n = Net().established()
        msgs = n.sealed(n.a, [ipv4(A_IN, B_IN, payload=bytes(200))] * 3)
        batch = []
        for bit in range(128):
            m = bytearray(msgs[0])
            m[len(m) - 16 + bit // 8] ^= 1 << (bit % 8)
            batch.append((bytes(m), A_ADDR))
        batch += [(m, A_ADDR) for m in msgs]
        out = n.b.from_network(batch, n.now)
        outs.append((out.packets, dict(n.b.drops), n.pb.stats.rx_packets))
    assert outs[0] == outs[1]
    assert outs[0][1]["bad_auth"] == 128 and len(outs[0][0]) == 3


# ---------------------------------------------------------------- replay window


def test_window_mirrors_replay_py():
    needs_compiled()
    r = random.Random(6479)
    for trial in range(300):
        a, b = aead.Window(), ReplayWindow()
        last = r.choice([0, 0, r.getrandbits(40), REJECT - 20000, U64 - 20000])
        limit = r.choice([REJECT, REJECT, last + r.randrange(1, 9000), 1 << 63])
        for _ in range(400):
            step = r.random()
            if step < 0.5:
                c = last + 1
            elif step < 0.6:
                c = last + r.randrange(2, 200)
            elif step < 0.65:
                c = last + r.choice([64, 128 * 64, 128 * 64 + 1, 8128, 8129, 1 << 20])
            elif step < 0.85:
                c = last - r.randrange(0, 8300)
            elif step < 0.9:
                c = r.choice([0, limit - 1, limit, limit + 1, U64])
            else:
                c = last - r.randrange(0, 64)
            c = max(0, min(U64, c))
            got, want = a.accept(c, limit), b.accept(c, limit)
            assert got == want, (trial, c, last, limit)
            assert a.last == b.last
            last = b.last
        if r.random() < 0.3:
            a.reset()
            b.reset()
            assert a.accept(0) == b.accept(0) is True
    w = aead.Window()
    assert w.accept(-1) is False and w.accept(1 << 64) is False and w.last == 0
    assert w.accept(5) and w.accept(3) and not w.accept(3) and not w.accept(REJECT)


# ---------------------------------------------------------------- open, differential


def _pairs() -> tuple[Net, Net]:
    """Two engine pairs in the same state (seeded keys and handshakes), B of the first with
    the compiled AEAD, B of the second with `cryptography`."""
    made = []
    for compiled in (True, False):
        aead.enable(compiled)
        n = Net(seed=5).established()
        made.append(n)
    c, p = made
    assert (c.pb.current.opener is not None) and p.pb.current.opener is None
    return c, p


def _hostile_batch(r: random.Random, n: Net, forge: ChaCha20Poly1305) -> list[tuple]:
    """One receive batch: runs of genuine messages with everything a hostile network or peer
    can do mixed in. Built from n's A (both pairs' A seal the same bytes)."""
    addr = A_ADDR
    other_addr = ("192.0.2.1", 51820)  # equal to A_ADDR, another object
    plains: list[bytes] = []
    for _ in range(r.randrange(1, 60)):
        k = r.randrange(12)
        if k < 5:
            plains.append(ipv4(A_IN, B_IN, payload=r.randbytes(r.randrange(0, 1300))))
        elif k == 5:
            plains.append(ipv6("fd00::1", "fd00::2", payload=r.randbytes(r.randrange(0, 300))))
        elif k == 6:
            plains.append(ipv4("10.9.9.9", B_IN, payload=b"spoofed"))  # not A's inner source
        elif k == 7:
            plains.append(b"")  # keepalive
        elif k == 8:
            plains.append(pack_header(100) + eth(b"\xff" * 6, bytes(6)))  # L2, unknown VNI
        elif k == 9:
            p = bytearray(ipv4(A_IN, B_IN, payload=bytes(50)))
            p[2:4] = r.choice([b"\x00\x05", b"\xff\xff", b"\x00\x13"])  # bad IP lengths
            plains.append(bytes(p))
        elif k == 10:
            plains.append(
                bytes([r.choice([0x00, 0x10, 0x45, 0x60, 0xFF])]) + r.randbytes(r.randrange(0, 40))
            )
        else:
            plains.append(ipv6("fd00::99", "fd00::2", payload=b"x"))
    msgs = n.sealed(n.a, plains)
    kp = n.pb.current
    batch: list = [(m, addr) for m in msgs]
    for _ in range(r.randrange(0, 12)):
        i = r.randrange(len(batch) + 1)
        m = msgs[r.randrange(len(msgs))]
        what = r.randrange(12)
        if what == 0:
            batch.insert(i, (m, addr))  # replay
        elif what == 1:
            f = bytearray(m)
            f[r.randrange(len(f))] ^= 1 << r.randrange(8)
            batch.insert(i, (bytes(f), addr))  # a flipped bit anywhere (header included)
        elif what == 2:
            batch.insert(i, (m[: r.randrange(len(m))], addr))  # truncated
        elif what == 3:
            batch.insert(i, (m, other_addr))  # equal origin, another object
        elif what == 4:
            batch.insert(i, (m, ("198.51.100.7", 9)))  # from elsewhere (roams, if genuine)
        elif what == 5:
            f = bytearray(m)
            f[4:8] = r.randbytes(4)
            batch.insert(i, (bytes(f), addr))  # another receiver index
        elif what == 6:
            ctr = r.choice([REJECT, REJECT + 1, U64])
            body = forge.encrypt(nonce(ctr), ipv4(A_IN, B_IN), None)
            batch.insert(i, (struct.pack("<IIQ", 4, kp.local_index, ctr) + body, addr))
        elif what == 7:
            batch.insert(i, [m, addr])  # a list, not a tuple
        elif what == 8:
            batch.insert(i, (bytearray(m), addr))  # not bytes
        elif what == 9:
            batch.insert(i, (r.randbytes(r.randrange(0, 200)), addr))  # junk
        elif what == 10:
            batch.insert(i, (bytes([1, 0, 0, 0]) + r.randbytes(144), addr))  # handshake junk
        else:
            r.shuffle(batch)  # reordering
    return batch


def _state(n: Net, out: Output) -> tuple:
    pb = n.pb
    kp = pb.current
    return (
        out.packets, out.frames, {d: list(v) for d, v in out.datagrams.items()},
        [str(e) for e in out.events], dict(n.b.drops), dict(pb.stats.drops),
        pb.stats.rx_packets, pb.stats.rx_bytes, pb.send_keepalive_at, pb.need_another_keepalive,
        pb.last_received, pb.endpoint, kp.replay.last if kp else None,
    )  # fmt: skip


def test_open_equals_the_python_receive_path_on_hostile_batches():
    needs_compiled()
    c, p = _pairs()
    r = random.Random(42)
    forge = ChaCha20Poly1305(c.pa.current.send_key)
    assert forge is not None and c.pa.current.send_key == p.pa.current.send_key
    for trial in range(150):
        seed = r.getrandbits(32)
        batch_c = _hostile_batch(random.Random(seed), c, forge)
        batch_p = _hostile_batch(random.Random(seed), p, forge)
        assert [x[0] for x in batch_c] == [x[0] for x in batch_p]  # the same bytes
        out_c = c.b.from_network(batch_c, c.now)
        out_p = p.b.from_network(batch_p, p.now)
        assert _state(c, out_c) == _state(p, out_p), trial
        if r.random() < 0.2:  # the peer moves back (a genuine datagram from elsewhere roamed it)
            c.now += 1
            p.now += 1
            c.send(c.b, [ipv4(B_IN, A_IN)])
            p.send(p.b, [ipv4(B_IN, A_IN)])
    drops = dict(c.b.drops)
    for reason in ("bad_auth", "replay", "expired_session", "bad_inner_packet",
                   "not_allowed_source", "unknown_index", "too_short"):  # fmt: skip
        assert drops.get(reason), (reason, drops)


# ---------------------------------------------------------------- nonces


def _wire_counters(wire: list[tuple[str, bytes]], who: str) -> list[tuple[int, int]]:
    return [struct.unpack_from("<4xIQ", d) for w, d in wire if w == who and d[0] == 4]


def test_counters_are_never_reused_across_batches_and_rekeys():
    needs_compiled()
    r = random.Random(3)
    n = Net().established()
    for step in range(120):
        batch = [ipv4(A_IN, B_IN, payload=bytes(r.randrange(0, 1400)))
                 for _ in range(r.randrange(1, 80))]  # fmt: skip
        n.send(n.a, batch)
        n.send(n.b, batch[:2] and [ipv4(B_IN, A_IN)])
        if step % 15 == 14:  # past REKEY_AFTER_TIME: a new session every 15 batches
            n.tick(n.now + C.REKEY_AFTER_TIME + 1)
    pairs = _wire_counters(n.wire, "a")
    assert len(pairs) == len(set(pairs))  # no (keypair, counter) twice
    by_index: dict[int, list[int]] = {}
    for index, ctr in pairs:
        by_index.setdefault(index, []).append(ctr)
    assert len(by_index) >= 8
    for ctrs in by_index.values():  # each keypair counts 0, 1, 2, ... without a gap
        assert ctrs == list(range(len(ctrs)))
    assert not {"replay", "bad_auth"} & set(n.b.drops)


def test_counters_are_shared_with_a_worker_without_reuse():
    needs_compiled()
    from tests.unit.test_workers import deliver, material, shared_net

    n, w = shared_net()
    n.established()
    kp = n.pa.current
    assert kp.ident and kp.sealer is not None
    w.set_keypair(n.pa.public_key, material(kp, n.now), n.now)
    assert w.peers[n.pa.public_key].send.sealer is not None
    r = random.Random(9)
    for _ in range(60):
        batch = [
            ipv4(A_IN, B_IN, payload=bytes(r.randrange(1400))) for _ in range(r.randrange(1, 50))
        ]
        if r.random() < 0.5:
            deliver(n, w.from_tunnel(batch, n.now))
        else:
            n.send(n.a, batch)
    pairs = _wire_counters(n.wire, "a")
    assert len(pairs) == len(set(pairs))
    ctrs = sorted(c for i, c in pairs if i == kp.remote_index)
    assert ctrs == list(range(len(ctrs)))  # every reserved counter used once, none skipped
    assert not {"replay", "bad_auth"} & set(n.b.drops)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "cryptography"])
def test_nothing_is_sealed_at_or_past_reject_after_messages(compiled):
    if compiled:
        needs_compiled()
    aead.enable(compiled)
    n = Net().established()
    kp = n.pa.current
    kp.send_counter = REJECT - 5
    since = len(n.wire)
    n.send(n.a, [ipv4(A_IN, B_IN)] * 20)
    sent = _wire_counters(n.wire[since:], "a")
    assert [c for i, c in sent if i == kp.remote_index] == list(range(REJECT - 5, REJECT))
    assert kp.send_counter == REJECT and not kp.usable_for_sending(n.now)
    n.now += C.REKEY_TIMEOUT  # (one initiation per REKEY_TIMEOUT: the last was at set-up)
    since = len(n.wire)
    n.send(n.a, [ipv4(A_IN, B_IN)])  # no counter left: staged, and a new handshake
    assert all(i != kp.remote_index for i, _ in _wire_counters(n.wire[since:], "a"))
    assert 1 in n.kinds(since) and n.pa.current is not kp


# ---------------------------------------------------------------- fuzz


def test_fuzz_the_compiled_open_with_a_million_inputs():
    needs_compiled()
    from tests.harness.aead_fuzz import fuzz
    from tunnelpy.protocol import _aead

    stats = fuzz(_aead, 1_000_000, seed=11)
    assert stats["inputs"] >= 1_000_000
    # It reached every part: messages authenticated and delivered, L2 handed on, refusals.
    assert stats["accepted"] > 10_000 and stats["delivered"] > 1_000 and stats["rest"] > 1_000
    assert stats["units"] > 1_000  # the units mode joined runs (tcp_units, _Units)
    assert stats["l2_direct"] > 50  # frames taken by the L2 fast path (l2_key)
    assert stats["frame_units"] > 300  # frames joined too (frame_units, _Units with ETH)
    assert stats["uso_units"] > 100  # UDP datagrams into USO writes (uso)


# ---------------------------------------------------------------- the bench's floor


def test_the_floors_copy_mode_is_a_copy_and_interoperates_only_with_itself():
    """TUNNELPY_TEST_AEAD=copy (a bench knob): the plaintext travels as is with a zero tag, a
    changed tag is still refused, and a real keypair refuses such messages."""
    needs_compiled()
    aead.enable(True, copy=True)
    n = Net().established()
    assert n.pa.current.sealer is not None and aead.copying()
    p = ipv4(A_IN, B_IN, payload=b"plain as day" * 10)
    (m,) = n.sealed(n.a, [p])
    assert m[16 : 16 + len(p)] == p and m[-16:] == bytes(16)
    assert n.b.from_network([(m, A_ADDR)], n.now).packets == [p]
    f = bytearray(m)
    f[-1] ^= 1
    assert n.b.from_network([(bytes(f), A_ADDR)], n.now).packets == []
    assert n.b.drops["bad_auth"] == 1
    real = aead.Opener(n.pb.current.send_key)  # (any real key)
    assert real.open(0, m) is None
    aead.enable(True)
    assert not aead.copying()


def test_seal_stops_exactly_below_reject_after_messages():
    """Batches just below, at and above the room left: never a counter at the limit."""
    needs_compiled()
    key = bytes(range(32))
    for room in (0, 1, 2, 5, 64):
        for m in {max(0, room - 1), room, room + 1, room + 30}:
            payloads = [b"\x45" + bytes(59)] * m
            for sealer in (aead.Sealer(key), None):
                got, sent, count = seal(
                    sealer, ChaCha20Poly1305(key).encrypt, 9, REJECT - room, payloads, 1420
                )
                assert count == len(got) == min(m, room), (room, m, sealer)
                ctrs = [struct.unpack_from("<Q", d, 8)[0] for d in got]
                assert ctrs == list(range(REJECT - room, REJECT - room + count))
                assert sent == 96 * count  # (60 bytes padded to 64, + 32)


def test_open_equals_the_python_path_on_l2_batches():
    """L2 plaintexts on a segment: the compiled open hands a frame that starts like the last
    one _deliver wrote (header, destination and source MAC) straight to that TAP's list, and
    any other to _deliver, ending the call. Against the `cryptography` path (everything through
    _deliver): the same frames in the same order, drops, FDB and statistics, over batches of
    runs of one MAC pair, new pairs, broadcast, group source MACs, unknown VNIs, short frames,
    IP packets between, replays and forgeries."""
    from tests.harness.engine_pair import VNI
    from tests.harness.packets import mac

    needs_compiled()
    made = []
    for compiled in (True, False):
        aead.enable(compiled)
        made.append(Net(seed=5, vni=VNI).established())
    c, p = made
    assert c.pb.current.opener is not None and p.pb.current.opener is None
    r = random.Random(9)
    for trial in range(150):
        seed = r.getrandbits(32)
        outs = []
        for n in (c, p):
            g = random.Random(seed)
            plains: list[bytes] = []
            for _ in range(g.randrange(1, 8)):
                k = g.randrange(10)
                dst = g.choice([mac(1), mac(2), b"\xff" * 6, mac(0x0B)])
                src = g.choice([mac(0x0A), mac(3), mac(4)])
                if k < 6:  # a run of one MAC pair
                    for _ in range(g.randrange(1, 30)):
                        body = ETH_BODY + g.randbytes(g.randrange(0, 1300))
                        plains.append(pack_header(VNI) + eth(dst, src, body))
                elif k == 6:
                    plains.append(pack_header(VNI) + eth(dst, b"\x01" + src[1:]))  # group src
                elif k == 7:
                    plains.append(pack_header(VNI + 1) + eth(dst, src))  # unknown VNI
                elif k == 8:
                    plains.append(pack_header(VNI) + g.randbytes(g.randrange(0, 14)))  # short
                else:
                    plains.append(ipv4(A_IN, B_IN, payload=g.randbytes(g.randrange(0, 200))))
            msgs = n.sealed(n.a, plains)
            batch = [(m, A_ADDR) for m in msgs]
            for _ in range(g.randrange(0, 3)):
                i = g.randrange(len(batch) + 1)
                m = msgs[g.randrange(len(msgs))]
                f = bytearray(m)
                f[16 + g.randrange(len(f) - 16)] ^= 1
                batch.insert(i, (g.choice([m, bytes(f)]), A_ADDR))
            out = n.b.from_network(batch, n.now)
            fdb = n.b.segments[VNI].fdb.entries(n.now)
            outs.append((_state(n, out), sorted((m, str(q), a) for m, q, a in fdb)))
        assert outs[0] == outs[1], trial
        c.now += 0.5
        p.now += 0.5


ETH_BODY = b"\x08\x00"  # (an IPv4 ethertype; the payload is opaque to the switch)
