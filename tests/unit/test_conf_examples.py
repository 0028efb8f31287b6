"""Every example in conf/ parses (after filling in the placeholders a user must replace)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunnelpy import config, keys

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize("name", sorted(p.name for p in CONF.glob("*.conf")))
def test_example_parses(tmp_path, name):
    text = (CONF / name).read_text()
    text = text.replace("REPLACE-WITH-SITE-B-PUBLIC-KEY", keys.public_from_private(keys.generate_private()))
    keyfile = tmp_path / "k.key"
    keyfile.write_text(keys.generate_private() + "\n")
    os.chmod(keyfile, 0o600)
    lines = [
        f"PrivateKeyFile = {keyfile}" if line.startswith("PrivateKeyFile") else line
        for line in text.splitlines()
    ]
    conf = config.parse("\n".join(lines), path=name)
    assert conf.interface.name

