"""TUN/TAP offloads on byte buffers: what the device and its callers use, from one place.

A userspace tunnel that moves one packet per syscall tops out well below 1 Gbit/s whatever its
cipher. With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` the kernel hands the device up to 64 KiB TCP
"super-packets" (TSO) behind a 10-byte ``virtio_net_hdr``, and accepts the same on write (GRO),
so one read and one write carry ~45 MTU-sized segments. The wire still carries ordinary
MTU-sized IP packets inside WireGuard messages. The work is split by job:

* :mod:`.vnet`: the virtio_net_hdr layout, flags, GSO types and the TUN offload ioctls;
* :mod:`.checksum`: the Internet checksum arithmetic, and finishing a plain packet's checksum;
* :mod:`.segmentation`: a super-packet read from the device -> MTU-sized packets (:func:`split`);
* :mod:`.gro`: a run of decrypted packets of one flow -> one super-packet to write
  (:func:`coalesce`);
* :mod:`.accel`: the optional compiled loops of the last two (tunnelpy/io/_segments.pyx).

All of it is pure, bytes in and bytes out, no syscalls, so it is unit-tested on hand-made
buffers. This module holds the testing knob and re-exports what the rest of the package uses.
"""

from __future__ import annotations

from . import accel, knobs
from .checksum import finish_plain, fold, pseudo_sum
from .gro import coalesce, coalesce_vouched
from .headers import IPPROTO_TCP
from .segmentation import fit_frames, split
from .vnet import (
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_USO4,
    TUN_F_USO6,
    TUNSETOFFLOAD,
    TUNSETVNETHDRSZ,
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
    OffloadError,
)

# What tun.py, udp.py, the daemon, the bench and the tests use.
__all__ = [
    "F_NEEDS_CSUM",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP",
    "GSO_UDP_L4",
    "IPPROTO_TCP",
    "TUNSETOFFLOAD",
    "TUNSETVNETHDRSZ",
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "TUN_F_USO4",
    "TUN_F_USO6",
    "VNET_HDR",
    "VNET_HDR_LEN",
    "ZERO_VNET_HDR",
    "OffloadError",
    "coalesce",
    "coalesce_vouched",
    "compiled",
    "finish_plain",
    "fit_frames",
    "fold",
    "forced_off",
    "pseudo_sum",
    "split",
]


def compiled() -> bool:
    """True when the compiled segment loops (tunnelpy/io/_segments.pyx) are in use."""
    return accel.join_run is not None and accel.split_tcp_segments is not None


def forced_off() -> bool:
    """Testing knob ``TUNNELPY_TEST_OFFLOAD=off`` (io/knobs.py): every offload off."""
    return knobs.offload_forced_off()
