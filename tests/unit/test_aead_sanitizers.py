"""The compiled AEAD built once more with AddressSanitizer and UndefinedBehaviorSanitizer, and
fuzzed with 10^6 inputs (tests/harness/aead_fuzz.py): a read or write out of bounds, or
undefined behaviour, in code that parses bytes from the network fails the test with the
sanitizer's report. Python's small-object allocator is turned off (PYTHONMALLOC=malloc) so
every bytes object has ASan's red zones around it; the instrumented module is loaded from a
temporary directory by a child interpreter with libasan preloaded.

Needs gcc with libasan/libubsan, Cython and OpenSSL's headers (CI has them all: it fails there
when one is missing, and skips elsewhere). About 10 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYX = ROOT / "tunnelpy" / "protocol" / "_aead.pyx"


def _missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"sanitizer build impossible: {why}")
    pytest.skip(why)


def test_fuzz_under_asan_and_ubsan(tmp_path):
    gcc = shutil.which("gcc")
    if gcc is None:
        _missing("no gcc")
    libasan = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()  # fmt: skip
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        _missing("gcc has no libasan")
    try:
        import Cython  # noqa: F401
    except ImportError:
        _missing("Cython is not installed (pip install cython)")
    shutil.copy(PYX, tmp_path / "_aead.pyx")
    r = subprocess.run([sys.executable, "-m", "cython", "-3", "_aead.pyx", "-o", "_aead.c"],
                       cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    so = tmp_path / ("_aead" + sysconfig.get_config_var("EXT_SUFFIX"))
    r = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
         "-I", sysconfig.get_paths()["include"], "_aead.c", "-lcrypto", "-o", str(so)],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    if r.returncode != 0 and "openssl/evp.h" in r.stderr:
        _missing("no OpenSSL headers (apt-get install libssl-dev)")
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, LD_PRELOAD=libasan, PYTHONMALLOC="malloc", PYTHONPATH=str(ROOT),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")  # fmt: skip
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "harness" / "aead_fuzz.py"), str(tmp_path),
         "1000000"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    assert "AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr
    stats = json.loads(r.stdout.strip().splitlines()[-1])  # the fuzzer's counts
    assert stats["inputs"] >= 1_000_000 and stats["delivered"] > 1_000
