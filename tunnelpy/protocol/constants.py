"""WireGuard protocol constants (whitepaper §6.1, wireguard-go device/constants.go).

Every timer and limit the engine uses lives here so tests and the documented testing knobs
can point at one place.
"""

from __future__ import annotations

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.334
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
HANDSHAKE_INITIATION_RATE = 1.0 / 50  # at most 50 initiations a second from one peer
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_COOKIE_REPLY = 3
MSG_TRANSPORT = 4

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TAG_SIZE = 16
KEEPALIVE_SIZE = TRANSPORT_HEADER_SIZE + TAG_SIZE  # 32
MIN_TRANSPORT_SIZE = KEEPALIVE_SIZE
PADDING_MULTIPLE = 16

# Bounded queue of packets waiting for a session, per peer (the kernel's MAX_STAGED_PACKETS and
# wireguard-go's QueueStagedSize are 128): a local sender to an unreachable peer pins no more.
MAX_STAGED_PACKETS = 128
