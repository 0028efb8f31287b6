"""The process that forks workers: started once, before the daemon drops privileges.

Why not start each worker with ``python -m tunnelpy.workers.child``? Because a worker may have
to be restarted after the daemon became its ``User``, and that user may not be allowed to execute
the interpreter (a Python under /root, a virtualenv in a private home). The zygote is started at
the beginning, as root, imports the worker code, drops to ``User`` (or, without one, to uid 0 with
no capability) keeping no capability at all,
and then only forks: a worker is a fork of a single-threaded process that holds no event loop,
which is the one situation where fork() without exec() is safe in Python.

Protocol, on a SOCK_SEQPACKET socket from the daemon: a request is the worker's argument list
as a JSON array of strings (``{tun}``, ``{udp}``, ``{ctl}``, ``{counters}`` standing for the file
descriptors) plus those four descriptors in SCM_RIGHTS; the answer is the worker's pid in ASCII
digits, or ``error: …``. Neither side unpickles or evaluates anything: the zygote runs with the
privileges of ``User`` and the daemon reads its answer as it reads a worker's messages, as
bytes that may be hostile (``parse_answer``). The zygote closes its copies of the descriptors
after each fork, ignores SIGCHLD so the kernel reaps its children, and exits when the daemon's
end of the socket closes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys

from .. import privileges

FD_NAMES = ("tun", "udp", "ctl", "counters")
MAX_REQUEST = 1 << 16
MAX_ARGS = 64
PID_MAX = 1 << 22  # the kernel's largest pid_max


def encode_request(argv: list[str]) -> bytes:
    if not all(type(a) is str for a in argv):
        raise TypeError("worker arguments are strings")
    data = json.dumps(argv).encode()
    if len(argv) > MAX_ARGS or len(data) > MAX_REQUEST:
        raise ValueError("worker argument list too long")
    return data


def decode_request(data: bytes, fds: list[int]) -> list[str]:
    """The worker's argv, with each placeholder argument replaced by its descriptor number."""
    if len(data) > MAX_REQUEST:
        raise ValueError("request too long")
    argv: list[str] = json.loads(data)
    if type(argv) is not list or len(argv) > MAX_ARGS or not all(type(a) is str for a in argv):
        raise ValueError("a request is a JSON array of strings")
    if len(fds) != len(FD_NAMES):
        raise ValueError(f"expected {len(FD_NAMES)} descriptors, got {len(fds)}")
    names = {"{" + name + "}": str(fd) for name, fd in zip(FD_NAMES, fds, strict=True)}
    return [names.get(a, a) for a in argv]


def parse_answer(data: bytes) -> int:
    """The pid the zygote answered; OSError with its message (made printable) otherwise."""
    if data.isdigit() and len(data) <= 7 and 0 < int(data) <= PID_MAX:
        return int(data)
    text = data.decode("ascii", "replace")
    text = "".join(c if c.isprintable() else "?" for c in text[:200])
    raise OSError(text or "the worker zygote exited")


def serve(sock: socket.socket) -> None:
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, len(FD_NAMES))
        except InterruptedError:
            continue
        if not data:
            return  # the daemon is gone
        try:
            argv = decode_request(data, fds)
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

    # Workers need nothing but the descriptors they are handed: no capability in any mode
    # (User: that user with none; else uid 0 with none, which the daemon can still signal).
    try:
        if args.user and os.geteuid() == 0:
            privileges.drop_privileges(args.user, keep=())
        else:
            privileges.drop_all_capabilities()
    except (privileges.PrivilegeError, OSError) as e:
        print(f"tunnelpyd worker zygote: {e}", file=sys.stderr)
        return 1
    sock = socket.socket(fileno=args.sock_fd)
    sock.setblocking(True)
    serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
