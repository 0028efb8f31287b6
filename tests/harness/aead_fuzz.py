"""A fuzzer for the compiled transport AEAD's receive side (tunnelpy/protocol/_aead.pyx).

`fuzz(mod, count, seed)` hands `count` inputs to ``Opener.open_run`` (in batches of 2000, each
batch resumed after every item the call stops at, as the engine would) and to ``Opener.open``:
genuine messages whose plaintexts are hostile (random bytes, IP headers with lying lengths, L2
headers, empty), the same with a bit flipped anywhere, truncated or extended, random bytes
behind a valid header, random bytes, the wrong receiver index, non-bytes and non-tuples. The
source check refuses at random. It asserts what the caller relies on (the index it returns is
in range and moves on; delivered packets are bytes no longer than their ciphertext) and returns
counts; a crash or an out-of-bounds access is the failure it looks for, which is why
tests/unit/test_aead_sanitizers.py also runs it under ASan/UBSan:

    python3 tests/harness/aead_fuzz.py DIR COUNT   # DIR holds the _aead module to load
"""

from __future__ import annotations

import importlib.util
import json
import random
import struct
import sys
from types import ModuleType

REJECT = (1 << 64) - (1 << 13) - 1
INDEX = 0x01020304
ORIGIN = ("192.0.2.1", 51820)


def _plain(r: random.Random) -> bytes:
    k = r.randrange(8)
    n = r.choice([0, 1, 19, 20, 39, 40, 41, r.randrange(0, 300)])
    body = bytearray(r.randbytes(n))
    if k < 3 and n:
        body[0] = r.choice([0x45, 0x46, 0x4F, 0x60, 0x6F])
        if n >= 6:
            # mostly the right IP length (delivered), else a lying one
            v6 = body[0] >> 4 == 6
            right = n - 40 if v6 else n
            wrong = r.choice([0, 19, 20, n + 1, 0xFFFF])
            struct.pack_into(
                ">H", body, 4 if v6 else 2, max(0, right if r.random() < 0.6 else wrong)
            )
    elif k == 3 and n:
        body[0] = 0x08
    return bytes(body)


def _pool(mod: ModuleType, r: random.Random, key: bytes, size: int) -> list[object]:
    sealer = mod.Sealer(key)
    genuine: list[bytes] = []
    for _ in range(size // 64):
        counter = r.choice([0, r.getrandbits(16), r.getrandbits(63), REJECT - 100, REJECT - 1])
        buf, runs, count, _ = sealer.seal(
            INDEX, counter, [_plain(r) for _ in range(64)], 1420, REJECT
        )
        for start, end, step in runs:
            for at in range(start, end, step):
                genuine.append(buf[at : min(at + step, end)])
    items: list[object] = []
    for m in genuine:
        k = r.randrange(10)
        if k < 4:
            d: object = m
        elif k == 4:
            f = bytearray(m)
            f[r.randrange(len(f))] ^= 1 << r.randrange(8)
            d = bytes(f)
        elif k == 5:
            d = m[: r.randrange(len(m) + 1)]
        elif k == 6:
            d = m + r.randbytes(r.randrange(1, 40))
        elif k == 7:
            d = struct.pack("<IIQ", 4, INDEX, r.getrandbits(64)) + r.randbytes(r.randrange(0, 120))
        elif k == 8:
            d = r.randbytes(r.randrange(0, 80))
        else:
            d = struct.pack("<IIQ", 4, r.getrandbits(32), 0) + m[16:]
        shape = r.randrange(40)
        if shape == 0:
            items.append([d, ORIGIN])
        elif shape == 1:
            items.append((bytearray(d), ORIGIN))  # type: ignore[arg-type]
        elif shape == 2:
            items.append((d, ("192.0.2.1", 51820)))  # equal, not the same object
        elif shape == 3:
            items.append((d,))
        else:
            items.append((d, ORIGIN))
    return items


def fuzz(mod: ModuleType, count: int = 1_000_000, seed: int = 1) -> dict[str, int]:
    r = random.Random(seed)
    key = r.randbytes(32)
    opener = mod.Opener(key)
    pool = _pool(mod, r, key, 8192)
    stats = dict(inputs=0, calls=0, accepted=0, delivered=0, rest=0, open_ok=0)
    refuse = r.random

    def check(src: bytes) -> bool:
        assert type(src) is bytes and len(src) in (4, 16)
        return refuse() < 0.8

    while stats["inputs"] < count:
        items = r.choices(pool, k=2000)
        window = mod.Window()
        packets: list[bytes] = []
        rest: list[bytes] = []
        known = None
        i = 0
        while i < len(items):
            j, accepted, nbytes, delivered, known, *drops = opener.open_run(
                items, i, INDEX, ORIGIN, window, REJECT, packets, rest, check, known
            )
            stats["calls"] += 1
            assert i <= j <= len(items) and accepted >= 0 and nbytes >= 32 * accepted
            assert all(d >= 0 for d in drops) and (known is None or type(known) is bytes)
            stats["accepted"] += accepted
            stats["delivered"] += delivered
            i = j + 1  # (the engine's full path takes the item the call stopped at)
        for p in packets:
            assert type(p) is bytes and 20 <= len(p) <= 1420
        stats["rest"] += len(rest)
        stats["inputs"] += len(items)
        for item in items[:200]:  # the single-message open too
            if isinstance(item, tuple | list) and item and isinstance(item[0], bytes | bytearray):
                if opener.open(r.getrandbits(64) if r.random() < 0.1 else 0, item[0]) is not None:
                    stats["open_ok"] += 1
                stats["inputs"] += 1
    return stats


def _load(directory: str) -> ModuleType:
    import glob

    (path,) = glob.glob(f"{directory}/_aead*.so")
    spec = importlib.util.spec_from_file_location("_aead", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    print(json.dumps(fuzz(_load(sys.argv[1]), int(sys.argv[2]))))
