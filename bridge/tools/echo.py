"""An echo call manager: every call plays the caller's audio back. For testing the SIP door.

`EchoCalls` has the shape of `bridge.pipeline.CallManager.open`, so the SIP door runs without
the ASR/LLM/TTS pipeline; each `EchoCall` records what the door fed it (16 kHz PCM, digits)
and sends the caller's audio back through the sink in `chunk_ms` blocks.

Run a stand-alone echo SIP door (SIPp and softphones can call it):

    python -m bridge.tools.echo --host 127.0.0.1 --port 5070

It prints `SIP_PORT=<port>` once listening and a JSON summary of the calls on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from bridge.backends.base import Audio
from bridge.config import Settings, load_settings
from bridge.contract import CALLER_RATE, CallLimitExceeded, CallOptions, CallSink
from sip.tasks import TaskSet

__all__ = ["EchoCall", "EchoCalls", "main"]

log = logging.getLogger("bridge.tools.echo")


class EchoCall:
    """A call that echoes caller audio back and records it (`bridge.contract.CallHandle`)."""

    def __init__(self, options: CallOptions, sink: CallSink, owner: EchoCalls) -> None:
        self.call_id = options.call_id
        self.options = options
        self.sink = sink
        self.received: list[npt.NDArray[np.int16]] = []
        self.digits: list[str] = []
        self.closed_reason: str | None = None
        self._owner = owner
        self._pending: list[npt.NDArray[np.int16]] = []
        self._pending_samples = 0
        self._chunk = owner.chunk_ms * CALLER_RATE // 1000
        self._sends = TaskSet(f"echo-{self.call_id}", log)

    def feed(self, pcm16k: npt.NDArray[np.int16]) -> None:
        """Record the frame; echo every `chunk_ms` of audio."""
        frame = np.asarray(pcm16k, dtype=np.int16).copy()
        self.received.append(frame)
        if not self._owner.echo:
            return
        self._pending.append(frame)
        self._pending_samples += len(frame)
        if self._pending_samples >= self._chunk:
            block = np.concatenate(self._pending)
            self._pending, self._pending_samples = [], 0
            self._sends.spawn(self.sink.send_audio(Audio(block, CALLER_RATE)), "echo")

    def dtmf(self, digit: str) -> None:
        """Record the digit."""
        self.digits.append(digit)

    @property
    def audio(self) -> npt.NDArray[np.int16]:
        """Everything fed so far, concatenated."""
        return np.concatenate(self.received) if self.received else np.zeros(0, np.int16)

    async def close(self, reason: str = "hangup") -> None:
        """End the call. Idempotent."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        await self._sends.cancel_all()
        self._owner.closed(self)


class EchoCalls:
    """Opens `EchoCall`s up to `max_calls`; keeps every call for inspection."""

    def __init__(self, max_calls: int = 1000, chunk_ms: int = 200, echo: bool = True) -> None:
        self.max_calls = max_calls
        self.chunk_ms = chunk_ms
        self.echo = echo
        self.open_delay_s = 0.0
        self.calls: dict[str, EchoCall] = {}
        self.active: dict[str, EchoCall] = {}
        self.peak = 0
        self.rejected = 0

    async def open(self, options: CallOptions, sink: CallSink) -> EchoCall:
        """Open a call; raise `CallLimitExceeded` beyond `max_calls` active calls."""
        if len(self.active) >= self.max_calls:
            self.rejected += 1
            raise CallLimitExceeded(f"{len(self.active)} calls active")
        call = EchoCall(options, sink, self)
        self.calls[call.call_id] = call
        self.active[call.call_id] = call
        self.peak = max(self.peak, len(self.active))
        if self.open_delay_s:
            await asyncio.sleep(self.open_delay_s)  # a slow call setup (tests CANCEL)
        return call

    def closed(self, call: EchoCall) -> None:
        """Called by `EchoCall.close`."""
        self.active.pop(call.call_id, None)

    def summary(self) -> dict[str, object]:
        """Counts for the stand-alone server's exit line."""
        return {
            "calls": len(self.calls),
            "active": len(self.active),
            "peak": self.peak,
            "rejected": self.rejected,
            "closed_reasons": _count(c.closed_reason or "open" for c in self.calls.values()),
            "digits": sum(len(c.digits) for c in self.calls.values()),
            "fed_seconds": round(
                sum(sum(len(f) for f in c.received) for c in self.calls.values()) / CALLER_RATE, 2
            ),
        }


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


async def _serve(settings: Settings, max_calls: int) -> dict[str, object]:
    from bridge.doors.sip import start_sip  # the door imports nothing from here

    calls = EchoCalls(max_calls=max_calls)
    service = await start_sip(settings, calls)
    print(f"SIP_PORT={service.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    door = service.door
    rtp = {
        "malformed": sum(c.session.stats.malformed for c in door.active.values()),
        "clock_resyncs": door.clock.resyncs,
        "clock_late_ticks": door.clock.late_ticks,
    }
    await service.stop()
    return {**calls.summary(), **rtp}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run an echo SIP door until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="Stand-alone SIP echo door (for SIPp tests).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5060, help="0 picks a free port")
    parser.add_argument("--rtp-min", type=int, default=None)
    parser.add_argument("--rtp-max", type=int, default=None)
    parser.add_argument("--max-calls", type=int, default=1000)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    overrides: dict[str, object] = {"sip_host": args.host}
    if args.rtp_min is not None:
        overrides["rtp_port_min"] = args.rtp_min
    if args.rtp_max is not None:
        overrides["rtp_port_max"] = args.rtp_max
    # SIP_PORT must be >= 1 in the settings; port 0 (a free port) is for tests and tools
    settings = load_settings(**overrides).model_copy(update={"sip_port": args.port})
    summary = asyncio.run(_serve(settings, args.max_calls))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
