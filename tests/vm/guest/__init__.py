"""Tests that run inside the VM (TUNNELPY_IN_VM=1), on a full kernel."""
