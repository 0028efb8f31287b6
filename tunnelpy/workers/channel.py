"""The control channel between the daemon and one worker: typed messages on a socketpair.

A SOCK_SEQPACKET pair keeps message boundaries; a message larger than one frame (a routing table
of 10^5 prefixes) is cut into frames marked "more follows". What travels is the fixed binary
codec of messages.py, never pickle: the two ends do not trust each other equally. Workers run
with fewer privileges than the daemon, so the daemon must read whatever a worker sends as
hostile — a pickle from a compromised worker would run code in the privileged daemon.

Reading is therefore bounded and checked: a frame longer than FRAME, a frame marker that is
neither "last" nor "more", a "more" frame that is not full, passed file descriptors, a message reassembled past ``max_message``
bytes, or bytes the decoder refuses all end the channel: ``error`` says why, and the owner's
``on_close`` runs as for any other end (the pool then treats the worker as failed). No exception
from the other side's bytes reaches the event loop.

Sending never blocks the event loop: frames the socket cannot take wait in a queue flushed when
it becomes writable. That queue is bounded too (``max_queued``): a peer that stops reading is
failed, not allowed to grow the daemon's memory. End of file means the other process is gone.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from .messages import Message, MessageError, encode

FRAME = 128 * 1024
BUFFER = 4 << 20
MAX_QUEUED = 256 << 20  # bytes waiting to be sent: a reader this far behind has stopped reading
_LAST, _MORE = b"L"[0], b"M"[0]
_MARKS = (b"L", b"M")

log = logging.getLogger("tunnelpyd")

M = TypeVar("M", bound=Message)


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            s.setsockopt(socket.SOL_SOCKET, opt, BUFFER)
    return a, b


class Channel(Generic[M]):
    """One end. ``decode`` turns a reassembled message into the type this end receives
    (messages.decode_from_worker on the daemon's side, decode_from_daemon on a worker's)."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[M], None],
        on_close: Callable[[], None],
        *,
        decode: Callable[[bytes], M],
        max_message: int,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = loop
        self.on_message = on_message
        self.on_close = on_close
        self.decode = decode
        self.max_message = max_message
        self.max_queued = max_queued
        self.error: str | None = None  # why this end closed the channel, if the other broke it
        self._out: deque[bytes] = deque()
        self._queued = 0
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._writing = False
        self.closed = False
        loop.add_reader(sock.fileno(), self._on_readable)

    def send(self, msg: Message) -> None:
        if self.closed:
            return
        self.send_bytes(encode(msg))

    def send_bytes(self, data: bytes) -> None:
        """An encoded message as is (the pool encodes a broadcast once for every worker)."""
        if self.closed:
            return
        out = self._out
        n = len(data)
        for at in range(0, n, FRAME):
            out.append(_MARKS[at + FRAME < n] + data[at : at + FRAME])
        self._queued += n
        if self._queued > self.max_queued:
            self.fail(f"the other end stopped reading ({self._queued} bytes queued)")
            return
        if not self._writing:
            self._flush()

    def _flush(self) -> None:
        out = self._out
        try:
            while out:
                self.sock.send(out[0])
                self._queued -= len(out.popleft()) - 1
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
                frame, _anc, flags, _addr = self.sock.recvmsg(FRAME + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                frame, flags = b"", 0
            if not frame:
                self.close()
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                self.fail("a frame longer than FRAME, or carrying file descriptors")
                return
            mark = frame[0]
            if mark != _LAST and mark != _MORE:
                self.fail(f"frame marker {mark}")
                return
            self._partial_size += len(frame) - 1
            if self._partial_size > self.max_message:
                self.fail(f"a message over {self.max_message} bytes")
                return
            if mark == _MORE:
                if len(frame) != FRAME + 1:  # (so a message is at most max_message/FRAME frames)
                    self.fail("a short frame marked 'more follows'")
                    return
                self._partial.append(frame[1:])
                continue
            if self._partial:
                self._partial.append(frame[1:])
                data = b"".join(self._partial)
                self._partial = []
            else:
                data = frame[1:]
            self._partial_size = 0
            try:
                msg = self.decode(data)
            except MessageError as e:
                self.fail(f"malformed message: {e}")
                return
            self.on_message(msg)
            if self.closed:
                return

    def fail(self, why: str) -> None:
        """The other end broke the protocol: close, keeping the reason for the owner."""
        if self.closed:
            return
        self.error = why
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._out.clear()
        self._partial = []
        fd = self.sock.fileno()
        if fd >= 0:
            self.loop.remove_reader(fd)
            if self._writing:
                self.loop.remove_writer(fd)
        self.sock.close()
        self.on_close()
