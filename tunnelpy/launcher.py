"""``tunnelpyd [-f|--foreground] IFNAME``: started the way wireguard-go is started.

wg-quick, ``wg-quick@.service``, container images and the wireguard.com/netns recipes start a
userspace WireGuard as ``$WG_QUICK_USERSPACE_IMPLEMENTATION IFNAME`` and then configure it with
``wg`` alone. To stand where wireguard-go stands, tunnelpyd behaves as it does:

* **The interface starts empty**: no private key (no handshake is sent or answered until
  ``wg set IFNAME private-key``), no peers, a listen port the kernel picks, MTU 1420, no
  addresses or routes (wg-quick adds those with ``ip``). Everything else arrives over the UAPI
  socket ``/var/run/wireguard/IFNAME.sock``.
* **Background by default.** Without ``-f`` the command returns only once the daemon is ready:
  the parent starts the daemon as a child in a new session and waits on a pipe until the child
  has created the TUN and the UAPI socket (exit 0), or has said why it could not (that one line,
  exit 1, once the child has exited: a failed attempt leaves no process behind). wg-quick runs ``wg setconf`` right after the command returns, so "returned" must mean
  "the socket answers". ``-f``, or ``WG_PROCESS_FOREGROUND=1`` as wireguard-go reads it, stays in
  the foreground.
* **LOG_LEVEL** as wireguard-go reads it: ``verbose`` (or ``debug``), ``error`` (the default),
  ``silent``. In the background the child's stdout and stderr are the parent's when LOG_LEVEL
  names a level that logs, else /dev/null — so ``$(wg-quick up …)`` does not wait on a pipe the
  daemon holds for ever.

The child is this same program (``python3 -m tunnelpy.tunnelpyd -f IFNAME``) with the write end
of the pipe named in ``TUNNELPY_READY_FD``; only ``READY`` or one line of error ever crosses it.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time

from . import config as cfgmod

READY_FD_ENV = "TUNNELPY_READY_FD"
READY = b"READY\n"
# How long the parent waits for a child that neither reports nor exits (a stuck start-up).
READY_TIMEOUT = 60.0
DEFAULT_MTU = 1420  # wireguard-go's DefaultMTU

# wireguard-go's LOG_LEVEL names -> ours (logsetup.LEVELS)
LOG_LEVELS = {"verbose": "debug", "debug": "debug", "error": "error", "silent": "silent"}


class LaunchError(Exception):
    """One line for the user: the daemon did not start."""


def interface_config(ifname: str) -> cfgmod.Config:
    """The empty interface ``tunnelpyd IFNAME`` starts with (LaunchError on a bad name)."""
    problem = cfgmod.valid_ifname(ifname)
    if problem is not None:
        raise LaunchError(f"{ifname!r}: {problem}")
    iface = cfgmod.InterfaceConfig(
        name=ifname, private_key=b"", listen_port=None, addresses=(), mtu=DEFAULT_MTU
    )
    return cfgmod.Config(path="", interface=iface, peers=())


def log_level(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The level LOG_LEVEL asks for (wireguard-go's default, error, when unset or unknown)."""
    return LOG_LEVELS.get(environ.get("LOG_LEVEL", "").strip().lower(), "error")


def foreground_from_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return environ.get("WG_PROCESS_FOREGROUND", "") == "1"


class Readiness:
    """The child's side of the pipe: say READY once, or one line of why not."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        if fd is not None:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)  # hooks and workers must not hold it

    @classmethod
    def from_env(cls) -> Readiness:
        value = os.environ.pop(READY_FD_ENV, "")
        return cls(int(value) if value.isdigit() else None)

    def _say(self, data: bytes) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, data)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    def ready(self) -> None:
        self._say(READY)

    def failed(self, message: str) -> None:
        self._say(" ".join(message.splitlines()).encode(errors="replace")[:4000] + b"\n")


def start_in_background(ifname: str, extra_args: list[str]) -> None:
    """Start ``tunnelpyd -f IFNAME`` as a session leader and return once it is ready
    (LaunchError with the child's own reason if it is not)."""
    level = log_level()
    inherit_output = bool(os.environ.get("LOG_LEVEL")) and level != "silent"
    r, w = os.pipe()
    env = dict(os.environ)
    env[READY_FD_ENV] = str(w)
    env["WG_PROCESS_FOREGROUND"] = "1"
    cmd = [sys.executable, "-m", "tunnelpy.tunnelpyd", "-f", *extra_args, ifname]
    out = None if inherit_output else subprocess.DEVNULL
    try:
        child = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, pass_fds=(w,),
            start_new_session=True, cwd="/",
        )  # fmt: skip
    except OSError as e:
        os.close(r)
        os.close(w)
        raise LaunchError(f"cannot start the daemon: {e.strerror}") from None
    os.close(w)
    try:
        answer = _wait_answer(r, child)
    finally:
        os.close(r)
    if answer == READY:
        return
    # Not ready: reap the child before saying so, also when it told us why (it writes its line
    # just before it exits). Exit 1 then means the attempt is over: no failed daemon still
    # winding down next to the one that holds the name, and no orphan left for init to reap.
    try:
        rc: int | None = child.wait(timeout=5 if not answer else 10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        rc = None
    if answer:
        raise LaunchError(answer.decode(errors="replace").strip())
    # No word at all: the child died (a crash, a signal) or hung.
    if rc is None:
        raise LaunchError(
            f"the daemon did not become ready within {READY_TIMEOUT:.0f} s; stopped it"
        )
    raise LaunchError(f"the daemon exited with status {rc} before it was ready")


def _wait_answer(fd: int, child: subprocess.Popen[bytes]) -> bytes:
    """READY, an error line, or b"" (EOF, the child exited, or the time ran out)."""
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return b""
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return data
            data += chunk
        elif child.poll() is not None:
            # Exited without a word; a grandchild (a worker) may still hold the pipe open.
            return data
    return data[: data.index(b"\n") + 1]
