"""`voicebridge` command line: `serve` runs the bridge, `loadtest` runs the spec §4.5 tester,
`call` makes one WebSocket call from a WAV file."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from bridge.config import ConfigError, load_settings

__all__ = ["main"]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the bridge (settings from the environment / .env)")
    serve.add_argument("--host", help="override GATEWAY_HOST")
    serve.add_argument("--port", type=int, help="override GATEWAY_PORT")
    serve.add_argument("--no-sip", action="store_true", help="override SIP_ENABLED=false")

    from bridge.tools.loadtest import add_arguments

    load = sub.add_parser("loadtest", help="spec §4.5 load tester for the WebSocket door")
    add_arguments(load)

    from bridge.tools import call_client

    one = sub.add_parser("call", help="one WebSocket call: stream a WAV, print and save the reply")
    call_client.add_arguments(one)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `voicebridge` console script."""
    args = _parser().parse_args(argv)
    if args.command == "loadtest":
        from bridge.tools.loadtest import run_from_args

        _setup_logging("WARNING")
        return run_from_args(args)
    if args.command == "call":
        from bridge.tools import call_client

        _setup_logging("WARNING")
        return call_client.run_from_args(args)

    overrides: dict[str, object] = {}
    if args.host:
        overrides["gateway_host"] = args.host
    if args.port is not None:
        overrides["gateway_port"] = args.port
    if args.no_sip:
        overrides["sip_enabled"] = False
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(f"voicebridge: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    from bridge.app import serve

    try:
        return asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"voicebridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
