"""Service.reload applied to a real Device and Engine, without TUN or routes (no root needed):
untouched peers keep the very same session objects; a broken file changes nothing."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from tunnelpy import config as cfgmod
from tunnelpy import keys
from tunnelpy.device import Device
from tunnelpy.io.systemd import Notifier
from tunnelpy.io.udp import UdpSocket
from tunnelpy.service import ReloadRefused, Service

PRIV = keys.generate_private()
KB, KC, KD = (keys.public_from_private(keys.generate_private()) for _ in range(3))


def text(peers: str, port: int = 0) -> str:
    head = f"[Interface]\nName = tpu0\nPrivateKey = {PRIV}\n"
    return head + (f"ListenPort = {port}\n" if port else "") + "\n" + peers


def peer(key: str, name: str, allowed: str, extra: str = "") -> str:
    return f"[Peer]\nName = {name}\nPublicKey = {key}\nAllowedIPs = {allowed}\n{extra}\n"


B = peer(KB, "b", "10.0.0.2/32", "Endpoint = 127.0.0.1:40002")
C = peer(KC, "c", "10.0.0.3/32")


def run(conf_path: Path, steps):
    async def main():
        d = Device(cfgmod.load(str(conf_path)))
        d.open_udp()
        d.add_configured_peers(await d.resolve_endpoints(d.conf.peers, d.conf.path))
        svc = Service(d, notifier=Notifier(""))
        try:
            return await steps(d, svc)
        finally:
            d.close_socket()

    return asyncio.run(main())


def test_reload_applies_the_diff_and_leaves_untouched_peers_alone(tmp_path):
    conf = tmp_path / "tpu0.conf"
    conf.write_text(text(B + C))
    conf.chmod(0o600)

    async def steps(d: Device, svc: Service):
        e = d.engine
        b = e.peers[keys.decode_key(KB)]
        session = object()
        b.current = session  # stands for an established session
        b.last_handshake_wall = 1234.5
        port = d.udp.port

        # broken file: refused, nothing changes
        conf.write_text(text(B + C + "[Peer]\nPublicKey = nope\n"))
        with pytest.raises(ReloadRefused, match=r"tpu0.conf:\d+: Peer.PublicKey"):
            await svc.reload()
        assert len(e.peers) == 2 and svc.reloads == {"ok": 0, "error": 1}

        # add d, change c, keep b; a new listen port
        conf.write_text(
            text(B + peer(KC, "c", "10.0.0.3/32, 10.9.0.0/16", "PersistentKeepalive = 7")
                 + peer(KD, "d", "10.0.0.4/32", "Endpoint = 127.0.0.1:40004"), port=0)
        )  # fmt: skip
        result = await svc.reload()
        assert result["operations"] == [
            "add peer d",
            "update peer c: allowed_ips, persistent_keepalive",
        ]
        assert e.peers[keys.decode_key(KB)] is b and b.current is session
        assert b.last_handshake_wall == 1234.5
        c = e.peers[keys.decode_key(KC)]
        assert c.persistent_keepalive == 7
        assert ipaddress.ip_network("10.9.0.0/16") in e.allowed.networks_of(c)
        dd = e.peers[keys.decode_key(KD)]
        assert dd.endpoint == ("127.0.0.1", 40004) and dd.name == "d"

        # remove c, rename b, move to a fixed port
        conf.write_text(
            text(peer(KB, "site-b", "10.0.0.2/32", "Endpoint = 127.0.0.1:40002")
                 + peer(KD, "d", "10.0.0.4/32", "Endpoint = 127.0.0.1:40004"), port=port + 1)
        )  # fmt: skip
        result = await svc.reload()
        assert "remove peer c" in result["operations"]
        assert "update peer site-b: name" in result["operations"]
        assert keys.decode_key(KC) not in e.peers
        assert b.name == "site-b" and b.current is session
        assert d.udp.port == port + 1
        assert svc.reloads == {"ok": 2, "error": 1}
        doc = svc.status()
        assert doc["reloads"] == {"ok": 2, "error": 1} and doc["last_reload"]["ok"] is True
        assert {p["name"] for p in doc["peers"]} == {"site-b", "d"}

        # unchanged: nothing
        assert (await svc.reload())["operations"] == []

    run(conf, steps)


def test_reload_refuses_a_port_in_use_and_keeps_everything(tmp_path):
    busy = UdpSocket(None)
    conf = tmp_path / "tpu0.conf"
    conf.write_text(text(B))
    conf.chmod(0o600)

    async def steps(d: Device, svc: Service):
        old = d.udp
        conf.write_text(text(B + C, port=busy.port))
        with pytest.raises(ReloadRefused, match="ListenPort"):
            await svc.reload()
        assert d.udp is old and len(d.engine.peers) == 1  # C was not added either

    try:
        run(conf, steps)
    finally:
        busy.close()


def test_reload_plain_vxlan_peers_by_name(tmp_path):
    from tunnelpy.io.vxlan_socket import VxlanSocket

    def vx(peers: str) -> str:
        return "[Interface]\nName = vxu0\nTransport = vxlan\nListenPort = 4789\n\n" + peers

    far = "[Peer]\nName = far\nEndpoint = 192.0.2.7:4789\n"
    conf = tmp_path / "vxu0.conf"
    conf.write_text(vx(far + "[Peer]\nName = gone\nEndpoint = 192.0.2.8:4789\n"))

    async def main():
        d = Device(cfgmod.load(str(conf)), open_udp=lambda port, mark: VxlanSocket(0, mark, pool=1))
        d.open_udp()
        d.add_configured_peers(await d.resolve_endpoints(d.conf.peers, d.conf.path))
        d.engine.add_segment(100, list(d.engine.peers.values()))
        svc = Service(d, notifier=Notifier(""))
        try:
            conf.write_text(
                vx(far.replace(".7:", ".9:") + "[Peer]\nName = new\nEndpoint = 192.0.2.10:4789\n")
            )
            result = await svc.reload()
            e = d.engine
            assert result["operations"] == [
                "remove peer gone",
                "add peer new",
                "update peer far: endpoint",
            ]
            assert set(e.peers) == {"far", "new"}
            assert e.peers["far"].endpoint == ("192.0.2.9", 4789)
            assert set(e.by_addr) == {"192.0.2.9", "192.0.2.10"}
            assert [p.name for p in e.segments[100].peers] == ["far"]  # "gone" left its segment
            assert svc.status()["transport"] == "vxlan"
        finally:
            d.close_socket()

    asyncio.run(main())


def test_reload_moves_metrics_between_tcp_unix_and_off(tmp_path):
    """MetricsListen through reloads: a TCP port, then a unix socket (0660; the TCP listener
    closed), then off (the socket file removed). Scraped for real each time."""
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    path = str(tmp_path / "tpu0.metrics")

    def write(extra: str) -> None:
        head = f"[Interface]\nName = tpu0\nPrivateKey = {PRIV}\n{extra}\n"
        (tmp_path / "tpu0.conf").write_text(head + B)

    def scrape(family: int, addr: object) -> bytes:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(addr)
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            out = b""
            while chunk := s.recv(1 << 16):
                out += chunk
            return out

    write("")
    (tmp_path / "tpu0.conf").chmod(0o600)

    async def steps(d: Device, svc: Service):
        loop = asyncio.get_running_loop()
        write(f"MetricsListen = 127.0.0.1:{port}")
        await svc.reload()
        assert svc.status()["metrics"] == f"http://127.0.0.1:{port}/metrics"
        tcp = await loop.run_in_executor(None, scrape, socket.AF_INET, ("127.0.0.1", port))
        write(f"MetricsListen = unix:{path}")
        await svc.reload()
        assert svc.status()["metrics"] == f"unix:{path}"
        mode = Path(path).stat().st_mode & 0o777
        unix = await loop.run_in_executor(None, scrape, socket.AF_UNIX, path)
        with pytest.raises(ConnectionRefusedError):
            scrape(socket.AF_INET, ("127.0.0.1", port))
        write("")
        await svc.reload()
        return tcp, unix, mode, svc.metrics

    tcp, unix, mode, after = run(tmp_path / "tpu0.conf", steps)
    lbl = b'tunnelpy_peers{interface="tpu0"} 1'
    assert tcp.startswith(b"HTTP/1.1 200 OK") and lbl in tcp
    assert unix.startswith(b"HTTP/1.1 200 OK") and lbl in unix
    assert mode == 0o660 and after is None and not Path(path).exists()


def test_refused_reload_stays_in_status_until_one_succeeds(tmp_path):
    """STATUS= (what `systemctl status` shows) names the last refusal; the next good reload
    clears it. Read from a real notify socket, as systemd would."""
    import socket

    from tunnelpy.version import version

    conf = tmp_path / "tpu0.conf"
    conf.write_text(text(B))
    conf.chmod(0o600)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)

    def status_sent() -> str:
        while True:
            fields = sock.recv(4096).decode().split("\n")
            status = [f for f in fields if f.startswith("STATUS=")]
            if "READY=1" in fields and status:
                return status[0].removeprefix("STATUS=")

    async def main():
        d = Device(cfgmod.load(str(conf)))
        d.open_udp()
        svc = Service(d, notifier=Notifier(str(tmp_path / "notify")))
        try:
            assert svc.status()["version"] == version() != ""
            conf.write_text(text(B + "[Peer]\nPublicKey = nope\n"))
            with pytest.raises(ReloadRefused):
                await svc.reload()
            refused = status_sent()
            line = svc.status_line()
            conf.write_text(text(B + C))
            await svc.reload()
            return refused, line, status_sent(), svc.status_line()
        finally:
            d.close_socket()
            sock.close()

    refused, line, ok, line_ok = asyncio.run(main())
    assert refused == line
    assert refused.startswith("tpu0: 0 peer(s), 0 with a live session; reload refused: ")
    assert "tpu0.conf:" in refused and "Peer.PublicKey" in refused
    assert ok == line_ok == "tpu0: 1 peer(s), 0 with a live session"  # C added


def test_reload_applies_logformat(tmp_path):
    import io
    import json
    import logging

    from tunnelpy import logsetup

    conf = tmp_path / "tpu0.conf"
    conf.write_text(text(B))
    conf.chmod(0o600)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    logsetup.setup_logging("info", stream=out, journal=False)
    try:

        async def steps(d: Device, svc: Service):
            conf.write_text(text(B).replace("PrivateKey", "LogFormat = json\nPrivateKey"))
            result = await svc.reload()
            assert result["operations"] == ["interface log_format -> json"]
            logging.getLogger("tunnelpyd").info("after")

        run(conf, steps)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    last = json.loads(out.getvalue().splitlines()[-1])
    assert last["event"] == "after" and last["level"] == "info"
