"""Command-line tools around the bridge: the load tester, the one-call client and the echo
call handler."""
