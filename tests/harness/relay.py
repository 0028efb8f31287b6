"""A lossy, reordering, duplicating, delaying UDP relay: netem for a kernel that has none.

It sits between two UDP endpoints A and B. It listens on one socket for each side; a datagram
that arrives on the A-side socket goes out of the B-side socket to B, and the reverse, so each
end sees the relay as its peer (point A's Endpoint at the A-side address, B's at the B-side one).
Every datagram, per direction, independently:

1. is dropped with probability ``loss``;
2. otherwise is held for ``delay`` seconds plus a uniform ``jitter``;
3. with probability ``reorder`` is held ``reorder_delay`` longer, so later datagrams overtake it;
4. with probability ``duplicate`` is also sent a second time, ``dup_delay`` later.

Decisions come from one ``random.Random(seed)``, so a run's choices are repeatable for the same
arrival order. Counters (received, dropped, duplicated, reordered, sent, per direction) are written
as JSON to ``--stats`` every half second and on exit, and the impairments can be changed while it
runs by writing a JSON object to ``--control`` (read every half second)::

    python3 tests/harness/relay.py --a-side 10.1.0.1:51820 --to-a 10.1.0.2:51820 \
        --b-side 10.2.0.1:51820 --to-b 10.2.0.2:51820 --loss 0.1 --reorder 0.1 \
        --duplicate 0.05 --delay 0.001 --jitter 0.002 --seed 7 --stats /tmp/relay.json

One thread, one `select` loop and a heap of timed sends: about 60-100 k datagrams/s on one core,
which is more than two Python daemons produce. Also importable: `Relay(...)` runs the same loop
in a thread for tests on loopback.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import random
import select
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, field

Addr = tuple[str, int]


@dataclass
class Impairment:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    reorder_delay: float = 0.005
    dup_delay: float = 0.001


@dataclass
class Counters:
    received: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    sent: int = 0


@dataclass
class Stats:
    a_to_b: Counters = field(default_factory=Counters)
    b_to_a: Counters = field(default_factory=Counters)


def parse_addr(text: str) -> Addr:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _socket(addr: Addr) -> socket.socket:
    fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    s.bind(addr)
    s.setblocking(False)
    return s


class Relay:
    def __init__(
        self,
        a_side: Addr,
        to_a: Addr | None,
        b_side: Addr,
        to_b: Addr,
        imp: Impairment | None = None,
        *,
        seed: int = 0,
        imp_b_to_a: Impairment | None = None,
        stats_path: str | None = None,
        control_path: str | None = None,
    ) -> None:
        self.sock_a = _socket(a_side)  # faces A: receives from A, sends to A
        self.sock_b = _socket(b_side)
        self.a_side = self.sock_a.getsockname()[:2]
        self.b_side = self.sock_b.getsockname()[:2]
        self.to_a = to_a  # None: learnt from the first datagram A sends
        self.to_b = to_b
        self.imp = {"a_to_b": imp or Impairment(), "b_to_a": imp_b_to_a or imp or Impairment()}
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.stats_path = stats_path
        self.control_path = control_path
        self._heap: list[tuple[float, int, socket.socket, bytes, Addr]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------

    def set(self, **changes: float) -> None:
        """Change impairments of both directions (a_to_b_loss=… changes one)."""
        for key, value in changes.items():
            for d in ("a_to_b", "b_to_a"):
                if key.startswith(d + "_"):
                    setattr(self.imp[d], key[len(d) + 1 :], value)
                    break
            else:
                for imp in self.imp.values():
                    setattr(imp, key, value)

    def snapshot(self) -> dict:
        return {**asdict(self.stats), "impairment": {k: asdict(v) for k, v in self.imp.items()}}

    def _write_stats(self) -> None:
        if self.stats_path:
            tmp = self.stats_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.snapshot(), f)
            os.replace(tmp, self.stats_path)

    def _read_control(self) -> None:
        if not self.control_path:
            return
        try:
            with open(self.control_path) as f:
                changes = json.load(f)
            os.unlink(self.control_path)
        except (OSError, ValueError):
            return
        self.set(**changes)

    # -- the loop ------------------------------------------------------------------------------

    def _schedule(self, at: float, sock: socket.socket, data: bytes, dst: Addr) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), sock, data, dst))

    def _impair(self, direction: str, data: bytes, now: float) -> None:
        c: Counters = getattr(self.stats, direction)
        c.received += 1
        imp = self.imp[direction]
        r = self.rng.random
        if direction == "a_to_b":
            sock, dst = self.sock_b, self.to_b
        else:
            sock, dst = self.sock_a, self.to_a
        if dst is None or r() < imp.loss:
            c.dropped += 1
            return
        at = now + imp.delay + (r() * imp.jitter if imp.jitter else 0.0)
        if imp.reorder and r() < imp.reorder:
            at += imp.reorder_delay
            c.reordered += 1
        self._schedule(at, sock, data, dst)
        if imp.duplicate and r() < imp.duplicate:
            c.duplicated += 1
            self._schedule(at + imp.dup_delay, sock, data, dst)

    def _flush(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, sock, data, dst = heapq.heappop(heap)
            try:
                sock.sendto(data, dst)
            except OSError:
                continue  # a full buffer or unreachable peer is loss too
            if sock is self.sock_b:
                self.stats.a_to_b.sent += 1
            else:
                self.stats.b_to_a.sent += 1

    def run(self) -> None:
        socks = [self.sock_a, self.sock_b]
        next_io = time.monotonic() + 0.5
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = 0.05
            if self._heap:
                timeout = max(0.0, min(timeout, self._heap[0][0] - now))
            ready, _, _ = select.select(socks, [], [], timeout)
            now = time.monotonic()
            for sock in ready:
                for _ in range(256):
                    try:
                        data, src = sock.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue  # ICMP errors surface here as ECONNREFUSED
                    if sock is self.sock_a:
                        if self.to_a is None:
                            self.to_a = src[:2]
                        self._impair("a_to_b", data, now)
                    else:
                        self._impair("b_to_a", data, now)
            self._flush(now)
            if now >= next_io:
                next_io = now + 0.5
                self._read_control()
                self._write_stats()
        self._write_stats()

    def start(self) -> Relay:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sock_a.close()
        self.sock_b.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a-side", required=True, help="address:port the relay listens on for A")
    ap.add_argument("--to-a", help="A's address:port (default: learnt from A's first datagram)")
    ap.add_argument("--b-side", required=True, help="address:port the relay listens on for B")
    ap.add_argument("--to-b", required=True, help="B's address:port")
    for name, default in asdict(Impairment()).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=float, default=default)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stats", help="write counters here as JSON")
    ap.add_argument("--control", help="read impairment changes (JSON object) from this file")
    args = ap.parse_args(argv)
    imp = Impairment(**{k: getattr(args, k) for k in asdict(Impairment())})
    relay = Relay(
        parse_addr(args.a_side), parse_addr(args.to_a) if args.to_a else None,
        parse_addr(args.b_side), parse_addr(args.to_b), imp, seed=args.seed,
        stats_path=args.stats, control_path=args.control,
    )  # fmt: skip
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: relay._stop.set())
    print(f"relay {relay.a_side} <-> {relay.b_side}", flush=True)
    relay.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
