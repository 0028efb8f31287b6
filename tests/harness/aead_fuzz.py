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
L2_KEY = b"\x08\x00\x00\x00\x00\x00\x64\x00" + bytes.fromhex("020000000001" "02000000000a")


_SEQ = [0]  # the next sequence number of the fuzz's TCP segments: runs of them continue


def _udp(r: random.Random) -> bytes:
    """A UDP datagram for the joiner's USO writes: mostly 64 bytes of payload from one flow,
    with other sizes, fragments and mangled headers mixed in."""
    v6 = r.random() < 0.3
    size = 64 if r.random() < 0.8 else r.randrange(0, 1400)
    dgram = struct.pack(">HHHH", 5001, 40000, 8 + size, 0) + r.randbytes(size)
    if v6:
        ip = bytearray(struct.pack(">IHBB16s16s", 0x60000000, len(dgram), 17, 64, bytes(16),
                                   bytes(16)))  # fmt: skip
    else:
        frag = 0x4000 if r.random() < 0.95 else r.randrange(0x10000)
        ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(dgram), 0, frag, 64, 17, 0,
                                   bytes(4), bytes(4)))  # fmt: skip
    if r.random() < 0.1:
        ip[r.randrange(len(ip))] = r.randrange(256)
    return bytes(ip + dgram)


def _tcp(r: random.Random) -> bytes:
    """A TCP segment for the units mode's joiner: mostly one that continues the last (so runs
    join), with hostile data offsets, flags, options, lengths and headers mixed in; now and
    then a run of UDP datagrams instead (_udp, for USO writes)."""
    if r.random() < 0.15:
        return _udp(r)
    v6 = r.random() < 0.3
    plen = r.choice([0, 1, 1368, 1368, 1368, r.randrange(0, 1360)])
    seq = _SEQ[0] if r.random() < 0.85 else r.getrandbits(32)
    _SEQ[0] = (seq + plen) & 0xFFFFFFFF
    doff = 5 if r.random() < 0.8 else r.randrange(16)
    flags = r.choice([0x10, 0x10, 0x10, 0x18, 0x11, 0x02, r.randrange(256)])
    tcp = bytearray(struct.pack(">HHIIBBHHH", 5001, 40000, seq, 7, doff << 4, flags, 512, 0, 0))
    tcp += r.randbytes(max(0, doff * 4 - 20)) if r.random() < 0.5 else bytes(max(0, doff * 4 - 20))
    tcp += r.randbytes(plen)
    if v6:
        ip = bytearray(struct.pack(">IHBB16s16s", 0x60000000, len(tcp), 6, 64, bytes(16), bytes(16)))
    else:
        ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                                   bytes(4), bytes(4)))  # fmt: skip
    if r.random() < 0.1:
        ip[r.randrange(len(ip))] = r.randrange(256)  # a header field the joiner must compare
    return bytes(ip + tcp)


def _frame(r: random.Random) -> bytes:
    """_tcp's segment as an L2 plaintext the fast path takes (L2_KEY), for the frame joiner:
    mostly an untagged IPv4/IPv6 frame, now and then a wrong ethertype, a VLAN tag, Ethernet
    padding or a frame cut short of its IP length."""
    ip = _tcp(r)
    kind = b"\x86\xdd" if ip[0] >> 4 == 6 else b"\x08\x00"
    k = r.randrange(20)
    if k == 0:
        kind = r.choice([b"\x08\x06", b"\x86\xdd", b"\x08\x00", r.randbytes(2)])
    elif k == 1:
        kind = b"\x81\x00" + r.randbytes(2) + kind
    elif k == 2:
        ip += bytes(r.randrange(1, 30))
    elif k == 3:
        ip = ip[: r.randrange(len(ip) + 1)]
    return L2_KEY + kind + ip


def _plain(r: random.Random) -> bytes:
    k = r.randrange(8)
    if k >= 6:
        return _tcp(r)
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
        if n >= 22 and r.random() < 0.5:
            body[:20] = L2_KEY  # the frames the l2 fast path takes
    return bytes(body)


def _pool(
    mod: ModuleType, r: random.Random, key: bytes, size: int, tcp: bool = False,
    frames: bool = False,
) -> list[object]:
    """`size` items; `tcp`: TCP segments that mostly continue one another, with rising
    counters and a tenth of them mangled, for the units mode's joiner (`frames`: in L2
    plaintexts, for the frame joiner)."""
    sealer = mod.Sealer(key)
    genuine: list[tuple[bytes, bool]] = []
    for _ in range(size // 64):
        counter = r.choice([0, r.getrandbits(16), r.getrandbits(63), REJECT - 100, REJECT - 1])
        make = _plain
        if tcp:
            make = _frame if frames else _tcp
            counter = len(genuine)
        buf, runs, count, _ = sealer.seal(INDEX, counter, [make(r) for _ in range(64)], 1420, REJECT)
        for start, end, step in runs:
            for at in range(start, end, step):
                genuine.append((buf[at : min(at + step, end)], make is not _plain))
    items: list[object] = []
    for m, tcp in genuine:
        # (TCP runs mostly as sent, so that long runs reach the joiner)
        k = 0 if tcp and r.random() < 0.9 else r.randrange(10)
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
        shape = 4 if tcp and r.random() < 0.9 else r.randrange(40)
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
    tcp_pool = _pool(mod, r, key, 8192, tcp=True)
    frame_pool = _pool(mod, r, key, 8192, tcp=True, frames=True)
    stats = dict(inputs=0, calls=0, accepted=0, delivered=0, rest=0, open_ok=0, units=0,
                 l2_direct=0, frame_units=0, uso_units=0)  # fmt: skip
    refuse = r.random

    def check(src: bytes) -> bool:
        assert type(src) is bytes and len(src) in (4, 16)
        return refuse() < 0.8

    while stats["inputs"] < count:
        which = r.random()
        if which < 0.4:
            items = r.choices(pool, k=2000)
        else:  # runs of TCP segments (or frames): the joiners see them continue
            runs = tcp_pool if which < 0.7 else frame_pool
            at = r.randrange(len(runs) - 2000)
            items = runs[at : at + 2000]
        units = r.random() < 0.5
        frame_units = r.random() < 0.5
        uso = r.random() < 0.5
        l2_frames: list[bytes] | None = [] if r.random() < 0.6 else None
        l2_key = L2_KEY if l2_frames is not None else None
        window = mod.Window()
        packets: list[bytes] = []
        rest: list[bytes] = []
        known = None
        i = 0
        while i < len(items):
            j, accepted, nbytes, delivered, known, *drops = opener.open_run(
                items, i, INDEX, ORIGIN, window, REJECT, packets, rest, check, known, units,
                l2_key, l2_frames, frame_units, uso,
            )
            stats["calls"] += 1
            assert i <= j <= len(items) and accepted >= 0 and nbytes >= 32 * accepted
            assert all(d >= 0 for d in drops) and (known is None or type(known) is bytes)
            stats["accepted"] += accepted
            stats["delivered"] += delivered
            i = j + 1  # (the engine's full path takes the item the call stopped at)
        for p in packets:
            if type(p) is list:  # a joined unit: virtio_net_hdr, then the super-packet
                assert units and len(p) == 1 and type(p[0]) in (memoryview, bytes)
                # (a small one copied out of its buffer, a big one a view of it: _Units.flush)
                assert type(p[0]) is memoryview or len(p[0]) < (10 + 65535) // 2
                gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from(
                    "<xBHHHH", p[0]
                )
                assert csum_start in (20, 40) and 0 < gso_size <= 1500
                if gso_type == 5:  # a USO write
                    assert uso and csum_offset == 6 and hdr_len == csum_start + 8
                    assert len(p[0]) <= 10 + hdr_len + 64 * gso_size
                    stats["uso_units"] += 1
                else:
                    assert gso_type in (1, 4) and csum_offset == 16 and csum_start + 20 <= hdr_len
                assert 10 + hdr_len + 2 * 1 <= len(p[0]) <= 10 + 65535
                stats["units"] += 1
            else:
                assert type(p) is bytes and 20 <= len(p) <= 1500, (type(p), len(p))
        stats["rest"] += len(rest)
        for f in l2_frames or ():
            if type(f) is list:  # a joined unit of frames: the same, 14 bytes further in
                assert frame_units and len(f) == 1 and type(f[0]) in (memoryview, bytes)
                assert type(f[0]) is memoryview or len(f[0]) < (10 + 65535) // 2
                gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from(
                    "<xBHHHH", f[0]
                )
                assert csum_start in (34, 54) and 0 < gso_size <= 1500
                if gso_type == 5:
                    assert uso and csum_offset == 6 and hdr_len == csum_start + 8
                else:
                    assert gso_type in (1, 4) and csum_offset == 16 and csum_start + 20 <= hdr_len
                assert 10 + hdr_len + 2 <= len(f[0]) <= 10 + 14 + 65535
                v6 = csum_start == 54
                assert bytes(f[0][10 + 12 : 10 + 14]) == (b"\x86\xdd" if v6 else b"\x08\x00")
                stats["frame_units"] += 1
            else:
                assert type(f) is bytes and 14 <= len(f) <= 1600
        stats["l2_direct"] += len(l2_frames or ())
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
