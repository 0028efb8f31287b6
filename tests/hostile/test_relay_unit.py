"""The lossy relay itself, on loopback: its impairments happen at the set rates."""

from __future__ import annotations

import socket
import time

from tests.harness.relay import Impairment, Relay


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.settimeout(0.5)
    return s


def _drain(s: socket.socket) -> list[bytes]:
    got = []
    try:
        while True:
            got.append(s.recv(2048))
    except TimeoutError:
        return got


def test_relay_drops_duplicates_reorders_at_set_rates():
    a, b = _udp(), _udp()
    imp = Impairment(loss=0.3, duplicate=0.2, reorder=0.2, reorder_delay=0.01)
    relay = Relay(("127.0.0.1", 0), a.getsockname(), ("127.0.0.1", 0), b.getsockname(), imp,
                  seed=3).start()  # fmt: skip
    try:
        n = 3000
        for i in range(n):
            a.sendto(i.to_bytes(4, "big"), relay.a_side)
            if i % 100 == 99:
                time.sleep(0.002)
        got = [int.from_bytes(d, "big") for d in _drain(b)]
        st = relay.stats.a_to_b
        assert st.received == n
        assert 0.25 < st.dropped / n < 0.35
        assert 0.15 < st.duplicated / (n - st.dropped) < 0.25
        assert len(got) == st.sent == n - st.dropped + st.duplicated
        assert len(set(got)) == n - st.dropped
        assert 0.15 < st.reordered / (n - st.dropped) < 0.25
        inversions = sum(1 for x, y in zip(got, got[1:], strict=False) if y < x)
        assert inversions > 0.01 * len(got)  # reordered ones are overtaken
        # the reverse direction goes to A
        b.sendto(b"back", relay.b_side)
        assert _drain(a) in ([b"back"], [b"back", b"back"], [])
    finally:
        relay.stop()
