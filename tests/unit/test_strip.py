"""`tunnelpy strip`: only the keys `wg setconf` knows, key files resolved (the real `wg` takes
the output in tests/integration/test_strip_wg.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tunnelpy import config as cfgmod
from tunnelpy import keys
from tunnelpy.strip import StripError, strip

PRIV = keys.generate_private()
PSK = keys.generate_psk()
KB = keys.public_from_private(keys.generate_private())
KC = keys.public_from_private(keys.generate_private())
WG_KEYS = {
    "interface": {"privatekey", "listenport", "fwmark"},
    "peer": {"publickey", "presharedkey", "endpoint", "allowedips", "persistentkeepalive"},
}


def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    p.chmod(0o600)
    return p


def full_config(tmp_path):
    write(tmp_path, "site.key", PRIV + "\n")
    write(tmp_path, "b.psk", PSK + "\n")
    return write(
        tmp_path,
        "site.conf",
        f"""[Interface]
Name = site
PrivateKeyFile = site.key
ListenPort = 51820
FwMark = 1234
Address = 10.0.0.1/24
MTU = 1380
Table = off
DNS = 10.0.0.53
PostUp = ip route add 10.9.0.0/16 dev %i
SaveConfig = false
LogLevel = debug
LogFormat = json
MetricsListen = 9100
Offload = off
Workers = 2

[Peer]
Name = site-b
PublicKey = {KB}
PresharedKeyFile = b.psk
Endpoint = vpn.example.net:51820
AllowedIPs = 10.0.0.2/32, fd00::2/128
AllowedIPs = 10.2.0.0/16
PersistentKeepalive = 25

[Peer]
PublicKey = {KC}
Endpoint = [2001:db8::3]:4500
PersistentKeepalive = off

[Segment lab]
VNI = 100

[Bridge br-lab]
""",
    )


def test_only_wg_keys_with_key_files_resolved(tmp_path):
    out = strip(cfgmod.load(str(full_config(tmp_path))))
    assert out == (
        f"[Interface]\nPrivateKey = {PRIV}\nListenPort = 51820\nFwMark = 0x4d2\n\n"
        f"[Peer]\nPublicKey = {KB}\nPresharedKey = {PSK}\nEndpoint = vpn.example.net:51820\n"
        "AllowedIPs = 10.0.0.2/32, fd00::2/128, 10.2.0.0/16\nPersistentKeepalive = 25\n\n"
        f"[Peer]\nPublicKey = {KC}\nEndpoint = [2001:db8::3]:4500\n"
    )
    section = ""
    for line in out.splitlines():
        if line.startswith("["):
            section = line.strip("[]").lower()
        elif line:
            assert line.split(" = ")[0].lower() in WG_KEYS[section], line


def test_output_parses_back_to_the_same_wireguard_state(tmp_path):
    conf = cfgmod.load(str(full_config(tmp_path)))
    back = cfgmod.parse(strip(conf), default_name="site")
    assert back.interface.private_key == conf.interface.private_key
    assert back.interface.listen_port == 51820 and back.interface.fwmark == 1234
    assert [(p.public_key, p.preshared_key, p.endpoint, p.allowed_ips) for p in back.peers] == [
        (p.public_key, p.preshared_key, p.endpoint, p.allowed_ips) for p in conf.peers
    ]


def test_random_port_and_no_fwmark_are_left_out():
    conf = cfgmod.parse(f"[Interface]\nPrivateKey = {PRIV}\nListenPort = 0\nFwMark = off\n")
    assert strip(conf) == f"[Interface]\nPrivateKey = {PRIV}\n"


def test_plain_vxlan_has_nothing_for_wg():
    conf = cfgmod.parse(
        "[Interface]\nTransport = vxlan\n\n[Peer]\nName = far\nEndpoint = 192.0.2.7:4789\n"
    )
    with pytest.raises(StripError, match="Transport = vxlan"):
        strip(conf)


def test_command_line(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tunnelpy", "strip", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    good = run(str(full_config(tmp_path)))
    assert good.returncode == 0 and good.stdout.startswith("[Interface]\nPrivateKey = ")
    (tmp_path / "b.psk").unlink()
    bad = run(str(tmp_path / "site.conf"))
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("tunnelpy strip: ") and "PresharedKeyFile" in bad.stderr
    assert bad.stderr.count("\n") == 1
