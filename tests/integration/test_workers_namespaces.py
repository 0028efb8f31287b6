"""`Workers = N`: a multi-queue TUN read by N processes, in real daemons in namespaces.

What is checked: data crosses by SHA-256 over many flows (so the kernel's flow hash puts some on
each queue), a worker really encrypted and sent some of it (its own packet count, from
`tunnelpy show --json`), `wg show transfer` merges the workers' bytes (the sender's tx equals the
receiver's rx once traffic stops), a SIGKILLed worker is replaced while traffic keeps flowing,
and SIGTERM leaves no process, queue or device behind. The peer side is a one-process tunnelpyd
in one test and wireguard-go in the other.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.harness.netns import WgPeer, genkey, pubkey
from tests.harness.sites import linked_pair, new_site, start

pytestmark = pytest.mark.root

UA, UB = "10.43.0.1", "10.43.0.2"
TUNNELPY = [sys.executable, "-m", "tunnelpy"]


def show_json(name: str) -> dict:
    res = subprocess.run(
        [*TUNNELPY, "show", name, "--json"], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stderr
    (doc,) = json.loads(res.stdout)
    return doc


def worker_rows(name: str) -> list[dict]:
    return show_json(name)["workers"]


def transfer(lab, site, key: str) -> tuple[int, int]:
    """(tx bytes of the site, rx bytes) for the peer `key` from `wg show transfer`."""
    for line in lab.wg_show(site.ns, site.ifname, "transfer").splitlines():
        k, rx, tx = line.split()
        if k == key:
            return int(tx), int(rx)
    raise AssertionError(f"peer {key} not in wg show transfer")


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (the zygote and the workers it forked)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    kids = {int(x) for x in out.stdout.split()}
    for k in list(kids):
        kids |= descendants(k)
    return kids


def two_sites(lab, workers_a: str, workers_b: str):
    return linked_pair(lab, "10.43.0", "10.44.0", "fd44", f"Workers = {workers_a}\n",
                       f"Workers = {workers_b}\n")  # fmt: skip


def test_two_workers_carry_traffic_and_merge_counters(lab):
    a, b = two_sites(lab, "2", "1")
    start(lab, a, log_level="info")
    start(lab, b, log_level="info")
    assert lab.ping(a.ns, "10.44.0.2"), lab.notes
    assert lab.ping(b.ns, "fd44::1"), lab.notes
    rows = worker_rows(a.ifname)
    assert [r["index"] for r in rows] == [0, 1]
    assert rows[1]["pid"] in descendants(a.proc.pid)
    # Flows are spread over the two queues by hash: keep adding flows until the worker sent
    # some (each flow has 1/2 chance; 12 flows all on queue 0 would be 1 in 4096).
    for i in range(12):
        assert lab.tcp_transfer(a.ns, b.ns, "10.44.0.2" if i % 2 else "fd44::2", 2 << 20), lab.notes
        if (worker_rows(a.ifname)[1]["tx_packets"] or 0) > 100:
            break
    assert worker_rows(a.ifname)[1]["tx_packets"] > 100, "the worker never sent"
    assert lab.tcp_transfer(b.ns, a.ns, "10.44.0.1", 4 << 20), lab.notes
    # wg show: a's tx (daemon + worker) is exactly what b received, once traffic has stopped
    # and the worker's last report (every 0.1 s) is in.
    lab.wait_for(
        lambda: transfer(lab, a, b.public_key)[0] == transfer(lab, b, a.public_key)[1],
        5, "a's tx bytes (merged from the worker) equal b's rx bytes",
    )  # fmt: skip
    assert transfer(lab, a, b.public_key)[0] > 2 << 20


def test_killed_worker_is_replaced_and_shutdown_is_clean(lab):
    a, b = two_sites(lab, "2", "2")
    start(lab, a, log_level="info")
    start(lab, b, log_level="info")
    assert lab.ping(a.ns, "10.44.0.2"), lab.notes
    old = worker_rows(a.ifname)[1]["pid"]
    os.kill(old, signal.SIGKILL)
    # Its queue detached with it: every flow still gets through while it is gone.
    assert lab.tcp_transfer(a.ns, b.ns, "10.44.0.2", 4 << 20), lab.notes
    lab.wait_for(
        lambda: len(rows := worker_rows(a.ifname)) == 2 and rows[1]["pid"] != old,
        10, "a new worker 1",
    )  # fmt: skip
    assert "worker 1 exited; restarting" in a.proc.log(200)
    for _ in range(8):
        assert lab.tcp_transfer(a.ns, b.ns, "10.44.0.2", 2 << 20), lab.notes
        assert lab.tcp_transfer(b.ns, a.ns, "fd44::1", 2 << 20), lab.notes
    pids = descendants(a.proc.pid) | descendants(b.proc.pid)
    assert len(pids) == 4  # a zygote and a worker each
    assert a.proc.stop() == 0 and b.proc.stop() == 0
    lab.wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 5, "workers gone")
    assert not lab.link_exists(a.ns, a.ifname) and not lab.link_exists(b.ns, b.ifname)


@pytest.mark.interop
@pytest.mark.skipif(not shutil.which("wireguard-go"), reason="needs wireguard-go")
def test_workers_against_wireguard_go(lab):
    """Counters from two processes interleave on one session: wireguard-go's replay window
    accepts them all (a TCP transfer by hash over many flows would stall otherwise)."""
    a_ns, b_ns = lab.ns
    lab.veth(a_ns, b_ns, f"{UA}/24", f"{UB}/24")
    a = new_site(lab, a_ns, 51820, ["10.44.0.1/24"])
    a.extra = "Workers = 2\n"
    wg_key = genkey()
    wg_if = lab.ifname("wg")
    a.peers.append(
        f"[Peer]\nName = wggo\nPublicKey = {pubkey(wg_key)}\nEndpoint = {UB}:51821\n"
        "AllowedIPs = 10.44.0.2/32\n"
    )
    start(lab, a, log_level="info")
    lab.wggo(b_ns, wg_if, wg_key, 51821, "10.44.0.2/24",
             WgPeer(a.public_key, endpoint=f"{UA}:51820", allowed_ips=["10.44.0.1/32"]))  # fmt: skip
    assert lab.ping(a.ns, "10.44.0.2"), lab.notes
    for _ in range(10):
        assert lab.tcp_transfer(a.ns, b_ns, "10.44.0.2", 2 << 20), lab.notes
        if (worker_rows(a.ifname)[1]["tx_packets"] or 0) > 100:
            break
    assert worker_rows(a.ifname)[1]["tx_packets"] > 100, "the worker never sent"
    assert lab.tcp_transfer(a.ns, b_ns, "10.44.0.2", 8 << 20), lab.notes
    assert lab.tcp_transfer(b_ns, a.ns, "10.44.0.1", 4 << 20), lab.notes


def caps_and_uid(pid: int) -> tuple[list[str], int, int]:
    fields = dict(
        line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines()
    )
    return fields["Uid"].split(), int(fields["CapEff"], 16), int(fields["CapAmb"], 16)


def test_workers_run_as_user_without_capabilities(lab):
    a, b = two_sites(lab, "2", "1")
    a.extra += "User = nobody\n"
    start(lab, a, log_level="info")
    start(lab, b, log_level="info")
    assert lab.ping(a.ns, "10.44.0.2"), lab.notes
    first = worker_rows(a.ifname)[1]["pid"]
    assert caps_and_uid(first) == (["65534"] * 4, 0, 0)
    assert caps_and_uid(a.proc.pid)[:2] == (["65534"] * 4, 1 << 12)  # the daemon: NET_ADMIN
    # Restarted by the daemon after its drop: it opens the queue, the worker keeps nothing.
    os.kill(first, signal.SIGKILL)
    lab.wait_for(
        lambda: len(rows := worker_rows(a.ifname)) == 2 and rows[1]["pid"] != first,
        10, "a new worker 1",
    )  # fmt: skip
    assert caps_and_uid(worker_rows(a.ifname)[1]["pid"]) == (["65534"] * 4, 0, 0)
    for _ in range(6):
        assert lab.tcp_transfer(a.ns, b.ns, "10.44.0.2", 2 << 20), lab.notes
    assert a.proc.stop() == 0


def flows_until_worker_sent(lab, a, b_ns: str, dst: str, more_than: int, tries: int = 12) -> int:
    """TCP transfers (checked by SHA-256) to `dst`, one new flow each, until worker 1 has sent
    `more_than` packets in all; returns its count. Each flow lands on its queue by hash."""
    for _ in range(tries):
        assert lab.tcp_transfer(a.ns, b_ns, dst, 1 << 20), lab.notes
        sent = worker_rows(a.ifname)[1]["tx_packets"] or 0
        if sent > more_than:
            return sent
    raise AssertionError(f"worker 1 sent only {sent} packets to {dst} in {tries} flows")


def test_runtime_changes_reach_the_workers(lab):
    """wg set: a new AllowedIPs prefix is routed by the worker too; a new listen port restarts
    the workers on the new socket and the peer follows the new source port."""
    a, b = two_sites(lab, "2", "1")
    start(lab, a, log_level="info")
    start(lab, b, log_level="info")
    assert lab.ping(a.ns, "10.44.0.2"), lab.notes
    lab.run(b.ns, "ip", "addr", "add", "10.45.0.2/32", "dev", b.ifname)
    lab.run(b.ns, "wg", "set", b.ifname, "peer", a.public_key,
            "allowed-ips", "10.44.0.1/32,fd44::1/128")  # fmt: skip
    lab.run(a.ns, "wg", "set", a.ifname, "peer", b.public_key,
            "allowed-ips", "10.44.0.2/32,fd44::2/128,10.45.0.0/24")  # fmt: skip
    lab.run(a.ns, "ip", "route", "add", "10.45.0.0/24", "dev", a.ifname)
    before = worker_rows(a.ifname)[1]["tx_packets"] or 0
    # A flow hashed to a worker that did not know the prefix would be dropped there
    # (tun_no_route), every retransmission too, and its transfer would fail.
    flows_until_worker_sent(lab, a, b.ns, "10.45.0.2", before + 100)
    old_pid = worker_rows(a.ifname)[1]["pid"]
    lab.run(a.ns, "wg", "set", a.ifname, "listen-port", "51999")
    lab.wait_for(
        lambda: len(rows := worker_rows(a.ifname)) == 2 and rows[1]["pid"] != old_pid,
        10, "workers restarted on the new socket",
    )  # fmt: skip
    assert "worker 1 exited" not in a.proc.log(200)  # a restart on purpose is not a failure
    flows_until_worker_sent(lab, a, b.ns, "10.44.0.2", 100)
    ends = lab.wg_show(b.ns, b.ifname, "endpoints")
    assert f"{UA}:51999" in ends, ends


def test_sessions_rekey_under_workers(lab, monkeypatch):
    """Protocol time 20x faster: sessions rekey every 6 s. Transfers keep passing across
    several rekeys and the worker keeps sending on each new session (it is handed every new
    keypair; an old one would be refused by its counter slot or expire)."""
    monkeypatch.setenv("TUNNELPY_TEST_TIME_SCALE", "0.05")
    a, b = two_sites(lab, "2", "2")
    start(lab, a, log_level="info")
    start(lab, b, log_level="info")
    assert lab.ping(a.ns, "10.44.0.2"), lab.notes
    seen: set[int] = set()
    sent = 0
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        sent = flows_until_worker_sent(lab, a, b.ns, "10.44.0.2", sent + 50, tries=20)
        assert lab.tcp_transfer(b.ns, a.ns, "fd44::1", 1 << 20), lab.notes
        seen.add(lab.latest_handshakes(a.ns, a.ifname)[b.public_key])
    assert len(seen) >= 3, f"only {len(seen)} distinct handshakes in 25 s"
    for site in (a, b):
        drops = show_json(site.ifname)["drops"]
        assert not {"replay", "bad_auth", "stale_keypair"} & set(drops), drops


def test_reload_changes_reach_the_workers(lab):
    """A reload that adds an AllowedIPs prefix: the pool is told (it does not poll), so a flow
    hashed to the worker's queue is routed there too instead of dropped as tun_no_route."""
    a, b = two_sites(lab, "2", "1")
    start(lab, a, log_level="info")
    start(lab, b, log_level="info")
    assert lab.ping(a.ns, "10.44.0.2"), lab.notes
    lab.run(b.ns, "ip", "addr", "add", "10.45.0.2/32", "dev", b.ifname)
    a.peers[0] = b.peer_block(f"{UB}:51820", ["10.44.0.2/32", "fd44::2/128", "10.45.0.0/24"],
                              name="site-b")  # fmt: skip
    assert a.conf is not None
    a.conf.write_text(a.text())
    res = subprocess.run([*TUNNELPY, "reload", a.ifname], capture_output=True, text=True,
                         timeout=30)  # fmt: skip
    assert res.returncode == 0 and "update peer site-b" in res.stdout, res.stdout + res.stderr
    before = worker_rows(a.ifname)[1]["tx_packets"] or 0
    unrouted = show_json(a.ifname)["drops"].get("tun_no_route", 0)
    flows_until_worker_sent(lab, a, b.ns, "10.45.0.2", before + 100)
    # A stale worker table drops every segment and retransmission of its flows; a stray packet
    # of the kernel's own (one was seen at start-up) is no such thing.
    assert show_json(a.ifname)["drops"].get("tun_no_route", 0) <= unrouted + 2
