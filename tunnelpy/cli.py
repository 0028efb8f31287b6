"""Command-line entry points: `tunnelpyd` (the daemon) and `tunnelpy` (keys, checks, status, demo).

User mistakes end here as one line on stderr and exit status 1 — never a traceback.

The two argument parsers are built by :func:`daemon_parser` and :func:`parser` so that the man
pages and the bash completion (tunnelpy/manpages.py, tunnelpy/completion.py) are generated from
the very definitions the commands parse with; a test compares the committed pages with them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from . import config as cfgmod
from . import keys
from .logsetup import FORMATS, LEVELS, setup_logging
from .version import version

CONTROL_DIR = "/run/tunnelpy"  # control.DEFAULT_DIRECTORY (not imported: cli stays light)


def _fail(prog: str, msg: str) -> int:
    print(f"{prog}: {msg}", file=sys.stderr)
    return 1


class _UserError(Exception):
    """A mistake of the user's, already phrased as the one line to print."""


def load_config(path: str) -> cfgmod.Config:
    """The parsed config, or _UserError carrying the one-line reason (file:line, key, what)."""
    try:
        return cfgmod.load(path)
    except cfgmod.ConfigError as e:
        raise _UserError(str(e)) from None
    except OSError as e:
        raise _UserError(f"{path}: {e.strerror}") from None


def version_text() -> str:
    # wireguard-go's shape (first line "NAME vVERSION"): tools that quote it keep working.
    return (
        f"tunnelpyd v{version()}\n\nUserspace WireGuard daemon (and L2 overlay) in Python, for "
        "linux.\nSpeaks the WireGuard protocol and UAPI: wg, wg-quick and wireguard-go peers "
        "work with it."
    )


def daemon_parser() -> argparse.ArgumentParser:
    """tunnelpyd's command line (also the source of tunnelpyd(8) and its completion)."""
    ap = argparse.ArgumentParser(
        prog="tunnelpyd",
        description="tunnelpy VPN daemon: one interface from its config file, or an empty "
        "interface for wg, as wireguard-go",
        usage="tunnelpyd -c FILE [options]\n       tunnelpyd [-f|--foreground] IFNAME",
    )
    ap.add_argument("ifname", nargs="?", help="start IFNAME empty, as wireguard-go does")
    ap.add_argument("-c", "--config", metavar="FILE", help="site.conf (wg-quick syntax)")
    ap.add_argument(
        "-f", "--foreground", action="store_true",
        help="with IFNAME: stay in the foreground (default: return once ready)",
    )  # fmt: skip
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    ap.add_argument(
        "--log-level", choices=sorted(LEVELS), default=None,
        help="tunnelpy's own log level (overrides LogLevel =; default info, or LOG_LEVEL "
        "with IFNAME)",
    )  # fmt: skip
    ap.add_argument(
        "--log-format", choices=FORMATS, default=None,
        help="plain lines (RFC 3339 times) or one JSON object per line (overrides LogFormat =)",
    )  # fmt: skip
    ap.add_argument(
        "--uapi-dir", metavar="DIR", default="/var/run/wireguard",
        help="where the WireGuard UAPI socket goes",
    )  # fmt: skip
    ap.add_argument(
        "--control-dir", metavar="DIR", default=CONTROL_DIR,
        help="where the tunnelpy control socket goes",
    )  # fmt: skip
    ap.add_argument("--user", help="drop to this user after start-up (overrides User =)")
    return ap


def daemon_main(argv: list[str] | None = None) -> int:
    """`tunnelpyd -c FILE` (a site from its file) or `tunnelpyd [-f] IFNAME` (wireguard-go's
    command line: an empty interface configured with wg; tunnelpy/launcher.py)."""
    from . import launcher

    ap = daemon_parser()
    args = ap.parse_args(argv)
    if args.version:
        try:
            print(version_text(), flush=True)
        except BrokenPipeError:  # `tunnelpyd --version | head -1`: the reader left
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    ready = launcher.Readiness.from_env()  # set when we are the background child

    def fail(msg: str) -> int:
        if ready.fd is not None:  # the background child: the waiting parent prints it, once
            ready.failed(msg)
            return 1
        return _fail("tunnelpyd", msg)

    if (args.config is None) == (args.ifname is None):
        ap.print_usage(sys.stderr)
        return fail("give either -c FILE or an interface name")
    if args.config is not None:
        if args.foreground:
            return fail("-f is for `tunnelpyd IFNAME`; with -c the daemon stays in the foreground")
        try:
            conf = load_config(args.config)
        except _UserError as e:
            return fail(str(e))
        level = args.log_level or conf.interface.log_level or "info"
        log_format = args.log_format or conf.interface.log_format
    else:
        try:
            conf = launcher.interface_config(args.ifname)
        except launcher.LaunchError as e:
            return fail(str(e))
        level = args.log_level or launcher.log_level()
        log_format = args.log_format
        if not (args.foreground or launcher.foreground_from_env()):
            passed = [f"--{k.replace('_', '-')}={v}" for k, v in (
                ("log_level", args.log_level), ("log_format", args.log_format),
                ("uapi_dir", args.uapi_dir), ("control_dir", args.control_dir),
                ("user", args.user),
            ) if v is not None]  # fmt: skip
            try:
                launcher.start_in_background(args.ifname, passed)
            except launcher.LaunchError as e:
                return _fail("tunnelpyd", str(e))
            return 0
    setup_logging(level, fmt=log_format, pinned=args.log_format is not None)
    if os.geteuid() == 0:
        # Before any thread exists, so every thread inherits it: nothing the daemon executes
        # (hooks) gains privileges through setuid or file capabilities (privileges.py).
        from .privileges import PrivilegeError, no_new_privs

        try:
            no_new_privs()
        except PrivilegeError as e:
            return fail(str(e))

    import uvloop

    from .daemon import Daemon, StartupError
    from .datapath import relax_gc

    relax_gc()

    daemon = Daemon(
        conf,
        uapi_dir=args.uapi_dir,
        control_dir=args.control_dir,
        user=args.user,
        log_level_override=args.log_level,
        on_ready=ready.ready,
    )
    try:
        return uvloop.run(daemon.run())
    except StartupError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return 0


def _cmd_genkey(args: argparse.Namespace) -> int:
    print(keys.generate_private())
    return 0


def _cmd_genpsk(args: argparse.Namespace) -> int:
    print(keys.generate_psk())
    return 0


def _cmd_pubkey(args: argparse.Namespace) -> int:
    text = sys.stdin.read().strip()
    try:
        print(keys.public_from_private(text))
    except ValueError:
        return _fail("tunnelpy pubkey", "expected a base64 private key on standard input")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        conf = load_config(args.config)
    except _UserError as e:
        return _fail("tunnelpy", str(e))
    for w in conf.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for w in _unresolved_endpoints(conf):
        print(f"warning: {w}", file=sys.stderr)
    n_ips = sum(len(p.allowed_ips) for p in conf.peers)
    print(f"{conf.path}: OK: interface {conf.interface.name}, {len(conf.peers)} peer(s), {n_ips} allowed IP prefix(es)")
    return 0


def _unresolved_endpoints(conf: cfgmod.Config, timeout: float = 5.0) -> list[str]:
    """Endpoint names that do not resolve now (the daemon would start those peers without an
    endpoint and retry; with Transport = vxlan it would refuse to start)."""
    from concurrent.futures import ThreadPoolExecutor, wait

    from .io.udp import is_literal, resolve

    named = [p for p in conf.peers if p.endpoint and not is_literal(p.endpoint[0])]
    if not named:
        return []
    out = []
    pool = ThreadPoolExecutor(max_workers=min(8, len(named)))
    futures = {p.line: pool.submit(resolve, *p.endpoint) for p in named if p.endpoint}
    wait(futures.values(), timeout=timeout)
    for p in named:
        f = futures[p.line]
        problem = None
        if not f.done():
            problem = f"no answer within {timeout:.0f} s"
        elif isinstance(f.exception(), OSError):
            e = f.exception()
            problem = getattr(e, "strerror", None) or str(e)
        if problem and p.endpoint:
            then = ("tunnelpyd would refuse to start" if conf.interface.transport == "vxlan"
                    else "the peer would start without an endpoint and the name be retried")
            out.append(f"{conf.path}:{p.line}: Peer.Endpoint: {p.endpoint[0]} does not resolve "
                       f"now ({problem}); {then}")  # fmt: skip
    pool.shutdown(wait=False, cancel_futures=True)
    return out


def _cmd_show(args: argparse.Namespace) -> int:
    from .show import show

    return show(args.name, as_json=args.json, uapi_dir=args.uapi_dir, control_dir=args.control_dir)


def _cmd_reload(args: argparse.Namespace) -> int:
    from . import control

    path = control.socket_path(args.name, args.control_dir)
    try:
        result = control.request(path, "reload", timeout=60.0)
    except (FileNotFoundError, ConnectionRefusedError):
        return _fail("tunnelpy reload", f"no running tunnelpyd {args.name} (no {path})")
    except (OSError, control.ControlError) as e:
        return _fail("tunnelpy reload", str(e))
    print(f"{args.name}: {result['summary']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(keep_going=args.keep)


def _cmd_strip(args: argparse.Namespace) -> int:
    from .strip import StripError, strip

    try:
        conf = load_config(args.file)
        text = strip(conf)
    except (_UserError, StripError) as e:
        return _fail("tunnelpy strip", str(e))
    sys.stdout.write(text)
    return 0


def _cmd_install_unit(args: argparse.Namespace) -> int:
    from .unitinstall import InstallError, install

    try:
        written = install(args.dir, wg_quick=args.wg_quick, to_stdout=args.stdout)
    except InstallError as e:
        return _fail("tunnelpy install-unit", str(e))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    if written:
        print(
            "next: systemctl daemon-reload && systemctl enable --now tunnelpyd@NAME "
            "(for /etc/tunnelpy/NAME.conf)",
            file=sys.stderr,
        )
    return 0


def parser() -> argparse.ArgumentParser:
    """tunnelpy's command line (also the source of tunnelpy(8) and its completion)."""
    ap = argparse.ArgumentParser(prog="tunnelpy", description="tunnelpy tools")
    ap.add_argument(
        "--version", action="version", version=f"tunnelpy v{version()}",
        help="print the version and exit",
    )  # fmt: skip
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("genkey", help="print a new private key").set_defaults(fn=_cmd_genkey)
    sub.add_parser("genpsk", help="print a new pre-shared key").set_defaults(fn=_cmd_genpsk)
    sub.add_parser("pubkey", help="private key on stdin -> public key").set_defaults(fn=_cmd_pubkey)
    p = sub.add_parser("check", help="validate a config file")
    p.add_argument("-c", "--config", metavar="FILE", required=True, help="the config file")
    p.set_defaults(fn=_cmd_check)
    p = sub.add_parser("show", help="status of running tunnelpyd (and WireGuard) interfaces")
    p.add_argument("name", nargs="?", help="one interface (default: all)")
    p.add_argument("--json", action="store_true", help="the stable JSON document")
    p.add_argument(
        "--uapi-dir", metavar="DIR", default="/var/run/wireguard", help="the UAPI sockets"
    )
    p.add_argument(
        "--control-dir", metavar="DIR", default=CONTROL_DIR, help="the control sockets"
    )
    p.set_defaults(fn=_cmd_show)
    p = sub.add_parser(
        "reload",
        help="make a running tunnelpyd re-read its config (as SIGHUP); waits, and exits 1 "
        "when the file is refused",
    )
    p.add_argument("name", help="the interface")
    p.add_argument(
        "--control-dir", metavar="DIR", default=CONTROL_DIR, help="the control sockets"
    )
    p.set_defaults(fn=_cmd_reload)
    p = sub.add_parser(
        "strip",
        help="print the part of a config that wg setconf and wg syncconf accept "
        "(key files resolved, tunnelpy and wg-quick keys dropped)",
    )
    p.add_argument("file", metavar="FILE", help="a tunnelpy or wg-quick config")
    p.set_defaults(fn=_cmd_strip)
    p = sub.add_parser(
        "install-unit",
        help="write tunnelpyd@.service naming this installation's tunnelpyd by its absolute "
        "path (venv, pyenv, /usr/local)",
    )
    p.add_argument(
        "--dir", metavar="DIR", default="/etc/systemd/system",
        help="where to write it (default /etc/systemd/system)",
    )  # fmt: skip
    p.add_argument(
        "--wg-quick", action="store_true",
        help="also the wg-quick@.service drop-in that runs this tunnelpyd",
    )  # fmt: skip
    p.add_argument("--stdout", action="store_true", help="print the unit instead of writing it")
    p.set_defaults(fn=_cmd_install_unit)
    p = sub.add_parser("demo", help="two sites in network namespaces, ping across, tear down")
    p.add_argument("--keep", action="store_true", help="keep the lab up until Ctrl-C")
    p.set_defaults(fn=_cmd_demo)
    from .topology_cli import add_parsers  # `tunnelpy plan` and `tunnelpy topology`

    add_parsers(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except BrokenPipeError:  # `tunnelpy show | head`: the reader left; not an error of ours
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
