"""Shared test helpers (no tests here): import them as ``from tests.harness.netns import Lab``.

In memory, no root:
  engine_pair    two Engines wired back to back with a hand-held clock (`Net`, `Pair`)
  packets        IPv4/IPv6, UDP/TCP/ICMP and Ethernet (optionally VLAN-tagged) builders
  fakes          FakeTun and FakeUdp on a FakeNetwork: the daemon's devices without a kernel
  hostile_mutate structure-aware mutations of WireGuard messages (fuzzers)
  hostile_scale  big generated site.conf files for the scale tests
  hostile_env    short/long form switch and the figures record of the hostile tier
  relay          the lossy, reordering UDP relay (also a script: run by path in a namespace)

Namespaces (root):
  netns          `Lab`: unique namespaces, veths, processes, wireguard-go, cleanup, leak check
  sites          real tunnelpyd sites in a Lab
  hostile_sites  two sites with the relay between them
  topolab        `TopoLab`: a Topology applied inside a Lab and always undone
"""
