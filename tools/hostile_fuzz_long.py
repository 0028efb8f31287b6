#!/usr/bin/env python3
"""Long-form fuzzing of Engine.from_network: ≥ 10^6 structure-aware and random inputs.

    python3 tools/hostile_fuzz_long.py [--inputs 1000000] [--seed 1]

Same mutators and the same invariant as tests/hostile/test_fuzz_engine.py (every input is
accepted — only genuine, undelivered bytes may be — or counted as exactly one drop, and nothing
raises), driven by a seeded random.Random instead of hypothesis so it runs at full speed. A fresh
pair of engines (with held-back genuine messages of every kind) is made every 2 000 inputs. A
crasher is printed with its seed, kind and hex so it can become a regression test. Prints one
JSON line of figures at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run by path: the checkout's tests/ and tunnelpy/

from tests.harness.hostile_mutate import apply, mac1_key, random_datagram, random_ops  # noqa: E402
from tests.hostile.test_fuzz_engine import Held, check_one  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--per-pair", type=int, default=2000)
    args = ap.parse_args()
    r = random.Random(args.seed)
    done = 0
    kinds: Counter[str] = Counter()
    accepted = 0
    t0 = time.perf_counter()
    pair_seed = 0
    while done < args.inputs:
        h = Held(pair_seed % 8)
        pair_seed += 1
        names = list(h.msgs)
        seen: set[bytes] = set()
        for _ in range(min(args.per_pair, args.inputs - done)):
            kind = r.choice(names)
            pristine, engine, addr = h.msgs[kind]
            if r.random() < 0.25:
                data = random_datagram(r, mac1_key(engine.public_key))
                label = "random"
            else:
                ops = random_ops(r)
                data = apply(pristine, ops, others=h.others, indices=h.indices,
                             mac_key=mac1_key(engine.public_key))  # fmt: skip
                label = kind
            before = sum(engine.drops.values())
            try:
                if label == "random":
                    engine.from_network([(data, addr)], h.p.now)
                    assert sum(engine.drops.values()) - before == 1, "random input not counted"
                else:
                    check_one(h, kind, data, seen)
            except Exception:
                print(
                    f"CRASHER seed={args.seed} pair={pair_seed - 1} kind={label} hex={data.hex()}"
                )
                traceback.print_exc()
                return 1
            if sum(engine.drops.values()) == before:
                accepted += 1
            kinds[label] += 1
            done += 1
        if done % 100_000 < args.per_pair:
            rate = done / (time.perf_counter() - t0)
            print(f"{done} inputs, {rate:.0f}/s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"inputs": done, "seconds": round(elapsed, 1), "rate": round(done / elapsed),
                      "accepted_genuine": accepted, "pairs": pair_seed, "by_kind": dict(kinds),
                      "crashers": 0}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
