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

Barge-in: while the bot speaks the caller's line carries its echo, so a VAD can be told
`set_barge_in(True)` and then demands more before speech may interrupt the bot, with the
levels it was given at construction: `EnergyVAD` raises its threshold to
`barge_in_threshold_db` and its minimum speech to `barge_in_min_speech_ms`; `SileroVAD`
(which has no dB threshold) marks a `SpeechStarted` whose last `barge_in_min_speech_ms` of
audio is below `barge_in_threshold_db` as `interrupts=False`.

All times are stream times in seconds: samples fed since construction or
`reset()`, divided by the sample rate.
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, Unpack

import numpy as np
import numpy.typing as npt

__all__ = [
    "VAD",
    "EnergyVAD",
    "Segmentation",
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
    """Speech confirmed (after `min_speech_ms`); `time_s` is the onset of its first frame.

    `interrupts` is False when barge-in is active and this speech is too quiet to interrupt
    the bot (it is still an utterance)."""

    time_s: float
    interrupts: bool = True


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

    def set_barge_in(self, active: bool) -> None:
        """Tell the VAD whether the bot is speaking now (so caller speech would barge in)."""
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


class Segmentation(TypedDict, total=False):
    """The segmenter's parameters, shared by every VAD. Defaults: `min_speech_ms` 250,
    `silence_timeout_ms` 300, `pre_speech_ms` 200, `max_utterance_ms` 30000, `pause_ms` 0
    (no `SpeechPaused`), no barge-in levels."""

    min_speech_ms: int
    silence_timeout_ms: int
    pre_speech_ms: int
    max_utterance_ms: int
    pause_ms: int
    barge_in_threshold_db: float | None
    barge_in_min_speech_ms: int | None


class _Segmenter:
    """The utterance state machine over fixed-size frames; subclasses decide speech."""

    def __init__(self, sample_rate: int, frame_samples: int, seg: Segmentation) -> None:
        if min(sample_rate, frame_samples) <= 0:
            raise ValueError("sample_rate and frame size must be positive")
        self.sample_rate, self.frame_samples = sample_rate, frame_samples
        self.barge_in_threshold_db = seg.get("barge_in_threshold_db")
        """Barge-in level (None: the same as without barge-in)."""
        self.barge_in_min_speech_ms = seg.get("barge_in_min_speech_ms")
        """Barge-in minimum speech (None: the same as without barge-in)."""
        self._frame_ms = 1000.0 * frame_samples / sample_rate
        self._min_speech_frames = self._frames_in(seg.get("min_speech_ms", 250))
        self._silence_frames = self._frames_in(seg.get("silence_timeout_ms", 300))
        self._pre_frames = self._frames_in(seg.get("pre_speech_ms", 200), least=0)
        self._max_frames = max(1, math.ceil(seg.get("max_utterance_ms", 30000) / self._frame_ms))
        pause_frames = self._frames_in(seg.get("pause_ms", 0), least=0)
        self._pause_frames = pause_frames if pause_frames < self._silence_frames else 0
        self._pre: deque[npt.NDArray[np.int16]] = deque(maxlen=max(1, self._pre_frames))
        self._pending = np.zeros(0, np.int16)
        self._frames: list[npt.NDArray[np.int16]] = []
        self._frame_index = 0
        self._barge_in = False
        self._clear_utterance()

    def set_barge_in(self, active: bool) -> None:
        """Barge-in mode on or off; subclasses apply their barge-in levels on a change."""
        if active != self._barge_in:
            self._barge_in = active
            self._barge_in_changed(active)

    def _barge_in_changed(self, active: bool) -> None:
        """Subclass hook: barge-in mode was switched on (True) or off (False)."""

    @property
    def min_speech_ms(self) -> float:
        """Speech needed before an utterance is confirmed; may be changed at any time
        (e.g. raised while the bot speaks, so echo does not barge in)."""
        return self._min_speech_frames * self._frame_ms

    @min_speech_ms.setter
    def min_speech_ms(self, value: float) -> None:
        self._min_speech_frames = self._frames_in(value)

    def _frames_in(self, ms: float, least: int = 1) -> int:
        """Whole frames needed to cover `ms` (at least `least`)."""
        return max(least, math.ceil(ms / self._frame_ms - 1e-9))

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

    `threshold_db` may be changed at any time. In barge-in mode (`set_barge_in(True)`) the
    threshold and the minimum speech are `barge_in_threshold_db` / `barge_in_min_speech_ms`
    (each unchanged when None), and go back to what they were when it ends.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        threshold_db: float = -30.0,
        frame_ms: int = 20,
        **segmentation: Unpack[Segmentation],
    ) -> None:
        self.threshold_db = threshold_db
        self._n = sample_rate * frame_ms // 1000
        super().__init__(sample_rate, self._n, segmentation)
        self._normal_levels: tuple[float | None, float | None] = (threshold_db, self.min_speech_ms)

    def _barge_in_changed(self, active: bool) -> None:
        levels = self._normal_levels
        if active:
            self._normal_levels = (self.threshold_db, self.min_speech_ms)
            levels = (self.barge_in_threshold_db, self.barge_in_min_speech_ms)
        threshold_db, min_speech_ms = levels
        if threshold_db is not None:
            self.threshold_db = threshold_db
        if min_speech_ms is not None:
            self.min_speech_ms = min_speech_ms

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
    network's probability is at least `threshold` (changeable at run time). In barge-in
    mode a `SpeechStarted` interrupts only when the last `barge_in_min_speech_ms` of the
    audio fed (at most the last `RECENT_FEEDS` feeds) is at least `barge_in_threshold_db`
    loud; with no `barge_in_threshold_db` every speech start interrupts.
    """

    WINDOW = 512
    CONTEXT = 64
    RECENT_FEEDS = 16

    def __init__(
        self,
        sample_rate: int = 16000,
        threshold: float = 0.5,
        model_path: str | None = None,
        **segmentation: Unpack[Segmentation],
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
        self._recent: deque[npt.NDArray[np.int16]] = deque(maxlen=self.RECENT_FEEDS)
        super().__init__(sample_rate, self.WINDOW, segmentation)
        self._gate_db = self.barge_in_threshold_db
        gate_ms = self.barge_in_min_speech_ms or self.min_speech_ms
        self._gate_samples = int(gate_ms * sample_rate / 1000)

    def process(self, frame: npt.NDArray[np.int16]) -> list[VadEvent]:
        """Feed audio of any length; return the events it completed (barge-in level gated)."""
        if self._gate_db is None:
            return super().process(frame)
        self._recent.append(np.asarray(frame, dtype=np.int16).reshape(-1))
        events = super().process(frame)
        if self._barge_in and any(isinstance(e, SpeechStarted) for e in events):
            recent = np.concatenate(list(self._recent))[-self._gate_samples :]
            if rms_dbfs(recent) < self._gate_db:
                events = [
                    SpeechStarted(e.time_s, interrupts=False) if isinstance(e, SpeechStarted) else e
                    for e in events
                ]
        return events

    def _reset_model(self) -> None:
        self._input[:] = 0.0
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._recent.clear()

    def _is_speech(self, frame: npt.NDArray[np.int16]) -> bool:
        inp = self._input
        inp[0, : self.CONTEXT] = inp[0, -self.CONTEXT :]
        inp[0, self.CONTEXT :] = frame * (1.0 / 32768.0)
        prob, self._h, self._c = self._session.run(None, {"input": inp, "h": self._h, "c": self._c})
        self.last_probability = float(np.asarray(prob).reshape(-1)[0])
        return self.last_probability >= self.threshold
