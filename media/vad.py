"""Voice activity detection: an utterance segmenter driven by a per-frame speech decision.

Spec §5 semantics. Each frame is classified speech or silence (`EnergyVAD`: RMS
dBFS against `threshold_db`; `SileroVAD`: the Silero network's probability).
A run of speech becomes an utterance once it holds `min_speech_ms` of speech
frames (shorter transients are dropped); `SpeechStarted` is emitted at that
moment carrying the onset time. The utterance ends after `silence_timeout_ms`
of trailing silence with `UtteranceEnded`, whose PCM starts `pre_speech_ms`
before the onset and runs `pre_speech_ms` past the last speech frame.

With `pause_ms` > 0 (and below `silence_timeout_ms`), a confirmed utterance whose
trailing silence reaches `pause_ms` also emits `SpeechPaused` once per pause,
carrying the utterance so far, so a caller can start recognition early.

All times are stream times in seconds: samples fed since construction or
`reset()`, divided by the sample rate.
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "VAD",
    "EnergyVAD",
    "SileroVAD",
    "SpeechPaused",
    "SpeechStarted",
    "UtteranceEnded",
    "VadEvent",
    "rms_dbfs",
    "silero_model_path",
]

_FLOOR_DB = -120.0


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech confirmed (after `min_speech_ms`); `time_s` is the onset of its first frame."""

    time_s: float


@dataclass(frozen=True, slots=True, eq=False)
class UtteranceEnded:
    """A finished utterance: PCM with pre-roll, and the stream times of its speech.

    `speech_start_s` is the start of the first speech frame, `speech_end_s` the end
    of the last one; `audio_start_s` is the stream time of `pcm[0]`.
    """

    pcm: npt.NDArray[np.int16]
    speech_start_s: float
    speech_end_s: float
    audio_start_s: float = 0.0


@dataclass(frozen=True, slots=True, eq=False)
class SpeechPaused:
    """A confirmed utterance has had `pause_ms` of trailing silence (it may still go on).

    `time_s` is the stream time the pause was detected; `pcm` is the utterance so far,
    cut as `UtteranceEnded` would cut it now: from `audio_start_s`, through the last
    speech frame (ending at `speech_end_s`), plus up to `pre_speech_ms` of the silence
    after it. If the caller stays quiet, the `UtteranceEnded` that follows has the same
    `audio_start_s`, `speech_end_s` and samples up to `speech_end_s`.
    """

    time_s: float
    pcm: npt.NDArray[np.int16]
    speech_end_s: float
    audio_start_s: float


VadEvent = SpeechStarted | SpeechPaused | UtteranceEnded


class VAD(Protocol):
    """A streaming voice activity detector."""

    def process(self, frame: npt.NDArray[np.int16]) -> list[VadEvent]:
        """Feed audio of any length; return the events it completed."""
        ...

    def reset(self) -> None:
        """Forget all state, including the stream clock."""
        ...


def rms_dbfs(frame: npt.NDArray[np.int16]) -> float:
    """RMS level of int16 PCM in dB relative to full scale (floor -120 dB)."""
    if frame.size == 0:
        return _FLOOR_DB
    x = frame.astype(np.float32)
    mean_sq = float(np.dot(x, x)) / frame.size
    if mean_sq <= 0.0:
        return _FLOOR_DB
    return max(_FLOOR_DB, 10.0 * math.log10(mean_sq / (32768.0 * 32768.0)))


class _Segmenter:
    """The utterance state machine over fixed-size frames; subclasses decide speech."""

    def __init__(
        self,
        sample_rate: int,
        frame_samples: int,
        min_speech_ms: int,
        silence_timeout_ms: int,
        pre_speech_ms: int,
        max_utterance_ms: int,
        pause_ms: int = 0,
    ) -> None:
        if sample_rate <= 0 or frame_samples <= 0:
            raise ValueError("sample_rate and frame size must be positive")
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples
        frame_ms = 1000.0 * frame_samples / sample_rate
        self._frame_ms = frame_ms
        self._min_speech_frames = max(1, math.ceil(min_speech_ms / frame_ms - 1e-9))
        self._silence_frames = max(1, math.ceil(silence_timeout_ms / frame_ms - 1e-9))
        self._pre_frames = max(0, math.ceil(pre_speech_ms / frame_ms - 1e-9))
        self._max_frames = max(1, math.ceil(max_utterance_ms / frame_ms))
        pause_frames = max(0, math.ceil(pause_ms / frame_ms - 1e-9))
        self._pause_frames = pause_frames if pause_frames < self._silence_frames else 0
        self._pre: deque[npt.NDArray[np.int16]] = deque(maxlen=max(1, self._pre_frames))
        self._pending = np.zeros(0, np.int16)
        self._frames: list[npt.NDArray[np.int16]] = []
        self._frame_index = 0
        self._clear_utterance()

    @property
    def min_speech_ms(self) -> float:
        """Speech needed before an utterance is confirmed; may be changed at any time
        (e.g. raised while the bot speaks, so echo does not barge in)."""
        return self._min_speech_frames * self._frame_ms

    @min_speech_ms.setter
    def min_speech_ms(self, value: float) -> None:
        self._min_speech_frames = max(1, math.ceil(value / self._frame_ms - 1e-9))

    def _clear_utterance(self) -> None:
        self._frames = []
        self._in_utterance = False  # candidate or confirmed
        self._confirmed = False
        self._onset = 0  # frame index of the first speech frame
        self._audio_start = 0  # frame index of self._frames[0]
        self._last_speech = 0  # frame index of the last speech frame
        self._speech_count = 0
        self._silence_run = 0

    def reset(self) -> None:
        """Forget all state, including the stream clock."""
        self._pre.clear()
        self._pending = np.zeros(0, np.int16)
        self._frame_index = 0
        self._clear_utterance()
        self._reset_model()

    def _reset_model(self) -> None:
        """Subclass hook: drop classifier state."""

    def _is_speech(self, frame: npt.NDArray[np.int16]) -> bool:
        raise NotImplementedError

    def process(self, frame: npt.NDArray[np.int16]) -> list[VadEvent]:
        """Feed audio of any length; return the events it completed."""
        pcm = np.asarray(frame, dtype=np.int16).reshape(-1)
        n = self.frame_samples
        events: list[VadEvent] = []
        if self._pending.size == 0 and pcm.size == n:
            self._step(pcm.copy(), events)
            return events
        buf = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        whole = buf.size - buf.size % n
        for start in range(0, whole, n):
            self._step(buf[start : start + n].copy(), events)
        self._pending = buf[whole:].copy()
        return events

    def _time(self, frame_index: int) -> float:
        return frame_index * self.frame_samples / self.sample_rate

    def _step(self, frame: npt.NDArray[np.int16], events: list[VadEvent]) -> None:
        index = self._frame_index
        self._frame_index += 1
        speech = self._is_speech(frame)
        if not self._in_utterance:
            if not speech:
                if self._pre_frames:
                    self._pre.append(frame)
                return
            self._in_utterance = True
            self._onset = index
            self._frames = list(self._pre) if self._pre_frames else []
            self._audio_start = index - len(self._frames)
            self._pre.clear()
        self._frames.append(frame)
        if speech:
            self._speech_count += 1
            self._last_speech = index
            self._silence_run = 0
        else:
            self._silence_run += 1
        if not self._confirmed and self._speech_count >= self._min_speech_frames:
            self._confirmed = True
            events.append(SpeechStarted(self._time(self._onset)))
        if self._silence_run >= self._silence_frames:
            self._finish(events)
        elif self._confirmed and len(self._frames) >= self._max_frames:
            self._finish(events)
        elif self._confirmed and self._pause_frames and self._silence_run == self._pause_frames:
            events.append(self._paused())

    def _kept_frames(self) -> list[npt.NDArray[np.int16]]:
        """The utterance's frames through the last speech frame plus the trailing pre-roll."""
        keep_until = min(self._last_speech + 1 + self._pre_frames, self._frame_index)
        return self._frames[: keep_until - self._audio_start]

    def _paused(self) -> SpeechPaused:
        return SpeechPaused(
            time_s=self._time(self._frame_index),
            pcm=np.concatenate(self._kept_frames()),
            speech_end_s=self._time(self._last_speech + 1),
            audio_start_s=self._time(self._audio_start),
        )

    def _finish(self, events: list[VadEvent]) -> None:
        """Close the utterance (or drop a transient) and go back to idle."""
        end_frame = self._last_speech + 1  # exclusive
        if self._confirmed:
            frames = self._kept_frames()
            events.append(
                UtteranceEnded(
                    pcm=np.concatenate(frames),
                    speech_start_s=self._time(self._onset),
                    speech_end_s=self._time(end_frame),
                    audio_start_s=self._time(self._audio_start),
                )
            )
        tail = self._frames[-self._pre_frames :] if self._pre_frames else []
        self._clear_utterance()
        self._pre.extend(tail)


class EnergyVAD(_Segmenter):
    """Energy VAD of spec §5: a frame is speech when its RMS is at least `threshold_db` dBFS.

    `threshold_db` may be changed at any time (e.g. raised while the bot speaks).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        threshold_db: float = -30.0,
        min_speech_ms: int = 250,
        silence_timeout_ms: int = 300,
        pre_speech_ms: int = 200,
        frame_ms: int = 20,
        max_utterance_ms: int = 30000,
        pause_ms: int = 0,
    ) -> None:
        self.threshold_db = threshold_db
        frame_samples = sample_rate * frame_ms // 1000
        super().__init__(
            sample_rate,
            frame_samples,
            min_speech_ms,
            silence_timeout_ms,
            pre_speech_ms,
            max_utterance_ms,
            pause_ms,
        )
        self._n = frame_samples

    def _is_speech(self, frame: npt.NDArray[np.int16]) -> bool:
        x = frame.astype(np.float32)
        mean_sq = float(np.dot(x, x)) / self._n
        return mean_sq >= (32768.0 * 32768.0) * 10.0 ** (self.threshold_db / 10.0)


def silero_model_path() -> str:
    """Path of the Silero VAD ONNX model bundled with faster-whisper."""
    import faster_whisper

    assets = os.path.join(os.path.dirname(faster_whisper.__file__), "assets")
    names = sorted(
        f for f in os.listdir(assets) if f.startswith("silero_vad") and f.endswith(".onnx")
    )
    if not names:
        raise FileNotFoundError(f"no silero_vad*.onnx in {assets}")
    return os.path.join(assets, names[-1])


class SileroVAD(_Segmenter):
    """Silero VAD (the ONNX model shipped in faster-whisper) behind the same segmenter.

    Works on 512-sample (32 ms) windows at 16 kHz; a window is speech when the
    network's probability is at least `threshold` (changeable at run time).
    """

    WINDOW = 512
    CONTEXT = 64

    def __init__(
        self,
        sample_rate: int = 16000,
        threshold: float = 0.5,
        min_speech_ms: int = 250,
        silence_timeout_ms: int = 300,
        pre_speech_ms: int = 200,
        max_utterance_ms: int = 30000,
        model_path: str | None = None,
        pause_ms: int = 0,
    ) -> None:
        if sample_rate != 16000:
            raise ValueError(f"SileroVAD needs 16000 Hz audio, got {sample_rate}")
        import onnxruntime

        self.threshold = threshold
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self._session: Any = onnxruntime.InferenceSession(
            model_path or silero_model_path(), providers=["CPUExecutionProvider"], sess_options=opts
        )
        self._input = np.zeros((1, self.CONTEXT + self.WINDOW), np.float32)
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self.last_probability = 0.0
        super().__init__(
            sample_rate,
            self.WINDOW,
            min_speech_ms,
            silence_timeout_ms,
            pre_speech_ms,
            max_utterance_ms,
            pause_ms,
        )

    def _reset_model(self) -> None:
        self._input[:] = 0.0
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)

    def _is_speech(self, frame: npt.NDArray[np.int16]) -> bool:
        inp = self._input
        inp[0, : self.CONTEXT] = inp[0, -self.CONTEXT :]
        inp[0, self.CONTEXT :] = frame * (1.0 / 32768.0)
        prob, self._h, self._c = self._session.run(None, {"input": inp, "h": self._h, "c": self._c})
        self.last_probability = float(np.asarray(prob).reshape(-1)[0])
        return self.last_probability >= self.threshold
