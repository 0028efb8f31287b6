"""Device: the one owner of the running interface, driven the way UAPI, reload and start-up
drive it — with a recording fake of the kernel (Host) and TAPs, so no root is needed.

Sockets are real UDP sockets on an unprivileged port of this host; nothing is sent."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from tunnelpy import config as cfgmod
from tunnelpy import keys, wgapi
from tunnelpy.device import Device, DeviceError
from tunnelpy.io.uapi import PeerChange, SetRequest, UapiError
from tunnelpy.io.udp import UdpSocket
from tunnelpy.netlink import iface

PRIV = keys.generate_private()
KB, KC = (keys.generate_private() for _ in range(2))
PB, PC = (keys.decode_key(keys.public_from_private(k)) for k in (KB, KC))


class RecordingHost:
    """The kernel as a Device sees it: which links exist, and every change asked of it."""

    def __init__(self, links: dict[str, str] | None = None) -> None:
        self.links = dict(links or {})  # name -> kind
        self.calls: list[tuple[Any, ...]] = []

    def link_exists(self, name: str) -> bool:
        return name in self.links

    def link_kind(self, name: str) -> str | None:
        return self.links.get(name)

    def configure_device(self, name: str, mtu: int, addresses: list[Any]) -> None:
        self.calls.append(("configure", name, mtu, tuple(str(a) for a in addresses)))

    def set_mtu(self, name: str, mtu: int) -> None:
        self.calls.append(("mtu", name, mtu))

    def set_addresses(self, name: str, old: Any, new: Any) -> None:
        self.calls.append(("addresses", name, tuple(map(str, old)), tuple(map(str, new))))

    def enslave(self, name: str, master: str) -> None:
        self.calls.append(("enslave", name, master))

    def sync_routes(self, name, nets, table, fwmark, state) -> None:
        self.calls.append(("routes", name, tuple(sorted(map(str, nets)))))

    def add_default_route_rules(self, fwmark, families, state) -> None:
        state.rules.append({"fwmark": fwmark})
        self.calls.append(("rules", fwmark))

    def remove_rules(self, state: iface.RouteState) -> None:
        state.rules.clear()
        self.calls.append(("remove rules",))


class FakeTap:
    def __init__(self, name: str, **kw: Any) -> None:
        self.name = name
        self.kw = kw
        self.closed = False
        self.offloads = ""

    def close(self) -> None:
        self.closed = True


class SyncCounter:
    """Stands for the worker pool: counts how often the Device tells it to mirror state."""

    def __init__(self) -> None:
        self.syncs = 0

    def sync(self) -> None:
        self.syncs += 1

    def sync_soon(self) -> None:
        self.syncs += 1


def write_conf(tmp_path: Path, body: str, name: str = "tpd0") -> cfgmod.Config:
    path = tmp_path / f"{name}.conf"
    path.write_text(f"[Interface]\nName = {name}\nPrivateKey = {PRIV}\n" + body)
    path.chmod(0o600)
    return cfgmod.load(str(path))


PEER_B = (
    f"[Peer]\nName = b\nPublicKey = {keys.public_from_private(KB)}\n"
    "AllowedIPs = 10.0.0.2/32\nEndpoint = 127.0.0.1:40002\n"
)


def make(tmp_path: Path, body: str = "", **kw: Any) -> tuple[Device, RecordingHost]:
    host = kw.pop("host", None) or RecordingHost()
    kw.setdefault("open_tun", FakeTap)
    dev = Device(write_conf(tmp_path, body), host=host, **kw)
    return dev, host


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_start_up_steps_open_and_close_through_the_device(tmp_path):
    async def main():
        dev, host = make(tmp_path, "Address = 10.0.0.1/24\nListenPort = 0\n" + PEER_B)
        endpoints = await dev.resolve_endpoints(dev.conf.peers, dev.conf.path)
        assert endpoints == {PB: ("127.0.0.1", 40002)}
        await dev.check_free(dev.conf.segments, own_links=set(), path=dev.conf.path)
        dev.open_udp()
        dev.add_configured_peers(endpoints)
        dev.open_devices(workers=1)
        await dev.configure_devices(own_links=set())
        await dev.install_routes()
        assert ("configure", "tpd0", 1420, ("10.0.0.1/24",)) in host.calls
        assert ("routes", "tpd0", ("10.0.0.2/32",)) in host.calls
        assert dev.engine.peers[PB].endpoint == ("127.0.0.1", 40002)
        tun = dev.tun
        dev.close_devices()
        dev.close_socket()
        assert tun.closed and dev.tun is None and dev.udp is None

    asyncio.run(main())


def test_check_free_names_the_segment_and_its_line(tmp_path):
    body = PEER_B + "\n[Segment lab]\nVNI = 7\nDevice = tps0\nBridge = br-x\n"

    async def main():
        taken, _ = make(tmp_path, body, host=RecordingHost({"tps0": "tun"}))
        with pytest.raises(
            DeviceError, match=r"tpd0.conf:\d+: Segment lab: interface tps0 already"
        ):
            await taken.check_free(taken.conf.segments, own_links=set(), path=taken.conf.path)
        plain, _ = make(tmp_path, body, host=RecordingHost({"br-x": ""}))
        with pytest.raises(DeviceError, match=r"Segment lab.Bridge: br-x is a plain link"):
            await plain.check_free(plain.conf.segments, own_links=set(), path=plain.conf.path)
        ours, _ = make(tmp_path, body)  # a bridge the topology sections will build is fine
        await ours.check_free(ours.conf.segments, own_links={"br-x"}, path=ours.conf.path)
        tun, _ = make(tmp_path, body, host=RecordingHost({"tpd0": "tun"}))
        with pytest.raises(DeviceError, match="interface tpd0 already exists"):
            await tun.check_free((), own_links=set(), path=tun.conf.path)

    asyncio.run(main())


def test_uapi_set_goes_through_the_device_and_flushes_once(tmp_path):
    dev, _ = make(tmp_path, "ListenPort = 0\n")
    dev.open_udp()
    pool = SyncCounter()
    dev.pool = pool  # type: ignore[assignment]
    try:
        req = SetRequest(
            peers=[
                PeerChange(PB, endpoint=("127.0.0.1", 40002), allowed_ips=[net("10.0.0.2/32")],
                           persistent_keepalive=25, preshared_key=bytes(range(32))),
                PeerChange(PC, allowed_ips=[net("10.0.0.3/32"), net("fd00::3/128")]),
                PeerChange(dev.engine.public_key, allowed_ips=[net("10.9.9.9/32")]),  # ours
                PeerChange(bytes(32), update_only=True),  # absent: not created
            ]
        )  # fmt: skip
        wgapi.apply_set(dev, req)
        assert pool.syncs == 1
        e = dev.engine
        assert set(e.peers) == {PB, PC}
        b = e.peers[PB]
        assert b.endpoint == ("127.0.0.1", 40002) and b.persistent_keepalive == 25
        assert b.preshared_key == bytes(range(32))
        assert set(e.allowed.networks_of(e.peers[PC])) == {net("10.0.0.3/32"), net("fd00::3/128")}

        # add vs replace allowed IPs; clear the PSK; remove a peer
        wgapi.apply_set(dev, SetRequest(peers=[
            PeerChange(PB, allowed_ips=[net("10.1.0.0/16")], preshared_key=None),
            PeerChange(PC, replace_allowed_ips=True, allowed_ips=[net("10.0.0.33/32")]),
        ]))  # fmt: skip
        assert set(e.allowed.networks_of(b)) == {net("10.0.0.2/32"), net("10.1.0.0/16")}
        assert not any(b.preshared_key)
        assert e.allowed.networks_of(e.peers[PC]) == [net("10.0.0.33/32")]
        wgapi.apply_set(dev, SetRequest(peers=[PeerChange(PC, remove=True)]))
        assert set(e.peers) == {PB} and pool.syncs == 3
        assert e.allowed.lookup(ipaddress.ip_address("10.0.0.33").packed) is None

        snap = wgapi.snapshot(dev)
        assert snap.listen_port == dev.udp.port and [p.public_key for p in snap.peers] == [PB]
        wgapi.apply_set(dev, SetRequest(replace_peers=True))
        assert not e.peers
    finally:
        dev.close_socket()


def test_listen_port_rebinds_and_a_taken_port_changes_nothing(tmp_path):
    dev, _ = make(tmp_path, "ListenPort = 0\n")
    dev.open_udp()
    busy = UdpSocket(None)
    try:
        old = dev.udp
        key = dev.engine.private_key
        taken = SetRequest(
            private_key=keys.decode_key(KB), listen_port=busy.port, fwmark=5,
            peers=[PeerChange(PB, allowed_ips=[net("10.0.0.2/32")])],
        )  # fmt: skip
        with pytest.raises(UapiError, match="already in use") as info:
            wgapi.apply_set(dev, taken)
        assert info.value.errno == errno.EADDRINUSE  # what wireguard-go answers
        # all or nothing: the key, the mark and the peer that came with the port are not set
        assert dev.udp is old and old.sock.fileno() >= 0
        assert dev.engine.private_key == key and dev.fwmark is None and not dev.engine.peers
        free = UdpSocket(None)
        port = free.port
        free.close()
        wgapi.apply_set(dev, SetRequest(listen_port=port, fwmark=0x77))
        assert dev.udp is not old and dev.listen_port == port and dev.fwmark == 0x77
        assert old.sock.fileno() == -1  # the old socket was closed
        wgapi.apply_set(dev, SetRequest(fwmark=0))
        assert dev.fwmark is None
    finally:
        busy.close()
        dev.close_socket()


class MarklessSocket:
    """A UDP socket that refuses SO_MARK, as the kernel does without CAP_NET_ADMIN."""

    def __init__(self, port: int | None, fwmark: int | None) -> None:
        self.port = port or 40000
        self.closed = False

    def set_fwmark(self, mark: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    def close(self) -> None:
        self.closed = True


def test_a_refused_fwmark_is_eaddrinuse_and_changes_nothing(tmp_path):
    opened: list[MarklessSocket] = []

    def open_udp(port, fwmark):
        opened.append(MarklessSocket(port, fwmark))
        return opened[-1]

    dev, _ = make(tmp_path, "ListenPort = 0\n", open_udp=open_udp)
    dev.open_udp()
    key = dev.engine.private_key
    for req in (
        SetRequest(private_key=keys.decode_key(KB), fwmark=7, peers=[PeerChange(PB)]),
        SetRequest(listen_port=40001, fwmark=7, peers=[PeerChange(PB)]),  # on the new socket
    ):
        with pytest.raises(UapiError) as info:
            wgapi.apply_set(dev, req)
        assert info.value.errno == errno.EADDRINUSE  # wireguard-go's code for BindSetMark
        assert dev.udp is opened[0] and dev.fwmark is None
        assert dev.engine.private_key == key and not dev.engine.peers
    assert opened[1].closed and not opened[0].closed  # the unused new socket was closed


def test_endpoint_names_are_remembered_until_a_literal_replaces_them(tmp_path):
    dev, _ = make(tmp_path)
    dev.add_peer(PB, name="b", endpoint=("127.0.0.1", 1), hostname=("localhost", 1))
    dev.add_peer(PC, name="c", endpoint=("127.0.0.1", 2), hostname=("127.0.0.1", 2))
    assert dev.hostnames == {PB: ("localhost", 1)}  # a literal is nothing to re-resolve
    wgapi.apply_set(dev, SetRequest(peers=[PeerChange(PB, endpoint=("127.0.0.9", 9))]))
    assert dev.hostnames == {} and dev.engine.peers[PB].endpoint == ("127.0.0.9", 9)
    dev.update_peer(PB, hostname=("localhost", 3))
    assert dev.hostnames == {PB: ("localhost", 3)}
    dev.remove_peer(PB)
    assert dev.hostnames == {}


def test_segments_are_added_rebound_and_removed_through_the_device(tmp_path):
    body = PEER_B + "\n[Segment lab]\nVNI = 7\nDevice = tps0\nBridge = br-x\nPeers = b\n"

    async def main():
        dev, host = make(tmp_path, body, host=RecordingHost({"br-x": "bridge"}))
        dev.add_configured_peers({})
        seg = dev.conf.segments[0]
        await dev.add_segment(seg)
        assert ("configure", "tps0", 1420 - 8 - 14, ()) in host.calls
        assert ("enslave", "tps0", "br-x") in host.calls
        assert dev.taps[7].name == "tps0" and dev.taps[7].kw["tap"] is True
        assert 7 in dev.engine.segments
        tap = dev.taps[7]
        dev.remove_segment(7)
        assert tap.closed and 7 not in dev.taps and 7 not in dev.engine.segments

    asyncio.run(main())


def test_mtu_and_addresses_go_to_the_kernel_only_with_a_tun(tmp_path):
    async def main():
        dev, host = make(tmp_path, "Address = 10.0.0.1/24\n")
        await dev.set_mtu(1380)
        assert dev.engine.mtu == 1380 and host.calls == []  # no TUN yet: engine only
        dev.open_devices(workers=1)
        await dev.set_mtu(1300)
        a, b = ipaddress.ip_interface("10.0.0.1/24"), ipaddress.ip_interface("10.0.0.5/24")
        await dev.set_addresses((a,), (b,))
        assert host.calls == [
            ("mtu", "tpd0", 1300),
            ("addresses", "tpd0", ("10.0.0.1/24",), ("10.0.0.5/24",)),
        ]
        dev.close_devices()

    asyncio.run(main())


def test_default_route_sets_wg_quick_fwmark_and_rules(tmp_path):
    body = f"[Peer]\nPublicKey = {keys.public_from_private(KB)}\nAllowedIPs = 0.0.0.0/0\n"

    async def main():
        dev, host = make(tmp_path, "ListenPort = 0\n" + body)
        dev.open_udp()
        try:
            assert dev.fwmark == iface.DEFAULT_ROUTE_TABLE
            dev.open_devices(workers=1)
            await dev.install_routes()
            assert ("rules", iface.DEFAULT_ROUTE_TABLE) in host.calls
            await dev.remove_rules()
            assert host.calls[-1] == ("remove rules",) and not dev.routes.rules
        finally:
            dev.close_devices()
            dev.close_socket()

    asyncio.run(main())


def test_two_devices_carry_a_ping_and_obey_wg_set_live(tmp_path):
    """Two Devices started the daemon's way on fakes (tests/harness/fakes.py): a ping crosses;
    `wg set ... allowed-ips` through the UAPI path takes effect on the very next packet, on the
    sending side (routing) and on the receiving side (the source check); a peer removed over the
    UAPI carries nothing more; closing leaves every fake closed."""
    from tests.harness.fakes import FakeNetwork, FakeTun
    from tests.harness.packets import icmp_echo, ipv4
    from tunnelpy.datapath import ProtocolClock

    wire = FakeNetwork()
    ka, kb = keys.generate_private(), keys.generate_private()
    pa, pb = (keys.decode_key(keys.public_from_private(k)) for k in (ka, kb))

    def device(name: str, key: str, port: int, other: str, other_port: int, inner: str) -> Device:
        path = tmp_path / f"{name}.conf"
        path.write_text(
            f"[Interface]\nName = {name}\nPrivateKey = {key}\nListenPort = {port}\n\n"
            f"[Peer]\nPublicKey = {keys.public_from_private(other)}\nAllowedIPs = {inner}\n"
            f"Endpoint = 127.0.0.1:{other_port}\n"
        )
        path.chmod(0o600)
        return Device(
            cfgmod.load(str(path)), host=RecordingHost(), open_tun=FakeTun,
            open_udp=wire.factory("127.0.0.1"),
        )  # fmt: skip

    a = device("tpda", ka, 40001, kb, 40002, "10.0.0.2/32")
    b = device("tpdb", kb, 40002, ka, 40001, "10.0.0.1/32")

    def packet(src: str, dst: str, seq: int) -> bytes:
        return ipv4(src, dst, icmp_echo(9, seq, b"dev"), proto=1, csum=True)

    async def until(cond, what: str, tries: int = 500) -> None:
        for _ in range(tries):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    async def crosses(pkt: bytes) -> bool:
        """Send pkt from a's TUN; True if it comes out of b's TUN within a second."""
        a.tun.inject(pkt)
        try:
            await until(lambda: b.tun.written, "the packet at b", tries=100)
        except AssertionError:
            return False
        assert b.tun.take_written() == [pkt]
        return True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = ProtocolClock(loop)
        for d in (a, b):
            d.open_udp()
            d.add_configured_peers(await d.resolve_endpoints(d.conf.peers, d.conf.path))
            d.open_devices(workers=1)
            await d.configure_devices(own_links=set())
            d.start(loop, clock)
            await d.install_routes()
        try:
            assert await crosses(packet("10.0.0.1", "10.0.0.2", 1))
            # a routes nothing to 10.0.0.3 until `wg set` gives it to b
            assert not await crosses(packet("10.0.0.1", "10.0.0.3", 2))
            wgapi.apply_set(a, SetRequest(peers=[PeerChange(pb, allowed_ips=[net("10.0.0.3/32")])]))
            assert await crosses(packet("10.0.0.1", "10.0.0.3", 3))
            # b accepts 10.0.0.9 from a only once its own `wg set` allows that source
            wgapi.apply_set(a, SetRequest(peers=[PeerChange(pb, allowed_ips=[net("10.0.0.0/24")])]))
            assert not await crosses(packet("10.0.0.9", "10.0.0.2", 4))
            wgapi.apply_set(b, SetRequest(peers=[PeerChange(pa, allowed_ips=[net("10.0.0.9/32")])]))
            assert await crosses(packet("10.0.0.9", "10.0.0.2", 5))
            # a peer removed over the UAPI carries nothing more
            wgapi.apply_set(a, SetRequest(peers=[PeerChange(pb, remove=True)]))
            assert not await crosses(packet("10.0.0.1", "10.0.0.2", 6))
        finally:
            for d in (a, b):
                await d.stop()
                d.close_devices()
                d.close_socket()

    asyncio.run(main())
    assert wire.sockets == {}  # both sockets closed and unbound


def test_a_deleted_tun_tells_the_owner_and_a_deleted_tap_stops_its_segment(tmp_path):
    """`ip link del` under a running Device (FakeTun.delete behaves as the kernel does): the
    TUN's loss reaches on_lost once and its fd is no longer watched; a TAP's loss removes just
    that segment."""
    from tests.harness.fakes import FakeNetwork, FakeTun
    from tunnelpy.datapath import ProtocolClock

    body = "ListenPort = 0\n" + PEER_B + "\n[Segment lab]\nVNI = 7\nDevice = tps0\n"
    lost: list[str] = []
    dev, _ = make(
        tmp_path, body, open_tun=FakeTun, open_udp=FakeNetwork().factory("127.0.0.1"),
        on_lost=lost.append,
    )  # fmt: skip

    async def main() -> None:
        loop = asyncio.get_running_loop()
        dev.open_udp()
        dev.add_configured_peers({})
        dev.add_configured_segments()
        dev.open_devices(workers=1)
        dev.start(loop, ProtocolClock(loop))
        try:
            dev.taps[7].delete()
            for _ in range(100):
                if 7 not in dev.engine.segments:
                    break
                await asyncio.sleep(0.01)
            assert 7 not in dev.engine.segments and 7 not in dev.taps and lost == []
            tun = dev.tun
            tun.delete()
            for _ in range(100):
                if lost:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # more readiness would call again, were it still watched
            assert lost == ["interface tpd0 was deleted"]
            assert not loop.remove_reader(tun.fd)  # already removed
        finally:
            await dev.stop()
            dev.close_devices()
            dev.close_socket()

    asyncio.run(main())


def test_an_endpoint_name_that_does_not_resolve_yet_does_not_stop_the_interface(
    tmp_path, monkeypatch, caplog
):
    import tunnelpy.device as devmod

    answers = [OSError(-2, "Name or service not known")] * 3 + [("192.0.2.7", 40002)]
    asked = []

    def resolve(host, port):
        asked.append(host)
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    monkeypatch.setattr(devmod, "resolve", resolve)
    monkeypatch.setattr(devmod, "RESOLVE_RETRY_FIRST", 0.01)
    body = PEER_B.replace("127.0.0.1:40002", "later.example:40002")

    class Pump:
        def perform(self, out):
            pass

    async def main():
        dev, _ = make(tmp_path, "ListenPort = 0\n" + body)
        endpoints = await dev.resolve_endpoints(dev.conf.peers, dev.conf.path)
        assert endpoints == {}  # not an error: the peer comes up without an endpoint
        dev.open_udp()
        dev.add_configured_peers(endpoints)
        assert dev.engine.peers[PB].endpoint is None
        dev.loop, dev.datapath = asyncio.get_running_loop(), Pump()  # as start() leaves them
        dev._start_retries()
        for _ in range(200):
            if dev.engine.peers[PB].endpoint is not None:
                break
            await asyncio.sleep(0.01)
        assert dev.engine.peers[PB].endpoint == ("192.0.2.7", 40002)
        assert asked == ["later.example"] * 4
        dev.close_socket()

    with caplog.at_level("INFO", logger="tunnelpyd"):
        asyncio.run(main())
    text = caplog.text
    assert text.count("does not resolve yet") == 1 and text.count("still does not resolve") == 1
    assert "resolves now; endpoint set" in text


def test_plain_vxlan_endpoint_names_must_resolve(tmp_path, monkeypatch):
    import tunnelpy.device as devmod

    def resolve(host, port):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(devmod, "resolve", resolve)
    path = tmp_path / "vx0.conf"
    path.write_text("[Interface]\nName = vx0\nTransport = vxlan\n"
                    "[Peer]\nName = far\nEndpoint = nowhere.example:4789\n")  # fmt: skip
    path.chmod(0o600)

    async def main():
        dev = Device(cfgmod.load(str(path)), host=RecordingHost(), open_tun=FakeTap)
        with pytest.raises(DeviceError, match=r"Peer.Endpoint: cannot resolve nowhere.example"):
            await dev.resolve_endpoints(dev.conf.peers, dev.conf.path)

    asyncio.run(main())


def test_uapi_refuses_a_low_order_peer_key_and_changes_nothing(tmp_path):
    from tunnelpy.io.uapi import UapiError

    dev, _ = make(tmp_path, "ListenPort = 0\n")
    dev.open_udp()
    try:
        req = SetRequest(peers=[
            PeerChange(PB, allowed_ips=[net("10.0.0.2/32")]),  # fine, but in the same request
            PeerChange(bytes(32), allowed_ips=[net("10.0.0.9/32")]),
        ])  # fmt: skip
        with pytest.raises(UapiError) as e:
            wgapi.apply_set(dev, req)
        assert e.value.errno == 22 and "low-order" in str(e.value)
        assert dev.engine.peers == {}  # nothing half-applied
    finally:
        dev.close_socket()


def test_uapi_zero_private_key_removes_the_key_and_a_peer_with_our_key_goes(tmp_path):
    dev, _ = make(tmp_path, "ListenPort = 0\n")
    dev.open_udp()
    try:
        wgapi.apply_set(dev, SetRequest(private_key=None))
        assert dev.engine.private_key == b"" and dev.engine.public_key == b""
        assert wgapi.snapshot(dev).private_key == b""
        wgapi.apply_set(dev, SetRequest(peers=[PeerChange(PB, allowed_ips=[net("10.0.0.2/32")])]))
        # now take the key whose public half is that peer's: the peer must go (wireguard-go)
        wgapi.apply_set(dev, SetRequest(private_key=keys.decode_key(KB)))
        assert dev.engine.public_key == PB and PB not in dev.engine.peers
    finally:
        dev.close_socket()
