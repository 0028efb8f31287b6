"""The TUN device: open it through python-pytun, then move packets with plain os.read/os.write.

pytun opens the fd blocking and inheritable, and its own non-blocking read raises pytun.Error
instead of BlockingIOError, so after creation we only use the raw fd. Reads are batched: the
daemon drains a bounded batch per readiness callback, which is what lets the engine work on
lists. The device disappears (with its addresses and routes) when the fd is closed, which is
also our crash-safety: a SIGKILLed daemon leaves no TUN behind.

Offloads (``offload=True``, docs/performance.md): the device is opened with IFF_VNET_HDR and
TUNSETOFFLOAD (checksum, TSO4/6 and, on kernels that have it, USO4/6), so a read may return a
64 KiB super-packet behind a virtio_net_hdr; :mod:`.offload` splits it into the MTU-sized packets
the engine expects, and coalesces the packets we write back into GRO super-packets. The engine
sees ordinary packets either way. If the kernel refuses the offload ioctl the device still works
(with a virtio_net_hdr that never announces GSO).

``TUN_PATH`` is the clone device every TUN/TAP is made through. A host without it (a container
without the node, a kernel without the tun driver) gets one line naming the node and the two
fixes, instead of the bare ``No such file or directory`` of the failed open.

Frames written to a TAP whose TCP/UDP checksum the sender left partial (checksum.partial_l4) are
finished on the way: behind a virtio_net_hdr by the kernel (NEEDS_CSUM, gro.py), without one here;
such a frame longer than the TAP's MTU (a TSO super-packet a kernel vxlan sent over a veth) is
cut into segments first (segmentation.fit_frames). On a TAP fed by plain VXLAN (`vouch`), GRO
joins only frames whose checksum is partial or right, so a wrong one still reaches the kernel
alone and is dropped there.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from typing import Any

import pytun

from . import accel
from . import offload as off
from .checksum import finish_partial

MAX_PACKET = 65535
# A super-packet is up to 64 KiB of IP plus the virtio_net_hdr, and a TAP adds Ethernet+VLAN.
MAX_READ = MAX_PACKET + off.VNET_HDR_LEN + 14 + 8
# Bound per readiness callback: reads, and packets handed on (a read may yield ~45 segments).
MAX_READS = 64
MAX_SEGMENTS = 1024

log = logging.getLogger("tunnelpyd")

# The compiled read loop (io/_segments.pyx), or None (the module global tests switch off).
_read_packets = accel.read_packets
_READ_SUPER = accel.READ_SUPER
_READ_ERROR = accel.READ_ERROR


class TunError(Exception):
    pass


TUNSETIFF = 0x400454CA
TUNSETQUEUE = 0x400454D9
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE = 0x0001, 0x1000, 0x4000, 0x0100
IFF_DETACH_QUEUE = 0x0400

TUN_PATH = "/dev/net/tun"  # the clone device (character device 10:200); tests point it elsewhere


def _no_node(name: str, code: int) -> str | None:
    """The message for a failure to open the clone device itself, or None if it is another."""
    if code == errno.ENOENT:
        return (
            f"cannot create {name}: {TUN_PATH} does not exist (the TUN/TAP clone device): load "
            f"the driver with `modprobe tun`, or create the node with `mknod {TUN_PATH} c 10 200`"
        )
    if code in (errno.ENODEV, errno.ENXIO):
        return (
            f"cannot create {name}: {TUN_PATH} exists but no driver answers it: load the tun "
            "driver with `modprobe tun`"
        )
    if code == errno.EACCES:
        return (
            f"cannot create {name}: {TUN_PATH}: permission denied (a device cgroup or "
            "DeviceAllow= that does not list it, or a node that is not character device 10:200)"
        )
    return None


class Tun:
    def __init__(
        self, name: str, *, tap: bool = False, offload: bool = False, multi_queue: bool = False
    ) -> None:
        flags = (pytun.IFF_TAP if tap else pytun.IFF_TUN) | pytun.IFF_NO_PI
        offload = offload and not off.forced_off()
        if offload:
            flags |= pytun.IFF_VNET_HDR
        if multi_queue:
            flags |= pytun.IFF_MULTI_QUEUE
        self.multi_queue = multi_queue
        self._writer = -1  # a detached queue for writes (multi-queue only), see detach_writes
        self._rbuf: bytearray | None = None  # the compiled reader's buffer, made on first use
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=flags, dev=TUN_PATH)
        except pytun.Error as e:
            code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
            reason = _no_node(name, code)  # the open of the node (TUNSETIFF says EPERM etc.)
            if reason:
                raise TunError(reason) from None
            if code == errno.EBUSY:
                raise TunError(f"interface {name} is already in use by another process") from None
            if code == errno.EINVAL:
                raise TunError(f"interface {name} already exists and is not a free TUN") from None
            if code == errno.EPERM:
                raise TunError(
                    f"cannot create {name}: permission denied (need CAP_NET_ADMIN)"
                ) from None
            raise TunError(f"cannot create {name}: {e}") from None
        self.name = self._dev.name
        self.fd = self._dev.fileno()
        self.tap = tap
        os.set_blocking(self.fd, False)
        os.set_inheritable(self.fd, False)
        self.write_drops = 0
        # The kernel deleted the device under us (`ip link del`): the fd is detached, every
        # read fails with EBADFD and epoll reports it as an error for ever after.
        self.gone = False
        self.read_drops = 0  # super-packets we could not split (never expected)
        self.vnet_hdr = offload
        # A TAP's MTU, set by its owner: frames longer than it are cut when their sender left
        # them as a TSO super-packet (write_batch); 0 for a TUN, or a TAP not told.
        self.mtu = 0
        # Frames from senders nobody authenticated (a plain VXLAN TAP, set by its owner): GRO
        # joins only those whose checksum is partial or right (gro.coalesce_vouched).
        self.vouch = False
        self.offloads = self._enable_offloads() if offload else ""
        # Writing USO (GSO_UDP_L4) packets needs a kernel that knows them: the same that took
        # TUN_F_USO4/6 (6.2+).
        self.uso = "uso" in self.offloads

    def open_queue(self) -> int:
        """Attach one more queue to a multi-queue TUN and return its fd (blocking, not
        inheritable: the caller passes it to a worker with pass_fds). The kernel spreads packets
        over the attached queues by flow hash; closing the fd detaches the queue, so a worker
        that dies takes its queue with it and its flows move to the others."""
        if not self.multi_queue or self.tap:
            raise TunError(f"{self.name} was not opened as a multi-queue TUN")
        flags = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | (IFF_VNET_HDR if self.vnet_hdr else 0)
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise TunError(
                _no_node(self.name, e.errno or 0) or f"cannot open {TUN_PATH}: {e.strerror}"
            ) from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", self.name.encode(), flags))
            if self.vnet_hdr:
                fcntl.ioctl(fd, off.TUNSETVNETHDRSZ, struct.pack("i", off.VNET_HDR_LEN))
        except OSError as e:
            os.close(fd)
            raise TunError(f"cannot open another queue of {self.name}: {e.strerror}") from None
        return fd

    def detach_writes(self) -> None:
        """Write received packets through a queue of their own that is detached.

        A multi-queue TUN learns, from every packet written to a queue, to steer that flow's
        outgoing packets back to the same queue (tun_flow_update). The daemon writes everything
        it receives, so every flow would be pulled to the daemon's queue and the workers' queues
        would go idle. Writes through a detached queue (TUNSETQUEUE IFF_DETACH_QUEUE) teach it
        nothing, and outgoing flows stay spread by their hash over the attached queues.
        """
        fd = self.open_queue()
        try:
            fcntl.ioctl(fd, TUNSETQUEUE, struct.pack("16sH22x", b"", IFF_DETACH_QUEUE))
        except OSError as e:
            os.close(fd)
            raise TunError(f"cannot detach a write queue of {self.name}: {e.strerror}") from None
        os.set_blocking(fd, False)
        self._writer = fd

    @classmethod
    def adopt(cls, fd: int, name: str, *, vnet_hdr: bool) -> Tun:
        """A queue fd opened by the daemon, in a worker process (reads only)."""
        self = cls.__new__(cls)
        self._dev = None
        self.name = name
        self.fd = fd
        self.tap = False
        self.multi_queue = True
        os.set_blocking(fd, False)
        self.write_drops = self.read_drops = 0
        self.vnet_hdr = vnet_hdr
        self.mtu = 0
        self.vouch = False
        self.offloads = ""
        self.uso = False
        self._writer = -1
        self._rbuf = None
        return self

    def _enable_offloads(self) -> str:
        """TUNSETVNETHDRSZ and TUNSETOFFLOAD; returns what the kernel took, e.g. "csum tso uso"."""
        fcntl.ioctl(self.fd, off.TUNSETVNETHDRSZ, struct.pack("i", off.VNET_HDR_LEN))
        base = off.TUN_F_CSUM | off.TUN_F_TSO4 | off.TUN_F_TSO6
        for bits, what in (
            (base | off.TUN_F_USO4 | off.TUN_F_USO6, "csum tso4 tso6 uso4 uso6"),
            (base, "csum tso4 tso6"),  # kernels before 6.2 have no USO
            (off.TUN_F_CSUM, "csum"),
        ):
            try:
                fcntl.ioctl(self.fd, off.TUNSETOFFLOAD, bits)
                return what
            except OSError:
                continue
        return "none"  # the virtio_net_hdr stays, with nothing to split

    def read_batch(self, max_batch: int = MAX_READS) -> list[bytes]:
        """Up to `max_batch` reads (fewer once MAX_SEGMENTS packets are in hand): the packets,
        super-packets split and plain checksums finished. What cannot be read as a packet is
        counted in read_drops; EIO (the device went down) ends the batch, EBADFD sets `gone`."""
        if _read_packets is not None:
            return self._read_compiled(_read_packets, max_batch)
        fd = self.fd
        out: list[bytes] = []
        read = os.read
        try:
            if not self.vnet_hdr:
                for _ in range(max_batch):
                    out.append(read(fd, MAX_PACKET))
                return out
            split = off.split
            finish_plain = off.finish_plain
            l2 = self.tap
            for _ in range(max_batch):
                buf = read(fd, MAX_READ)
                if len(buf) <= off.VNET_HDR_LEN:
                    self.read_drops += 1
                elif buf[1] == off.GSO_NONE:
                    # The common small packet: no header parsing beyond its checksum fields.
                    if buf[0] & off.F_NEEDS_CSUM:
                        try:
                            out.append(finish_plain(buf))
                        except off.OffloadError as e:
                            self._cannot_split(e)
                    else:
                        out.append(buf[off.VNET_HDR_LEN :])
                else:
                    try:
                        out.extend(split(buf, l2=l2))
                    except off.OffloadError as e:
                        self._cannot_split(e)
                if len(out) >= MAX_SEGMENTS:
                    break
        except BlockingIOError:
            pass
        except OSError as e:
            if self._read_failed(e.errno):
                raise
        return out

    def _read_failed(self, code: int | None) -> bool:
        """A read failed with errno `code`: True if that is an error to raise. EIO when the
        device goes down under us: stop reading this round. EBADFD: it was deleted; the owner
        must stop reading this fd (see `gone`)."""
        if code == errno.EBADFD:
            self.gone = True
            return False
        return code != errno.EIO

    def _read_compiled(self, read_packets: Any, max_batch: int) -> list[bytes]:
        """read_batch with the compiled loop: it reads and finishes plain packets in C and
        stops at a super-packet, which is split here from its read buffer; the same packets
        and counts."""
        out: list[bytes] = []
        vnet = self.vnet_hdr
        buf = self._rbuf
        if buf is None:
            buf = self._rbuf = bytearray(MAX_READ if vnet else MAX_PACKET)
        left = max_batch
        while True:
            reads, outcome, value, short, bad = read_packets(
                self.fd, out, left, MAX_SEGMENTS, buf, vnet
            )
            if short:
                self.read_drops += short
            for _ in range(bad):
                self._cannot_split(off.OffloadError("checksum offset beyond the packet"))
            if outcome == _READ_SUPER:
                # (split copies every piece out: the next read overwrites the buffer)
                try:
                    out.extend(off.split(memoryview(buf)[:value], l2=self.tap))
                except off.OffloadError as e:
                    self._cannot_split(e)
                left -= reads
                if left > 0 and len(out) < MAX_SEGMENTS:
                    continue
            elif outcome == _READ_ERROR and self._read_failed(value):
                raise OSError(value, os.strerror(value))
            return out

    def _cannot_split(self, e: Exception) -> None:
        self.read_drops += 1
        if self.read_drops == 1:  # once: a kind of packet we cannot split
            log.warning("%s: dropped a packet we cannot segment: %s", self.name, e)

    def write_batch(self, packets: list[bytes]) -> None:
        fd = self._writer if self._writer >= 0 else self.fd
        if self.mtu:
            # A TCP super-packet that a kernel vxlan sent over a veth (segmentation.py)
            packets = off.fit_frames(packets, self.mtu)
        if self.vnet_hdr:
            writev = os.writev
            if self.vouch:
                units = off.coalesce_vouched(packets, uso=self.uso)
            else:
                units = off.coalesce(packets, l2=self.tap, uso=self.uso)
            for unit in units:
                try:
                    writev(fd, unit)
                except OSError:
                    self.write_drops += 1
            return
        write = os.write
        if self.tap:
            # A TAP frame whose TCP/UDP checksum its sender left partial (a kernel vxlan on a
            # veth does) is finished first: without a virtio_net_hdr nothing else would.
            packets = finish_partial(packets)
        for p in packets:
            try:
                write(fd, p)
            except (BlockingIOError, OSError):
                # A full device queue or a link that is down: the packet is lost, as on a wire.
                self.write_drops += 1

    def close(self) -> None:
        if self._writer >= 0:
            os.close(self._writer)
            self._writer = -1
        if self.fd >= 0:
            if self._dev is not None:
                self._dev.close()
            else:
                os.close(self.fd)
            self.fd = -1
