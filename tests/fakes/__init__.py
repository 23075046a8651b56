"""Fakes shared by the tests and bench/: recording sink, fake backends and backend servers,
the bridge and server processes, a browser with a fake microphone."""
