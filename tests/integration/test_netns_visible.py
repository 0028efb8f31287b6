"""Namespaces tunnelpyd creates are the host's (issue 20, item 4), however it was started:

* under ``ip netns exec`` (a private mount namespace whose mounts are slaves of the host's);
* as systemd's sandbox leaves it (``ProtectSystem=strict`` & co.: a private mount namespace,
  slave propagation, /run read-only) — emulated with ``unshare --mount --propagation slave``
  and /run/netns remounted read-only, since this machine runs no systemd;
* in a private mount namespace that receives nothing from the host (``--propagation private``):
  the daemon then reaches its namespaces through /proc/1/root.

Each time the host sees the namespace (``ip netns list``), can use it (``ip netns exec NAME``),
traffic crosses the veth into it, ``lo`` is up there, and it is gone on the host after SIGTERM.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import netns as netns_mod
from tests.harness.netns import Lab
from tests.harness.sites import TUNNELPYD

STARTS = {
    "ip-netns-exec": [],
    "systemd-like": ["unshare", "--mount", "--propagation", "slave", "--"],
    "private": ["unshare", "--mount", "--propagation", "private", "--"],
}
READ_ONLY_RUN = 'mount -o remount,bind,ro /run/netns && exec "$@"'


@pytest.fixture
def far(lab: Lab) -> Iterator[str]:
    """A namespace name for the daemon to create: unique, in the leak check, always removed."""
    name = f"{netns_mod.NS_PREFIX}{lab.tag}-far"
    netns_mod.REGISTRY.netns.add(name)
    yield name
    if name in netns_mod.list_netns():
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.mark.parametrize("how", list(STARTS))
def test_created_namespace_is_the_hosts(lab: Lab, far: str, how: str) -> None:
    ns = lab.ns[0]
    tap = lab.ifname("t")
    name = lab.ifname("v")
    conf = lab.write_file(
        f"{name}.conf",
        f"[Interface]\nName = {name}\nTransport = vxlan\nListenPort = 4790\n"
        "[Peer]\nName = b\nEndpoint = 192.0.2.2:4790\n"
        f"[Segment s]\nVNI = 5\nDevice = {tap}\nBridge = brv\n"
        "[Bridge brv]\nAddress = 10.88.0.1/24\n"
        f"[Veth vv]\nPeer = eth0\nNamespace = {far}\nMaster = brv\nPeerAddress = 10.88.0.2/24\n"
        f"[Namespace {far}]\nRoute = default via 10.88.0.1\n",
    )
    daemon = [*TUNNELPYD, "-c", str(conf), "--log-level", "debug"]
    if how == "ip-netns-exec":
        proc = lab.popen(ns, *daemon)  # the harness's default: ip netns exec
    else:
        sandbox = [*STARTS[how], "sh", "-c", READ_ONLY_RUN, "sh"]
        proc = lab.popen(ns, *sandbox, *daemon, nsenter=True)
    # The control socket appears once start-up is complete (topology applied).
    ctl = Path("/run/tunnelpy") / f"{name}.ctl"
    lab.wait_for(ctl.exists, 30, f"tunnelpyd {name} up", watch=[proc])
    assert far in netns_mod.list_netns(), proc.log()  # `ip netns list` on the host
    assert "eth0" in lab.host("ip", "netns", "exec", far, "ip", "-br", "link").stdout
    assert "master brv" in lab.run(ns, "ip", "link", "show", tap).stdout
    assert "UP" in lab.run(far, "ip", "link", "show", "lo").stdout.split(">")[0]
    assert "default via 10.88.0.1 dev eth0" in lab.run(far, "ip", "route").stdout
    assert lab.ping(far, "10.88.0.1"), lab.notes  # through the built veth and bridge
    assert lab.ping(far, "127.0.0.1", count=1), lab.notes
    assert proc.stop(timeout=20) == 0, proc.log()
    assert far not in netns_mod.list_netns(), proc.log()
    assert not lab.link_exists(ns, "brv")
