"""The call manager: admits calls up to MAX_CONCURRENT_CALLS, owns them, ends them all.

Every door opens calls through one `CallManager`; it enforces the call limit, shares the
backend pools between calls, keeps `pipeline_calls_active` / `pipeline_calls_total` and, on
shutdown, asks each door to hang up (SIP BYE, WebSocket close 1001) before closing the call.
"""

from __future__ import annotations

import asyncio
import logging

from bridge.config import Settings
from bridge.contract import CallLimitExceeded, CallOptions, CallSink
from bridge.metrics import Metrics
from bridge.pipeline.call import Call
from bridge.pipeline.pools import BackendSet, Pools
from sip.tasks import TaskSet

__all__ = ["CallManager", "UnknownTtsEngine"]

log = logging.getLogger("bridge.calls")


class UnknownTtsEngine(ValueError):
    """The caller asked for a TTS engine this bridge does not have."""


class CallManager:
    """Opens, tracks and shuts down calls for every door."""

    def __init__(self, settings: Settings, backends: BackendSet, metrics: Metrics) -> None:
        self.settings = settings
        self.backends = backends
        self.metrics = metrics
        self.pools = Pools.from_settings(settings, backends)
        self._calls: dict[str, Call] = {}
        self._accepting = True

    @property
    def active(self) -> int:
        """Number of calls open now."""
        return len(self._calls)

    @property
    def accepting(self) -> bool:
        """False once shutdown has begun."""
        return self._accepting

    @property
    def tts_engines(self) -> frozenset[str]:
        """The TTS engine names callers may choose."""
        return frozenset(self.backends.tts)

    def get(self, call_id: str) -> Call | None:
        """The open call with this id, if any."""
        return self._calls.get(call_id)

    async def open(self, options: CallOptions, sink: CallSink) -> Call:
        """Start a call; raise `CallLimitExceeded` when full or shutting down, and
        `UnknownTtsEngine` when a conversation asks for an engine that is not here."""
        if not self._accepting or len(self._calls) >= self.settings.max_concurrent_calls:
            self.metrics.calls_rejected.labels(door=options.door).inc()
            why = "shutting down" if not self._accepting else "MAX_CONCURRENT_CALLS reached"
            raise CallLimitExceeded(f"{why} ({len(self._calls)} active)")
        try:
            call = Call(
                options,
                sink,
                self.settings,
                self.backends,
                self.metrics,
                self.pools,
                on_closed=self._forget,
            )
        except ValueError as exc:
            raise UnknownTtsEngine(str(exc)) from None
        self._calls[call.call_id] = call
        self.metrics.calls_active.inc()
        self.metrics.calls_total.inc()
        call.start()
        return call

    def _forget(self, call: Call) -> None:
        if self._calls.pop(call.call_id, None) is not None:
            self.metrics.calls_active.dec()

    async def shutdown(self, grace_s: float) -> None:
        """Stop admitting calls; hang up and close every call within about `grace_s`."""
        self._accepting = False
        calls = list(self._calls.values())
        if not calls:
            return
        log.info("shutdown: ending %d call(s)", len(calls))

        async def end(call: Call) -> None:
            try:
                await asyncio.wait_for(call.sink.hangup("shutdown"), grace_s)
            except Exception as exc:
                call.log.warning("hangup on shutdown failed: %r", exc)
            finally:
                await call.close("shutdown")

        endings = TaskSet("shutdown", log)
        for call in calls:
            endings.spawn(end(call), call.call_id)
        if not await endings.wait(grace_s):
            await endings.cancel_all()
        for call in list(self._calls.values()):
            await call.close("shutdown")
