"""The UDP underlay socket: one dual-stack socket, batched receive and send.

One AF_INET6 socket with IPV6_V6ONLY off carries both families (IPv4 peers appear as
::ffff:a.b.c.d, which we normalise to plain dotted quads so the engine and `wg show` see the same
text form whichever family carried the datagram). Hosts with IPv6 disabled get an AF_INET socket.
"""

from __future__ import annotations

import errno
import socket

Addr = tuple[str, int]
SO_MARK = 36
BUFFER_SIZE = 4 << 20  # wireguard-go asks for 7 MiB; 4 MiB absorbs bursts of a 2-core box


class UdpError(Exception):
    pass


def _normalise(addr: tuple) -> Addr:
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    elif "%" in host:
        host = host.split("%", 1)[0]
    return (host, addr[1])


class UdpSocket:
    def __init__(self, port: int | None, fwmark: int | None = None) -> None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            bind: tuple = ("::", port or 0)
            self.v6 = True
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            bind = ("0.0.0.0", port or 0)
            self.v6 = False
        try:
            for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, BUFFER_SIZE)  # *BUFFORCE as root
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, opt, BUFFER_SIZE)
            if fwmark:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
            sock.bind(bind)
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                raise UdpError(f"UDP port {port} is already in use") from None
            raise UdpError(f"cannot bind UDP port {port}: {e.strerror}") from None
        sock.setblocking(False)
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.send_errors = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_fwmark(self, mark: int) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)

    def recv_batch(self, max_batch: int = 128) -> list[tuple[bytes, Addr]]:
        recv = self.sock.recvfrom
        out: list[tuple[bytes, Addr]] = []
        try:
            for _ in range(max_batch):
                data, addr = recv(65535)
                out.append((data, _normalise(addr)))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            # ICMP errors surface as ECONNREFUSED etc. on the next recv: not fatal for a
            # connectionless socket, the remaining datagrams are read next round.
            pass
        return out

    def _dest(self, addr: Addr) -> tuple:
        host = addr[0]
        if self.v6 and ":" not in host:
            return ("::ffff:" + host, addr[1])
        return addr

    def send(self, addr: Addr, datagrams: list[bytes]) -> None:
        dest = self._dest(addr)
        sendto = self.sock.sendto
        for d in datagrams:
            try:
                sendto(d, dest)
            except OSError:
                # EAGAIN (buffer full), ENETUNREACH, EPERM from a firewall: counted, not fatal.
                self.send_errors += 1

    def close(self) -> None:
        self.sock.close()


def resolve(host: str, port: int, prefer_v6: bool = True) -> Addr:
    """Blocking name resolution for an endpoint (run it in an executor)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"no address for {host}")
    # Follow getaddrinfo's order (RFC 6724 via gai.conf), like wg does.
    fam, _, _, _, sa = infos[0]
    return _normalise(sa)
