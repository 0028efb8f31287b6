"""Tests for `tunnelpy plan` and `tunnelpy topology` (tunnelpy.topology_cli): no root needed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tunnelpy import cli, config, keys
from tunnelpy import topology_cli as tc

EXAMPLE = str(Path(__file__).resolve().parents[2] / "conf" / "lab-overlay.conf")


def write_conf(tmp_path: Path, body: str) -> str:
    path = tmp_path / "t.conf"
    path.write_text("[Interface]\nName = tp0\nTransport = vxlan\n" + body)
    return str(path)


def test_plan_command_prints_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "-c", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# tunnelpy plan for {EXAMPLE}: ")
    for command in (
        "ip netns add web",
        "ip link add br-lab type bridge",
        "ip link add v-web type veth peer name web0 netns web",
        "ip -n db link add db-mon link db0 type macvlan mode bridge",
        "ip link add vx200 type vxlan id 200 remote 192.0.2.3 dstport 8472",
        "ip link set lab0 master br-lab",
        "ip -n web addr add 10.100.0.10/24 dev web0",
        "ip link del br-lab",
        "ip netns del web   # only if tunnelpyd created it",
    ):
        assert command in out.splitlines(), command


def test_plan_command_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_conf(tmp_path, "[VLAN v]\nId = 5\n")
    assert cli.main(["plan", "-c", path]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tunnelpy: {path}:4: VLAN.Link: missing") and err.count("\n") == 1


def test_topology_text_of_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["topology", "-c", EXAMPLE]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{EXAMPLE}: tunnelpyd lab-a (plain VXLAN, UDP 4789)"
    assert "├─ br-lab  bridge  10.100.0.1/24" in out
    assert "│  ├─ lab0  tap  segment lab, VNI 100  -> site-b (VNI 100)" in out
    assert "│  ├─ v-web  veth  <=> web0 [namespace web]" in out
    assert "namespace db (created and removed by tunnelpyd; lo up):" in out
    assert "   route default via 10.100.0.1" in out
    assert "   └─ db-mon  macvlan on db0  mode bridge  10.100.0.12/24" in out
    assert any(
        "vx200  vxlan  VNI 200, port 8472" in line and "VTEP 192.0.2.3" in line for line in out
    )


def test_picture_places_links_where_the_plan_does(tmp_path: Path) -> None:
    conf = config.load(
        write_conf(
            tmp_path,
            "[Veth v]\nPeer = vp\nNamespace = a\n[MACVLAN m]\nLink = vp\nNamespace = b\n"
            "[IPVLAN i]\nLink = m\n[Bond bo]\nPorts = eth1\n[Bridge br]\nPorts = bo\n",
        )
    )
    pic = tc.build_picture(conf)
    where = {n.name: n.ns for n in pic.nodes.values()}
    # (no "tp0": plain VXLAN has no TUN, only segment TAPs)
    assert where == {"v": "", "vp": "a", "m": "b", "i": "b", "bo": "", "eth1": "", "br": ""}
    assert pic.nodes["eth1"].kind == "existing" and pic.nodes["eth1"].master == "bo"
    assert pic.nodes["bo"].master == "br"
    text = tc.render_text(pic)
    assert "   └─ eth1  existing" in text  # a port below its bond, below the bridge
    assert "└─ m  macvlan  mode bridge  (on vp in a)" in text


def test_topology_dot(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["topology", "-c", EXAMPLE, "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph topology {") and out.rstrip().endswith("}")
    assert 'label="namespace web\\nroute default via 10.100.0.1"' in out
    assert '"v-web" -> "br-lab" [label=port];' in out
    assert '"db-mon" -> "db0" [label=on, style=dashed];' in out
    assert '"db0" -> "v-db" [dir=both, style=bold, label=veth];' in out  # once per pair
    assert '"lab0" -> "site-b" [style=dotted, label="VNI 100"];' in out
    assert '"br-lab" [label="br-lab\\nbridge\\n10.100.0.1/24", shape=box];' in out


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz not installed")
def test_topology_svg(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["topology", "-c", EXAMPLE, "--format", "svg"]) == 0
    out = capsys.readouterr().out.replace("&#45;", "-")
    assert "<svg" in out and ">br-lab</text>" in out


def test_topology_svg_without_graphviz(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tc.shutil, "which", lambda _name: None)
    assert cli.main(["topology", "-c", EXAMPLE, "--format", "svg"]) == 1
    *warnings, err = capsys.readouterr().err.splitlines(keepends=True)
    assert err == (
        "tunnelpy: --format svg needs Graphviz's dot (Debian: apt-get install graphviz); "
        "--format dot prints the source to render elsewhere\n"
    )
    # the example is plain VXLAN: `Transport = vxlan is unauthenticated`, said before anything
    assert len(warnings) == 1 and "Transport = vxlan is unauthenticated" in warnings[0]


def test_committed_picture_is_current() -> None:
    """docs/lab-overlay.svg is `tunnelpy topology --format svg` of the example (regenerate with
    that command when either changes); compared by its node names, as dot versions differ."""
    svg = (Path(EXAMPLE).parents[1] / "docs" / "lab-overlay.svg").read_text().replace("&#45;", "-")
    pic = tc.build_picture(config.load(EXAMPLE))
    for name in pic.nodes:
        assert f">{name}</text>" in svg, name


def test_plan_and_topology_need_no_keys_but_check_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CI job drawing the lab has the config, not its keys (issue 20, item 5)."""
    path = tmp_path / "wg.conf"
    missing = tmp_path / "keys" / "site.key"
    path.write_text(
        f"[Interface]\nName = wg7\nPrivateKeyFile = {missing}\nListenPort = 51820\n"
        "[Peer]\nPublicKey = " + keys.public_from_private(keys.generate_private()) + "\n"
        f"PresharedKeyFile = {tmp_path / 'keys' / 'b.psk'}\nAllowedIPs = 10.0.0.2/32\n"
        "[Bridge br7]\nAddress = 10.7.0.1/24\n"
    )
    assert cli.main(["plan", "-c", str(path)]) == 0
    assert "ip link add br7 type bridge" in capsys.readouterr().out
    assert cli.main(["topology", "-c", str(path)]) == 0
    assert "br7  bridge  10.7.0.1/24" in capsys.readouterr().out
    assert cli.main(["check", "-c", str(path)]) == 1
    assert f"cannot open {missing}" in capsys.readouterr().err
    with pytest.raises(config.ConfigError, match="cannot open"):
        config.load(str(path))  # what the daemon does: the key is read
