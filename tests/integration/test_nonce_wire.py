"""Nonces on the wire: no (keypair, counter) is ever sent twice, by real daemons.

Site A runs two data-path processes (Workers = 2: the daemon and a worker encrypt on the same
keypairs, their counters reserved from one shared slot) with protocol time 20x faster, so its
sessions rekey every 6 s; TCP transfers over many flows run both ways for ~20 s. A capture in
B's namespace (tests/harness/wgsniff.py: every frame on B's veth, GSO super-packets cut by
their gso_size as B's stack cuts them) records the receiver index and counter of every
transport message A sent. Checked: none twice, several keypairs, the worker sent on them, none
at or past REJECT_AFTER_MESSAGES, and B dropped nothing as a replay or forgery. The daemon's
log says which AEAD ran (compiled by default; `cryptography` under TUNNELPY_TEST_COMPILED=off).
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

import pytest

from tests.harness.sites import new_site, start
from tests.integration.test_workers_namespaces import flows_until_worker_sent, show_json
from tunnelpy.protocol.constants import REJECT_AFTER_MESSAGES

pytestmark = pytest.mark.root

UA, UB = "10.47.0.1", "10.47.0.2"
SNIFF = Path(__file__).resolve().parents[1] / "harness" / "wgsniff.py"


def test_no_counter_is_sent_twice_across_workers_and_rekeys(lab, monkeypatch):
    monkeypatch.setenv("TUNNELPY_TEST_TIME_SCALE", "0.05")
    a_ns, b_ns = lab.ns
    _, vb = lab.veth(a_ns, b_ns, f"{UA}/24", f"{UB}/24")
    a = new_site(lab, a_ns, 51820, ["10.48.0.1/24"])
    b = new_site(lab, b_ns, 51820, ["10.48.0.2/24"])
    a.extra = "Workers = 2\n"
    a.peers.append(b.peer_block(f"{UB}:51820", ["10.48.0.2/32"], name="site-b"))
    b.peers.append(a.peer_block(f"{UA}:51820", ["10.48.0.1/32"], name="site-a"))
    out = lab.workdir / "counters.bin"
    sniff = lab.popen(b_ns, sys.executable, str(SNIFF), vb, UA, "51820", str(out))
    lab.wait_for(lambda: "capturing" in sniff.log(5), 10, "the capture running", watch=[sniff])
    start(lab, a, log_level="info")
    start(lab, b, log_level="info")
    assert lab.ping(a.ns, "10.48.0.2"), lab.notes
    sent = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        sent = flows_until_worker_sent(lab, a, b.ns, "10.48.0.2", sent + 50, tries=20)
        assert lab.tcp_transfer(b.ns, a.ns, "10.48.0.1", 1 << 20), lab.notes
    assert sniff.stop() == 0, sniff.log()
    pairs = list(struct.iter_unpack("<IQ", out.read_bytes()))
    assert len(pairs) > 10_000, sniff.log()
    assert len(set(pairs)) == len(pairs), "a (keypair, counter) was sent twice"
    keypairs = {index for index, _ in pairs}
    assert len(keypairs) >= 3, f"only {len(keypairs)} keypairs in 20 s of 6 s sessions"
    assert max(c for _, c in pairs) < REJECT_AFTER_MESSAGES
    assert sent > 50  # the worker encrypted a share of them
    drops = show_json(b.ifname)["drops"]
    assert not {"replay", "bad_auth"} & set(drops), drops
    assert "AEAD " in a.proc.log(400)
