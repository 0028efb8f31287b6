"""CoDel for the underlay receive queue: the socket buffer sized by time, not bytes.

Theory of operation
-------------------
Datagrams wait in the UDP socket's receive buffer until the daemon reads them. That buffer is
sized in bytes (4 MiB, so a burst is not lost while the loop is busy elsewhere), and a byte
bound is a time bound only at one rate: 4 MiB is 10 ms at 3 Gbit/s but 330 ms at 100 Mbit/s,
where a small host's daemon is the bottleneck. A TCP flow through the tunnel fills whatever
buffer there is (it backs off only on loss), so every other packet — a ping, an SSH keystroke,
a DNS answer — waits behind that standing queue.

CoDel (RFC 8289, the AQM inside Linux's fq_codel) watches the *sojourn time* of what leaves the
queue, not its length. The kernel stamps each datagram when it arrives (SO_TIMESTAMPNS: for a
UDP_GRO read, the first datagram's arrival, the oldest of the read); the time from that stamp to
our read is how long it queued. A sojourn above ``target`` for a whole ``interval`` means a
standing queue, not a burst: CoDel then drops one datagram, and again at intervals shrinking as
1/sqrt(drops), until the sojourn is below target again. The flow behind the queue sees a loss,
halves its window, and the queue drains; a burst that drains within an interval loses nothing.
With target 5 ms and interval 100 ms (RFC 8289's defaults, made for the Internet RTTs a VPN
carries) a fast host's queue normally never stands for 100 ms at all, and nothing is dropped.

What is dropped is a transport data message (the caller picks it: never a handshake, a cookie
reply or a keepalive), before it is authenticated: a queue drop costs no cipher time, and the
replay window takes the gap like any loss. Drops are counted (``queue_delay``).

This class is the state machine alone: the caller gives it each read's sojourn and its own
monotonic ``now``; it never reads a clock.
"""

from __future__ import annotations

import math

TARGET = 0.005  # seconds of acceptable standing queue (RFC 8289 §4.4)
INTERVAL = 0.100  # seconds a queue may stand above TARGET before a drop (§4.3)
MAX_SOJOURN = 10.0  # a stamp further off is a wall-clock step, not a queue: ignored


class CoDel:
    """The RFC 8289 dequeue-side state machine, one decision per socket read."""

    __slots__ = ("target", "interval", "first_above", "dropping", "drop_next", "count",
                 "last_count", "drops")  # fmt: skip

    def __init__(self, target: float = TARGET, interval: float = INTERVAL) -> None:
        self.target = target
        self.interval = interval
        self.first_above = 0.0  # when the sojourn may drop (0: below target)
        self.dropping = False  # in the dropping state
        self.drop_next = 0.0  # the next drop's time in the dropping state
        self.count = 0  # drops since the dropping state began
        self.last_count = 0
        self.drops = 0  # all drops so far (the caller's counter reads and clears it)

    def _ok_to_drop(self, sojourn: float, now: float) -> bool:
        if sojourn < self.target or sojourn > MAX_SOJOURN:
            self.first_above = 0.0
            return False
        if self.first_above == 0.0:
            self.first_above = now + self.interval
            return False
        return now >= self.first_above

    def _law(self, t: float) -> float:
        return t + self.interval / math.sqrt(self.count)

    def observe(self, sojourn: float, now: float) -> bool:
        """A read whose oldest datagram queued ``sojourn`` seconds, at ``now``: True when one
        datagram of it should be dropped."""
        ok = self._ok_to_drop(sojourn, now)
        if self.dropping:
            if not ok:
                self.dropping = False
                return False
            if now >= self.drop_next:
                self.count += 1
                self.drop_next = self._law(self.drop_next)
                self.drops += 1
                return True
            return False
        if not ok:
            return False
        self.dropping = True
        # Coming back soon after the last dropping state: resume near its drop rate (§5.5).
        delta = self.count - self.last_count
        if delta > 1 and now - self.drop_next < 16 * self.interval:
            self.count = delta
        else:
            self.count = 1
        self.last_count = self.count
        self.drop_next = self._law(now)
        self.drops += 1
        return True
