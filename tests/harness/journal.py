"""journald's native datagram format, read as journald reads it (for the logging tests)."""

from __future__ import annotations

import struct


def parse_journal(data: bytes) -> dict[str, str]:
    """Fields of one datagram: ``KEY=value\\n``, or ``KEY\\n`` + little-endian 64-bit length +
    value + ``\\n`` for a value that holds a newline."""
    out: dict[str, str] = {}
    while data:
        nl = data.index(b"\n")
        line, data = data[:nl], data[nl + 1 :]
        if b"=" in line:
            key, value = line.split(b"=", 1)
        else:
            (size,) = struct.unpack("<Q", data[:8])
            key, value, data = line, data[8 : 8 + size], data[8 + size :]
            assert data[:1] == b"\n", "a binary field ends with a newline"
            data = data[1:]
        out[key.decode()] = value.decode()
    return out
