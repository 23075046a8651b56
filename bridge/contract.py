"""The contract between the doors (SIP, WebRTC, WebSocket) and the call pipeline.

A door turns its transport into a `CallSink` (where events and bot audio go), reads the
caller's choices with `parse_call_options()` and asks a `CallOpener` (the `CallManager`) to
open a call; it gets back a `CallHandle` to feed caller audio into. The events a call sends
are typed here, one `TypedDict` per spec §4.1 event. Nothing here knows about a transport.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict, TypeVar, get_args

import numpy as np
import numpy.typing as npt

from bridge.backends.base import Audio
from bridge.config import TTS_ENGINES, TtsEngine

Mode = Literal["conversation", "transcribe_only"]
DoorName = Literal["sip", "webrtc", "websocket"]

MODES: tuple[Mode, ...] = get_args(Mode)
"""What a caller may ask for as `mode`, the default first."""

CALLER_RATE = 16000
"""Caller audio enters the pipeline as mono int16 PCM at this rate."""


# --- events (spec §4.1, plus dtmf and hangup) ------------------------------------------


class TranscriptEvent(TypedDict):
    """What the caller said, and how long ASR took."""

    type: Literal["transcript"]
    text: str
    latency_ms: int


class LlmTokenEvent(TypedDict):
    """One piece of the bot's reply as the LLM streams it."""

    type: Literal["llm_token"]
    token: str


class LlmDoneEvent(TypedDict):
    """The whole reply; `latency_ms` is None when the LLM produced nothing."""

    type: Literal["llm_done"]
    text: str
    latency_ms: int | None


class TtsReadyEvent(TypedDict):
    """One sentence of bot audio is ready (its WAV follows on the WebSocket door)."""

    type: Literal["tts_ready"]
    latency_ms: int


class MetricsEvent(TypedDict):
    """A turn's timings; a stage that did not run (transcribe-only, barge-in) is None."""

    type: Literal["metrics"]
    asr_ms: int
    llm_ms: int | None
    tts_ms: int | None
    total_ms: int | None
    llm_first_token_ms: int | None
    interrupted: bool


class ErrorEvent(TypedDict):
    """A failure the caller should know about: `stage` is asr, llm, tts, protocol, capacity..."""

    type: Literal["error"]
    stage: str
    message: str


class DtmfEvent(TypedDict):
    """A digit the caller pressed."""

    type: Literal["dtmf"]
    digit: str


class HangupEvent(TypedDict):
    """The bridge ends the call (WebRTC data channel only, before it closes)."""

    type: Literal["hangup"]
    reason: str


Event = (
    TranscriptEvent
    | LlmTokenEvent
    | LlmDoneEvent
    | TtsReadyEvent
    | MetricsEvent
    | ErrorEvent
    | DtmfEvent
    | HangupEvent
)
"""Every event a call or a door sends to the caller."""


# --- call options ------------------------------------------------------------------------


class CallLimitExceeded(Exception):
    """MAX_CONCURRENT_CALLS calls are already active (SIP answers 503, WebSocket closes 1013)."""


class InvalidCallOptions(ValueError):
    """A caller's `mode` or `tts_engine` is not one the bridge offers; the message says
    which values are."""


@dataclass(frozen=True)
class CallOptions:
    """What a caller chose for its call."""

    door: DoorName
    mode: Mode = "conversation"
    tts_engine: TtsEngine = "piper"
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])


_Choice = TypeVar("_Choice", bound=str)


def _choose(
    mapping: Mapping[str, object], key: str, allowed: Sequence[_Choice], default: object
) -> _Choice:
    """`mapping[key]` (absent or null: `default`) as one of `allowed`, else `InvalidCallOptions`."""
    value = mapping.get(key)
    if value is None:
        value = default
    for choice in allowed:
        if value == choice:
            return choice
    names = " or ".join(repr(choice) for choice in allowed) or "nothing (none available)"
    raise InvalidCallOptions(f"{key!r} must be {names}")


def parse_call_options(
    mapping: Mapping[str, object],
    engines: Collection[str],
    *,
    door: DoorName,
    default_engine: str,
    call_id: str | None = None,
) -> CallOptions:
    """The `mode` and `tts_engine` a caller sent (other keys are the door's business).

    A missing or null value takes the default (`conversation`, `default_engine`);
    `tts_engine` must be one of `engines`. `call_id` is the door's own id for the call
    (SIP's Call-ID), else a new one. Raises `InvalidCallOptions`.
    """
    mode = _choose(mapping, "mode", MODES, "conversation")
    offered = [engine for engine in TTS_ENGINES if engine in engines]
    engine = _choose(mapping, "tts_engine", offered, default_engine)
    if call_id is None:
        return CallOptions(door=door, mode=mode, tts_engine=engine)
    return CallOptions(door=door, mode=mode, tts_engine=engine, call_id=call_id)


# --- the door's side and the pipeline's side --------------------------------------------


class CallSink(Protocol):
    """Where a call's output goes; implemented by each door."""

    async def send_event(self, event: Event) -> None:
        """Deliver one JSON event."""
        ...

    async def send_audio(self, audio: Audio) -> None:
        """Queue one sentence of bot speech (mono PCM at the TTS rate). The door converts,
        encodes and paces it; this returns once queued, without waiting for playout."""
        ...

    def clear_audio(self) -> None:
        """Barge-in: drop bot audio that is queued but not yet played out."""
        ...

    def playing_until(self) -> float:
        """The `time.monotonic()` instant the bot audio handed over so far ends playing;
        `<= now` means the bot is silent."""
        ...

    async def hangup(self, reason: str) -> None:
        """The bridge ends the call: SIP BYE, WebSocket close 1001, WebRTC close."""
        ...


class CallHandle(Protocol):
    """What a door holds for an open call."""

    call_id: str

    def feed(self, pcm16k: npt.NDArray[np.int16]) -> None:
        """Hand over caller audio (mono int16 at 16 kHz, any length; 20 ms is usual).
        Never blocks and never raises for bad audio."""
        ...

    def dtmf(self, digit: str) -> None:
        """An RFC 4733 / SIP INFO digit from the caller."""
        ...

    async def close(self, reason: str = "hangup") -> None:
        """End the call and cancel every task it owns. Idempotent."""
        ...


class CallOpener(Protocol):
    """What every door needs from `bridge.pipeline.CallManager`: a way to open a call."""

    async def open(self, options: CallOptions, sink: CallSink) -> CallHandle:
        """Start a call; raise `CallLimitExceeded` when full or shutting down, and a
        `ValueError` when this bridge cannot serve the options (e.g. an engine it lacks)."""
        ...
