"""The control channel between the daemon and one worker: pickled messages on a socketpair.

A SOCK_SEQPACKET pair keeps message boundaries; messages larger than one frame (a routing table
of 10^5 prefixes) are cut into frames marked "more follows". Both ends are our own processes, made
by the daemon with ``socketpair()``: nothing from the network ever reaches this channel, which is
why pickle is acceptable here. Sending never blocks the event loop: frames the socket cannot take
wait in a queue flushed when it becomes writable. End of file means the other process is gone.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

FRAME = 128 * 1024
BUFFER = 4 << 20
_LAST, _MORE = b"L", b"M"


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            s.setsockopt(socket.SOL_SOCKET, opt, BUFFER)
    return a, b


class Channel:
    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Any], None],
        on_close: Callable[[], None],
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = loop
        self.on_message = on_message
        self.on_close = on_close
        self._out: deque[bytes] = deque()
        self._partial: list[bytes] = []
        self._writing = False
        self.closed = False
        loop.add_reader(sock.fileno(), self._on_readable)

    def send(self, msg: Any) -> None:
        if self.closed:
            return
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        out = self._out
        for at in range(0, len(data), FRAME):
            chunk = data[at : at + FRAME]
            out.append((_LAST if at + FRAME >= len(data) else _MORE) + chunk)
        if not self._writing:
            self._flush()

    def _flush(self) -> None:
        out = self._out
        try:
            while out:
                self.sock.send(out[0])
                out.popleft()
        except (BlockingIOError, InterruptedError):
            if not self._writing:
                self._writing = True
                self.loop.add_writer(self.sock.fileno(), self._flush)
            return
        except OSError:
            self.close()
            return
        if self._writing:
            self._writing = False
            self.loop.remove_writer(self.sock.fileno())

    def _on_readable(self) -> None:
        for _ in range(256):
            try:
                frame = self.sock.recv(FRAME + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                frame = b""
            if not frame:
                self.close()
                return
            self._partial.append(frame[1:])
            if frame[:1] == _LAST:
                data = b"".join(self._partial)
                self._partial = []
                self.on_message(pickle.loads(data))
                if self.closed:
                    return

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        fd = self.sock.fileno()
        if fd >= 0:
            self.loop.remove_reader(fd)
            if self._writing:
                self.loop.remove_writer(fd)
        self.sock.close()
        self.on_close()
