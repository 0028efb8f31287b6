"""The process that forks workers: started once, before the daemon drops privileges.

Why not start each worker with ``python -m tunnelpy.workers.child``? Because a worker may have
to be restarted after the daemon became its ``User``, and that user may not be allowed to execute
the interpreter (a Python under /root, a virtualenv in a private home). The zygote is started at
the beginning, as root, imports the worker code, drops to ``User`` keeping no capability at all,
and then only forks: a worker is a fork of a single-threaded process that holds no event loop,
which is the one situation where fork() without exec() is safe in Python.

Protocol, on a SOCK_SEQPACKET socket from the daemon: a request is the worker's argument list
(pickled, with ``{tun}``, ``{udp}``, ``{ctl}``, ``{counters}`` standing for the file descriptors)
plus those four descriptors in SCM_RIGHTS; the answer is the worker's pid as text, or ``error:
…``. The zygote closes its copies of the descriptors after each fork, ignores SIGCHLD so the
kernel reaps its children, and exits when the daemon's end of the socket closes.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import socket
import sys

from .. import privileges

FD_NAMES = ("tun", "udp", "ctl", "counters")


def serve(sock: socket.socket) -> None:
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, len(FD_NAMES))
        except InterruptedError:
            continue
        if not data:
            return  # the daemon is gone
        try:
            if len(fds) != len(FD_NAMES):
                raise ValueError(f"expected {len(FD_NAMES)} descriptors, got {len(fds)}")
            names = dict(zip(FD_NAMES, (str(fd) for fd in fds), strict=True))
            argv = [a.format(**names) for a in pickle.loads(data)]
            pid = os.fork()
            if pid == 0:  # the worker
                code = 1
                try:
                    sock.close()
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    from .child import main as worker_main

                    code = worker_main(argv)
                finally:
                    os._exit(code)
            sock.send(str(pid).encode())
        except Exception as e:  # a bad request must not end the zygote
            sock.send(f"error: {e}".encode())
        finally:
            for fd in fds:
                os.close(fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tunnelpyd-zygote")
    ap.add_argument("--sock-fd", type=int, required=True)
    ap.add_argument("--user", default="")
    args = ap.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the daemon decides; EOF ends us
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    import uvloop  # noqa: F401  (imported once here, shared by every fork)

    from . import child  # noqa: F401

    if args.user and os.geteuid() == 0:
        try:
            privileges.drop_privileges(args.user, keep=())
        except (privileges.PrivilegeError, OSError) as e:
            print(f"tunnelpyd worker zygote: {e}", file=sys.stderr)
            return 1
    sock = socket.socket(fileno=args.sock_fd)
    sock.setblocking(True)
    serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
