"""Structure-aware mutations of WireGuard messages, shared by the hypothesis fuzzers and the
long-form loop (tools/hostile_fuzz_long.py).

A mutation is a list of plain tuples ``(op, a, b)`` applied by `apply`: hypothesis draws them as
data (so it can shrink them) and the long-form loop draws them from a seeded `random.Random`.
The ops know the message layouts: they flip bits, overwrite the type, index and counter fields
with interesting values, cut or grow the message around the fixed sizes (148/92/64/32), splice
two messages, and fix up mac1 after a change so the mutation reaches past the first check.
"""

from __future__ import annotations

import random
import struct

from tunnelpy.protocol import crypto
from tunnelpy.protocol.constants import LABEL_MAC1, REJECT_AFTER_MESSAGES

OPS = (
    "flip", "set", "truncate", "extend", "insert", "delete", "type", "index", "counter",
    "splice", "resize", "fixmac1",
)  # fmt: skip
SIZES = (0, 1, 3, 4, 15, 16, 31, 32, 33, 47, 48, 63, 64, 65, 91, 92, 93, 147, 148, 149, 1500)
COUNTERS = (
    0, 1, 2, 63, 64, 65, 8127, 8128, 8129, 1 << 32, (1 << 60) + 1, REJECT_AFTER_MESSAGES - 1,
    REJECT_AFTER_MESSAGES, (1 << 64) - 1,
)  # fmt: skip

Op = tuple[str, int, int]


def mac1_key(responder_public: bytes) -> bytes:
    return crypto.blake2s(LABEL_MAC1, responder_public)


def with_mac1(msg: bytes, key: bytes) -> bytes:
    """`msg` with a correct mac1 (and zero mac2) for the responder whose mac1 key is `key`."""
    if len(msg) < 36:
        return msg
    body = msg[:-32]
    return body + crypto.mac(key, body) + bytes(16)


def apply(
    msg: bytes,
    ops: list[Op],
    *,
    others: list[bytes],
    indices: list[int],
    mac_key: bytes | None = None,
) -> bytes:
    """Apply `ops` to `msg`. `others` are messages to splice from, `indices` known indices."""
    m = bytearray(msg)
    for op, a, b in ops:
        n = len(m)
        if op == "flip" and n:
            m[a % n] ^= 1 << (b % 8)
        elif op == "set" and n:
            m[a % n] = b & 0xFF
        elif op == "truncate":
            del m[a % (n + 1) :]
        elif op == "extend":
            m += random.Random(b).randbytes(a % 64)
        elif op == "insert":
            m[a % (n + 1) : a % (n + 1)] = bytes([b & 0xFF]) * (1 + b % 5)
        elif op == "delete" and n:
            del m[a % n : a % n + 1 + b % 8]
        elif op == "type" and n >= 4:
            m[0:4] = struct.pack(
                "<I", (0, 1, 2, 3, 4, 5, 255, 0x100 | (a & 3), b & 0xFFFFFFFF)[a % 9]
            )
        elif op == "index" and n >= 8:
            at = (4, 8)[a % 2] if n >= 12 else 4
            value = indices[b % len(indices)] if indices and b % 3 else b & 0xFFFFFFFF
            m[at : at + 4] = struct.pack("<I", value)
        elif op == "counter" and n >= 16:
            m[8:16] = struct.pack("<Q", COUNTERS[a % len(COUNTERS)] if b % 2 else b % (1 << 64))
        elif op == "splice" and others:
            other = others[a % len(others)]
            cut = b % (min(n, len(other)) + 1)
            m = m[:cut] + bytearray(other[cut:])
        elif op == "resize":
            size = SIZES[a % len(SIZES)]
            m = m[:size] + bytearray(random.Random(b).randbytes(max(0, size - n)))
        elif op == "fixmac1" and mac_key is not None:
            m = bytearray(with_mac1(bytes(m), mac_key))
    return bytes(m)


def random_ops(r: random.Random, max_ops: int = 4) -> list[Op]:
    return [
        (r.choice(OPS), r.randrange(1 << 16), r.randrange(1 << 64))
        for _ in range(r.randint(1, max_ops))
    ]


def random_datagram(r: random.Random, mac_key: bytes) -> bytes:
    """Unstructured input: random bytes, or a right-sized message of a random type."""
    kind = r.randrange(4)
    if kind == 0:
        return r.randbytes(r.choice(SIZES + (r.randrange(2048),)))
    t, size = r.choice(((1, 148), (2, 92), (3, 64), (4, 32), (4, 16 + 16 + r.randrange(1500))))
    body = bytes([t, 0, 0, 0]) + r.randbytes(size - 4)
    return with_mac1(body, mac_key) if kind == 2 and t in (1, 2) else body
