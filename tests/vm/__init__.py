"""VM tier: the host-side launcher and, in guest/, the tests that run inside the VM."""
