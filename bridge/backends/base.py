"""The three backend contracts (ASR, LLM, TTS), their value types and their one error class.

Every backend implementation, HTTP or embedded, satisfies one of these Protocols; the call
pipeline and the tests only ever see these names.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict

import numpy as np
import numpy.typing as npt

ErrorKind = Literal["timeout", "connect", "http", "malformed", "unavailable"]


class BackendError(Exception):
    """A backend call failed. One class for every backend; `kind` says how it failed, and
    `status` the HTTP status when the server answered one."""

    def __init__(
        self,
        backend: str,
        url: str,
        kind: ErrorKind,
        detail: str = "",
        *,
        status: int | None = None,
    ) -> None:
        self.backend = backend
        self.url = url
        self.kind: ErrorKind = kind
        self.detail = detail
        self.status = status
        super().__init__(f"{backend} at {url}: {kind}" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class Transcript:
    """What the recognizer heard."""

    text: str
    language: str | None = None


@dataclass(frozen=True)
class Audio:
    """Mono 16-bit PCM at `sample_rate`."""

    pcm: npt.NDArray[np.int16]
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / float(self.sample_rate)


class Message(TypedDict):
    """One chat turn as Ollama and OpenAI-compatible servers take it."""

    role: Literal["system", "user", "assistant"]
    content: str


class ASR(Protocol):
    """Speech to text for one whole utterance."""

    name: str

    async def transcribe(self, pcm16k: npt.NDArray[np.int16]) -> Transcript:
        """Transcribe mono 16 kHz PCM; raise `BackendError` on failure."""
        ...

    async def ready(self) -> bool:
        """True when the backend can serve a request now (for /readyz)."""
        ...

    async def aclose(self) -> None:
        """Release connections and executors."""
        ...


class LLM(Protocol):
    """A chat model that streams its reply as text pieces."""

    name: str

    def stream(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        """Yield reply tokens for the conversation; raise `BackendError` on failure."""
        ...

    async def ready(self) -> bool:
        """True when the backend can serve a request now (for /readyz)."""
        ...

    async def aclose(self) -> None:
        """Release connections and executors."""
        ...


class TTS(Protocol):
    """Text to speech for one sentence."""

    name: str

    async def synthesize(self, text: str) -> Audio:
        """Speak `text`; raise `BackendError` on failure."""
        ...

    async def ready(self) -> bool:
        """True when the backend can serve a request now (for /readyz)."""
        ...

    async def aclose(self) -> None:
        """Release connections and executors."""
        ...
