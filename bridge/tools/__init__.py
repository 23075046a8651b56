"""Command-line tools around the bridge: the load tester, the one-call client, the echo call handler."""
