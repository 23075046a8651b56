"""The call manager: admits calls up to MAX_CONCURRENT_CALLS, owns them, drains and ends them.

Every door opens calls through one `CallManager`; it enforces the call limit, refuses a call
id that is already open, shares the backend pools between calls, keeps
`pipeline_calls_active` / `pipeline_calls_total` (admitted calls only) and
`pipeline_calls_rejected_total{door,reason}`.

A deploy is `drain()` (stop admitting: SIP answers 503 + Retry-After, WebSocket 1013,
WebRTC 503, `/readyz` 503), `wait_idle(DRAIN_TIMEOUT_S)` (callers finish their calls), then
`shutdown()`, which asks each door to hang up what is left (SIP BYE, WebSocket close 1001)
before closing the call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bridge.config import Settings
from bridge.contract import CallLimitExceeded, CallOptions, CallSink
from bridge.metrics import Metrics
from bridge.pipeline.call import Call
from bridge.pipeline.fallbacks import Fallbacks
from bridge.pipeline.pools import BackendSet, Pools
from sip.tasks import TaskSet

__all__ = ["CallManager", "DuplicateCallId", "RejectReason", "UnknownTtsEngine", "refusal"]

log = logging.getLogger("bridge.calls")

RejectReason = Literal["full", "draining", "duplicate", "bad_request", "no_codec", "no_port"]
"""The `reason` label of `pipeline_calls_rejected_total`."""

_REFUSED = "refused: "


def refusal(reason: RejectReason) -> str:
    """The close reason a door gives a call it opened and then refused (488, 503 for want
    of an RTP port, a bad WebRTC offer): the call counts as rejected, never as admitted."""
    return _REFUSED + reason


class UnknownTtsEngine(ValueError):
    """The caller asked for a TTS engine this bridge does not have."""


class DuplicateCallId(ValueError):
    """A call with this id is already open; the second one is refused, never merged."""


class _ManagedCall(Call):
    """A call that counts as admitted (`pipeline_calls_total`) once its caller's audio
    flows or it ends other than by a door's `refusal()`."""

    def __init__(self, manager: CallManager, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._manager = manager
        self._admitted = False

    def _admit(self) -> None:
        self._admitted = True
        self._manager.metrics.calls_total.inc()

    def feed(self, pcm16k: npt.NDArray[np.int16]) -> None:
        """Caller audio (`Call.feed`); the first frame admits the call."""
        if not self._admitted:
            self._admit()
        super().feed(pcm16k)

    async def close(self, reason: str = "hangup") -> None:
        """`Call.close`; a door's `refusal()` counts the call as rejected."""
        if not self.closed:
            if reason.startswith(_REFUSED):
                self._manager.metrics.calls_rejected.labels(
                    door=self.options.door, reason=reason[len(_REFUSED) :]
                ).inc()
            elif not self._admitted:
                self._admit()
        await super().close(reason)


class CallManager:
    """Opens, tracks, drains and shuts down calls for every door."""

    def __init__(
        self,
        settings: Settings,
        backends: BackendSet,
        metrics: Metrics,
        fallbacks: Fallbacks | None = None,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.metrics = metrics
        self.fallbacks = fallbacks if fallbacks is not None else Fallbacks.from_settings(settings)
        """The spoken fallback phrases every call plays (prepared by `Bridge.start`)."""
        self.pools = Pools.from_settings(settings, backends)
        self._calls: dict[str, Call] = {}
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active(self) -> int:
        """Number of calls open now."""
        return len(self._calls)

    @property
    def accepting(self) -> bool:
        """False once draining or shutdown has begun (doors refuse new calls)."""
        return self._accepting

    @property
    def tts_engines(self) -> frozenset[str]:
        """The TTS engine names callers may choose."""
        return frozenset(self.backends.tts)

    def get(self, call_id: str) -> Call | None:
        """The open call with this id, if any."""
        return self._calls.get(call_id)

    def reject(self, door: str, reason: RejectReason) -> None:
        """Count one call a door refused (`pipeline_calls_rejected_total{door,reason}`)."""
        self.metrics.calls_rejected.labels(door=door, reason=reason).inc()

    async def open(self, options: CallOptions, sink: CallSink) -> Call:
        """Start a call; raise `CallLimitExceeded` when full or draining, `DuplicateCallId`
        when a call with this id is open, and `UnknownTtsEngine` when a conversation asks
        for an engine that is not here. Only admitted calls count in `pipeline_calls_total`."""
        if not self._accepting:
            self.reject(options.door, "draining")
            raise CallLimitExceeded(f"draining, not admitting calls ({len(self._calls)} active)")
        if len(self._calls) >= self.settings.max_concurrent_calls:
            self.reject(options.door, "full")
            raise CallLimitExceeded(f"MAX_CONCURRENT_CALLS reached ({len(self._calls)} active)")
        if options.call_id in self._calls:
            self.reject(options.door, "duplicate")
            raise DuplicateCallId(f"call id {options.call_id!r} is already in a call")
        try:
            call = _ManagedCall(
                self,
                options,
                sink,
                self.settings,
                self.backends,
                self.metrics,
                self.pools,
                on_closed=self._forget,
                fallbacks=self.fallbacks,
            )
        except ValueError as exc:
            self.reject(options.door, "bad_request")
            raise UnknownTtsEngine(str(exc)) from None
        self._calls[call.call_id] = call
        self._idle.clear()
        self.metrics.calls_active.inc()
        call.start()
        return call

    def _forget(self, call: Call) -> None:
        # only this very call: a refused duplicate never replaced it, so never removes it
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]
            self.metrics.calls_active.dec()
            if not self._calls:
                self._idle.set()

    def drain(self) -> None:
        """Stop admitting calls; the calls in progress go on."""
        if self._accepting:
            self._accepting = False
            log.info("draining: no new calls, %d active", len(self._calls))

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is open, at most `timeout_s`; True when none is left."""
        if self._calls:
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, timeout_s))
            except TimeoutError:
                return False
        return True

    async def shutdown(self, grace_s: float) -> None:
        """Stop admitting calls; hang up and close every call within about `grace_s`."""
        self.drain()
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
