"""[Interface] Offload = auto|off and Workers = auto|N (the speed switches, docs/performance.md)."""

from __future__ import annotations

import pytest

from tunnelpy import config
from tunnelpy.config import ConfigError

OWN_PRIVATE = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="


def parse(*extra: str) -> config.InterfaceConfig:
    text = "\n".join(["[Interface]", f"PrivateKey = {OWN_PRIVATE}", *extra]) + "\n"
    return config.parse(text, "site.conf").interface


def test_defaults_are_auto():
    ic = parse()
    assert ic.offload == config.OFFLOAD_AUTO
    assert ic.workers is None


@pytest.mark.parametrize("text,want", [("auto", "auto"), ("off", "off"), ("OFF", "off")])
def test_offload_values(text, want):
    assert parse(f"Offload = {text}").offload == want


@pytest.mark.parametrize("text,want", [("auto", None), ("1", 1), ("4", 4), ("Auto", None)])
def test_workers_values(text, want):
    assert parse(f"Workers = {text}").workers == want


@pytest.mark.parametrize(
    "line,fragment",
    [
        ("Offload = on", "expected auto or off"),
        ("Offload = tso", "expected auto or off"),
        ("Workers = 0", "out of range"),
        ("Workers = 65", "out of range"),
        ("Workers = many", "expected auto or a number"),
    ],
)
def test_bad_values_name_line_and_key(line, fragment):
    with pytest.raises(ConfigError) as info:
        parse(line)
    message = str(info.value)
    key = line.split()[0]
    assert message.startswith(f"site.conf:3: Interface.{key}: "), message
    assert fragment in message, message
