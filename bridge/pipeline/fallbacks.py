"""Spoken fallbacks: what the caller hears when a stage fails or runs past its budget.

`FALLBACK_REPEAT_TEXT` follows a failed or late transcription ("say it again"),
`FALLBACK_TROUBLE_TEXT` a failed or late LLM or TTS. Both are synthesized once, at start-up
(`Fallbacks.prepare`, run by `Bridge.start`), by every TTS engine that answers then, so they
play even while TTS is the backend that is down. A call uses its own engine's clip, else
another engine's, else, when no engine worked at start-up, a short tone of last resort
(two falling beeps for trouble, two rising ones for "say it again"), made here without any
TTS, so the caller never sits in dead air.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Literal

import numpy as np

from bridge.backends.base import TTS, Audio
from bridge.config import Settings

__all__ = ["FallbackKind", "Fallbacks", "last_resort_tone"]

log = logging.getLogger("bridge.fallbacks")

FallbackKind = Literal["repeat", "trouble"]
"""`repeat` after an ASR failure, `trouble` after an LLM or TTS failure."""

_TONE_RATE = 16000


def last_resort_tone(kind: FallbackKind) -> Audio:
    """Two soft 180 ms beeps (rising for `repeat`, falling for `trouble`), 16 kHz."""
    freqs = (440.0, 660.0) if kind == "repeat" else (660.0, 440.0)
    t = np.arange(int(0.18 * _TONE_RATE)) / _TONE_RATE
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks
    gap = np.zeros(int(0.08 * _TONE_RATE))
    beeps = [0.2 * np.sin(2 * np.pi * f * t) * ramp for f in freqs]
    pcm = np.concatenate([beeps[0], gap, beeps[1]]) * 32767.0
    return Audio(pcm.astype(np.int16), _TONE_RATE)


class Fallbacks:
    """The fallback clips of one bridge, by kind and TTS engine (see the module docstring)."""

    def __init__(self, repeat_text: str, trouble_text: str) -> None:
        self.texts: dict[FallbackKind, str] = {"repeat": repeat_text, "trouble": trouble_text}
        self._clips: dict[str, dict[FallbackKind, Audio]] = {}
        self._tones: dict[FallbackKind, Audio] = {
            "repeat": last_resort_tone("repeat"),
            "trouble": last_resort_tone("trouble"),
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> Fallbacks:
        """Unprepared fallbacks with FALLBACK_REPEAT_TEXT and FALLBACK_TROUBLE_TEXT."""
        return cls(settings.fallback_repeat_text, settings.fallback_trouble_text)

    async def prepare(self, engines: Mapping[str, TTS], timeout_s: float) -> None:
        """Synthesize both phrases with every engine, each within `timeout_s`, all at once;
        an engine that fails is logged and left out (its calls use another's clip)."""

        async def one(engine: str, tts: TTS, kind: FallbackKind) -> None:
            try:
                audio = await asyncio.wait_for(tts.synthesize(self.texts[kind]), timeout_s)
            except Exception as exc:
                log.warning("fallback %r not synthesized by %s: %s", kind, engine, exc)
                return
            if audio.pcm.size:
                self._clips.setdefault(engine, {})[kind] = audio

        await asyncio.gather(
            *(one(engine, tts, kind) for engine, tts in engines.items() for kind in self.texts)
        )
        for engine in engines:
            missing = [k for k in self.texts if k not in self._clips.get(engine, {})]
            if missing:
                log.warning("TTS engine %s has no fallback %s: using another", engine, missing)

    def audio(self, kind: FallbackKind, engine: str) -> Audio:
        """The clip to play: `engine`'s, else any engine's, else the tone of last resort."""
        own = self._clips.get(engine, {}).get(kind)
        if own is not None:
            return own
        for clips in self._clips.values():
            if kind in clips:
                return clips[kind]
        return self._tones[kind]
