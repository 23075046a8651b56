"""Where a call's events go: the door's sink, never raising, and stage errors reported once."""

from __future__ import annotations

import logging
from typing import Any

from bridge.backends.base import BackendError
from bridge.contract import CallSink, Event
from bridge.metrics import Metrics

__all__ = ["CallLog", "Output"]


class CallLog(logging.LoggerAdapter[logging.Logger]):
    """A logger that prefixes each line with `call=<id>`."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"call={self.extra['call_id'] if self.extra else '?'} {msg}", kwargs


class Output:
    """A call's event channel to its door."""

    def __init__(self, sink: CallSink, metrics: Metrics, log: CallLog) -> None:
        self.sink = sink
        self._metrics = metrics
        self._log = log

    async def send(self, event: Event) -> None:
        """Deliver an event; a door that went away must not kill the pipeline."""
        try:
            await self.sink.send_event(event)
        except Exception as exc:
            self._log.debug("event %s not delivered: %r", event.get("type"), exc)

    async def stage_error(self, stage: str, exc: BaseException) -> None:
        """Report a failed stage: error event, error counter, log line; the call goes on."""
        if isinstance(exc, BackendError):
            error_type: str = exc.kind
            self._log.warning("%s failed: %s", stage, exc)
        else:
            error_type = "internal"
            self._log.error("%s failed unexpectedly", stage, exc_info=exc)
        self._metrics.error(stage, error_type)
        await self.send({"type": "error", "stage": stage, "message": str(exc) or error_type})
