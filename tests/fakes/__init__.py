"""Loopback fakes of the crypto exchanges ccxt talks to, for tests and benchmarks (core.py)."""
