"""Apply and undo a topology plan through pyroute2, validating against the kernel first.

Theory of operation
-------------------
``Topology(conf)`` holds the pure ``plan.Plan`` for a config and runs it against the kernel with
synchronous pyroute2 ``IPRoute`` sockets, one per namespace (``IPRoute(netns=NAME, flags=0)``:
flags=0 so a missing namespace is an error, never silently created). Every method blocks; the
daemon calls them from an executor thread (pyroute2's AsyncIPRoute does not work under uvloop).

The life cycle the daemon drives:

``cleanup_leftovers()``  at start-up, before anything else: if ``/run/tunnelpy/<ifname>.state``
    names a dead daemon, undo what it recorded (a tunnelpyd killed with SIGKILL left it). A
    state file of a daemon that still runs is an error.
``validate()``  read-only: every (kind, mode) the plan needs is created once in a private,
    throw-away network namespace (a forked child that ``unshare(CLONE_NEWNET)``s), so "this kernel
    has no 8021q/ipvlan/bonding/team" is one clear error before anything changes; then every name
    to be created must be free, every pre-existing link it uses must exist, masters must be
    masters, passthru parents must have no macvlans yet, and teamd must be installed for a team.
``apply()``  performs the steps in order. Before each step that creates or changes something it
    writes an undo record to the state file (atomically: write a temporary file, fsync, rename),
    marked pending; after the step it fills in what it learnt (the new ifindex) and clears the
    mark; if the step fails the record is dropped. On any failure the steps done so far are
    undone and ``TopologyError`` says which step (file:line and the equivalent command) failed.
``undo()``  runs the records in reverse and removes the state file. It never raises: it returns
    the problems it met. Links are deleted only when tunnelpyd created them (and, when the
    record knows it, only if the ifindex still matches); pre-existing ports get their old
    master and up/down state back; namespaces are removed only if tunnelpyd created them.

Undo records (JSON objects in the state file's ``undo`` list):
``netns-del`` {name}; ``link-del`` {name, ns: [candidates], ifindex}; ``teamd-kill`` {name, ns};
``restore-port`` {name, ns, ifindex, master, up}; ``restore-up`` {name, ns, ifindex, up};
``unslave`` {name, ns, ifindex} (a port made here); ``addr-del`` {name, ns, ifindex, address};
``qdisc-del`` {name, ns, ifindex}; ``route-del`` {name: prefix, ns, via};
``sysctl-restore`` {name: namespace, values: {key: old value}}.
A namespace value of null means tunnelpyd's own namespace (``netns=`` of the Topology). Every
record also names the step it undoes (``step``: ``step_key``), so a reload can undo exactly the
steps that left the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyroute2.config
from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWQDISC
from pyroute2.netlink.rtnl.tcmsg import sched_netem, tcmsg

from tunnelpy.config import Config

from . import kinds, labkeys
from . import plan as planmod
from .plan import Plan, Step, step_key

# IPRoute(netns=...) forks a helper that makes the socket inside the namespace, and stops it
# with SIGTERM if it lingers. A helper that inherited a Python SIGTERM handler (the daemon's, or a
# test harness turning SIGTERM into KeyboardInterrupt) would run that handler instead of dying:
# an exception there escapes the helper's os._exit and the child carries on as a second copy of
# the caller (seen here: a pytest copy tearing down the test's namespaces mid-test). This makes
# pyroute2 reset SIGINT/SIGTERM to their defaults in its helpers.
pyroute2.config.disable_mp_signal = True

STATE_DIR = "/run/tunnelpy"
STATE_VERSION = 1
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

# The module a kind lives in, for "the kernel lacks it" messages.
KIND_MODULES = {name: kind.module for name, kind in kinds.KINDS.items()}
KIND_MODULES["qdisc:netem"] = labkeys.NETEM_MODULE
PROBE_PARENT = "tpprobe-a"  # an Ethernet link in the probe's namespace, for kinds with a parent
TC_H_ROOT = 0xFFFFFFFF


class TopologyError(Exception):
    """A one-line reason the topology cannot be validated, applied or cleaned up."""


# --------------------------------------------------------------------------------------------
# Small netlink helpers


def _err(e: BaseException) -> str:
    if isinstance(e, NetlinkError):
        return f"{os.strerror(e.code)} (errno {e.code})"
    if isinstance(e, OSError) and e.errno:
        return f"{os.strerror(e.errno)} (errno {e.errno})"
    return str(e) or type(e).__name__


# Named namespaces are bind mounts on /run/netns/NAME, and a mount lives in a mount namespace.
# A tunnelpyd started by `ip netns exec` (which gives it a private mount namespace whose mounts
# are slaves of the caller's) or by systemd with ProtectSystem= & co. (the same, /run read-only)
# would make its namespaces where nobody else sees them. So when the daemon's mount namespace is
# not the one it was started from -- its nearest ancestor's in another mount namespace: the shell
# that ran `ip netns exec`, or systemd -- `ip netns add/del` runs in that one (nsenter --mount),
# and the namespace is visible and usable there (`ip netns exec NAME`). The daemon itself reaches
# it through propagation (its /run/netns is a slave of the host's) or else through that mount
# namespace's root. Both are opened once, at start-up while the ancestor is surely alive
# (CAP_SYS_PTRACE to open another process's /proc/PID/ns when it holds more capabilities),
# and entered later with the held descriptors (setns: CAP_SYS_ADMIN and CAP_SYS_CHROOT).


@dataclass
class HostMounts:
    """The mount namespace tunnelpyd was started from, when it is not its own."""

    pid: int  # the ancestor it was found in (for messages)
    ns_fd: int  # its mount namespace
    root_fd: int  # its root directory (O_PATH): paths in that mount namespace

    @property
    def nsenter(self) -> list[str]:
        # the child gets the descriptor (pass_fds) under the same number
        return ["nsenter", f"--mount=/proc/self/fd/{self.ns_fd}", "--"]

    def path(self, inside: str) -> str:
        """``inside`` (absolute) as seen from that mount namespace, for us and our children."""
        return f"/proc/{os.getpid()}/fd/{self.root_fd}{inside}"


_HOST: list[HostMounts | None] = []  # found once per process: [] = not looked for yet


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def host_mounts() -> HostMounts | None:
    """The mount namespace we were started from if it is not ours, else None (also when no
    ancestor's can be opened: then ours is all there is, as before)."""
    if _HOST:
        return _HOST[0]
    found: HostMounts | None = None
    try:
        ours = os.stat("/proc/self/ns/mnt")
        pid = os.getppid()
        for _ in range(256):  # ancestors, up to PID 1
            if pid <= 0:
                break
            theirs = os.stat(f"/proc/{pid}/ns/mnt")
            if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
                ns_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
                root_fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                found = HostMounts(pid, ns_fd, root_fd)
                break
            if pid == 1:
                break
            pid = _ppid(pid)
    except OSError:
        found = None  # an ancestor we may not look at: stay in our own mount namespace
    _HOST.append(found)
    return found


def private_mounts() -> bool:
    """Whether namespaces are made in another mount namespace than ours (see above)."""
    return host_mounts() is not None


def _known_host() -> HostMounts | None:
    """``host_mounts()`` if it was looked for already, else None: only a daemon whose config
    names namespaces holds the other mount namespace open (its root is writable there, past
    the unit's ProtectSystem=, so nothing else should hold it)."""
    return _HOST[0] if _HOST else None


def _is_netns(path: str) -> bool:
    """Whether ``path`` is a namespace's bind mount (nsfs), not just the file it is mounted on
    (which a mount namespace that missed the mount still sees: the directory is shared)."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def netns_path(name: str) -> str:
    """Where this process opens namespace ``name``: /run/netns/NAME, or the host's through its
    root when the mount did not propagate into our mount namespace."""
    path = f"{NETNS_DIR}/{name}"
    host = _known_host()
    if host is None or _is_netns(path):
        return path
    theirs = host.path(f"{NETNS_DIR}/{name}")
    return theirs if _is_netns(theirs) else path


def list_netns() -> set[str]:
    """Named namespaces: ours and, from a private mount namespace, the host's."""
    host = _known_host()
    found: set[str] = set()
    for directory in (NETNS_DIR, *((host.path(NETNS_DIR),) if host else ())):
        try:
            found.update(os.listdir(directory))
        except OSError:  # none yet
            continue
    return found


def _link_info(ipr: IPRoute, name: str) -> dict[str, Any] | None:
    """ifindex, kind, master (ifindex or 0), up, parent (ifindex or 0) of ``name``, or None."""
    try:
        links = ipr.get_links(ifname=name)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise
    if not links:
        return None
    msg = links[0]
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return {
        "ifindex": msg["index"],
        "kind": kind,
        "master": msg.get_attr("IFLA_MASTER") or 0,
        "up": bool(msg["flags"] & 1),
        "parent": msg.get_attr("IFLA_LINK") or 0,
    }


def _run_on_host(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` in the mount namespace namespaces are made in (ours, or the host's)."""
    host = host_mounts()
    if host is None:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return subprocess.run(
        [*host.nsenter, *argv], capture_output=True, text=True, timeout=30,
        pass_fds=(host.ns_fd,),
    )  # fmt: skip


def _ip_netns(verb: str, name: str) -> None:
    """``ip netns add|del NAME``: exactly the command ``tunnelpy plan`` shows, with iproute2's
    own handling of the /run/netns mount, in the host's mount namespace (see above)."""
    host = host_mounts()
    res = _run_on_host(["ip", "netns", verb, name])
    if res.returncode != 0:
        where = f" (in the mount namespace of pid {host.pid}, tunnelpyd's starter)" if host else ""
        raise TopologyError(f"ip netns {verb} {name}{where}: {res.stderr.strip()}")
    if verb == "add" and host is not None and not _is_netns(netns_path(name)):
        raise TopologyError(
            f"ip netns add {name}: made in the mount namespace of pid {host.pid}, but this "
            f"process cannot open it there nor in its own {NETNS_DIR}"
        )


@contextlib.contextmanager
def _ns_fd(name: str) -> Iterator[int]:
    """An open fd of namespace ``name`` for IFLA_NET_NS_FD, held until the call returns (pyroute2
    would also take the name; owning the fd keeps its lifetime plain to see)."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


CAP_SYS_ADMIN = 21
_ON_DEVICE = (planmod.MASTER, planmod.UP, planmod.QDISC)  # steps that act on an existing device


def _has_capability(cap: int) -> bool:
    """Whether capability ``cap`` is in this process's effective set."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError):
        pass
    return True  # cannot tell: let the step itself fail, with its own message


def _add_netem(ipr: IPRoute, index: int, step: Step) -> None:
    """``tc qdisc add dev INDEX root handle 1: netem ...``, the message built here: pyroute2's
    ``tc()`` also turns a ``rate`` argument into a top-level TCA_RATE (the rate estimator's
    attribute), which the kernel refuses (ERANGE)."""
    msg = tcmsg()
    msg["index"], msg["handle"], msg["parent"] = index, 0x10000, TC_H_ROOT
    options = sched_netem.get_parameters(labkeys.pyroute2_netem(step))
    msg["attrs"] = [["TCA_KIND", "netem"], ["TCA_OPTIONS", options]]
    msg["header"]["type"] = RTM_NEWQDISC
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    # (the batch call: 0.9.7's synchronous nlm_request() fails on a status key of its own)
    ipr.nlm_request_batch([msg])


def _pid_starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of stat(5), counted after the ")"


def _link_kwargs(step: Step, ipr: IPRoute) -> dict[str, Any]:
    """pyroute2 ``link("add", ...)`` arguments for a LINK step (its parent looked up here)."""
    parent, index = step.get("link"), None
    if parent is not None:
        found = ipr.link_lookup(ifname=parent)
        if not found:
            raise TopologyError(f"parent {parent} does not exist")
        index = found[0]
    return kinds.of(step.kind).pyroute2_args(step, index)


# --------------------------------------------------------------------------------------------
# The kind probe: a private network namespace in a forked child


def _probe_one(ipr: IPRoute, kind: str, mode: str | None, i: int) -> None:
    if kind.startswith("qdisc:"):  # a qdisc (netem) as the probe parent's root qdisc
        index = ipr.link_lookup(ifname=PROBE_PARENT)[0]
        ipr.tc("add", kind.removeprefix("qdisc:"), index=index, handle="1:", delay=1000)
        ipr.tc("del", index=index, handle="1:", parent=TC_H_ROOT)
        return
    name = f"tpprobe{i}"
    attrs = kinds.of(kind).probe_attrs(mode, name, PROBE_PARENT)
    step = Step(planmod.LINK, name, attrs=tuple(sorted(attrs.items())))
    ipr.link("add", **_link_kwargs(step, ipr))
    ipr.link("del", ifname=name)


def _probe_here(wanted: list[tuple[str, str | None]]) -> dict[str, str]:
    """In a fresh process: enter a new network namespace and try each (kind, mode)."""
    failures: dict[str, str] = {}
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return {"*\0": f"cannot probe the kernel: unshare: {os.strerror(ctypes.get_errno())}"}
    with IPRoute() as ipr:
        ipr.link("add", ifname=PROBE_PARENT, kind="veth", peer={"ifname": "tpprobe-b"})
        for i, (kind, mode) in enumerate(wanted):
            try:
                _probe_one(ipr, kind, mode, i)
            except Exception as e:  # noqa: BLE001 - reported to the parent
                failures[f"{kind}\0{mode or ''}"] = _err(e)
    return failures


# (kind, mode) pairs this kernel has created once: a kernel does not lose a link kind while it
# runs, so only the unknown ones are probed again (each probe is a fresh interpreter).
_SUPPORTED: set[tuple[str, str | None]] = set()

_PROBE_MAIN = (
    "import json, sys; from tunnelpy.netlink.topology import _probe_here; "
    "print(json.dumps(_probe_here([tuple(k) for k in json.loads(sys.argv[1])])))"
)


def probe_kinds(kinds: set[tuple[str, str | None]]) -> dict[tuple[str, str | None], str]:
    """Which (kind, mode) pairs this kernel cannot create, with the reason. Changes nothing:
    the probes run in a new interpreter inside a new, unnamed network namespace that vanishes
    with it. (Not a fork: the daemon calls this from a thread, and a forked child of a threaded
    process can deadlock on a lock another thread held.)"""
    wanted = sorted(kinds - _SUPPORTED, key=lambda k: (k[0], k[1] or ""))
    if not wanted:
        return {}
    argv = [sys.executable, "-c", _PROBE_MAIN, json.dumps(wanted)]
    # The child imports this very package, installed or not.
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    reason = ""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        raw = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
        raw, res = None, None
        reason = _err(e)
    if raw is None:
        if res is not None:
            reason = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1]
        return {("*", None): f"cannot probe the kernel: {reason}"}
    out: dict[tuple[str, str | None], str] = {}
    for key, why in raw.items():
        kind, mode = key.split("\0")
        out[(kind, mode or None)] = why
    _SUPPORTED.update(k for k in wanted if k not in out)
    return out


# --------------------------------------------------------------------------------------------
# The state file


class StateFile:
    """``/run/tunnelpy/<ifname>.state``: who applied the topology and how to undo it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def begin(self, interface: str, netns: str | None) -> None:
        pid = os.getpid()
        self.data = {
            "version": STATE_VERSION,
            "interface": interface,
            "pid": pid,
            "starttime": _pid_starttime(pid),
            "netns": netns,
            "undo": [],
        }
        self.write()

    def read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            raise TopologyError(
                f"{self.path} is not a tunnelpy state file (bad JSON); remove it by hand after "
                "checking what it holds"
            ) from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise TopologyError(
                f"{self.path}: unknown state file version, expected {STATE_VERSION}"
            )
        return data

    def write(self) -> None:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, json.dumps(self.data, indent=1).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @property
    def undo(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.data.setdefault("undo", [])
        return records


# --------------------------------------------------------------------------------------------
# The topology


class Topology:
    """A config's topology: validate, apply, undo, and clean up after a crashed predecessor.

    ``netns``: the namespace that stands for "tunnelpyd's own" (None: the caller's, which is
    what the daemon uses; tests pass a lab namespace). ``state_dir``: where the state file goes.
    """

    def __init__(
        self,
        conf: Config | Plan,
        *,
        state_dir: str | os.PathLike[str] = STATE_DIR,
        netns: str | None = None,
    ) -> None:
        self.plan = conf if isinstance(conf, Plan) else planmod.build(conf)
        self.netns = netns
        self.state = StateFile(Path(state_dir) / f"{self.plan.interface}.state")
        self._ipr: dict[str | None, IPRoute] = {}
        self.applied = False
        self._step: Step | None = None  # the step being applied (its records name it)
        if self.plan.namespaces:
            host_mounts()  # found now, while the process that started us surely still runs

    # -- sockets -------------------------------------------------------------------------

    def _sock(self, ns: str | None) -> IPRoute:
        """The IPRoute for namespace ``ns`` (None: tunnelpyd's own), opened once."""
        if ns not in self._ipr:
            target = ns if ns is not None else self.netns
            self._ipr[ns] = (
                IPRoute() if target is None else IPRoute(netns=netns_path(target), flags=0)
            )
        return self._ipr[ns]

    def _close_sock(self, ns: str | None) -> None:
        ipr = self._ipr.pop(ns, None)
        if ipr is not None:
            with contextlib.suppress(Exception):
                ipr.close()

    def close(self) -> None:
        """Close the netlink sockets (an open socket keeps a deleted namespace alive)."""
        for ns in list(self._ipr):
            self._close_sock(ns)

    def _reachable(self, ns: str | None) -> bool:
        """Whether namespace ``ns`` (None: tunnelpyd's own) still exists."""
        target = ns if ns is not None else self.netns
        return target is None or target in list_netns()

    def _nsenter(self, ns: str | None) -> list[str]:
        target = ns if ns is not None else self.netns
        return [] if target is None else ["nsenter", f"--net={netns_path(target)}", "--"]

    # -- validation ----------------------------------------------------------------------

    def validate(self) -> None:
        """Raise TopologyError (one line, every problem) unless the plan can be applied."""
        self._check(self.plan, self.plan.steps, frozenset())

    def _check(
        self, plan: Plan, steps: tuple[Step, ...], freed: frozenset[str], probe: bool = True
    ) -> None:
        """Validate ``steps`` of ``plan`` (all of them at start-up; a reload's new ones), with
        the links ``freed`` counted as free (a reload deletes them first). ``probe=False``: no
        kind probe (it needs CAP_SYS_ADMIN for its throw-away namespace; a kind the kernel
        lacks then fails at its step, and the reload is rolled back and refused)."""
        problems: list[str] = []
        where = {step.name: step for step in steps if step.op in (planmod.LINK, planmod.TEAMD)}
        missing = probe_kinds(planmod.kinds_of(steps)) if probe else {}
        for (kind, mode), reason in sorted(missing.items(), key=lambda x: (x[0][0], x[0][1] or "")):
            if kind == "*":
                problems.append(reason)
                continue
            users = [
                s
                for s in where.values()
                if s.get("kind") == kind and (mode is None or s.get("mode") == mode)
            ]
            module = KIND_MODULES.get(kind, kind)
            if kind.startswith("qdisc:"):
                qdisc = kind.removeprefix("qdisc:")
                users = [s for s in steps if s.op == planmod.QDISC and s.get("kind") == qdisc]
                at = f"{plan.path}:{users[0].line}: " if users else ""
                problems.append(
                    f"{at}this kernel has no {qdisc} qdisc ({reason}; is the {module} module "
                    f"available?), used by [Netem {'], ['.join(s.name for s in users)}]"
                )
                continue
            at = f"{plan.path}:{users[0].line}: " if users else ""
            label = f"{kind} mode {mode}" if mode else kind
            problems.append(
                f"{at}this kernel cannot create {label} links ({reason}; is the {module} "
                f"module available?), used by {', '.join(s.name for s in users)}"
            )
        if any(step.op == planmod.TEAMD for step in steps):
            for tool in ("teamd",):
                if shutil.which(tool) is None:
                    line = next(s.line for s in steps if s.op == planmod.TEAMD)
                    problems.append(
                        f"{plan.path}:{line}: [Team] needs {tool} (Debian: apt-get install "
                        "libteam-utils), and it is not installed"
                    )
        existing_ns = list_netns()
        if self.netns is not None and self.netns not in existing_ns:
            problems.append(f"namespace {self.netns} (tunnelpyd's own) does not exist")
        new_ns = {s.name for s in steps if s.op == planmod.NETNS and s.name not in existing_ns}
        if new_ns and not _has_capability(CAP_SYS_ADMIN):
            problems.append(
                f"{plan.path}:{min(s.line for s in steps if s.name in new_ns)}: making "
                f"namespace {', '.join(sorted(new_ns))} needs CAP_SYS_ADMIN, which this tunnelpyd "
                "does not hold (once up it keeps it only if its config named a namespace, and "
                "never as User): restart it"
            )
        try:
            self._validate_links(plan, steps, new_ns, freed, problems)
        finally:
            self.close()
        if problems:
            raise TopologyError("; ".join(problems) + "; nothing was changed")

    def _validate_links(
        self,
        plan: Plan,
        steps: tuple[Step, ...],
        new_ns: set[str],
        freed: frozenset[str],
        problems: list[str],
    ) -> None:
        lines = {s.name: s.line for s in plan.steps}
        made = {s.name for s in steps if s.op in (planmod.LINK, planmod.TEAMD)}
        made |= {s.get("peer") for s in steps if s.op == planmod.LINK and s.get("peer")}
        # Links to be made: their names must be free where they are made and where they end up.
        places: list[tuple[str | None, str]] = [(ns, n) for ns, n in plan.created if n in made]
        for step in steps:
            if step.op == planmod.LINK:
                places.append((step.ns, step.name))
        for ns, name in dict.fromkeys(places):
            if ns in new_ns or name in freed:
                continue
            if _link_info(self._sock(ns), name) is not None:
                where = f" in namespace {ns}" if ns else ""
                problems.append(
                    f"{plan.path}:{lines.get(name, 0)}: {name} already exists{where} and tunnelpyd "
                    "did not create it; rename the section or delete that link"
                )
        # Links it only uses must exist; masters must be masters.
        masters = {s.get("master") for s in steps if s.op == planmod.MASTER}
        used = {s.name for s in steps if s.op in (planmod.MASTER, planmod.UP)}
        used |= masters | {s.get("link") for s in steps if s.op == planmod.LINK}
        for ns, name, line in plan.existing:
            if name not in used:
                continue
            where = f" in namespace {ns}" if ns else ""
            if ns in new_ns:
                problems.append(
                    f"{plan.path}:{line}: {name} would have to exist{where}, but that namespace "
                    "is created by tunnelpyd"
                )
                continue
            info = _link_info(self._sock(ns), name)
            if info is None:
                problems.append(
                    f"{plan.path}:{line}: {name} does not exist{where} (it is not created by "
                    "this file, so it must exist already)"
                )
            elif name in masters and not kinds.is_master(info["kind"]):
                problems.append(
                    f"{plan.path}:{line}: {name} is a {info['kind'] or 'plain'} link, expected a "
                    "bridge, bond or team as master"
                )
        # A sole child (macvlan passthru): the kernel refuses a parent that has rivals already.
        for step in steps:
            sole = kinds.of(step.kind).sole_child(step) if step.op == planmod.LINK else None
            if sole is None:
                continue
            if step.ns in new_ns or step.get("link") in {n for _, n in plan.created}:
                continue
            ipr = self._sock(step.ns)
            parent = _link_info(ipr, step.get("link"))
            if parent is None:
                continue
            for msg in ipr.get_links():
                info = msg.get_attr("IFLA_LINKINFO")
                kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
                if (
                    kind in kinds.of(step.kind).rivals
                    and msg.get_attr("IFLA_LINK") == parent["ifindex"]
                ):
                    problems.append(
                        f"{plan.path}:{step.line}: {step.get('link')} already has the {kind} "
                        f"{msg.get_attr('IFLA_IFNAME')}, and {sole} needs a parent to itself"
                    )
                    break

    # -- crash leftovers -----------------------------------------------------------------

    def cleanup_leftovers(self) -> list[str]:
        """Undo what a dead tunnelpyd with the same interface name recorded; what was undone.

        Raises TopologyError if that daemon still runs (its state file is live)."""
        data = self.state.read()
        if data is None:
            return []
        pid = data.get("pid")
        if isinstance(pid, int) and pid != os.getpid():
            start = _pid_starttime(pid)
            if start is not None and start == data.get("starttime"):
                raise TopologyError(
                    f"{self.state.path}: tunnelpyd pid {pid} still runs with this topology; "
                    "stop it first"
                )
        self.state.data = data
        done, problems = self._run_undo()
        if problems:
            done += [f"could not undo: {p}" for p in problems]
        return done

    # -- apply ---------------------------------------------------------------------------

    def apply(self) -> None:
        """Perform every step; on failure undo what was done and raise TopologyError.
        A config without topology sections (every plain wg0.conf) writes no state file."""
        if not self.plan.steps:
            return
        self.state.begin(self.plan.interface, self.netns)
        self.applied = True
        step: Step | None = None
        try:
            for step in self.plan.steps:
                self._do(step)
        except Exception as e:
            assert step is not None
            _, problems = self._run_undo()
            self.applied = False
            cmd = " && ".join(planmod.commands(step))
            also = f" (and undoing: {'; '.join(problems)})" if problems else ""
            raise TopologyError(
                f"{self.plan.path}:{step.line}: {step.what or step.op} failed: {_err(e)} "
                f"[{cmd}]; every step before it was undone{also}"
            ) from None
        finally:
            self.close()

    # -- reload ----------------------------------------------------------------------------

    def prepare_change(
        self, conf: Config, recreated: frozenset[str] = frozenset()
    ) -> planmod.PlanDiff:
        """What a reload to ``conf`` changes (``plan.diff``), validated like a start-up but only
        for the steps it applies: raises TopologyError (nothing changed) if they cannot be.
        ``recreated``: segment TAPs the reload makes (again)."""
        diff = planmod.diff(self.plan, planmod.build(conf), recreated)
        if diff.apply:
            freed = frozenset(
                name
                for s in diff.undone
                if s.op in (planmod.LINK, planmod.TEAMD)
                for name in (s.name, s.get("peer"))
                if name
            )
            self._check(diff.new, diff.apply, freed, _has_capability(CAP_SYS_ADMIN))
        return diff

    def change(
        self, diff: planmod.PlanDiff, later: frozenset[str] = frozenset()
    ) -> tuple[Step, ...]:
        """Apply a prepared reload: undo the steps that went (their journal records, newest
        first), apply the new ones. If one fails, what it applied is undone and the old steps
        are applied again, and TopologyError says which step failed: the reload is refused.

        Steps on the devices ``later`` (segment TAPs the reload has yet to open) are returned
        instead of applied: ``finish`` applies them once the TAPs exist."""
        if not diff:
            self.plan = diff.new
            return ()
        deferred = tuple(s for s in diff.apply if s.name in later and s.op in _ON_DEVICE)
        now = tuple(s for s in diff.apply if s not in deferred)
        if not self.state.data:  # started without topology sections: no journal yet
            self.state.begin(self.plan.interface, self.netns)
        self.applied = True
        step: Step | None = None
        try:
            problems = self._undo_steps(diff.undo)
            if problems:
                self._reapply(diff.undone)
                raise TopologyError(
                    f"{diff.new.path}: the reload could not remove what it replaces "
                    f"({'; '.join(problems)}); the old topology is back in place"
                )
            mark = len(self.state.undo)
            self.plan = diff.new
            try:
                for step in now:
                    self._do(step)
            except Exception as e:
                assert step is not None
                failed, cmd = step, " && ".join(planmod.commands(step))
                undone = self._undo_records(self.state.undo[mark:])
                self.plan = diff.old
                undone += self._reapply(diff.undone)
                also = f" (and restoring: {'; '.join(undone)})" if undone else ""
                raise TopologyError(
                    f"{diff.new.path}:{failed.line}: {failed.what or failed.op} failed: {_err(e)} "
                    f"[{cmd}]; the reload was refused and the old topology restored{also}"
                ) from None
        finally:
            self.close()
        return deferred

    def finish(self, steps: tuple[Step, ...]) -> None:
        """The steps ``change`` left for the segment TAPs, now that they exist."""
        step: Step | None = None
        try:
            for step in steps:
                self._do(step)
        except Exception as e:
            assert step is not None
            cmd = " && ".join(planmod.commands(step))
            raise TopologyError(
                f"{self.plan.path}:{step.line}: {step.what or step.op} failed: {_err(e)} [{cmd}]"
            ) from None
        finally:
            self.close()

    def _undo_records(self, records: list[dict[str, Any]]) -> list[str]:
        """Undo ``records`` (journal entries), newest first, and drop them; the problems."""
        problems: list[str] = []
        for record in reversed(list(records)):
            try:
                self._undo_one(record)
            except Exception as e:  # keep going: the rest must still be undone
                problems.append(f"{record.get('op')} {record.get('name')}: {_err(e)}")
            self.state.undo.remove(record)
            with contextlib.suppress(OSError):
                self.state.write()
        return problems

    def _undo_steps(self, keys: frozenset[str]) -> list[str]:
        return self._undo_records([r for r in self.state.undo if r.get("step") in keys])

    def _reapply(self, steps: tuple[Step, ...]) -> list[str]:
        """Apply ``steps`` again (the old ones a failed reload undid); the problems."""
        problems: list[str] = []
        for old in steps:
            try:
                self._do(old)
            except Exception as e:  # keep going: as much of the old topology as can be
                problems.append(f"{old.what or old.op}: {_err(e)}")
        return problems

    def undo(self) -> list[str]:
        """Undo everything applied, in reverse; never raises. Returns the problems met."""
        if not self.applied:
            return []
        _, problems = self._run_undo()
        self.applied = False
        return problems

    @contextlib.contextmanager
    def _record(self, record: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Write-ahead: the record is in the state file (pending) before the change is made,
        completed after it, and dropped if the change failed."""
        if self._step is not None:
            record["step"] = step_key(self._step)
        record["pending"] = True
        self.state.undo.append(record)
        self.state.write()
        try:
            yield record
        except BaseException:
            self.state.undo.remove(record)
            self.state.write()
            raise
        record.pop("pending", None)
        self.state.write()

    def _do(self, step: Step) -> None:
        self._step = step
        try:
            self._do_step(step)
        finally:
            self._step = None

    def _made_ns(self, ns: str | None) -> bool:
        """Whether this run created namespace ``ns`` (its records say so)."""
        return ns is not None and any(
            r["op"] == "netns-del" and r["name"] == ns for r in self.state.undo
        )

    def _do_step(self, step: Step) -> None:
        op = step.op
        if op == planmod.NETNS:
            if step.name in list_netns():
                return  # someone else's: used, never removed
            with self._record({"op": "netns-del", "name": step.name}):
                _ip_netns("add", step.name)
            return
        if op == planmod.TEAMD:
            self._do_teamd(step)
            return
        if op == planmod.SYSCTL:
            self._do_sysctl(step)
            return
        ipr = self._sock(step.ns)
        if op == planmod.ROUTE:
            dst, via = step.name, step.get("via")
            rec = {"op": "route-del", "name": dst, "ns": step.ns, "via": via}
            try:
                with self._record(rec):
                    ipr.route("add", dst=dst, gateway=via)
            except NetlinkError as e:
                if e.code != errno.EEXIST:  # there already (a pre-existing namespace's): kept
                    raise
            return
        if op == planmod.LINK:
            with (
                self._record({"op": "link-del", "name": step.name, "ns": [step.ns]}) as rec,
                contextlib.ExitStack() as fds,
            ):
                kw = _link_kwargs(step, ipr)
                if "peer" in kw and "net_ns_fd" in kw["peer"]:
                    kw["peer"]["net_ns_fd"] = fds.enter_context(_ns_fd(kw["peer"]["net_ns_fd"]))
                ipr.link("add", **kw)
                info = _link_info(ipr, step.name)
                rec["ifindex"] = info["ifindex"] if info else None
            return
        index = self._index(ipr, step)
        if op == planmod.MOVE:
            rec = next(
                r for r in reversed(self.state.undo)
                if r["op"] == "link-del" and r["name"] == step.name
            )  # fmt: skip
            to = step.get("to")
            rec["ns"] = [to, *rec["ns"]]
            rec["ifindex"] = None  # may change in the new namespace
            self.state.write()
            with _ns_fd(to) as fd:
                ipr.link("set", index=index, net_ns_fd=fd)
            info = _link_info(self._sock(to), step.name)
            rec["ifindex"] = info["ifindex"] if info else None
            self.state.write()
            return
        if op == planmod.MASTER:
            master = ipr.link_lookup(ifname=step.get("master"))
            if not master:
                raise TopologyError(f"master {step.get('master')} does not exist")
            info = _link_info(ipr, step.name)
            assert info is not None
            ours = self._created(step.ns, step.name) or step.name in self.plan.provided
            with contextlib.ExitStack() as stack:
                if ours:
                    # Deleting the port (or the daemon closing its TAP) undoes this too; the
                    # record is for a reload that keeps the port but drops the Master line.
                    rec = {"op": "unslave", "name": step.name, "ns": step.ns, "ifindex": index}
                    stack.enter_context(self._record(rec))
                else:
                    previous = ""
                    if info["master"]:
                        previous = ipr.get_links(info["master"])[0].get_attr("IFLA_IFNAME")
                    stack.enter_context(
                        self._record(
                            {
                                "op": "restore-port",
                                "name": step.name,
                                "ns": step.ns,
                                "ifindex": index,
                                "master": previous or None,
                                "up": info["up"],
                            }
                        )
                    )
                if kinds.ports_down(step.get("master_kind")) or (
                    step.get("master_kind") is None and kinds.ports_down(self._kind(ipr, master[0]))
                ):
                    ipr.link("set", index=index, state="down")
                ipr.link("set", index=index, master=master[0])
            return
        if op == planmod.PRIMARY:
            port = ipr.link_lookup(ifname=step.get("primary"))
            if not port:
                raise TopologyError(f"port {step.get('primary')} does not exist")
            ipr.link("set", index=index, kind="bond", bond_primary=port[0])
            return
        if op == planmod.UP:
            made = self._created(step.ns, step.name) or step.name in self.plan.provided
            if made or (step.get("loopback") and self._made_ns(step.ns)):
                ipr.link("set", index=index, state="up")
                return
            info = _link_info(ipr, step.name)
            assert info is not None
            with self._record(
                {"op": "restore-up", "name": step.name, "ns": step.ns, "ifindex": index,
                 "up": info["up"]}
            ):  # fmt: skip
                ipr.link("set", index=index, state="up")
            return
        if op == planmod.ADDRESS:
            address = step.get("address")
            ip, _, prefix = address.partition("/")
            rec = {"op": "addr-del", "name": step.name, "ns": step.ns, "ifindex": index,
                   "address": address}  # fmt: skip
            try:
                with self._record(rec):
                    ipr.addr("add", index=index, address=ip, prefixlen=int(prefix))
            except NetlinkError as e:
                if e.code != errno.EEXIST:  # there already: not ours to remove
                    raise
            return
        if op == planmod.QDISC:
            with self._record(
                {"op": "qdisc-del", "name": step.name, "ns": step.ns, "ifindex": index}
            ):
                _add_netem(ipr, index, step)
            return
        raise TopologyError(f"unknown step {op!r}")

    def _created(self, ns: str | None, name: str) -> bool:
        return (ns, name) in set(self.plan.created)

    @staticmethod
    def _kind(ipr: IPRoute, index: int) -> str | None:
        msg = ipr.get_links(index)[0]
        info = msg.get_attr("IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info is not None else None

    @staticmethod
    def _index(ipr: IPRoute, step: Step) -> int:
        found = ipr.link_lookup(ifname=step.name)
        if not found:
            where = f" in namespace {step.ns}" if step.ns else ""
            raise TopologyError(f"{step.name} does not exist{where}")
        return int(found[0])

    def _sysctl(self, ns: str | None, *argv: str) -> str:
        argv2 = [*self._nsenter(ns), "sysctl", *argv]
        # systemd's ProtectKernelTunables= makes our /proc/sys read-only; the host's /proc shows
        # the same per-namespace net.* values (nsenter opens the --net file before entering)
        res = _run_on_host(argv2) if private_mounts() else subprocess.run(
            argv2, capture_output=True, text=True, timeout=30
        )  # fmt: skip
        if res.returncode != 0:
            raise TopologyError(f"sysctl {' '.join(argv)}: {res.stderr.strip()[-300:]}")
        return res.stdout

    def _do_sysctl(self, step: Step) -> None:
        keys = list(step.get("keys"))
        old = self._sysctl(step.ns, "-n", *keys).split()
        if len(old) != len(keys):
            raise TopologyError(f"sysctl -n {' '.join(keys)}: unexpected answer {old!r}")
        values = dict(zip(keys, old, strict=True))
        with self._record(
            {"op": "sysctl-restore", "name": step.ns, "ns": step.ns, "values": values}
        ):
            self._sysctl(step.ns, "-qw", *(f"{k}={step.get('value')}" for k in keys))

    def _do_teamd(self, step: Step) -> None:
        prefix = self._nsenter(step.ns)
        with self._record({"op": "link-del", "name": step.name, "ns": [step.ns]}):
            with self._record({"op": "teamd-kill", "name": step.name, "ns": step.ns}):
                argv = [*prefix, "teamd", "-d", "-t", step.name, "-c",
                        planmod.teamd_config(step.get("runner"))]  # fmt: skip
                res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                if res.returncode != 0:
                    raise TopologyError(
                        f"teamd exited {res.returncode}: {res.stderr.strip()[-300:]}"
                    )
                deadline = time.monotonic() + 10
                ipr = self._sock(step.ns)
                while _link_info(ipr, step.name) is None:
                    if time.monotonic() > deadline:
                        raise TopologyError(f"teamd did not create {step.name} within 10 s")
                    time.sleep(0.05)
                if step.get("mtu"):
                    ipr.link("set", index=self._index(ipr, step), mtu=step.get("mtu"))

    # -- undo ----------------------------------------------------------------------------

    def _run_undo(self) -> tuple[list[str], list[str]]:
        """Run the state's undo records in reverse; (what was undone, problems)."""
        done: list[str] = []
        problems: list[str] = []
        records = list(self.state.undo)
        for record in reversed(records):
            try:
                what = self._undo_one(record)
            except Exception as e:  # keep going: everything else must still be undone
                problems.append(f"{record.get('op')} {record.get('name')}: {_err(e)}")
            else:
                if what:
                    done.append(what)
            self.state.undo.remove(record)
            with contextlib.suppress(OSError):
                self.state.write()
        self.close()
        self.state.remove()
        return done, problems

    def _undo_one(self, rec: dict[str, Any]) -> str | None:
        op, name = rec["op"], rec["name"]
        if op == "netns-del":
            if name not in list_netns():
                return None
            self._close_sock(name)
            _ip_netns("del", name)
            return f"namespace {name} removed"
        if op == "teamd-kill":
            argv = [*self._nsenter(rec.get("ns")), "teamd", "-k", "-t", name]
            if shutil.which("teamd") is None:
                return None
            res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return f"teamd for {name} stopped" if res.returncode == 0 else None
        if op == "link-del":
            for ns in rec["ns"]:
                if not self._reachable(ns):
                    continue
                ipr = self._sock(ns)
                info = _link_info(ipr, name)
                if info is None:
                    continue
                if ns == rec["ns"][0] and rec.get("ifindex") and info["ifindex"] != rec["ifindex"]:
                    continue  # a link of that name, but not the one we made
                try:
                    ipr.link("del", index=info["ifindex"])
                except NetlinkError as e:
                    if e.code != errno.ENODEV:
                        raise
                where = f" in {ns}" if ns else ""
                return f"{name}{where} deleted"
            return None
        ns = rec.get("ns")
        if not self._reachable(ns):
            return None
        if op == "sysctl-restore":
            self._sysctl(name, "-qw", *(f"{k}={v}" for k, v in rec["values"].items()))
            return f"{', '.join(rec['values'])} back in {name}"
        ipr = self._sock(ns)
        if op == "route-del":
            try:
                ipr.route("del", dst=name, gateway=rec["via"])
            except NetlinkError as e:
                if e.code != errno.ESRCH:  # gone with its link or address: nothing to do
                    raise
                return None
            return f"route {name} via {rec['via']} removed"
        info = _link_info(ipr, name)
        if info is None or (rec.get("ifindex") and info["ifindex"] != rec["ifindex"]):
            return None
        if op == "unslave":
            if info["master"]:
                ipr.link("set", index=info["ifindex"], master=0)
            return None
        if op == "addr-del":
            ip, _, prefix = rec["address"].partition("/")
            with contextlib.suppress(NetlinkError):  # EADDRNOTAVAIL: removed already
                ipr.addr("del", index=info["ifindex"], address=ip, prefixlen=int(prefix))
            return None
        if op == "qdisc-del":
            with contextlib.suppress(NetlinkError):  # replaced or removed by someone else
                ipr.tc("del", index=info["ifindex"], handle="1:", parent=TC_H_ROOT)
            return None
        if op == "restore-up":
            if not rec["up"] and info["up"]:
                ipr.link("set", index=info["ifindex"], state="down")
            return f"{name} back {'up' if rec['up'] else 'down'}"
        if op == "restore-port":
            if info["master"]:
                ipr.link("set", index=info["ifindex"], master=0)
            if rec.get("master"):
                previous = ipr.link_lookup(ifname=rec["master"])
                if previous:
                    ipr.link("set", index=info["ifindex"], master=previous[0])
            ipr.link("set", index=info["ifindex"], state="up" if rec["up"] else "down")
            back = f"into {rec['master']}" if rec.get("master") else "without master"
            return f"{name} back {back}"
        raise TopologyError(f"unknown undo record {op!r}")
