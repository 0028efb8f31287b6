"""keep_heap(): the pages one data-path batch freed are there for the next (io/heap.py).

Each case runs in a child interpreter, so the test process keeps glibc's defaults, and counts
the minor page faults of 50 batches shaped like the receive path's (datagram-sized bytes and
64 KiB super-packets) after one batch of warm-up.
"""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = r"""
import resource, sys
from tunnelpy.io.heap import keep_heap
print(keep_heap() if sys.argv[1] == "keep" else None)

def batch():
    objs = [bytes(1500) for _ in range(2000)] + [bytearray(65600) for _ in range(40)]
    del objs

batch()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _probe(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env={**clean, **env},
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_batches_stay_mapped() -> None:
    _, faults_default = _probe("default")
    was_set, faults_kept = _probe("keep")
    assert was_set == "True"
    # 50 batches of ~5.6 MB: glibc's default trims the heap's top after each and faults about
    # 1,300 pages back in per batch; kept, the second batch onwards reuses the same pages.
    assert faults_default > 50 * 500, faults_default
    assert faults_kept < 200, faults_kept


def test_the_users_own_malloc_tunables_win() -> None:
    for env in ({"MALLOC_TRIM_THRESHOLD_": "131072"},
                {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}):
        was_set, faults = _probe("keep", **env)
        assert was_set == "False", env
        assert faults > 50 * 500, (env, faults)  # the user's 128 KiB threshold is in force
    # an unrelated tunable does not count as the user's malloc setting
    assert _probe("keep", GLIBC_TUNABLES="glibc.cpu.x86_shstk=off")[0] == "True"
