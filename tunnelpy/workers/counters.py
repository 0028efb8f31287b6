"""Send counters shared by the processes that encrypt for one keypair.

With ``Workers = N`` several processes encrypt on the same WireGuard session (the TUN's queues
spread flows over them), and a nonce must never be used twice under one key. Each keypair's
counter therefore lives in one 16-byte slot of a shared memory file (a memfd, handed to the
workers as a file descriptor): ``[u64 identity][u64 next counter]``. A sender reserves a whole
batch with one ``reserve(slot, identity, n)``: the slot's byte range is locked with ``lockf``
(a POSIX record lock, two syscalls per batch, not per packet), the counter advanced by ``n``, the
lock dropped. Counters of two workers interleave on the wire by at most a batch, well inside the
receiver's 8 128-message replay window.

The identity guards reuse: slots are handed out round-robin and a new keypair overwrites an old
slot's identity, so a worker still holding a retired keypair gets ``None`` from ``reserve`` and
hands its packets to the main process instead of reusing nonces under the old key.

Wrapping must never retire a *live* keypair (a flood of handshakes would otherwise make a
victim's sends fail as ``stale_keypair``). Two rules see to it: the engine claims a slot only
for a confirmed keypair (the initiator's on the response, the responder's when the first data
arrives on it — unconfirmed initiations claim nothing), and ``claim(now)`` reuses a slot only
once its last claim is older than a keypair can live (REJECT_AFTER_TIME): round-robin order is
claim order, so the next slot is always the oldest, and if even it is too young, ``claim``
returns None and that keypair keeps its counter in the main process (workers hand its packets
over: slower, never wrong).

:class:`LocalCounters` is the same interface on a plain list, for one process and for tests.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct

SLOT = struct.Struct("<QQ")
DEFAULT_SLOTS = 4096
# A keypair sends for at most REJECT_AFTER_TIME (180 s) after it was made; a second of margin.
KEYPAIR_LIFETIME = 181.0


class _Clock:
    """When each slot was last claimed (the daemon's side only: workers never claim)."""

    def __init__(self, slots: int) -> None:
        self.claimed = [float("-inf")] * slots

    def free(self, slot: int, now: float | None) -> bool:
        return now is None or now - self.claimed[slot] >= KEYPAIR_LIFETIME

    def mark(self, slot: int, now: float | None) -> None:
        if now is not None:
            self.claimed[slot] = now


class LocalCounters:
    """One process: the same contract without shared memory or locks."""

    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        self.slots = slots
        self._cells = [[0, 0] for _ in range(slots)]
        self._clock = _Clock(slots)
        self._next_slot = 0
        self._next_ident = 1

    def claim(self, now: float | None = None) -> tuple[int, int] | None:
        """A slot for a new keypair; with ``now``, None if every slot may still be live."""
        slot, ident = self._next_slot, self._next_ident
        if not self._clock.free(slot, now):
            return None
        self._clock.mark(slot, now)
        self._next_slot = (slot + 1) % self.slots
        self._next_ident += 1
        self._cells[slot] = [ident, 0]
        return slot, ident

    def reserve(self, slot: int, ident: int, n: int) -> int | None:
        cell = self._cells[slot]
        if cell[0] != ident:
            return None
        base = cell[1]
        cell[1] = base + n
        return base

    def peek(self, slot: int, ident: int) -> int | None:
        cell = self._cells[slot]
        return cell[1] if cell[0] == ident else None


class SharedCounters:
    """The slots in a memfd shared by the daemon and its workers."""

    def __init__(self, fd: int | None = None, slots: int = DEFAULT_SLOTS) -> None:
        if fd is None:
            fd = os.memfd_create("tunnelpy-counters", os.MFD_CLOEXEC)
            os.ftruncate(fd, slots * SLOT.size)
        self.fd = fd
        self.slots = os.fstat(fd).st_size // SLOT.size
        self._map = mmap.mmap(fd, self.slots * SLOT.size, mmap.MAP_SHARED)
        self._clock = _Clock(self.slots)
        self._next_slot = 0
        self._next_ident = 1  # only the daemon claims; workers only reserve

    def claim(self, now: float | None = None) -> tuple[int, int] | None:
        """A slot for a new keypair; with ``now``, None if every slot may still be live."""
        slot, ident = self._next_slot, self._next_ident
        if not self._clock.free(slot, now):
            return None
        self._clock.mark(slot, now)
        self._next_slot = (slot + 1) % self.slots
        self._next_ident += 1
        at = slot * SLOT.size
        fcntl.lockf(self.fd, fcntl.LOCK_EX, SLOT.size, at)
        try:
            SLOT.pack_into(self._map, at, ident, 0)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, SLOT.size, at)
        return slot, ident

    def reserve(self, slot: int, ident: int, n: int) -> int | None:
        at = slot * SLOT.size
        fd = self.fd
        fcntl.lockf(fd, fcntl.LOCK_EX, SLOT.size, at)
        try:
            owner, base = SLOT.unpack_from(self._map, at)
            if owner != ident:
                return None
            SLOT.pack_into(self._map, at, ident, base + n)
            return base
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, SLOT.size, at)

    def peek(self, slot: int, ident: int) -> int | None:
        owner, value = SLOT.unpack_from(self._map, slot * SLOT.size)
        return value if owner == ident else None

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)
