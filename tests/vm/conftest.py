"""The VM tier: kinds this machine's kernel lacks (VLAN, IPVLAN, bond, team), in a full kernel.

On the host, pytest collects only tests/vm/test_vm_tier.py, which boots one small VM with
virtme-ng (a Debian kernel under qemu, the host's / mounted read-only, see shared VMLANE.md)
and runs ``pytest tests/vm/guest`` inside it with TUNNELPY_IN_VM=1. Inside the VM only
tests/vm/guest is collected. So ``python3 -m pytest -q tests`` runs the tier when the tooling is
there and prints why it was skipped when it is not.
"""

from __future__ import annotations

import os

IN_VM = os.environ.get("TUNNELPY_IN_VM") == "1"

# Guest tests would fail on the host's kernel; the host-side launcher is pointless in the guest.
collect_ignore_glob = ["test_vm_tier.py"] if IN_VM else ["guest/*"]
