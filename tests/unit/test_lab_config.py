"""Config checks for lab overlays (issue 20): listeners on one UDP port, found before anything
changes, with file:line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunnelpy import config

ROOT = Path(__file__).resolve().parents[2]
VX = "[Interface]\nName = tp0\nTransport = vxlan\n"


def refused(text: str) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.parse(text, "t.conf")
    return str(info.value)


def test_kernel_vxlan_on_tunnelpyds_default_vxlan_port() -> None:
    message = refused(VX + "[VXLAN vx]\nVNI = 200\nRemote = 192.0.2.3\n")
    assert message.startswith("t.conf:4: VXLAN.DstPort: UDP port 4789 (DstPort's default) is ")
    assert "the port Transport = vxlan binds by default (line 1)" in message
    assert "'vx' could not bind it" in message and "8472" in message


def test_kernel_vxlan_on_the_listen_port_names_both_lines() -> None:
    message = refused(VX + "ListenPort = 5555\n[VXLAN vx]\nVNI = 2\nDstPort = 5555\n")
    assert message.startswith("t.conf:7: VXLAN.DstPort: UDP port 5555 is already tunnelpyd's")
    assert "[Interface] ListenPort (line 4)" in message


def test_wireguard_listen_port_clashes_too(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("YJQzBLYxsR6J+rjmjmcd4JpZ+DtMgtQiE0UOKY6QJmU=\n")
    key.chmod(0o600)
    text = (
        f"[Interface]\nName = wg0\nPrivateKeyFile = {key}\nListenPort = 8472\n"
        "[VXLAN vx]\nVNI = 2\nDstPort = 8472\n"
    )
    assert "UDP port 8472 is already tunnelpyd's own, [Interface] ListenPort (line 4)" in refused(
        text
    )
    # a port the kernel picks (no ListenPort) cannot collide
    config.parse(text.replace("ListenPort = 8472\n", ""), "t.conf")


@pytest.mark.parametrize(
    "body",
    [
        "Namespace = far\n",  # made in its namespace: its socket is there
        "Link = vp\n",  # made beside its parent, the veth end in namespace far
        "DstPort = 8472\n",
    ],
)
def test_no_clash_elsewhere_or_on_another_port(body: str) -> None:
    config.parse(
        VX + "[Veth v]\nPeer = vp\nNamespace = far\n[VXLAN vx]\nVNI = 2\n" + body, "t.conf"
    )


def test_moved_vxlan_keeps_its_socket_where_it_was_made() -> None:
    # Link = eth0 (here) and Namespace = far: made here, then moved; the socket stays here.
    message = refused(VX + "[VXLAN vx]\nVNI = 2\nLink = eth0\nNamespace = far\n")
    assert "UDP port 4789 (DstPort's default) is already tunnelpyd's own" in message


def test_two_kernel_vxlans_one_vni_one_port_one_namespace() -> None:
    head = VX + "ListenPort = 4790\n"
    message = refused(
        head + "[VXLAN a]\nVNI = 9\nRemote = 192.0.2.1\n[VXLAN b]\nVNI = 9\nRemote = 192.0.2.2\n"
    )
    assert message.startswith("t.conf:8: VXLAN.DstPort: VNI 9 on UDP port 4789 is already taken")
    assert "[VXLAN a] (line 5) in tunnelpyd's namespace" in message
    # one port, two VNIs: the kernel shares the socket; other family or namespace: separate
    config.parse(head + "[VXLAN a]\nVNI = 9\n[VXLAN b]\nVNI = 10\n", "t.conf")
    config.parse(
        head + "[VXLAN a]\nVNI = 9\nRemote = 192.0.2.1\n[VXLAN b]\nVNI = 9\nRemote = fd00::2\n",
        "t.conf",
    )
    config.parse(head + "[VXLAN a]\nVNI = 9\n[VXLAN b]\nVNI = 9\nNamespace = far\n", "t.conf")


def test_shipped_example_passes_check() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "tunnelpy", "check", "-c", str(ROOT / "conf" / "lab-overlay.conf")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
