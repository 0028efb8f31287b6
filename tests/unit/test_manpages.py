"""Man pages and bash completion cannot drift from the code: the committed man/ and completions/
files are exactly what tunnelpy/manpages.py generates from the argparse parsers and the config
key table, every key of that table is documented, the pages render without roff warnings, and
the completion scripts complete what the parsers accept (run in a real bash)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tunnelpy import cli, manpages

ROOT = Path(__file__).resolve().parents[2]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if in_ci():
            pytest.fail(f"CI=true and {tool} is missing (apt-get install {package})")
        pytest.skip(f"{tool} not installed ({package})")
    return path


def test_committed_pages_and_scripts_are_generated_ones():
    stale = [
        rel for rel, text in manpages.generated().items()
        if not (ROOT / rel).is_file() or (ROOT / rel).read_text() != text
    ]  # fmt: skip
    assert stale == [], f"regenerate with: python3 -m tunnelpy.manpages ({stale})"
    assert manpages.main(["--check", "--root", str(ROOT)]) == 0


def test_every_config_key_is_documented_and_nothing_else():
    table, docs = manpages.table_keys(), manpages.documented_keys()
    assert table - docs == set(), "add these keys to manpages.KEY_DOCS"
    assert docs - table == set(), "these KEY_DOCS entries name no key of config.SECTIONS"


def test_pages_name_every_option_and_key():
    daemon, tools, conf = manpages.daemon_page(), manpages.tools_page(), manpages.conf_page()
    for ap, page in ((cli.daemon_parser(), daemon), (cli.parser(), tools)):
        for action in ap._actions:
            for opt in action.option_strings:
                assert f"\\fB{manpages.esc(opt)}\\fR" in page, opt
    for name, _, sub in manpages.subcommands(cli.parser()):
        assert f".SS {manpages.esc(name)}" in tools, name
        for action in sub._actions:
            for opt in action.option_strings:
                assert manpages.esc(opt) in tools, (name, opt)
    for section, key in manpages.table_keys():
        assert f"\\fB{key}\\fR = " in conf, (section, key)


@pytest.mark.parametrize("page", ["tunnelpyd.8", "tunnelpy.8", "tunnelpy.conf.5"])
def test_man_renders_without_warnings(page):
    man = need("man", "man-db")
    res = subprocess.run(
        [man, "--warnings", "-l", str(ROOT / "man" / page)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "MANWIDTH": "80"},
    )  # fmt: skip
    assert res.returncode == 0 and res.stderr == "", res.stderr
    title = page.rsplit(".", 1)[0].upper()
    assert res.stdout.startswith(f"{title}(") and "NAME" in res.stdout and "SEE ALSO" in res.stdout


def complete(script: str, words: list[str], cwd: Path | None = None) -> list[str]:
    """COMPREPLY for the command line ``words`` (the last one being completed) in a real bash."""
    bash = need("bash", "bash")
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    prog = words[0]
    code = (
        f"source {ROOT / 'completions' / script}\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
        f"_{prog}_complete\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    res = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", code],
        capture_output=True, text=True, timeout=30, cwd=cwd,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.splitlines() if line]


def test_bash_completion_of_subcommands_options_values_and_files(tmp_path):
    subs = [name for name, _, _ in manpages.subcommands(cli.parser())]
    assert set(complete("tunnelpy", ["tunnelpy", ""])) >= set(subs) | {"--version"}
    assert complete("tunnelpy", ["tunnelpy", "st"]) == ["strip"]
    assert complete("tunnelpy", ["tunnelpy", "install-unit", "--w"]) == ["--wg-quick"]
    assert complete("tunnelpy", ["tunnelpy", "topology", "-c", "x", "--format", ""]) == [
        "text", "dot", "svg",
    ]  # fmt: skip
    (tmp_path / "site.conf").write_text("")
    (tmp_path / "sub").mkdir()
    assert complete("tunnelpy", ["tunnelpy", "check", "-c", "si"], cwd=tmp_path) == ["site.conf"]
    assert complete("tunnelpy", ["tunnelpy", "strip", "s"], cwd=tmp_path) == ["site.conf", "sub"]
    assert complete("tunnelpyd", ["tunnelpyd", "--log-format", ""]) == ["plain", "json"]
    assert complete("tunnelpyd", ["tunnelpyd", "--uapi-dir", "s"], cwd=tmp_path) == ["sub"]
    assert "--log-format" in complete("tunnelpyd", ["tunnelpyd", "--log"])
    # the script registers itself for its command
    bash = need("bash", "bash")
    res = subprocess.run(
        [bash, "--norc", "-c", f"source {ROOT / 'completions' / 'tunnelpy'}; complete -p tunnelpy"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.stdout.strip() == "complete -F _tunnelpy_complete tunnelpy"
