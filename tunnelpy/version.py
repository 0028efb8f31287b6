"""The installed distribution's version, the one string every surface quotes.

pyproject.toml's ``version`` is the only place it is written; at run time it comes from the
installed metadata (importlib.metadata), so `tunnelpyd --version`, `tunnelpy --version`, the
daemon's start-up line and ``tunnelpy show --json`` ("version") never disagree. A source tree
run without any install says ``unknown`` rather than guess.
"""

from __future__ import annotations

import functools


@functools.cache
def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("tunnelpy")
    except PackageNotFoundError:
        return "unknown"
