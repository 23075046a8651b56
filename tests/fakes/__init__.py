"""Fakes shared by the tests and bench/: recording sink, fake calls, fake backends, a bridge process."""
