"""Build of tunnelpy's optional compiled helpers and its data files; all metadata lives in
pyproject.toml.

`tunnelpy/io/_segments.pyx` (Cython) holds the TSO split and GRO coalescing loops in C
(docs/performance.md, "Compiled segment loops"); `tunnelpy/protocol/_aead.pyx` seals and opens
whole runs of transport messages with OpenSSL's libcrypto (the `crypto` library it names in its
`# distutils:` line; headers from Debian's libssl-dev). They are accelerators, not
dependencies: where one cannot be built (no C compiler, no Cython, no OpenSSL headers) the
install goes on without it and the daemon uses the pure-Python path (`cryptography` for the
AEAD), which gives the same bytes (tests/unit/test_offload.py and test_aead.py compare them).
"""

from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Data files, installed under the prefix (a venv's root, /usr/local for Debian's pip as root, ~/.local
# for --user): man finds share/man beside a bin/ on $PATH, bash-completion (>= 2.8) finds
# share/bash-completion/completions beside the command. The units go to share/tunnelpy/systemd,
# not lib/systemd/system: inside a venv that path means nothing to systemd, and under /usr/local
# it would enable a unit whose bare ExecStart= may name another installation's tunnelpyd. They
# are templates for `tunnelpy install-unit` (tunnelpy/unitinstall.py), which writes the unit
# with this installation's absolute paths. docs/operations.md, "Install", lists every path.
DATA_FILES = [
    ("share/man/man8", ["man/tunnelpyd.8", "man/tunnelpy.8"]),
    ("share/man/man5", ["man/tunnelpy.conf.5"]),
    ("share/bash-completion/completions", ["completions/tunnelpyd", "completions/tunnelpy"]),
    ("share/tunnelpy/systemd", ["systemd/tunnelpyd@.service"]),
    ("share/tunnelpy/systemd/wg-quick@.service.d", ["systemd/wg-quick@.service.d/tunnelpyd.conf"]),
    (
        "share/doc/tunnelpy",
        ["README.md", "LICENSE", *sorted(glob("docs/*.md")), "docs/lab-overlay.svg"],
    ),
    ("share/doc/tunnelpy/examples", sorted(glob("conf/*.conf"))),
]


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any build failure means "without it"
            self.warn(f"tunnelpy: compiled helpers not built ({e}); using the pure-Python path")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            self.warn(f"tunnelpy: {ext.name} not built ({e}); using the pure-Python path")


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    return cythonize(
        [
            Extension("tunnelpy.io._segments", ["tunnelpy/io/_segments.pyx"]),
            Extension("tunnelpy.protocol._aead", ["tunnelpy/protocol/_aead.pyx"]),
        ],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    data_files=DATA_FILES,
)
