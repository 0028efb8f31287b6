"""The kernel WireGuard selftest's topology (tools/testing/selftests/wireguard/netns.sh and
wireguard.com/netns), built from ``tunnelpyd IFNAME`` daemons.

Theory of operation
-------------------
netns.sh creates two WireGuard interfaces in ``$ns0``, moves them into ``$ns1`` and ``$ns2`` and
points them at each other over ``$ns0``'s loopback. The UDP sockets stay where the interfaces
were born, so the two "sites" share nothing but ``$ns0``'s ``lo``::

    ns1: wg1 192.168.241.1/24 fd00::1/112 ─┐     ┌─ ns2: wg2 192.168.241.2/24 fd00::2/112
                                  ns0: lo 127.0.0.1:1 / :2, [::1]:1 / :2

With a userspace implementation the daemon process is what stays in ``$ns0``: `Selftest.start`
runs ``tunnelpyd IFNAME`` (wireguard-go's command line, background mode) inside ``$ns0``, the
interface is configured with ``wg set`` alone, and ``ip link set IF netns …`` moves only the TUN.

A background daemon is nobody's child once ``tunnelpyd IFNAME`` returned, so the lab cannot
``wait()`` for it: `Selftest.start` finds it through its UAPI socket (``SO_PEERCRED`` names the
process that listens) and hands it to `Lab.adopt`, which holds a pidfd (no recycled PID is ever
signalled), stops it with SIGTERM when the lab closes (its own teardown runs and removes its
socket) and reports a survivor as a leak. The daemons log at LOG_LEVEL=verbose into the lab's
workdir, so a failure report carries their logs.

The started commands get this checkout on ``PYTHONPATH`` as an absolute path: the background
child runs with ``cwd=/``, where a relative entry would silently import another installed copy.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.netns import WG_RUN_DIR, Adopted, Lab, LabError, WgPeer, genkey, genpsk, pubkey

REPO = Path(__file__).resolve().parents[2]
TUNNELPYD_IF = [sys.executable, "-m", "tunnelpy.tunnelpyd"]
TUNNELPY = [sys.executable, "-m", "tunnelpy"]

# netns.sh's addresses and ports
V4 = ("192.168.241.1", "192.168.241.2")
V6 = ("fd00::1", "fd00::2")
PORTS = (1, 2)


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for tunnelpy commands: this checkout first on PYTHONPATH (absolute)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL", "WG_PROCESS_FOREGROUND")}
    path = [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.update(extra or {})
    return env


def uapi_pid(ifname: str) -> int | None:
    """The PID that listens on IFNAME's UAPI socket (SO_PEERCRED), or None if nothing does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(WG_RUN_DIR / f"{ifname}.sock"))
        except OSError:
            return None
        cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid = struct.unpack("3i", cred)[0]
    return pid or None


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def catches(pid: int, sig: int) -> bool:
    """Whether `pid` has a handler for `sig` (/proc's SigCgt mask). tunnelpyd installs its
    SIGTERM handler only at the end of start-up, a few ms after its UAPI socket answers; a
    SIGTERM before that kills it with the default action (no teardown, a stale socket)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


@dataclass
class Iface:
    """One tunnelpyd interface of the topology: its daemon runs in `daemon.ns`, its TUN is
    in `ns` (after the move)."""

    ifname: str
    private_key: str
    port: int
    ns: str
    daemon: Adopted

    @property
    def public_key(self) -> str:
        return pubkey(self.private_key)


class Selftest:
    """netns.sh on a 3-namespace `Lab`: ``lab.ns`` is ``[ns0, ns1, ns2]``."""

    def __init__(self, lab: Lab) -> None:
        assert len(lab.ns) == 3, "netns.sh's topology needs three namespaces"
        self.lab = lab
        self.ns0, self.ns1, self.ns2 = lab.ns
        self.psk = genpsk()

    # -- daemons -------------------------------------------------------------------------------

    def run_tunnelpyd(
        self,
        ns: str,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
        log_path: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``tunnelpyd ARGS`` in `ns`, to completion. Output is captured unless `log_path` is
        given (then both streams go there, and stdout/stderr of the result are empty)."""
        argv = ["ip", "netns", "exec", ns, *TUNNELPYD_IF, *args]
        try:
            if log_path is None:
                return subprocess.run(
                    argv, capture_output=True, text=True, timeout=timeout, env=command_env(env),
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
            with open(log_path, "ab") as log:
                res = subprocess.run(
                    argv, stdout=log, stderr=log, timeout=timeout, env=command_env(env),
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
            return subprocess.CompletedProcess(argv, res.returncode, "", "")
        except subprocess.TimeoutExpired as e:
            raise LabError(f"timed out after {timeout:g} s: {' '.join(argv)}") from e

    def adopt(self, ns: str, ifname: str, log_path: Path | None = None) -> Adopted:
        """Hand the daemon serving `ifname` to the lab (LabError if none does)."""
        pid = uapi_pid(ifname)
        argv = cmdline(pid) if pid else []
        if pid is None or ifname not in argv:
            raise LabError(f"no daemon serves {ifname} (pid {pid}: {argv})")
        return self.lab.adopt(ns, pid, argv, log_path)

    def start(self, ns: str, ifname: str) -> Adopted:
        """``tunnelpyd IFNAME`` in `ns` (background mode, LOG_LEVEL=verbose into the workdir);
        the daemon is adopted by the lab. LabError if the command did not return 0."""
        log_path = self.lab.workdir / f"tunnelpyd-{ifname}.log"
        res = self.run_tunnelpyd(ns, ifname, env={"LOG_LEVEL": "verbose"}, log_path=log_path)
        if res.returncode != 0:
            raise LabError(f"tunnelpyd {ifname} exited {res.returncode}:\n{log_path.read_text()}")
        return self.adopt(ns, ifname, log_path)

    # -- the topology --------------------------------------------------------------------------

    def configure_peers(
        self, a: Iface, b: Iface, ns_a: str, ns_b: str, *, v6: bool = False
    ) -> None:
        """netns.sh's configure_peers + endpoint step: keys, ports, PSK, allowed IPs and the
        loopback endpoints (127.0.0.1 or [::1]) by ``wg set``; then each TUN moves to its
        namespace, gets its addresses and goes up."""
        lo = "[::1]" if v6 else "127.0.0.1"
        lab = self.lab
        for me, other, addr in ((a, b, 0), (b, a, 1)):
            key = lab.write_file(f"{me.ifname}.key", me.private_key + "\n")
            peer_ip = 1 - addr
            lab.wg_set(
                self.ns0, me.ifname,
                WgPeer(other.public_key, preshared_key=self.psk, endpoint=f"{lo}:{other.port}",
                       allowed_ips=[f"{V4[peer_ip]}/32", f"{V6[peer_ip]}/128"]),
                private_key=key, listen_port=me.port,
            )  # fmt: skip
        for me, ns, addr in ((a, ns_a, 0), (b, ns_b, 1)):
            if ns != self.ns0:
                lab.host("ip", "-n", self.ns0, "link", "set", me.ifname, "netns", ns)
            me.ns = ns
            lab.add_addresses(ns, me.ifname, [f"{V4[addr]}/24", f"{V6[addr]}/112"])
            lab.host("ip", "-n", ns, "link", "set", me.ifname, "up")

    def pair(self, *, v6: bool = False) -> tuple[Iface, Iface]:
        """Two daemons started in ns0, configured with ``wg set``, TUNs moved to ns1 and ns2."""
        ifaces = []
        for port in PORTS:
            name = self.lab.ifname("wg")
            daemon = self.start(self.ns0, name)
            ifaces.append(Iface(name, genkey(), port, self.ns0, daemon))
        a, b = ifaces
        self.configure_peers(a, b, self.ns1, self.ns2, v6=v6)
        return a, b

    # -- observing -----------------------------------------------------------------------------

    def wg(self, ns: str, *args: str) -> str:
        return self.lab.run(ns, "wg", *args).stdout

    def endpoints(self, iface: Iface) -> dict[str, str]:
        """Peer public key -> endpoint, as ``wg show IF endpoints`` prints it."""
        out = self.wg(iface.ns, "show", iface.ifname, "endpoints")
        return dict(line.split("\t") for line in out.splitlines() if line)

    def transfer(self, iface: Iface) -> dict[str, tuple[int, int]]:
        """Peer public key -> (rx bytes, tx bytes), from ``wg show IF transfer``."""
        out = self.wg(iface.ns, "show", iface.ifname, "transfer")
        return {k: (int(rx), int(tx)) for k, rx, tx in (line.split() for line in out.splitlines())}

    def link_stats(self, iface: Iface) -> dict[str, int]:
        """The TUN's kernel counters (``ip -s link``): rx/tx packets and bytes, rx/tx dropped."""
        out = self.lab.host("ip", "-n", iface.ns, "-j", "-s", "link", "show", iface.ifname).stdout
        st = json.loads(out)[0]["stats64"]
        return {f"{d}_{k}": st[d][k] for d in ("rx", "tx") for k in ("packets", "bytes", "dropped")}

    def mtu(self, iface: Iface) -> int:
        out = self.lab.host("ip", "-n", iface.ns, "-j", "link", "show", iface.ifname).stdout
        return int(json.loads(out)[0]["mtu"])

    def show_json(self, iface: Iface) -> dict[str, Any]:
        """``tunnelpy show --json IF`` (the daemon's control socket: drops, mtu, peers)."""
        res = subprocess.run(
            [*TUNNELPY, "show", "--json", iface.ifname], capture_output=True, text=True,
            timeout=20, env=command_env(),
        )  # fmt: skip
        if res.returncode != 0:
            raise LabError(f"tunnelpy show --json {iface.ifname}: {res.stderr.strip()}")
        docs = json.loads(res.stdout)
        assert len(docs) == 1 and docs[0]["name"] == iface.ifname, docs
        return docs[0]

    # -- traffic -------------------------------------------------------------------------------

    def flood_ping(
        self,
        ns: str,
        addr: str,
        count: int = 10,
        *,
        size: int | None = None,
        dont_fragment: bool = False,
        deadline: float | None = 10.0,
    ) -> str:
        """netns.sh's ``ping -c COUNT -f -W 1 ADDR``: the summary line ("10 packets
        transmitted, 10 received, …") on success, AssertionError with ping's output if fewer
        than `count` replies came. With `deadline` lost echoes are resent until then (ping -w);
        without, exactly `count` are sent (for exact counters)."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-f", "-W", "1"]
        if deadline is not None:
            argv += ["-w", str(int(deadline))]
        if size is not None:
            argv += ["-s", str(size)]
        if dont_fragment:
            argv += ["-M", "do"]
        res = self.lab.run(ns, *argv, addr, check=False, timeout=(deadline or 10) + 10)
        summary = next((line for line in res.stdout.splitlines() if "transmitted" in line), "")
        got = re.search(r"(\d+) received", summary)
        # ≥: with a deadline, a burst of late replies can end the run one or two past `count`
        if res.returncode != 0 or not got or int(got.group(1)) < count:
            raise AssertionError(
                f"{' '.join(argv)} {addr} in {ns} failed (exit {res.returncode}):\n"
                f"{res.stdout}{res.stderr}"
            )
        return summary

    def wait_listening(self, ns: str, port: int, udp: bool = False, timeout: float = 10.0) -> None:
        flag = "-ulnH" if udp else "-tlnH"
        self.lab.wait_for(
            lambda: self.lab.run(ns, "ss", flag, f"sport = :{port}").stdout.strip(),
            timeout, f"a listener on port {port} in {ns}",
        )  # fmt: skip

    def iperf3(
        self,
        server_ns: str,
        client_ns: str,
        addr: str,
        *,
        udp: bool = False,
        seconds: int = 2,
        bitrate: str = "200M",
        port: int = 5201,
    ) -> dict[str, Any]:
        """netns.sh's ``iperf3 -s -1 -B ADDR`` / ``iperf3 -Z -t N -c ADDR [-u -b RATE]``; the
        client's JSON "end" section (for UDP it carries the server's loss figures)."""
        server = subprocess.Popen(
            ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", addr, "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            self.wait_listening(server_ns, port)
            argv = ["iperf3", "-Z", "-J", "-t", str(seconds), "-c", addr, "-p", str(port)]
            if udp:
                argv += ["-u", "-b", bitrate]
            res = self.lab.run(client_ns, *argv, check=False, timeout=seconds + 30)
            server.wait(15)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        try:
            doc = json.loads(res.stdout)
        except ValueError:
            doc = {}
        if res.returncode != 0 or "end" not in doc:
            raise AssertionError(
                f"iperf3 {'UDP' if udp else 'TCP'} {client_ns} -> {addr} failed (exit "
                f"{res.returncode}): {doc.get('error', res.stdout[-500:])} {res.stderr[-500:]}"
            )
        end: dict[str, Any] = doc["end"]
        return end

    def udp_listener(self, ns: str, port: int) -> subprocess.Popen[bytes]:
        """``ncat -l -u -p PORT`` in `ns` (what it receives comes out on its stdout)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "ncat", "-l", "-u", "-p", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.wait_listening(ns, port, udp=True)
        return proc

    def udp_send(self, ns: str, addr: str, port: int, data: bytes) -> None:
        """One datagram from `ns` (``ncat -u ADDR PORT <<< data``)."""
        self.lab.run(ns, "ncat", "-u", "--send-only", addr, str(port), input=data.decode())


def read_within(proc: subprocess.Popen[bytes], n: int, timeout: float) -> bytes:
    """Up to `n` bytes from `proc`'s stdout within `timeout` s (b"" if nothing came)."""
    import select

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def is_v6(addr: str) -> bool:
    return ipaddress.ip_address(addr).version == 6
