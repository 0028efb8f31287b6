"""Creating a private AF_UNIX listening socket, shared by the UAPI, control and metrics sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import stat


def bind_private(
    path: str, directory: str, mode: int = 0o600
) -> tuple[socket.socket, tuple[int, int]]:
    """A non-blocking stream socket bound at `path` (`mode`, 0600 unless asked; directory 0755).

    Returns the socket and the file's (st_dev, st_ino), so close() can tell whether the path
    is still ours before unlinking it. Raises OSError (EADDRINUSE when something took the path).
    """
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o755, exist_ok=True)
        # makedirs' mode is cut by the umask; keep 0755 like wireguard-go (sockets stay 0600).
        os.chmod(directory, 0o755)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # umask, not chmod after bind: there must be no moment where others can connect.
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        st = os.stat(path)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, (st.st_dev, st.st_ino)


class SocketInUse(OSError):
    """Another process listens on the path."""


class NotASocket(OSError):
    """The path is some other file: it is never removed."""


def remove_stale(path: str, timeout: float = 2.0) -> bool:
    """Make way for a new listener at ``path``: True when a stale socket (nothing listening: its
    daemon was killed) was removed, False when there was nothing. SocketInUse when something
    listens, NotASocket for any other file (never removed), OSError when it cannot be checked."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise NotASocket(f"{path} exists and is not a socket; refusing to remove it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return True
    raise SocketInUse(f"{path} is in use by another process")
