"""Fault-injection tests: the proxy itself, and the backends through it."""
