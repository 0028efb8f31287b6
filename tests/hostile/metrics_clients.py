"""Hostile and busy clients of tunnelpyd's metrics endpoint (run by path inside a namespace).

    python3 tests/hostile/metrics_clients.py scrape TARGET SECONDS CLIENTS
    python3 tests/hostile/metrics_clients.py stall  TARGET N HOLD
    python3 tests/hostile/metrics_clients.py hold   TARGET N HOLD

TARGET is ``HOST:PORT`` or ``unix:PATH``.

* ``scrape``: CLIENTS threads each GET /metrics in a tight loop for SECONDS (one request per
  connection, read to EOF). Prints one JSON line: scrapes, bytes, errors, slowest scrape.
* ``stall``: N connections, each with a 4 KiB receive buffer, send ``GET /metrics`` and never
  read, so the reply backs up into the server. Prints ``connected N`` once they are open, then
  watches them for HOLD seconds and prints one JSON line: how many the server closed (seen
  through ``getsockopt(TCP_INFO)``'s state, or EOF/RST on a unix socket) and when.
* ``hold``: N connections opened as fast as possible (non-blocking connects) that send nothing.
  Prints ``held K`` (K = the connects that completed within 3 s), holds them HOLD seconds, then
  one JSON line with how many the server had closed by then.

The soft fd limit is raised to the hard one: the point is to hold more sockets than the server.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import struct
import sys
import threading
import time

REQUEST = b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n"
TCP_CLOSE_WAIT = 8  # linux/tcp_states.h: the peer sent FIN, we have not closed
TCP_CLOSE = 7  # RST received (or closed)


def connect(target: str, *, blocking: bool = True, rcvbuf: int | None = None) -> socket.socket:
    if target.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        addr: object = target[5:]
    else:
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        addr = (host, int(port))
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if blocking:
        s.settimeout(10)
        s.connect(addr)
    else:
        s.setblocking(False)
        try:
            s.connect(addr)
        except (BlockingIOError, InterruptedError):
            pass
    return s


def scrape_once(target: str) -> int:
    with connect(target) as s:
        s.sendall(REQUEST)
        n = 0
        head = b""
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            if n == 0:
                head = chunk[:12]
            n += len(chunk)
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError(f"bad answer {head!r}")
        return n


def cmd_scrape(target: str, seconds: float, clients: int) -> dict:
    stats = {"scrapes": 0, "bytes": 0, "errors": 0, "slowest_s": 0.0}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < end:
            t = time.monotonic()
            try:
                n = scrape_once(target)
            except OSError:
                with lock:
                    stats["errors"] += 1
                time.sleep(0.01)
                continue
            took = time.monotonic() - t
            with lock:
                stats["scrapes"] += 1
                stats["bytes"] += n
                stats["slowest_s"] = max(stats["slowest_s"], round(took, 3))

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats


def closed_by_server(s: socket.socket) -> bool:
    if s.family == socket.AF_UNIX:
        # No TCP state to ask: peek. The reply itself is data, so only EOF/reset after it says
        # the server hung up; MSG_PEEK of a huge length would copy, so drain what is there.
        try:
            while True:
                chunk = s.recv(1 << 16, socket.MSG_DONTWAIT)
                if not chunk:
                    return True
        except BlockingIOError:
            return False
        except ConnectionError:
            return True
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return struct.unpack("B", info[:1])[0] in (TCP_CLOSE_WAIT, TCP_CLOSE)


def cmd_stall(target: str, n: int, hold: float) -> dict:
    socks = []
    for _ in range(n):
        s = connect(target, rcvbuf=4096)
        s.sendall(REQUEST)
        socks.append(s)
    t0 = time.monotonic()
    print(f"connected {len(socks)}", flush=True)
    closed_at: dict[int, float] = {}
    while time.monotonic() - t0 < hold and len(closed_at) < len(socks):
        for i, s in enumerate(socks):
            if i not in closed_at and closed_by_server(s):
                closed_at[i] = round(time.monotonic() - t0, 2)
        time.sleep(0.05)
    times = sorted(closed_at.values())
    return {
        "clients": len(socks),
        "closed": len(times),
        "first_closed_s": times[0] if times else None,
        "last_closed_s": times[-1] if times else None,
    }


def cmd_hold(target: str, n: int, hold: float) -> dict:
    """Keep n connections open for `hold` s: any the server closes is replaced at once."""
    socks = [connect(target, blocking=False) for _ in range(n)]
    sel = selectors.DefaultSelector()  # epoll: select() stops at fd 1024
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    connected = 0
    deadline = time.monotonic() + 3.0
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            sel.unregister(key.fileobj)
            if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:  # type: ignore[union-attr]
                connected += 1
    sel.close()
    print(f"held {connected}", flush=True)
    reopened = 0
    end = time.monotonic() + hold
    while time.monotonic() < end:
        for i, s in enumerate(socks):
            try:
                gone = closed_by_server(s)
            except OSError:
                gone = True
            if gone:
                s.close()
                socks[i] = connect(target, blocking=False)
                reopened += 1
        time.sleep(0.1)
    return {"connections": n, "connected_first_3s": connected, "reopened": reopened}


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mode, target = sys.argv[1], sys.argv[2]
    if mode == "scrape":
        out = cmd_scrape(target, float(sys.argv[3]), int(sys.argv[4]))
    elif mode == "stall":
        out = cmd_stall(target, int(sys.argv[3]), float(sys.argv[4]))
    elif mode == "hold":
        out = cmd_hold(target, int(sys.argv[3]), float(sys.argv[4]))
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
