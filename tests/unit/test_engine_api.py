"""The engines' typed seams: events, drop reasons, Dest, the PacketEngine contract, and the
configuration calls the daemon makes (update_peer, remove_peer, set_counter_bank)."""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import socket
from pathlib import Path

import pytest

import tunnelpy
from tests.harness.engine_pair import A_ADDR, A_IN, B_ADDR, B_IN, Net
from tests.harness.packets import ipv4
from tunnelpy.io.udp import UdpSocket
from tunnelpy.io.vxlan_socket import VxlanSocket
from tunnelpy.protocol.actions import Dest, Output
from tunnelpy.protocol.drops import Drop
from tunnelpy.protocol.events import (
    HandshakeComplete,
    HandshakeFailed,
    HandshakeSent,
    ResolveEndpoint,
    Roamed,
)
from tunnelpy.protocol.packet_engine import UNSET, PacketEngine
from tunnelpy.protocol.vxlan import VxlanEngine, pack_header
from tunnelpy.workers.counters import LocalCounters

KEY = bytes(range(32))


# ------------------------------------------------------------------------------ events


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (HandshakeSent(KEY, "site-b", retry=True), "retry"),
        (HandshakeSent(KEY, "site-b", retry=False), ""),
        (HandshakeComplete(KEY, "site-b", "responder"), "responder"),
        (HandshakeFailed(KEY, "site-b", 21), "21 attempts"),
        (Roamed(KEY, "site-b", ("192.0.2.1", 51820), ("2001:db8::1", 4)),
         "192.0.2.1:51820 -> [2001:db8::1]:4"),
        (Roamed(KEY, "site-b", None, ("192.0.2.1", 5)), "(none) -> 192.0.2.1:5"),
        (ResolveEndpoint(KEY, "site-b", "peer went quiet"), "peer went quiet"),
    ],
)  # fmt: skip
def test_event_text_and_no_key_material(event, text):
    assert str(event) == text
    shown = str(event) + repr(event)
    assert "site-b" in repr(event)
    for form in (base64.b64encode(KEY).decode()[:8], KEY.hex()[:8], repr(KEY)[:12]):
        assert form not in shown
    assert event.peer_key == KEY and event.peer_name == "site-b"
    with pytest.raises(AttributeError):
        event.peer_name = "x"  # type: ignore[misc]  # frozen


def test_engine_events_carry_the_peer_key():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    kinds = [(type(e).__name__, e.peer_key, str(e)) for e in n.events]
    assert ("HandshakeSent", n.pa.public_key, "") in kinds
    assert ("HandshakeComplete", n.pa.public_key, "initiator") in kinds
    assert ("HandshakeComplete", n.pb.public_key, "responder") in kinds


# ------------------------------------------------------------------------------ drops


def test_drop_reasons_are_their_strings():
    assert Drop.REPLAY == "replay" and str(Drop.REPLAY) == "replay" and f"{Drop.REPLAY}" == "replay"
    assert json.dumps({Drop.BAD_AUTH: 1}) == '{"bad_auth": 1}'
    from collections import Counter

    c: Counter[str] = Counter()
    c[Drop.TUN_NO_ROUTE] += 1
    c.update({"tun_no_route": 2})  # a worker's report: plain strings, the same key
    assert c == {"tun_no_route": 3} and len(c) == 1
    assert all(re.fullmatch(r"[a-z0-9_]+", d.value) and d.name == d.value.upper() for d in Drop)


def test_every_drop_reason_in_the_code_is_a_member():
    """Workers still count by string: each such string must be one of the enum's values (so
    the labels of one reason are one), and every member is used somewhere."""
    root = Path(tunnelpy.__file__).parent
    text = "\n".join(p.read_text() for p in root.rglob("*.py") if p.name != "drops.py")
    values = {d.value for d in Drop}
    quoted = set(re.findall(r'drops\["([a-z0-9_]+)"\]', text))
    quoted |= set(re.findall(r'"(tun_\w+_error|udp_send_error)"', text))
    assert quoted <= values, quoted - values
    used = set(re.findall(r"Drop\.([A-Z0-9_]+)", text))
    assert {d.value for d in Drop if d.name in used} | quoted == values


# ------------------------------------------------------------------------------ Dest and sockets


def test_dest_defaults_and_keys():
    d = Dest("192.0.2.1", 51820)
    assert d.flow == 0 and d.src is None and d[:2] == ("192.0.2.1", 51820)
    assert d == ("192.0.2.1", 51820, 0, None)
    out = Output()
    out.send(d, b"1")
    out.send(Dest("192.0.2.1", 51820), b"2")
    out.send(Dest("192.0.2.1", 51820, 7), b"3")
    assert out.datagrams == {d: [b"1", b"2"], Dest("192.0.2.1", 51820, 7): [b"3"]}


def _recv(sock: socket.socket) -> tuple[bytes, tuple]:
    sock.settimeout(2)
    return sock.recvfrom(100)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_udp_send_takes_a_dest_and_sends_to_host_port(host):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sink = socket.socket(fam, socket.SOCK_DGRAM)
        sink.bind((host, 0))
    except OSError:
        pytest.skip(f"no {host} here")
    udp = UdpSocket(0, offload=False)
    try:
        port = sink.getsockname()[1]
        # A flow must never reach sendto: on an IPv6 socket it would be taken as flowinfo.
        udp.send(Dest(host, port, 12345), [b"a", b"b"])
        udp.send((host, port), [b"c"])  # a worker's plain (host, port)
        got = [_recv(sink)[0] for _ in range(3)]
        assert got == [b"a", b"b", b"c"] and udp.send_errors == 0
    finally:
        udp.close()
        sink.close()


def test_vxlan_socket_picks_the_source_port_by_flow():
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    vs = VxlanSocket(0, pool=3, offload=False)
    try:
        port = sink.getsockname()[1]
        for flow in (0, 4, 8):
            vs.send(Dest("127.0.0.1", port, flow), [bytes([flow])])
            data, src = _recv(sink)
            assert data == bytes([flow]) and src[1] == vs.pool[flow % 3].port
    finally:
        vs.close()
        sink.close()


# ------------------------------------------------------------------------------ the contract


def _is_packet_engine(e: PacketEngine) -> PacketEngine:
    return e


def test_both_engines_have_the_packet_engine_interface():
    names = [n for n in dir(PacketEngine) if not n.startswith("_")]
    assert {"from_tunnel", "from_segment", "from_network", "on_timer", "next_deadline",
            "peers", "segments", "drops", "add_segment", "remove_segment", "remove_peer",
            "update_peer"} <= set(names)  # fmt: skip
    for e in (Net().a, VxlanEngine()):
        _is_packet_engine(e)
        for n in names:
            assert hasattr(e, n), (type(e).__name__, n)
        e.add_segment(5)
        assert 5 in e.segments and e.segments[5].peers is None
        e.remove_segment(5)
        e.remove_segment(5)  # (absent: nothing to do)
        assert e.segments == {}


# ------------------------------------------------------------------------------ Engine.update_peer


def test_update_peer_changes_only_what_is_given_and_keeps_the_session():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    kp = n.pa.current
    before = (n.pa.name, n.pa.preshared_key, n.pa.endpoint, n.a.allowed.networks_of(n.pa))
    assert n.a.update_peer(n.pa.public_key, now=n.now) is n.pa
    assert (n.pa.name, n.pa.preshared_key, n.pa.endpoint, n.a.allowed.networks_of(n.pa)) == before
    n.a.update_peer(n.pa.public_key, name="bee", preshared_key=bytes([1]) * 32, now=n.now)
    assert n.pa.name == "bee" and n.pa.preshared_key == bytes([1]) * 32
    n.a.update_peer(n.pa.public_key, preshared_key=None, now=n.now)  # None: no preshared key
    assert n.pa.preshared_key == bytes(32)
    net = ipaddress.ip_network
    n.a.update_peer(n.pa.public_key, allowed_ips=[net("10.9.0.0/16")], now=n.now)
    assert [str(x) for x in n.a.allowed.networks_of(n.pa)] == ["10.9.0.0/16"]
    n.a.update_peer(n.pa.public_key, add_allowed_ips=[net("10.0.0.2/32")], now=n.now)
    assert sorted(map(str, n.a.allowed.networks_of(n.pa))) == ["10.0.0.2/32", "10.9.0.0/16"]
    n.a.update_peer(
        n.pa.public_key,
        allowed_ips=[net("fd00::2/128")],
        add_allowed_ips=[net("10.0.0.2/32")],
        now=n.now,
    )  # fmt: skip  (replaced, then added to)
    assert sorted(map(str, n.a.allowed.networks_of(n.pa))) == ["10.0.0.2/32", "fd00::2/128"]
    assert n.pa.current is kp  # no change above touches the session
    n.send(n.a, [ipv4(A_IN, B_IN)])
    assert n.delivered["b"][-1] == ipv4(A_IN, B_IN)


def test_update_peer_endpoint_and_keepalive():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    n.a.update_peer(n.pa.public_key, endpoint=("198.51.100.7", 9), now=n.now)
    assert n.pa.endpoint == ("198.51.100.7", 9)
    out = n.a.from_tunnel([ipv4(A_IN, B_IN)], n.now)
    assert list(out.datagrams) == [Dest("198.51.100.7", 9)]
    n.a.update_peer(n.pa.public_key, endpoint=B_ADDR, persistent_keepalive=25, now=n.now)
    assert n.pa.persistent_keepalive == 25 and n.pa.persistent_at == n.now
    assert n.a.next_deadline() is not None and n.a.next_deadline() <= n.now
    n.a.update_peer(n.pa.public_key, persistent_keepalive=0, now=n.now)
    assert n.pa.persistent_at is None
    n.a.update_peer(n.pa.public_key, endpoint=None, now=n.now)
    assert n.pa.endpoint is None
    assert n.a.update_peer(bytes(32), name="nobody", now=n.now) is None
    assert UNSET is not None and repr(UNSET) == "UNSET"


def test_set_counter_bank():
    n = Net()
    bank = LocalCounters(slots=4)
    n.a.set_counter_bank(bank)
    n.send(n.a, [ipv4(A_IN, B_IN)])
    assert n.a.counters is bank and n.pa.current.ident != 0  # a shared slot was claimed


def test_remove_peer_forgets_it_in_every_segment():
    n = Net()
    seg = n.a.add_segment(3, [n.pa])
    seg.fdb.learn(b"\x02" * 6, n.pa, n.now)
    n.a.remove_peer(n.pa.public_key)
    assert seg.peers == [] and len(seg.fdb) == 0 and n.pa.removed
    n.a.remove_peer(n.pa.public_key)  # (absent: nothing to do)


# ------------------------------------------------------------------------------ VxlanEngine


def _frame(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x88\xb5" + b"hi"


def test_vxlan_remove_peer():
    e = VxlanEngine()
    k1 = e.add_peer("k1", ("10.0.0.1", 4789))
    k2 = e.add_peer("k2", ("10.0.0.2", 4789))
    seg = e.add_segment(42, [k1, k2])
    every = e.add_segment(43)  # every peer
    m1 = bytes([2, 0, 0, 0, 0, 1])
    e.from_network([(pack_header(42) + _frame(b"\xff" * 6, m1), ("10.0.0.1", 1))], 0)
    e.from_network([(pack_header(43) + _frame(b"\xff" * 6, m1), ("10.0.0.1", 1))], 0)
    assert seg.fdb.lookup(m1, 0) is k1 and every.fdb.lookup(m1, 0) is k1
    e.remove_peer("k1")
    assert "k1" not in e.peers and "10.0.0.1" not in e.by_addr and k1.removed
    assert seg.peers == [k2] and seg.fdb.lookup(m1, 0) is None and len(every.fdb) == 0
    out = e.from_segment(42, [_frame(m1, bytes([2, 0, 0, 0, 0, 2]))], 1)
    assert [d[:2] for d in out.datagrams] == [("10.0.0.2", 4789)]  # flooded to k2 only
    assert [d[:2] for d in e.from_segment(43, [_frame(m1, m1)], 1).datagrams] == [
        ("10.0.0.2", 4789)
    ]
    e.from_network([(pack_header(42) + _frame(b"\xff" * 6, m1), ("10.0.0.1", 1))], 2)
    assert e.drops["unknown_source"] == 1
    e.remove_peer("k1")  # (absent: nothing to do)


def test_vxlan_update_peer_moves_by_addr():
    e = VxlanEngine()
    k1 = e.add_peer("k1", ("10.0.0.1", 4789))
    e.add_segment(42, None)
    assert e.update_peer("k1", ("10.0.0.9", 4790)) is k1
    assert k1.endpoint == ("10.0.0.9", 4790) and e.by_addr == {"10.0.0.9": k1}
    assert e.update_peer("k1") is k1 and k1.endpoint == ("10.0.0.9", 4790)  # UNSET
    assert e.update_peer("nope", ("10.0.0.3", 1)) is None
    out = e.from_network([(pack_header(42) + _frame(b"\xff" * 6, b"\x02" * 6), ("10.0.0.9", 7))], 0)
    assert out.frames and e.drops == {}
    out = e.from_segment(42, [_frame(b"\xff" * 6, b"\x02" * 6)], 0)
    assert [d[:2] for d in out.datagrams] == [("10.0.0.9", 4790)]


def test_engine_datagrams_are_keyed_by_dest():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    out = n.b.from_tunnel([ipv4(B_IN, A_IN)], n.now)
    ((dest, dgs),) = out.datagrams.items()
    assert type(dest) is Dest and dest == Dest(*A_ADDR) and len(dgs) == 1
