"""VXLAN framing (RFC 7348): the 8-byte header and the flow hash of an inner frame.

Header: flags (0x08 = the I bit, "VNI is valid"), 3 reserved bytes, the 24-bit VNI, 1 reserved
byte. Receivers require the I bit and ignore the reserved bits, as the RFC says. The header marks
an L2 plaintext inside an encrypted transport message (an IP packet's first byte is 0x4X or 0x6X,
so 0x08 cannot be confused with one) and frames plain VXLAN on the wire (vxlan.py).

The flow hash picks plain VXLAN's outer UDP source port (RFC 7348 §5: "it is recommended that the
UDP source port number be calculated using a hash of fields from the inner packet"), so ECMP in
the underlay spreads flows while keeping each flow on one path.
"""

from __future__ import annotations

import zlib

FLAG_I = 0x08
HEADER_LEN = 8
ETH_HLEN = 14


def pack_header(vni: int) -> bytes:
    return bytes((FLAG_I, 0, 0, 0)) + vni.to_bytes(3, "big") + b"\x00"


def parse_header(data: bytes) -> int | None:
    """The VNI of a VXLAN header, or None when it is not one (too short, I flag clear)."""
    if len(data) < HEADER_LEN or not data[0] & FLAG_I:
        return None
    return int.from_bytes(data[4:7], "big")


def flow_hash(frame: bytes, offset: int = 0) -> int:
    """A stable hash of the inner Ethernet addresses and, for IP, the inner IP addresses of the
    frame that starts at `offset` (HEADER_LEN: behind its VXLAN header, without copying it)."""
    o = offset
    key = frame[o : o + 12]
    ethertype = frame[o + 12 : o + 14]
    n = len(frame) - o
    if ethertype == b"\x08\x00" and n >= 34:
        key += frame[o + 26 : o + 34]
    elif ethertype == b"\x86\xdd" and n >= 54:
        key += frame[o + 22 : o + 54]
    return zlib.crc32(key)
