"""Types of the compiled transport AEAD (_aead.pyx), for callers checked by mypy."""

from typing import Any

REJECT_AFTER_MESSAGES: int

class Window:
    def reset(self) -> None: ...
    @property
    def last(self) -> int: ...
    def accept(self, counter: int, limit: int = ...) -> bool: ...

class Sealer:
    def __init__(self, key: bytes, copy: bool = False) -> None: ...
    def encrypt(self, counter: int, plaintext: bytes, aad: bytes = ...) -> bytes: ...
    def seal(
        self,
        remote_index: int,
        counter: int,
        payloads: list[bytes],
        mtu: int,
        limit: int,
        prefix: bytes | None = ...,
    ) -> tuple[bytes, list[tuple[int, int, int]], int, int]: ...

class Opener:
    def __init__(self, key: bytes, copy: bool = False) -> None: ...
    def open(
        self, counter: int, data: bytes | bytearray | memoryview, aad: bytes = ...
    ) -> bytes | None: ...
    def open_run(
        self,
        items: list[Any],  # (bytes, origin) pairs; anything else ends the call
        i: int,
        index: int,
        origin: object,
        window: Window,
        limit: int,
        packets: list[bytes],
        rest: list[bytes],
        check: object,
        known_src: bytes | None,
        units: bool = ...,
        l2_key: bytes | None = ...,
        l2_frames: list[bytes] | None = ...,
        frame_units: bool = ...,
        uso: bool = ...,
    ) -> tuple[int, int, int, int, bytes | None, int, int, int, int, int]: ...

def same_destination(packets: list[Any], i: int) -> int: ...
def egress_run(
    frames: list[Any], i: int, header: bytes, max_frame: int, payloads: list[bytes]
) -> int: ...
def flow_run(frames: list[Any], i: int, offset: int) -> int: ...
def vxlan_run(
    items: list[Any], i: int, key: bytes, key_ip: object, frames: list[bytes]
) -> tuple[int, int]: ...
