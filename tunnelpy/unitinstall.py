"""`tunnelpy install-unit`: tunnelpyd@.service for *this* installation of tunnelpy.

The shipped unit (systemd/tunnelpyd@.service) says ``ExecStart=tunnelpyd …``; systemd looks a
bare name up on its own fixed path (/usr/local/bin, /usr/bin…), so a venv, pipx or pyenv
install is "not found" there. This writes the unit with the absolute paths of the tunnelpyd and
tunnelpy that belong to the running interpreter, so what systemd starts is what was installed:

* the programs: the directory of the running `tunnelpy` script if it has both, else the
  interpreter's scripts directory (sysconfig: a venv's bin/, Debian's /usr/local/bin), the
  per-user one, the interpreter's own directory, $PATH — the first that holds both;
* ``ProtectHome=read-only`` instead of ``yes`` when the programs, the interpreter they run or the
  installed package lie under /home, /root or /run/user (pyenv's ~/.pyenv, a venv in a home):
  with ``yes`` systemd hides those trees and the start fails with status 203/EXEC or an
  ImportError;
* ``Documentation=file:…`` for the installed docs/operations.md, besides the man pages;
* with ``--wg-quick``, also the wg-quick@.service drop-in with
  ``WG_QUICK_USERSPACE_IMPLEMENTATION=`` the absolute tunnelpyd.

The templates are read from the source tree when the running package is a checkout (the code
that runs is the unit's source), otherwise from the installed data files (share/tunnelpy/systemd,
found through the distribution's RECORD, so any install scheme works). Each edit must match the
template exactly once, or nothing is written: a template that drifted fails loudly here and in
tests/unit/test_unitinstall.py, never as a half-edited unit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

from .version import version

UNIT = "tunnelpyd@.service"
DROPIN = "wg-quick@.service.d/tunnelpyd.conf"
HIDDEN_BY_PROTECT_HOME = ("/home", "/root", "/run/user")
CHECKOUT = Path(__file__).resolve().parents[1]


class InstallError(Exception):
    """Nothing was written; ``str(e)`` is the one line to print."""


def _installed_file(suffix: str) -> Path | None:
    """An installed data file of the distribution, by the end of its path (``share/…``)."""
    try:
        dist = metadata.distribution("tunnelpy")
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.as_posix().endswith(suffix):
            path = Path(str(dist.locate_file(f))).resolve()
            if path.is_file():
                return path
    return None


def template(rel: str) -> str:
    """The text of systemd/REL as shipped (see the module docstring for where it is found)."""
    source = CHECKOUT / "systemd" / rel
    if (CHECKOUT / "pyproject.toml").is_file() and source.is_file():
        return source.read_text()
    installed = _installed_file(f"share/tunnelpy/systemd/{rel}")
    if installed is None:
        raise InstallError(
            f"no {rel} template: neither a source checkout nor installed data files "
            "(share/tunnelpy/systemd) — install with pip, not by copying the package"
        )
    return installed.read_text()


def program_dir() -> Path:
    """The directory holding this installation's tunnelpyd and tunnelpy (InstallError if none)."""
    candidates: list[Path] = []
    argv0 = Path(sys.argv[0])
    if argv0.name == "tunnelpy":
        candidates.append(argv0.absolute().parent)
    for scheme in (None, f"{os.name}_user"):
        try:
            path = (
                sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
            )
        except KeyError:
            continue
        candidates.append(Path(path))
    candidates.append(Path(sys.executable).parent)
    found = shutil.which("tunnelpyd")
    if found:
        candidates.append(Path(found).absolute().parent)
    for d in candidates:
        if all(
            os.access(d / name, os.X_OK) and (d / name).is_file()
            for name in ("tunnelpyd", "tunnelpy")
        ):
            return d
    tried = ", ".join(dict.fromkeys(str(d) for d in candidates))
    raise InstallError(f"tunnelpyd and tunnelpy not found together in {tried} (pip install .)")


def _interpreter(script: Path) -> Path | None:
    """The interpreter a script's #! line names, symlinks resolved (a venv's python -> pyenv)."""
    try:
        with script.open("rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return Path(words[0]).resolve() if words else None


def _hidden(path: Path) -> bool:
    p = str(path)
    return any(p == top or p.startswith(top + "/") for top in HIDDEN_BY_PROTECT_HOME)


def needs_home(bindir: Path) -> list[Path]:
    """The paths the service needs that ProtectHome=yes would hide."""
    paths = [
        bindir / "tunnelpyd",
        Path(__file__).resolve(),
        Path(sys.prefix),
        Path(sys.base_prefix),
    ]
    interp = _interpreter(bindir / "tunnelpyd")
    if interp is not None:
        paths.append(interp)
    return [p for p in paths if _hidden(p.absolute())]


def _replace_once(text: str, old: str, new: str, what: str) -> str:
    if text.count(old) != 1:
        raise InstallError(f"the {what} template has not exactly one {old.strip()!r} line")
    return text.replace(old, new)


def render_unit(bindir: Path) -> str:
    """tunnelpyd@.service with this installation's paths."""
    text = template(UNIT)
    text = _replace_once(text, "\nExecStart=tunnelpyd ", f"\nExecStart={bindir}/tunnelpyd ", UNIT)
    text = _replace_once(text, "\nExecReload=tunnelpy ", f"\nExecReload={bindir}/tunnelpy ", UNIT)
    hidden = needs_home(bindir)
    if hidden:
        text = _replace_once(
            text,
            "\nProtectHome=yes\n",
            f"\n# install-unit: read-only, not yes: the service runs {hidden[0]}\n"
            "ProtectHome=read-only\n",
            UNIT,
        )
    docs = _installed_file("share/doc/tunnelpy/operations.md")
    if docs is not None:
        text = _replace_once(
            text, "\n[Service]\n", f"\nDocumentation=file:{docs}\n\n[Service]\n", UNIT
        )
    head = (
        f"# Written by `tunnelpy install-unit` (tunnelpy v{version()}) for the programs in "
        f"{bindir}.\n# Run it again after moving the installation; local changes belong in a "
        "drop-in (systemctl edit tunnelpyd@NAME).\n"
    )
    return head + text


def render_dropin(bindir: Path) -> str:
    """The wg-quick@.service drop-in naming this installation's tunnelpyd."""
    old = "\nEnvironment=WG_QUICK_USERSPACE_IMPLEMENTATION=tunnelpyd\n"
    new = f"\nEnvironment=WG_QUICK_USERSPACE_IMPLEMENTATION={bindir}/tunnelpyd\n"
    head = f"# Written by `tunnelpy install-unit --wg-quick` (tunnelpy v{version()}).\n"
    return head + _replace_once(template(DROPIN), old, new, DROPIN)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # systemd never reads half a unit
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def install(directory: str, *, wg_quick: bool = False, to_stdout: bool = False) -> list[str]:
    """Write (or print) the unit, and the wg-quick drop-in with ``wg_quick``; the paths written."""
    bindir = program_dir()
    outputs = [(Path(directory) / UNIT, render_unit(bindir))]
    if wg_quick:
        outputs.append((Path(directory) / DROPIN, render_dropin(bindir)))
    if to_stdout:
        sys.stdout.write("\n".join(text for _, text in outputs))
        return []
    try:
        for path, text in outputs:
            _write(path, text)
    except OSError as e:
        raise InstallError(f"{e.filename or directory}: {e.strerror or e}") from None
    return [str(path) for path, _ in outputs]
