"""Anti-replay sliding window for transport counters (RFC 6479, as wireguard-go's replay/).

Theory of operation
-------------------
Each session receives messages numbered by a 64-bit counter that may arrive reordered. The
window remembers which counters in (last - WINDOW_SIZE, last] have been seen, where `last` is
the greatest counter accepted so far; anything older is rejected outright.

RFC 6479 stores the bitmap as a ring of RING_BLOCKS 64-bit blocks, so moving the window forward
only zeroes the blocks it passes instead of shifting the whole bitmap. One block is always the
"partially new" one, hence the usable window is (RING_BLOCKS - 1) × 64 = 8128 counters — the
same as wireguard-go, so both accept and reject exactly the same sequences.

`accept` must be called only *after* the message authenticated: otherwise a forged counter far
ahead would slide the window and make every genuine message look stale. It is on the
per-packet path, so the in-order case (next counter, same block) returns first, after a few integer
operations; the engine's burst path calls it for every message.
"""

from __future__ import annotations

from .constants import REJECT_AFTER_MESSAGES

__all__ = ["BLOCK_BITS", "RING_BLOCKS", "WINDOW_SIZE", "ReplayWindow"]

_BLOCK_BIT_LOG = 6
BLOCK_BITS = 1 << _BLOCK_BIT_LOG  # 64 bits per block
RING_BLOCKS = 1 << 7  # 128 blocks
WINDOW_SIZE = (RING_BLOCKS - 1) * BLOCK_BITS  # 8128
_BLOCK_MASK = RING_BLOCKS - 1
_BIT_MASK = BLOCK_BITS - 1
_ZERO_RING = (0,) * RING_BLOCKS


class ReplayWindow:
    """Validates and records received counters. A fresh window accepts counter 0."""

    __slots__ = ("_last", "_ring")

    def __init__(self) -> None:
        self._last = 0
        self._ring = [0] * RING_BLOCKS

    def reset(self) -> None:
        self._last = 0
        self._ring[:] = _ZERO_RING

    def accept(self, counter: int, limit: int = REJECT_AFTER_MESSAGES) -> bool:
        """True if `counter` is new (and now recorded); False if replayed, too old or >= limit."""
        last = self._last
        if (counter ^ last) < BLOCK_BITS and last < counter < limit:
            # In order, the per-packet case: above every counter seen and in the same block
            # as the greatest (equal high bits), so one bit to set and nothing to slide.
            self._ring[(counter >> _BLOCK_BIT_LOG) & _BLOCK_MASK] |= 1 << (counter & _BIT_MASK)
            self._last = counter
            return True
        if counter > last:
            # Fast path, the common case: a counter above every one seen so far cannot be a
            # replay, so no bit test is needed, only sliding the window up to it.
            if counter >= limit:
                return False
            block = counter >> _BLOCK_BIT_LOG
            current = last >> _BLOCK_BIT_LOG
            ring = self._ring
            if block != current:
                # Zero every block the window slides over; beyond a full ring, all of them.
                if block - current >= RING_BLOCKS:
                    ring[:] = _ZERO_RING
                else:
                    for i in range(current + 1, block + 1):
                        ring[i & _BLOCK_MASK] = 0
                ring[block & _BLOCK_MASK] = 1 << (counter & _BIT_MASK)
            else:
                ring[block & _BLOCK_MASK] |= 1 << (counter & _BIT_MASK)
            self._last = counter
            return True
        if last - counter > WINDOW_SIZE or counter < 0:
            return False
        ring = self._ring
        index = (counter >> _BLOCK_BIT_LOG) & _BLOCK_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = ring[index]
        if old & bit:
            return False
        ring[index] = old | bit
        return True

    @property
    def last(self) -> int:
        """Greatest counter accepted so far (0 before any)."""
        return self._last
