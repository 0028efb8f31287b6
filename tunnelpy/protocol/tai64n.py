"""TAI64N timestamps for handshake initiations.

Theory of operation
-------------------
The initiator encrypts a 12-byte TAI64N timestamp into every initiation; the responder keeps
the greatest one seen per peer and drops any initiation whose timestamp is not strictly newer,
which defeats replayed initiations (whitepaper §5.1). The format is a big-endian u64 of
2^62 + 10 + unix seconds followed by a big-endian u32 of nanoseconds, so plain `bytes`
comparison orders timestamps: `new > last` is the whole freshness check.

Like wireguard-go, the low 24 bits of the nanoseconds are cleared ("whitening", ~16.8 ms
granularity) so the timestamp does not leak a precise clock reading to an observer who can
decrypt it later. Wall time is passed in (protocol/ never reads a clock).
"""

from __future__ import annotations

import struct

__all__ = ["TAI64N_SIZE", "tai64n", "tai64n_from_ns", "is_newer", "to_unix"]

TAI64N_SIZE = 12
_BASE = (1 << 62) + 10  # TAI64 label of the unix epoch, as wireguard-go writes it
_WHITENER_MASK = 0xFFFFFF  # low 24 bits of the nanoseconds are cleared
_STRUCT = struct.Struct(">QI")


def tai64n_from_ns(unix_ns: int) -> bytes:
    """TAI64N of a wall-clock time given in integer nanoseconds since the unix epoch."""
    secs, nanos = divmod(unix_ns, 1_000_000_000)
    return _STRUCT.pack(_BASE + secs, nanos & ~_WHITENER_MASK)


def tai64n(wall: float) -> bytes:
    """TAI64N of a wall-clock time in (float) seconds since the unix epoch."""
    # Round to whole nanoseconds first: truncating (wall - floor(wall)) * 1e9 turns e.g.
    # 1.016777216 into 16777215 ns and loses a whitening step to float error. Near 2^31 s a
    # float only resolves ~240 ns, far finer than the 16.8 ms the whitening keeps.
    return tai64n_from_ns(round(wall * 1e9))


def is_newer(candidate: bytes, last: bytes | None) -> bool:
    """True if `candidate` is strictly later than `last` (None: nothing seen yet)."""
    return last is None or candidate > last


def to_unix(stamp: bytes) -> float:
    """Seconds since the unix epoch of a TAI64N timestamp (for logs and tests)."""
    secs: int
    nanos: int
    secs, nanos = _STRUCT.unpack(stamp)
    return (secs - _BASE) + nanos / 1e9
