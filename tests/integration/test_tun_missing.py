"""A host without /dev/net/tun (issue 20, item 8): tunnelpyd stops with one line naming the node
and the fixes, and leaves nothing behind. The clone device's path is pointed at a node that does
not exist (``tun.TUN_PATH``, set before the daemon starts, in its own interpreter)."""

from __future__ import annotations

import sys

from tests.harness.netns import WG_RUN_DIR, Lab, genkey

_MISSING = (
    "import sys; import tunnelpy.io.tun as tun; tun.TUN_PATH = sys.argv.pop(1); "
    "from tunnelpy.cli import daemon_main; sys.exit(daemon_main())"
)


def test_daemon_without_the_tun_node(lab: Lab) -> None:
    ns = lab.ns[0]
    name = lab.ifname("tn")
    node = str(lab.workdir / "no-such-dir" / "tun")
    conf = lab.write_file(
        f"{name}.conf",
        f"[Interface]\nName = {name}\nPrivateKey = {genkey()}\nListenPort = 51820\n"
        "Address = 10.95.0.1/24\n",
    )
    before = lab.run(ns, "ip", "-br", "link").stdout
    res = lab.run(ns, sys.executable, "-c", _MISSING, node, "-c", str(conf), check=False)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[-1] == (
        f"tunnelpyd: cannot create {name}: {node} does not exist (the TUN/TAP clone device): "
        f"load the driver with `modprobe tun`, or create the node with `mknod {node} c 10 200`"
    ), res.stderr
    assert "Traceback" not in res.stderr
    assert lab.run(ns, "ip", "-br", "link").stdout == before
    assert not (WG_RUN_DIR / f"{name}.sock").exists()
