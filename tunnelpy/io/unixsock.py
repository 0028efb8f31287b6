"""Creating a private AF_UNIX listening socket, shared by the UAPI, control and metrics sockets."""

from __future__ import annotations

import os
import socket


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
