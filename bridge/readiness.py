"""The `/readyz` report: which backends answer now, and whether the bridge takes calls.

Built here once, for the app's route and anyone else who asks (a start-up check, a test).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["READY_TIMEOUT_S", "Probe", "readiness_report"]

READY_TIMEOUT_S = 3.0
"""A backend that has not answered `ready()` by then counts as not ready."""


class Probe(Protocol):
    """A backend as the report sees it."""

    async def ready(self) -> bool: ...


async def _check(backend: Probe, timeout_s: float) -> bool:
    try:
        return bool(await asyncio.wait_for(backend.ready(), timeout_s))
    except Exception:
        return False


async def readiness_report(
    asr: Probe,
    llm: Probe,
    tts: Mapping[str, Probe],
    *,
    default_tts_engine: str,
    accepting: bool,
    timeout_s: float = READY_TIMEOUT_S,
) -> tuple[bool, dict[str, Any]]:
    """(ready, body): ready when the bridge is `accepting` calls and ASR, LLM and the
    default TTS engine answer; other TTS engines are reported but optional (a laptop has no
    Coqui server). A backend whose circuit breakers are all open is not ready. `body` is
    `{"ready", "backends": {key: {backend, ready, required, breaker_open}}}`."""
    entries: dict[str, Probe] = {"asr": asr, "llm": llm}
    for engine, backend in tts.items():
        entries[f"tts_{engine}"] = backend
    results = await asyncio.gather(*(_check(b, timeout_s) for b in entries.values()))
    required = {"asr", "llm", f"tts_{default_tts_engine}"}
    report = {
        key: {
            "backend": getattr(backend, "name", key),
            "ready": ok,
            "required": key in required,
            "breaker_open": not getattr(backend, "up", True),
        }
        for (key, backend), ok in zip(entries.items(), results, strict=True)
    }
    ready = accepting and all(v["ready"] for k, v in report.items() if k in required)
    return ready, {"ready": ready, "backends": report}
