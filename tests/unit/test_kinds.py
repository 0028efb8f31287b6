"""Tests for tunnelpy.netlink.kinds: every link kind is whole, the registry is what config
accepts, and a new kind is one class. No root, no kernel."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunnelpy import config
from tunnelpy import topology_cli as tc
from tunnelpy.netlink import kinds
from tunnelpy.netlink import plan as planmod

ROOT = Path(__file__).resolve().parents[2]
HEAD = "[Interface]\nName = tp0\nTransport = vxlan\n"

# Sections per kind that give every key of the kind a value other than its default.
FULL = {
    "bridge": "[Bridge br0]\nPorts = eth1\nSTP = yes\nVLANFiltering = yes\n",
    "veth": "[Veth v0]\nPeer = v0p\nPeerAddress = 10.0.0.2/24\nNamespace = a\nPeerNamespace = b\n",
    "vlan": "[VLAN v.5]\nLink = eth0\nId = 5\nProtocol = 802.1ad\n",
    "vxlan": "[VXLAN vx0]\nVNI = 7\nRemote = 192.0.2.1\nLocal = 192.0.2.2\nDstPort = 8472\n"
    "Link = eth0\n[VXLAN vx1]\nVNI = 8\nGroup = 239.0.0.1\nDstPort = 4790\n",
    "macvlan": "[MACVLAN mv0]\nLink = eth0\nMode = source\nSourceMACs = 02:00:00:00:00:01\n"
    "MACAddress = 02:00:00:00:00:02\n",
    "ipvlan": "[IPVLAN ipv0]\nLink = eth0\nMode = l2\n",
    "bond": "[Bond bond0]\nMode = 802.3ad\nMiimon = 50\nPorts = eth1, eth2\nPrimary = eth2\n",
    "team": "[Team team0]\nRunner = lacp\nPorts = eth1\n",
}
# The dataclass field each key fills (where the name differs from the key's).
FIELD = {"Ports": "port_names", "PeerAddress": "peer_addresses", "Id": "vlan_id",
         "PeerNamespace": "namespace",
         "DstPort": "dst_port", "SourceMACs": "source_macs", "MACAddress": "mac",
         "VLANFiltering": "vlan_filtering"}  # fmt: skip


def links_of(kind: str) -> tuple[config.LinkConfig, ...]:
    return config.parse(HEAD + FULL[kind], "k.conf").topology


def test_registry_is_every_topology_section_config_accepts() -> None:
    assert list(kinds.KINDS) == ["bridge", "veth", "vlan", "vxlan", "macvlan", "ipvlan", "bond",
                                 "team"]  # fmt: skip
    assert config.TOPOLOGY_SECTIONS == tuple(k.section for k in kinds.KINDS.values())
    for kind in kinds.KINDS.values():
        spec = config.SECTIONS[kind.section.lower()]
        own = [k.name for k in kind.keys]
        assert [k.name for k in spec.keys] == [*own, "Namespace", "Master", "Address", "MTU"]
        assert spec.exclusive == kind.exclusive
    # Every link dataclass belongs to exactly one kind, and nothing else parses into a link.
    classes = {c for c in vars(kinds).values() if isinstance(c, type)}
    link_classes = {c for c in classes if issubclass(c, kinds.LinkConfig) and c.KIND}
    assert link_classes == {k.config for k in kinds.KINDS.values()}
    assert set(FULL) == set(kinds.KINDS)


@pytest.mark.parametrize("name", list(kinds.KINDS))
def test_every_kind_is_whole(name: str) -> None:
    kind = kinds.of(name)
    assert kind.name == name == kind.config.KIND and kind.section and kind.module
    assert dataclasses.is_dataclass(kind.config)
    for key in kind.keys:
        assert isinstance(key.value, kinds.Choice) or key.value in config.LINK_VALUES, key
    # config: every key reaches the dataclass (a key the builder forgot would parse to nothing)
    links = links_of(name)
    assert all(type(link) is kind.config and link.kind == name for link in links)
    defaults = kind.config(name="x")
    for key in kind.keys:
        field = FIELD.get(key.name, key.name.lower())
        assert any(getattr(x, field) != getattr(defaults, field) for x in links), key.name
    link = links[0]
    # plan: the creating step renders, undoes, and becomes pyroute2 arguments and a probe
    step = kind.create_step(link, None)
    assert step.op in (planmod.LINK, planmod.TEAMD) and step.kind == name and step.what
    assert planmod.commands(step) == kind.commands(step) and step.name in kind.commands(step)[0]
    assert kind.undo_commands(step, None)
    args = kind.pyroute2_args(step, 7 if link.parent else None)
    assert args["ifname"] == step.name and args["kind"] == name
    if link.parent:
        assert args[kind.parent_attr] == 7
    probe = kind.probe_attrs(None, "tpprobe0", "tpprobe-a")
    probe_step = planmod.Step(planmod.LINK, "tpprobe0", attrs=tuple(sorted(probe.items())))
    assert kind.pyroute2_args(probe_step)["kind"] == name
    # picture
    assert isinstance(kind.detail(link), str) and isinstance(kind.far(link), list)
    assert tc._shape(name) == kind.shape


def test_unknown_kind_is_named() -> None:
    with pytest.raises(KeyError, match="unknown link kind 'wireguard'"):
        kinds.of("wireguard")
    assert not kinds.is_master("wireguard") and not kinds.ports_down(None)
    assert [k for k in kinds.KINDS if kinds.is_master(k)] == ["bridge", "bond", "team"]


def test_register_refuses_a_kind_twice() -> None:
    with pytest.raises(ValueError, match="'bridge' is already registered"):
        kinds.register(type("Again", (kinds.Bridge,), {}))
    assert kinds.KINDS["bridge"].__class__ is kinds.Bridge


TOY = textwrap.dedent(
    """
    from dataclasses import dataclass
    from typing import ClassVar

    from tunnelpy.netlink import kinds


    @dataclass(frozen=True, kw_only=True)
    class DummyConfig(kinds.LinkConfig):
        KIND: ClassVar[str] = "dummy"
        mac: bytes | None = None


    @kinds.register
    class Dummy(kinds.LinkKind):
        config = DummyConfig
        section = "Dummy"
        keys = (kinds.Key("MACAddress", "unicast_mac"),)
        module = "dummy"

        def build(self, section, ctx, common):
            return DummyConfig(**common(), mac=section.value("MACAddress"))

        def step_attrs(self, link):
            return {"mac": link.mac.hex(":") if link.mac else None}

        def detail(self, link):
            return "a toy"


    import sys

    from tunnelpy import config
    from tunnelpy import topology_cli as tc
    from tunnelpy.netlink import plan, topology

    text = sys.stdin.read()
    try:
        conf = config.parse(text, "toy.conf")
    except config.ConfigError as e:
        print("error:", e)
        raise SystemExit(0)
    built = plan.build(conf)
    print(plan.render(built), end="")
    print(tc.render_text(tc.build_picture(conf)), end="")
    step = next(s for s in built.steps if s.op == plan.LINK)
    print(topology.KIND_MODULES["dummy"], kinds.of("dummy").pyroute2_args(step))
    """
)


def run_toy(body: str) -> str:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    res = subprocess.run(
        [sys.executable, "-c", TOY], input=HEAD + body, capture_output=True, text=True,
        env=env, timeout=60, check=True,
    )  # fmt: skip
    return res.stdout


def test_a_new_kind_is_one_class() -> None:
    """A kind registered before config is imported is a section, a plan step, an ``ip`` command,
    pyroute2 arguments and a picture node, and the cross-section checks know it."""
    out = run_toy(
        "[Dummy d0]\nMACAddress = 02:00:00:00:00:07\nMTU = 1400\nMaster = br0\n"
        "Address = 10.9.0.1/24\n[Bridge br0]\n"
    )
    lines = out.splitlines()
    assert "# 1. dummy d0  [toy.conf:4]" in lines
    assert "ip link add d0 mtu 1400 address 02:00:00:00:00:07 type dummy" in lines
    assert "ip link set d0 master br0" in lines
    assert "ip addr add 10.9.0.1/24 dev d0" in lines
    assert "ip link del d0" in lines
    assert any(line.endswith("d0  dummy  a toy  10.9.0.1/24") for line in lines), out
    assert lines[-1] == (
        "dummy {'ifname': 'd0', 'kind': 'dummy', 'mtu': 1400, 'address': '02:00:00:00:00:07'}"
    )


def test_a_new_kind_gets_the_config_checks() -> None:
    assert (
        run_toy("[Dumy d0]\n")
        == "error: toy.conf:4: Dumy: unknown section (did you mean [Dummy]?)\n"
    )
    assert run_toy("[Dummy d0]\nMACAddress = ff:ff:ff:ff:ff:ff\n").startswith(
        "error: toy.conf:5: Dummy.MACAddress: ff:ff:ff:ff:ff:ff is a multicast"
    )
    assert run_toy("[Dummy d0]\n[Veth v0]\nPeer = p0\nMaster = d0\n") == (
        "error: toy.conf:7: Veth.Master: 'd0' is a dummy, expected a bridge, bond or team\n"
    )
