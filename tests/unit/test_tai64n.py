"""TAI64N encoding, whitening and ordering."""

from __future__ import annotations

import pytest

from tunnelpy.protocol.tai64n import TAI64N_SIZE, is_newer, tai64n, tai64n_from_ns, to_unix


def test_epoch() -> None:
    assert tai64n(0.0) == bytes.fromhex("400000000000000a00000000")
    assert len(tai64n(0.0)) == TAI64N_SIZE


@pytest.mark.parametrize(
    "wall, expected",
    [
        # 2^62 + 10 + 1_700_000_000 = 0x400000006553f10a; 0.5 s = 0x1dcd6500 ns → 0x1d000000.
        (1_700_000_000.5, "400000006553f10a1d000000"),
        # 16.777216 ms is exactly 2^24 ns: the first fraction that survives whitening.
        (1.016777216, "400000000000000b01000000"),
        (1.016777215, "400000000000000b00000000"),
        (1.999999999, "400000000000000b3b000000"),  # 999999999 ns = 0x3b9ac9ff
        (-1.0, "400000000000000900000000"),
    ],
)
def test_known_values(wall: float, expected: str) -> None:
    assert tai64n(wall).hex() == expected


def test_from_ns_agrees_with_float_form() -> None:
    assert tai64n_from_ns(1_700_000_000_500_000_000) == tai64n(1_700_000_000.5)
    assert tai64n_from_ns(1_016_777_216) == bytes.fromhex("400000000000000b01000000")
    assert tai64n_from_ns(0) == tai64n(0.0)


def test_low_24_bits_of_nanoseconds_are_cleared() -> None:
    for ns in (0, 1, 0xFFFFFF, 0x1000000, 123_456_789, 999_999_999):
        stamp = tai64n_from_ns(5 * 10**9 + ns)
        assert int.from_bytes(stamp[8:], "big") & 0xFFFFFF == 0
        assert int.from_bytes(stamp[8:], "big") == ns & ~0xFFFFFF


def test_bytes_order_is_time_order() -> None:
    walls = [0.0, 0.02, 0.5, 0.99, 1.0, 255.0, 256.0, 65_536.3, 1_700_000_000.0, 4e9]
    stamps = [tai64n(w) for w in walls]
    assert stamps == sorted(stamps)
    assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))


def test_is_newer_is_strict() -> None:
    a, b = tai64n(100.0), tai64n(100.1)
    assert is_newer(a, None)
    assert is_newer(b, a)
    assert not is_newer(a, b)
    assert not is_newer(a, a)  # a replayed initiation carries the same stamp
    # Two stamps within one whitening step are equal, hence "not newer": a second initiation
    # within ~16 ms is refused, as with wireguard-go.
    assert not is_newer(tai64n(100.001), tai64n(100.0))


def test_to_unix_round_trip() -> None:
    assert to_unix(tai64n(1_700_000_000.5)) == pytest.approx(1_700_000_000.486, abs=1e-3)
    assert to_unix(tai64n(42.0)) == 42.0
