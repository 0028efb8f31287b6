"""site.conf -> frozen dataclasses, with every error naming FILE:LINE, the key and what was expected.

The format is wg-quick's INI dialect, so an existing ``wg0.conf`` parses unchanged: sections and
keys are case-insensitive, ``#`` starts a comment anywhere on a line, ``Key = a, b`` is a list and
repeated list keys (Address, AllowedIPs, DNS, PostUp...) accumulate.

configparser is not used: it forgets line numbers and refuses repeated keys, both of which this
format needs. Instead a small line parser reads the text into raw sections (stage 1, driven by
the ``SECTIONS`` table of key specs), and one builder per section kind turns a raw section into
its dataclass (stage 2); cross-section checks (duplicate peers, our own key as a peer) run last.

Extension point: a new section kind (``[Segment lab]``...) is one more ``SectionSpec`` in
``SECTIONS`` with ``named=True``, its ``KeySpec`` table and a builder, plus a field on ``Config``
to hold what the builder returns. A new topology section (``[Bridge br0]``, ``[MACVLAN mv0]``...)
is instead one link kind in ``tunnelpy.netlink.kinds``: its section spec is made from the kind's
``Key`` list (value parsers by name from ``LINK_VALUES``) and the keys every link shares, its
builder and per-kind checks are the kind's, and ``Config.topology`` holds every kind's links.

``[Interface] Transport`` picks the wire: ``wireguard`` (the default, byte-compatible with wg) or
``vxlan`` (plain RFC 7348 for lab overlays: no keys anywhere, ListenPort 4789 by default, every
peer needs Name and Endpoint). It is read before any section is built because it changes what a
``[Peer]`` must contain. ``[Segment NAME]`` sections are L2 segments (one TAP per VNI); their
cross-checks (unique VNI and device, Peers and MAC naming existing peers) run after the peers.

This module opens and starts nothing on the host: it only reads the config and key files.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunnelpy import keys
from tunnelpy.io import knobs
from tunnelpy.netlink import kinds, labkeys
from tunnelpy.netlink.kinds import (  # noqa: F401 - the topology dataclasses, re-exported here
    VXLAN_PORT,
    BondConfig,
    BridgeConfig,
    IPVLANConfig,
    LinkConfig,
    MACVLANConfig,
    TeamConfig,
    VethConfig,
    VLANConfig,
    VXLANConfig,
)
from tunnelpy.netlink.labkeys import NamespaceConfig, NetemConfig, RouteConfig  # noqa: F401
from tunnelpy.protocol.fdb import MacFilter

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MTU = 1420
IFNAMSIZ = 16  # Linux: names hold at most IFNAMSIZ - 1 bytes plus the terminating NUL
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("plain", "json")  # tunnelpy/logsetup.py: one line of text, or one JSON object
TRANSPORT_WIREGUARD = "wireguard"
TRANSPORT_VXLAN = "vxlan"
TRANSPORTS = (TRANSPORT_WIREGUARD, TRANSPORT_VXLAN)
OFFLOAD_AUTO = "auto"  # TUN/TAP TSO/GRO and UDP GSO/GRO where the kernel takes them
OFFLOAD_OFF = "off"  # one packet per syscall: for paths where offloads misbehave
OFFLOADS = (OFFLOAD_AUTO, OFFLOAD_OFF)
MAX_WORKERS = knobs.MAX_WORKERS  # Workers = 1..64 (tunnelpy/io/knobs.py shares it)
VNI_MAX = (1 << 24) - 1
DEFAULT_AGING = 300.0
DEFAULT_MAX_FDB = 4096
DEFAULT_MOVE_HOLD = 5.0  # protocol/fdb.py: seconds a learnt MAC is quiet before it may move
VXLAN_UNAUTHENTICATED_WARNING = (
    "Transport = vxlan is unauthenticated and unencrypted: anyone who can send UDP to this "
    "host with a peer's source address can inject frames into its segments; use it only on a "
    "network you trust (Transport = wireguard authenticates every frame)"
)
SAVE_CONFIG_WARNING = "SaveConfig is not supported; the file is never rewritten"
METRICS_PUBLIC_WARNING = (
    "{} is not a loopback address: whoever reaches it reads peer names, public keys and "
    "traffic counters (prefer 127.0.0.1 or unix:/run/tunnelpy/NAME.metrics)"
)


class ConfigError(Exception):
    """A mistake in the config. ``str(e)`` is one line: ``FILE:LINE: Section.Key: message``."""

    def __init__(self, path: str, line: int | None, where: str, message: str) -> None:
        self.path = path
        self.line = line
        self.where = where
        self.message = message
        super().__init__(_format_message(path, line, where, message))


def _format_message(path: str, line: int | None, where: str, message: str) -> str:
    location = path if line is None else f"{path}:{line}"
    text = f"{location}: {where}: {message}" if where else f"{location}: {message}"
    # One line, always: log lines and `tunnelpy check` output must not be split by a value.
    return " ".join(text.splitlines())


@dataclass(frozen=True)
class InterfaceConfig:
    """The ``[Interface]`` section."""

    name: str
    private_key: bytes = field(repr=False)  # never in logs or reprs
    listen_port: int | None  # None (or 0 in the file): the kernel picks a free port
    addresses: tuple[IPInterface, ...]
    mtu: int = DEFAULT_MTU
    fwmark: int | None = None  # None: off (the file's 0 and "off" mean the same)
    dns: tuple[str, ...] = ()
    table: str | None = None
    pre_up: tuple[str, ...] = ()
    post_up: tuple[str, ...] = ()
    pre_down: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()
    save_config: bool = False
    log_level: str | None = None  # tunnelpy extension: debug, info, warning, error, critical
    line: int = 0  # line of the [Interface] header
    transport: str = TRANSPORT_WIREGUARD  # tunnelpy extension: "wireguard" or "vxlan" (plain)
    # tunnelpy extension: Prometheus metrics on (IP literal, port) or a unix socket path (str);
    # None = off (the default)
    metrics_listen: tuple[str, int] | str | None = None
    user: str | None = None  # tunnelpy extension: drop to this user after start-up
    offload: str = OFFLOAD_AUTO  # tunnelpy extension: "auto" or "off" (docs/performance.md)
    workers: int | None = None  # tunnelpy extension: data-path processes; None = auto
    listen_address: str | None = None  # tunnelpy extension, Transport = vxlan: bind here only
    log_format: str | None = None  # tunnelpy extension: "plain" or "json"; None = plain

    @property
    def public_key(self) -> bytes:
        """Our own public key, derived from the private key (b"" with Transport = vxlan)."""
        if not self.private_key:
            return b""
        return keys.public_from_private_bytes(self.private_key)


@dataclass(frozen=True)
class PeerConfig:
    """One ``[Peer]`` section."""

    public_key: bytes  # b"" with Transport = vxlan (plain VXLAN peers have no keys)
    name: str  # a label for logs and status; default: first 8 characters of the base64 key
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: tuple[str, int] | None = None  # (host without brackets, port); host unresolved
    allowed_ips: tuple[IPNetwork, ...] = ()
    persistent_keepalive: int | None = None  # None: off (the file's 0 and "off" mean the same)
    line: int = 0  # line of the [Peer] header


@dataclass(frozen=True)
class SegmentConfig:
    """One ``[Segment NAME]`` section: an L2 segment (a TAP device) carrying one VNI."""

    name: str
    vni: int  # 1..16777215, unique across segments
    device: str  # the TAP's interface name; default: the segment's name
    bridge: str | None  # enslave the TAP to this bridge
    peers: tuple[str, ...] | None  # peer Names; None: every peer
    mtu: int | None
    addresses: tuple[IPInterface, ...]
    hub: bool  # forward frames between peers of this segment (hub/split-horizon off)
    static_macs: tuple[tuple[bytes, str], ...]  # (6-byte MAC, peer name) static FDB entries
    aging: float  # seconds a learnt MAC stays in the FDB
    max_fdb: int  # learnt FDB entries at most
    line: int = 0  # line of the [Segment NAME] header
    # (MAC masked to its prefix, prefix length 0-48, peer name): AllowedMACs = prefix@peer
    allowed_macs: tuple[tuple[bytes, int, str], ...] = ()
    max_per_peer: int | None = None  # learnt MACs per peer; None: max_fdb / members
    move_hold: float = DEFAULT_MOVE_HOLD  # seconds quiet before a learnt MAC may move


@dataclass(frozen=True)
class Config:
    """A whole parsed file."""

    path: str
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...]
    warnings: tuple[str, ...] = ()
    segments: tuple[SegmentConfig, ...] = ()
    topology: tuple[LinkConfig, ...] = ()  # [Bridge], [Veth], [VLAN]... in file order
    namespaces: tuple[NamespaceConfig, ...] = ()  # [Namespace NAME]: routes, forwarding
    netem: tuple[NetemConfig, ...] = ()  # [Netem LINK]: delay, jitter, loss, rate


# --------------------------------------------------------------------------------------------
# Stage 1: lines -> raw sections


class _BadValue(Exception):
    """Raised by a value parser; the caller adds file, line and key."""


class FileRefused(Exception):
    """A config or key file that may not be read: ``reason`` says why, ``str()`` adds the
    path."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


# (path) -> (bytes, st_mode): how the parser reads the config and key files. The default is
# read_trusted; after a drop to User a reload passes the bytes the privileged reader handed
# over (tunnelpy/confreader.py) instead.
Opener = Callable[[str, int], tuple[bytes, int]]


def read_trusted(path: str, limit: int) -> tuple[bytes, int]:
    """The bytes (at most ``limit``, FileRefused if longer) and mode of a regular file that
    only root or the starting user can have written (:func:`untrusted_owner`)."""
    try:
        # O_NONBLOCK: a FIFO (or a device) must not hang start-up, check or a reload in open()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise FileRefused(path, f"cannot read it: {e.strerror}") from None
    try:
        # fstat on the opened file, not stat on the path: nothing can swap it in between.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(path, "is not a regular file")
        problem = untrusted_owner(st)
        if problem:
            raise FileRefused(path, problem)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            try:
                chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            except OSError as e:
                raise FileRefused(path, f"cannot read it: {e.strerror}") from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileRefused(path, f"is larger than {_size(limit)}")
        return b"".join(chunks), st.st_mode
    finally:
        os.close(fd)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"


@dataclass
class _Context:
    path: str
    base_dir: str  # key files are relative to the config file's directory
    default_name: str  # the interface name when [Interface] has no Name
    warnings: list[str] = field(default_factory=list)
    transport: str = TRANSPORT_WIREGUARD  # read from [Interface] before any section is built
    opener: Opener = read_trusted
    # False for `tunnelpy plan` / `topology`: key files are not opened (drawing needs no keys)
    read_secrets: bool = True

    def error(self, line: int | None, where: str, message: str) -> ConfigError:
        return ConfigError(self.path, line, where, message)

    def warn(self, line: int | None, where: str, message: str) -> None:
        self.warnings.append(_format_message(self.path, line, where, message))


@dataclass(frozen=True)
class KeySpec:
    """How one key is spelled and parsed.

    ``parse`` turns one value (one list item when ``multi``) into a Python value or raises
    _BadValue. ``multi`` keys may repeat and accumulate; ``split`` says whether a multi key's
    value is a comma list (AllowedIPs) or one item per line (PostUp commands contain commas).
    """

    name: str
    parse: Callable[[str, _Context], Any]
    multi: bool = False
    split: bool = True
    secret: bool = False  # never echo the value in an error


@dataclass
class RawSection:
    """A section as read, before its builder checks it as a whole."""

    spec: SectionSpec
    name: str | None
    line: int
    values: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)  # key -> (line, value)

    def get(self, key: str) -> tuple[int, Any] | None:
        items = self.values.get(key)
        return items[0] if items else None

    def value(self, key: str, default: Any = None) -> Any:
        item = self.get(key)
        return default if item is None else item[1]

    def all(self, key: str) -> list[tuple[int, Any]]:
        return self.values.get(key, [])

    def where(self, key: str = "") -> str:
        return f"{self.spec.name}.{key}" if key else self.spec.name


@dataclass(frozen=True)
class SectionSpec:
    """One kind of section: its keys, whether it carries a name and may repeat, its builder."""

    name: str
    keys: tuple[KeySpec, ...]
    build: Callable[[RawSection, _Context], Any]
    named: bool = False  # [Segment lab] carries a name, [Peer] does not
    repeatable: bool = False
    required: bool = False
    exclusive: tuple[tuple[str, str], ...] = ()  # pairs of keys of which at most one is given

    def key(self, name: str) -> KeySpec | None:
        for spec in self.keys:
            if spec.name.lower() == name.lower():
                return spec
        return None


def _show(value: str) -> str:
    # repr() escapes control characters, keeping the message on one line; long values are cut.
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _suggest(word: str, choices: list[str]) -> str | None:
    lowered = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def _read_sections(text: str, ctx: _Context) -> list[RawSection]:
    sections: list[RawSection] = []
    current: RawSection | None = None
    first_header: dict[str, int] = {}
    # split("\n") rather than splitlines(): the latter also breaks on \x0c, \x1c, U+2028...
    # and would shift line numbers away from what an editor shows.
    for lineno, raw in enumerate(text.removeprefix("\ufeff").split("\n"), 1):
        line = raw.split("#", 1)[0].strip()  # wg-quick drops everything from the first '#'
        if not line:
            continue
        if line.startswith("["):
            current = _read_header(line, lineno, ctx, first_header)
            sections.append(current)
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            # Not repeated: `PrivateKey <key>` would print the key (to the journal, too).
            known = _known_key(current.spec, _KEY_NAME.match(line)) if current else None
            shown = f" starting with '{known}'" if known else ""
            raise ctx.error(
                lineno, "", f"expected 'Key = Value' or a [Section] header, got a line{shown} "
                "(not repeated: it may hold a secret)",
            )  # fmt: skip
        if current is None:
            raise ctx.error(
                lineno, key, "key before any section, expected an [Interface] header first"
            )
        _read_key(current, key, value, lineno, ctx)
    for spec in SECTIONS.values():
        if spec.required and spec.name.lower() not in first_header:
            raise ctx.error(1, spec.name, f"missing [{spec.name}] section, expected exactly one")
    return sections


def _read_header(line: str, lineno: int, ctx: _Context, first_header: dict[str, int]) -> RawSection:
    if not line.endswith("]"):
        raise ctx.error(lineno, "", f"malformed section header {_show(line)}, expected [Name]")
    words = line[1:-1].split(None, 1)
    if not words:
        raise ctx.error(lineno, "", "empty section header, expected [Interface] or [Peer]")
    kind, name = words[0], (words[1].strip() if len(words) > 1 else None)
    spec = SECTIONS.get(kind.lower())
    if spec is None:
        known = " or ".join(f"[{s.name}]" for s in SECTIONS.values())
        guess = _suggest(kind, [s.name for s in SECTIONS.values()])
        hint = f"did you mean [{guess}]?" if guess else f"expected {known}"
        raise ctx.error(lineno, kind, f"unknown section ({hint})")
    if name is not None and not spec.named:
        raise ctx.error(lineno, spec.name, f"[{spec.name}] takes no name, got {_show(name)}")
    if name is None and spec.named:
        raise ctx.error(
            lineno, spec.name, f"[{spec.name}] needs a name, expected [{spec.name} NAME]"
        )
    first = first_header.setdefault(spec.name.lower(), lineno)
    if first != lineno and not spec.repeatable:
        raise ctx.error(
            lineno,
            spec.name,
            f"[{spec.name}] given twice (first on line {first}), expected exactly one",
        )
    return RawSection(spec=spec, name=name, line=lineno)


def _read_key(section: RawSection, key: str, value: str, lineno: int, ctx: _Context) -> None:
    spec = section.spec.key(key)
    if spec is None:
        name = _KEY_NAME.match(key)
        if name is None or name.group(0) != key:
            # `PrivateKey: <key>=` (a colon for '='): what precedes the '=' is not a key name
            # and may be a secret. Repeat only the leading word, never the rest of the line.
            raise ctx.error(lineno, section.spec.name, _not_a_key(section.spec, name))
        raise ctx.error(lineno, section.where(key), _unknown_key_hint(section.spec, key))
    where = section.where(spec.name)
    previous = section.get(spec.name)
    if previous is not None and not spec.multi:
        raise ctx.error(lineno, where, f"given twice (first on line {previous[0]}), expected once")
    for a, b in section.spec.exclusive:
        other = b if spec.name == a else a if spec.name == b else None
        given = section.get(other) if other is not None else None
        if given is not None:
            raise ctx.error(
                lineno,
                where,
                f"{other} is already given on line {given[0]}, expected only one of {a} and {b}",
            )
    if spec.multi and spec.split:
        items = [item.strip() for item in value.split(",")] if value else []
        if any(not item for item in items):
            raise ctx.error(
                lineno, where, f"empty item in {_show(value)}, expected a comma-separated list"
            )
    else:
        items = [value]
    parsed = section.values.setdefault(spec.name, [])
    for item in items:
        try:
            parsed.append((lineno, spec.parse(item, ctx)))
        except _BadValue as e:
            raise ctx.error(lineno, where, str(e)) from None


_KEY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")


def _not_a_key(section: SectionSpec, word: re.Match[str] | None) -> str:
    """The message for a line whose text before '=' is not a key name (shown: the first word
    only, at most 40 characters — the rest may be a key)."""
    known = _known_key(section, word)
    if known is None:
        return "expected 'Key = Value' (the line is not repeated: it may hold a secret)"
    return (
        f"'{known}' is followed by something other than '=' (did you mean '{known} = …'?; "
        "the rest of the line is not repeated: it may hold a secret)"
    )


def _known_key(section: SectionSpec, word: re.Match[str] | None) -> str | None:
    """The key name a line starts with, if it is one of ours (only then is it repeated: any
    other word may be the start of a key)."""
    if word is None:
        return None
    for spec in (section, *SECTIONS.values()):
        k = spec.key(word.group(0))
        if k is not None:
            return k.name
    return None


def _unknown_key_hint(section: SectionSpec, key: str) -> str:
    # A key that exists verbatim in another section is a stronger hint than a near spelling
    # here: PublicKey in [Interface] is a misplaced line, not a misspelt PrivateKey.
    for other in SECTIONS.values():
        elsewhere = other.key(key) if other is not section else None
        if elsewhere is not None:
            return f"unknown key in [{section.name}] ({elsewhere.name} belongs in [{other.name}])"
    guess = _suggest(key, [k.name for k in section.keys])
    if guess:
        return f"unknown key (did you mean {guess}?)"
    return f"unknown key (expected one of {', '.join(k.name for k in section.keys)})"


# --------------------------------------------------------------------------------------------
# Value parsers: each takes the stripped text and raises _BadValue with what was expected.

_DIGITS = re.compile(r"[0-9]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


def _int(value: str, low: int, high: int, what: str) -> int:
    if not _DIGITS.fullmatch(value):
        raise _BadValue(f"{_show(value)} is not a number, expected {what} {low}-{high}")
    number = int(value)
    if not low <= number <= high:
        raise _BadValue(f"{number} is out of range, expected {what} {low}-{high}")
    return number


def _key(value: str, _ctx: _Context) -> bytes:
    try:
        return keys.decode_key(value)
    except ValueError:
        raise _BadValue(
            "expected a 32-byte base64 key (44 characters, as wg genkey prints)"
        ) from None


def _public_key(value: str, ctx: _Context) -> bytes:
    key = _key(value, ctx)
    if keys.is_low_order(key):
        raise _BadValue(
            "is a low-order point (all zeros or similar), which WireGuard refuses: no handshake "
            "with it is possible; expected the peer's `wg pubkey` output"
        )
    return key


KEY_FILE_LIMIT = 4096  # a key file is 45 bytes; anything much longer is not one


def _key_file(value: str, ctx: _Context) -> bytes:
    if not value:
        raise _BadValue("empty path, expected the path of a file holding one base64 key")
    if not ctx.read_secrets:
        return b""  # not read: a CI job drawing the lab has the config but not its keys
    path = os.path.join(ctx.base_dir, os.path.expanduser(value))
    try:
        data, mode = ctx.opener(path, KEY_FILE_LIMIT)
    except FileRefused as e:
        if e.reason.startswith("cannot read it: "):
            raise _BadValue(f"cannot open {path}: {e.reason.split(': ', 1)[1]}") from None
        raise _BadValue(f"{path} {e.reason}, expected a file holding one base64 key") from None
    if mode & 0o077:
        raise _BadValue(
            f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}), "
            f"expected mode 0600 (chmod 600 {path})"
        )
    try:
        return keys.decode_key(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise _BadValue(
            f"{path} does not hold one 32-byte base64 key (as wg genkey prints)"
        ) from None


def untrusted_owner(st: os.stat_result) -> str | None:
    """Why a config or key file may have been written by someone the daemon must not trust
    (its PreUp/PostUp run as root; its keys are the identity), or None.

    Trusted: root and the user starting the daemon. Anyone else who owns the file, or who can
    write it (world-writable, or group-writable with a group other than root's or ours), could
    change what root runs at the next start."""
    trusted = {0, os.geteuid()}
    if st.st_uid not in trusted:
        return (
            f"is owned by uid {st.st_uid}, expected root or uid {os.geteuid()} (the file's "
            "owner controls what runs as root: chown root and chmod 600 it)"
        )
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid not in {0, os.getegid()}):
        return (
            f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o}, group {st.st_gid}), "
            "expected writable only by its owner (chmod go-w)"
        )
    return None


_IFNAME = re.compile(r"[a-zA-Z0-9_=+.-]+")


def valid_ifname(name: str) -> str | None:
    """Why ``name`` is not an acceptable interface name, or None if it is.

    wg-quick's rule, ``[a-zA-Z0-9_=+.-]{1,15}``, stricter than the kernel's dev_valid_name():
    names end up in ``%i`` of hook commands run by /bin/sh, in file names under /run and in
    logs, so nothing a shell or a terminal would interpret gets in."""
    if not name:
        return "it is empty"
    if len(name.encode()) >= IFNAMSIZ:
        return f"it is longer than {IFNAMSIZ - 1} bytes"
    if name in (".", ".."):
        return "'.' and '..' are not allowed"
    if not _IFNAME.fullmatch(name):
        return "it may only contain letters, digits and _=+.-"
    return None


def _ifname(value: str, _ctx: _Context) -> str:
    reason = valid_ifname(value)
    if reason:
        raise _BadValue(
            f"{_show(value)} is not a valid interface name ({reason}), expected up to 15 characters without '/', ':' or spaces"
        )
    return value


def _peer_name(value: str, _ctx: _Context) -> str:
    # Peer names are referred to in comma lists (a segment's `Peers = a, b`): no commas.
    if not value or "," in value:
        raise _BadValue(
            f"{_show(value)} is not a usable label, expected a non-empty name without commas"
        )
    return value


def _port(value: str, _ctx: _Context) -> int:
    return _int(value, 0, 65535, "a port")


def _mtu(value: str, _ctx: _Context) -> int:
    return _int(value, 576, 65535, "an MTU")


def _fwmark(value: str, _ctx: _Context) -> int | None:
    if value.lower() == "off":
        return None
    if value[:2].lower() == "0x":
        digits = value[2:]
        if not re.fullmatch(r"[0-9A-Fa-f]+", digits):
            raise _BadValue(f"{_show(value)} is not a number, expected a mark 0-0xffffffff or off")
        mark = int(digits, 16)
        if mark > 0xFFFFFFFF:
            raise _BadValue(f"{value} is out of range, expected a mark 0-0xffffffff or off")
    else:
        if not _DIGITS.fullmatch(value):
            raise _BadValue(f"{_show(value)} is not a number, expected a mark 0-0xffffffff or off")
        mark = _int(value, 0, 0xFFFFFFFF, "a mark")
    return mark or None


def _keepalive(value: str, _ctx: _Context) -> int | None:
    if value.lower() == "off":
        return None
    if not _DIGITS.fullmatch(value):
        raise _BadValue(f"{_show(value)} is not a number, expected seconds 0-65535 or off")
    return _int(value, 0, 65535, "seconds") or None


def _address(value: str, _ctx: _Context) -> IPInterface:
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise _BadValue(
            f"{_show(value)} is not an address, expected e.g. 10.0.0.1/24 or fd00::1/64"
        ) from None


def _network(value: str, _ctx: _Context) -> IPNetwork:
    try:
        # strict=False: like wg, 10.0.0.1/24 means 10.0.0.0/24 and is accepted silently.
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _BadValue(
            f"{_show(value)} is not a network, expected e.g. 10.0.0.0/24 or fd00::/64"
        ) from None


def _endpoint(value: str, _ctx: _Context) -> tuple[str, int]:
    expected = "expected host:port or [IPv6]:port"
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket:
            raise _BadValue(f"{_show(value)} has no closing ']', {expected}")
        if not rest.startswith(":") or not rest[1:]:
            raise _BadValue(f"{_show(value)} has no port, {expected}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _BadValue(f"{_show(host)} is not an IPv6 address, {expected}") from None
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon:
            raise _BadValue(f"{_show(value)} has no port, {expected}")
        if ":" in host:
            raise _BadValue(f"{_show(value)}: an IPv6 endpoint needs brackets, {expected}")
        if not _HOSTNAME.fullmatch(host):
            raise _BadValue(f"{_show(host)} is not a host name or address, {expected}")
    # Port 0 cannot be sent to, unlike ListenPort 0 which means "any".
    return host, _int(port_text, 1, 65535, "a port")


def _word(value: str, _ctx: _Context) -> str:
    if not value or any(c.isspace() for c in value):
        raise _BadValue(f"{_show(value)}: expected one word")
    return value


def _command(value: str, _ctx: _Context) -> str:
    if not value:
        raise _BadValue("empty command, expected a shell command")
    return value


def _bool(value: str, _ctx: _Context) -> bool:
    if value.lower() not in ("true", "false"):
        raise _BadValue(f"{_show(value)}: expected true or false")
    return value.lower() == "true"


def _log_level(value: str, _ctx: _Context) -> str:
    if value.lower() not in LOG_LEVELS:
        guess = _suggest(value, list(LOG_LEVELS))
        hint = f" (did you mean {guess}?)" if guess else ""
        raise _BadValue(
            f"{_show(value)} is not a log level{hint}, expected one of {', '.join(LOG_LEVELS)}"
        )
    return value.lower()


def _listen(value: str, _ctx: _Context) -> tuple[str, int] | str:
    # A bare port means loopback: metrics reach a public address only when it is written out.
    expected = "expected PORT (on 127.0.0.1), IP:PORT, [IPv6]:PORT or unix:/PATH"
    if value.startswith("unix:"):
        path = value[5:]
        # sun_path holds 108 bytes with the NUL; relative paths would follow the cwd
        if not path.startswith("/") or len(path.encode()) > 107 or "\0" in path:
            raise _BadValue(f"{_show(value)}: expected unix:/ABSOLUTE/PATH (at most 107 bytes)")
        return path
    if _DIGITS.fullmatch(value):
        return "127.0.0.1", _int(value, 1, 65535, "a port")
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        port_text = rest[1:] if bracket and rest.startswith(":") else ""
    else:
        host, _, port_text = value.rpartition(":")
        host = "127.0.0.1" if host.lower() == "localhost" else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise _BadValue(f"{_show(value)} is not an IP address and port, {expected}") from None
    if (address.version == 6) != value.startswith("[") or not _DIGITS.fullmatch(port_text):
        raise _BadValue(f"{_show(value)}: {expected}")
    return str(address), _int(port_text, 1, 65535, "a port")


_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]+")


def _user(value: str, _ctx: _Context) -> str:
    # Only the spelling: whether the user exists is the daemon's to check (this module reads
    # nothing but config and key files).
    if not _USER.fullmatch(value):
        raise _BadValue(
            f"{_show(value)} is not a user name, expected a name like tunnelpy or a uid"
        )
    return value


def _offload(value: str, _ctx: _Context) -> str:
    if value.lower() not in OFFLOADS:
        raise _BadValue(f"{_show(value)} is not an offload mode, expected auto or off")
    return value.lower()


def _workers(value: str, _ctx: _Context) -> int | None:
    if value.lower() == "auto":
        return None
    if not _DIGITS.fullmatch(value):
        raise _BadValue(f"{_show(value)}: expected auto or a number 1-{MAX_WORKERS}")
    return _int(value, 1, MAX_WORKERS, "a number of workers")


def _transport(value: str, _ctx: _Context) -> str:
    if value.lower() not in TRANSPORTS:
        raise _BadValue(f"{_show(value)} is not a transport, expected wireguard or vxlan")
    return value.lower()


_YES = ("yes", "true", "on", "1")
_NO = ("no", "false", "off", "0")


def _yes_no(value: str, _ctx: _Context) -> bool:
    # tunnelpy's own keys take the spellings people type; wg-quick's SaveConfig keeps _bool.
    if value.lower() in _YES:
        return True
    if value.lower() in _NO:
        return False
    raise _BadValue(f"{_show(value)}: expected yes or no")


def _vni(value: str, _ctx: _Context) -> int:
    return _int(value, 1, VNI_MAX, "a VNI")


def _link_mtu(value: str, _ctx: _Context) -> int:
    return _int(value, 68, 65535, "an MTU")


def _seconds(value: str, _ctx: _Context) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise _BadValue(f"{_show(value)} is not a number, expected seconds") from None
    if not 0 <= seconds <= 1_000_000:  # also refuses nan and inf
        raise _BadValue(f"{value} is out of range, expected seconds 0-1000000")
    return seconds


def _fdb_size(value: str, _ctx: _Context) -> int:
    return _int(value, 1, 1 << 20, "a number of entries")


_MAC = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")


def mac_bytes(value: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` -> 6 bytes; raises ValueError for anything else."""
    if not _MAC.fullmatch(value):
        raise ValueError(value)
    return bytes.fromhex(value.replace(":", ""))


def _mac(value: str, _ctx: _Context) -> bytes:
    try:
        return mac_bytes(value)
    except ValueError:
        raise _BadValue(
            f"{_show(value)} is not a MAC address, expected aa:bb:cc:dd:ee:ff"
        ) from None


def _unicast_mac(value: str, ctx: _Context) -> bytes:
    mac = _mac(value, ctx)
    if mac[0] & 1 or mac == bytes(6):
        raise _BadValue(f"{value} is a multicast or zero address, expected a unicast MAC")
    return mac


def _mac_prefix_at_peer(value: str, ctx: _Context) -> tuple[bytes, int, str]:
    # aa:bb:cc:00:00:00/24@peer (an OUI), or a whole MAC (/48) without the length.
    expected = "expected aa:bb:cc:dd:ee:ff[/LEN]@peername (LEN 0-48)"
    text, at, peer = value.partition("@")
    if not at or not peer.strip():
        raise _BadValue(f"{_show(value)}: {expected}")
    mac_text, slash, len_text = text.strip().partition("/")
    try:
        mac = mac_bytes(mac_text.strip())
    except ValueError:
        raise _BadValue(f"{_show(mac_text)} is not a MAC address, {expected}") from None
    length = 48
    if slash:
        if not _DIGITS.fullmatch(len_text.strip()):
            raise _BadValue(f"{_show(len_text)} is not a prefix length, {expected}")
        length = _int(len_text.strip(), 0, 48, "a prefix length")
    # Host bits are cleared, as AllowedIPs = 10.0.0.1/24 means 10.0.0.0/24.
    bits = int.from_bytes(mac, "big") >> (48 - length) << (48 - length)
    mac = bits.to_bytes(6, "big")
    if length >= 8 and mac[0] & 1:
        raise _BadValue(
            f"{value.strip()}: a group (multicast) prefix is never a source, {expected}"
        )
    return mac, length, _peer_name(peer.strip(), ctx)


def _mac_at_peer(value: str, ctx: _Context) -> tuple[bytes, str]:
    mac_text, at, peer = value.partition("@")
    if not at or not peer.strip():
        raise _BadValue(f"{_show(value)}: expected aa:bb:cc:dd:ee:ff@peername")
    return _unicast_mac(mac_text.strip(), ctx), _peer_name(peer.strip(), ctx)


def _choice(choices: tuple[str, ...], what: str) -> Callable[[str, _Context], str]:
    by_lower = {c.lower(): c for c in choices}

    def parse(value: str, _ctx: _Context) -> str:
        if value.lower() in by_lower:
            return by_lower[value.lower()]
        guess = _suggest(value, list(choices))
        hint = f" (did you mean {guess}?)" if guess else ""
        raise _BadValue(f"{_show(value)} is not {what}{hint}, expected one of {', '.join(choices)}")

    return parse


def _vlan_id(value: str, _ctx: _Context) -> int:
    return _int(value, 1, 4094, "a VLAN id")


def _miimon(value: str, _ctx: _Context) -> int:
    return _int(value, 0, 65535, "milliseconds")


def _dst_port(value: str, _ctx: _Context) -> int:
    return _int(value, 1, 65535, "a port")


def _ip(value: str, _ctx: _Context) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise _BadValue(
            f"{_show(value)} is not an IP address, expected e.g. 192.0.2.1 or 2001:db8::1"
        ) from None


_NETNS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _namespace(value: str, _ctx: _Context) -> str:
    if not _NETNS.fullmatch(value) or value in (".", ".."):
        raise _BadValue(
            f"{_show(value)} is not a usable namespace name, expected up to 64 letters, digits, "
            "'_', '.' or '-' (as for ip netns add)"
        )
    return value


def _route(
    value: str, _ctx: _Context
) -> tuple[IPNetwork, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    words = value.split()
    if len(words) != 3 or words[1].lower() != "via":
        raise _BadValue(
            f"{_show(value)} is not a route, expected PREFIX via ADDRESS (or default via ADDRESS)"
        )
    try:
        via = ipaddress.ip_address(words[2])
    except ValueError:
        raise _BadValue(f"{_show(words[2])} is not an IP address, expected the gateway") from None
    if words[0].lower() == "default":
        dst: IPNetwork = ipaddress.ip_network("::/0" if via.version == 6 else "0.0.0.0/0")
    else:
        try:
            dst = ipaddress.ip_network(words[0])
        except ValueError:
            raise _BadValue(
                f"{_show(words[0])} is not a prefix with its host bits zero, expected e.g. "
                "10.20.0.0/16 or default"
            ) from None
    if dst.version != via.version:
        raise _BadValue(f"{dst} and {via} are of different IP versions, expected the same")
    return dst, via


_TIME = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s)", re.IGNORECASE)
_TIME_UNITS = {"us": 1, "ms": 1000, "s": 1_000_000}
MAX_NETEM_TIME = 60_000_000  # 60 s: netem's 32-bit tick fields hold a few minutes at most


def _duration(value: str, _ctx: _Context) -> int:
    """A time as tc writes it (500us, 20ms, 1.5s) in microseconds."""
    m = _TIME.fullmatch(value)
    if m is None:
        raise _BadValue(f"{_show(value)} is not a time, expected e.g. 20ms, 500us or 1s")
    us = round(float(m.group(1)) * _TIME_UNITS[m.group(2).lower()])
    if not 1 <= us <= MAX_NETEM_TIME:
        raise _BadValue(f"{_show(value)} is out of range, expected 1us to 60s")
    return us


def _percent(value: str, _ctx: _Context) -> float:
    text = value.removesuffix("%").strip()
    try:
        pct = float(text)
    except ValueError:
        raise _BadValue(f"{_show(value)} is not a percentage, expected e.g. 1% or 0.5%") from None
    if not 0 < pct <= 100:
        raise _BadValue(f"{_show(value)} is out of range, expected more than 0% and up to 100%")
    return pct


_RATE = re.compile(r"([0-9]+)\s*(bit|kbit|mbit|gbit)", re.IGNORECASE)
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}


def _rate(value: str, _ctx: _Context) -> int:
    """A rate in bits per second, as tc writes it (10mbit, 512kbit)."""
    m = _RATE.fullmatch(value)
    if m is None:
        raise _BadValue(f"{_show(value)} is not a rate, expected e.g. 10mbit, 512kbit or 1gbit")
    bits = int(m.group(1)) * _RATE_UNITS[m.group(2).lower()]
    if not 8 <= bits <= 32 * 10**9:  # netem holds bytes per second in 32 bits
        raise _BadValue(f"{_show(value)} is out of range, expected 8bit to 32gbit")
    return bits


def _packets(value: str, _ctx: _Context) -> int:
    return _int(value, 1, 2**31 - 1, "packets")


# --------------------------------------------------------------------------------------------
# Stage 2: raw sections -> dataclasses


def _build_interface(section: RawSection, ctx: _Context) -> InterfaceConfig:
    name_item = section.get("Name")
    if name_item is None:
        reason = valid_ifname(ctx.default_name)
        if reason:
            raise ctx.error(
                section.line,
                section.where("Name"),
                f"the default name {_show(ctx.default_name)} (the config file's stem) is not a "
                f"valid interface name ({reason}), expected a Name = line",
            )
        name = ctx.default_name
    else:
        name = name_item[1]
    transport = section.value("Transport", TRANSPORT_WIREGUARD)
    private = section.get("PrivateKey") or section.get("PrivateKeyFile")
    listen_port = section.value("ListenPort") or None
    if transport == TRANSPORT_VXLAN:
        for key in ("PrivateKey", "PrivateKeyFile"):
            item = section.get(key)
            if item is not None:
                raise ctx.error(
                    item[0],
                    section.where(key),
                    "plain VXLAN has no keys (Transport = vxlan), expected no "
                    f"{key} line or Transport = wireguard",
                )
        private = (section.line, b"")
        port_item = section.get("ListenPort")
        if port_item is not None and port_item[1] == 0:
            raise ctx.error(
                port_item[0],
                section.where("ListenPort"),
                f"plain VXLAN needs a fixed port, expected a port 1-65535 (default {VXLAN_PORT})",
            )
        listen_port = listen_port or VXLAN_PORT
    elif private is None:
        raise ctx.error(
            section.line,
            section.where("PrivateKey"),
            "missing, expected PrivateKey = <base64> or PrivateKeyFile = PATH",
        )
    addresses = tuple(a for _, a in section.all("Address"))
    mtu_item = section.get("MTU")
    mtu = DEFAULT_MTU if mtu_item is None else mtu_item[1]
    if mtu < 1280 and any(a.version == 6 for a in addresses):
        raise ctx.error(
            mtu_item[0] if mtu_item else section.line,
            section.where("MTU"),
            f"{mtu} is too small for IPv6 addresses, expected an MTU of at least 1280",
        )
    metrics_item = section.get("MetricsListen")
    if metrics_item and isinstance(metrics_item[1], tuple):
        host = metrics_item[1][0]
        if not ipaddress.ip_address(host).is_loopback:
            ctx.warn(
                metrics_item[0], section.where("MetricsListen"), METRICS_PUBLIC_WARNING.format(host)
            )
    listen_address = section.get("ListenAddress")
    if listen_address is not None and transport != TRANSPORT_VXLAN:
        raise ctx.error(
            listen_address[0],
            section.where("ListenAddress"),
            "is only for Transport = vxlan (a WireGuard socket listens on every address, as "
            "wg's does), expected no ListenAddress line",
        )
    save_item = section.get("SaveConfig")
    save_config = bool(save_item and save_item[1])
    if save_item and save_config:
        ctx.warn(save_item[0], section.where("SaveConfig"), SAVE_CONFIG_WARNING)
    return InterfaceConfig(
        name=name,
        private_key=private[1],
        listen_port=listen_port,
        addresses=addresses,
        mtu=mtu,
        fwmark=section.value("FwMark"),
        dns=tuple(d for _, d in section.all("DNS")),
        table=section.value("Table"),
        pre_up=tuple(c for _, c in section.all("PreUp")),
        post_up=tuple(c for _, c in section.all("PostUp")),
        pre_down=tuple(c for _, c in section.all("PreDown")),
        post_down=tuple(c for _, c in section.all("PostDown")),
        save_config=save_config,
        log_level=section.value("LogLevel"),
        line=section.line,
        transport=transport,
        metrics_listen=section.value("MetricsListen"),
        user=section.value("User"),
        offload=section.value("Offload", OFFLOAD_AUTO),
        workers=section.value("Workers"),
        listen_address=None if listen_address is None else str(listen_address[1]),
        log_format=section.value("LogFormat"),
    )


def _build_peer(section: RawSection, ctx: _Context) -> PeerConfig:
    if ctx.transport == TRANSPORT_VXLAN:
        return _build_vxlan_peer(section, ctx)
    public = section.get("PublicKey")
    if public is None:
        raise ctx.error(
            section.line, section.where("PublicKey"), "missing, expected PublicKey = <base64>"
        )
    psk = section.get("PresharedKey") or section.get("PresharedKeyFile")
    return PeerConfig(
        public_key=public[1],
        name=section.value("Name") or keys.encode_key(public[1])[:8],
        preshared_key=psk[1] if psk else None,
        endpoint=section.value("Endpoint"),
        allowed_ips=tuple(n for _, n in section.all("AllowedIPs")),
        persistent_keepalive=section.value("PersistentKeepalive"),
        line=section.line,
    )


def _build_vxlan_peer(section: RawSection, ctx: _Context) -> PeerConfig:
    for key in ("PublicKey", "PresharedKey", "PresharedKeyFile"):
        item = section.get(key)
        if item is not None:
            raise ctx.error(
                item[0],
                section.where(key),
                "plain VXLAN peers have no keys (Transport = vxlan), expected no "
                f"{key} line or Transport = wireguard",
            )
    for key, expected in (("Endpoint", "Endpoint = host:port"), ("Name", "Name = label")):
        if section.get(key) is None:
            raise ctx.error(
                section.line,
                section.where(key),
                f"missing, a plain VXLAN peer (Transport = vxlan) needs {expected}",
            )
    return PeerConfig(
        public_key=b"",
        name=section.value("Name"),
        endpoint=section.value("Endpoint"),
        allowed_ips=tuple(n for _, n in section.all("AllowedIPs")),
        persistent_keepalive=section.value("PersistentKeepalive"),
        line=section.line,
    )


def _check_peers(
    interface: InterfaceConfig, peers: list[tuple[RawSection, PeerConfig]], ctx: _Context
) -> None:
    own_public = interface.public_key
    by_key: dict[bytes, RawSection] = {}
    by_name: dict[str, RawSection] = {}
    claimed: dict[IPNetwork, tuple[PeerConfig, int]] = {}
    for section, peer in peers:
        key_item = section.get("PublicKey")
        key_line = key_item[0] if key_item else section.line
        if not peer.public_key:  # plain VXLAN: no keys to compare
            pass
        elif peer.public_key == own_public:
            raise ctx.error(
                key_line,
                "Peer.PublicKey",
                "is this interface's own public key, expected another host's",
            )
        elif peer.public_key in by_key:
            raise ctx.error(
                key_line,
                "Peer.PublicKey",
                f"the same peer is already defined on line {by_key[peer.public_key].line}, "
                "expected each PublicKey once",
            )
        if peer.public_key:
            by_key[peer.public_key] = section
        if peer.name in by_name:
            name_item = section.get("Name")
            raise ctx.error(
                name_item[0] if name_item else section.line,
                "Peer.Name",
                f"{_show(peer.name)} is already the name of the peer on line "
                f"{by_name[peer.name].line}, expected unique names",
            )
        by_name[peer.name] = section
        for line, network in section.all("AllowedIPs"):
            if network in claimed and claimed[network][0] is not peer:
                other, other_line = claimed[network]
                # wg does the same silently (the last peer wins); say so, it is rarely meant.
                ctx.warn(
                    line,
                    "Peer.AllowedIPs",
                    f"{network} is also in peer {other.name!r} (line {other_line}); "
                    "this later peer gets it, as with wg",
                )
            claimed[network] = (peer, line)


def _build_segment(section: RawSection, ctx: _Context) -> SegmentConfig:
    assert section.name is not None  # named=True
    if section.get("VNI") is None:
        raise ctx.error(section.line, section.where("VNI"), "missing, expected VNI = 1-16777215")
    device_item = section.get("Device")
    if device_item is None:
        reason = valid_ifname(section.name)
        if reason:
            raise ctx.error(
                section.line,
                section.where("Device"),
                f"the default device name {_show(section.name)} (the segment's name) is not a "
                f"valid interface name ({reason}), expected a Device = line",
            )
        device = section.name
    else:
        device = device_item[1]
    peers_given = "Peers" in section.values
    mtu_item = section.get("MTU")
    addresses = tuple(a for _, a in section.all("Address"))
    if mtu_item is not None and mtu_item[1] < 1280 and any(a.version == 6 for a in addresses):
        raise ctx.error(
            mtu_item[0],
            section.where("MTU"),
            f"{mtu_item[1]} is too small for IPv6 addresses, expected an MTU of at least 1280",
        )
    return SegmentConfig(
        name=section.name,
        vni=section.value("VNI"),
        device=device,
        bridge=section.value("Bridge"),
        peers=tuple(n for _, n in section.all("Peers")) if peers_given else None,
        mtu=section.value("MTU"),
        addresses=addresses,
        hub=section.value("Hub", False),
        static_macs=tuple(m for _, m in section.all("MAC")),
        aging=section.value("AgingTime", DEFAULT_AGING),
        max_fdb=section.value("MaxFDBEntries", DEFAULT_MAX_FDB),
        line=section.line,
        allowed_macs=tuple(m for _, m in section.all("AllowedMACs")),
        max_per_peer=section.value("MaxMACsPerPeer"),
        move_hold=section.value("MoveHoldTime", DEFAULT_MOVE_HOLD),
    )


def _check_segments(
    interface: InterfaceConfig,
    peers: list[tuple[RawSection, PeerConfig]],
    segments: list[tuple[RawSection, SegmentConfig]],
    ctx: _Context,
) -> None:
    peer_names = {p.name for _, p in peers}
    by_name: dict[str, int] = {}
    by_vni: dict[int, SegmentConfig] = {}
    by_device: dict[str, SegmentConfig] = {}
    for section, seg in segments:
        if seg.name in by_name:
            raise ctx.error(
                section.line,
                "Segment",
                f"[Segment {seg.name}] given twice (first on line {by_name[seg.name]}), "
                "expected unique segment names",
            )
        by_name[seg.name] = section.line
        vni_line = section.all("VNI")[0][0]
        if seg.vni in by_vni:
            raise ctx.error(
                vni_line,
                section.where("VNI"),
                f"{seg.vni} is already the VNI of segment {by_vni[seg.vni].name!r} "
                f"(line {by_vni[seg.vni].line}), expected a VNI per segment",
            )
        by_vni[seg.vni] = seg
        device_item = section.get("Device")
        device_line = device_item[0] if device_item else section.line
        if seg.device in by_device:
            other = by_device[seg.device]
            raise ctx.error(
                device_line,
                section.where("Device"),
                f"{seg.device!r} is already the device of segment {other.name!r} "
                f"(line {other.line}), expected a device per segment",
            )
        if seg.device == interface.name:
            raise ctx.error(
                device_line,
                section.where("Device"),
                f"{seg.device!r} is the [Interface] Name, expected another device name",
            )
        by_device[seg.device] = seg
        bridge_item = section.get("Bridge")
        if bridge_item is not None and bridge_item[1] in (seg.device, interface.name):
            raise ctx.error(
                bridge_item[0],
                section.where("Bridge"),
                f"{bridge_item[1]!r} is the segment's own device or the [Interface] Name, "
                "expected a bridge's name",
            )
        for line, name in section.all("Peers"):
            if name not in peer_names:
                guess = _suggest(name, sorted(peer_names))
                hint = f" (did you mean {guess}?)" if guess else ""
                known = ", ".join(sorted(peer_names)) or "none"
                raise ctx.error(
                    line,
                    section.where("Peers"),
                    f"{_show(name)} is not the Name of any [Peer]{hint}, expected one of: {known}",
                )
        members = peer_names if seg.peers is None else set(seg.peers)
        seen: dict[bytes, int] = {}
        for line, (mac, name) in section.all("MAC"):
            if name not in members:
                raise ctx.error(
                    line,
                    section.where("MAC"),
                    f"peer {_show(name)} is not in segment {seg.name!r}, expected one of: "
                    f"{', '.join(sorted(members)) or 'none'}",
                )
            if mac in seen:
                raise ctx.error(
                    line,
                    section.where("MAC"),
                    f"{mac.hex(':')} is already given on line {seen[mac]}, expected each MAC once",
                )
            seen[mac] = line
        _check_allowed_macs(section, seg, members, ctx)
    _check_plain_vxlan(interface, peers, segments, ctx)


def _check_allowed_macs(
    section: RawSection, seg: SegmentConfig, members: set[str], ctx: _Context
) -> None:
    """AllowedMACs name members, give each prefix to one peer, and agree with the MAC lines."""
    given: dict[tuple[bytes, int], tuple[str, int]] = {}
    for line, (mac, length, name) in section.all("AllowedMACs"):
        where = section.where("AllowedMACs")
        if name not in members:
            raise ctx.error(
                line, where,
                f"peer {_show(name)} is not in segment {seg.name!r}, expected one of: "
                f"{', '.join(sorted(members)) or 'none'}",
            )  # fmt: skip
        other = given.get((mac, length))
        if other is not None:
            whose = "" if other[0] == name else f" for peer {other[0]!r}"
            raise ctx.error(
                line, where,
                f"{mac.hex(':')}/{length} is already given{whose} on line {other[1]}, "
                "expected each prefix once",
            )  # fmt: skip
        given[(mac, length)] = (name, line)
    owners = MacFilter([(mac, length, name) for (mac, length), (name, _) in given.items()])
    for line, (mac, name) in section.all("MAC"):
        owner = owners.owner(mac)
        if owner is not None and owner != name:
            raise ctx.error(
                line, section.where("MAC"),
                f"{mac.hex(':')}@{name} is inside the AllowedMACs of peer {owner!r}, expected "
                f"a MAC {name!r} may send",
            )  # fmt: skip


def _check_plain_vxlan(
    interface: InterfaceConfig,
    peers: list[tuple[RawSection, PeerConfig]],
    segments: list[tuple[RawSection, SegmentConfig]],
    ctx: _Context,
) -> None:
    """Plain VXLAN: say it is unauthenticated (at start and in `tunnelpy check`), what a hub
    does not relay, and that a bound ListenAddress can reach the peers."""
    if interface.transport != TRANSPORT_VXLAN:
        return
    ctx.warn(interface.line, "Interface", VXLAN_UNAUTHENTICATED_WARNING)
    for section, seg in segments:
        if seg.hub:
            hub_item = section.get("Hub")
            ctx.warn(
                hub_item[0] if hub_item else section.line,
                section.where("Hub"),
                "over Transport = vxlan a hub relays known unicast only: broadcast, multicast "
                "and unknown unicast from a peer are written to the TAP but not sent to the "
                "other peers (an unauthenticated datagram is never multiplied)",
            )
    if interface.listen_address is None:
        return
    bound = ipaddress.ip_address(interface.listen_address)
    for section, peer in peers:
        if peer.endpoint is None or not _is_ip_literal(peer.endpoint[0]):
            continue
        if ipaddress.ip_address(peer.endpoint[0]).version != bound.version:
            item = section.get("Endpoint")
            raise ctx.error(
                item[0] if item else section.line,
                "Peer.Endpoint",
                f"{peer.endpoint[0]} cannot be reached from ListenAddress = {bound} (line "
                f"{interface.line}), expected an IPv{bound.version} endpoint",
            )


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _link_common(section: RawSection, ctx: _Context) -> dict[str, Any]:
    """The keys every topology section shares; the name is checked as an interface name."""
    assert section.name is not None  # named=True
    reason = valid_ifname(section.name)
    if reason:
        raise ctx.error(
            section.line,
            section.spec.name,
            f"{_show(section.name)} is not a valid interface name ({reason}), expected "
            f"[{section.spec.name} NAME] with up to 15 characters without '/', ':' or spaces",
        )
    return {
        "name": section.name,
        "namespace": section.value("Namespace"),
        "master": section.value("Master"),
        "addresses": tuple(a for _, a in section.all("Address")),
        "mtu": section.value("MTU"),
        "line": section.line,
    }


def _build_namespace(section: RawSection, ctx: _Context) -> NamespaceConfig:
    assert section.name is not None  # named=True
    try:
        name = _namespace(section.name, ctx)
    except _BadValue as e:
        raise ctx.error(section.line, section.spec.name, str(e)) from None
    routes: list[RouteConfig] = []
    seen: dict[IPNetwork, int] = {}
    for line, (dst, via) in section.all("Route"):
        if dst in seen:
            raise ctx.error(
                line,
                section.where("Route"),
                f"a route to {labkeys.show_prefix(dst)} is already given on line {seen[dst]}, "
                "expected one route per prefix",
            )
        seen[dst] = line
        routes.append(RouteConfig(dst, via, line))
    return NamespaceConfig(
        name=name,
        routes=tuple(routes),
        forwarding=section.value("Forwarding", False),
        line=section.line,
    )


def _build_netem(section: RawSection, ctx: _Context) -> NetemConfig:
    assert section.name is not None  # named=True
    reason = valid_ifname(section.name)
    if reason:
        raise ctx.error(
            section.line,
            section.spec.name,
            f"{_show(section.name)} is not a valid interface name ({reason}), expected "
            "[Netem LINK] naming a link this file makes",
        )
    if not any(section.get(k) for k in ("Delay", "Loss", "Rate")):
        raise ctx.error(
            section.line,
            section.spec.name,
            "shapes nothing, expected at least one of Delay, Loss and Rate",
        )
    jitter = section.get("Jitter")
    if jitter is not None and section.get("Delay") is None:
        raise ctx.error(
            jitter[0], section.where("Jitter"), "varies no delay, expected a Delay = line too"
        )
    return NetemConfig(
        link=section.name,
        delay=section.value("Delay", 0),
        jitter=section.value("Jitter", 0),
        loss=section.value("Loss", 0.0),
        rate=section.value("Rate"),
        limit=section.value("Limit"),
        line=section.line,
    )


def _check_lab(
    interface: InterfaceConfig,
    segments: list[tuple[RawSection, SegmentConfig]],
    links: list[tuple[RawSection, LinkConfig]],
    namespaces: list[tuple[RawSection, NamespaceConfig]],
    netems: list[tuple[RawSection, NetemConfig]],
    ctx: _Context,
) -> None:
    """[Namespace] once per name; [Netem] once per link, on a link the file makes."""
    _once_each(((section, ns.name) for section, ns in namespaces), "Namespace", "namespace", ctx)
    made = {link.name for _, link in links} | {
        link.pair for _, link in links if link.pair is not None
    }
    made |= {seg.device for _, seg in segments}
    if interface.transport != TRANSPORT_VXLAN:
        made.add(interface.name)  # the TUN (plain VXLAN has none)

    def netem_links() -> Iterator[tuple[RawSection, str]]:
        for section, netem in netems:  # (checked lazily: errors come in file order)
            if netem.link not in made:
                raise ctx.error(
                    section.line,
                    section.spec.name,
                    f"{netem.link!r} is not a link this file makes, expected one of its links, "
                    "veth ends, segment devices or the TUN (a qdisc replaced on someone else's "
                    "link could not be given back as it was)",
                )
            yield section, netem.link

    _once_each(netem_links(), "Netem", "link", ctx)


def _once_each(named: Iterable[tuple[RawSection, str]], kind: str, what: str, ctx: _Context) -> None:
    """At most one [KIND NAME] section per NAME: the second names the first's line."""
    first: dict[str, int] = {}
    for section, name in named:
        if name in first:
            raise ctx.error(
                section.line,
                section.spec.name,
                f"[{kind} {name}] is already given on line {first[name]}, expected one section "
                f"per {what}",
            )
        first[name] = section.line


def _check_topology(
    interface: InterfaceConfig,
    segments: list[tuple[RawSection, SegmentConfig]],
    links: list[tuple[RawSection, LinkConfig]],
    ctx: _Context,
    listen_line: int | None = None,
) -> None:
    """Names, references and placement across topology sections (what needs no kernel)."""

    def line_of(section: RawSection, key: str) -> int:
        item = section.get(key)
        return item[0] if item else section.line

    # Every name the file makes: links, veth peer ends, the TUN and the segment TAPs.
    named: dict[str, tuple[str, int]] = {interface.name: ("the [Interface]", interface.line)}
    for section, seg in segments:
        named.setdefault(seg.device, (f"segment {seg.name!r}", section.line))
    by_name: dict[str, tuple[RawSection, LinkConfig]] = {}
    for section, link in links:
        names = [(link.name, section.line, section.spec.name)]
        if link.pair is not None:
            key = kinds.of(link.kind).pair_key
            names.append((link.pair, line_of(section, key), section.where(key)))
        for name, line, where in names:
            if name in named:
                what, first = named[name]
                raise ctx.error(
                    line,
                    where,
                    f"{name!r} is already the name of {what} (line {first}), expected unique "
                    "interface names",
                )
            named[name] = (f"[{section.spec.name} {link.name}]", section.line)
        by_name[link.name] = (section, link)
    peer_ends = {link.pair: (section, link) for section, link in links if link.pair is not None}

    def home(name: str) -> str | None:
        """The namespace a named link ends up in (None: tunnelpyd's, or unknown = host link)."""
        seen: set[str] = set()
        while name in by_name and name not in seen:
            seen.add(name)
            link = by_name[name][1]
            if link.pair is not None:
                return link.pair_home  # this end of a pair (the other is in peer_ends)
            if link.namespace is not None or link.parent is None:
                return link.namespace
            name = link.parent
        if name in peer_ends:
            return peer_ends[name][1].namespace
        return None

    # Parents: no cycles, no TUN, what the kind itself asks (one passthru child), never a port.
    with_parent: list[tuple[RawSection, LinkConfig]] = []
    for section, link in links:
        parent = link.parent
        if parent is None:
            continue
        kind = kinds.of(link.kind)
        where, line = section.where("Link"), line_of(section, "Link")
        if parent == link.name:
            raise ctx.error(line, where, f"{link.name!r} cannot be its own parent")
        if parent == interface.name and not kind.l3_parent:
            raise ctx.error(
                line,
                where,
                f"{parent!r} is the TUN device (layer 3, no MAC), expected an Ethernet link",
            )
        chain, cursor = [link.name], parent
        while cursor in by_name and by_name[cursor][1].parent is not None:
            if cursor in chain:
                raise ctx.error(
                    line, where, f"links depend on each other in a loop: {' -> '.join(chain)}"
                )
            chain.append(cursor)
            cursor = by_name[cursor][1].parent  # type: ignore[assignment]
        kind.check_parent(section, link, with_parent, ctx)
        with_parent.append((section, link))
    # Masters and ports: one master per port, same namespace, masters that can be masters.
    master_of: dict[str, tuple[str, int]] = {}
    for section, link in links:
        enslaved = [
            (p, section.where("Ports"), line_of(section, "Ports"), link.name) for p in link.ports
        ]
        for port, where, line, master in enslaved:
            if port == master:
                raise ctx.error(line, where, f"{master!r} cannot be a port of itself")
            if port == interface.name:
                raise ctx.error(
                    line, where, f"{port!r} is the TUN device (layer 3), expected an Ethernet link"
                )
            if port in master_of:
                raise ctx.error(
                    line,
                    where,
                    f"{port!r} is already a port of {master_of[port][0]!r} "
                    f"(line {master_of[port][1]}), expected one master per port",
                )
            master_of[port] = (master, line)
    for section, link in links:
        if link.master is None:
            continue
        where, line = section.where("Master"), line_of(section, "Master")
        if link.master == link.name:
            raise ctx.error(line, where, f"{link.name!r} cannot be its own master")
        other = by_name.get(link.master)
        if other is not None and not kinds.of(other[1].kind).master:
            raise ctx.error(
                line,
                where,
                f"{link.master!r} is a {other[1].kind}, expected a bridge, bond or team",
            )
        if link.name in master_of and master_of[link.name][0] != link.master:
            first_master, first_line = master_of[link.name]
            raise ctx.error(
                line,
                where,
                f"{link.name!r} is already a port of {first_master!r} (line {first_line}), "
                "expected one master per port",
            )
        master_of[link.name] = (link.master, line)
    for section, seg in segments:
        if seg.bridge is None:
            continue
        bridge = by_name.get(seg.bridge)
        line = line_of(section, "Bridge")
        if bridge is not None and not kinds.of(bridge[1].kind).switch:
            raise ctx.error(
                line,
                section.where("Bridge"),
                f"{seg.bridge!r} is a {bridge[1].kind}, expected a bridge",
            )
        if bridge is not None and bridge[1].namespace is not None:
            raise ctx.error(
                line,
                section.where("Bridge"),
                f"bridge {seg.bridge!r} is in namespace {bridge[1].namespace!r}, expected a "
                "bridge in tunnelpyd's own namespace, where the TAP is",
            )
        if seg.device in master_of and master_of[seg.device][0] != seg.bridge:
            first_master, first_line = master_of[seg.device]
            raise ctx.error(
                line,
                section.where("Bridge"),
                f"{seg.device!r} is already a port of {first_master!r} (line {first_line}), "
                "expected one master per port",
            )
        master_of[seg.device] = (seg.bridge, line)
    for port, (master, line) in master_of.items():
        if master in by_name and home(port) != home(master):
            raise ctx.error(
                line,
                "",
                f"{port!r} (namespace {home(port) or 'of tunnelpyd'}) and its master {master!r} "
                f"(namespace {home(master) or 'of tunnelpyd'}) must be in the same namespace",
            )
    # A device that carries MACVLAN/IPVLAN children cannot also be a port (one rx handler).
    for section, link in links:
        parent = link.parent
        if kinds.of(link.kind).rx_handler and parent is not None and parent in master_of:
            raise ctx.error(
                line_of(section, "Link"),
                section.where("Link"),
                f"{parent!r} is a port of {master_of[parent][0]!r}, expected a parent that "
                f"is not enslaved (the kernel allows a {link.kind} or a master, not both)",
            )
    _check_udp_ports(interface, listen_line, links, home, ctx)
    # Addresses on ports are silently useless: say so (the seed note's classic mistake).
    for section, link in links:
        if link.addresses and link.name in master_of:
            ctx.warn(
                line_of(section, "Address"),
                section.where("Address"),
                f"{link.name!r} is a port of {master_of[link.name][0]!r}: an address on a port "
                "is not used, put it on the master",
            )
        if link.pair is not None and link.pair_addresses and link.pair in master_of:
            key = kinds.of(link.kind).pair_address_key
            ctx.warn(
                line_of(section, key),
                section.where(key),
                f"{link.pair!r} is a port of {master_of[link.pair][0]!r}: an address on a port "
                "is not used, put it on the master",
            )


def _check_udp_ports(
    interface: InterfaceConfig,
    listen_line: int | None,
    links: list[tuple[RawSection, LinkConfig]],
    home: Callable[[str], str | None],
    ctx: _Context,
) -> None:
    """UDP ports the file makes two listeners for in one namespace (found before anything
    changes: the kernel would refuse the second only when it comes up, half-way through).

    tunnelpyd's own socket (ListenPort; Transport = vxlan binds 4789 when none is given) lives in
    its namespace, on the wildcard address of both families. A kernel [VXLAN] device binds its
    DstPort, also on the wildcard address, in the namespace it is *created* in: beside its Link
    (the underlay), else in its Namespace; moving it later leaves the socket behind. Two [VXLAN]
    devices may share a port, but not a VNI on it (per address family: the kernel's EEXIST).
    The metrics listener is TCP and so never collides with these.
    """
    own = interface.listen_port  # None: a port the kernel picks, which cannot collide
    if interface.transport == TRANSPORT_VXLAN:
        own_what = (
            f"[Interface] ListenPort (line {listen_line})"
            if listen_line
            else f"the port Transport = vxlan binds by default (line {interface.line})"
        )
    else:
        own_what = f"[Interface] ListenPort (line {listen_line or interface.line})"
    first: dict[tuple[str | None, int, int, bool], tuple[str, int]] = {}
    for section, link in links:
        if not isinstance(link, VXLANConfig):
            continue
        made_in = home(link.link) if link.link is not None else link.namespace
        item = section.get("DstPort")
        line = item[0] if item else section.line
        where = section.where("DstPort")
        if made_in is None and own is not None and link.dst_port == own:
            shown = "" if item else " (DstPort's default)"
            raise ctx.error(
                line,
                where,
                f"UDP port {link.dst_port}{shown} is already tunnelpyd's own, {own_what}, in "
                f"the same namespace: the kernel vxlan device {link.name!r} could not bind it "
                "(Address already in use when it comes up); expected another DstPort (the "
                "Linux default is 8472) or another ListenPort",
            )
        v6 = any(a is not None and a.version == 6 for a in (link.remote, link.group, link.local))
        key = (made_in, link.dst_port, link.vni, v6)
        if key in first:
            other, other_line = first[key]
            ns = f"namespace {made_in!r}" if made_in else "tunnelpyd's namespace"
            raise ctx.error(
                line,
                where,
                f"VNI {link.vni} on UDP port {link.dst_port} is already taken by [VXLAN "
                f"{other}] (line {other_line}) in {ns}: the kernel allows one device per VNI "
                "and port; expected another VNI or DstPort",
            )
        first[key] = (link.name, section.line)


# --------------------------------------------------------------------------------------------
# The table of section kinds. Add new kinds here (see the module docstring).

_INTERFACE = SectionSpec(
    name="Interface",
    keys=(
        KeySpec("Name", _ifname),
        KeySpec("PrivateKey", _key, secret=True),
        KeySpec("PrivateKeyFile", _key_file),
        KeySpec("ListenPort", _port),
        KeySpec("Address", _address, multi=True),
        KeySpec("MTU", _mtu),
        KeySpec("FwMark", _fwmark),
        KeySpec("DNS", _word, multi=True),
        KeySpec("Table", _word),
        KeySpec("PreUp", _command, multi=True, split=False),
        KeySpec("PostUp", _command, multi=True, split=False),
        KeySpec("PreDown", _command, multi=True, split=False),
        KeySpec("PostDown", _command, multi=True, split=False),
        KeySpec("SaveConfig", _bool),
        KeySpec("LogLevel", _log_level),
        KeySpec("LogFormat", _choice(LOG_FORMATS, "a log format")),
        KeySpec("Transport", _transport),
        KeySpec("MetricsListen", _listen),
        KeySpec("User", _user),
        KeySpec("Offload", _offload),
        KeySpec("Workers", _workers),
        KeySpec("ListenAddress", _ip),
    ),
    build=_build_interface,
    required=True,
    exclusive=(("PrivateKey", "PrivateKeyFile"),),
)

_PEER = SectionSpec(
    name="Peer",
    keys=(
        KeySpec("Name", _peer_name),
        KeySpec("PublicKey", _public_key),
        KeySpec("PresharedKey", _key, secret=True),
        KeySpec("PresharedKeyFile", _key_file),
        KeySpec("Endpoint", _endpoint),
        KeySpec("AllowedIPs", _network, multi=True),
        KeySpec("PersistentKeepalive", _keepalive),
    ),
    build=_build_peer,
    repeatable=True,
    exclusive=(("PresharedKey", "PresharedKeyFile"),),
)

_SEGMENT = SectionSpec(
    name="Segment",
    keys=(
        KeySpec("VNI", _vni),
        KeySpec("Device", _ifname),
        KeySpec("Bridge", _ifname),
        KeySpec("Peers", _peer_name, multi=True),
        KeySpec("MTU", _link_mtu),
        KeySpec("Address", _address, multi=True),
        KeySpec("Hub", _yes_no),
        KeySpec("MAC", _mac_at_peer, multi=True),
        KeySpec("AllowedMACs", _mac_prefix_at_peer, multi=True),
        KeySpec("MaxMACsPerPeer", _fdb_size),
        KeySpec("MoveHoldTime", _seconds),
        KeySpec("AgingTime", _seconds),
        KeySpec("MaxFDBEntries", _fdb_size),
    ),
    build=_build_segment,
    named=True,
    repeatable=True,
)

_NAMESPACE = SectionSpec(
    name="Namespace",
    keys=(KeySpec("Route", _route, multi=True), KeySpec("Forwarding", _yes_no)),
    build=_build_namespace,
    named=True,
    repeatable=True,
)

_NETEM = SectionSpec(
    name="Netem",
    keys=(
        KeySpec("Delay", _duration),
        KeySpec("Jitter", _duration),
        KeySpec("Loss", _percent),
        KeySpec("Rate", _rate),
        KeySpec("Limit", _packets),
    ),
    build=_build_netem,
    named=True,
    repeatable=True,
)


# The value parsers a topology kind's keys name (``kinds.Key.value``).
LINK_VALUES: dict[str, Callable[[str, _Context], Any]] = {
    "ifname": _ifname,
    "address": _address,
    "yes_no": _yes_no,
    "vlan_id": _vlan_id,
    "vni": _vni,
    "ip": _ip,
    "port": _dst_port,
    "unicast_mac": _unicast_mac,
    "miimon": _miimon,
    "namespace": _namespace,
}


def _link_key(key: kinds.Key) -> KeySpec:
    if isinstance(key.value, kinds.Choice):
        return KeySpec(key.name, _choice(key.value.options, key.value.what), multi=key.multi)
    return KeySpec(key.name, LINK_VALUES[key.value], multi=key.multi)


def _topology_spec(kind: kinds.LinkKind) -> SectionSpec:
    """A topology kind's section: its own keys, then the ones every topology section has."""
    common = (
        KeySpec("Namespace", _namespace),
        KeySpec("Master", _ifname),
        KeySpec("Address", _address, multi=True),
        KeySpec("MTU", _link_mtu),
    )

    def build(section: RawSection, ctx: _Context) -> LinkConfig:
        return kind.build(section, ctx, lambda: _link_common(section, ctx))

    return SectionSpec(
        name=kind.section,
        keys=tuple(_link_key(k) for k in kind.keys) + common,
        build=build,
        named=True,
        repeatable=True,
        exclusive=kind.exclusive,
    )


_TOPOLOGY = tuple(_topology_spec(kind) for kind in kinds.KINDS.values())
TOPOLOGY_SECTIONS = tuple(spec.name for spec in _TOPOLOGY)

SECTIONS: dict[str, SectionSpec] = {
    spec.name.lower(): spec
    for spec in (_INTERFACE, _PEER, _SEGMENT, *_TOPOLOGY, _NAMESPACE, _NETEM)
}


# --------------------------------------------------------------------------------------------
# Public entry points


def parse(text: str, path: str = "<string>", default_name: str = "tp0") -> Config:
    """Parse config text. Key files are read relative to ``path``'s directory."""
    return _parse(text, path, default_name, file_mode=None)


# 10^5 peers with a few AllowedIPs each are ~20 MiB of text; anything much larger is a mistake.
MAX_CONFIG_BYTES = 64 << 20


def load(path: str, opener: Opener | None = None, *, secrets: bool = True) -> Config:
    """Read and parse a config file; the interface name defaults to the file's stem.

    ``opener`` reads the config and its key files (default: :func:`read_trusted`).
    ``secrets=False`` leaves key files unopened (their keys are b""): for what only describes
    the file (``tunnelpy plan`` and ``topology``), never for what runs it."""
    opener = opener or read_trusted
    try:
        data, mode = opener(path, MAX_CONFIG_BYTES)
    except FileRefused as e:
        if e.reason.startswith("cannot read it: "):
            reason = "cannot read the config: " + e.reason.split(": ", 1)[1]
        else:
            reason = f"the config {e.reason}"
        raise ConfigError(path, None, "", reason) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(path, line, "", "not valid UTF-8 text") from None
    return _parse(text, path, Path(path).stem, file_mode=mode, opener=opener, secrets=secrets)


def _parse(
    text: str, path: str, default_name: str, file_mode: int | None,
    opener: Opener = read_trusted, secrets: bool = True,
) -> Config:  # fmt: skip
    base_dir = "" if path.startswith("<") else os.path.dirname(path)
    ctx = _Context(path=path, base_dir=base_dir, default_name=default_name, opener=opener,
                   read_secrets=secrets)  # fmt: skip
    sections = _read_sections(text, ctx)
    # Peers are built differently per transport, and [Interface] may come after them.
    for section in sections:
        if section.spec is _INTERFACE:
            ctx.transport = section.value("Transport", TRANSPORT_WIREGUARD)
    built: dict[str, list[tuple[RawSection, Any]]] = {name: [] for name in SECTIONS}
    built_in_order: list[tuple[RawSection, Any]] = []
    for section in sections:
        built_in_order.append((section, section.spec.build(section, ctx)))
        built[section.spec.name.lower()].append(built_in_order[-1])
    # _read_sections has enforced exactly one [Interface].
    interface: InterfaceConfig = built["interface"][0][1]
    peers: list[tuple[RawSection, PeerConfig]] = built["peer"]
    _check_peers(interface, peers, ctx)
    segments: list[tuple[RawSection, SegmentConfig]] = built["segment"]
    _check_segments(interface, peers, segments, ctx)
    # File order across all topology kinds: the plan sorts by dependency, ties keep this order.
    links: list[tuple[RawSection, LinkConfig]] = [
        (section, link)
        for section, link in built_in_order
        if section.spec.name in TOPOLOGY_SECTIONS
    ]
    listen_item = built["interface"][0][0].get("ListenPort")
    _check_topology(interface, segments, links, ctx, listen_item[0] if listen_item else None)
    namespaces: list[tuple[RawSection, NamespaceConfig]] = built["namespace"]
    netems: list[tuple[RawSection, NetemConfig]] = built["netem"]
    _check_lab(interface, segments, links, namespaces, netems, ctx)
    if file_mode is not None and file_mode & 0o077:
        if any(s.get(k.name) for s in sections for k in s.spec.keys if k.secret):
            # wg-quick only warns here, and existing wg0.conf files must keep working.
            ctx.warn(
                None,
                "",
                f"holds secret keys but is accessible by group or others (mode "
                f"{stat.S_IMODE(file_mode):04o}), expected chmod 600 {path}",
            )
    return Config(
        path=path,
        interface=interface,
        peers=tuple(p for _, p in peers),
        warnings=tuple(ctx.warnings),
        segments=tuple(s for _, s in segments),
        topology=tuple(link for _, link in links),
        namespaces=tuple(ns for _, ns in namespaces),
        netem=tuple(n for _, n in netems),
    )
