"""`python3 -m tunnelpy.tunnelpyd …` is the `tunnelpyd` command (the daemon's background child
is started so, and it works before the shell has the entry point on its PATH)."""

import sys

from .cli import daemon_main

sys.exit(daemon_main())
