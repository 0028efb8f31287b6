"""CoDel on the underlay receive queue (io/codel.py): the state machine with a hand-held clock,
and the socket's use of it with real kernel arrival stamps on loopback."""

from __future__ import annotations

import math
import socket
import time

from tunnelpy.io.codel import INTERVAL, TARGET, CoDel
from tunnelpy.io.udp import _TIMESPEC, RECV_CMSG_SPACE, SO_TIMESTAMPNS, UdpSocket


def drops_over(c: CoDel, sojourn: float, start: float, end: float, step: float) -> list[float]:
    """Reads every `step` seconds from `start` to `end`, each with `sojourn`: the drop times."""
    out = []
    t = start
    while t < end:
        if c.observe(sojourn, t):
            out.append(round(t, 6))
        t = round(t + step, 6)
    return out


def test_a_queue_below_target_is_never_dropped() -> None:
    c = CoDel()
    assert drops_over(c, TARGET * 0.99, 0.0, 10.0, 0.001) == []
    assert c.drops == 0


def test_a_burst_that_drains_within_an_interval_loses_nothing() -> None:
    c = CoDel()
    # 50 ms of reads 40 ms deep, then the queue is gone: shorter than one interval.
    assert drops_over(c, 0.040, 0.0, 0.095, 0.001) == []
    assert drops_over(c, 0.0, 0.095, 1.0, 0.001) == []


def test_a_standing_queue_is_dropped_at_intervals_shrinking_as_one_over_sqrt() -> None:
    c = CoDel()
    times = drops_over(c, 0.050, 0.0, 1.0, 0.0005)
    # The first drop once the sojourn stood above target for one interval...
    assert times[0] == INTERVAL
    # ...then at interval/sqrt(count) after the previous scheduled drop.
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    for k, gap in enumerate(gaps[:6]):
        assert abs(gap - INTERVAL / math.sqrt(k + 1)) < 0.001, (k, gap)
    assert c.drops == len(times)


def test_dropping_stops_as_soon_as_the_sojourn_is_below_target() -> None:
    c = CoDel()
    assert drops_over(c, 0.050, 0.0, 0.3, 0.001)
    assert c.dropping
    assert not c.observe(0.001, 0.301)
    assert not c.dropping
    assert drops_over(c, 0.001, 0.302, 2.0, 0.001) == []


def test_coming_back_soon_resumes_near_the_last_drop_rate() -> None:
    c = CoDel()
    drops_over(c, 0.050, 0.0, 0.6, 0.001)
    before = c.count
    assert before > 3
    assert not c.observe(0.0, 0.6)  # the queue drains for a moment
    t = 0.601
    while not c.observe(0.050, t):
        t = round(t + 0.001, 6)
    # One interval later it drops again, at the last episode's rate (RFC 8289 §5.5), not at 1.
    assert abs(t - (0.601 + INTERVAL)) < 0.0015
    assert c.count == before - 1


def test_a_long_pause_starts_again_at_one_drop_per_interval() -> None:
    c = CoDel()
    drops_over(c, 0.050, 0.0, 0.6, 0.001)
    assert c.count > 3
    assert not c.observe(0.0, 0.6)
    t = 5.0
    while not c.observe(0.050, t):
        t = round(t + 0.001, 6)
    assert c.count == 1


def test_a_wall_clock_step_is_not_a_queue() -> None:
    c = CoDel()
    assert drops_over(c, 3600.0, 0.0, 1.0, 0.001) == []
    assert drops_over(c, -5.0, 1.0, 2.0, 0.001) == []


def _transport(counter: int, size: int = 200) -> bytes:
    return b"\x04\x00\x00\x00" + (7).to_bytes(4, "little") + counter.to_bytes(8, "little") + bytes(size - 16)


def _wait_for_arrival_stamps(rx: UdpSocket, tx: socket.socket, dest: tuple[str, int]) -> None:
    """Until the kernel stamps datagrams as they arrive. The first socket that asks for
    SO_TIMESTAMPNS turns the stamping on through a deferred work item (net_enable_timestamp);
    a datagram that arrives before it runs is stamped when it is read, its sojourn ~0, and CoDel
    rightly sees no queue. The daemon does not care (its first reads just go unjudged); a test
    that counts drops from its first read does."""
    for _ in range(100):
        tx.sendto(_transport(0, 32), dest)  # a keepalive: CoDel never judges it
        time.sleep(0.02)
        _data, anc, _flags, _addr = rx.sock.recvmsg(2048, RECV_CMSG_SPACE)
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) == 16:
                sec, nsec = _TIMESPEC.unpack(cdata)
                if time.time() - sec - nsec * 1e-9 > 0.01:
                    return
    raise AssertionError("the kernel never stamped a datagram at arrival")


def test_the_socket_drops_one_stale_transport_message_per_decision() -> None:
    rx = UdpSocket(0, offload=False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert rx.codel is not None  # SO_TIMESTAMPNS: every Linux has it
        rx.codel = CoDel(target=0.002, interval=0.010)
        dest = ("127.0.0.1", rx.port)
        _wait_for_arrival_stamps(rx, tx, dest)
        # 1: a standing queue is seen (first_above set), nothing dropped yet.
        for k in range(5):
            tx.sendto(_transport(k), dest)
        time.sleep(0.03)
        got = rx.recv_batch()
        assert len(got) == 5 and rx.codel.drops == 0
        # 2: still standing one interval later: one transport message goes, unopened.
        for k in range(5, 10):
            tx.sendto(_transport(k), dest)
        time.sleep(0.03)
        got = rx.recv_batch()
        assert rx.codel.drops == 1
        assert len(got) == 4
        counters = [int.from_bytes(d[8:16], "little") for d, _ in got]
        assert counters == sorted(counters) and counters[-1] == 9
        # 3: handshakes and keepalives are never dropped, however stale.
        rx.codel.drops = 0
        for msg in (b"\x01\x00\x00\x00" + bytes(144), _transport(10, 32)):
            tx.sendto(msg, dest)
        time.sleep(0.03)
        got = rx.recv_batch()
        assert len(got) == 2 and rx.codel.drops == 0
        # 4: a fresh queue: below target, nothing goes.
        rx.codel = CoDel(target=0.002, interval=0.010)
        for k in range(20):
            tx.sendto(_transport(20 + k), dest)
            assert len(rx.recv_batch()) == 1
        assert rx.codel.drops == 0
    finally:
        tx.close()
        rx.sock.close()


def test_the_knob_turns_it_off(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TUNNELPY_TEST_AQM", "off")
    rx = UdpSocket(0, offload=False)
    try:
        assert rx.codel is None
    finally:
        rx.sock.close()
