"""Inside the VM (a kernel with sch_netem): [Netem] shaping built by the topology helper and
measured, then undone (issue 20, item 3). The host's kernel has no netem, so this is its tier.

The guest is slow (TCG), so every check is a lower bound netem guarantees (a delayed packet is
never early; a rate-limited transfer never finishes sooner than its size allows) plus a loose
upper bound, never a tight figure.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import netns as netns_mod
from tests.harness.netns import Lab
from tests.harness.topolab import TopoLab
from tunnelpy.netlink import topology as topomod

DAEMON_START_TIMEOUT = 600.0


@pytest.fixture(scope="module", autouse=True)
def _netem_module() -> None:
    for module in ("sch_netem", "tun", "veth", "bridge"):
        subprocess.run(["modprobe", module], capture_output=True)
    # The lab harness wants /dev/net/tun (for tunnelpyd), which a fresh guest may not have.
    if not os.path.exists("/dev/net/tun"):
        os.makedirs("/dev/net", exist_ok=True)
        os.mknod("/dev/net/tun", 0o666 | stat.S_IFCHR, os.makedev(10, 200))


@pytest.fixture
def tl(lab: Lab, tmp_path: Path) -> Iterator[TopoLab]:
    with TopoLab(lab, tmp_path / "state") as t:
        yield t


def tc(ns: str, dev: str) -> str:
    res = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout


def rtt(lab: Lab, ns: str, addr: str, count: int = 10) -> tuple[float, float]:
    """(min, avg) round-trip time in ms of `count` pings."""
    res = lab.run(ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", addr, timeout=120)
    m = re.search(r"= ([0-9.]+)/([0-9.]+)/", res.stdout)
    assert m, res.stdout
    return float(m.group(1)), float(m.group(2))


def test_vm_kernel_has_netem() -> None:
    assert topomod.probe_kinds({("qdisc:netem", None)}) == {}


def test_netem_delay_adds_the_rtt_and_jitter_is_set(tl: TopoLab) -> None:
    lab = tl.lab
    a, b = tl.ns("da"), tl.ns("db")
    body = (
        f"[Veth ea]\nPeer = eb\nNamespace = {a}\nPeerNamespace = {b}\n"
        "Address = 10.84.0.1/24\nPeerAddress = 10.84.0.2/24\n"
    )
    plain = tl.up(body)
    assert lab.ping(a, "10.84.0.2"), lab.notes
    _, base = rtt(lab, a, "10.84.0.2")
    assert plain.undo() == []
    shaped = tl.up(body + "[Netem eb]\nDelay = 100ms\nJitter = 10ms\n")
    qdisc = tc(b, "eb")
    assert re.search(r"netem 1: root .*delay 100ms\s+10ms", qdisc), qdisc
    low, avg = rtt(lab, a, "10.84.0.2")
    added = avg - base
    print(f"netem: RTT {base:.1f} ms plain, {avg:.1f} ms (min {low:.1f}) with Delay = 100ms")
    # the reply leaves eb 90-110 ms late; nothing comes back sooner than 90 ms
    assert low >= 89.0, (low, avg, base)
    assert 85.0 <= added <= 160.0, (added, avg, base)
    assert shaped.undo() == []
    assert a not in topomod.list_netns() and b not in topomod.list_netns()


def test_netem_loss_and_rate(tl: TopoLab) -> None:
    lab = tl.lab
    a, b = tl.ns("la"), tl.ns("lb")
    tl.up(
        f"[Veth fa]\nPeer = fb\nNamespace = {a}\nPeerNamespace = {b}\n"
        "Address = 10.85.0.1/24\nPeerAddress = 10.85.0.2/24\n"
        "[Netem fa]\nRate = 1mbit\n"
        f"[Veth ga]\nPeer = gb\nNamespace = {a}\nPeerNamespace = {b}\n"
        "Address = 10.86.0.1/24\nPeerAddress = 10.86.0.2/24\n"
        "[Netem gb]\nLoss = 100%\n"
    )
    assert not lab.ping(a, "10.86.0.2", count=1, timeout=3)  # every reply dropped on gb
    assert lab.ping(a, "10.85.0.2"), lab.notes
    # 512 KiB at 1 mbit/s out of fa: at least 4.2 s of serialisation
    started = time.monotonic()
    assert lab.tcp_transfer(a, b, "10.85.0.2", 512 << 10, timeout=120), lab.notes
    took = time.monotonic() - started
    assert took >= 4.0, took
    assert "rate 1Mbit" in tc(a, "fa")


def test_netem_in_the_daemon_is_undone_on_exit(lab: Lab, tmp_path: Path) -> None:
    """tunnelpyd applies a [Netem] on the veth it builds and removes both on SIGTERM."""
    from tests.harness.sites import TUNNELPYD

    ns = lab.ns[0]
    name = lab.ifname("x")
    far = f"{netns_mod.NS_PREFIX}{lab.tag}-nd"  # made by the daemon, unique on the host
    netns_mod.REGISTRY.netns.add(far)
    conf = lab.write_file(
        f"{name}.conf",
        f"[Interface]\nName = {name}\nTransport = vxlan\nListenPort = 4790\n"
        "[Peer]\nName = b\nEndpoint = 192.0.2.2:4790\n"
        f"[Segment s]\nVNI = 5\nDevice = {lab.ifname('s')}\n"
        f"[Veth nd]\nPeer = ndp\nNamespace = {far}\nAddress = 10.87.0.1/24\n"
        "PeerAddress = 10.87.0.2/24\n"
        "[Netem nd]\nDelay = 50ms\n",
    )
    proc = lab.popen(ns, *TUNNELPYD, "-c", str(conf), nsenter=True)
    # Python over 9p under TCG: the daemon's start takes minutes here (as in
    # test_kernel_wireguard.py); the control socket appears once the topology is applied.
    ctl = Path("/run/tunnelpy") / f"{name}.ctl"
    lab.wait_for(ctl.exists, DAEMON_START_TIMEOUT, f"tunnelpyd {name} up", watch=[proc],
                 interval=0.5)  # fmt: skip
    assert "netem" in tc(ns, "nd") and "delay 50ms" in tc(ns, "nd")
    low, _ = rtt(lab, ns, "10.87.0.2", count=3)
    assert low >= 45.0, low
    assert proc.stop(timeout=30) == 0
    assert not lab.link_exists(ns, "nd")
    assert far not in topomod.list_netns()
