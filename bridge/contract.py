"""The contract between the doors (SIP, WebRTC, WebSocket) and the call pipeline.

A door turns its transport into a `CallSink` (where events and bot audio go) and asks the
`CallManager` (bridge/calls.py) to open a call; it gets back a `CallHandle` to feed caller
audio into. Nothing here knows about a transport.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from bridge.backends.base import Audio

Mode = Literal["conversation", "transcribe_only"]
DoorName = Literal["sip", "webrtc", "websocket"]
Event = dict[str, Any]

CALLER_RATE = 16000
"""Caller audio enters the pipeline as mono int16 PCM at this rate."""


class CallLimitExceeded(Exception):
    """MAX_CONCURRENT_CALLS calls are already active (SIP answers 503, WebSocket closes 1013)."""


@dataclass(frozen=True)
class CallOptions:
    """What a caller chose for its call."""

    door: DoorName
    mode: Mode = "conversation"
    tts_engine: Literal["piper", "coqui"] = "piper"
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])


class CallSink(Protocol):
    """Where a call's output goes; implemented by each door."""

    async def send_event(self, event: Event) -> None:
        """Deliver one JSON event (spec §4.1 shapes: transcript, llm_token, llm_done,
        tts_ready, metrics, error)."""
        ...

    async def send_audio(self, audio: Audio) -> None:
        """Queue one sentence of bot speech (mono PCM at the TTS rate). The door converts,
        encodes and paces it; this returns once queued, without waiting for playout."""
        ...

    def clear_audio(self) -> None:
        """Barge-in: drop bot audio that is queued but not yet played out."""
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
