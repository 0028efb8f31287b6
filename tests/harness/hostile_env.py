"""Short form (CI) versus long form (``TUNNELPY_HOSTILE=long``) knobs and the figures record.

Every hostile test takes its sizes from `pick(short, long)`. Tests that measure something call
`figure(name, value)`: the value is printed (run pytest with ``-s`` to see it live) and, when
``TUNNELPY_FIGURES=path`` is set, appended to that JSON-lines file; docs/hostile.md quotes the
long-form run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TypeVar

T = TypeVar("T")

LONG = os.environ.get("TUNNELPY_HOSTILE", "").strip().lower() == "long"


def pick(short: T, long: T) -> T:
    return long if LONG else short


def figure(name: str, value: object, unit: str = "") -> None:
    line = f"FIGURE {name} = {value}{(' ' + unit) if unit else ''}"
    print(line, file=sys.stderr, flush=True)
    path = os.environ.get("TUNNELPY_FIGURES")
    if path:
        with open(path, "a") as f:
            rec = {"name": name, "value": value, "unit": unit, "long": LONG, "t": time.time()}
            f.write(json.dumps(rec) + "\n")
