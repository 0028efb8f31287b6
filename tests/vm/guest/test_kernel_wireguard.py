"""Inside the VM: the Debian kernel's own WireGuard module as a peer of a real tunnelpyd.

Two namespaces joined by a veth: tunnelpyd (started like tests/harness/sites.py does) in one, a kernel
``ip link add … type wireguard`` interface configured with ``wg set`` (key files 0600) in the
other. One daemon, two phases, so the slow guest starts Python only once:

1. tunnelpyd initiates: the kernel peer has no endpoint, so it cannot; it learns tunnelpyd's
   from the initiation. Ping v4 and v6 both ways, a TCP transfer tunnelpyd -> kernel (SHA-256).
2. the kernel initiates: its peer is removed (session gone) and added again with an endpoint,
   and the traffic starts on the kernel side. Ping both ways, TCP kernel -> tunnelpyd over v6.

The direction of each handshake is read from both sides: tunnelpyd's log ("handshake complete
(initiator|responder)") and the kernel's own debug messages (dynamic debug for the wireguard
module, read from /dev/kmsg). ``wg show`` on the kernel interface reports the handshakes,
tunnelpyd's endpoint and traffic.

Run by tests/vm/test_vm_tier.py through virtme-ng; collected only with TUNNELPY_IN_VM=1.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.netns import WG_RUN_DIR, Lab, WgPeer, genkey, genpsk, pubkey
from tests.harness.sites import Site, new_site, start

UT, UK = "10.43.0.1", "10.43.0.2"  # underlay: tunnelpyd side, kernel side
IT, IK = "10.42.0.1", "10.42.0.2"  # inner
IT6, IK6 = "fd42::1", "fd42::2"
T_PORT, K_PORT = 51820, 51821
XFER = 256 << 10  # bytes per TCP transfer: Python in the guest is 6-40x slower than on the host
DAEMON_START_TIMEOUT = 120.0  # seconds; about 20-30 s in the TCG guest
DYNDBG = Path("/proc/dynamic_debug/control")


@pytest.fixture(scope="module", autouse=True)
def _kernel_wireguard() -> Iterator[None]:
    res = subprocess.run(["modprobe", "wireguard"], capture_output=True, text=True)
    if res.returncode != 0 or not os.path.isdir("/sys/module/wireguard"):
        pytest.fail(
            f"the guest kernel {os.uname().release} has no usable wireguard module "
            f"(modprobe wireguard: exit {res.returncode} {res.stderr.strip()!r}); Debian's "
            "linux-image-amd64 ships drivers/net/wireguard/wireguard.ko",
            pytrace=False,
        )
    for module in ("tun", "veth"):
        subprocess.run(["modprobe", module], capture_output=True)
    if not os.path.exists("/dev/net/tun"):  # the lab harness and tunnelpyd want it
        os.makedirs("/dev/net", exist_ok=True)
        os.mknod("/dev/net/tun", 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    # The module's handshake messages are net_dbg_ratelimited(): switch them on, and lift the
    # shared net_ratelimit budget (10 per 5 s) so none is suppressed.
    if not DYNDBG.exists():
        pytest.fail(f"no {DYNDBG}: the guest kernel lacks CONFIG_DYNAMIC_DEBUG", pytrace=False)
    burst = Path("/proc/sys/net/core/message_burst")
    old_burst = burst.read_text()
    burst.write_text("10000\n")
    DYNDBG.write_text("module wireguard +p\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            DYNDBG.write_text("module wireguard -p\n")
        burst.write_text(old_burst)


class KernelLog:
    """New /dev/kmsg records since creation (or the last `read`), message text only."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.lines: list[str] = []

    def read(self) -> list[str]:
        new: list[str] = []
        while True:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # records overwritten before we read them: skip ahead
                continue
            new.append(record.decode(errors="replace").split(";", 1)[-1].split("\n", 1)[0])
        self.lines += new
        return new

    def close(self) -> None:
        os.close(self.fd)


def kernel_wg(lab: Lab, ns: str, private_key: str, port: int, addresses: list[str],
              peer: WgPeer) -> str:  # fmt: skip
    """A kernel WireGuard interface in `ns`, configured like wg-quick would; returns its name."""
    ifname = lab.ifname("kwg")
    res = lab.host("ip", "-n", ns, "link", "add", ifname, "type", "wireguard", check=False)
    assert res.returncode == 0, f"ip link add type wireguard: {res.stderr.strip()}"
    keyfile = lab.write_file(f"{ifname}.key", private_key + "\n")
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    lab.wg_set(ns, ifname, peer, private_key=keyfile, listen_port=port)
    lab.add_addresses(ns, ifname, addresses)
    lab.host("ip", "-n", ns, "link", "set", ifname, "mtu", "1420", "up")
    for prefix in peer.allowed_ips:
        net = ipaddress.ip_network(prefix, strict=False)
        lab.host("ip", "-n", ns, "route", "replace", str(net), "dev", ifname)
    return ifname


def kernel_peer(lab: Lab, ns: str, ifname: str) -> list[str]:
    """The peer line of ``wg show IFNAME dump``: key, psk, endpoint, allowed-ips, handshake,
    rx, tx, keepalive."""
    lines = lab.wg_show(ns, ifname, "dump").splitlines()
    assert len(lines) == 2, lines
    return lines[1].split("\t")


def completions(site: Site) -> list[str]:
    assert site.proc is not None
    text = site.proc.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if "handshake complete" in line]


def test_tunnelpyd_and_kernel_wireguard_both_ways(lab: Lab, request: pytest.FixtureRequest) -> None:
    t_ns, k_ns = lab.ns
    started = time.monotonic()
    lab.veth(t_ns, k_ns, f"{UT}/24", f"{UK}/24")
    psk, kkey = genpsk(), genkey()
    site = new_site(lab, t_ns, T_PORT, [f"{IT}/24", f"{IT6}/64"])
    site.peers.append(
        f"[Peer]\nName = kernel\nPublicKey = {pubkey(kkey)}\nPresharedKey = {psk}\n"
        f"Endpoint = {UK}:{K_PORT}\nAllowedIPs = {IK}/32, {IK6}/128\n"
    )
    # sites.start() allows 15 s for the daemon to come up; in the guest its imports alone take
    # longer (Python over 9p under TCG), so wait here with a guest-sized timeout.
    proc = start(lab, site, wait=False)
    sock = WG_RUN_DIR / f"{site.ifname}.sock"
    lab.wait_for(
        lambda: sock.exists()
        and "UP" in lab.host("ip", "-n", t_ns, "-br", "link", "show", site.ifname, check=False).stdout,
        DAEMON_START_TIMEOUT, f"tunnelpyd {site.ifname} up", watch=[proc], interval=0.5,
    )  # fmt: skip
    daemon_s = time.monotonic() - started
    t_allowed = [f"{IT}/32", f"{IT6}/128"]
    kif = kernel_wg(lab, k_ns, kkey, K_PORT, [f"{IK}/24", f"{IK6}/64"],
                    WgPeer(site.public_key, allowed_ips=t_allowed, preshared_key=psk))  # fmt: skip
    assert "wireguard" in lab.host("ip", "-n", k_ns, "-d", "link", "show", kif).stdout
    assert kernel_peer(lab, k_ns, kif)[4] == "0"  # no handshake yet
    klog = KernelLog()
    setup_s = time.monotonic() - started

    try:
        # -- phase 1: tunnelpyd initiates (the kernel peer has no endpoint) ------------------
        assert lab.ping(t_ns, IK), lab.notes
        assert lab.ping(k_ns, IT), lab.notes
        assert lab.ping(t_ns, IK6), lab.notes
        assert lab.ping(k_ns, IT6), lab.notes
        assert lab.tcp_transfer(t_ns, k_ns, IK, XFER), lab.notes
        peer = kernel_peer(lab, k_ns, kif)
        assert peer[0] == site.public_key and peer[1] == psk
        assert peer[2] == f"{UT}:{T_PORT}"  # learned from tunnelpyd's initiation
        assert set(peer[3].split(",")) == set(t_allowed)
        first = int(peer[4])
        assert first > time.time() - 300, peer
        assert int(peer[5]) > XFER and int(peer[6]) > 0, peer  # the transfer came through it
        assert [c for c in completions(site) if "(initiator)" in c], completions(site)
        phase1 = klog.read()
        assert any(f"{kif}: Receiving handshake initiation from peer" in m for m in phase1), phase1
        assert any(f"{kif}: Sending handshake response to peer" in m for m in phase1), phase1
        assert not any("Sending handshake initiation" in m for m in phase1), phase1
        phase1_s = time.monotonic() - started - setup_s

        # -- phase 2: the kernel initiates (its session is dropped with the peer) ------------
        lab.run(k_ns, "wg", "set", kif, "peer", site.public_key, "remove")
        assert lab.wg_show(k_ns, kif, "peers").strip() == ""
        lab.wg_set(k_ns, kif, WgPeer(site.public_key, allowed_ips=t_allowed,
                                     endpoint=f"{UT}:{T_PORT}", preshared_key=psk))  # fmt: skip
        for prefix in t_allowed:  # removing the peer left the routes; replace them to be sure
            lab.host("ip", "-n", k_ns, "route", "replace", prefix, "dev", kif)
        assert kernel_peer(lab, k_ns, kif)[4] == "0"
        assert lab.ping(k_ns, IT), lab.notes
        assert lab.ping(t_ns, IK), lab.notes
        assert lab.ping(k_ns, IT6), lab.notes
        assert lab.tcp_transfer(k_ns, t_ns, IT6, XFER), lab.notes
        peer = kernel_peer(lab, k_ns, kif)
        assert int(peer[4]) >= first and int(peer[6]) > XFER, peer
        assert [c for c in completions(site) if "(responder)" in c], completions(site)
        phase2 = klog.read()
        assert any(f"{kif}: Sending handshake initiation to peer" in m for m in phase2), phase2
        assert any(f"{kif}: Receiving handshake response from peer" in m for m in phase2), phase2
        human = lab.run(k_ns, "wg", "show", kif).stdout
        assert "latest handshake" in human and "transfer" in human, human
        # and tunnelpyd's view of the same peer, through its UAPI
        tdump = lab.wg_show(t_ns, site.ifname, "dump").splitlines()[1].split("\t")
        assert tdump[2] == f"{UK}:{K_PORT}" and int(tdump[4]) > 0 and int(tdump[5]) > XFER
    except BaseException:
        print("\n".join(["kernel log:", *klog.lines, *klog.read()]))
        raise
    finally:
        klog.close()
    phase2_s = time.monotonic() - started - setup_s - phase1_s
    timing = (
        f"tunnelpyd up {daemon_s:.1f} s, setup {setup_s:.1f} s, tunnelpyd initiates "
        f"{phase1_s:.1f} s, kernel initiates {phase2_s:.1f} s ({XFER >> 10} KiB each way)"
    )
    # A junit <property>, which the host prints; record_property would warn under xunit2.
    request.node.user_properties.append(("timing", timing))
