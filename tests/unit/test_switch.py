"""The L2 switch (protocol/switch.py) alone, and inside both engines: the same frames must give
the same decisions (targets, local writes, drops) over encrypted sessions and plain VXLAN."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from tunnelpy.protocol import aead
from tunnelpy.protocol.crypto import generate_private_key, public_key
from tunnelpy.protocol.engine import Engine, Output
from tunnelpy.protocol.peer import Peer
from tunnelpy.protocol.switch import Switch
from tunnelpy.protocol.vxlan import VxlanEngine, flow_hash, pack_header

BCAST = b"\xff" * 6
MCAST = b"\x01\x00\x5e\x00\x00\x01"


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


def frame(dst: bytes, src: bytes, body: bytes = b"payload") -> bytes:
    return dst + src + b"\x88\xb5" + body


@dataclass(eq=False)
class Port:
    name: str
    removed: bool = False


def switch(names: str, *, members: str | None = None, **kw) -> tuple[Switch[Port], dict]:
    ports = {n: Port(n) for n in names}
    chosen = None if members is None else [ports[n] for n in members]
    return Switch(9, chosen, ports, **kw), ports


def names(peers) -> list[str]:
    return [p.name for p in peers]


# ------------------------------------------------------------------------------ Switch alone


def test_egress_runs_per_destination_with_size_checks():
    sw, p = switch("abc", max_frame=100)
    sw.fdb.learn(mac(2), p["b"], 0)
    drops: Counter[str] = Counter()
    frames = [
        frame(mac(2), mac(1), b"1"), frame(mac(2), mac(1), b"2"),  # one run to b
        b"short",
        frame(BCAST, mac(1), b"3"),  # flood
        frame(mac(2), mac(1), b"x" * 200),  # too big
        frame(mac(7), mac(1), b"4"),  # unknown unicast: flood
    ]  # fmt: skip
    runs = sw.egress(frames, 1, drops)
    flood = ["a", "b", "c"]
    assert [(names(t), len(ps)) for t, ps in runs] == [(["b"], 2), (flood, 1), (flood, 1)]
    assert runs[0][1] == [pack_header(9) + frames[0], pack_header(9) + frames[1]]
    assert drops == {"frame_too_short": 1, "frame_too_big": 1}


def test_egress_floods_past_removed_and_aged_targets():
    sw, p = switch("abc", aging=10)
    sw.fdb.learn(mac(2), p["b"], 0)
    p["b"].removed = True  # (the engine also forgets it; a stale static entry may remain)
    ((targets, _),) = sw.egress([frame(mac(2), mac(1))], 1, Counter())
    assert names(targets) == ["a", "b", "c"]  # everyone: the table is the engine's
    sw, p = switch("abc", members="ac", aging=10)
    sw.fdb.learn(mac(3), p["c"], 0)
    assert names(sw.egress([frame(mac(3), mac(1))], 5, Counter())[0][0]) == ["c"]
    assert names(sw.egress([frame(mac(3), mac(1))], 10.5, Counter())[0][0]) == ["a", "c"]


def test_group_destination_is_never_looked_up():
    sw, p = switch("ab")
    sw.fdb.add_static(MCAST, p["a"])
    assert names(sw.egress([frame(MCAST, mac(1))], 0, Counter())[0][0]) == ["a", "b"]


def test_ingress_split_horizon_and_group_source():
    sw, p = switch("ab")
    assert sw.ingress(p["a"], frame(BCAST, b"\x01" + mac(1)[1:]), 0) == "bad_src_mac"
    assert sw.ingress(p["a"], frame(BCAST, mac(1)), 0) == ([], True)
    assert sw.fdb.lookup(mac(1), 0) is p["a"]
    assert sw.ingress(p["b"], frame(mac(1), mac(2)), 0) == ([], True)  # no relay without hub


def test_ingress_hub_relays_between_spokes():
    sw, p = switch("abc", hub=True)
    relay, local = sw.ingress(p["a"], frame(BCAST, mac(1)), 0)
    assert names(relay) == ["b", "c"] and local
    relay, local = sw.ingress(p["b"], frame(mac(1), mac(2)), 0)
    assert names(relay) == ["a"] and not local  # known unicast: to its peer only
    assert sw.ingress(p["a"], frame(mac(1), mac(3)), 0) == ([], False)  # back where it is
    relay, local = sw.ingress(p["c"], frame(mac(9), mac(3)), 0)
    assert names(relay) == ["a", "b"] and local  # unknown unicast: flood, and write locally


def test_members_and_forget_peer():
    sw, p = switch("abc", members="ab")
    assert sw.has(p["a"]) and not sw.has(p["c"])
    sw.fdb.learn(mac(1), p["a"], 0)
    sw.forget_peer(p["a"])
    assert names(sw.members()) == ["b"] and sw.fdb.lookup(mac(1), 0) is None
    sw.fdb.learn(mac(2), p["b"], 0)
    sw.set_members([p["c"]])
    assert names(sw.members()) == ["c"] and sw.fdb.lookup(mac(2), 0) is p["b"]  # FDB kept
    sw.set_members(None)
    assert sw.peers is None and names(sw.members()) == ["a", "b", "c"]
    everyone, p = switch("ab")
    p["z"] = Port("z")  # None: the engine's table, read when needed
    assert everyone.has(p["z"]) and names(everyone.members()) == ["a", "b", "z"]


def test_static_entries_and_limit():
    sw, p = switch("ab", max_fdb=2, max_per_peer=2, static=[(mac(5), Port("s"))])
    sw.ingress(p["a"], frame(BCAST, mac(1)), 0)
    sw.ingress(p["b"], frame(BCAST, mac(2)), 0)  # (the static entry does not count)
    assert sw.ingress(p["b"], frame(BCAST, mac(3)), 0) == "fdb_full"
    assert sw.fdb.refused == 1 and sw.fdb.lookup(mac(3), 0) is None
    assert sw.ingress(p["a"], frame(BCAST, mac(5)), 0) == "mac_not_allowed"  # pinned to s
    assert sw.fdb.lookup(mac(5), 10**6).name == "s"  # a static MAC never moves or ages


# ------------------------------------------------------------------------------ both engines


class RecordingEngine(Engine):
    """An Engine whose sends to peers are recorded instead of encrypted."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.sent: list[tuple[str, bytes]] = []

    def send_to_peer(
        self, peer: Peer, payloads: list[bytes], now: float, out: Output, prefix: bytes = b""
    ) -> None:
        self.sent += [(peer.name, prefix + p) for p in payloads]


class WireGuardSide:
    def __init__(self, names: str, **seg) -> None:
        rng = random.Random(1).randbytes
        self.e = RecordingEngine(generate_private_key(rng), rng=rng, wall=lambda: 0.0)
        self.peer = {
            n: self.e.add_peer(public_key(generate_private_key(rng)), name=n) for n in names
        }
        static = [(m, self.peer[n]) for m, n in seg.pop("static", ())]
        allowed = [(m, n, self.peer[p]) for m, n, p in seg.pop("allowed_macs", ())]
        members = seg.pop("members", None)
        self.seg = self.e.add_segment(
            7, None if members is None else [self.peer[n] for n in members], static=static,
            allowed_macs=allowed, **seg,
        )  # fmt: skip

    def tap(self, frames: list[bytes], now: float) -> list[list[str]]:
        self.e.sent = []
        self.e.from_segment(7, frames, now)
        return _per_frame(self.e.sent, frames)

    def arrive(self, name: str, f: bytes, now: float) -> tuple[list[str], list[bytes]]:
        self.e.sent = []
        out = Output()
        self.e._deliver(self.peer[name], [pack_header(7) + f], now, out)
        return [n for n, _ in self.e.sent], out.frames.get(7, [])


class VxlanSide:
    def __init__(self, names: str, **seg) -> None:
        self.e = VxlanEngine()
        self.addr = {n: (f"10.0.0.{i + 1}", 4789) for i, n in enumerate(names)}
        self.name_of = {a[0]: n for n, a in self.addr.items()}
        self.peer = {n: self.e.add_peer(n, self.addr[n]) for n in names}
        static = [(m, self.peer[n]) for m, n in seg.pop("static", ())]
        allowed = [(m, n, self.peer[p]) for m, n, p in seg.pop("allowed_macs", ())]
        members = seg.pop("members", None)
        self.seg = self.e.add_segment(
            7, None if members is None else [self.peer[n] for n in members], static=static,
            allowed_macs=allowed, **seg,
        )  # fmt: skip

    def _sent(self, out: Output) -> list[tuple[str, bytes]]:
        return [(self.name_of[d.host], x) for d, xs in out.datagrams.items() for x in xs]

    def tap(self, frames: list[bytes], now: float) -> list[list[str]]:
        return _per_frame(self._sent(self.e.from_segment(7, frames, now)), frames)

    def arrive(self, name: str, f: bytes, now: float) -> tuple[list[str], list[bytes]]:
        out = self.e.from_network([(pack_header(7) + f, (self.addr[name][0], 50000))], now)
        return [n for n, _ in self._sent(out)], out.frames.get(7, [])


def _per_frame(sent: list[tuple[str, bytes]], frames: list[bytes]) -> list[list[str]]:
    """For each frame, the peers it was sent to (sorted: the engines group sends differently)."""
    return [sorted(n for n, p in sent if p[8:] == f) for f in frames]


def scenario(side, rng: random.Random) -> list:
    """A random mix of frames from the TAP and from peers, with the clock moving; the
    decisions, in order, and the drops."""
    macs = [mac(i) for i in range(1, 7)] + [BCAST, MCAST]
    log = []
    now = 0.0
    for i in range(300):
        now += rng.choice((0, 0, 0.5, 4))
        dst, src = rng.choice(macs), rng.choice(macs[:6])
        body = bytes([i % 256, i // 256])
        r = rng.random()
        if r < 0.45:
            frames = [frame(dst, src, body + bytes([k])) for k in range(rng.randrange(1, 4))]
            if rng.random() < 0.1:
                frames.append(b"tiny")
            if rng.random() < 0.1:
                frames.append(frame(dst, src, b"x" * 120))
            log.append(("tap", side.tap(frames, now)))
        else:
            name = rng.choice("abcd")
            if rng.random() < 0.05:
                src = b"\x03" + src[1:]  # a group source
            log.append(("in", name, side.arrive(name, frame(dst, src, body), now)))
    entries = sorted((m, p.name, age) for m, p, age in side.seg.fdb.entries(now))
    return [log, dict(side.e.drops), entries]


SCENARIOS = [
    {},
    {"hub": True},
    {"hub": True, "members": "abc"},
    {"members": "abd", "static": [(mac(6), "c")]},
    {"hub": True, "aging": 3.0, "max_fdb": 3, "max_frame": 100},
    # quotas, pinning and slow moves: mac(1) is a's, 02:00:00:00:00:04-07 are d's (d may send
    # nothing else), two MACs per peer, a MAC moves once quiet for 2 s
    {"hub": True, "max_per_peer": 2, "move_hold": 2.0,
     "allowed_macs": [(mac(1), 48, "a"), (mac(4), 46, "d")]},
    {"move_hold": 0.0, "max_fdb": 4},  # moves at once (the old rule), an equal share each
]  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("seg", SCENARIOS)
def test_both_engines_switch_alike(seed, seg):
    results = []
    kw = {k: list(v) if k in ("static", "allowed_macs") else v for k, v in seg.items()}
    for side in (WireGuardSide, VxlanSide):
        s = side("abcd", **kw)
        if side is WireGuardSide:
            s.seg.relay_floods = False  # as a plain VXLAN hub: compared without flood relays
        results.append(scenario(s, random.Random(seed)))
    assert results[0] == results[1]
    log, drops, _ = results[0]
    assert any(kind == "tap" and any(len(t) == 1 for t in d) for kind, d, *_ in log)
    if seg.get("hub"):
        assert any(relayed for _, _, (relayed, _) in _arrivals(log))  # relays happened
    if "members" in seg:
        assert drops.get("peer_not_in_segment")
    assert drops.get("bad_src_mac")
    if "allowed_macs" in seg or "static" in seg:
        assert drops.get("mac_not_allowed")
    if "max_per_peer" in seg or "max_fdb" in seg:
        assert drops.get("mac_quota") or drops.get("fdb_full")


@pytest.mark.parametrize("seg", [s for s in SCENARIOS if s.get("hub")])
def test_only_an_authenticated_hub_multiplies_floods(seg):
    """The same scenarios: a WireGuard hub relays floods to every other member; a plain VXLAN
    hub sends at most one datagram for each one it receives, whatever arrives."""
    kw = {k: list(v) if k in ("static", "allowed_macs") else v for k, v in seg.items()}
    wg_log, _, _ = scenario(WireGuardSide("abcd", **kw), random.Random(3))
    vx_log, _, _ = scenario(VxlanSide("abcd", **kw), random.Random(3))
    assert max(len(relayed) for kind, _, (relayed, _) in _arrivals(wg_log)) > 1
    assert max(len(relayed) for kind, _, (relayed, _) in _arrivals(vx_log)) == 1


def _arrivals(log: list) -> list:
    return [entry for entry in log if entry[0] == "in"]


def test_engines_flood_head_end_and_unicast_learned():
    """A worked example, the same for both: flood, learn from the answer, then unicast."""
    for side in (WireGuardSide("abc"), VxlanSide("abc")):
        assert side.tap([frame(BCAST, mac(1))], 0) == [["a", "b", "c"]]
        assert side.arrive("b", frame(mac(1), mac(2)), 0) == ([], [frame(mac(1), mac(2))])
        assert side.tap([frame(mac(2), mac(1))], 1) == [["b"]]


def test_vxlan_flow_rides_in_the_destination():
    v = VxlanSide("ab")
    f1, f2 = frame(BCAST, mac(1), b"one"), frame(BCAST, mac(3), b"two")
    out = v.e.from_segment(7, [f1, f2], 0)
    keys = list(out.datagrams)
    assert [(d.host, d.flow) for d in keys] == [
        ("10.0.0.1", flow_hash(f1)), ("10.0.0.2", flow_hash(f1)),
        ("10.0.0.1", flow_hash(f2)), ("10.0.0.2", flow_hash(f2)),
    ]  # fmt: skip
    assert v.peer["a"].tx_packets == 2 and v.peer["a"].tx_bytes == 16 + len(f1) + len(f2)


def test_compiled_egress_runs_equal_the_python_loop():
    """Switch.egress with the compiled run loop (aead.egress_runs) and without: the same runs
    (targets and payloads, in order) and drops over random frame lists: runs to one MAC,
    floods, unknown unicast, too short, too big, a removed peer's MAC."""
    from tunnelpy.protocol import aead

    if not aead.BUILT:
        pytest.skip("the compiled module is not built")
    r = random.Random(4)
    was = aead.enabled()
    try:
        for _ in range(300):
            frames: list = []
            for _ in range(r.randrange(0, 10)):
                dst = r.choice([mac(2), mac(3), mac(9), BCAST, MCAST])
                k = r.randrange(10)
                if k < 7:
                    one = frame(dst, mac(1), r.randbytes(r.randrange(0, 120)))
                elif k == 7:
                    one = r.randbytes(r.randrange(0, 14))
                else:
                    one = frame(dst, mac(1), bytes(300))  # too big
                frames.extend([one] * r.choice([1, 1, 3, 40]))
            results = []
            for compiled in (True, False):
                aead.enable(compiled)
                assert (aead.egress_runs() is not None) is compiled
                sw, p = switch("abc", max_frame=200)
                sw.fdb.learn(mac(2), p["b"], 0)
                sw.fdb.learn(mac(3), p["c"], 0)
                p["c"].removed = True
                drops: Counter[str] = Counter()
                runs = sw.egress(list(frames), 1, drops)
                results.append(([(names(t), [bytes(x) for x in pl]) for t, pl in runs], drops))
            assert results[0] == results[1]
    finally:
        aead.enable(was)


# ---------------------------------------------- plain VXLAN's receive run == one at a time


def _vxlan_batch(rng: random.Random, addr: dict) -> list[tuple[bytes, tuple[str, int]]]:
    """Datagrams as a UDP GRO read hands them over, mostly runs of one flow (same header and
    MACs from one peer), mixed with other flows, other peers, other VNIs, short and bad ones."""
    macs = [mac(i) for i in range(1, 7)] + [BCAST]
    out = []
    for _ in range(rng.randrange(1, 6)):
        name = rng.choice("abcd")
        # mostly the peer's own MAC (a MAC seen behind two peers is held, and takes no run)
        src = mac("abcd".index(name) + 1) if rng.random() < 0.8 else rng.choice(macs[:6])
        dst = rng.choice(macs)
        vni = rng.choice((7, 7, 7, 8))
        if out and rng.random() < 0.2:  # the flow before, from another peer (a MAC moving)
            data, _ = out[-1]
            vni, dst, src = int.from_bytes(data[4:7], "big"), data[8:14], data[14:20]
        origin = (addr[name][0], rng.choice((50000, 50001)))  # (the port does not count)
        for k in range(rng.randrange(1, 12)):
            r = rng.random()
            if r < 0.04:
                data = pack_header(vni) + dst + src  # a frame shorter than its header
            elif r < 0.07:
                data = b"\x00" + pack_header(vni)[1:] + frame(dst, src)  # the I flag clear
            elif r < 0.1:
                data = pack_header(vni) + frame(dst, b"\x01" + src[1:])  # a group source
            else:
                data = pack_header(vni) + frame(dst, src, bytes([k]) * rng.randrange(0, 40))
            out.append((data, origin))
    return out


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("seg", SCENARIOS)
def test_vxlan_receive_runs_equal_one_datagram_at_a_time(seg, compiled, monkeypatch):
    """from_network's run (a datagram starting like the one before goes straight to its TAP)
    against the same datagrams one call each (no run can form): the same frames and relays in
    the same order, drops, peer counters and FDB, and the run taken for most datagrams."""
    import tunnelpy.protocol.vxlan as vxlan_mod

    parsed = Counter[str]()
    real_parse = vxlan_mod.parse_header

    def counting(data: bytes) -> int | None:
        parsed["calls"] += 1
        return real_parse(data)

    monkeypatch.setattr(vxlan_mod, "parse_header", counting)
    if not compiled:
        monkeypatch.setattr(aead, "vxlan_runs", lambda: None)
    elif not aead.BUILT:
        pytest.skip("the compiled AEAD module is not built")
    kw = {k: list(v) if k in ("static", "allowed_macs") else v for k, v in seg.items()}
    sides = [VxlanSide("abcd", **kw) for _ in range(2)]
    results: list[list] = [[], []]
    datagrams = 0
    for side in sides:
        side.e.add_segment(8, None)
    rng = random.Random(5)
    now = 0.0
    for _ in range(150):
        now += rng.choice((0, 0.5, 4))
        batch = _vxlan_batch(rng, sides[0].addr)
        datagrams += len(batch)
        before = parsed["calls"]
        outs = [sides[0].e.from_network(batch, now)]
        batched_calls = parsed["calls"] - before
        outs.append(Output())
        for item in batch:
            one = sides[1].e.from_network([item], now)
            for vni, frames in one.frames.items():
                outs[1].frames.setdefault(vni, []).extend(frames)
            for dest, xs in one.datagrams.items():
                outs[1].datagrams.setdefault(dest, []).extend(xs)
        assert parsed["calls"] - before - batched_calls == len(batch)
        for i, out in enumerate(outs):
            results[i].append((dict(out.frames), dict(out.datagrams)))
    for i, side in enumerate(sides):
        stats = [(p.name, p.rx_bytes, p.rx_packets, p.tx_packets) for p in side.peer.values()]
        fdbs = [sorted((m, p.name, age) for m, p, age in s.fdb.entries(now))
                for s in side.e.segments.values()]  # fmt: skip
        held = [s.fdb.held for s in side.e.segments.values()]
        results[i].append((dict(side.e.drops), stats, fdbs, held))
    assert results[0] == results[1]
    batched = parsed["calls"] - datagrams  # the reference parsed every datagram once
    if not seg.get("hub"):  # (a hub decides per frame: no runs)
        assert batched < datagrams * 0.6  # most went through the run
    drops = results[0][-1][0]
    assert drops.get("frame_too_short") and drops.get("bad_vxlan_header")
    assert drops.get("bad_src_mac")


def _flow_frames(rng: random.Random) -> list[bytes]:
    """Frames behind a VXLAN header as Switch.egress hands them to the plain VXLAN engine: runs
    of one flow (TSO segments: same MACs and addresses, other lengths and IDs), other flows,
    IPv4 and IPv6 long enough for their addresses or not, ARP, a bare Ethernet header."""

    def ip4(src: int, dst: int, n: int) -> bytes:
        return (
            b"\x08\x00"
            + bytes([0x45, 0])
            + rng.randbytes(10)
            + bytes([src, 0, 0, 9, dst, 0, 0, 9])
            + b"p" * n
        )

    def ip6(src: int, dst: int, n: int) -> bytes:
        return (
            b"\x86\xdd"
            + rng.randbytes(6)
            + bytes([src])
            + bytes(14)
            + bytes([src, dst])
            + bytes(14)
            + bytes([dst])
            + b"p" * n
        )

    kinds = [
        lambda: ip4(1, 2, rng.randrange(0, 40)), lambda: ip4(1, 3, 20), lambda: ip4(3, 2, 9), lambda: ip4(1, 2, -20)[:30],
        lambda: ip6(1, 2, rng.randrange(0, 40)), lambda: ip6(2, 1, 4), lambda: ip6(1, 2, 0)[:50],
        lambda: b"\x08\x06" + rng.randbytes(28), lambda: b"\x08\x00", lambda: b"\x86\xdd" + bytes(30),
    ]  # fmt: skip
    out = []
    for _ in range(rng.randrange(1, 8)):
        kind, macs = (
            rng.choice(kinds),
            rng.choice((mac(1) + mac(2), mac(2) + mac(1), BCAST + mac(3))),
        )
        for _ in range(rng.randrange(1, 10)):
            out.append(pack_header(7) + macs + kind())
    if rng.random() < 0.1:
        out.append(
            pack_header(7) + mac(1)[:5]
        )  # (never from egress, but the scan must not read it)
    return out


def _flow_key(f: bytes) -> tuple | None:
    """What flow_hash reads of the frame behind a VXLAN header, with its length class."""
    e = f[8:]
    if len(e) < 14:
        return None
    if e[12:14] == b"\x08\x00" and len(e) >= 34:
        return (34, e[:14], e[26:34])
    if e[12:14] == b"\x86\xdd" and len(e) >= 54:
        return (54, e[:14], e[22:54])
    return (14, e[:14])


@pytest.mark.skipif(not aead.BUILT, reason="the compiled AEAD module is not built")
def test_flow_runs_hash_alike_and_give_the_same_datagrams(monkeypatch):
    rng = random.Random(9)
    runs = 0
    for _ in range(300):
        frames = _flow_frames(rng)
        i = 0
        while i < len(frames):
            j = aead.flow_run(frames, i, 8)
            assert i < j <= len(frames)
            assert {flow_hash(f, 8) for f in frames[i:j]} == {flow_hash(frames[i], 8)}
            assert {_flow_key(f) for f in frames[i:j]} == {_flow_key(frames[i])}
            if j < len(frames) and _flow_key(frames[i]) is not None:
                assert _flow_key(frames[j]) != _flow_key(frames[i])  # (the run is whole)
            runs += j - i > 1
            i = j
    assert runs > 200
    v = VxlanSide("ab")
    batches = [[f[8:] for f in _flow_frames(rng) if len(f) >= 22] for _ in range(100)]
    got = [dict(v.e.from_segment(7, b, 0).datagrams) for b in batches]
    monkeypatch.setattr(aead, "flow_runs", lambda: None)
    v = VxlanSide("ab")
    assert [dict(v.e.from_segment(7, b, 0).datagrams) for b in batches] == got
