"""Internet checksums (RFC 1071) for the offloads: sums, folding, pseudo-headers, NEEDS_CSUM.

A super-packet read from the device carries only the pseudo-header sum in its TCP checksum field
(``NEEDS_CSUM``): the kernel expects "hardware" to finish it. The segments we send must carry
full checksums, because a WireGuard receiver (the kernel module marks decrypted packets
CHECKSUM_UNNECESSARY) may forward them. Headers are summed incrementally (the template's sum
once, then per segment only the fields that change, RFC 1624 style); payload sums are computed
for all full-size segments in one vectorised call when numpy is importable, else with
``int.from_bytes(...) % 0xFFFF`` per segment (the one's complement sum of 16-bit words equals
the big-endian integer modulo 0xFFFF, since 2**16 ≡ 1). A coalesced packet we write goes the
other way: its header carries ``NEEDS_CSUM`` and the pseudo-header sum, so the kernel never
verifies (it trusts locally-finished checksums, as for its own GRO) and we never compute one.
"""

from __future__ import annotations

import os
import struct

from .vnet import F_NEEDS_CSUM, VNET_HDR_LEN, Buffer, OffloadError

# numpy's OpenBLAS starts a thread per CPU at import, which we never use (sums are not BLAS)
# and which under valgrind was seen spinning: one thread, no pool.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
try:  # optional: one vectorised pass for the payload sums of all segments of a super-packet
    import numpy as _np
except ImportError:  # pragma: no cover - depends on the environment
    _np = None  # type: ignore[assignment]

M = 0xFFFF
_U16 = struct.Struct(">H")
_VNET_CSUM = struct.Struct("<HH")  # csum_start, csum_offset: at offset 6 of virtio_net_hdr


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """The one's complement sum of `data` as 16-bit big-endian words, reduced modulo 0xFFFF.

    An odd length is padded with a zero byte, as RFC 1071 says. The result is in [0, 0xFFFE];
    0 stands for both one's complement zeros.
    """
    s = int.from_bytes(data, "big")
    if len(data) & 1:
        s <<= 8
    return (s + initial) % M


def finish(total: int) -> int:
    """The checksum field for a sum: its one's complement, never 0 (UDP's "no checksum")."""
    return M - total % M


def fold(total: int) -> int:
    """A sum folded to 16 bits, not complemented: what a NEEDS_CSUM field holds."""
    total %= M
    return total if total else M


def pseudo_sum(src: Buffer, dst: Buffer, proto: int, length: int) -> int:
    """The TCP/UDP pseudo-header sum (IPv4 or IPv6 by address size), modulo 0xFFFF."""
    return (int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length) % M


def payload_sums(buf: Buffer, start: int, end: int, size: int) -> list[int]:
    """Sums of buf[start:end] cut into pieces of `size` bytes (the last may be shorter)."""
    sums: list[int] = []
    n_full = (end - start) // size
    if _np is not None and n_full > 2 and not size & 1:
        words = _np.frombuffer(buf, dtype=">u2", count=n_full * size // 2, offset=start)
        # uint64 cannot overflow: at most 32767 words of 0xFFFF per segment.
        sums = (words.reshape(n_full, size // 2).sum(axis=1, dtype=_np.uint64) % M).tolist()
        pos = start + n_full * size
    else:
        mv = memoryview(buf)
        pos = start
        for _ in range(n_full):
            sums.append(ones_sum(mv[pos : pos + size]))
            pos += size
    if pos < end:
        sums.append(ones_sum(memoryview(buf)[pos:end]))
    return sums


def finish_plain(buf: Buffer) -> bytes:
    """A read that is one plain packet (gso_type NONE) behind its virtio_net_hdr -> the packet,
    its checksum finished when the header says NEEDS_CSUM: the field holds the pseudo-header
    sum, to which the sum from csum_start to the end is added.

    Every small packet on the sending side (a UDP datagram, a TCP ACK) takes this path, so it
    works on `bytes` slices: for a ~100-byte packet two slices and two concatenations cost
    ~0.6 µs less than memoryviews and a join did (docs/performance.md).
    """
    n = len(buf)
    if n <= VNET_HDR_LEN:
        raise OffloadError("shorter than the virtio_net_hdr")
    if not buf[0] & F_NEEDS_CSUM:
        return bytes(buf[VNET_HDR_LEN:])
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    csum_start, csum_offset = _VNET_CSUM.unpack_from(buf, 6)
    start = VNET_HDR_LEN + csum_start
    at = start + csum_offset
    if at + 2 > n:
        raise OffloadError("checksum offset beyond the packet")
    tail = buf[start:]
    total = int.from_bytes(tail, "big")
    if len(tail) & 1:
        total <<= 8
    return buf[VNET_HDR_LEN:at] + _U16.pack(M - total % M) + buf[at + 2 :]
