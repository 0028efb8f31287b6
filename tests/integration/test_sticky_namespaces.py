"""Sticky source addresses between real tunnelpyd daemons in namespaces (io/udp.py).

Responder B has two IPv4 and two IPv6 addresses on its one link; peer A reaches it at the
*secondary* one. Without sticky sources B's kernel would answer from the primary address (the
first IPv4 one; for IPv6 the one with the longer prefix match to A, which the addresses are
chosen to make the primary), A would roam its endpoint there, and a NAT or firewall in between
would drop the answers. Checked: every datagram B's port sends to A leaves from the secondary
address (a raw AF_PACKET capture in A's namespace), A's endpoint (``wg show``) stays at it, and
with ``Workers = 2`` the worker's sends do too. Then the secondary address is deleted under B:
B's next datagram falls back to the kernel's choice at once — a single ping from B (one echo
request, no retry) crosses — and A's endpoint follows to the primary address.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.harness.netns import Lab
from tests.harness.sites import new_site, start

pytestmark = pytest.mark.root

PORT_A, PORT_B = 51821, 51820
A4, B4_PRIMARY, B4_SECONDARY = "10.51.0.1", "10.51.0.2", "10.51.0.3"
# fd51::1 shares 126 bits with ::2 and 124 with ::8: RFC 6724 rule 8 makes ::2 the kernel's
# choice for A, so an answer from ::8 is the sticky source's doing.
A6, B6_PRIMARY, B6_SECONDARY = "fd51::1", "fd51::2", "fd51::8"
INNER_A, INNER_B = "10.52.0.1", "10.52.0.2"
TUNNELPY = [sys.executable, "-m", "tunnelpy"]

# Counts, by source address, the UDP datagrams from port PORT that arrive on IFNAME (not those
# sent from it), until a line on stdin; then prints them as JSON.
_CAPTURE = r"""
import json, select, socket, struct, sys
ifname, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((ifname, 0))
print("ready", flush=True)
seen = {}
while True:
    r, _, _ = select.select([s, sys.stdin], [], [], 30)
    if sys.stdin in r or not r:
        break
    frame, addr = s.recvfrom(65535)
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    kind = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[14:]
    if kind == 0x0800 and ip[9] == 17:
        src, udp = socket.inet_ntop(socket.AF_INET, ip[12:16]), ip[(ip[0] & 15) * 4:]
    elif kind == 0x86DD and ip[6] == 17:
        src, udp = socket.inet_ntop(socket.AF_INET6, ip[8:24]), ip[40:]
    else:
        continue
    if struct.unpack_from("!H", udp)[0] == port:
        seen[src] = seen.get(src, 0) + 1
print(json.dumps(seen), flush=True)
"""


class Capture:
    """The datagrams from B's port arriving in A's namespace, by source address."""

    def __init__(self, ns: str, ifname: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _CAPTURE, ifname, str(PORT_B)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise AssertionError(f"capture did not start: {line} {self.proc.stderr.read()}")

    def stop(self) -> dict[str, int]:
        out, err = self.proc.communicate("stop\n", timeout=30)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def endpoint_of(lab: Lab, site, peer_key: str) -> str:
    for line in lab.wg_show(site.ns, site.ifname, "endpoints").splitlines():
        key, endpoint = line.split()
        if key == peer_key:
            return endpoint
    raise AssertionError(f"{peer_key} not in wg show endpoints")


def show_json(name: str) -> dict:
    res = subprocess.run(
        [*TUNNELPY, "show", name, "--json"], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stderr
    (doc,) = json.loads(res.stdout)
    return doc


def ping_once(lab: Lab, ns: str, addr: str, wait: int = 5) -> bool:
    """One echo request, no retries: True when its reply came within `wait` seconds."""
    res = lab.run(ns, "ping", "-n", "-c", "1", "-W", str(wait), addr, check=False, timeout=30)
    if res.returncode != 0:
        lab.notes.append(f"single ping {addr} from {ns}:\n{res.stdout}{res.stderr}")
    return res.returncode == 0


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@pytest.mark.parametrize(
    ("family", "workers"), [(4, 1), (6, 1), (4, 2)], ids=["v4", "v6", "v4-workers"]
)
def test_replies_leave_from_the_address_asked_and_fall_over_when_it_goes(lab, family, workers):
    ns_a, ns_b = lab.ns
    veth_a, veth_b = lab.veth(ns_a, ns_b, [f"{A4}/24", f"{A6}/64"], [f"{B4_PRIMARY}/24"])
    # The primaries first (the kernel's choice), then the secondaries on the same link.
    lab.add_addresses(ns_b, veth_b, [f"{B6_PRIMARY}/64", f"{B4_SECONDARY}/24"])
    lab.add_addresses(ns_b, veth_b, [f"{B6_SECONDARY}/64"])
    primary, secondary = (B4_PRIMARY, B4_SECONDARY) if family == 4 else (B6_PRIMARY, B6_SECONDARY)
    a = new_site(lab, ns_a, PORT_A, [f"{INNER_A}/24"])
    b = new_site(lab, ns_b, PORT_B, [f"{INNER_B}/24"])
    b.extra = f"Workers = {workers}\n"
    # A knows B at the secondary address; B knows no endpoint for A (it learns it).
    a.peers.append(b.peer_block(f"{bracket(secondary)}:{PORT_B}", [f"{INNER_B}/32"], name="b"))
    b.peers.append(a.peer_block(None, [f"{INNER_A}/32"], name="a"))
    start(lab, a, log_level="debug")
    start(lab, b, log_level="debug")
    want = f"{bracket(secondary)}:{PORT_B}"

    cap = Capture(ns_a, veth_a)
    try:
        assert lab.ping(ns_a, INNER_B), lab.notes
        assert lab.ping(ns_b, INNER_A), lab.notes
        # Flows B -> A until the worker sent some: the kernel spreads flows over the TUN's
        # queues by hash, so each has 1/2 chance of the worker's (12 all missing: 1 in 4096).
        sent_by_worker = []
        for _ in range(12 if workers > 1 else 1):
            assert lab.tcp_transfer(ns_b, ns_a, INNER_A, 2 << 20), lab.notes
            if workers == 1:
                break
            time.sleep(0.2)  # (workers report every 0.1 s)
            sent_by_worker.append(show_json(b.ifname)["workers"][1]["tx_packets"] or 0)
            if sent_by_worker[-1] > 100:
                break
        seen = cap.stop()
    finally:
        cap.kill()
    # (AF_PACKET sees GSO super-packets: a few dozen for a MiB)
    assert seen.get(secondary, 0) > 10 and set(seen) == {secondary}, seen
    assert endpoint_of(lab, a, b.public_key) == want
    if workers > 1:
        assert sent_by_worker[-1] > 100, f"the worker never sent: {sent_by_worker}"

    # The secondary address goes. B's next datagram to A cannot leave from it: it leaves at
    # once from the kernel's choice, so one echo request from B crosses and is answered.
    lab.host("ip", "-n", ns_b, "addr", "del", f"{secondary}/{24 if family == 4 else 64}",
             "dev", veth_b)  # fmt: skip
    cap = Capture(ns_a, veth_a)
    try:
        assert ping_once(lab, ns_b, INNER_A), lab.diagnostics()
        seen = cap.stop()
    finally:
        cap.kill()
    assert seen.get(primary, 0) >= 1 and secondary not in seen, seen
    assert endpoint_of(lab, a, b.public_key) == f"{bracket(primary)}:{PORT_B}"
    # And the session goes on both ways, A now sending to the primary address.
    assert lab.ping(ns_a, INNER_B), lab.notes
    assert lab.tcp_transfer(ns_a, ns_b, INNER_B, 1 << 20), lab.notes
    assert lab.tcp_transfer(ns_b, ns_a, INNER_A, 1 << 20), lab.notes
    lab.wait_for(lambda: "(kernel's choice)" in b.proc.log(400), 5, "the fall-over logged")
    drops = show_json(b.ifname)["drops"]
    assert not drops.get("udp_send_error"), drops  # nothing was lost to the vanished address
