"""The root config reader (tunnelpy/confreader.py): its framing is parsed as hostile bytes, it
reads the one config it was started for and the key files that config names, and after a real
drop to `nobody` a reload through it sees what root can read and nobody cannot."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.unit.test_config import OWN_PRIVATE, PEER_A
from tunnelpy import config, confreader
from tunnelpy.confreader import ReaderError


def _site(tmp_path: Path, extra: str = "") -> Path:
    d = tmp_path / "etc"
    d.mkdir(mode=0o700, exist_ok=True)
    key = d / "site.key"
    key.write_text(OWN_PRIVATE + "\n")
    key.chmod(0o600)
    conf = d / "site.conf"
    conf.write_text(
        f"[Interface]\nPrivateKeyFile = site.key\nListenPort = 51820\n{extra}\n"
        f"[Peer]\nPublicKey = {PEER_A}\nAllowedIPs = 10.0.0.2/32\n"
    )
    conf.chmod(0o600)
    return conf


def test_files_round_trip():
    files = {"/etc/a.conf": (b"[Interface]\n", 0o100600), "/etc/k": (b"x" * 45, 0o100600)}
    answer = confreader.encode_files(files)
    assert answer[0] == confreader.OK
    assert confreader.decode_files(answer[5:]) == files


def test_malformed_answers_are_reader_errors_only():
    good = confreader.encode_files({"/etc/a.conf": (b"abc" * 50, 0o100600), "/b": (b"", 0)})[5:]
    r = random.Random(3)
    for cut in range(len(good)):
        try:
            confreader.decode_files(good[:cut])
        except ReaderError:
            pass
    for _ in range(3000):
        b = bytearray(good)
        for _ in range(r.randrange(1, 4)):
            b[r.randrange(len(b))] = r.randrange(256)
        try:
            confreader.decode_files(bytes(b))
        except ReaderError:
            pass


def test_errors_keep_file_line_and_key():
    e = config.ConfigError("/etc/x.conf", 7, "Peer.AllowedIPs", "bad prefix")
    body = confreader.encode_error(e)[5:]
    back = confreader.decode_error("/etc/x.conf", body)
    assert str(back) == str(e)
    assert "malformed" in str(confreader.decode_error("/etc/x.conf", b"junk"))


def test_reader_serves_exactly_what_a_direct_load_reads(tmp_path):
    conf = _site(tmp_path)
    reader = confreader.ConfigReader(str(conf))
    reader.start()
    try:
        via = config.load(str(conf), opener=reader.opener())
        assert via == config.load(str(conf))
        # an error is relayed with its file:line, the reader keeps serving
        conf.write_text(conf.read_text() + "Bogus = 1\n")
        with pytest.raises(config.ConfigError) as e:
            reader.opener()
        assert str(e.value).startswith(f"{conf}:8: Peer.Bogus: unknown key")
        conf.write_text(conf.read_text().replace("Bogus = 1\n", ""))
        assert config.load(str(conf), opener=reader.opener()) == via
    finally:
        reader.close()
    assert reader.proc is None


def test_the_opener_serves_no_other_file(tmp_path):
    conf = _site(tmp_path)
    reader = confreader.ConfigReader(str(conf))
    reader.start()
    try:
        serve = reader.opener()
    finally:
        reader.close()
    with pytest.raises(config.FileRefused):
        serve("/etc/shadow", 4096)
    with pytest.raises(ReaderError):
        reader.opener()  # closed


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
def test_after_a_drop_only_the_reader_can_read_the_config(tmp_path):
    conf = _site(tmp_path, "MTU = 1400")
    script = textwrap.dedent(f"""
        import sys
        from tunnelpy import config, confreader, privileges
        reader = confreader.ConfigReader({str(conf)!r})
        reader.start()
        privileges.drop_privileges("nobody", keep=())
        try:
            config.load({str(conf)!r})
        except config.ConfigError as e:
            print("direct:", e)
        print("mtu", config.load({str(conf)!r}, opener=reader.opener()).interface.mtu)
        reader.close()
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "direct:" in res.stdout and "Permission denied" in res.stdout
    assert "mtu 1400" in res.stdout
