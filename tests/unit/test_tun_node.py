"""A host without /dev/net/tun: one line naming the node and the fixes, for the TUN, a TAP and an
extra queue (the clone device's path is injected: ``tun.TUN_PATH``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tunnelpy.io import tun as tunmod
from tunnelpy.io.tun import Tun, TunError


@pytest.mark.parametrize("tap", [False, True])
def test_missing_node_is_named_with_the_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tap: bool
) -> None:
    node = str(tmp_path / "net" / "tun")
    monkeypatch.setattr(tunmod, "TUN_PATH", node)
    with pytest.raises(TunError) as info:
        Tun("vmt0", tap=tap)
    message = str(info.value)
    assert message.startswith(f"cannot create vmt0: {node} does not exist")
    assert "`modprobe tun`" in message and f"`mknod {node} c 10 200`" in message
    assert "\n" not in message and "Errno" not in message


def test_node_without_a_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    # 10:251 is a misc minor nobody registers here: open() finds no driver behind the node.
    node = tmp_path / "tun"
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(10, 251))
    monkeypatch.setattr(tunmod, "TUN_PATH", str(node))
    with pytest.raises(TunError, match=r"exists but no driver answers it.*`modprobe tun`"):
        Tun("vmt1")


def test_extra_queue_names_the_node_too(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Tun.__new__(Tun)
    fake.name, fake.multi_queue, fake.tap, fake.vnet_hdr = "vmt2", True, False, False
    monkeypatch.setattr(tunmod, "TUN_PATH", "/nonexistent/net/tun")
    with pytest.raises(TunError, match="cannot create vmt2: /nonexistent/net/tun does not exist"):
        fake.open_queue()
