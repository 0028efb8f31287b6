"""Helpers to run real tunnelpyd sites inside a Lab's namespaces."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from netns import WG_RUN_DIR, Lab, Proc, genkey, pubkey

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
        self, endpoint: str | None, allowed: list[str], *, name: str | None = None,
        keepalive: int | None = None, psk: str | None = None,
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
    return Site(ns=ns, ifname=lab.ifname("tp"), private_key=genkey(), port=port, addresses=addresses)


def start(lab: Lab, site: Site, *, log_level: str = "debug", wait: bool = True) -> Proc:
    site.conf = lab.write_file(f"{site.ifname}.conf", site.text())
    site.proc = lab.popen(
        site.ns, *TUNNELPYD, "-c", str(site.conf), "--log-level", log_level,
        log_path=lab.workdir / f"tunnelpyd-{site.ifname}.log",
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
