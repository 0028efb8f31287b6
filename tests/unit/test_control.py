"""The control socket (JSON lines over a real AF_UNIX socket), the status document built from real
engines, and `tunnelpy show` (control socket first, UAPI fallback, --json schema, the table)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import socket
import struct
import time
from pathlib import Path

import pytest

from tunnelpy import config as cfgmod
from tunnelpy import control, show
from tunnelpy.io.uapi import DeviceSnapshot, PeerSnapshot, UapiServer
from tunnelpy.protocol.crypto import generate_private_key, public_key
from tunnelpy.protocol.engine import Engine
from tunnelpy.protocol.vxlan import VxlanEngine, pack_header

A_ADDR, B_ADDR = ("192.0.2.1", 51820), ("192.0.2.2", 51820)

# The documented --json schema (docs/operations.md). Adding a field is fine; removing or
# renaming one breaks users: update the docs and bump control.SCHEMA instead.
INTERFACE_KEYS = {
    "schema", "name", "source", "transport", "pid", "public_key", "listen_port", "fwmark",
    "peers", "drops", "segments", "topology",
}  # fmt: skip
PEER_KEYS = {
    "name", "public_key", "endpoint", "allowed_ips", "latest_handshake", "rx_bytes", "tx_bytes",
    "rx_packets", "tx_packets", "handshakes", "persistent_keepalive", "preshared_key", "drops",
}  # fmt: skip
SEGMENT_KEYS = {
    "name", "vni", "device", "bridge", "hub", "peers", "fdb_size", "fdb_max", "fdb_refused",
    "fdb_moves", "fdb",
}  # fmt: skip
FDB_KEYS = {"mac", "peer", "age", "static"}


def ipv4(src: str, dst: str) -> bytes:
    payload = b"x" * 20
    return struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
        ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
    ) + payload  # fmt: skip


def segment_conf(**kw) -> cfgmod.SegmentConfig:
    values = dict(
        name="lab", vni=100, device="lab0", bridge="br-lab", peers=("b",), mtu=None,
        addresses=(), hub=False, static_macs=(), aging=300.0, max_fdb=64,
    )  # fmt: skip
    values.update(kw)
    return cfgmod.SegmentConfig(**values)


@pytest.fixture
def engines():
    """Two engines with a completed handshake, some traffic, a drop and an L2 segment."""
    rng = random.Random(5).randbytes
    now = [1000.0]
    ka, kb = generate_private_key(rng), generate_private_key(rng)
    a = Engine(ka, rng=rng, wall=lambda: 1.7e9 + now[0])
    b = Engine(kb, rng=rng, wall=lambda: 1.7e9 + now[0])
    pa = a.add_peer(
        public_key(kb), name="b", endpoint=B_ADDR, allowed_ips=[ipaddress.ip_network("10.0.0.2/32")]
    )
    b.add_peer(
        public_key(ka), name="a", endpoint=A_ADDR, allowed_ips=[ipaddress.ip_network("10.0.0.1/32")]
    )
    a.add_segment(100, [pa], max_fdb=64)
    hosts = {A_ADDR: a, B_ADDR: b}
    src_of = {id(a): A_ADDR, id(b): B_ADDR}

    def run(out, sender):
        queue = [(sender, out)]
        while queue:
            eng, o = queue.pop()
            for dst, dgrams in o.datagrams.items():
                target = hosts[dst[:2]]
                queue.append(
                    (target, target.from_network([(d, src_of[id(eng)]) for d in dgrams], now[0]))
                )

    run(a.from_tunnel([ipv4("10.0.0.1", "10.0.0.2")], now[0]), a)
    run(b.from_tunnel([ipv4("10.0.0.2", "10.0.0.1")], now[0]), b)
    # an L2 frame from b teaches a's FDB that 02:..:07 is behind b
    frame = b"\xff" * 6 + bytes([2, 0, 0, 0, 0, 7]) + b"\x88\xb5" + b"hello"
    b.add_segment(100, None)
    run(b.from_segment(100, [frame], now[0]), b)
    a.from_network([(b"\x04" + bytes(40), B_ADDR)], now[0])  # a bogus transport message
    return a, now[0]


def test_device_status_from_a_real_engine(engines):
    a, now = engines
    doc = control.device_status(
        name="tp0", engine=a, segments=[segment_conf()], now=now, listen_port=51820,
        extra={"config": "/etc/tunnelpy/tp0.conf"},
    )  # fmt: skip
    assert INTERFACE_KEYS <= set(doc) and doc["config"] == "/etc/tunnelpy/tp0.conf"
    assert doc["source"] == "tunnelpyd" and doc["schema"] == control.SCHEMA
    assert doc["pid"] == os.getpid()
    (p,) = doc["peers"]
    assert set(p) == PEER_KEYS
    assert p["name"] == "b" and p["endpoint"] == "192.0.2.2:51820"
    assert p["allowed_ips"] == ["10.0.0.2/32"]
    assert p["handshakes"] == 1 and p["latest_handshake"] == pytest.approx(1.7e9 + 1000)
    assert p["rx_packets"] >= 1 and p["tx_packets"] >= 1 and p["rx_bytes"] > 0
    assert sum(doc["drops"].values()) >= 1
    (seg,) = doc["segments"]
    assert set(seg) == SEGMENT_KEYS
    assert seg["fdb_size"] == 1 and seg["fdb_max"] == 64
    (entry,) = seg["fdb"]
    assert set(entry) == FDB_KEYS
    assert entry == {"mac": "02:00:00:00:00:07", "peer": "b", "age": 0.0, "static": False}
    json.dumps(doc)  # serialisable as is


def test_device_status_plain_vxlan():
    e = VxlanEngine()
    p = e.add_peer("far", ("192.0.2.9", 4789))
    e.add_segment(100, [p], static=[(bytes([2, 0, 0, 0, 0, 1]), p)])
    e.from_network(
        [
            (
                pack_header(100) + b"\xff" * 6 + bytes([2, 0, 0, 0, 0, 2]) + b"\x88\xb5x",
                ("192.0.2.9", 4789),
            )
        ],
        5.0,
    )
    doc = control.device_status(
        name="vx0", engine=e, segments=[segment_conf(peers=("far",))], now=5.0, transport="vxlan"
    )
    (peer,) = doc["peers"]
    assert set(peer) == PEER_KEYS and peer["public_key"] is None and peer["name"] == "far"
    assert doc["public_key"] is None and doc["transport"] == "vxlan"
    fdb = doc["segments"][0]["fdb"]
    assert {(e["mac"], e["static"]) for e in fdb} == {
        ("02:00:00:00:00:01", True), ("02:00:00:00:00:02", False),
    }  # fmt: skip


METRICS_PEER_KEYS = {
    "name", "public_key", "latest_handshake", "rx_bytes", "tx_bytes", "rx_packets",
    "tx_packets", "handshakes", "drops",
}  # fmt: skip


def test_metrics_status_agrees_with_device_status(engines):
    """The exporter's cheap document has the show document's values for every field it reads."""
    a, now = engines
    full = control.device_status(name="tp0", engine=a, segments=[segment_conf()], now=now)
    cheap = control.metrics_status(name="tp0", engine=a, segments=[segment_conf()], now=now)
    for key in ("name", "transport", "public_key", "drops"):
        assert cheap[key] == full[key], key
    assert len(cheap["peers"]) == 1
    (p,) = list(cheap["peers"])
    assert set(p) == METRICS_PEER_KEYS
    assert p == {k: full["peers"][0][k] for k in METRICS_PEER_KEYS}
    (seg,) = cheap["segments"]
    assert seg == {k: v for k, v in full["segments"][0].items() if k != "fdb"}


def test_metrics_status_plain_vxlan_and_peers_read_lazily():
    e = VxlanEngine()
    e.add_peer("far", ("192.0.2.9", 4789))
    cheap = control.metrics_status(name="vx0", engine=e, now=5.0, transport="vxlan")
    full = control.device_status(name="vx0", engine=e, now=5.0, transport="vxlan")
    peers = cheap["peers"]
    e.peers["far"].rx_bytes = 99  # counters are read when iterated, not when the doc is made
    (p,) = list(peers)
    assert p["rx_bytes"] == 99 and p["public_key"] is None
    assert {k: v for k, v in p.items() if k != "rx_bytes"} == {
        k: full["peers"][0][k] for k in METRICS_PEER_KEYS if k != "rx_bytes"
    }


# ----------------------------------------------------------------------- server / client --


def serve(tmp_path: Path, handlers: dict, client) -> object:
    """Run a ControlServer in a loop while `client(path)` runs in a thread; return its result."""

    async def main():
        srv = control.ControlServer("tp0", handlers, directory=str(tmp_path / "run"))
        await srv.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, client, srv.path)
        finally:
            await srv.close()

    return asyncio.run(main())


def test_server_commands_over_a_real_socket(tmp_path):
    calls = []

    def reload_handler(req):
        calls.append(req)
        raise control.ControlError("site.conf:3: Peer.PublicKey: bad")

    async def show_handler(req):
        return {"name": "tp0", "peers": []}

    def client(path):
        st = os.stat(path)
        assert st.st_mode & 0o777 == 0o600
        out = [control.request(path, "ping"), control.request(path, "show")]
        with pytest.raises(control.ControlError, match="Peer.PublicKey: bad"):
            control.request(path, "reload")
        with pytest.raises(control.ControlError, match="unknown command 'nope'"):
            control.request(path, "nope")
        # raw protocol: garbage, then two requests on one connection
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b'not json\n{"cmd": "ping"}\n[1]\n')
            f = s.makefile("rb")
            out.append([json.loads(f.readline()) for _ in range(3)])
        return out

    pong, doc, raw = serve(tmp_path, {"show": show_handler, "reload": reload_handler}, client)
    assert pong == "pong" and doc == {"name": "tp0", "peers": []}
    assert calls == [{"cmd": "reload"}]
    assert raw[0] == {"ok": False, "error": "not a JSON object"}
    assert raw[1] == {"ok": True, "result": "pong"}
    assert raw[2]["ok"] is False
    assert not (tmp_path / "run" / "tp0.ctl").exists()  # removed on close


def test_handler_bug_is_an_error_answer_not_a_crash(tmp_path):
    def boom(req):
        raise RuntimeError("oops")

    def client(path):
        with pytest.raises(control.ControlError, match="internal error: RuntimeError: oops"):
            control.request(path, "show")
        return control.request(path, "ping")

    assert serve(tmp_path, {"show": boom}, client) == "pong"


def test_stale_socket_taken_over_live_one_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(run / "tp0.ctl"))
    stale.close()  # bound, never listening: what a SIGKILLed daemon leaves

    async def main():
        a = control.ControlServer("tp0", {}, directory=str(run))
        await a.start()
        b = control.ControlServer("tp0", {}, directory=str(run))
        with pytest.raises(control.ControlSocketError, match="already served"):
            await b.start()
        await a.close()
        (run / "tp0.ctl").write_text("not a socket")
        with pytest.raises(control.ControlSocketError, match="not a socket"):
            await control.ControlServer("tp0", {}, directory=str(run)).start()

    asyncio.run(main())


# ---------------------------------------------------------------------------- tunnelpy show --


def test_show_prefers_control_then_uapi_and_lists_everything(tmp_path, engines, capsys):
    a, now = engines
    ctl_dir, uapi_dir = tmp_path / "ctl", tmp_path / "wg"
    peer_key = next(iter(a.peers))

    def uapi_get():
        return DeviceSnapshot(
            private_key=bytes(range(32)), listen_port=51999,
            peers=[PeerSnapshot(public_key=peer_key, endpoint=("192.0.2.5", 1), rx_bytes=7,
                                last_handshake=time.time() - 65,
                                allowed_ips=[ipaddress.ip_network("10.9.0.0/24")])],
        )  # fmt: skip

    def ctl_show(req):
        return control.device_status(
            name="tpa", engine=a, segments=[segment_conf()], now=now, listen_port=51820
        )

    async def main():
        ctl = control.ControlServer("tpa", {"show": ctl_show}, directory=str(ctl_dir))
        await ctl.start()
        # tpa: tunnelpyd (control + UAPI); wgb: a wireguard-go-like UAPI only; dead: stale
        u1 = UapiServer("tpa", uapi_get, lambda r: None, directory=str(uapi_dir))
        u2 = UapiServer("wgb", uapi_get, lambda r: None, directory=str(uapi_dir))
        await u1.start()
        await u2.start()
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(str(uapi_dir / "dead.sock"))
        dead.close()
        loop = asyncio.get_running_loop()
        try:

            def run(*args, **kw):
                rc = show.show(*args, uapi_dir=str(uapi_dir), control_dir=str(ctl_dir), **kw)
                return rc, capsys.readouterr()

            return [
                await loop.run_in_executor(None, lambda: run(None, as_json=True)),
                await loop.run_in_executor(None, lambda: run(None, as_json=False)),
                await loop.run_in_executor(None, lambda: run("wgb", as_json=True)),
                await loop.run_in_executor(None, lambda: run("nothere", as_json=True)),
            ]
        finally:
            await ctl.close()
            await u1.close()
            await u2.close()

    (rc1, out1), (rc2, out2), (rc3, out3), (rc4, out4) = asyncio.run(main())
    assert rc1 == 0
    docs = json.loads(out1.out)
    assert [d["name"] for d in docs] == ["tpa", "wgb"]  # the stale one is skipped
    tpa, wgb = docs
    for d in docs:
        assert INTERFACE_KEYS <= set(d)
        for p in d["peers"]:
            assert set(p) == PEER_KEYS
    assert tpa["source"] == "tunnelpyd" and tpa["peers"][0]["name"] == "b"
    assert tpa["segments"][0]["fdb"][0]["mac"] == "02:00:00:00:00:07"
    assert wgb["source"] == "uapi" and wgb["listen_port"] == 51999
    assert wgb["peers"][0]["name"] is None and wgb["peers"][0]["rx_bytes"] == 7
    assert wgb["peers"][0]["allowed_ips"] == ["10.9.0.0/24"]
    # human form: a table with names, drops and the FDB
    assert rc2 == 0
    text = out2.out
    assert "interface: tpa  (tunnelpyd, pid" in text and "interface: wgb  (UAPI)" in text
    assert "PEER" in text and "HANDSHAKE" in text and "1m 5s ago" in text
    assert "segment lab: VNI 100, device lab0, bridge br-lab, b; FDB 1/64" in text
    assert "02:00:00:00:00:07" in text
    assert rc3 == 0 and [d["name"] for d in json.loads(out3.out)] == ["wgb"]
    assert rc4 == 1 and "no running interface nothere" in out4.err


def test_show_nothing_running(tmp_path, capsys):
    assert show.show(None, as_json=False, uapi_dir=str(tmp_path), control_dir=str(tmp_path)) == 0
    assert capsys.readouterr().out.strip() == "no running interfaces"
    assert show.show(None, as_json=True, uapi_dir=str(tmp_path), control_dir=str(tmp_path)) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_parse_get_error_and_fields():
    doc = show.parse_get(
        f"private_key={'11' * 32}\nlisten_port=5\nfwmark=3\npublic_key={'22' * 32}\n"
        f"preshared_key={'00' * 32}\nendpoint=[fd00::1]:7\nlast_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\ntx_bytes=1\nrx_bytes=2\npersistent_keepalive_interval=25\n"
        "allowed_ip=10.0.0.0/8\nerrno=0\n\n"
    )
    assert doc["listen_port"] == 5 and doc["fwmark"] == 3
    (p,) = doc["peers"]
    assert p["endpoint"] == "[fd00::1]:7" and p["latest_handshake"] is None
    assert p["persistent_keepalive"] == 25 and p["preshared_key"] is False
    with pytest.raises(OSError):
        show.parse_get("errno=-22\n\n")


def test_cli_reload_and_show(tmp_path, capsys):
    from tunnelpy.cli import main

    assert main(["reload", "nothere", "--control-dir", str(tmp_path)]) == 1
    assert "no running tunnelpyd nothere" in capsys.readouterr().err

    def reload_handler(req):
        return {"operations": ["add peer c"], "restart_needed": [], "summary": "add peer c"}

    def client(path):
        return (
            main(["reload", "tp0", "--control-dir", str(tmp_path / "run")]),
            main(["show", "--json", "--control-dir", str(tmp_path / "run"),
                  "--uapi-dir", str(tmp_path / "none")]),
        )  # fmt: skip

    rc_reload, rc_show = serve(
        tmp_path, {"reload": reload_handler, "show": lambda r: {"name": "tp0", "peers": []}}, client
    )
    out = capsys.readouterr().out
    assert rc_reload == 0 and "tp0: add peer c" in out
    assert rc_show == 0 and '"name": "tp0"' in out


# ------------------------------------------------------------------ hostile local clients --


def test_deep_json_is_an_error_answer_not_a_dropped_client(tmp_path):
    def client(path):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"[" * 20000 + b"]" * 20000 + b'\n{"cmd": "ping"}\n')
            f = s.makefile("rb")
            return [json.loads(f.readline()) for _ in range(2)]

    deep, pong = serve(tmp_path, {}, client)
    assert deep == {"ok": False, "error": "not a JSON object"}
    assert pong == {"ok": True, "result": "pong"}


def test_connections_are_capped_and_idle_ones_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.5)

    def client(path):
        held = []
        for _ in range(control.MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.sendall(b'{"cmd": "pi')  # a request that never completes
            held.append(s)
        time.sleep(0.1)
        extra = socket.socket(socket.AF_UNIX)
        extra.connect(path)
        extra.settimeout(5)
        refused = extra.recv(1) == b""  # closed at once, before any request
        extra.close()
        time.sleep(1.0)  # the idle ones are dropped after IDLE_TIMEOUT ...
        for s in held:
            s.settimeout(5)
            assert s.recv(1) == b""
            s.close()
        return refused, control.request(path, "ping")  # ... and the daemon answers again

    refused, pong = serve(tmp_path, {}, client)
    assert refused and pong == "pong"


def test_a_client_that_never_reads_is_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "WRITE_TIMEOUT", 0.5)
    big = {"peers": ["x" * 1000] * 20000}  # ~20 MB of answer

    def client(path):
        s = socket.socket(socket.AF_UNIX)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(path)
        s.sendall(b'{"cmd": "show"}\n')
        time.sleep(2.0)  # never reads
        s.settimeout(5)
        got = 0
        try:
            while chunk := s.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
        s.close()
        return got, control.request(path, "ping")

    got, pong = serve(tmp_path, {"show": lambda req: big}, client)
    assert got < 10_000_000 and pong == "pong"  # cut off, not served whole
