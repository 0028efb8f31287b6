"""Integration tier: real tunnelpyd processes in network namespaces (root)."""
