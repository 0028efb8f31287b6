"""Capture the (receiver index, counter) of every WireGuard transport message on an interface.

Run inside a namespace (root): an AF_PACKET socket on IFACE sees each frame as the stack hands
it over, a UDP GSO super-packet included, with its virtio_net_hdr (PACKET_VNET_HDR), so a GSO
send is cut into its datagrams by gso_size, as the receiver's stack would. Messages from SRC
(an IPv4 address) to UDP port PORT are recorded; on SIGTERM (or after --seconds) the pairs are
written to OUT as little-endian (u32 index, u64 counter) records and the process exits 0.

    python3 tests/harness/wgsniff.py IFACE SRC PORT OUT
"""

from __future__ import annotations

import argparse
import select
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
GSO_UDP_L4 = 5
RECORD = struct.Struct("<IQ")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("iface")
    ap.add_argument("src")
    ap.add_argument("port", type=int)
    ap.add_argument("out")
    ap.add_argument("--seconds", type=float, default=600.0)
    args = ap.parse_args()
    src = socket.inet_aton(args.src)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sock.bind((args.iface, 0))
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    records: list[bytes] = []
    frames = 0
    buf = bytearray(1 << 17)
    deadline = time.monotonic() + args.seconds
    print("capturing", flush=True)  # (the test waits for this line)
    while not stop and time.monotonic() < deadline:
        if not select.select([sock], [], [], 0.2)[0]:
            continue
        n = sock.recv_into(buf)
        frames += 1
        _, gso_type, _, gso_size, _, _ = VNET.unpack_from(buf)
        eth = VNET.size
        if n < eth + 14 + 28 or buf[eth + 12 : eth + 14] != b"\x08\x00":
            continue
        ip = eth + 14
        ihl = (buf[ip] & 0x0F) * 4
        if buf[ip + 9] != 17 or buf[ip + 12 : ip + 16] != src:
            continue
        udp = ip + ihl
        if int.from_bytes(buf[udp + 2 : udp + 4], "big") != args.port:
            continue
        payload = memoryview(buf)[udp + 8 : n]
        step = gso_size if gso_type == GSO_UDP_L4 and gso_size else len(payload)
        for at in range(0, len(payload), step):
            d = payload[at : at + step]
            if len(d) >= 32 and d[0] == 4 and d[1:4] == b"\x00\x00\x00":
                records.append(RECORD.pack(*struct.unpack_from("<4xIQ", d)))
    with open(args.out, "wb") as f:
        f.write(b"".join(records))
    print(f"{frames} frames, {len(records)} transport messages", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
