"""A handshake flood against a real tunnelpyd: cookie mode holds, a legitimate peer gets through.

    ns F (flooder.py) ── veth ──┐
                                ns B (tunnelpyd, responder)
    ns A (tunnelpyd, legit) ─ veth ┘

The flooder sends ≥ 10^4 initiations/s with a valid mac1 (it knows B's public key) for the
whole test. Two seconds in, site A starts and pings B through the tunnel: its first initiation
is answered with a cookie reply, the retry carries mac2 and completes. Meanwhile B's CPU time
and RSS are sampled from /proc and its log is checked to stay short (nothing is logged per
dropped datagram).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.harness.hostile_env import figure, pick
from tests.harness.hostile_sites import proc_sample
from tests.harness.sites import new_site, start

pytestmark = pytest.mark.root

FLOODER = str(Path(__file__).resolve().parent / "flooder.py")


def test_handshake_flood_cookie_mode_legit_peer_bounded(make_lab):
    lab = make_lab(3)
    ns_a, ns_b, ns_f = lab.ns
    lab.veth(ns_a, ns_b, "10.51.0.1/24", "10.51.0.2/24")
    lab.veth(ns_f, ns_b, "10.52.0.1/24", "10.52.0.2/24")
    a = new_site(lab, ns_a, 51820, ["10.50.0.1/24"])
    b = new_site(lab, ns_b, 51820, ["10.50.0.2/24"])
    a.peers.append(b.peer_block("10.51.0.2:51820", ["10.50.0.2/32"], name="site-b"))
    b.peers.append(a.peer_block(None, ["10.50.0.1/32"], name="site-a"))
    start(lab, b, log_level="info")
    pid = b.proc.pid
    rate, seconds = pick((10_000, 12.0), (20_000, 60.0))
    flood = lab.popen(ns_f, sys.executable, FLOODER, "10.52.0.2", "51820", b.public_key,
                      str(rate), str(seconds), log_path=lab.workdir / "flooder.log")  # fmt: skip
    cpu0, rss0 = proc_sample(pid)
    log0 = len(b.proc.log(10_000).splitlines())
    t_start = time.monotonic()
    samples = []
    time.sleep(2.0)
    start(lab, a, log_level="info")
    t0 = time.monotonic()
    assert lab.ping(a.ns, "10.50.0.2", count=1, timeout=30), lab.notes
    legit = time.monotonic() - t0
    # one sample at least: under load the legit handshake may outlast the short flood
    samples.append((time.monotonic() - t_start, *proc_sample(pid)))
    while flood.alive:
        samples.append((time.monotonic() - t_start, *proc_sample(pid)))
        time.sleep(0.5)
    result = json.loads(flood.log().splitlines()[-1])
    cpu1, rss1 = proc_sample(pid)
    log_lines = len(b.proc.log(10_000).splitlines()) - log0
    assert result["rate"] >= rate * 0.9, result
    assert result["cookie_replies"] > 0, result  # B answered with cookies: it is in cookie mode
    assert legit < 20, legit
    peak = max(s[2] for s in samples)
    assert peak - rss0 < 64 * 1024, (rss0, peak)  # KiB: bounded, not growing with the flood
    assert log_lines < 50, b.proc.log(60)
    # and B is fine afterwards
    assert lab.ping(a.ns, "10.50.0.2", count=3, timeout=10), lab.notes
    cpu_share = (cpu1 - cpu0) / (time.monotonic() - t_start)
    figure("flood_rate", result["rate"], f"initiations/s for {seconds:g} s, valid mac1")
    figure("flood_cookie_replies", result["cookie_replies"], f"of {result['sent']} sent")
    figure("flood_legit_handshake_s", round(legit, 1), "s from start to first ping reply")
    figure("flood_daemon_cpu", round(cpu_share, 2), "cores (mean over the flood)")
    figure("flood_daemon_rss_kib", {"before": rss0, "peak": peak, "after": rss1}, "KiB")
    figure("flood_daemon_log_lines", log_lines)
