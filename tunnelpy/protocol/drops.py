"""Why a packet was dropped: the one list of drop reasons.

Theory of operation
-------------------
Nothing that arrives from the network, the TUN or a TAP raises: a rejected packet increments
``drops[reason]`` on its engine (and the peer's own counter when a peer is known) and is
forgotten. The reasons are this enum's members. A :class:`~enum.StrEnum` member *is* its string
(equal, same hash), so ``drops`` stays a ``Counter`` that reads the same keyed by a member or by
its text: ``wg show``/``tunnelpy show`` JSON, the Prometheus ``reason`` label and counts merged
from worker reports (plain strings) all see the values below, byte for byte. Renaming a value is
therefore a visible change (metrics, dashboards); adding one is not.
"""

from __future__ import annotations

from enum import StrEnum, unique


@unique
class Drop(StrEnum):
    # -- datagrams from the network, before any key is involved (engine.py)
    BAD_HEADER = "bad_header"  # shorter than 4 bytes, or reserved header bytes set
    BAD_TYPE = "bad_type"  # not one of the four WireGuard message types
    BAD_SIZE = "bad_size"  # a handshake message of the wrong length
    TOO_SHORT = "too_short"  # a transport message shorter than header + tag
    BAD_MAC1 = "bad_mac1"
    COOKIE_SENT = "cookie_sent"  # under load without a valid mac2: answered with a cookie
    COOKIE_RECEIVED = "cookie_received"  # consumed, not an error: the retry will carry mac2
    RATELIMITED = "ratelimited"
    # A transport message dropped unopened because the receive queue stood above CoDel's target
    # (io/codel.py): counted by the I/O shell (datapath.py), the engine never sees it.
    QUEUE_DELAY = "queue_delay"
    # -- handshakes
    BAD_PEER_KEY = "bad_peer_key"  # a low-order peer public key: no initiation can be made
    NO_PRIVATE_KEY = "no_private_key"  # an initiation before `wg set … private-key`
    BAD_INITIATION = "bad_initiation"
    UNKNOWN_PEER = "unknown_peer"
    REPLAYED_INITIATION = "replayed_initiation"
    INITIATION_FLOOD = "initiation_flood"
    BAD_RESPONSE = "bad_response"
    BAD_COOKIE = "bad_cookie"
    UNKNOWN_INDEX = "unknown_index"
    # -- transport messages
    EXPIRED_SESSION = "expired_session"
    BAD_AUTH = "bad_auth"
    REPLAY = "replay"
    BAD_INNER_PACKET = "bad_inner_packet"
    NOT_ALLOWED_SOURCE = "not_allowed_source"
    # -- sending
    STAGED_OVERFLOW = "staged_overflow"
    NO_ENDPOINT = "no_endpoint"
    STALE_KEYPAIR = "stale_keypair"  # a worker's shared counter slot was reused
    # -- packets read from the TUN (allowedips.route_packets, also in workers)
    TUN_NOT_IP = "tun_not_ip"
    TUN_NO_ROUTE = "tun_no_route"
    # -- L2 segments (switch.py, both engines)
    BAD_INNER_FRAME = "bad_inner_frame"  # an L2 plaintext shorter than VXLAN + Ethernet header
    UNKNOWN_VNI = "unknown_vni"
    PEER_NOT_IN_SEGMENT = "peer_not_in_segment"
    BAD_SRC_MAC = "bad_src_mac"  # a group address as source
    MAC_NOT_ALLOWED = "mac_not_allowed"  # outside the peer's AllowedMACs, or pinned to another
    MAC_QUOTA = "mac_quota"  # a new source MAC from a peer holding its MaxMACsPerPeer
    FDB_FULL = "fdb_full"  # a new source MAC while MaxFDBEntries are learnt
    FRAME_TOO_SHORT = "frame_too_short"
    FRAME_TOO_BIG = "frame_too_big"
    # -- plain VXLAN (vxlan.py)
    NO_L3_IN_VXLAN_MODE = "no_l3_in_vxlan_mode"
    BAD_VXLAN_HEADER = "bad_vxlan_header"
    UNKNOWN_SOURCE = "unknown_source"
    # -- I/O errors a worker process reports (workers/child.py)
    TUN_READ_ERROR = "tun_read_error"
    UDP_SEND_ERROR = "udp_send_error"
    TUN_WRITE_ERROR = "tun_write_error"
