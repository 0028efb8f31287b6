"""Layer 2 over the encrypted sessions: FDB learning and aging, flooding with split horizon,
VNI isolation and hubs — N in-memory engines and a hand-held clock."""

from __future__ import annotations

import random

import pytest

from tunnelpy.protocol.actions import Dest
from tunnelpy.protocol.crypto import generate_private_key, public_key
from tunnelpy.protocol.engine import Engine, Output
from tunnelpy.protocol.fdb import Fdb, format_mac, parse_mac
from tunnelpy.protocol.vxlan import (
    FLAG_I,
    VxlanEngine,
    flow_hash,
    pack_header,
    parse_header,
)

BCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


def frame(dst: bytes, src: bytes, body: bytes = b"payload") -> bytes:
    return dst + src + b"\x88\xb5" + body  # local experimental ethertype: not IP


class Mesh:
    """Engines named a, b, c… each with a peer for every other; addresses are fake."""

    def __init__(self, names: str, links: list[str] | None = None, seed: int = 3) -> None:
        self.now = 100.0
        self.rng = random.Random(seed).randbytes
        self.eng: dict[str, Engine] = {}
        self.addr = {n: (f"192.0.2.{i + 1}", 51820) for i, n in enumerate(names)}
        self.by_addr = {a: n for n, a in self.addr.items()}
        keys = {n: generate_private_key(self.rng) for n in names}
        for n in names:
            self.eng[n] = Engine(keys[n], rng=self.rng, wall=lambda: 1.7e9 + self.now)
        links = links or [x + y for x in names for y in names if x < y]
        self.peer: dict[tuple[str, str], object] = {}
        for x, y in [(link[0], link[1]) for link in links]:
            for a, b in ((x, y), (y, x)):
                self.peer[(a, b)] = self.eng[a].add_peer(
                    public_key(keys[b]), name=b, endpoint=self.addr[b]
                )
        self.frames: dict[str, dict[int, list[bytes]]] = {n: {} for n in names}
        self.wire: list[tuple[str, str]] = []

    def run(self, src: str, out: Output) -> None:
        queue = [(src, out)]
        for _ in range(50):
            if not queue:
                return
            nxt = []
            for name, o in queue:
                for vni, fr in o.frames.items():
                    self.frames[name].setdefault(vni, []).extend(fr)
                for addr, dgs in o.datagrams.items():
                    dst = self.by_addr[addr[:2]]
                    self.wire += [(name, dst)] * len(dgs)
                    nxt.append((dst, self.eng[dst].from_network(
                        [(d, self.addr[name]) for d in dgs], self.now)))
            queue = nxt
        raise AssertionError("did not settle")

    def tap(self, name: str, vni: int, frames: list[bytes]) -> None:
        self.run(name, self.eng[name].from_segment(vni, frames, self.now))

    def got(self, name: str, vni: int) -> list[bytes]:
        return self.frames[name].get(vni, [])


def test_header_round_trip_and_first_byte_differs_from_ip():
    h = pack_header(0xABCDEF)
    assert h == b"\x08\x00\x00\x00\xab\xcd\xef\x00" and parse_header(h) == 0xABCDEF
    assert parse_header(b"\x00" * 8) is None and parse_header(b"\x08") is None
    assert h[0] == FLAG_I and h[0] >> 4 not in (4, 6)


def test_mac_text():
    assert format_mac(parse_mac("aa:bb:cc:00:01:ff")) == "aa:bb:cc:00:01:ff"
    with pytest.raises(ValueError):
        parse_mac("aa:bb:cc")


def test_fdb_learn_move_age_static_and_limit():
    f: Fdb[str] = Fdb(aging=300, max_entries=3, move_hold=5)
    assert f.learn(mac(1), "p", 0) is None and f.lookup(mac(1), 10) == "p"
    assert f.learn(mac(1), "q", 20) is None and f.lookup(mac(1), 20) == "q" and f.moves == 1
    assert f.lookup(mac(1), 320.5) is None  # aged out 300 s after last seen
    f.add_static(mac(9), "s")
    assert f.learn(mac(9), "p", 1) == "mac_not_allowed" and f.lookup(mac(9), 10**6) == "s"
    assert f.learn(mac(9), "s", 1) is None  # its own peer may send it: nothing to learn
    f.learn(mac(2), "p", 400)
    f.learn(mac(3), "p", 400)
    f.learn(mac(5), "p", 400)  # the static entry does not count against MaxFDBEntries
    assert f.learn(mac(4), "p", 400) == "mac_quota" and f.refused == 1  # p holds its share
    assert f.learn(mac(4), "q", 400) == "fdb_full" and f.refused == 2  # and the table is full
    assert f.learn(mac(4), "p", 800) is None  # after aging there is room again
    ages = {format_mac(m): age for m, _, age in f.entries(800)}
    assert ages == {"02:00:00:00:00:09": None, "02:00:00:00:00:04": 0}


def test_two_sites_broadcast_then_learned_unicast():
    m = Mesh("ab")
    for n in "ab":
        m.eng[n].add_segment(100)
    m.tap("a", 100, [frame(BCAST, mac(1))])  # ARP-like broadcast from host 1 behind a
    assert m.got("b", 100) == [frame(BCAST, mac(1))]
    m.tap("b", 100, [frame(mac(1), mac(2))])  # b answers: unicast to a learned MAC
    assert m.got("a", 100) == [frame(mac(1), mac(2))]
    assert m.eng["a"].segments[100].fdb.lookup(mac(2), m.now) is m.peer[("a", "b")]


def test_vni_isolation_and_unknown_vni():
    m = Mesh("ab")
    m.eng["a"].add_segment(100)
    m.eng["a"].add_segment(200)
    m.eng["b"].add_segment(100)
    m.tap("a", 100, [frame(BCAST, mac(1), b"v100")])
    m.tap("a", 200, [frame(BCAST, mac(1), b"v200")])
    assert m.got("b", 100) == [frame(BCAST, mac(1), b"v100")]
    assert m.got("b", 200) == []
    assert m.eng["b"].drops["unknown_vni"] == 1


def test_segment_peer_membership_enforced():
    m = Mesh("abc")
    m.eng["a"].add_segment(100, peers=[m.peer[("a", "b")]])
    m.eng["c"].add_segment(100)  # c floods to a, but a's segment only admits b
    m.eng["b"].add_segment(100)
    m.tap("c", 100, [frame(BCAST, mac(3))])
    assert m.got("a", 100) == [] and m.eng["a"].drops["peer_not_in_segment"] == 1
    assert m.got("b", 100) == [frame(BCAST, mac(3))]


def test_full_mesh_split_horizon_no_loops():
    m = Mesh("abc")
    for n in "abc":
        m.eng[n].add_segment(7)
    m.tap("a", 7, [frame(BCAST, mac(1))])
    assert m.got("b", 7) == [frame(BCAST, mac(1))] and m.got("c", 7) == [frame(BCAST, mac(1))]
    data_msgs = [w for w in m.wire if w[0] != "a"]
    # b and c never re-flood what they received (only handshake replies/keepalives leave them)
    assert m.got("a", 7) == []
    assert all(src in "bc" for src, _ in data_msgs)


def test_hub_relays_between_spokes():
    m = Mesh("hxy", links=["hx", "hy"])  # spokes x and y only know the hub
    m.eng["h"].add_segment(9, hub=True)
    m.eng["x"].add_segment(9)
    m.eng["y"].add_segment(9)
    m.tap("x", 9, [frame(BCAST, mac(10))])
    assert m.got("y", 9) == [frame(BCAST, mac(10))]  # flooded by the hub to the other spoke
    assert m.got("h", 9) == [frame(BCAST, mac(10))]  # and delivered locally at the hub
    m.tap("y", 9, [frame(mac(10), mac(11))])  # known unicast: hub forwards only to x
    assert m.got("x", 9) == [frame(mac(10), mac(11))]
    assert m.got("h", 9) == [frame(BCAST, mac(10))]
    assert m.got("x", 9)[0] not in m.got("y", 9)


def test_fdb_aging_with_hand_held_clock_falls_back_to_flooding():
    m = Mesh("abc")
    for n in "abc":
        m.eng[n].add_segment(5, aging=60)
    m.tap("b", 5, [frame(BCAST, mac(2))])
    m.tap("a", 5, [frame(mac(2), mac(1), b"1")])
    assert m.got("c", 5) == [frame(BCAST, mac(2))]  # unicast went to b only
    m.now += 61
    m.tap("a", 5, [frame(mac(2), mac(1), b"2")])
    assert frame(mac(2), mac(1), b"2") in m.got("c", 5)  # entry aged: flooded


def test_frames_too_big_or_short_dropped():
    m = Mesh("ab")
    m.eng["a"].add_segment(1, max_frame=1400)
    m.tap("a", 1, [b"\x00" * 10, frame(BCAST, mac(1), b"x" * 1500)])
    assert m.eng["a"].drops["frame_too_short"] == 1 and m.eng["a"].drops["frame_too_big"] == 1


def test_static_mac_entries():
    m = Mesh("abc")
    m.eng["a"].add_segment(3, static=[(mac(30), m.peer[("a", "c")])])
    m.eng["b"].add_segment(3)
    m.eng["c"].add_segment(3)
    m.tap("a", 3, [frame(mac(30), mac(1))])
    assert m.got("c", 3) == [frame(mac(30), mac(1))] and m.got("b", 3) == []


def test_ip_and_l2_share_one_session():
    import ipaddress

    m = Mesh("ab")
    for n in "ab":
        m.eng[n].add_segment(100)
    pb = m.peer[("a", "b")]
    m.eng["a"].set_allowed_ips(pb, [ipaddress.ip_network("10.0.0.2/32")])
    m.eng["b"].set_allowed_ips(m.peer[("b", "a")], [ipaddress.ip_network("10.0.0.1/32")])
    m.tap("a", 100, [frame(BCAST, mac(1))])
    kp = pb.current
    ip = bytes.fromhex("4500001c000000004011000a0a0000010a000002") + b"\x00" * 8
    out = m.eng["a"].from_tunnel([ip], m.now)
    assert pb.current is kp  # no new handshake: the same session carries both
    got = m.eng["b"].from_network([(d, m.addr["a"]) for d in out.datagrams[Dest(*m.addr["b"])]], m.now)
    assert got.packets == [ip]


def test_plain_vxlan_engine():
    e = VxlanEngine()
    k1 = e.add_peer("k1", ("10.0.0.1", 4789))
    k2 = e.add_peer("k2", ("10.0.0.2", 4789))
    e.add_segment(42, [k1, k2])
    out = e.from_segment(42, [frame(BCAST, mac(1))], 0)
    keys = sorted(out.datagrams)
    assert [k[:2] for k in keys] == [("10.0.0.1", 4789), ("10.0.0.2", 4789)]
    assert out.datagrams[keys[0]] == [pack_header(42) + frame(BCAST, mac(1))]
    assert keys[0][2] == flow_hash(frame(BCAST, mac(1)))
    back = e.from_network([(pack_header(42) + frame(mac(1), mac(2)), ("10.0.0.2", 55555))], 1)
    assert back.frames == {42: [frame(mac(1), mac(2))]}
    out = e.from_segment(42, [frame(mac(2), mac(1))], 2)
    assert [k[:2] for k in out.datagrams] == [("10.0.0.2", 4789)]  # learned: unicast
    e.from_network([(b"\x00" * 30, ("10.0.0.2", 1)), (pack_header(43) + frame(BCAST, mac(5)), ("10.0.0.2", 1)),
                    (pack_header(42) + frame(BCAST, mac(5)), ("10.9.9.9", 1))], 3)
    assert e.drops == {"bad_vxlan_header": 1, "unknown_vni": 1, "unknown_source": 1}


def _l2_plaintexts(rng: random.Random) -> list[bytes]:
    """A burst's worth of L2 plaintexts as a peer could send them: runs of one flow (the fast
    path's case) broken by other sources, group sources, other destinations, a VNI the
    receiver lacks, a header with reserved bits set, and frames cut short."""
    h100, h200 = pack_header(100), pack_header(200)
    flow = h100 + frame(mac(2), mac(1), b"x" * 60)
    out = []
    for i in range(120):
        r = rng.random()
        if r < 0.55:
            out.append(flow[:-2] + bytes([i, 0]))  # same first 20 bytes, different payload
        elif r < 0.65:
            out.append(h100 + frame(mac(2), mac(rng.randrange(3, 6)), bytes([i])))
        elif r < 0.70:
            out.append(h100 + frame(mac(2), b"\x03" + mac(1)[1:], bytes([i])))  # group source
        elif r < 0.78:
            out.append(h100 + frame(BCAST, mac(1), bytes([i])))
        elif r < 0.84:
            out.append(h200 + frame(mac(2), mac(1), bytes([i])))  # unknown VNI at b
        elif r < 0.88:
            out.append(h100[:7] + b"\x01" + flow[8:-1] + bytes([i]))  # reserved byte set
        elif r < 0.94:
            out.append(flow[: rng.randrange(20, 22)])  # starts like the flow, too short
        else:
            out.append(flow[: rng.randrange(1, 20)])
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("hub", [False, True])
def test_l2_burst_received_as_one_by_one(seed, hub):
    """from_network's L2 fast path: one burst gives exactly what one call per message gives
    (frames written, FDB, drop counters, keepalive state, relayed datagrams)."""
    results = []
    for one_by_one in (False, True):
        m = Mesh("abc", seed=seed)
        m.eng["a"].add_segment(100)
        m.eng["b"].add_segment(100, hub=hub)
        m.eng["c"].add_segment(100)
        m.tap("a", 100, [frame(BCAST, mac(9))])  # handshakes; b learns mac 9 behind a
        # b learns the flow's destination behind c: a hub relays the flow to c, a plain
        # segment delivers it to its own TAP (split horizon).
        m.tap("c", 100, [frame(BCAST, mac(2))])
        a, b = m.eng["a"], m.eng["b"]
        pb = m.peer[("a", "b")]
        out = Output()
        a.send_to_peer(pb, _l2_plaintexts(random.Random(seed)), m.now, out)
        dgs = [(d, m.addr["a"]) for d in out.datagrams[Dest(*m.addr["b"])]]
        outs = [b.from_network([x], m.now) for x in dgs] if one_by_one else [
            b.from_network(dgs, m.now)]
        frames = [f for o in outs for f in o.frames.get(100, [])]
        relayed = [d for o in outs for ds in o.datagrams.values() for d in ds]
        pa = m.peer[("b", "a")]
        fdb = sorted((format_mac(x), age) for x, _, age in b.segments[100].fdb.entries(m.now))
        results.append((frames, len(relayed), dict(b.drops), fdb, pa.stats.rx_packets,
                        pa.send_keepalive_at, pa.need_another_keepalive))
    assert results[0] == results[1]
    frames, relayed, drops, fdb, *_ = results[0]
    if hub:
        assert relayed > 60 and len(frames) < 30
    else:
        assert len(frames) > 60 and relayed == 0
    assert drops["bad_src_mac"] and drops["unknown_vni"]
    assert drops["bad_inner_frame"] and ("02:00:00:00:00:01", 0) in fdb


def test_l2_burst_sent_as_one_by_one():
    """from_segment consults the FDB once per run of one destination: a burst of frames to
    learned, unknown and group destinations is grouped per peer as frame-by-frame would be."""
    m = Mesh("abc")
    for n in "abc":
        m.eng[n].add_segment(4)
    m.tap("b", 4, [frame(BCAST, mac(2))])
    m.tap("c", 4, [frame(BCAST, mac(3))])
    rng = random.Random(5)
    dsts = [mac(2), mac(3), mac(7), BCAST]
    frames = [frame(rng.choice(dsts), mac(1), bytes([i])) for i in range(80)]
    burst = m.eng["a"].from_segment(4, frames, m.now)
    want: dict[tuple, list[bytes]] = {}
    for f in frames:
        to = {mac(2): ["b"], mac(3): ["c"]}.get(f[:6], ["b", "c"])
        for n in to:
            want.setdefault(m.addr[n], []).append(f)
    got = {}
    for addr, dgs in burst.datagrams.items():
        peer_name = m.by_addr[addr[:2]]
        out = m.eng[peer_name].from_network([(d, m.addr["a"]) for d in dgs], m.now)
        got[addr[:2]] = out.frames[4]
    assert got == want
