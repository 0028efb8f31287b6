"""Reading the config after the drop to ``User =``: a root helper that reads one file.

The config holds PreUp/PostUp commands, which run as root at the next start, and the keys: it
must stay root's (0600, refused if anyone else owns or can write it). After the daemon became
an unprivileged user it can no longer read it, yet a reload (SIGHUP, ``tunnelpy reload``) must.
So before the drop the daemon starts this helper as root (``python3 -m tunnelpy.confreader
PATH``) on one end of a socketpair. The helper

* keeps uid 0 but no capability at all, with no_new_privs (reading root-owned 0600 files needs
  only the owner's permission bits);
* on each request (any one byte) reads and parses *that one* config — the path is fixed when it
  starts; nothing in a request names a file — with the same checks as at start-up
  (config.read_trusted: regular file, trusted owner, size cap), recording every file the parse
  read: the config and the key files it names;
* answers with those files' bytes and modes (or the one-line error), and exits when the daemon's
  end closes.

The daemon parses the config again from those bytes (config.load with an opener that serves
only them), so both sides agree on what the file said. Framing, both ways plain bytes (no
pickle, nothing evaluated): an answer is ``status`` (1 byte: 0 files, 1 error), ``length``
(u32 BE), then the body — for files, repeated ``u32 path length, path (UTF-8), u32 mode,
u32 data length, data``; for an error, the UTF-8 message. The daemon checks every length
against its bounds before it believes it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import threading

from . import config as cfgmod

_U32 = struct.Struct(">I")
OK, ERROR = 0, 1
# The config's cap plus room for key files and framing.
MAX_ANSWER = cfgmod.MAX_CONFIG_BYTES + (1 << 20)
MAX_FILES = 4096
READ_TIMEOUT = 30.0


class ReaderError(Exception):
    """The reader could not be started or did not answer sensibly (one line)."""


def encode_files(files: dict[str, tuple[bytes, int]]) -> bytes:
    parts = []
    for path, (data, mode) in files.items():
        raw = path.encode()
        parts += [
            _U32.pack(len(raw)),
            raw,
            _U32.pack(mode & 0xFFFFFFFF),
            _U32.pack(len(data)),
            data,
        ]
    body = b"".join(parts)
    return bytes([OK]) + _U32.pack(len(body)) + body


def encode_error(e: cfgmod.ConfigError) -> bytes:
    """A ConfigError as line (0: none), where and message, NUL-separated."""
    text = f"{e.line or 0}\0{e.where}\0{e.message}"
    body = " ".join(text.splitlines()).encode(errors="replace")[:4096]
    return bytes([ERROR]) + _U32.pack(len(body)) + body


def decode_error(path: str, body: bytes) -> cfgmod.ConfigError:
    parts = body.decode(errors="replace").split("\0", 2)
    if len(parts) != 3 or not parts[0].isdigit():
        return cfgmod.ConfigError(path, None, "", "the config reader's answer is malformed")
    return cfgmod.ConfigError(path, int(parts[0]) or None, parts[1], parts[2])


def decode_files(body: bytes) -> dict[str, tuple[bytes, int]]:
    """The files of an OK answer (ReaderError on anything malformed)."""
    files: dict[str, tuple[bytes, int]] = {}
    at, n = 0, len(body)

    def take(k: int) -> bytes:
        nonlocal at
        if k < 0 or at + k > n:
            raise ReaderError("the config reader's answer is malformed")
        chunk = body[at : at + k]
        at += k
        return chunk

    while at < n:
        if len(files) >= MAX_FILES:
            raise ReaderError("the config reader's answer is malformed")
        (plen,) = _U32.unpack(take(4))
        try:
            path = take(plen).decode()
        except UnicodeDecodeError:
            raise ReaderError("the config reader's answer is malformed") from None
        (mode,) = _U32.unpack(take(4))
        (dlen,) = _U32.unpack(take(4))
        files[path] = (take(dlen), mode)
    return files


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise ReaderError("the config reader exited")
        buf += chunk
    return bytes(buf)


class ConfigReader:
    """The daemon's side: start the helper before the drop, ask it on every reload."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()  # one request at a time (reloads run on the executor)

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tunnelpy.confreader", str(theirs.fileno()), self.path],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError as e:
            ours.close()
            raise ReaderError(f"cannot start the config reader: {e.strerror}") from None
        finally:
            theirs.close()
        ours.settimeout(READ_TIMEOUT)
        self.sock = ours

    def opener(self) -> cfgmod.Opener:
        """Read the config now (ReaderError, or ConfigError as the reader phrased it) and
        return an opener that serves exactly the files it read."""
        with self._lock:
            if self.sock is None:
                raise ReaderError("the config reader is not running")
            try:
                self.sock.sendall(b"R")
                head = _recv_exact(self.sock, 5)
                status, length = head[0], _U32.unpack(head[1:])[0]
                if status not in (OK, ERROR) or length > MAX_ANSWER:
                    raise ReaderError("the config reader's answer is malformed")
                body = _recv_exact(self.sock, length)
            except OSError as e:
                raise ReaderError(f"the config reader did not answer: {e}") from None
        if status == ERROR:
            raise decode_error(self.path, body)
        files = decode_files(body)

        def serve(path: str, limit: int) -> tuple[bytes, int]:
            if path not in files:
                raise cfgmod.FileRefused(path, "cannot read it: not read by the config reader")
            data, mode = files[path]
            if len(data) > limit:
                raise cfgmod.FileRefused(path, "is larger than allowed")
            return data, mode

        return serve

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()  # EOF: the helper exits
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    self.proc.kill()
                self.proc.wait()
            self.proc = None


# ---------------------------------------------------------------------------- the helper


def answer(path: str) -> bytes:
    """Parse ``path`` as the daemon would and return the framed answer."""
    read: dict[str, tuple[bytes, int]] = {}

    def recording(p: str, limit: int) -> tuple[bytes, int]:
        data, mode = cfgmod.read_trusted(p, limit)
        read[p] = (data, mode)
        return data, mode

    try:
        cfgmod.load(path, opener=recording)
    except cfgmod.ConfigError as e:
        return encode_error(e)
    return encode_files(read)


def serve(sock: socket.socket, path: str) -> None:
    while True:
        try:
            request = sock.recv(1)
        except OSError:
            return
        if not request:
            return
        try:
            sock.sendall(answer(path))
        except OSError:
            return


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[0].isdigit():
        print("usage: python3 -m tunnelpy.confreader FD PATH", file=sys.stderr)
        return 2
    import signal

    from . import privileges

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the daemon decides; EOF ends us
    try:
        privileges.drop_all_capabilities()
    except (privileges.PrivilegeError, OSError) as e:
        print(f"tunnelpyd config reader: {e}", file=sys.stderr)
        return 1
    sock = socket.socket(fileno=int(args[0]))
    sock.setblocking(True)
    serve(sock, args[1])  # as the daemon names it, relative to the same working directory
    return 0


if __name__ == "__main__":
    sys.exit(main())
