"""The test suite: one package, so helpers are imported as ``tests.harness.<module>``."""
