"""Where a call's events go: the door's sink, never raising, and stage errors reported once."""

from __future__ import annotations

import logging
from typing import Any

from bridge.backends.base import Audio, BackendError
from bridge.contract import CallSink, Event
from bridge.metrics import Metrics

__all__ = ["PLAIN_WORDS", "CallLog", "Output"]

PLAIN_WORDS: dict[str, str] = {
    "asr": "speech recognition is unavailable",
    "llm": "the language model is unavailable",
    "tts": "speech synthesis ({engine}) is unavailable",
    "output": "the reply could not be delivered",
}
"""A failed stage as the caller's `error` event says it (`{engine}`: the call's TTS engine,
which the caller chose); the details go to the log only."""


class CallLog(logging.LoggerAdapter[logging.Logger]):
    """A logger that prefixes each line with `call=<id>`."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"call={self.extra['call_id'] if self.extra else '?'} {msg}", kwargs


class Output:
    """A call's event channel to its door."""

    def __init__(
        self, sink: CallSink, metrics: Metrics, log: CallLog, tts_engine: str = "the voice"
    ) -> None:
        self.sink = sink
        self._tts_engine = tts_engine
        self._undelivered = 0
        self._metrics = metrics
        self._log = log

    async def send(self, event: Event) -> None:
        """Deliver an event; a door that went away must not kill the pipeline. The first
        failure of a call is logged as a warning, later ones at debug level (no log flood)."""
        try:
            await self.sink.send_event(event)
        except Exception as exc:
            self._undelivered += 1
            level = logging.WARNING if self._undelivered == 1 else logging.DEBUG
            self._log.log(level, "event %s not delivered: %r", event.get("type"), exc)

    async def play(self, audio: Audio) -> bool:
        """Hand bot audio to the sink; a sink that fails is a stage `output` error (False)."""
        try:
            await self.sink.send_audio(audio)
        except Exception as exc:
            await self.stage_error("output", exc)
            return False
        return True

    async def stage_error(self, stage: str, exc: BaseException) -> None:
        """Report a failed stage: error event in plain words (`PLAIN_WORDS`), error counter,
        and a log line with the details (URL, status, body); the call goes on."""
        if isinstance(exc, BackendError):
            error_type: str = exc.kind
            self._log.warning("%s failed: %s", stage, exc)
        else:
            error_type = "internal"
            self._log.error("%s failed unexpectedly: %r", stage, exc, exc_info=exc)
        self._metrics.error(stage, error_type)
        message = PLAIN_WORDS.get(stage, "the call hit an internal error").format(
            engine=self._tts_engine
        )
        await self.send({"type": "error", "stage": stage, "message": message})
