"""virtio_net_hdr: the 10-byte header in front of every packet of an IFF_VNET_HDR device.

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` the kernel hands a TUN/TAP device up to 64 KiB TCP
"super-packets" (TSO) behind this header and accepts the same on write (GRO). This module holds
its layout, its flags and GSO types, and the ioctls and offload bits that turn it on.

Layout (little-endian on this host, as TUN uses by default): flags u8, gso_type u8, hdr_len u16,
gso_size u16, csum_start u16, csum_offset u16.
"""

from __future__ import annotations

import struct

Buffer = bytes | bytearray | memoryview

VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)

# virtio_net_hdr flags and gso types (linux/virtio_net.h)
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO: never offered, so never read
GSO_TCPV6 = 4
GSO_UDP_L4 = 5  # USO (kernel >= 6.2)
GSO_ECN = 0x80

# TUNSETOFFLOAD bits (linux/if_tun.h) and the two ioctls, _IOW('T', 208, unsigned int) and
# _IOW('T', 216, int), whose numbers were checked on this kernel.
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8


class OffloadError(ValueError):
    """A buffer read from the device that cannot be split (malformed or unsupported)."""
