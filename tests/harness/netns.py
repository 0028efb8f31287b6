"""Network-namespace lab for the integration and interop tests.

A `Lab` owns a handful of uniquely named network namespaces (``tp-<6 hex>-<i>``), the veth links
between them, the daemons started inside them and the ``/var/run/wireguard/<ifname>.sock`` of every
interface name it handed out. Leaving the ``with`` block (normally, by exception or by Ctrl-C)
kills the daemons, deletes the namespaces (which deletes every link inside them) and removes the
sockets, so ``ip netns`` and ``ip -br link`` look as they did before.

Other jobs share this machine and ``/var/run/wireguard/``: every name made here carries the lab's
random tag, links are created directly inside their namespaces (never in the host namespace),
and cleanup only touches what this process created.

Everything shells out to ``ip``/``wg``/``ping`` and plain-Python socket scripts, so the harness
needs nothing beyond iproute2, iputils-ping and (for `Lab.wggo`) wireguard-go + wireguard-tools.

Typical use::

    with Lab(2) as lab:
        a, b = lab.ns
        lab.veth(a, b, ["10.9.0.1/24", "fd09::1/64"], ["10.9.0.2/24", "fd09::2/64"])
        ka, kb = genkey(), genkey()
        lab.wggo(a, lab.ifname("wg"), ka, 51820, "10.8.0.1/24",
                 WgPeer(pubkey(kb), endpoint="10.9.0.2:51820", allowed_ips=["10.8.0.2/32"]))
        ...
        assert lab.ping(a, "10.8.0.2")
        assert lab.tcp_transfer(a, b, "10.8.0.2", 1 << 20)
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ipaddress
import itertools
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

T = TypeVar("T")

NS_PREFIX = "tp-"
WG_RUN_DIR = Path("/var/run/wireguard")
IFNAMSIZ = 15  # Linux interface names: 15 characters plus NUL

Addresses = str | Sequence[str] | None


class LabError(RuntimeError):
    """A lab step failed; the message carries the command output or daemon logs."""


# ----------------------------------------------------------------------------- registry --
# What this process created, so a session-level check can tell *our* leaks from namespaces and
# sockets that concurrent jobs on the same machine own (a global `tp-*` scan would blame them).


@dataclass
class _Registry:
    netns: set[str] = field(default_factory=set)
    ifnames: set[str] = field(default_factory=set)
    procs: list[Proc] = field(default_factory=list)
    adopted: list[Adopted] = field(default_factory=list)
    labs: list[Lab] = field(default_factory=list)


REGISTRY = _Registry()


def list_netns() -> set[str]:
    """Names of all named network namespaces on the host (``ip netns list``)."""
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    # Lines look like "tp-ab12cd-0 (id: 3)" or just "name" when no id is assigned yet.
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie is dead; only its parent's wait() is missing


def leaks() -> list[str]:
    """Everything this process created that still exists: namespaces, sockets, links, processes.

    Interface names are looked up in the host namespace too: a link that escaped its namespace
    (moved out, or created before being moved) would otherwise outlive the namespace.
    """
    found: list[str] = []
    if REGISTRY.netns:
        found += [f"netns {n}" for n in sorted(REGISTRY.netns & list_netns())]
    host_links = {
        line.split()[0].split("@")[0]
        for line in subprocess.run(
            ["ip", "-br", "link"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()
        if line.strip()
    }
    for name in sorted(REGISTRY.ifnames):
        if (WG_RUN_DIR / f"{name}.sock").exists():
            found.append(f"socket {WG_RUN_DIR / name}.sock")
        if name in host_links:
            found.append(f"host link {name}")
    # Through the Popen objects, not bare PIDs: a reaped PID may already belong to someone else.
    found += [f"process {p.pid} ({' '.join(p.argv)})" for p in REGISTRY.procs if p.alive]
    found += [f"process {a.pid} ({' '.join(a.argv)})" for a in REGISTRY.adopted if a.alive]
    return found


def close_all_labs() -> None:
    # Last resort for code that never reached __exit__ (sys.exit in a helper, atexit ordering).
    for lab in list(REGISTRY.labs):
        with contextlib.suppress(Exception):
            lab.close()


atexit.register(close_all_labs)


# ----------------------------------------------------------------------------------- keys --


def genkey() -> str:
    """A WireGuard private key in ``wg genkey`` form (base64 of 32 clamped bytes)."""
    raw = X25519PrivateKey.generate().private_bytes_raw()
    return base64.b64encode(raw).decode()


def pubkey(private_key: str) -> str:
    """The public key for `private_key`, as ``wg pubkey`` prints it."""
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def genpsk() -> str:
    """A preshared key in ``wg genpsk`` form."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


# -------------------------------------------------------------------------------- helpers --


def wait_for(
    cond: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `cond` until it returns something truthy and return that; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what or cond!r}")
        time.sleep(interval)


def _as_list(addrs: Addresses) -> list[str]:
    if addrs is None:
        return []
    return [addrs] if isinstance(addrs, str) else list(addrs)


def _with_prefix(addr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """Parse an address; a bare one gets /24 (v4) or /64 (v6) so the link's peer is on-link."""
    if "/" not in addr:
        addr += "/24" if ipaddress.ip_address(addr).version == 4 else "/64"
    return ipaddress.ip_interface(addr)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Proc:
    """A process started by `Lab.popen`; `popen.pid` is the command itself (``ip netns exec``
    execs it), and it leads its own process group so helpers it forks die with it."""

    ns: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log(self, lines: int = 60) -> str:
        """The last `lines` lines of the process's combined stdout/stderr."""
        return _tail(self.log_path, lines)

    def describe(self, lines: int = 40) -> str:
        state = "running" if self.alive else f"exited {self.returncode}"
        cmd = " ".join(self.argv)
        return f"--- [{self.ns}] {cmd} (pid {self.pid}, {state}) log {self.log_path}\n{self.log(lines)}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send `sig` to the process, wait up to `timeout` s, then SIGKILL its whole group.

        Returns the exit status (negative: killed by that signal), so tests can assert a clean
        exit on SIGTERM. Safe to call twice.
        """
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        # Children the daemon forked keep the group alive after the leader is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return self.popen.returncode


@dataclass
class Adopted:
    """A process the lab did not start but must stop: a daemon that put itself in the
    background (``tunnelpyd IFNAME``, ``wireguard-go IFNAME``), so its starter has exited and it
    is nobody's child here. It is held by a pidfd, so a signal can never reach a recycled PID,
    and its exit is seen by polling that fd (there is no wait() for a non-child)."""

    ns: str
    argv: list[str]
    pid: int
    pidfd: int
    log_path: Path | None = None

    @property
    def alive(self) -> bool:
        return self.pidfd >= 0 and not select.select([self.pidfd], [], [], 0)[0]

    def wait(self, timeout: float) -> bool:
        """True once the process has exited (within `timeout` s)."""
        return self.pidfd < 0 or bool(select.select([self.pidfd], [], [], timeout)[0])

    def log(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines) if self.log_path else "(no log)"

    def describe(self, lines: int = 40) -> str:
        state = "running" if self.alive else "exited"
        return (
            f"--- [{self.ns}] {' '.join(self.argv)} (adopted pid {self.pid}, {state}) "
            f"log {self.log_path}\n{self.log(lines)}"
        )

    def send_signal(self, sig: int) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> bool:
        """`sig`, up to `timeout` s to exit, then SIGKILL; True if it exited on `sig`. Closes
        the pidfd; safe to call twice."""
        if self.pidfd < 0:
            return True
        clean = True
        if self.alive:
            self.send_signal(sig)
            if not self.wait(timeout):
                clean = False
                self.send_signal(signal.SIGKILL)
                self.wait(10)
        os.close(self.pidfd)
        self.pidfd = -1
        return clean


@dataclass(frozen=True)
class WgPeer:
    """One ``[Peer]`` for `Lab.wggo` (keys in ``wg`` base64 form; endpoint ``host:port`` or
    ``[v6]:port``)."""

    public_key: str
    allowed_ips: Sequence[str] = ()
    endpoint: str | None = None
    persistent_keepalive: int | None = None
    preshared_key: str | None = None


@dataclass
class WgGo:
    """A running wireguard-go interface made by `Lab.wggo`."""

    ns: str
    ifname: str
    public_key: str
    listen_port: int
    proc: Proc


# A tiny TCP sender/receiver, run with ``python3 -c``: nothing to install, and the same
# interpreter as the tests. Both ends print "<bytes> <sha256>" so the parent compares them.
_XFER = r"""
import hashlib, os, socket, sys
mode, t = sys.argv[1], float(sys.argv[-1])
h, n = hashlib.sha256(), 0
if mode == "recv":
    fam = socket.AF_INET6 if sys.argv[2] == "6" else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(sys.argv[3])))
    s.listen(1)
    s.settimeout(t)
    print(s.getsockname()[1], flush=True)
    c, _ = s.accept()
    c.settimeout(t)
    while b := c.recv(1 << 16):
        h.update(b)
        n += len(b)
    c.close()
else:
    addr, port, left = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    c = socket.create_connection((addr, port), timeout=t)
    while left:
        b = os.urandom(min(left, 1 << 16))
        c.sendall(b)
        h.update(b)
        n += len(b)
        left -= len(b)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)  # wait for the receiver's close: data delivered, not merely queued
    c.close()
print(n, h.hexdigest(), flush=True)
"""


class Lab:
    """N fresh network namespaces plus everything started in them; a context manager.

    `workdir` holds logs, key files and configs (mode 0700). When the lab makes its own temporary
    workdir it removes it on a clean exit and keeps it (path in the error) when the block failed.
    """

    def __init__(self, n: int = 2, *, workdir: Path | str | None = None) -> None:
        self.tag = secrets.token_hex(3)
        self.ns: list[str] = [f"{NS_PREFIX}{self.tag}-{i}" for i in range(n)]
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{NS_PREFIX}lab-{self.tag}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)  # private keys live here
        self.procs: list[Proc] = []
        self.adopted: list[Adopted] = []  # background daemons: see adopt()
        self.ifnames: set[str] = set()
        self.notes: list[str] = []  # why a ping/transfer returned False, for failure reports
        self._created: list[str] = []
        self._counter = itertools.count()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        REGISTRY.labs.append(self)
        try:
            for name in self.ns:
                # Record before creating: if `ip netns add` half-succeeds, cleanup still tries.
                self._created.append(name)
                REGISTRY.netns.add(name)
                self.host("ip", "netns", "add", name)
                self.host("ip", "-n", name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close(keep_workdir=exc_type is not None)
        except LabError:
            if exc_type is None:
                raise  # a leak is a failure of its own; don't let it hide the original error

    def close(self, keep_workdir: bool = False) -> None:
        """Kill processes, delete namespaces and sockets. Idempotent; raises LabError if
        something could not be removed (after trying everything else)."""
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        for proc in reversed(self.procs):
            try:
                proc.stop(timeout=5)
            except Exception as e:  # keep going: the namespaces must go regardless
                problems.append(f"stopping pid {proc.pid}: {e}")
        for adopted in reversed(self.adopted):
            try:
                adopted.stop(timeout=5)
            except Exception as e:
                problems.append(f"stopping adopted pid {adopted.pid}: {e}")
        for name in self._created:
            self._kill_netns_pids(name)
            for _ in range(20):
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
                if name not in list_netns():
                    break
                time.sleep(0.1)
            else:
                problems.append(f"netns {name} could not be deleted")
        for name in self.ifnames:
            with contextlib.suppress(FileNotFoundError):
                (WG_RUN_DIR / f"{name}.sock").unlink()
            with contextlib.suppress(FileNotFoundError):
                (Path("/run/tunnelpy") / f"{name}.ctl").unlink()  # a SIGKILLed daemon's
        with contextlib.suppress(ValueError):
            REGISTRY.labs.remove(self)
        if self._own_workdir and not keep_workdir and not problems:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            raise LabError("lab cleanup incomplete: " + "; ".join(problems))

    @staticmethod
    def _kill_netns_pids(name: str) -> None:
        # Safety net for processes the lab did not start itself (a daemon's helpers, a test's
        # own `ip netns exec` call): a live process would keep the namespace alive unnamed.
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split() if p.isdigit()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not any(_pid_alive(p) for p in pids), 5, what="netns processes")

    def adopt(
        self, ns: str, pid: int, argv: Sequence[str], log_path: Path | None = None
    ) -> Adopted:
        """Take charge of `pid`, a process started in `ns` that left its starter behind: it is
        stopped (SIGTERM, then SIGKILL) when the lab closes, before the namespaces go, and a
        survivor shows in `leaks()`. (The namespace sweep would SIGKILL it too, but only while
        it lives in one of the lab's namespaces, and without giving it a chance to clean up.)"""
        adopted = Adopted(ns, list(argv), pid, os.pidfd_open(pid), log_path)
        self.adopted.append(adopted)
        REGISTRY.adopted.append(adopted)
        return adopted

    # -- names and files ---------------------------------------------------------------------

    def ifname(self, base: str = "tp") -> str:
        """A new interface name unique across the host: `base` (≤ 4 chars) + lab tag + counter.

        Use it for every WireGuard-style interface: their UAPI sockets share one directory for
        all namespaces, and the lab removes ``/var/run/wireguard/<name>.sock`` on exit.
        """
        name = f"{base[:4]}{self.tag}{next(self._counter)}"
        assert len(name) <= IFNAMSIZ, name
        self.ifnames.add(name)
        REGISTRY.ifnames.add(name)
        return name

    def write_file(self, name: str, text: str, mode: int = 0o600) -> Path:
        """Write `text` to workdir/`name` with `mode` (0600 by default: keys and configs)."""
        path = self.workdir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)  # O_CREAT's mode is ignored for an existing file
            f.write(text)
        return path

    # -- commands ----------------------------------------------------------------------------

    @staticmethod
    def host(
        *cmd: str, check: bool = True, timeout: float = 30.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` in the host namespace (for ``ip -n NS ...`` and ``ip netns ...``)."""
        try:
            res = subprocess.run(
                list(cmd), capture_output=True, text=True, timeout=timeout, input=input
            )
        except subprocess.TimeoutExpired as e:
            raise LabError(f"timed out after {timeout:g} s: {' '.join(cmd)}") from e
        if check and res.returncode != 0:
            raise LabError(
                f"exit {res.returncode}: {' '.join(cmd)}\n{res.stderr.strip()}{res.stdout.strip()}"
            )
        return res

    def run(
        self,
        ns: str,
        *cmd: str,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside namespace `ns` (``ip netns exec``); LabError on failure if `check`."""
        return self.host("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout, input=input)

    def popen(
        self,
        ns: str,
        *cmd: str,
        log_path: Path | str | None = None,
        env: dict[str, str] | None = None,
        nsenter: bool = False,
    ) -> Proc:
        """Start a daemon in `ns`, stdout+stderr to `log_path` (default workdir/<cmd>-<n>.log).

        `nsenter=True` enters only the network namespace (``nsenter --net``) instead of
        ``ip netns exec`` (which adds a private mount namespace; tunnelpyd makes the namespaces
        it creates in its starter's mount namespace either way: docs/topology.md).
        The process is stopped and reaped when the lab closes.
        """
        if log_path is None:
            log_path = self.workdir / f"{Path(cmd[0]).name}-{next(self._counter)}.log"
        log_path = Path(log_path)
        prefix = (
            ["nsenter", f"--net=/run/netns/{ns}", "--"] if nsenter else ["ip", "netns", "exec", ns]
        )
        argv = [*prefix, *cmd]
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # own process group: killpg reaches its children too
            )
        proc = Proc(ns, list(cmd), log_path, popen)
        self.procs.append(proc)
        REGISTRY.procs.append(proc)
        return proc

    def wait_for(
        self,
        cond: Callable[[], T],
        timeout: float = 10.0,
        what: str = "",
        watch: Iterable[Proc] = (),
        interval: float = 0.05,
    ) -> T:
        """`wait_for`, failing at once if a process in `watch` exits, with logs in the error."""
        watched = list(watch)

        def check() -> T:
            for proc in watched:
                if not proc.alive:
                    raise LabError(f"{what or 'wait'}: process died\n{proc.describe()}")
            return cond()

        try:
            return wait_for(check, timeout, interval, what)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.diagnostics()}") from None

    # -- topology ----------------------------------------------------------------------------

    def add_addresses(self, ns: str, dev: str, addrs: Addresses) -> None:
        """Add addresses to `dev`; v6 ones with ``nodad`` so they are usable at once."""
        for a in _as_list(addrs):
            iface = _with_prefix(a)
            extra = ["nodad"] if iface.version == 6 else []
            self.host("ip", "-n", ns, "addr", "replace", str(iface), "dev", dev, *extra)

    def veth(
        self,
        ns_a: str,
        ns_b: str,
        addr_a: Addresses = None,
        addr_b: Addresses = None,
        *,
        mtu: int | None = None,
    ) -> tuple[str, str]:
        """A veth pair between `ns_a` and `ns_b`, addressed, up; returns (name_a, name_b).

        Addresses are CIDR strings (one or a list, v4 and/or v6); a bare address gets /24 or
        /64. Both ends are created directly inside their namespaces, never in the host's.
        """
        name_a, name_b = self.ifname("v"), self.ifname("v")
        self.host(
            "ip", "link", "add", name_a, "netns", ns_a,
            "type", "veth", "peer", "name", name_b, "netns", ns_b,
        )  # fmt: skip
        for ns, dev, addrs in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
            if mtu is not None:
                self.host("ip", "-n", ns, "link", "set", dev, "mtu", str(mtu))
            self.add_addresses(ns, dev, addrs)
            self.host("ip", "-n", ns, "link", "set", dev, "up")
        return name_a, name_b

    def link_exists(self, ns: str, dev: str) -> bool:
        return self.host("ip", "-n", ns, "link", "show", dev, check=False).returncode == 0

    # -- traffic -----------------------------------------------------------------------------

    def ping(self, ns: str, addr: str, count: int = 3, timeout: float = 10.0) -> bool:
        """True once `count` echo replies from `addr` arrived within `timeout` s.

        Lost packets are retried until the deadline (ping -w), so the first packets may be
        spent on a handshake.
        """
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-w", str(math.ceil(timeout))]
        res = self.run(ns, *argv, addr, check=False, timeout=timeout + 10)
        if res.returncode != 0:
            self.notes.append(f"ping {addr} from {ns} failed:\n{res.stdout}{res.stderr}")
        return res.returncode == 0

    def tcp_transfer(
        self,
        ns_src: str,
        ns_dst: str,
        dst_addr: str,
        nbytes: int,
        *,
        port: int = 0,
        timeout: float = 60.0,
    ) -> bool:
        """Send `nbytes` random bytes over TCP from `ns_src` to `dst_addr` in `ns_dst`.

        True when the receiver got exactly `nbytes` and its SHA-256 matches the sender's. On
        False, `notes` says why. `port` 0 lets the receiver pick a free one.
        """
        family = str(ipaddress.ip_address(dst_addr).version)
        py = sys.executable
        recv = subprocess.Popen(
            ["ip", "netns", "exec", ns_dst, py, "-c", _XFER, "recv", family, str(port),
             str(timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            # The receiver prints its port once listening. A fresh interpreter can take more
            # than 10 s to get there in the VM tier (Python over 9p under TCG), so it gets the
            # transfer's own timeout.
            ready, _, _ = select.select([recv.stdout], [], [], timeout)
            line = recv.stdout.readline().strip() if ready and recv.stdout else ""
            if not line.isdigit():
                recv.kill()
                _, err = recv.communicate(timeout=10)
                self.notes.append(f"tcp_transfer: receiver in {ns_dst} did not start: {err}")
                return False
            send = self.run(
                ns_src, py, "-c", _XFER, "send", dst_addr, line, str(nbytes), str(timeout),
                check=False, timeout=timeout + 10,
            )  # fmt: skip
            got, err = recv.communicate(timeout=timeout + 10)
        except (subprocess.TimeoutExpired, LabError) as e:
            self.notes.append(f"tcp_transfer to {dst_addr}: {e}")
            return False
        finally:
            if recv.poll() is None:
                recv.kill()
                recv.wait()
        sent = send.stdout.strip()
        if send.returncode != 0 or recv.returncode != 0 or got.strip() != sent:
            self.notes.append(
                f"tcp_transfer {ns_src} -> {dst_addr}: sender exit {send.returncode} "
                f"'{sent}' {send.stderr.strip()[-500:]} | receiver exit {recv.returncode} "
                f"'{got.strip()}' {err.strip()[-500:]}"
            )
            return False
        return sent.split()[0] == str(nbytes)

    # -- WireGuard ---------------------------------------------------------------------------

    def wg_show(self, ns: str, ifname: str, what: str = "dump") -> str:
        """``wg show IFNAME WHAT`` inside `ns` (works for wireguard-go and tunnelpyd alike)."""
        return self.run(ns, "wg", "show", ifname, what).stdout

    def latest_handshakes(self, ns: str, ifname: str) -> dict[str, int]:
        """Peer public key -> unix time of the last handshake (0: none yet)."""
        out = self.wg_show(ns, ifname, "latest-handshakes")
        return {k: int(v) for k, v in (line.split() for line in out.splitlines() if line)}

    def wg_set(self, ns: str, ifname: str, *peers: WgPeer, **opts: str | int | Path) -> None:
        """``wg set`` with interface options (``private_key=Path``, ``listen_port=…``;
        underscores become dashes) and peers; keys are passed through 0600 files."""
        argv = ["wg", "set", ifname]
        for k, v in opts.items():
            argv += [k.replace("_", "-"), str(v)]
        for peer in peers:
            argv += ["peer", peer.public_key]
            if peer.preshared_key:
                psk = self.write_file(f"{ifname}-{next(self._counter)}.psk", peer.preshared_key)
                argv += ["preshared-key", str(psk)]
            if peer.endpoint:
                argv += ["endpoint", peer.endpoint]
            if peer.persistent_keepalive is not None:
                argv += ["persistent-keepalive", str(peer.persistent_keepalive)]
            if peer.allowed_ips:
                argv += ["allowed-ips", ",".join(peer.allowed_ips)]
        self.run(ns, *argv)

    def wggo(
        self,
        ns: str,
        ifname: str,
        private_key: str,
        listen_port: int,
        address: Addresses,
        *peers: WgPeer,
        mtu: int = 1420,
        timeout: float = 10.0,
    ) -> WgGo:
        """Start ``wireguard-go -f IFNAME`` in `ns` and configure it like wg-quick would:
        key, port and peers via ``wg set``, addresses, MTU, up, a route per AllowedIPs entry.

        `ifname` must be unique on the host (use `ifname()`): the UAPI socket directory is
        shared by every namespace.
        """
        if len(ifname) > IFNAMSIZ:
            raise ValueError(f"interface name {ifname!r} longer than {IFNAMSIZ}")
        self.ifnames.add(ifname)
        REGISTRY.ifnames.add(ifname)
        sock = WG_RUN_DIR / f"{ifname}.sock"
        if sock.exists():
            raise LabError(f"{sock} already exists: another wireguard-go owns {ifname}")
        keyfile = self.write_file(f"{ifname}.key", private_key + "\n")
        proc = self.popen(
            ns, "wireguard-go", "-f", ifname,
            log_path=self.workdir / f"wireguard-go-{ifname}.log",
            # Newer wireguard-go refuses to run when the kernel module exists unless told to.
            env={"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "debug"},
        )  # fmt: skip
        self.wait_for(
            lambda: sock.exists() and self.link_exists(ns, ifname),
            timeout, f"wireguard-go {ifname} socket and link", watch=[proc],
        )  # fmt: skip
        self.wg_set(ns, ifname, *peers, private_key=keyfile, listen_port=listen_port)
        self.add_addresses(ns, ifname, address)
        self.host("ip", "-n", ns, "link", "set", ifname, "mtu", str(mtu), "up")
        for peer in peers:
            for prefix in peer.allowed_ips:
                net = ipaddress.ip_network(prefix, strict=False)
                self.host("ip", "-n", ns, "route", "replace", str(net), "dev", ifname)
        return WgGo(ns, ifname, pubkey(private_key), listen_port, proc)

    # -- reporting ---------------------------------------------------------------------------

    def diagnostics(self, log_lines: int = 40) -> str:
        """Process logs, notes and per-namespace addresses, routes and ``wg show`` output, for
        a failure message. Private keys stay hidden (``wg show`` prints "(hidden)")."""
        parts = [p.describe(log_lines) for p in self.procs]
        parts += [a.describe(log_lines) for a in self.adopted]
        parts += [f"--- note: {n}" for n in self.notes]
        existing = list_netns()
        has_wg = shutil.which("wg") is not None
        for ns in self.ns:
            if ns not in existing:
                continue
            for cmd in (["ip", "-br", "addr"], ["ip", "route"], ["ip", "-6", "route"]):
                res = self.run(ns, *cmd, check=False, timeout=10)
                parts.append(f"--- [{ns}] {' '.join(cmd)}\n{res.stdout}{res.stderr}")
            for name in sorted(self.ifnames):
                if has_wg and (WG_RUN_DIR / f"{name}.sock").exists() and self.link_exists(ns, name):
                    res = self.run(ns, "wg", "show", name, check=False, timeout=10)
                    parts.append(f"--- [{ns}] wg show {name}\n{res.stdout}{res.stderr}")
        return "\n".join(parts)
