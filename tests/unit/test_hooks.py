"""Hook commands: %i quoted for /bin/sh, the command text only at DEBUG (hooks carry tokens and
addresses), a failure named by position and program."""

from __future__ import annotations

import logging

import pytest

from tests.unit.test_config import OWN_PRIVATE
from tunnelpy import config
from tunnelpy.daemon import Daemon, StartupError


def _daemon(name: str = "wg0") -> Daemon:
    return Daemon(config.parse(f"[Interface]\nName = {name}\nPrivateKey = {OWN_PRIVATE}\n"))


def test_hook_text_stays_out_of_info_logs(caplog, tmp_path):
    out = tmp_path / "out"
    d = _daemon("a+b=c")
    with caplog.at_level(logging.INFO, logger="tunnelpyd"):
        d._run_hooks("PostUp", (f"echo %i SECRET-TOKEN > {out}",))
    assert out.read_text() == "a+b=c SECRET-TOKEN\n"  # %i substituted
    assert "SECRET-TOKEN" not in caplog.text and "running command 1 of 1" in caplog.text


def test_failed_hook_named_without_its_arguments():
    d = _daemon()
    with pytest.raises(StartupError) as e:
        d._run_hooks("PreUp", ("true", "false --token=SECRET-TOKEN"))
    assert str(e.value) == "PreUp command 2 (false …) failed with status 1"


def test_failed_down_hook_only_warns(caplog):
    d = _daemon()
    with caplog.at_level(logging.WARNING, logger="tunnelpyd"):
        d._run_hooks("PostDown", ("exit 3",))
    assert "PostDown command 1 (exit …) failed with status 3" in caplog.text
