"""`tunnelpyd IFNAME` follows its TUN: moved from namespace to namespace (and back), its MTU
changed there, deleted — also after a drop to an unprivileged user, when the daemon keeps only
CAP_NET_ADMIN (netlink/linkwatch.py hears other namespaces through NETLINK_LISTEN_ALL_NSID and
gives a namespace an id when it has none)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.harness.netns import WG_RUN_DIR, Lab

DAEMON = [sys.executable, "-m", "tunnelpy.tunnelpyd"]


def _mtu(ifname: str) -> int | None:
    res = subprocess.run(
        [sys.executable, "-m", "tunnelpy", "show", "--json", ifname],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    if res.returncode != 0:
        return None
    doc = json.loads(res.stdout)
    return doc[0].get("mtu") if doc else None


def _pids(ifname: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", f"tunnelpy.tunnelpyd.* {ifname}$"], capture_output=True,
                         text=True).stdout  # fmt: skip
    return out.split()


@pytest.mark.parametrize("user", [None, "nobody"])
def test_moves_mtu_and_deletion_are_followed(user: str | None) -> None:
    with Lab(3) as lab:
        home, ns1, ns2 = lab.ns
        name = lab.ifname("fd")
        extra = ["--user", user] if user else []
        lab.run(home, *DAEMON, *extra, name)
        assert _pids(name)
        lab.wait_for(lambda: _mtu(name) == 1420, 5, "the starting MTU")
        path = [(home, 1300), (ns1, 34816), (ns2, 9000), (home, 1280), (ns2, 1400)]
        where = home
        for ns, mtu in path:
            if ns != where:
                lab.host("ip", "-n", where, "link", "set", name, "netns", ns)
                where = ns
            lab.host("ip", "-n", ns, "link", "set", name, "mtu", str(mtu))
            lab.wait_for(lambda mtu=mtu: _mtu(name) == mtu, 5, f"MTU {mtu} seen in {ns}")
        # Deleted where it is now: the daemon exits within 1 s and the name is free at once.
        t = time.monotonic()
        lab.host("ip", "-n", where, "link", "del", name)
        lab.wait_for(lambda: not _pids(name), 1.0, "the daemon to exit")
        took = time.monotonic() - t
        assert took < 1.0, took
        lab.run(home, *DAEMON, *extra, name)
        assert (WG_RUN_DIR / f"{name}.sock").exists()
        lab.host("ip", "-n", home, "link", "del", name)
        lab.wait_for(lambda: not _pids(name), 2.0, "the second daemon to exit")
