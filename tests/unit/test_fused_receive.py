"""The fused receive (Engine.tcp_units; _Units in protocol/_aead.pyx) against the Python GRO.

With tcp_units the compiled open joins TCP segments into TUN write units as it opens them,
instead of handing every plaintext on as bytes for io/gro.py to join before the write. It is a
faster implementation of the same step, so the tests are differential: two engines in the same
state (same keys, same handshake), one with the flag and one without, are fed the same batches
of genuine TCP runs (IPv4 and IPv6, options, PSH, a shorter last segment, window changes, gaps,
FIN and pure ACKs, other protocols between) with hostile messages mixed in, and

* every drop, statistic, timer and replay window is the same;
* what reaches the TUN is the same: where only what closes a write in both lies between
  segments, the very bytes of every write (gro.coalesce over the packets of each); always the
  same segments, every checksum right, once each write is cut again (segmentation.split, as the
  kernel would); and what the fused open hands on is, per flow, in the order it was sent;
* a clean run of one flow is one write: its first message, which went through the Python path,
  is taken back as the super-packet's start.
"""

from __future__ import annotations

import random
import struct

import pytest

from tests.harness.engine_pair import A_ADDR, A_IN, B_IN, MAC_A, MAC_B, VNI, Net
from tests.harness.packets import checksum, eth, ipv4, ipv6, mac, tcp, udp, with_l4_checksum
from tests.unit.test_aead import _restore_enabled, needs_compiled  # noqa: F401 (a fixture)
from tunnelpy.io import gro, segmentation
from tunnelpy.io.headers import l3_offset
from tunnelpy.protocol.actions import Output
from tunnelpy.protocol.vxlan_header import pack_header

PROTO_TCP = 6
ACK, PSH, FIN = 0x10, 0x08, 0x01
TS_OPTION = b"\x01\x01\x08\x0a" + bytes(8)  # NOP NOP timestamps: 12 bytes, as Linux sends


class Flow:
    """One TCP stream from A's inner address: its headers and where its sequence is."""

    def __init__(self, v6: bool, sport: int, options: bytes) -> None:
        self.v6, self.sport, self.options = v6, sport, options
        self.seq = 1000 * sport
        self.ident = 0
        self.window = 512

    def segment(self, size: int, flags: int = ACK, *, payload: bytes | None = None) -> bytes:
        data = payload if payload is not None else bytes((self.seq + k) & 0xFF for k in range(size))
        seg = tcp(self.sport, 5201, self.seq & 0xFFFFFFFF, data, ack=77, flags=flags,
                  window=self.window, options=self.options)  # fmt: skip
        self.seq += len(data) + (1 if flags & FIN else 0)
        self.ident += 1
        if self.v6:
            return with_l4_checksum(ipv6("fd00::1", "fd00::2", seg, PROTO_TCP))
        return with_l4_checksum(
            ipv4(A_IN, B_IN, seg, PROTO_TCP, ident=self.ident, dont_fragment=True, csum=True)
        )


class UdpFlow:
    """One UDP flow from A's inner address (for USO writes): datagrams of one size, IPv4 ids
    rising by one as the kernel's USO segmentation makes them, so that a joined write cut
    again gives back the very datagrams."""

    def __init__(self, v6: bool, sport: int, size: int) -> None:
        self.v6, self.sport, self.size = v6, sport, size
        self.ident = sport
        self.n = 0

    def datagram(self, size: int) -> bytes:
        self.n += 1
        data = bytes((self.n + k) & 0xFF for k in range(size))
        dgram = udp(self.sport, 5201, data)
        if self.v6:
            return with_l4_checksum(ipv6("fd00::1", "fd00::2", dgram, 17))
        self.ident += 1
        return with_l4_checksum(ipv4(A_IN, B_IN, dgram, 17, ident=self.ident & 0xFFFF, csum=True))


def _udp_run(r: random.Random, f: UdpFlow) -> list[bytes]:
    """A run of one UDP flow: mostly full-size datagrams (past the 64 a USO write may carry),
    now and then a shorter one, which ends the write in both GROs."""
    out = []
    for _ in range(r.randrange(1, 90)):
        short = r.random() < 0.05
        out.append(f.datagram(r.randrange(1, f.size) if short else f.size))
    return out


def _mss(f: Flow) -> int:
    return 1420 - (40 if f.v6 else 20) - 20 - len(f.options)


def _batch(r: random.Random, flows: list[Flow | UdpFlow], mode: str) -> list[bytes]:
    """The plaintexts of one receive batch: runs of segments of one flow at a time, with what
    ends or breaks a join between. `clean`: the flows one after another, and only what closes
    a write in both GROs alike (PSH, a shorter segment, a window change, a gap); `mixed`: pure
    ACKs, FINs and UDP between too (the Python GRO writes those after the open write, the
    fused one in their place); `interleaved`: the flows' runs alternate as well."""
    out: list[bytes] = []
    order = [r.choice(flows) for _ in range(r.randrange(1, 6))] if mode == "interleaved" else flows
    for f in order:
        if isinstance(f, UdpFlow):
            out.extend(_udp_run(r, f))
            continue
        mss = _mss(f)
        for _ in range(r.randrange(1, 50)):
            k = r.randrange(4 if mode == "clean" else 7, 40) if r.random() < 0.5 else r.randrange(40)
            if mode == "clean" and 4 <= k < 7:
                k = 10
            if k == 0:
                out.append(f.segment(r.randrange(1, mss), ACK | PSH))  # ends the write
            elif k == 1:
                # A shorter one: the last joined (now and then a tiny one, which a frame pads).
                out.append(f.segment(r.choice([r.randrange(1, 6), r.randrange(1, mss)])))
            elif k == 2:
                f.window += 1  # a window change: a new write (tcp_gro_receive flushes too)
                out.append(f.segment(mss))
            elif k == 3:
                f.seq += mss  # a segment lost before us: the next one does not continue
                out.append(f.segment(mss))
            elif k == 4:
                out.append(f.segment(0))  # a pure ACK: alone
            elif k == 5:
                out.append(f.segment(r.randrange(0, 100), ACK | FIN))
            elif k == 6:
                out.append(with_l4_checksum(ipv4(A_IN, B_IN, udp(53, 53, b"q" * r.randrange(80)), csum=True)))
            else:
                out.append(f.segment(mss))
    return out


def _hostile(r: random.Random, msgs: list[bytes]) -> list[tuple[bytes, tuple[str, int]]]:
    """The batch as received: now and then a replay or a flipped bit (dropped, in the middle of
    a run that goes on)."""
    batch = [(m, A_ADDR) for m in msgs]
    for _ in range(r.randrange(0, 4)):
        i = r.randrange(len(batch) + 1)
        m = msgs[r.randrange(len(msgs))]
        if r.random() < 0.5:
            # A replay, after the original (one before it would be the first copy opened).
            i = max(i, next(k for k, (d, _) in enumerate(batch) if d == m) + 1)
            batch.insert(i, (m, A_ADDR))
        else:
            f = bytearray(m)
            f[16 + r.randrange(len(f) - 16)] ^= 1 << r.randrange(8)
            batch.insert(i, (bytes(f), A_ADDR))
    return batch


def _state(n: Net, out: Output) -> tuple:
    pb, kp = n.pb, n.pb.current
    return (
        out.frames, {d: list(v) for d, v in out.datagrams.items()}, [str(e) for e in out.events],
        dict(n.b.drops), dict(pb.stats.drops), pb.stats.rx_packets, pb.stats.rx_bytes,
        pb.send_keepalive_at, pb.last_received, kp.replay.last if kp else None,
    )  # fmt: skip


def _writes(packets: list, uso: bool = False) -> list[bytes]:
    return [b"".join(bytes(x) for x in unit) for unit in gro.coalesce(packets, uso=uso)]


def _segments(writes: list[bytes]) -> list[bytes]:
    """Each write as the kernel would deliver it: a GSO one cut again."""
    out: list[bytes] = []
    for w in writes:
        out.extend(segmentation.split(memoryview(w)) if w[1] else [w[10:]])
    return out


def _l4_ok(p: bytes) -> bool:
    """The TCP/UDP checksum of `p` is right (0x0000 and 0xFFFF both stand for a sum of zero:
    one's complement has two zeros)."""
    good = with_l4_checksum(p)
    if good == p:
        return True
    at = (40 if p[0] >> 4 == 6 else 20) + (16 if (p[6] if p[0] >> 4 == 6 else p[9]) == 6 else 6)
    return (
        good[:at] == p[:at] and good[at + 2 :] == p[at + 2 :]
        and {good[at : at + 2], p[at : at + 2]} == {b"\0\0", b"\xff\xff"}
    )  # fmt: skip


def _per_flow(packets: list[bytes]) -> dict[bytes, list[tuple[int, int, bytes]]]:
    """Packets by flow (IP version, addresses, ports; anything not TCP under one key): TCP as
    (sequence number, flags, payload), after checking every checksum; the rest whole, but for
    the IPv4 id."""
    flows: dict[bytes, list] = {}
    for p in packets:
        v6 = p[0] >> 4 == 6
        t = 40 if v6 else 20
        proto = p[6] if v6 else p[9]
        if not v6:
            assert checksum(p[:20]) == 0  # the IPv4 header checksum
        if proto != PROTO_TCP:
            if proto == 17:
                assert _l4_ok(p)  # the UDP checksum is right
            if not v6:
                # (The IPv4 id left out: a USO write cut again numbers its datagrams from the
                # first one's id, as the kernel's segmentation does, so it depends on where
                # a write starts.)
                p = p[:4] + b"\0\0" + p[6:10] + b"\0\0" + p[12:]
            flows.setdefault(b"other", []).append(p)
            continue
        assert _l4_ok(p)  # the TCP checksum is right
        key = p[:1] + (p[8:40] if v6 else p[12:20]) + p[t : t + 4]
        h = t + (p[t + 12] >> 4) * 4
        seq = struct.unpack_from(">I", p, t + 4)[0]
        flows.setdefault(key, []).append((seq, p[t + 13], p[h:]))
    return flows


def _pair(uso: bool = False) -> tuple[Net, Net]:
    needs_compiled()
    u, p = Net(seed=5).established(), Net(seed=5).established()
    u.b.tcp_units = True
    u.b.uso_units = uso
    assert u.pb.current.opener is not None and p.pb.current.opener is not None
    return u, p


def test_a_clean_run_is_one_write_the_same_bytes_as_the_python_gro():
    u, p = _pair()
    for v6 in (False, True):
        f_u, f_p = Flow(v6, 4001, TS_OPTION), Flow(v6, 4001, TS_OPTION)
        plains_u = [f_u.segment(_mss(f_u)) for _ in range(40)] + [f_u.segment(300, ACK | PSH)]
        plains_p = [f_p.segment(_mss(f_p)) for _ in range(40)] + [f_p.segment(300, ACK | PSH)]
        out_u = u.b.from_network([(m, A_ADDR) for m in u.sealed(u.a, plains_u)], u.now)
        out_p = p.b.from_network([(m, A_ADDR) for m in p.sealed(p.a, plains_p)], p.now)
        # The first message went through the Python path and was taken back: one unit.
        assert len(out_u.packets) == 1 and type(out_u.packets[0]) is list
        assert len(out_p.packets) == 41 and all(type(x) is bytes for x in out_p.packets)
        writes = _writes(out_u.packets)
        assert writes == _writes(out_p.packets) and len(writes) == 1
        assert _per_flow(_segments(writes)) == _per_flow(plains_p)
        assert _state(u, out_u) == _state(p, out_p)


def _trials(r: random.Random, u: Net, p: Net, count: int = 120):
    """Each trial's number and, for both engines alike, a Random from one seed; both clocks
    are moved on after each."""
    for trial in range(count):
        seed = r.getrandbits(32)
        yield trial, [(n, random.Random(seed)) for n in (u, p)]
        u.now += 0.01
        p.now += 0.01


def _flows(uso: bool, trial: int) -> list[Flow | UdpFlow]:
    """The flows of one trial (its TCP sequence numbers apart from the other trials')."""
    flows: list[Flow | UdpFlow] = [Flow(False, 4001, TS_OPTION), Flow(True, 4002, b""),
                                   Flow(False, 4003, b"")]  # fmt: skip
    for f in flows:
        assert isinstance(f, Flow)
        f.seq += trial * 10_000_000
    if uso:
        flows += [UdpFlow(False, 6001, 64), UdpFlow(True, 6002, 1000)]
    return flows


@pytest.mark.parametrize("uso", [False, True])
@pytest.mark.parametrize("mode", ["clean", "mixed", "interleaved"])
def test_units_equal_the_python_gro_over_random_batches(mode: str, uso: bool):
    """(`uso`: UDP flows too, joined into USO writes by both.)"""
    u, p = _pair(uso)
    r = random.Random(mode + str(uso))
    joined = uso_joined = 0
    for trial, engines in _trials(r, u, p):
        nets = []
        for n, g in engines:
            flows = _flows(uso, trial)
            plains = _batch(g, flows, mode)
            batch = _hostile(g, n.sealed(n.a, plains))
            nets.append((n, n.b.from_network(batch, n.now), plains))
        (_, out_u, plains), (_, out_p, _) = nets
        assert _state(u, out_u) == _state(p, out_p), trial
        writes_u, writes_p = _writes(out_u.packets, uso), _writes(out_p.packets, uso)
        if mode == "clean":
            assert writes_u == writes_p, trial  # the very bytes of every write
        # What the fused open hands on, its units cut again, is the segments sent in the order
        # sent (replays and forgeries dropped). The writes of both hold the same segments,
        # though not always in that order: the Python GRO writes a segment that cannot join
        # after the flow's open write, so only the sorted lists compare.
        fused = [bytes(x[0]) if type(x) is list else b"\0" * 10 + x for x in out_u.packets]
        assert _per_flow(_segments(fused)) == _per_flow(plains), trial
        got_u, got_p = _per_flow(_segments(writes_u)), _per_flow(_segments(writes_p))
        assert {k: sorted(v) for k, v in got_u.items()} == {k: sorted(v) for k, v in got_p.items()}
        joined += sum(type(x) is list for x in out_u.packets)
        uso_joined += sum(type(x) is list and x[0][1] == 5 for x in out_u.packets)
    assert joined > 200  # (the units path really ran)
    assert (uso_joined > 50) == uso  # (and joined datagrams into USO writes only with uso)


def test_without_the_flag_packets_stay_bytes():
    needs_compiled()
    n = Net(seed=5).established()
    f = Flow(False, 4001, TS_OPTION)
    msgs = n.sealed(n.a, [f.segment(_mss(f)) for _ in range(8)])
    out = n.b.from_network([(m, A_ADDR) for m in msgs], n.now)
    assert n.b.tcp_units is False and len(out.packets) == 8
    assert all(type(x) is bytes for x in out.packets)


# ------------------------------------------------------------------ frames for a TAP (L2)

ETH_IPV4, ETH_IPV6, ETH_ARP = b"\x08\x00", b"\x86\xdd", b"\x08\x06"


def _frame(dst: bytes, src: bytes, packet: bytes, *, vlan: int | None = None) -> bytes:
    """`packet` in an Ethernet frame, padded to Ethernet's 60 bytes as a real sender pads it."""
    f = eth(dst, src, (ETH_IPV6 if packet[0] >> 4 == 6 else ETH_IPV4) + packet, vlan=vlan)
    return f + bytes(max(0, 60 - len(f)))


def _frame_batch(r: random.Random, flows: list[Flow | UdpFlow], mode: str) -> list[bytes]:
    """_batch's segments as frames of one MAC pair, with, outside `clean`, what the compiled
    join leaves to the Python GRO between them: a VLAN-tagged segment, an ARP frame, another
    ethertype whose first byte looks like IPv4, a frame cut shorter than its IP length, and a
    frame of another source MAC (a new pair: it ends the compiled call)."""
    out = [_frame(MAC_B, MAC_A, p) for p in _batch(r, flows, mode)]
    if mode != "clean":
        for _ in range(r.randrange(0, 6)):
            i = r.randrange(len(out) + 1)
            f0 = flows[0]
            assert isinstance(f0, Flow)
            seg = f0.segment(_mss(f0) // 2)
            k = r.randrange(5)
            if k == 0:
                extra = _frame(MAC_B, MAC_A, seg, vlan=7)
            elif k == 1:
                extra = eth(MAC_B, MAC_A, ETH_ARP + bytes(28)) + bytes(18)
            elif k == 2:
                extra = eth(MAC_B, MAC_A, b"\x88\xb5" + seg)  # (0x45 first: not IP for us)
            elif k == 3:
                extra = _frame(MAC_B, MAC_A, seg)[:-10]  # shorter than its IP length says
            else:
                extra = _frame(MAC_B, mac(0x0C), seg)
            out.insert(i, extra)
    return out


def _frame_flows(frames: list[bytes]) -> dict[bytes, list]:
    """_per_flow for frames: each IP packet without its Ethernet header and padding, under a
    key that starts with that header; frames that carry no IP, or less of it than its length
    says, under b"other", whole."""
    by_header: dict[bytes, list[bytes]] = {}
    for f in frames:
        l3 = l3_offset(f)
        kind = f[l3 - 2 : l3]
        if kind not in (ETH_IPV4, ETH_IPV6) or len(f) < l3 + 20:
            by_header.setdefault(b"other", []).append(f)
            continue
        ip = f[l3:]
        end = 40 + int.from_bytes(ip[4:6], "big") if ip[0] >> 4 == 6 else int.from_bytes(ip[2:4], "big")
        if end > len(ip):  # (cut short: no checksum to check)
            by_header.setdefault(b"other", []).append(f)
            continue
        by_header.setdefault(f[:l3], []).append(ip[:end])
    flows: dict[bytes, list] = {}
    for header, packets in by_header.items():
        if header == b"other":
            flows[header] = packets
            continue
        for key, got in _per_flow([p for p in packets if len(p) >= (40 if p[0] >> 4 == 6 else 20)]).items():
            flows[header + key] = got
    return flows


def _frame_writes(frames: list, uso: bool = False) -> list[bytes]:
    return [b"".join(bytes(x) for x in unit) for unit in gro.coalesce(frames, l2=True, uso=uso)]


def _frame_segments(writes: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for w in writes:
        out.extend(segmentation.split(memoryview(w), l2=True) if w[1] else [w[10:]])
    return out


def _frame_pair(uso: bool = False) -> tuple[Net, Net]:
    needs_compiled()
    u, p = Net(seed=5, vni=VNI).established(), Net(seed=5, vni=VNI).established()
    u.b.frame_units = True
    u.b.uso_units = uso
    assert u.pb.current.opener is not None and p.pb.current.opener is not None
    return u, p


def _sent_frames(n: Net, frames: list[bytes]) -> list[bytes]:
    return n.sealed(n.a, [pack_header(VNI) + f for f in frames])


def test_a_clean_run_of_frames_is_one_write_the_same_bytes_as_the_python_gro():
    u, p = _frame_pair()
    for v6 in (False, True):
        outs = []
        for n in (u, p):
            f = Flow(v6, 4001, TS_OPTION)
            frames = [_frame(MAC_B, MAC_A, f.segment(_mss(f))) for _ in range(40)]
            frames.append(_frame(MAC_B, MAC_A, f.segment(300, ACK | PSH)))
            outs.append((n.b.from_network([(m, A_ADDR) for m in _sent_frames(n, frames)], n.now), frames))
        (out_u, frames), (out_p, _) = outs
        got_u, got_p = out_u.frames[VNI], out_p.frames[VNI]
        # The first frame went through the switch (_deliver_frame) and was taken back: one unit.
        assert len(got_u) == 1 and type(got_u[0]) is list, [type(x) for x in got_u]
        assert len(got_p) == 41 and all(type(x) is bytes for x in got_p)
        writes = _frame_writes(got_u)
        assert writes == _frame_writes(got_p) and len(writes) == 1
        assert _frame_flows(_frame_segments(writes)) == _frame_flows(frames)
        assert _state(u, Output())[1:] == _state(p, Output())[1:]


@pytest.mark.parametrize("uso", [False, True])
@pytest.mark.parametrize("mode", ["clean", "mixed", "interleaved"])
def test_frame_units_equal_the_python_gro_over_random_batches(mode: str, uso: bool):
    u, p = _frame_pair(uso)
    r = random.Random("l2" + mode + str(uso))
    joined = uso_joined = 0
    for trial, engines in _trials(r, u, p):
        nets = []
        for n, g in engines:
            flows = _flows(uso, trial)
            frames = _frame_batch(g, flows, mode)
            batch = _hostile(g, _sent_frames(n, frames))
            out = n.b.from_network(batch, n.now)
            fdb = sorted((m, str(q), a) for m, q, a in n.b.segments[VNI].fdb.entries(n.now))
            nets.append((out, frames, fdb))
        (out_u, frames, fdb_u), (out_p, _, fdb_p) = nets
        got_u, got_p = out_u.frames.get(VNI, []), out_p.frames.get(VNI, [])
        # Everything but the frames' form is the same: drops, statistics, timers, the FDB.
        state_u, state_p = _state(u, out_u), _state(p, out_p)
        assert state_u[1:] == state_p[1:] and fdb_u == fdb_p, trial
        assert not out_u.packets and not out_p.packets
        writes_u, writes_p = _frame_writes(got_u, uso), _frame_writes(got_p, uso)
        if mode == "clean":
            assert writes_u == writes_p, trial  # the very bytes of every write
        # What the fused open hands the TAP, its units cut again, is per flow the segments sent
        # in the order sent; the writes of both hold the same frames (sorted: see above).
        fused = [bytes(x[0]) if type(x) is list else b"\0" * 10 + x for x in got_u]
        sent = _delivered(frames, got_p)
        assert _frame_flows(_frame_segments(fused)) == _frame_flows(sent), trial
        fl_u, fl_p = _frame_flows(_frame_segments(writes_u)), _frame_flows(_frame_segments(writes_p))
        assert {k: sorted(v) for k, v in fl_u.items()} == {k: sorted(v) for k, v in fl_p.items()}
        joined += sum(type(x) is list for x in got_u)
        uso_joined += sum(type(x) is list and x[0][1] == 5 for x in got_u)
    assert joined > 200  # (the units path really ran)
    assert (uso_joined > 50) == uso


def _delivered(sent: list[bytes], got: list[bytes]) -> list[bytes]:
    """The frames of `sent` that the Python path delivered too (every one, unless a forgery
    or a replay was dropped; the switch drops none of these), in the order sent."""
    left = list(got)
    out = []
    for f in sent:
        if f in left:
            left.remove(f)
            out.append(f)
    return out
