"""The fakes of tests/harness/fakes.py: the interface of the real devices, real readiness, and
datagrams between FakeUdp sockets by (host, port) — down to a DataPath moving a packet from one
FakeTun to another through two engines."""

from __future__ import annotations

import ast
import asyncio
import inspect
import select
from dataclasses import dataclass
from typing import NamedTuple

import pytest
import uvloop

from tests.harness.engine_pair import A_ADDR, A_IN, B_ADDR, B_IN, Net
from tests.harness.fakes import FakeNetwork, FakeTun, FakeUdp, Sent
from tests.harness.packets import icmp_echo, ipv4
from tunnelpy.datapath import DataPath
from tunnelpy.io.tun import Tun, TunError
from tunnelpy.io.udp import UdpError, UdpSocket

# Worker processes adopt fds the real daemon passes them; a fake is never passed to a process.
NOT_FAKED = {"adopt", "sock"}


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def public_interface(cls: type) -> tuple[dict[str, inspect.Signature], set[str]]:
    """Public methods (with signatures) and the public attributes __init__ assigns."""
    methods = {
        name: inspect.signature(getattr(cls, name))
        for name, v in vars(cls).items()
        if not name.startswith("_") and callable(getattr(cls, name)) and name not in NOT_FAKED
    }
    tree = ast.parse(inspect.getsource(cls.__init__).strip())
    attrs = {
        t.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Attribute) and not t.attr.startswith("_")
    }
    return methods, attrs - NOT_FAKED


def shape(sig: inspect.Signature) -> list[tuple[object, str | None]]:
    # Parameter kinds, and names only where a caller must use them (keyword-only).
    return [
        (p.kind, p.name if p.kind is p.KEYWORD_ONLY else None)
        for p in sig.parameters.values()
        if p.name != "self"
    ]


@pytest.mark.parametrize(
    ("real", "fake", "make"),
    [
        (Tun, FakeTun, lambda: FakeTun("tp0")),
        (UdpSocket, FakeUdp, lambda: FakeNetwork().bind("192.0.2.1", 51820)),
    ],
    ids=["tun", "udp"],
)
def test_fake_has_every_method_and_attribute_of_the_real_device(real, fake, make):
    methods, attrs = public_interface(real)
    instance = make()
    try:
        for name, sig in methods.items():
            assert hasattr(fake, name), f"{fake.__name__} lacks {name}"
            assert shape(inspect.signature(getattr(fake, name))) == shape(sig), name
        missing = sorted(a for a in attrs if not hasattr(instance, a))
        assert missing == []
    finally:
        instance.close()


def test_constructors_take_the_real_arguments():
    assert shape(inspect.signature(FakeTun)) == shape(inspect.signature(Tun))
    make = FakeNetwork().factory("192.0.2.1")
    assert shape(inspect.signature(make)) == shape(inspect.signature(UdpSocket))
    sock = make(51820, 7, offload=False)
    assert (sock.address, sock.fwmark) == (("192.0.2.1", 51820), 7)
    assert not sock.gso and not sock.gro
    sock.close()


# ---------------------------------------------------------------------------------- FakeTun --


def test_tun_inject_makes_fd_readable_and_keeps_packet_boundaries():
    tun = FakeTun("tp0")
    assert not readable(tun.fd) and tun.read_batch() == []
    packets = [ipv4(A_IN, B_IN, b"a" * n) for n in (0, 1, 1480, 60000)]
    tun.inject(*packets)
    assert readable(tun.fd)
    assert tun.read_batch(max_batch=3) == packets[:3]
    assert readable(tun.fd)
    assert tun.read_batch() == packets[3:]
    assert not readable(tun.fd)
    tun.close()


def test_tun_records_writes_and_counts_them_lost_once_closed():
    tun = FakeTun("tp0", tap=True, offload=True)
    assert (tun.tap, tun.offload_requested, tun.vnet_hdr, tun.offloads) == (True, True, False, "")
    tun.write_batch([b"one", memoryview(b"two")])
    assert tun.written == [b"one", b"two"] and not readable(tun.fd)  # writes are not reads
    assert tun.take_written() == [b"one", b"two"] and tun.written == []
    tun.close()
    assert tun.closed and tun.fd == -1
    tun.write_batch([b"x", b"y"])
    assert tun.write_drops == 2 and tun.written == [] and tun.read_batch() == []
    with pytest.raises(TunError):
        tun.inject(b"z")
    tun.close()  # twice is harmless, as for Tun


def test_tun_queues_only_when_multi_queue():
    with pytest.raises(TunError):
        FakeTun("tp0").open_queue()
    with pytest.raises(TunError):
        FakeTun("tp1").detach_writes()
    tun = FakeTun("tp2", multi_queue=True)
    fd = tun.open_queue()
    tun.detach_writes()
    assert fd >= 0 and fd != tun.fd and tun.writes_detached and len(tun.queues) == 2
    tun.close()
    assert tun.queues == []


# ---------------------------------------------------------------------------------- FakeUdp --


class Dest(NamedTuple):
    host: str
    port: int
    flow: int = 0


@dataclass
class HostPort:  # a destination with attributes only, no indexing
    host: str
    port: int


def test_udp_datagrams_go_by_host_and_port_with_the_sender_as_source():
    net = FakeNetwork()
    a, b = net.bind(*A_ADDR), net.bind(*B_ADDR)
    assert not readable(b.fileno())
    a.send(B_ADDR, [b"1", b"2"])
    a.send(Dest(B_ADDR[0], B_ADDR[1], flow=0xBEEF), [b"3"])
    a.send(HostPort(*B_ADDR), [memoryview(b"4")])
    assert readable(b.fileno())
    assert b.recv_batch(max_batch=3) == [(d, A_ADDR) for d in (b"1", b"2", b"3")]
    assert readable(b.fileno())
    assert b.recv_batch() == [(b"4", A_ADDR)]
    assert not readable(b.fileno()) and b.recv_batch() == []
    b.send(A_ADDR, [b"back"])
    assert a.recv_batch() == [(b"back", B_ADDR)]
    assert [s.datagram for s in net.log] == [b"1", b"2", b"3", b"4", b"back"]
    assert a.sent == [(B_ADDR, d) for d in (b"1", b"2", b"3", b"4")] and net.lost == []


def test_udp_reports_ipv4_mapped_addresses_as_dotted_quads():
    net = FakeNetwork()
    a, b = net.bind("::ffff:192.0.2.1", 51820), net.bind("192.0.2.2", 51820)
    a.send(("::ffff:192.0.2.2", 51820), [b"x"])
    assert b.recv_batch() == [(b"x", ("192.0.2.1", 51820))]


def test_udp_loses_datagrams_to_nobody_and_counts_sends_after_close():
    net = FakeNetwork()
    a = net.bind(*A_ADDR)
    a.send(B_ADDR, [b"void"])
    assert net.lost == [Sent(A_ADDR, B_ADDR, b"void")] and a.send_errors == 0
    b = net.bind(*B_ADDR)
    b.close()
    a.send(B_ADDR, [b"gone"])
    assert [s.datagram for s in net.lost] == [b"void", b"gone"]
    a.close()
    assert a.fileno() == -1
    a.send(B_ADDR, [b"p", b"q"])
    assert a.send_errors == 2


def test_udp_ports_are_exclusive_and_zero_picks_a_free_one():
    net = FakeNetwork()
    first = net.bind("192.0.2.1", 51820)
    with pytest.raises(UdpError, match="51820 is already in use"):
        net.bind("192.0.2.1", 51820)
    other_host = net.bind("192.0.2.9", 51820)
    e1, e2 = net.bind("192.0.2.1", 0), net.bind("192.0.2.1", None)
    assert e1.port != e2.port and min(e1.port, e2.port) >= 40000
    first.close()
    again = net.bind("192.0.2.1", 51820)
    for s in (other_host, e1, e2, again):
        s.close()
    assert net.sockets == {}


def test_udp_admit_makes_a_lossy_path():
    net = FakeNetwork(admit=lambda s: s.datagram != b"drop")
    a, b = net.bind(*A_ADDR), net.bind(*B_ADDR)
    a.send(B_ADDR, [b"keep", b"drop", b"keep2"])
    assert [d for d, _ in b.recv_batch()] == [b"keep", b"keep2"]
    assert [s.datagram for s in net.lost] == [b"drop"]


# ------------------------------------------------------------------------- with a DataPath --


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_datapath_moves_a_ping_between_two_fake_tuns(loop_kind):
    """Two engines, each in a DataPath on one event loop, joined only by the fakes."""
    pair = Net()
    net = FakeNetwork()
    tun_a, tun_b = FakeTun("tpa"), FakeTun("tpb")
    udp_a, udp_b = net.bind(*A_ADDR), net.bind(*B_ADDR)
    ping = ipv4(A_IN, B_IN, icmp_echo(7, 1, b"fake"), proto=1, csum=True)
    pong = ipv4(B_IN, A_IN, icmp_echo(7, 1, b"fake", reply=True), proto=1, csum=True)
    events: list = []

    async def wait_for(cond, what: str) -> None:
        for _ in range(500):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        paths = [
            DataPath(loop, pair.a, udp_a, tun_a, events.append),
            DataPath(loop, pair.b, udp_b, tun_b, events.append),
        ]
        for p in paths:
            p.start()
        try:
            tun_a.inject(ping)
            await wait_for(lambda: tun_b.written, "the ping at B")
            tun_b.inject(pong)
            await wait_for(lambda: tun_a.written, "the reply at A")
        finally:
            for p in paths:
                p.stop()

    runner = uvloop.run if loop_kind == "uvloop" else asyncio.run
    runner(main())
    assert tun_b.written == [ping] and tun_a.written == [pong]
    assert [s.datagram[0] for s in net.log][:3] == [1, 2, 4]  # initiation, response, data
    assert pair.pa.current is not None and pair.pb.current is not None
    assert events  # the handshakes were reported to the daemon side
    for dev in (tun_a, tun_b, udp_a, udp_b):
        dev.close()
