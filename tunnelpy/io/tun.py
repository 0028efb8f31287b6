"""The TUN device: open it through python-pytun, then move packets with plain os.read/os.write.

pytun opens the fd blocking and inheritable, and its own non-blocking read raises pytun.Error
instead of BlockingIOError, so after creation we only use the raw fd. Reads are batched: the
daemon drains up to `max_batch` packets per readiness callback, which is what lets the engine work
on lists. The device disappears (with its addresses and routes) when the fd is closed, which is
also our crash-safety: a SIGKILLed daemon leaves no TUN behind.
"""

from __future__ import annotations

import errno
import os

import pytun

MAX_PACKET = 65535


class TunError(Exception):
    pass


class Tun:
    def __init__(self, name: str, *, tap: bool = False) -> None:
        flags = (pytun.IFF_TAP if tap else pytun.IFF_TUN) | pytun.IFF_NO_PI
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=flags)
        except pytun.Error as e:
            code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
            if code == errno.EBUSY:
                raise TunError(f"interface {name} is already in use by another process") from None
            if code == errno.EINVAL:
                raise TunError(f"interface {name} already exists and is not a free TUN") from None
            if code == errno.EPERM:
                raise TunError(f"cannot create {name}: permission denied (need CAP_NET_ADMIN)") from None
            raise TunError(f"cannot create {name}: {e}") from None
        self.name = self._dev.name
        self.fd = self._dev.fileno()
        os.set_blocking(self.fd, False)
        os.set_inheritable(self.fd, False)
        self.write_drops = 0

    def read_batch(self, max_batch: int = 128) -> list[bytes]:
        fd = self.fd
        out: list[bytes] = []
        read = os.read
        try:
            for _ in range(max_batch):
                out.append(read(fd, MAX_PACKET))
        except BlockingIOError:
            pass
        except OSError as e:
            # EIO etc. when the device goes down under us: stop reading this round.
            if e.errno not in (errno.EIO, errno.EBADFD):
                raise
        return out

    def write_batch(self, packets: list[bytes]) -> None:
        fd = self.fd
        write = os.write
        for p in packets:
            try:
                write(fd, p)
            except (BlockingIOError, OSError):
                # A full device queue or a link that is down: the packet is lost, as on a wire.
                self.write_drops += 1

    def close(self) -> None:
        if self.fd >= 0:
            self._dev.close()
            self.fd = -1
