"""The daemon <-> worker codec and what the daemon does with a worker's bytes.

Round trips of every message; a 10^5-prefix routing table (its size, and its time against
pickle's on the same data); hostile input — truncated, mis-sized, mis-tagged, oversized and
random bytes — never raising anything but MessageError; the control channel failing on broken
framing; and a pool, on real socketpairs, killing and restarting a worker that sends garbage
(a pickle that would run code among it), mirroring state only when told to (no polling), and
re-routing what a worker stages on its own table.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import ipaddress
import math
import os
import pickle
import random
import socket
import struct
import subprocess
import time
import timeit
from pathlib import Path

import pytest

from tests.harness.engine_pair import A_IN, B_ADDR, B_IN, Net
from tests.harness.packets import ipv4
from tunnelpy.protocol.actions import Dest
from tunnelpy.protocol.events import SourceChanged
from tunnelpy.workers import child as childmod
from tunnelpy.workers import messages as M
from tunnelpy.workers import pool as poolmod
from tunnelpy.workers.channel import FRAME, Channel, pair
from tunnelpy.workers.messages import (
    Endpoint,
    Keypair,
    KeypairMaterial,
    MessageError,
    PeerRoutes,
    Peers,
    PeerSent,
    Rekey,
    Report,
    Stage,
    Stop,
    decode_from_daemon,
    decode_from_worker,
    encode,
)
from tunnelpy.workers.zygote import decode_request, encode_request, parse_answer

K1, K2 = bytes(range(32)), bytes(range(100, 132))
NET = ipaddress.ip_network


def table(n4: int, n6: int) -> list:
    v4 = [NET((0x0A000000 + (i << 8), 24)) for i in range(n4)]
    v6 = [NET(((0xFD00 << 112) + (i << 64), 64)) for i in range(n6)]
    return v4 + v6


DAEMON_MESSAGES = [
    Peers([]),
    Peers([
        PeerRoutes(K1, ("192.0.2.1", 51820), [NET("10.0.0.0/8"), NET("fd00::/64"), NET("::/0")]),
        PeerRoutes(K2, None, []),
        PeerRoutes(K1, ("192.0.2.7", 1), [NET("10.1.0.0/16")], ("2001:db8::2", 7)),
        PeerRoutes(bytes(32), ("fe80::1%eth0", 0), [NET("0.0.0.0/0"), NET("1.2.3.4/32")]),
    ]),
    Endpoint(K1, ("2001:db8::1", 65535)),
    Endpoint(K2, None),
    Endpoint(K1, ("192.0.2.1", 51820), ("192.0.2.22", 3)),
    Endpoint(K2, ("2001:db8::1", 1),
             ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", M.MAX_IFINDEX)),
    Endpoint(K2, ("fe80::1%eth0", 1), ("fe80::2", 0)),
    Keypair(K1, KeypairMaterial(K2, 0xFFFFFFFF, 65535, (1 << 64) - 1, 12.5, True)),
    Keypair(K1, KeypairMaterial(K2, 0, 0, 1, 0.0, False)),
    Keypair(K2, None),
    Stop(),
]  # fmt: skip
WORKER_MESSAGES = [
    Report([]),
    Report(
        [PeerSent(K1, 10, 1, True), PeerSent(K2, (1 << 64) - 1, 0, False)],
        {"tun_no_route": 3, "udp_send_error": 1 << 40},
    ),
    Report([], {reason: i + 1 for i, reason in enumerate(M.WORKER_DROPS)}),
    Stage(K1, [b"\x45" + bytes(39), b"x", bytes(M.MAX_PACKET)]),
    Stage(K2, []),
    Rekey([K1, K2]),
    Rekey([]),
]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("msg", DAEMON_MESSAGES, ids=repr)
def test_daemon_messages_round_trip(msg):
    assert decode_from_daemon(encode(msg)) == msg


@pytest.mark.parametrize("msg", WORKER_MESSAGES, ids=lambda m: type(m).__name__)
def test_worker_messages_round_trip(msg):
    assert decode_from_worker(encode(msg)) == msg


@pytest.mark.parametrize("msg", DAEMON_MESSAGES + WORKER_MESSAGES, ids=lambda m: type(m).__name__)
def test_each_direction_accepts_only_its_own_messages(msg):
    wrong = decode_from_worker if msg in DAEMON_MESSAGES else decode_from_daemon
    with pytest.raises(MessageError, match="no message"):
        wrong(encode(msg))


def test_what_does_not_fit_a_field_is_refused_when_encoding():
    with pytest.raises(ValueError):
        encode(Rekey([b"short"]))  # "32s" would silently pad it
    with pytest.raises(ValueError):
        encode(Endpoint(K1, ("é", 1)))
    with pytest.raises(struct.error):
        encode(Endpoint(K1, ("192.0.2.1", 65536)))
    with pytest.raises(ValueError):
        encode(Endpoint(K1, ("192.0.2.1", 1), ("192.0.2.2", -1)))
    with pytest.raises(ValueError):
        encode(Endpoint(K1, ("192.0.2.1", 1), ("x" * 46, 1)))
    with pytest.raises(KeyError):
        encode(Report([], {"bad_auth": 1}))  # not a drop a worker can have
    with pytest.raises(ValueError):
        encode(Stage(K1, [b""]))


def test_the_send_engine_reports_only_drops_the_codec_carries():
    from tunnelpy.workers.counters import LocalCounters
    from tunnelpy.workers.sender import SendEngine

    w = SendEngine(LocalCounters())
    w.set_peers([PeerRoutes(K1, None, [NET("10.0.0.0/24")])])
    w.from_tunnel([b"\x00" * 30, ipv4(A_IN, "10.9.9.9"), b""], 0.0)
    sent, drops = w.take_report()
    assert set(drops) <= set(M.WORKER_DROPS) and drops
    assert decode_from_worker(encode(Report(sent, drops))).drops == drops


# ---------------------------------------------------------------- a routing table of 10^5 prefixes


def test_a_routing_table_of_100k_prefixes_is_compact_and_faster_than_pickle():
    nets = table(50_000, 50_000)
    peers = [PeerRoutes(os.urandom(32), ("192.0.2.1", 51820 + i), nets[i::100]) for i in range(100)]
    msg = Peers(peers)
    # What the daemon sent before: the same content as pickled tuples.
    old = ("peers", [(p.key, p.endpoint, p.networks) for p in peers])

    def timed(f, arg) -> tuple[float, object]:
        t = time.perf_counter()
        result = f(arg)
        return time.perf_counter() - t, result

    def best(f, arg, n: int = 5) -> tuple[float, object]:
        # Best of n (other processes share the CPU), with the cyclic GC off: its passes cost
        # in proportion to everything the test process holds (the whole suite's objects in a
        # full run), not to the codec. A CI run of the whole suite measured decoding at 0.49 s
        # against unpickling's 0.37 s; alone, with the collector off, 0.12 against 0.40. The
        # daemon relaxes the collector too (datapath.relax_gc).
        gc.collect()
        gc.disable()
        try:
            runs = [timed(f, arg) for _ in range(n)]
        finally:
            gc.enable()
        return min(t for t, _ in runs), runs[0][1]

    t_enc, data = best(encode, msg)
    t_dump, pickled = best(lambda m: pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL), old)
    t_dec, got = best(decode_from_daemon, data)
    t_load, _ = best(pickle.loads, pickled)
    t_dec2, _ = best(decode_from_daemon, data)  # (once more after: the CPU's speed drifts)
    assert got == msg
    # tag, count; per peer key, endpoint (1 + 9 + 2), no source (1), two counts; 5 bytes per
    # IPv4 prefix and 17 per IPv6 one.
    assert len(data) == 5 + 100 * (32 + 12 + 1 + 8) + 50_000 * 5 + 50_000 * 17
    assert len(data) < len(pickled) / 2
    assert t_enc < t_dump / 2, "encoding (in the daemon's loop) slower than half pickle's"
    assert min(t_dec, t_dec2) < t_load, "decoding slower than unpickling"


def test_a_small_report_costs_microseconds():
    msg = Report([PeerSent(os.urandom(32), 1400 * 64, 64, True) for _ in range(4)],
                 {"tun_no_route": 2})  # fmt: skip
    data = encode(msg)
    # Best of many short runs: other processes share the CPU with the test. About 10 µs.
    best = min(timeit.repeat(lambda: decode_from_worker(encode(msg)), number=200, repeat=25))
    assert best / 200 < 100e-6, f"{best / 200 * 1e6:.1f} µs per report"
    assert len(data) == 5 + 4 * 49 + 1 + 9


# ---------------------------------------------------------------- hostile bytes


@pytest.mark.parametrize("msg", DAEMON_MESSAGES + WORKER_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_truncation_and_any_trailing_byte_is_refused(msg):
    decode = decode_from_daemon if msg in DAEMON_MESSAGES else decode_from_worker
    data = encode(msg)
    for n in sorted(
        set(range(min(len(data), 400))) | set(range(max(len(data) - 40, 0), len(data)))
    ):
        with pytest.raises(MessageError):
            decode(data[:n])
    with pytest.raises(MessageError):
        decode(data + b"\x00")


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


ROW = struct.pack("<32sQQB", K1, 1, 1, 1)
HOSTILE_FROM_WORKER = {
    "empty": b"",
    "report: 2^32-1 rows announced": b"\x10" + u32(0xFFFFFFFF) + ROW,
    "report: sent flag 2": b"\x10" + u32(1) + ROW[:-1] + b"\x02" + b"\x00",
    "report: unknown drop reason": b"\x10" + u32(0) + b"\x01" + struct.pack("<BQ", 200, 1),
    "report: a reason twice": b"\x10" + u32(0) + b"\x02" + struct.pack("<BQ", 0, 1) * 2,
    "report: 255 drops announced": b"\x10" + u32(0) + b"\xff",
    "stage: 2^32-1 packets announced": b"\x11" + K1 + u32(0xFFFFFFFF) + u32(1) + b"x",
    "stage: empty packet": b"\x11" + K1 + u32(2) + u32(0) + u32(2) + b"xy",
    "stage: packet over MAX_PACKET": b"\x11" + K1 + u32(1) + u32(M.MAX_PACKET + 1)
    + bytes(M.MAX_PACKET + 1),
    "stage: lengths past the end": b"\x11" + K1 + u32(2) + u32(3) + u32(3) + b"abcde",
    "stage: bytes after the packets": b"\x11" + K1 + u32(1) + u32(1) + b"ab",
    "rekey: count past the end": b"\x12" + u32(3) + K1 + K2,
    "rekey: a partial key": b"\x12" + u32(1) + K1[:31],
    "pickle of a Report": b"\x80" + pickle.dumps(Report([], {}))[1:],
}  # fmt: skip


@pytest.mark.parametrize("data", HOSTILE_FROM_WORKER.values(), ids=HOSTILE_FROM_WORKER.keys())
def test_hostile_worker_messages_are_refused(data):
    with pytest.raises(MessageError):
        decode_from_worker(data)


def test_every_tag_but_the_three_worker_messages_is_refused():
    accepted = set()
    for tag in range(256):
        try:
            decode_from_worker(bytes([tag]) + u32(0) + b"\x00")
            accepted.add(tag)
        except MessageError:
            pass
    assert accepted == {0x10}  # (an empty Report; a Stage or Rekey needs other bytes)
    for tag in range(256):
        if tag not in (0x10, 0x11, 0x12):
            with pytest.raises(MessageError, match="no message"):
                decode_from_worker(bytes([tag]) + bytes(64))


def peers_bytes(
    host: bytes, port: int, n4: int, addrs: bytes, plens: bytes, src: bytes = b"\x00"
) -> bytes:
    endpoint = bytes([len(host)]) + host + struct.pack("<H", port) if host else b"\x00"
    return b"\x01" + u32(1) + K1 + endpoint + src + struct.pack("<II", n4, 0) + addrs + plens


def src_bytes(host: bytes, ifindex: int) -> bytes:
    return bytes([len(host)]) + host + u32(ifindex)


def endpoint_bytes(src: bytes) -> bytes:
    return b"\x02" + K1 + b"\x09192.0.2.1" + struct.pack("<H", 1) + src


def test_the_hostile_builders_make_valid_messages_when_given_valid_fields():
    # (So that each hostile case below fails for the reason it names, not a framing slip.)
    assert decode_from_daemon(peers_bytes(b"192.0.2.1", 7, 1, u32(0x0A000000), b"\x18")) == Peers(
        [PeerRoutes(K1, ("192.0.2.1", 7), [NET("10.0.0.0/24")])]
    )
    assert decode_from_daemon(endpoint_bytes(src_bytes(b"fd00::1", 4))) == Endpoint(
        K1, ("192.0.2.1", 1), ("fd00::1", 4)
    )


HOSTILE_FROM_DAEMON = {
    "host bits set": peers_bytes(b"", 0, 1, u32(0x0A000001), b"\x18"),
    "prefix length 33": peers_bytes(b"", 0, 1, u32(0), b"\x21"),
    "a name, not an address": peers_bytes(b"example.com", 1, 0, b"", b""),
    "non-ASCII host": peers_bytes(b"\xff\xfe", 1, 0, b"", b""),
    "2^32-1 prefixes announced": peers_bytes(b"", 0, 0xFFFFFFFF, u32(0), b"\x00"),
    "2^32-1 peers announced": b"\x01" + u32(0xFFFFFFFF) + K1,
    "keypair: presence flag 2": b"\x03" + K1 + b"\x02",
    "keypair: NaN age": b"\x03" + K1 + b"\x01"
    + struct.pack("<32sIIQdB", K2, 1, 1, 1, math.nan, 0),
    "keypair: initiator flag 7": b"\x03" + K1 + b"\x01"
    + struct.pack("<32sIIQdB", K2, 1, 1, 1, 0.0, 7),
    "stop with a payload": b"\x04\x00",
    "source: a name": endpoint_bytes(src_bytes(b"example.com", 1)),
    "source: a scope": endpoint_bytes(src_bytes(b"fe80::1%eth0", 1)),
    "source: interface index 2^31": endpoint_bytes(src_bytes(b"10.0.0.1", 1 << 31)),
    "source: 46 bytes": endpoint_bytes(src_bytes(b"1" * 46, 1)),
    "source: index cut": endpoint_bytes(src_bytes(b"10.0.0.1", 1)[:-1]),
    "source: non-ASCII": peers_bytes(b"", 0, 0, b"", b"", src_bytes(b"\xc3\xa9", 1)),
}  # fmt: skip


@pytest.mark.parametrize("data", HOSTILE_FROM_DAEMON.values(), ids=HOSTILE_FROM_DAEMON.keys())
def test_malformed_daemon_messages_are_refused(data):
    with pytest.raises(MessageError):
        decode_from_daemon(data)


def test_fuzz_decoding_raises_nothing_but_message_error():
    """Random bytes, valid messages with bytes flipped, cut, repeated or inserted, and random
    bodies behind each valid tag: each decodes to a message of its direction or raises
    MessageError — never anything else."""
    rng = random.Random(20261201)
    valid = [encode(m) for m in DAEMON_MESSAGES + WORKER_MESSAGES if not isinstance(m, Stage)]
    valid.append(encode(Stage(K1, [b"ab", b"cde"])))
    outcomes = {"message": 0, "refused": 0}
    for i in range(30_000):
        kind = i % 4
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 120))
        elif kind == 1:
            data = bytes([rng.choice((1, 2, 3, 4, 16, 17, 18))]) + rng.randbytes(rng.randrange(80))
        else:
            b = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                if not b:
                    break
                at = rng.randrange(len(b))
                op = rng.randrange(4)
                if op == 0:
                    b[at] = rng.randrange(256)
                elif op == 1:
                    del b[at:]
                elif op == 2:
                    b[at:at] = rng.randbytes(rng.randrange(1, 8))
                else:
                    b[at : at + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"))
            data = bytes(b)
        for decode, kinds in ((decode_from_worker, (Report, Stage, Rekey)),
                              (decode_from_daemon, (Peers, Endpoint, Keypair, Stop))):  # fmt: skip
            try:
                msg = decode(data)
            except MessageError:
                outcomes["refused"] += 1
            else:
                assert isinstance(msg, kinds)
                outcomes["message"] += 1
    assert outcomes["message"] > 100 and outcomes["refused"] > 10_000, outcomes


def test_decoding_takes_bytes_only():
    with pytest.raises(MessageError):
        decode_from_worker(bytearray(encode(Rekey([]))))


# ---------------------------------------------------------------- the zygote's request and answer


def test_zygote_request_round_trip_and_placeholders():
    argv = ["--tun-fd", "{tun}", "--udp-fd", "{udp}", "--ctl-fd", "{ctl}",
            "--counters-fd", "{counters}", "--name", "{tun}x"]  # fmt: skip
    got = decode_request(encode_request(argv), [7, 8, 9, 10])
    fds = ["--tun-fd", "7", "--udp-fd", "8", "--ctl-fd", "9", "--counters-fd", "10"]
    assert got == [*fds, "--name", "{tun}x"]  # (only whole placeholders are replaced)


@pytest.mark.parametrize("data", [b'{"a": 1}', b"[1, 2]", b"[", b"\x80\x04N.", b'["x"]' * 1000,
                                  str(["a"] * 100).replace("'", '"').encode()])  # fmt: skip
def test_zygote_refuses_requests_that_are_not_a_short_list_of_strings(data):
    with pytest.raises(ValueError):
        decode_request(data, [1, 2, 3, 4])


def test_zygote_request_needs_all_four_descriptors():
    with pytest.raises(ValueError, match="descriptors"):
        decode_request(encode_request(["x"]), [1, 2])


@pytest.mark.parametrize("answer,pid", [(b"1234", 1234), (b"4194304", 4194304)])
def test_zygote_answer_is_a_pid(answer, pid):
    assert parse_answer(answer) == pid


@pytest.mark.parametrize("answer", [b"", b"0", b"4194305", b"12345678", b"-1", b" 12", b"\xff\x00",
                                    b"error: no such device"])  # fmt: skip
def test_zygote_answer_otherwise_is_an_os_error_with_printable_text(answer):
    with pytest.raises(OSError) as e:
        parse_answer(answer)
    assert str(e.value).isprintable()


# ---------------------------------------------------------------- the channel's framing


@pytest.fixture
def loop():
    lp = asyncio.new_event_loop()
    errors: list = []
    lp.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    yield lp
    lp.close()
    assert errors == [], "an exception reached the event loop"


def run_for(loop, seconds: float) -> None:
    loop.run_until_complete(asyncio.sleep(seconds))


def daemon_end(loop, sock, max_message: int = 1 << 20):
    got, closed = [], []
    ch = Channel(sock, loop, got.append, lambda: closed.append(True),
                 decode=decode_from_worker, max_message=max_message)  # fmt: skip
    return ch, got, closed


def send_frames(loop, sock, frames) -> None:
    """Send as a worker would, letting the loop (the daemon's end) read when the socket is
    full; stops once the daemon's end has closed."""
    sock.setblocking(False)
    for f in frames:
        while True:
            try:
                sock.send(f)
                break
            except BlockingIOError:
                run_for(loop, 0.002)
            except OSError:  # the other end closed the channel
                return


BROKEN_FRAMES = {
    "marker neither L nor M": ([b"X" + encode(Rekey([]))], "marker"),
    "short 'more' frame": ([b"M" + b"\x12", b"L" + bytes(4)], "short frame"),
    "empty message": ([b"L"], "malformed"),
    "garbage": ([b"L\x12\xff\xff"], "malformed"),
    "over max_message": ([b"M" + bytes(FRAME)] * 9 + [b"L"], "over"),
    "frame longer than FRAME": ([b"L" + bytes(FRAME + 1)], "longer than FRAME"),
}


@pytest.mark.parametrize("frames,why", BROKEN_FRAMES.values(), ids=BROKEN_FRAMES.keys())
def test_channel_fails_on_broken_framing(loop, frames, why):
    a, b = pair()
    ch, got, closed = daemon_end(loop, a)
    send_frames(loop, b, [b"L" + encode(Rekey([K1]))] + frames + [b"L" + encode(Rekey([K2]))])
    run_for(loop, 0.05)
    assert got == [Rekey([K1])]  # nothing after the broken frame is read
    assert closed == [True] and ch.closed and why in (ch.error or "")
    b.close()


def test_channel_fails_on_passed_descriptors(loop):
    a, b = pair()
    ch, got, closed = daemon_end(loop, a)
    r, w = os.pipe()
    socket.send_fds(b, [b"L" + encode(Rekey([]))], [r])
    os.close(r)
    os.close(w)
    run_for(loop, 0.05)
    assert got == [] and closed == [True] and "descriptors" in (ch.error or "")
    b.close()


def test_channel_reassembles_up_to_max_message(loop):
    a, b = pair()
    ch, got, closed = daemon_end(loop, a, max_message=3 * FRAME)
    keys = [bytes([i % 256]) * 32 for i in range((3 * FRAME - 5) // 32)]
    data = encode(Rekey(keys))
    assert 2 * FRAME < len(data) <= 3 * FRAME
    frames = [b"M" + data[at : at + FRAME] for at in range(0, len(data), FRAME)]
    frames[-1] = b"L" + frames[-1][1:]
    send_frames(loop, b, frames)
    run_for(loop, 0.05)
    assert got == [Rekey(keys)] and not closed
    ch.close()
    b.close()


def test_channel_fails_a_peer_that_stops_reading(loop):
    a, b = pair()
    ch = Channel(a, loop, lambda m: None, lambda: None, decode=decode_from_worker,
                 max_message=1 << 20, max_queued=16 << 20)  # fmt: skip
    big = encode(Rekey([K1] * (1 << 17)))  # 4 MiB: the socket buffers fill, then the queue
    for _ in range(8):
        ch.send_bytes(big)
    assert ch.closed and "stopped reading" in (ch.error or "")
    b.close()


# ---------------------------------------------------------------- the pool on real socketpairs


class FakeTun:
    name = "tpytest0"
    vnet_hdr = False

    def detach_writes(self) -> None:
        pass


class PoolRig:
    """A WorkerPool on a real engine whose workers are socketpairs held by the test, each
    with a real process standing for the worker (for the pool to kill)."""

    def __init__(self, loop, monkeypatch) -> None:
        self.net = Net()
        self.performed: list = []
        self.ends: list[socket.socket] = []
        self.procs: list[subprocess.Popen] = []
        monkeypatch.setattr(poolmod, "RESTART_DELAY", 0.01)
        tun, udp = FakeTun(), None  # the pool uses neither outside _fork
        self.pool = poolmod.WorkerPool(
            loop, self.net.a, lambda: self.net.now, tun, udp, 2, self.performed.append,  # type: ignore[arg-type]
            offload=False,
        )  # fmt: skip
        monkeypatch.setattr(self.pool, "_start_zygote", lambda: None)
        monkeypatch.setattr(self.pool, "_fork", self._fork)
        self.loop = loop

    def _fork(self, index: int) -> tuple[int, socket.socket]:
        ours, theirs = pair()
        theirs.setblocking(False)
        self.ends.append(theirs)
        proc = subprocess.Popen(["sleep", "60"])
        self.procs.append(proc)
        return proc.pid, ours

    def received(self, end: socket.socket) -> list:
        """Every message the pool has sent down `end` so far."""
        msgs, partial = [], b""
        while True:
            try:
                frame = end.recv(FRAME + 1)
            except BlockingIOError:
                return msgs
            partial += frame[1:]
            if frame[:1] == b"L":
                msgs.append(decode_from_daemon(partial))
                partial = b""

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self.loop.run_until_complete(self.pool.stop())
        for e in self.ends:
            e.close()


@pytest.fixture
def rig(loop, monkeypatch):
    r = PoolRig(loop, monkeypatch)
    r.pool.start()
    yield r
    r.close()


def test_pool_sends_full_state_then_only_what_it_is_told_changed(rig):
    n = rig.net
    (end,) = rig.ends
    first = rig.received(end)
    assert first == [
        Peers([PeerRoutes(n.pa.public_key, B_ADDR, [NET("10.0.0.2/32"), NET("fd00::2/128")])]),
        Keypair(n.pa.public_key, None),
    ]
    n.a.set_allowed_ips(n.pa, [NET("10.0.0.0/24")])
    run_for(rig.loop, 0.4)
    assert rig.received(end) == [], "the pool polled: nobody called sync()"
    rig.pool.sync()
    assert rig.received(end) == [Peers([PeerRoutes(n.pa.public_key, B_ADDR, [NET("10.0.0.0/24")])])]
    n.send(n.a, [ipv4(A_IN, B_IN)])  # a handshake: the engine's event makes the daemon call
    rig.pool.sync_soon()  # sync_soon
    run_for(rig.loop, 0.01)
    (kp,) = rig.received(end)
    assert isinstance(kp, Keypair) and kp.material is not None
    assert kp.material.send_key == n.pa.current.send_key and kp.material.age == 0.0
    rig.pool.sync()
    assert rig.received(end) == []  # nothing changed since


def test_pool_mirrors_the_sticky_source_with_the_endpoint(rig):
    n = rig.net
    (end,) = rig.ends
    rig.received(end)
    n.send(n.a, [ipv4(A_IN, B_IN)])
    rig.pool.sync()
    rig.received(end)  # (the keypair)
    # B answers at A's secondary address: an authenticated datagram moves A's source there.
    src = ("192.0.2.111", 4)
    out = n.b.from_tunnel([ipv4(B_IN, A_IN)], n.now)
    got = n.a.from_network([(d, (*B_ADDR, src)) for dgs in out.datagrams.values() for d in dgs],
                           n.now)  # fmt: skip
    assert n.pa.src == src and any(isinstance(e, SourceChanged) for e in got.events)
    rig.pool.sync()
    assert rig.received(end) == [Endpoint(n.pa.public_key, B_ADDR, src)]
    # A full peer list (a worker restarted, or routes changed) carries it as well.
    assert rig.pool._peers_msg().peers[0].src == src
    # The socket lost it: the engine forgets it, the workers hear of it.
    n.a.forget_sources([src])
    rig.pool.sync()
    assert rig.received(end) == [Endpoint(n.pa.public_key, B_ADDR, None)]
    rig.pool.sync()
    assert rig.received(end) == []


def test_pool_applies_reports_and_reroutes_staged_packets(rig):
    n = rig.net
    (end,) = rig.ends
    rig.received(end)
    tx = n.pa.stats.tx_bytes
    end.send(b"L" + encode(Report([PeerSent(n.pa.public_key, 1000, 7, True),
                                   PeerSent(K1, 5, 5, True)], {"tun_no_route": 2})))  # fmt: skip
    run_for(rig.loop, 0.02)
    assert n.pa.stats.tx_bytes == tx + 1000 and rig.pool.workers[1].tx_packets == 12
    assert n.a.drops["tun_no_route"] == 2
    # Staged for pa: one packet pa owns, one the daemon's table routes nowhere. Only the first
    # is staged behind a handshake (an initiation goes out).
    mine, stray = ipv4(A_IN, B_IN), ipv4(A_IN, "10.9.9.9")
    end.send(b"L" + encode(Stage(n.pa.public_key, [mine, stray])))
    end.send(b"L" + encode(Stage(K1, [mine])))  # not a peer: counted, not sent
    run_for(rig.loop, 0.02)
    assert n.a.drops["tun_no_route"] == 4
    sent = [d for out in rig.performed for d in out.datagrams.get(Dest(*B_ADDR), [])]
    assert [d[0] for d in sent] == [1] and list(n.pa.staged) == [mine]
    assert rig.pool.malformed == 0 and len(rig.procs) == 1


class Evil:
    """Unpickled, this would create the file: proof that nobody unpickles."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("garbage", ["pickle", "bad tag", "oversized report"])
def test_pool_kills_and_restarts_a_worker_that_sends_garbage(rig, tmp_path, garbage):
    (end,) = rig.ends
    rig.received(end)
    old = rig.procs[0]
    Evil.path = str(tmp_path / "pwned")
    frames = {
        "pickle": [b"L" + pickle.dumps(Evil())],
        "bad tag": [b"L\x01" + bytes(40)],
        "oversized report": [b"M" + bytes(FRAME)] * 40 + [b"L"],
    }[garbage]
    send_frames(rig.loop, end, frames)
    run_for(rig.loop, 0.1)
    assert old.wait(timeout=5) == -9  # killed: it could still hold its queue
    assert rig.pool.malformed == 1 and not os.path.exists(Evil.path)
    assert len(rig.procs) == 2 and rig.pool.workers[1].pid == rig.procs[1].pid  # restarted
    assert [type(m) for m in rig.received(rig.ends[1])] == [Peers, Keypair]  # with full state
    # The old channel is gone: a well-formed message on it now reaches nobody.
    with pytest.raises(OSError):
        end.send(b"L" + encode(Rekey([])))


def test_a_worker_that_exits_is_restarted_without_being_counted_malformed(rig):
    (end,) = rig.ends
    end.close()
    rig.ends.clear()
    run_for(rig.loop, 0.1)
    assert rig.pool.malformed == 0 and len(rig.procs) == 2 and 1 in rig.pool.workers


def test_parent_of_reads_proc_even_with_parentheses_in_the_name(tmp_path):
    exe = tmp_path / "a) b (c"
    os.symlink("/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "60"])
    try:
        deadline = time.monotonic() + 5  # (until the exec has renamed the child)
        stat = Path(f"/proc/{proc.pid}/stat")
        while b"a) b" not in stat.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert poolmod._parent_of(proc.pid) == os.getpid()
    finally:
        proc.kill()
        proc.wait()
    assert poolmod._parent_of(proc.pid) is None  # reaped: gone


# ---------------------------------------------------------------- the worker cuts its messages


def test_stage_chunks_keep_messages_under_the_daemons_limit():
    big = [bytes(M.MAX_PACKET)] * 300
    chunks = childmod.stage_chunks(big + [b"x"] * 600)
    assert [p for c in chunks for p in c] == big + [b"x"] * 600
    assert all(len(c) <= childmod.STAGE_CHUNK for c in chunks)
    worst = max(len(encode(Stage(K1, c))) for c in chunks)
    assert worst <= childmod.STAGE_BYTES + M.MAX_PACKET + 4 * childmod.STAGE_CHUNK + 37
    assert worst < poolmod.MAX_FROM_WORKER
    rows = [PeerSent(K1, 1, 1, True)] * childmod.ROWS_CHUNK
    assert len(encode(Report(rows, {r: 1 for r in M.WORKER_DROPS}))) < poolmod.MAX_FROM_WORKER
    assert len(encode(Rekey([K1] * childmod.ROWS_CHUNK))) < poolmod.MAX_FROM_WORKER


# ---------------------------------------------------------------- no pickle


def test_no_worker_module_imports_pickle_or_another_code_loading_codec():
    banned = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
    root = Path(poolmod.__file__).parent
    files = sorted(root.glob("*.py"))
    assert {f.name for f in files} >= {"channel.py", "pool.py", "child.py", "zygote.py"}
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
                names = {getattr(a, "value", "") for a in node.args}
            else:
                continue
            assert not names & banned, f"{f.name}:{node.lineno} imports {names & banned}"
