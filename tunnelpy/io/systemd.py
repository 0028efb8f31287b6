"""sd_notify(3) and the service watchdog, without libsystemd.

The protocol is one datagram per notification on the AF_UNIX socket named by ``$NOTIFY_SOCKET``:
newline-separated ``KEY=VALUE`` assignments (``READY=1``, ``STATUS=…``, ``WATCHDOG=1``,
``RELOADING=1``, ``STOPPING=1``). A name starting with ``@`` is a Linux abstract socket (the
``@`` becomes a NUL byte); anything else is a filesystem path. Without ``$NOTIFY_SOCKET`` (not
started by systemd, or not ``Type=notify``) every call is a no-op, so the daemon needs no
"under systemd?" branches.

The watchdog: when the unit has ``WatchdogSec=``, systemd passes ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``, which must be our PID when set). :func:`watchdog_interval` returns how often to
send ``WATCHDOG=1``: half the timeout, as sd_watchdog_enabled(3) recommends. The pings must come
from the event loop itself (a loop timer, not a thread), so a stuck loop stops them and systemd
restarts the service.

Sending never blocks and never raises: a notification that cannot be delivered is logged once at
debug level and forgotten (systemd itself may be restarting; the daemon must keep running).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

MAX_STATUS = 1024  # keep STATUS= short: `systemctl status` shows one line


def socket_address(name: str) -> str | bytes:
    """The address to send to: a path, or ``\\0name`` bytes for an abstract ``@name`` socket."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when there is no watchdog.

    ``$WATCHDOG_PID``, when set, must name this process: the variable may have been inherited by
    a child that is not the service's main process.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    wpid = env.get("WATCHDOG_PID", "")
    if wpid and (not wpid.isdigit() or int(wpid) != (os.getpid() if pid is None else pid)):
        return None
    return int(usec) / 1e6 / 2


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET`` (a no-op when it is not set)."""

    def __init__(self, notify_socket: str | None = None) -> None:
        if notify_socket is None:
            notify_socket = os.environ.get("NOTIFY_SOCKET") or None
        self.address = socket_address(notify_socket) if notify_socket else None
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram with the given ``KEY=VALUE`` lines; True when it was sent."""
        if self.address is None:
            return False
        if any("\n" in a or "=" not in a for a in assignments):
            raise ValueError(f"sd_notify assignments are single KEY=VALUE lines: {assignments!r}")
        data = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as e:
            if not self._failed:
                log.debug("sd_notify to %r failed: %s", self.address, e)
                self._failed = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (with an optional STATUS): start-up finished, the service is fully up."""
        return self.notify("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        return self.notify(*self._status(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (systemd ≥ 253 wants it for Type=notify-reload).

        Send :meth:`ready` when the reload is done, whatever its outcome.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *self._status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *self._status(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def _status(text: str | None) -> list[str]:
        if text is None:
            return []
        return ["STATUS=" + " ".join(text.splitlines())[:MAX_STATUS]]
