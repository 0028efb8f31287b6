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

Partial checksums in frames for a TAP (:func:`partial_l4`, :func:`finish_partial`). A frame
written to a TAP may come from a sender that left its TCP/UDP checksum to "hardware" that never
ran: the Linux vxlan device on a veth underlay encapsulates CHECKSUM_PARTIAL packets as they are,
their field holding only the pseudo-header sum, and a userspace VTEP receives the datagram so.
Written to the TAP unchanged the frame is dropped by the receiving stack (the SYN-ACK of every
connection: ping works, TCP never connects). A frame counts as partial only when the field
equals the pseudo-header sum of this very packet (addresses, protocol and this packet's L4
length, folded; 0 and 0xFFFF being the two representations of one sum), which is what the
kernel leaves there; a correct full checksum matches by chance once in 65535 packets, and then
finishing it gives the same sum back (it equals the checksum it already had). Any other value
— a full checksum, or a wrong one — is left as it is, so a corrupt checksum stays corrupt and
the receiving stack drops the frame as before. Only what can be read safely is looked at: IPv4
(not fragments: the kernel finishes a checksum before it fragments, and a fragment does not hold
the whole datagram), IPv6 with at most hop-by-hop and destination options headers (a routing
header changes which address the pseudo-header holds, a fragment header means a fragment), and
UDP with checksum 0 (none, on IPv4) is never touched. Recognising costs the header reads and a
pseudo-header sum, no pass over the payload; a TAP with a virtio_net_hdr is then handed the
frame as NEEDS_CSUM (gro.py: the kernel finishes it, as for its own traffic), a TAP without one
gets the sum finished here. :func:`l4_vouched` is the check GRO needs before it joins frames
from plain VXLAN (a joined write is never verified by the kernel): partial, or summed and right.
The sums a batch needs (finishing, vouching) are taken in one numpy call (:func:`segment_sums`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from . import accel
from .vnet import F_NEEDS_CSUM, VNET_HDR_LEN, Buffer, OffloadError

# The compiled l4_vouched, or None (the module global that tests switch off).
_vouch_frames = accel.vouch_frames

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


# Ethernet types and IPv6 extension headers that partial_l4 reads (headers.py has the rest).
_TPIDS = (0x8100, 0x88A8)  # 802.1Q and 802.1ad tags, stacked as deep as they come
_IPV6_SKIPPED = (0, 60)  # hop-by-hop and destination options: the pseudo-header stays the same
_MAX_IPV6_EXT = 4  # more stacked extension headers than a sender has reason for: not parsed


def _l4(frame: Buffer) -> tuple[int, int, int, int, int, bool] | None:
    """(start, offset, end, field, pseudo, v4) of the TCP/UDP checksum of an Ethernet frame,
    for what can be read safely (see the module docstring), else None. `pseudo` is the
    pseudo-header sum modulo 0xFFFF, `field` the checksum field's value."""
    n = len(frame)
    if n < 14:
        return None
    l3 = 12
    et = (frame[12] << 8) | frame[13]
    while et in _TPIDS:
        l3 += 4
        if l3 + 2 > n:
            return None
        et = (frame[l3] << 8) | frame[l3 + 1]
    l3 += 2
    if et == 0x0800:
        if n < l3 + 20:
            return None
        b0 = frame[l3]
        t = l3 + (b0 & 0x0F) * 4
        if b0 >> 4 != 4 or t < l3 + 20:
            return None
        if frame[l3 + 6] & 0x3F or frame[l3 + 7]:
            return None  # a fragment (MF or an offset): never finished by the sender's kernel
        end = l3 + ((frame[l3 + 2] << 8) | frame[l3 + 3])
        if end > n:
            return None
        proto = frame[l3 + 9]
        # Source and destination as one 64-bit number: the same sum modulo 0xFFFF (2**16 ≡ 1).
        addrs = int.from_bytes(frame[l3 + 12 : l3 + 20], "big")
    elif et == 0x86DD:
        if n < l3 + 40 or frame[l3] >> 4 != 6:
            return None
        plen = (frame[l3 + 4] << 8) | frame[l3 + 5]
        if not plen:
            return None  # a jumbogram (hop-by-hop option): not on an Ethernet
        end = l3 + 40 + plen
        if end > n:
            return None  # (checked before the extension headers are read)
        proto = frame[l3 + 6]
        t = l3 + 40
        hops = 0
        while proto in _IPV6_SKIPPED:
            hops += 1
            if hops > _MAX_IPV6_EXT or t + 8 > end:
                return None
            proto = frame[t]
            t += (frame[t + 1] + 1) * 8
        addrs = int.from_bytes(frame[l3 + 8 : l3 + 40], "big")
    else:
        return None
    length = end - t
    if proto == 6:
        if length < 20 or (frame[t + 12] >> 4) * 4 < 20:
            return None
        offset = 16
    elif proto == 17:
        if length < 8 or ((frame[t + 4] << 8) | frame[t + 5]) != length:
            return None
        offset = 6
    else:
        return None
    at = t + offset
    field = (frame[at] << 8) | frame[at + 1]
    return t, offset, end, field, (addrs + proto + length) % M, et == 0x0800


def partial_l4(frame: Buffer) -> tuple[int, int, int] | None:
    """(csum_start, csum_offset, end) when `frame`, an Ethernet frame, carries TCP or UDP whose
    checksum field holds only the pseudo-header sum (left partial by the sender); else None.

    csum_start is where the TCP/UDP header starts in the frame and csum_offset the field's place
    in it (16 or 6), as a virtio_net_hdr gives them; `end` is where the IP packet ends (an
    Ethernet frame may be padded after it). None for everything else: other protocols,
    fragments, IPv6 with a routing, fragment or unknown extension header, UDP without a
    checksum, lengths that do not fit the frame, and every full or wrong checksum.
    """
    found = _l4(frame)
    if found is None:
        return None
    start, offset, end, field, pseudo, _v4 = found
    if not field and offset == 6:
        return None  # no checksum (IPv4), or an invalid one (IPv6): the receiver decides
    # 0xFFFF % M == 0: both representations of a sum that folds to zero match it.
    if field % M != pseudo:
        return None
    return start, offset, end


def l4_vouched(frames: Sequence[bytes]) -> list[bool]:
    """Whether GRO may join each frame into a super-packet whose checksum the kernel then
    trusts: its TCP/UDP checksum is partial (trusted as the kernel trusts CHECKSUM_PARTIAL),
    correct (summed here, all of the batch's in one pass: :func:`segment_sums`), or absent (UDP
    over IPv4). False for a wrong one, and for every frame this module cannot read: such a frame
    goes to the kernel alone, which checks it. For frames from senders nobody authenticated
    (plain VXLAN), whose wrong checksum a joined write would otherwise turn into a right one."""
    if _vouch_frames is not None and isinstance(frames, list):
        got = _vouch_frames(frames)  # (the same, compiled: accel.py)
        if got is not None:
            return got
    out: list[bool] = []
    todo: list[tuple[bytes, int, int]] = []
    where: list[tuple[int, int]] = []  # (index in out, pseudo) of each sum in `todo`
    for f in frames:
        found = _l4(f)
        if found is None:
            out.append(False)
            continue
        start, offset, end, field, pseudo, v4 = found
        if not field and offset == 6:
            out.append(v4)  # no checksum over IPv4; over IPv6 an invalid one
        elif field % M == pseudo:
            out.append(True)  # partial (in either representation)
        else:
            where.append((len(out), pseudo))
            todo.append((f, start, end))
            out.append(False)
    if todo:
        for (i, pseudo), total in zip(where, segment_sums(todo), strict=True):
            out[i] = (total + pseudo) % M == 0
    return out


def finish_partial(frames: Sequence[bytes]) -> list[bytes]:
    """`frames`, each one whose TCP/UDP checksum is partial (:func:`partial_l4`) finished, the
    others as they are. The sum runs over the L4 header and payload, field included (it holds
    the pseudo-header sum), exactly as the kernel finishes CHECKSUM_PARTIAL; Ethernet padding
    after the IP packet is neither summed nor removed. `frames` itself when none is partial."""
    todo: list[tuple[bytes, int, int]] = []
    where: list[tuple[int, int]] = []  # (index, field position) of each sum in `todo`
    for i, f in enumerate(frames):
        found = partial_l4(f)
        if found is not None:
            start, offset, end = found
            todo.append((f, start, end))
            where.append((i, start + offset))
    if not todo:
        return frames if isinstance(frames, list) else list(frames)
    out = list(frames)
    pack = _U16.pack
    for (i, at), total in zip(where, segment_sums(todo), strict=True):
        f = out[i]
        out[i] = f[:at] + pack(M - total) + f[at + 2 :]
    return out


# A batch of this many sums or more goes through numpy in one call (below it, the fixed cost
# of the call is more than the per-frame sums it saves: docs/layer2.md has the figures).
_NUMPY_MIN = 3


def segment_sums(items: Sequence[tuple[bytes, int, int]]) -> list[int]:
    """The one's complement sums (modulo 0xFFFF) of buf[start:end] for each (buf, start, end).

    One numpy ``add.reduceat`` over the buffers joined (each padded to an even length, so every
    even `start` stays word-aligned) when numpy is there and the batch is big enough; an odd
    `end` takes in the next byte with its word, which is subtracted again. Else (or for an odd
    `start`) ``int.from_bytes % 0xFFFF`` per buffer, ~2.8 µs for 1400 bytes against ~0.5.
    """
    if _np is None or len(items) < _NUMPY_MIN or any(start & 1 for _b, start, _e in items):
        return [ones_sum(b[start:end]) for b, start, end in items]
    parts: list[bytes] = []
    idx: list[int] = []
    extra: list[int] = []
    pos = 0
    for buf, start, end in items:
        n = len(buf)
        parts.append(buf)
        idx.append((pos + start) >> 1)
        idx.append((pos + end + 1) >> 1)
        if end <= start:
            extra.append(-1)  # empty: reduceat would give the word at `start` (made 0 below)
        else:
            extra.append(buf[end] if end & 1 and end < n else 0)
        pos += n
        if n & 1:
            parts.append(b"\0")
            pos += 1
    parts.append(b"\0\0")  # (reduceat wants every index inside the array)
    words = _np.frombuffer(b"".join(parts), dtype=">u2")
    sums = _np.add.reduceat(words, idx, dtype=_np.uint64)[::2].tolist()
    return [0 if x < 0 else (total - x) % M for total, x in zip(sums, extra, strict=True)]
