"""Interop tier: tunnelpyd against wireguard-go (root, wireguard-go, wg)."""
