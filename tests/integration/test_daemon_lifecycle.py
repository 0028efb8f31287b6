"""Start-up edge cases of a real tunnelpyd: stale sockets, live sockets, names that move."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from tests.harness.netns import WG_RUN_DIR
from tests.harness.sites import new_site, start

pytestmark = pytest.mark.root


def test_stale_uapi_socket_is_replaced(lab):
    a_ns, _ = lab.ns
    site = new_site(lab, a_ns, 51820, ["10.60.0.1/24"])
    path = WG_RUN_DIR / f"{site.ifname}.sock"
    WG_RUN_DIR.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))  # bound, never listening, then closed: what a SIGKILLed daemon leaves
    s.close()
    assert path.exists()
    start(lab, site)
    out = lab.run(a_ns, "wg", "show", site.ifname, "listen-port").stdout.strip()
    assert out == "51820"


def test_sigkill_leaves_nothing_but_a_socket_and_restart_works(lab):
    a_ns, _ = lab.ns
    site = new_site(lab, a_ns, 51820, ["10.60.0.1/24"])
    start(lab, site)
    site.proc.popen.kill()
    site.proc.popen.wait(10)
    # the kernel removed the TUN (and its addresses and routes) with the last fd
    lab.wait_for(lambda: not lab.link_exists(a_ns, site.ifname), 5, "TUN gone after SIGKILL")
    start(lab, site)
    assert lab.link_exists(a_ns, site.ifname)


def test_endpoint_name_resolved_at_start_and_again_when_quiet(lab):
    """`ip netns exec` bind-mounts /etc/netns/NS/hosts over /etc/hosts: a per-test DNS."""
    a_ns, b_ns = lab.ns
    va, vb = lab.veth(a_ns, b_ns, "10.61.0.1/24", "10.61.0.2/24")
    etc = Path("/etc/netns") / a_ns
    etc.mkdir(parents=True)
    try:
        hosts = etc / "hosts"
        hosts.write_text("127.0.0.1 localhost\n10.61.0.2 site-b.test\n")
        a = new_site(lab, a_ns, 51820, ["10.62.0.1/24"])
        b = new_site(lab, b_ns, 51820, ["10.62.0.2/24"])
        a.peers.append(b.peer_block("site-b.test:51820", ["10.62.0.2/32"], name="site-b"))
        b.peers.append(a.peer_block(None, ["10.62.0.1/32"], name="site-a"))
        start(lab, a)
        start(lab, b)
        assert lab.ping(a_ns, "10.62.0.2")
        # B moves to a new underlay address and DNS follows; B stays silent (no keepalive), so
        # only A's re-resolution after the peer went quiet can find it.
        lab.run(b_ns, "ip", "addr", "del", "10.61.0.2/24", "dev", vb)
        lab.run(b_ns, "ip", "addr", "add", "10.61.0.99/24", "dev", vb)
        with open(hosts, "w") as f:  # same inode: the bind mount sees the change
            f.write("127.0.0.1 localhost\n10.61.0.99 site-b.test\n")
        assert lab.ping(a_ns, "10.62.0.2", count=1, timeout=40)
        assert "10.61.0.99:51820" in lab.wg_show(a_ns, a.ifname, "endpoints")
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def test_wg_quick_hooks_run_with_interface_name(lab):
    a_ns, _ = lab.ns
    site = new_site(lab, a_ns, 51820, ["10.63.0.1/24"])
    mark = lab.workdir / "hooks.log"
    site.extra = (
        f"PostUp = echo up %i >> {mark}\n"
        f"PostUp = ip link set %i alias hooked\n"
        f"PreDown = echo down %i >> {mark}\n"
        "SaveConfig = true\n"  # (DNS = is applied now: tests/integration/test_dns_namespaces.py)
    )
    start(lab, site)
    assert "alias hooked" in lab.run(a_ns, "ip", "link", "show", site.ifname).stdout
    assert site.proc.stop() == 0
    assert mark.read_text().split("\n")[:2] == [f"up {site.ifname}", f"down {site.ifname}"]
    log = site.proc.log()
    assert "SaveConfig" in log  # reported, not fatal


def test_failing_postup_unwinds(lab):
    a_ns, _ = lab.ns
    site = new_site(lab, a_ns, 51820, ["10.63.0.1/24"])
    site.extra = "PostUp = false\n"
    proc = start(lab, site, wait=False)
    assert proc.popen.wait(15) == 1
    assert "PostUp command 1 (false …) failed with status 1" in proc.log()
    assert not lab.link_exists(a_ns, site.ifname)
    assert not (WG_RUN_DIR / f"{site.ifname}.sock").exists()


def _exits_within(proc, seconds: float) -> float:
    """Seconds until `proc` exited (fails past `seconds`)."""
    t0 = time.monotonic()
    while proc.alive and time.monotonic() - t0 < seconds:
        time.sleep(0.02)
    assert not proc.alive, f"still running after {seconds} s:\n{proc.log(30)}"
    return time.monotonic() - t0


def test_deleting_the_interface_frees_its_name_at_once(lab):
    """`ip link del`: the daemon gives up its UAPI socket and exits within a second, and a new
    daemon for the same name starts straight away (it used to linger holding the socket)."""
    a_ns, _ = lab.ns
    site = new_site(lab, a_ns, 51820, ["10.60.0.1/24"])
    start(lab, site)
    sock = WG_RUN_DIR / f"{site.ifname}.sock"
    first = site.proc
    lab.run(a_ns, "ip", "link", "del", site.ifname)
    took = _exits_within(first, 5.0)
    assert first.returncode == 0
    assert not sock.exists()
    assert "was deleted; shutting down" in first.log(40)
    print(f"exited {took:.3f} s after ip link del")
    assert took < 1.0, f"took {took:.2f} s to exit"
    start(lab, site)  # the same name, at once
    assert lab.run(a_ns, "wg", "show", site.ifname, "listen-port").stdout.strip() == "51820"


def test_removing_the_uapi_socket_removes_the_interface(lab):
    """What `wg-quick down` does to a userspace interface: delete its socket. The daemon
    removes its device and exits within a second."""
    a_ns, _ = lab.ns
    site = new_site(lab, a_ns, 51820, ["10.60.0.1/24"])
    start(lab, site)
    (WG_RUN_DIR / f"{site.ifname}.sock").unlink()
    took = _exits_within(site.proc, 5.0)
    assert site.proc.returncode == 0 and "UAPI socket" in site.proc.log(40)
    assert not lab.link_exists(a_ns, site.ifname)
    print(f"exited {took:.3f} s after the socket was removed")
    assert took < 1.0, f"took {took:.2f} s to exit"
