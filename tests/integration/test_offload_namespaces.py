"""Two real tunnelpyd sites with TUN offloads and UDP GSO/GRO on, off and mixed.

The mixed cases matter most: a site with offloads on splits TSO super-packets and computes every
segment's checksums itself; the site with offloads off writes those segments to a plain TUN, so
the kernel verifies each checksum (a wrong one would stall the transfer). Data is checked by
SHA-256 (Lab.tcp_transfer), in both directions, over IPv4 and IPv6 inner addresses.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.harness.sites import linked_pair, start

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.environ.get("TUNNELPY_TEST_OFFLOAD", "").lower() == "off",
        reason="TUNNELPY_TEST_OFFLOAD=off forces offloads off: this test compares on and off",
    ),
]

def offload_sites(lab, mode_a: str, mode_b: str):
    return linked_pair(lab, "10.41.0", "10.40.0", "fd40", f"Offload = {mode_a}\n",
                       f"Offload = {mode_b}\n")  # fmt: skip


def tso_state(lab, ns: str, ifname: str) -> str:
    out = lab.run(ns, "ethtool", "-k", ifname, check=False).stdout
    for line in out.splitlines():
        if line.startswith("tcp-segmentation-offload:"):
            return line.split(":", 1)[1].split()[0]
    return "unknown"


@pytest.mark.parametrize(
    "mode_a,mode_b", [("auto", "auto"), ("off", "off"), ("auto", "off"), ("off", "auto")]
)
def test_tcp_transfers_with_offloads(lab, mode_a, mode_b):
    a, b = offload_sites(lab, mode_a, mode_b)
    start(lab, a, log_level="info")
    start(lab, b, log_level="info")
    assert lab.ping(a.ns, "10.40.0.2")
    assert lab.ping(a.ns, "fd40::2")
    if shutil.which("ethtool"):
        for site, mode in ((a, mode_a), (b, mode_b)):
            assert tso_state(lab, site.ns, site.ifname) == ("on" if mode == "auto" else "off")
    assert lab.tcp_transfer(a.ns, b.ns, "10.40.0.2", 32 << 20), lab.notes
    assert lab.tcp_transfer(b.ns, a.ns, "10.40.0.1", 16 << 20), lab.notes
    assert lab.tcp_transfer(a.ns, b.ns, "fd40::2", 16 << 20), lab.notes
    assert lab.tcp_transfer(b.ns, a.ns, "fd40::1", 8 << 20), lab.notes
    # Small packets still pass one by one (UDP checksums finished from NEEDS_CSUM).
    assert lab.ping(b.ns, "10.40.0.1", count=3)
