"""Build of tunnelpy's optional compiled helpers; all metadata lives in pyproject.toml.

`tunnelpy/io/_segments.pyx` (Cython) holds the TSO split and GRO coalescing loops in C
(docs/performance.md, "Compiled segment loops"); `tunnelpy/protocol/_aead.pyx` seals and opens
whole runs of transport messages with OpenSSL's libcrypto (the `crypto` library it names in its
`# distutils:` line; headers from Debian's libssl-dev). They are accelerators, not
dependencies: where one cannot be built (no C compiler, no Cython, no OpenSSL headers) the
install goes on without it and the daemon uses the pure-Python path (`cryptography` for the
AEAD), which gives the same bytes (tests/unit/test_offload.py and test_aead.py compare them).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


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


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
