"""`python3 -m tunnelpy …` is the `tunnelpy` command (works before the shell has the entry point
on its PATH, e.g. right after `pip install` under pyenv)."""

import sys

from .cli import main

sys.exit(main())
