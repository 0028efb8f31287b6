"""Keep the data path's freed memory mapped (glibc's malloc trim and mmap thresholds).

Every batch allocates and frees the same few megabytes: the datagrams and frames as bytes
objects (over 512 bytes each, so from malloc, not pymalloc) and the super-packets being joined
for the TUN or a TAP (up to 64 KiB each). When a batch's objects are freed, the free space at
the top of glibc's heap passes its trim threshold (128 KiB to start with) and is given back to
the kernel; the next batch faults the same pages in again, each one zeroed by the kernel. In the
plain-VXLAN receiver that was 4.5 % of its cycles (`exc_page_fault` and `clear_page_erms` under
`bench/profile.sh -k`). So a data-path process raises the trim threshold to 64 MiB and serves
allocations up to 4 MiB from the heap instead of fresh mmaps: the pages of one batch are there
for the next. The memory kept is bounded by the largest batch's peak (a few MiB), not by time.

A user's own `MALLOC_TRIM_THRESHOLD_` / `MALLOC_MMAP_THRESHOLD_` or `GLIBC_TUNABLES=glibc.malloc.…`
win: nothing is changed then. Where malloc is not glibc's (musl has no such thresholds) the call
is missing or refused and nothing happens either.
"""

from __future__ import annotations

import ctypes
import os

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 64 << 20
MMAP_THRESHOLD = 4 << 20

USER_TUNABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def keep_heap() -> bool:
    """Set the thresholds above for this process; -> whether they were set. Forked children
    (workers) inherit them."""
    if any(name in os.environ for name in USER_TUNABLES):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own libc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, since setting it fixes both
    # (glibc stops adjusting them by itself once either is set).
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
