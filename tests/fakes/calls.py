"""One fake call for door tests: a `CallOpener` that admits calls and records what the door
does to each (caller audio fed, digits, close) without running a pipeline."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bridge.contract import CallLimitExceeded, CallOptions


@dataclass
class RecordedCall:
    """What the door did to one call's pipeline handle."""

    options: CallOptions
    sink: Any
    call_id: str = "rec"
    chunks: list[npt.NDArray[np.int16]] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""

    def feed(self, pcm16k: npt.NDArray[np.int16]) -> None:
        assert pcm16k.dtype == np.int16 and pcm16k.ndim == 1
        self.chunks.append(pcm16k)

    def dtmf(self, digit: str) -> None:
        self.digits.append(digit)

    async def close(self, reason: str = "hangup") -> None:
        if not self.closed.is_set():
            self.reason = reason
            self.closed.set()

    @property
    def samples(self) -> int:
        return sum(len(c) for c in self.chunks)


class RecordingCalls:
    """A `CallOpener` that admits `limit` calls and records them."""

    def __init__(self, limit: int = 10, refuse: Exception | None = None) -> None:
        self.limit = limit
        self.refuse = refuse
        self.calls: list[RecordedCall] = []

    async def open(self, options: CallOptions, sink: Any) -> RecordedCall:
        if self.refuse is not None:
            raise self.refuse
        if sum(not c.closed.is_set() for c in self.calls) >= self.limit:
            raise CallLimitExceeded("full")
        call = RecordedCall(options, sink, call_id=options.call_id)
        self.calls.append(call)
        return call
