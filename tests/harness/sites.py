"""Helpers to run real tunnelpyd sites inside a Lab's namespaces."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.netns import WG_RUN_DIR, Lab, Proc, genkey, pubkey

TUNNELPYD = [
    sys.executable,
    "-c",
    "import sys; from tunnelpy.cli import daemon_main; sys.exit(daemon_main())",
]


@dataclass
class Site:
    ns: str
    ifname: str
    private_key: str
    port: int
    addresses: list[str]
    peers: list[str] = field(default_factory=list)  # [Peer] blocks
    proc: Proc | None = None
    conf: Path | None = None
    extra: str = ""

    @property
    def public_key(self) -> str:
        return pubkey(self.private_key)

    def peer_block(
        self,
        endpoint: str | None,
        allowed: list[str],
        *,
        name: str | None = None,
        keepalive: int | None = None,
        psk: str | None = None,
    ) -> str:
        """The [Peer] section another site uses to reach this one."""
        lines = ["[Peer]", f"Name = {name or self.ifname}", f"PublicKey = {self.public_key}"]
        if psk:
            lines.append(f"PresharedKey = {psk}")
        if endpoint:
            lines.append(f"Endpoint = {endpoint}")
        lines.append(f"AllowedIPs = {', '.join(allowed)}")
        if keepalive:
            lines.append(f"PersistentKeepalive = {keepalive}")
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        head = [
            "[Interface]",
            f"Name = {self.ifname}",
            f"PrivateKey = {self.private_key}",
            f"ListenPort = {self.port}",
            f"Address = {', '.join(self.addresses)}",
        ]
        return "\n".join(head) + "\n" + self.extra + "\n" + "\n".join(self.peers)


def new_site(lab: Lab, ns: str, port: int, addresses: list[str]) -> Site:
    return Site(
        ns=ns, ifname=lab.ifname("tp"), private_key=genkey(), port=port, addresses=addresses
    )


def linked_pair(
    lab: Lab, underlay: str, inner: str, inner6: str, extra_a: str = "", extra_b: str = ""
) -> tuple[Site, Site]:
    """Two sites joined by a veth `underlay`.1/.2 (/24), peers of each other with inner
    addresses `inner`.1/.2 (/24) and `inner6`::1/::2 (/64), `extra_*` added to [Interface]."""
    a_ns, b_ns = lab.ns
    ua, ub = f"{underlay}.1", f"{underlay}.2"
    lab.veth(a_ns, b_ns, f"{ua}/24", f"{ub}/24")
    a = new_site(lab, a_ns, 51820, [f"{inner}.1/24", f"{inner6}::1/64"])
    b = new_site(lab, b_ns, 51820, [f"{inner}.2/24", f"{inner6}::2/64"])
    a.extra, b.extra = extra_a, extra_b
    a.peers.append(
        b.peer_block(f"{ub}:51820", [f"{inner}.2/32", f"{inner6}::2/128"], name="site-b")
    )
    b.peers.append(
        a.peer_block(f"{ua}:51820", [f"{inner}.1/32", f"{inner6}::1/128"], name="site-a")
    )
    return a, b


def start(
    lab: Lab, site: Site, *, log_level: str = "debug", wait: bool = True,
    env: dict[str, str] | None = None,
) -> Proc:  # fmt: skip
    site.conf = lab.write_file(f"{site.ifname}.conf", site.text())
    site.proc = lab.popen(
        site.ns, *TUNNELPYD, "-c", str(site.conf), "--log-level", log_level,
        log_path=lab.workdir / f"tunnelpyd-{site.ifname}.log", env=env,
    )  # fmt: skip
    if wait:
        sock = WG_RUN_DIR / f"{site.ifname}.sock"
        # The control socket appears only when start-up is complete (routes, PostUp, READY).
        ctl = Path("/run/tunnelpy") / f"{site.ifname}.ctl"
        lab.wait_for(
            lambda: sock.exists() and ctl.exists() and lab.link_exists(site.ns, site.ifname)
            and "UP" in lab.host("ip", "-n", site.ns, "-br", "link", "show", site.ifname).stdout,
            15, f"tunnelpyd {site.ifname} up", watch=[site.proc],
        )  # fmt: skip
    return site.proc


def run_once(lab: Lab, ns: str, conf_text: str, name: str = "bad.conf"):
    """Run tunnelpyd to completion on a config that should be refused; returns CompletedProcess."""
    conf = lab.write_file(name, conf_text)
    return lab.run(ns, *TUNNELPYD, "-c", str(conf), check=False, timeout=30)
