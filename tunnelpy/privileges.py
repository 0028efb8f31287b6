"""Least privilege: after start-up, become an unprivileged user that keeps only CAP_NET_ADMIN.

tunnelpyd starts as root (it creates TUN/TAP devices, binds sockets in root-owned directories and
builds topology). Once that is done, ``User = NAME`` (or ``tunnelpyd --user NAME``) makes it
:func:`drop_privileges`:

1. drop every capability but the kept ones (CAP_NET_ADMIN) from the bounding set, so neither
   the daemon nor anything it runs (PreDown/PostDown hooks) can ever regain them;
2. ``prctl(PR_SET_KEEPCAPS, 1)`` so the permitted set survives the uid change;
3. ``setgroups([])`` (no supplementary groups: the user's own groups grant nothing the daemon
   needs, and root's would be kept otherwise), ``setresgid``, ``setresuid`` — real, effective
   and saved ids, so there is no way back to root; a user with uid or gid 0 is refused;
4. ``capset`` (through ctypes: Python has no binding) with effective = permitted = inheritable =
   the kept set, then ``PR_SET_KEEPCAPS`` off again;
5. raise the kept capabilities as *ambient*, so hooks run with ``/bin/sh`` (``ip route …``) keep
   CAP_NET_ADMIN too — the same set, never more;
6. ``PR_SET_NO_NEW_PRIVS``: nothing it executes (hooks) can gain privileges through setuid or
   file capabilities — without the systemd unit's NoNewPrivileges= too;
7. check the result in ``/proc/self/status`` (CapEff must be exactly the kept set) and that
   ``setuid(0)`` now fails; any surprise raises :class:`PrivilegeError` (the daemon then stops
   rather than run with privileges it believes it dropped).

What still works afterwards: the TUN/TAP fds, the bound UDP sockets and the listening UAPI and
control sockets are already open; netlink changes (routes and addresses on reload, new TAPs for
added segments) need CAP_NET_ADMIN, which is kept. What does not:

* a new ``ListenPort`` below 1024 (CAP_NET_BIND_SERVICE is not kept);
* reading the config or key files directly: they stay root's (0600); a reload asks the
  privileged reader started before the drop (tunnelpy/confreader.py), which reads exactly that
  one config and the key files it names and hands back their bytes;
* removing ``/var/run/wireguard/NAME.sock`` and ``/run/tunnelpy/NAME.ctl`` on exit (the
  shared directories belong to root, and are not given away: other instances live there): the
  stale sockets are taken over by the next start, ``tunnelpy show`` skips them, and the systemd
  unit removes them in ``ExecStopPost=+``.

Capabilities (and no_new_privs) are per thread in Linux: call this from the main thread; the
daemon sets no_new_privs on that thread before any other exists (:func:`no_new_privs`, so every
thread inherits it) and replaces its executor after the drop (new threads are born from the
main thread with the kept set; the old ones are shut down). Threads born before keep their own
bounding set but no capability: the uid change (broadcast to all threads by the C library)
clears the permitted set of every thread that did not ask to keep it.

Without ``User =`` the daemon stays root but :func:`limit_root` still takes away, after
start-up, every capability running does not need (the bounding set too, so hooks inherit no
more): CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, plus CAP_SYS_ADMIN only while topology sections
name network namespaces (deleting one is a umount), and CAP_SYS_CHROOT when that umount
happens in the mount namespace the daemon was started from (a daemon in a private one enters it
with setns; netlink/topology.py). Worker processes keep nothing in any mode
(:func:`drop_all_capabilities`, or ``User`` with no capabilities).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
from dataclasses import dataclass
from typing import Any

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_SETPCAP = 8

CAP_SYS_CHROOT = 18
CAP_SYS_ADMIN = 21

PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(RuntimeError):
    """Dropping privileges failed or did not give the expected result (one-line message)."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


@dataclass(frozen=True)
class Target:
    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def resolve_user(user: str) -> Target:
    """The uid, gid and supplementary groups of a user name (or a numeric uid)."""
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise PrivilegeError(f"User = {user}: no such user") from None
    try:
        groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except OSError:
        groups = (pw.pw_gid,)
    return Target(pw.pw_name, pw.pw_uid, pw.pw_gid, groups)


def cap_mask(caps: tuple[int, ...]) -> int:
    mask = 0
    for c in caps:
        mask |= 1 << c
    return mask


def current_caps(pid: str = "self") -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cap"):
                key, value = line.split(":", 1)
                out[key] = int(value.strip(), 16)
    return out


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def _prctl() -> Any:
    prctl = _libc().prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


def _call(what: str, rc: int) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"dropping privileges: {what}: {os.strerror(err)}")


def no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS on this thread and everything it starts from now on."""
    _call("PR_SET_NO_NEW_PRIVS", _prctl()(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


def _drop_bounding(keep: tuple[int, ...]) -> None:
    prctl = _prctl()
    for cap in range(_last_cap() + 1):
        if cap not in keep:
            rc = prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
            if rc != 0 and ctypes.get_errno() != 22:  # EINVAL: the kernel lacks that cap
                _call(f"PR_CAPBSET_DROP {cap}", rc)


def _capset(mask: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = mask & 0xFFFFFFFF
    data[1].effective = data[1].permitted = mask >> 32
    data[0].inheritable, data[1].inheritable = inheritable & 0xFFFFFFFF, inheritable >> 32
    capset = _libc().capset
    capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
    _call("capset", capset(ctypes.byref(header), data))


def _verify(mask: int) -> None:
    caps = current_caps()
    if caps.get("CapEff") != mask or caps.get("CapPrm") != mask or caps.get("CapBnd", 0) & ~mask:
        raise PrivilegeError(
            f"dropping privileges: expected capabilities {mask:#x}, have effective "
            f"{caps.get('CapEff', 0):#x} permitted {caps.get('CapPrm', 0):#x} bounding "
            f"{caps.get('CapBnd', 0):#x}"
        )


def limit_root(keep: tuple[int, ...]) -> int:
    """Stay root but keep only ``keep`` (bounding, permitted, effective); no_new_privs.
    Returns the kept mask. A no-op (0) when not running as root."""
    if os.geteuid() != 0:
        return 0
    mask = cap_mask(keep) & cap_mask(tuple(range(_last_cap() + 1)))
    _drop_bounding(keep)
    _capset(mask, 0)
    no_new_privs()
    _verify(mask)
    return mask


def drop_all_capabilities() -> None:
    """Keep no capability at all (a worker process that stays uid 0: its fds are all it
    needs); no_new_privs, so it cannot regain any through exec."""
    if os.geteuid() != 0 and not current_caps().get("CapEff"):
        no_new_privs()
        return
    _drop_bounding(())
    _capset(0, 0)
    no_new_privs()
    _verify(0)


def drop_privileges(user: str, keep: tuple[int, ...] = (CAP_NET_ADMIN,)) -> Target:
    """Become ``user`` keeping only ``keep`` (see the module docstring); returns who we are now."""
    target = resolve_user(user)
    if target.uid == 0:
        raise PrivilegeError(f"User = {user}: that is root; nothing to drop")
    if target.gid == 0:
        raise PrivilegeError(f"User = {user}: its group is root's (gid 0); expected another")
    if os.geteuid() != 0:
        raise PrivilegeError(f"User = {user}: not running as root, cannot change user")
    prctl = _prctl()
    # 1. bounding set
    _drop_bounding(keep)
    # 2-3. keep permitted caps across the uid change; change groups, gid, uid for good
    _call("PR_SET_KEEPCAPS", prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
    try:
        os.setgroups([])
        os.setresgid(target.gid, target.gid, target.gid)
        os.setresuid(target.uid, target.uid, target.uid)
    except OSError as e:
        raise PrivilegeError(f"dropping privileges to {user}: {e.strerror}") from None
    # 4. exactly the kept set, effective and inheritable (inheritable is needed for ambient)
    mask = cap_mask(keep)
    _capset(mask, mask)
    _call("PR_SET_KEEPCAPS off", prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0))
    # 5. ambient, so hooks keep the same set
    for cap in keep:
        _call(f"PR_CAP_AMBIENT_RAISE {cap}", prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0))
    # 6. nothing executed from here on gains privileges
    no_new_privs()
    # 7. verify
    _verify(mask)
    if os.getgroups():
        raise PrivilegeError(f"dropping privileges: supplementary groups left: {os.getgroups()}")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("dropping privileges: setuid(0) still works")
    return target
