"""The `tunnelpy` command's offline subcommands, run as real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tunnelpy import keys


def tp(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunnelpy", *args], input=input,
                          capture_output=True, text=True, timeout=60)


def test_genkey_pubkey_genpsk():
    priv = tp("genkey").stdout.strip()
    assert len(keys.decode_key(priv)) == 32
    pub = tp("pubkey", input=priv + "\n").stdout.strip()
    assert pub == keys.public_from_private(priv)
    psk = tp("genpsk").stdout.strip()
    assert len(keys.decode_key(psk)) == 32 and psk != priv
    bad = tp("pubkey", input="nonsense\n")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1


@pytest.mark.skipif(shutil.which("wg") is None, reason="wg not installed")
def test_pubkey_matches_wg():
    priv = tp("genkey").stdout
    ours = tp("pubkey", input=priv).stdout
    theirs = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True).stdout
    assert ours == theirs


def test_check_ok_and_error(tmp_path):
    good = tmp_path / "good.conf"
    good.write_text(f"[Interface]\nPrivateKey = {keys.generate_private()}\nListenPort = 51820\n")
    os.chmod(good, 0o600)
    r = tp("check", "-c", str(good))
    assert r.returncode == 0 and "OK" in r.stdout
    bad = tmp_path / "bad.conf"
    bad.write_text("[Interface]\nPrivateKey = x\n")
    r = tp("check", "-c", str(bad))
    assert r.returncode == 1
    assert r.stderr.startswith(f"tunnelpy: {bad}:2: Interface.PrivateKey:") and r.stderr.count("\n") == 1
    r = tp("check", "-c", str(tmp_path / "missing.conf"))
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_daemon_refuses_bad_config_without_traceback(tmp_path):
    bad = tmp_path / "x.conf"
    bad.write_text("[Interface]\nPrivateKey = x\n[Peer]\n")
    r = subprocess.run([sys.executable, "-c", "import sys; from tunnelpy.cli import daemon_main; sys.exit(daemon_main())",
                        "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_check_warns_about_endpoint_names_that_do_not_resolve(tmp_path, monkeypatch, capsys):
    import tunnelpy.io.udp as udp

    def resolve(host, port):  # no real DNS in tests
        if host == "later.example":
            raise OSError(-2, "Name or service not known")
        return ("192.0.2.1", port)

    monkeypatch.setattr(udp, "resolve", resolve)
    from tunnelpy.cli import main

    conf = tmp_path / "w.conf"
    peer = keys.public_from_private(keys.generate_private())
    other = keys.public_from_private(keys.generate_private())
    conf.write_text(
        f"[Interface]\nPrivateKey = {keys.generate_private()}\n"
        f"[Peer]\nPublicKey = {peer}\nEndpoint = later.example:51820\nAllowedIPs = 10.0.0.2/32\n"
        f"[Peer]\nPublicKey = {other}\nEndpoint = fine.example:51820\nAllowedIPs = 10.0.0.3/32\n"
    )
    conf.chmod(0o600)
    assert main(["check", "-c", str(conf)]) == 0
    err = capsys.readouterr().err
    assert f"{conf}:3: Peer.Endpoint: later.example does not resolve now" in err
    assert "fine.example" not in err


def test_version_of_both_commands():
    from tunnelpy.version import version

    v = version()
    assert v != "unknown"  # the test environment has the package installed (pip install -e .)
    res = tp("--version")
    assert res.returncode == 0 and res.stdout == f"tunnelpy v{v}\n"
    daemon = subprocess.run(
        [sys.executable, "-c", "import sys; from tunnelpy.cli import daemon_main; "
         "sys.exit(daemon_main())", "--version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert daemon.returncode == 0 and daemon.stdout.splitlines()[0] == f"tunnelpyd v{v}"


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "import sys; from tunnelpy.cli import daemon_main; sys.exit(daemon_main())"],
        ["-m", "tunnelpy"],
    ],
)
def test_version_into_a_closed_pipe_is_no_traceback(argv):
    """`tunnelpyd --version | head -1`: a reader that left is not an error of ours."""
    r, w = os.pipe()
    os.close(r)  # every write now fails with EPIPE
    try:
        res = subprocess.run(
            [sys.executable, *argv, "--version"], stdout=w, stderr=subprocess.PIPE, text=True,
            timeout=60,
        )  # fmt: skip
    finally:
        os.close(w)
    assert res.returncode == 0 and res.stderr == "", res.stderr
