"""`tunnelpy demo`: the main job on a fresh machine, in two network namespaces.

It builds an underlay (two namespaces joined by a veth pair), writes two site configs from the
embedded default below with fresh keys, starts one tunnelpyd per namespace, shows traffic crossing
the encrypted tunnel (ping v4 and v6, `wg show` against tunnelpyd's UAPI socket) and tears
everything down again, even on Ctrl-C or failure. Every name carries a random suffix so it can
run beside anything else on the host.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import keys

# The embedded default config: a point-to-point site link (also conf/site.conf, commented).
DEFAULT_SITE = """\
[Interface]
Name = {ifname}
PrivateKey = {private}
ListenPort = 51820
Address = {inner4}/24, {inner6}/64
MTU = 1420

[Peer]
Name = {peer_name}
PublicKey = {peer_public}
Endpoint = {peer_underlay}:51820
AllowedIPs = {peer_inner4}/32, {peer_inner6}/128
PersistentKeepalive = 25
"""


def _sh(*cmd: str, check: bool = True, show: bool = True, capture: bool = False) -> str:
    if show:
        print(f"  $ {' '.join(cmd)}", flush=True)
    r = subprocess.run(cmd, text=True, capture_output=capture, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {' '.join(cmd)}")
    return r.stdout if capture else ""


def _daemon_cmd(conf: str) -> list[str]:
    exe = shutil.which("tunnelpyd")
    if exe:
        return [exe, "-c", conf]
    return [sys.executable, "-c", "import sys; from tunnelpy.cli import daemon_main; sys.exit(daemon_main())", "-c", conf]


def run_demo(keep_going: bool = False) -> int:
    if os.geteuid() != 0:
        print(
            "tunnelpy demo: needs root (it creates network namespaces): "
            "sudo python3 -m tunnelpy demo, or a root shell",
            file=sys.stderr,
        )
        return 1
    sfx = secrets.token_hex(2)
    ns = {"a": f"tpdemo-a-{sfx}", "b": f"tpdemo-b-{sfx}"}
    ifn = {"a": f"tpa{sfx}", "b": f"tpb{sfx}"}  # distinct: /var/run/wireguard is host-wide
    under = {"a": "10.201.0.1", "b": "10.201.0.2"}
    inner4 = {"a": "10.200.0.1", "b": "10.200.0.2"}
    inner6 = {"a": "fd20::1", "b": "fd20::2"}
    priv = {s: keys.generate_private() for s in "ab"}
    pub = {s: keys.public_from_private(priv[s]) for s in "ab"}
    work = tempfile.mkdtemp(prefix="tunnelpy-demo-")
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    created: list[str] = []
    try:
        print("== underlay: two namespaces and a veth pair (the 'wire' between two sites)")
        for s in "ab":
            _sh("ip", "netns", "add", ns[s])
            created.append(ns[s])
        _sh("ip", "link", "add", "veth-a", "netns", ns["a"], "type", "veth", "peer", "name", "veth-b", "netns", ns["b"])
        for s in "ab":
            _sh("ip", "-n", ns[s], "addr", "add", f"{under[s]}/24", "dev", f"veth-{s}")
            _sh("ip", "-n", ns[s], "link", "set", f"veth-{s}", "up")
            _sh("ip", "-n", ns[s], "link", "set", "lo", "up")
        print("\n== two tunnelpyd sites on the embedded default config")
        for s, o in (("a", "b"), ("b", "a")):
            path = os.path.join(work, f"site-{s}.conf")
            text = DEFAULT_SITE.format(
                ifname=ifn[s], private=priv[s], inner4=inner4[s], inner6=inner6[s],
                peer_name=f"site-{o}", peer_public=pub[o], peer_underlay=under[o],
                peer_inner4=inner4[o], peer_inner6=inner6[o],
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            if s == "a":
                print("  --- site-a.conf (private key elided) ---")
                for line in text.splitlines():
                    print("  " + ("PrivateKey = <generated>" if line.startswith("PrivateKey") else line))
            logs[s] = open(os.path.join(work, f"site-{s}.log"), "w")
            cmd = ["ip", "netns", "exec", ns[s], *_daemon_cmd(path)]
            print(f"  $ ip netns exec {ns[s]} tunnelpyd -c {path}")
            procs[s] = subprocess.Popen(cmd, stdout=logs[s], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for s in "ab":
            sock = f"/var/run/wireguard/{ifn[s]}.sock"
            deadline = time.monotonic() + 15
            while not os.path.exists(sock):
                if procs[s].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tunnelpyd for site {s} did not start:\n" + open(logs[s].name).read())
                time.sleep(0.1)
        print("\n== traffic crossing the tunnel (site A -> site B's inner addresses)")
        _sh("ip", "netns", "exec", ns["a"], "ping", "-c", "3", "-i", "0.2", "-W", "2", inner4["b"])
        _sh("ip", "netns", "exec", ns["a"], "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", inner6["b"])
        _sh("ip", "netns", "exec", ns["b"], "ping", "-c", "2", "-i", "0.2", "-W", "2", inner4["a"])
        print("\n== state, read over the WireGuard UAPI socket")
        if shutil.which("wg"):
            _sh("wg", "show", ifn["a"])
        else:
            _sh(sys.executable, "-m", "tunnelpy.cli", "show", ifn["a"])
        if keep_going:
            print(f"\nlab is up: try  ip netns exec {ns['a']} ping {inner4['b']}   (Ctrl-C ends it)")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        print("\nOK: encrypted traffic crossed between the two sites")
        return 0
    except (RuntimeError, KeyboardInterrupt) as e:
        print(f"\ntunnelpy demo: {e}", file=sys.stderr)
        for s, f in logs.items():
            print(f"--- tunnelpyd site {s} log ---\n{open(f.name).read()}", file=sys.stderr)
        return 1
    finally:
        print("\n== teardown")
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in logs.values():
            f.close()
        for n in created:
            _sh("ip", "netns", "del", n, check=False)
        shutil.rmtree(work, ignore_errors=True)
