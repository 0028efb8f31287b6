"""IP, TCP and Ethernet header facts that segmentation (TSO/USO) and GRO both read."""

from __future__ import annotations

from .vnet import Buffer

IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_CWR = 0x80


def l3_offset(frame: Buffer) -> int:
    """Where the IP header starts in an Ethernet frame (after one or two VLAN tags)."""
    off = 12
    n = len(frame)
    # (Byte comparisons, not 2-byte slices: every received frame of a TAP comes through here.)
    while off + 2 <= n:
        t, u = frame[off], frame[off + 1]
        if not (t == 0x81 and u == 0x00 or t == 0x88 and u == 0xA8):
            break
        off += 4
    return off + 2
