"""Handshake flooder: initiations with a valid mac1 (it knows the target's public key) at a set rate.

    python3 tests/hostile/flooder.py HOST PORT PUBKEY_B64 RATE SECONDS [DISTINCT]

The bodies are random (a stranger has no key the responder knows), so each one costs a responder
that is not in cookie mode a Diffie-Hellman before it is refused. Sends from one UDP socket,
paced in bursts of 100, and prints one JSON line: how many were sent and the rate achieved.
Cookie replies coming back are read and counted so they do not pile up.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import sys
import time


def main() -> int:
    host, port, pub, rate, seconds = (
        sys.argv[1],
        int(sys.argv[2]),
        sys.argv[3],
        float(sys.argv[4]),
        float(sys.argv[5]),
    )
    distinct = int(sys.argv[6]) if len(sys.argv) > 6 else 4096
    key = hashlib.blake2s(b"mac1----" + base64.b64decode(pub)).digest()
    msgs = []
    for _ in range(distinct):
        body = b"\x01\0\0\0" + os.urandom(112)
        mac1 = hashlib.blake2s(body, key=key, digest_size=16).digest()
        msgs.append(body + mac1 + bytes(16))
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.setblocking(False)
    dst = (host, port)
    sent = replies = errors = 0
    start = time.monotonic()
    end = start + seconds
    burst = 100
    i = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * rate)
        while sent < due:
            for _ in range(min(burst, due - sent)):
                try:
                    s.sendto(msgs[i % distinct], dst)
                    sent += 1
                except BlockingIOError:
                    errors += 1
                    break
                i += 1
            else:
                continue
            break
        try:
            while True:
                s.recv(256)
                replies += 1
        except (BlockingIOError, ConnectionRefusedError):
            pass
        time.sleep(0.002)
    elapsed = time.monotonic() - start
    print(json.dumps({"sent": sent, "rate": round(sent / elapsed), "cookie_replies": replies,
                      "send_errors": errors}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
