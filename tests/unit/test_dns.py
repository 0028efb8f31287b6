"""tunnelpy/dns.py: DNS = split as wg-quick splits it, and resolvconf's interface prefix."""

from __future__ import annotations

from tunnelpy import dns


def test_addresses_are_servers_the_rest_search_domains():
    assert dns.split(["10.0.0.53", "corp.example", "fd00::53", "lab"]) == (
        ["10.0.0.53", "fd00::53"], ["corp.example", "lab"],
    )  # fmt: skip


def test_resolvconf_prefix_from_interface_order(tmp_path):
    order = tmp_path / "interface-order"
    assert dns.resolvconf_prefix(str(order)) == ""  # no file: no prefix
    order.write_text("# comment\nlo.inet6\nlo.inet\ntun*\ntap*\nhso*\nem+([0-9])?(_+([0-9]))*\n")
    assert dns.resolvconf_prefix(str(order)) == "tun."
    order.write_text("lo.inet\n")
    assert dns.resolvconf_prefix(str(order)) == ""
