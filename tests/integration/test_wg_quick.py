"""wg-quick, unchanged, with tunnelpyd as its userspace implementation.

``WG_QUICK_USERSPACE_IMPLEMENTATION=tunnelpyd wg-quick up ./IF.conf`` is how most WireGuard users
would start tunnelpyd: wg-quick finds no kernel module, runs ``tunnelpyd IF`` (which must return
only once ``wg`` can configure it), then ``wg setconf``, ``ip address``, ``ip link set mtu … up``,
the routes, and for a default route its fwmark policy rules and iptables raw-table rules. Two
sites in namespaces: A plain, B a full tunnel (0.0.0.0/0 and ::/0 through A). Checked: traffic
both families, the fwmark on the daemon's UDP socket (else B's datagrams would loop into its own
tunnel), ``wg-quick save``/``strip``, and that ``wg-quick down`` leaves no process, link, socket,
route, rule or firewall rule behind — and the same names come up again at once.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys

import pytest

from tests.harness.netns import WG_RUN_DIR, Lab, genkey, pubkey

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "wg-quick"], capture_output=True).returncode != 0,
    reason="wg-quick (wireguard-tools) not installed",
)


def _impl(lab: Lab) -> str:
    """A `tunnelpyd` for wg-quick to run: this checkout's, whatever is on PATH."""
    path = lab.write_file(
        "tunnelpyd",
        f'#!/bin/sh\nexec {sys.executable} -m tunnelpy.tunnelpyd "$@"\n',
        mode=0o700,
    )
    return str(path)


def _wg_quick(lab: Lab, ns: str, *args: str, impl: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WG_QUICK_USERSPACE_IMPLEMENTATION": impl}
    env.pop("NOTIFY_SOCKET", None)
    res = subprocess.run(
        ["ip", "netns", "exec", ns, "wg-quick", *args],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 0, f"wg-quick {' '.join(args)}: {res.stderr}{res.stdout}"
    return res


def _daemons(ifname: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", f"tunnelpy.* {ifname}$"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def _rules(saved: str) -> str:
    return "\n".join(line for line in saved.splitlines() if line.startswith("-A "))


def _state(lab: Lab, ns: str) -> dict[str, str]:
    """What wg-quick up changes in a namespace (to compare after down)."""
    return {
        "links": lab.run(ns, "ip", "-br", "link").stdout,
        "rules4": lab.run(ns, "ip", "-4", "rule").stdout,
        "rules6": lab.run(ns, "ip", "-6", "rule").stdout,
        "routes4": lab.run(ns, "ip", "-4", "route", "show", "table", "all").stdout,
        "routes6": lab.run(ns, "ip", "-6", "route", "show", "table", "all").stdout,
        # rules only: a table wg-quick touched stays listed (empty) after down
        "iptables": _rules(lab.run(ns, "iptables-save").stdout),
        "ip6tables": _rules(lab.run(ns, "ip6tables-save").stdout),
    }


def test_wg_quick_up_save_strip_down_plain_and_full_tunnel():
    with Lab(2) as lab:
        a_ns, b_ns = lab.ns
        lab.veth(a_ns, b_ns, ["10.97.0.1/24", "fd97::1/64"], ["10.97.0.2/24", "fd97::2/64"])
        impl = _impl(lab)
        a_if, b_if = lab.ifname("wq"), lab.ifname("wq")
        ka, kb = genkey(), genkey()
        a_conf = lab.write_file(
            f"{a_if}.conf",
            f"[Interface]\nPrivateKey = {ka}\nAddress = 10.96.0.1/24, fd96::1/64\n"
            f"ListenPort = 51820\n\n[Peer]\nPublicKey = {pubkey(kb)}\n"
            f"AllowedIPs = 10.96.0.2/32, fd96::2/128\n",
        )
        # B sends everything through A: wg-quick's Table = auto policy routing and fwmark.
        b_conf = lab.write_file(
            f"{b_if}.conf",
            f"[Interface]\nPrivateKey = {kb}\nAddress = 10.96.0.2/24, fd96::2/64\n"
            f"ListenPort = 51821\nMTU = 1380\n\n[Peer]\nPublicKey = {pubkey(ka)}\n"
            f"Endpoint = [fd97::1]:51820\nAllowedIPs = 0.0.0.0/0, ::/0\n"
            f"PersistentKeepalive = 25\n",
        )
        # The veth's link-local addresses (and their local routes) settle after DAD: wait, so
        # the snapshot is of a quiet namespace.
        for ns in lab.ns:
            lab.wait_for(
                lambda ns=ns: not lab.run(ns, "ip", "-6", "addr", "show", "tentative").stdout,
                10, "IPv6 DAD on the veth",
            )  # fmt: skip
        before = {ns: _state(lab, ns) for ns in lab.ns}

        for ns, conf in ((a_ns, a_conf), (b_ns, b_conf)):
            up = _wg_quick(lab, ns, "up", str(conf), impl=impl)
            assert "tunnelpyd" in up.stderr or impl in up.stderr  # the userspace path was taken
            assert (WG_RUN_DIR / f"{conf.stem}.sock").exists()

        during = _state(lab, b_ns)
        for what in ("rules4", "rules6", "iptables"):  # what down must take away again
            assert during[what] != before[b_ns][what], what
        assert lab.ping(b_ns, "10.96.0.1") and lab.ping(b_ns, "fd96::1")
        assert lab.ping(a_ns, "10.96.0.2") and lab.ping(a_ns, "fd96::2")
        assert lab.tcp_transfer(b_ns, a_ns, "10.96.0.1", 1 << 20), lab.notes
        assert lab.tcp_transfer(a_ns, b_ns, "fd96::2", 1 << 20), lab.notes

        # The full tunnel works only because the daemon's own datagrams carry wg-quick's mark.
        mark = lab.wg_show(b_ns, b_if, "fwmark").strip()
        assert mark == "0xca6c", mark
        ss = lab.run(b_ns, "ss", "-uaen").stdout
        assert re.search(r":51821\s.*fwmark:0xca6c", ss), ss
        mtu = lab.run(b_ns, "ip", "-o", "link", "show", b_if).stdout
        assert " mtu 1380 " in mtu

        # save: the running config back into the file, as wg-quick does it with the kernel
        _wg_quick(lab, b_ns, "save", str(b_conf), impl=impl)
        saved = b_conf.read_text()
        assert f"PrivateKey = {kb}" in saved and "ListenPort = 51821" in saved
        assert f"PublicKey = {pubkey(ka)}" in saved and "Endpoint = [fd97::1]:51820" in saved
        assert re.search(r"AllowedIPs = 0\.0\.0\.0/0, ::/0", saved), saved
        assert "Address = 10.96.0.2/24" in saved and "MTU = 1380" in saved
        strip = _wg_quick(lab, b_ns, "strip", str(b_conf), impl=impl).stdout
        assert "Address" not in strip and f"PrivateKey = {kb}" in strip

        for ns, conf in ((b_ns, b_conf), (a_ns, a_conf)):
            _wg_quick(lab, ns, "down", str(conf), impl=impl)
        lab.wait_for(lambda: not _daemons(a_if) and not _daemons(b_if), 5, "daemons to exit")
        for ns in lab.ns:
            after = _state(lab, ns)
            for what, text in before[ns].items():
                diff = "\n".join(difflib.unified_diff(text.splitlines(), after[what].splitlines()))
                assert after[what] == text, f"{ns} {what} after down:\n{diff}"
        for name in (a_if, b_if):
            assert not (WG_RUN_DIR / f"{name}.sock").exists()
            assert not os.path.exists(f"/run/tunnelpy/{name}.ctl")

        # The names are free again at once.
        _wg_quick(lab, b_ns, "up", str(b_conf), impl=impl)
        _wg_quick(lab, a_ns, "up", str(a_conf), impl=impl)
        assert lab.ping(b_ns, "10.96.0.1")
        _wg_quick(lab, b_ns, "down", str(b_conf), impl=impl)
        _wg_quick(lab, a_ns, "down", str(a_conf), impl=impl)
        lab.wait_for(lambda: not _daemons(a_if) and not _daemons(b_if), 5, "daemons to exit")
