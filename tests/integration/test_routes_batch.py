"""Routes in batches (issue 20, item 7): 10^5 AllowedIPs prefixes installed in at most 3 s.

``iface.sync_routes`` runs in a lab namespace (a fresh interpreter under ``ip netns exec``) on a
veth that stands for the TUN: 10^5 prefixes (IPv4 /32s and IPv6 /128s), then a change to a
different set (a quarter removed, as many added, one moved to another table), each checked
against what the kernel lists. The figure is printed (``-s``) for docs/hostile.md.
"""

from __future__ import annotations

import json
import sys

_SYNC = r"""
import ipaddress, json, subprocess, sys, time
from tunnelpy.netlink import iface
dev, n = sys.argv[1], int(sys.argv[2])

def count(*argv):
    out = subprocess.run(["ip", *argv, "route", "show", "dev", dev], capture_output=True,
                         text=True, check=True).stdout
    return len(out.splitlines())

v4 = [ipaddress.ip_network(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32") for i in range(n // 2)]
v6 = [ipaddress.ip_network(f"fd00:77::{i:x}/128") for i in range(n - n // 2)]
state = iface.RouteState()
t0 = time.perf_counter()
iface.sync_routes(dev, v4 + v6, None, None, state)
first = time.perf_counter() - t0
out = {"first": first, "installed": len(state.routes), "v4": count("-4"), "v6": count("-6")}
# a quarter of each family goes, as many new IPv4 ones come
keep4, keep6 = v4[len(v4) // 4 :], v6[len(v6) // 4 :]
more = [ipaddress.ip_network(f"10.200.{i >> 8 & 255}.{i & 255}/32") for i in range(n // 4)]
t0 = time.perf_counter()
iface.sync_routes(dev, keep4 + keep6 + more, None, None, state)
out.update(second=time.perf_counter() - t0, after=len(state.routes), v4b=count("-4"),
           v6b=count("-6"))
# the same prefixes elsewhere (Table = 4242): a second state, as a reload to another table does
other = iface.RouteState()
iface.sync_routes(dev, v4[:3], "4242", None, other)
out["table"] = len(other.routes)
# everything goes (what a reload to no peers does)
iface.sync_routes(dev, [], None, None, state)
out.update(empty=len(state.routes), v4c=count("-4"), v6c=count("-6"))
# a refused route: IPv6 disabled on the device. It is named; the IPv4 one beside it stays.
subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"], check=True)
bad = iface.RouteState()
try:
    iface.sync_routes(dev, [ipaddress.ip_network("fd00:99::/64"),
                            ipaddress.ip_network("10.251.0.0/24")], None, None, bad)
    out["bad"] = ""
except iface.NetlinkSetupError as e:
    out["bad"] = str(e)
out["bad_state"] = sorted(str(net) for net, _ in bad.routes)
print(json.dumps(out))
"""


def test_1e5_prefixes_in_3_seconds(make_lab) -> None:
    lab = make_lab(1)
    (ns,) = lab.ns
    lab.run(ns, "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    lab.run(ns, "ip", "link", "set", "veth0", "up")
    n = 100_000
    res = lab.run(ns, sys.executable, "-c", _SYNC, "veth0", str(n), timeout=300)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        f"\n10^5 routes: first sync {got['first']:.2f} s, change of {n // 2} routes "
        f"{got['second']:.2f} s"
    )
    assert got["installed"] == n
    assert (got["v4"], got["v6"]) == (n // 2, n - n // 2)
    assert got["first"] <= 3.0, got
    # the change: 3/4 of each family kept, n/4 new IPv4 ones
    assert (got["v4b"], got["v6b"]) == (n // 2 - n // 8 + n // 4, (n - n // 2) * 3 // 4)
    assert got["after"] == got["v4b"] + got["v6b"]
    assert got["second"] <= 3.0, got
    assert got["table"] == 3
    assert (
        "10.0.0.2 dev veth0 proto static"
        in lab.run(ns, "ip", "route", "show", "table", "4242").stdout
    )
    assert (got["empty"], got["v4c"], got["v6c"]) == (0, 0, 0)
    assert got["bad"].startswith("cannot add route fd00:99::/64 via veth0: "), got
    assert got["bad_state"] == ["10.251.0.0/24"]
