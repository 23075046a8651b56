"""VAD acceptance (spec §5) on a spoken fixture, transients, chunking, run-time threshold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.vad import (
    EnergyVAD,
    SileroVAD,
    SpeechPaused,
    SpeechStarted,
    UtteranceEnded,
    VadEvent,
    rms_dbfs,
)
from tests.support import espeak_pcm, with_silence

RATE = 16000
FRAME = 320


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    """1 s silence, a spoken sentence, 1 s silence at 16 kHz."""
    return with_silence(espeak_pcm(rate=RATE), RATE)


def _feed(
    vad: EnergyVAD | SileroVAD, pcm: np.ndarray, chunk: int = FRAME
) -> list[tuple[float, VadEvent]]:
    """Events with the stream time at which each was returned."""
    out = []
    for start in range(0, len(pcm), chunk):
        piece = pcm[start : start + chunk]
        out += [((start + len(piece)) / RATE, e) for e in vad.process(piece)]
    return out


def _speech_frames(pcm: np.ndarray, threshold_db: float = -30.0) -> np.ndarray:
    levels = np.array([rms_dbfs(pcm[i : i + FRAME]) for i in range(0, len(pcm) - FRAME + 1, FRAME)])
    return np.flatnonzero(levels >= threshold_db)


def _burst(ms: int, amp: int = 8000) -> np.ndarray:
    n = RATE * ms // 1000
    return (np.sin(np.arange(n) * 2 * np.pi * 700 / RATE) * amp).astype(np.int16)


def test_fixture_gives_exactly_one_utterance_with_spec_timing(sentence: np.ndarray) -> None:
    events = _feed(EnergyVAD(), sentence)
    kinds = [type(e) for _, e in events]
    assert kinds == [SpeechStarted, UtteranceEnded]
    (started_at, started), (ended_at, ended) = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, UtteranceEnded)

    speech = _speech_frames(sentence)
    onset, last_end = speech[0] * FRAME / RATE, (speech[-1] + 1) * FRAME / RATE
    assert started.time_s == pytest.approx(onset)
    assert ended.speech_start_s == pytest.approx(onset)
    assert ended.speech_end_s == pytest.approx(last_end)
    assert started_at >= onset + 0.25  # confirmed only after min_speech_ms
    assert 0.300 - 1e-9 <= ended_at - ended.speech_end_s <= 0.320 + 1e-9

    # Pre-roll: the utterance audio starts >= 200 ms before onset, and is the fixture's own audio.
    assert ended.audio_start_s <= ended.speech_start_s - 0.2
    first = round(ended.audio_start_s * RATE)
    np.testing.assert_array_equal(ended.pcm, sentence[first : first + len(ended.pcm)])
    assert first + len(ended.pcm) >= round(ended.speech_end_s * RATE)


@pytest.mark.parametrize("ms", [20, 100, 240])
def test_transients_shorter_than_min_speech_give_nothing(ms: int) -> None:
    pcm = with_silence(_burst(ms), RATE)
    assert _feed(EnergyVAD(), pcm) == []


def test_burst_just_over_min_speech_is_an_utterance() -> None:
    events = [e for _, e in _feed(EnergyVAD(), with_silence(_burst(260), RATE))]
    assert [type(e) for e in events] == [SpeechStarted, UtteranceEnded]


def test_min_speech_can_be_changed_at_run_time() -> None:
    """Barge-in asks for more speech while the bot talks; the change applies at once."""
    vad = EnergyVAD()
    vad.min_speech_ms = 400
    assert vad.min_speech_ms == 400
    assert _feed(vad, with_silence(_burst(300), RATE)) == []
    vad.min_speech_ms = 100
    events = [e for _, e in _feed(vad, with_silence(_burst(140), RATE))]
    assert [type(e) for e in events] == [SpeechStarted, UtteranceEnded]


def test_pause_shorter_than_timeout_keeps_one_utterance() -> None:
    gap = np.zeros(RATE * 200 // 1000, np.int16)
    pcm = with_silence(np.concatenate([_burst(300), gap, _burst(300)]), RATE)
    ended = [e for _, e in _feed(EnergyVAD(), pcm) if isinstance(e, UtteranceEnded)]
    assert len(ended) == 1
    assert ended[0].speech_end_s - ended[0].speech_start_s == pytest.approx(0.8)


def test_pause_longer_than_timeout_splits_utterances() -> None:
    gap = np.zeros(RATE * 400 // 1000, np.int16)
    pcm = with_silence(np.concatenate([_burst(300), gap, _burst(300)]), RATE)
    ended = [e for _, e in _feed(EnergyVAD(), pcm) if isinstance(e, UtteranceEnded)]
    assert len(ended) == 2


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 2000), min_size=1, max_size=30))
def test_any_chunking_gives_the_same_events(sizes: list[int]) -> None:
    pcm = with_silence(
        np.concatenate([_burst(400), np.zeros(3000, np.int16), _burst(300)]), RATE, 0.3, 0.5
    )
    expected = [e for _, e in _feed(EnergyVAD(), pcm)]
    vad, got, pos = EnergyVAD(), [], 0
    for size in sizes * (len(pcm) // sum(sizes) + 1):
        got += vad.process(pcm[pos : pos + size])
        pos += size
        if pos >= len(pcm):
            break
    assert [type(e) for e in got] == [type(e) for e in expected]
    for a, b in zip(got, expected, strict=True):
        if isinstance(a, UtteranceEnded) and isinstance(b, UtteranceEnded):
            np.testing.assert_array_equal(a.pcm, b.pcm)
            assert (a.speech_start_s, a.speech_end_s) == (b.speech_start_s, b.speech_end_s)
        else:
            assert a == b


def test_threshold_can_be_raised_at_run_time(sentence: np.ndarray) -> None:
    vad = EnergyVAD()
    vad.threshold_db = -3.0  # e.g. while the bot is speaking
    assert _feed(vad, sentence) == []
    vad.threshold_db = -30.0
    assert len(_feed(vad, sentence)) == 2


def test_energy_barge_in_mode_raises_threshold_and_min_speech(sentence: np.ndarray) -> None:
    vad = EnergyVAD(threshold_db=-30.0, barge_in_threshold_db=-3.0, barge_in_min_speech_ms=400)
    vad.set_barge_in(True)
    assert (vad.threshold_db, vad.min_speech_ms) == (-3.0, 400)
    assert _feed(vad, sentence) == []  # the spoken sentence is below -3 dBFS: echo-level
    vad.set_barge_in(False)
    assert (vad.threshold_db, vad.min_speech_ms) == (-30.0, 260)  # 13 frames of 20 ms
    assert len(_feed(vad, sentence)) == 2


def test_energy_barge_in_mode_without_levels_changes_nothing(sentence: np.ndarray) -> None:
    plain = _feed(EnergyVAD(), sentence)
    vad = EnergyVAD()
    vad.set_barge_in(True)
    got = _feed(vad, sentence)
    assert [(t, type(e)) for t, e in got] == [(t, type(e)) for t, e in plain]
    assert all(e.interrupts for _, e in got if isinstance(e, SpeechStarted))


def test_long_speech_is_cut_at_max_utterance() -> None:
    vad = EnergyVAD(max_utterance_ms=2000)
    ended = [e for _, e in _feed(vad, _burst(5000)) if isinstance(e, UtteranceEnded)]
    assert len(ended) == 2
    assert len(ended[0].pcm) == 2 * RATE


def test_reset_restarts_the_clock() -> None:
    vad = EnergyVAD()
    vad.process(_burst(200))
    vad.reset()
    events = [e for _, e in _feed(vad, with_silence(_burst(300), RATE, 0.5, 0.5))]
    assert isinstance(events[0], SpeechStarted)
    assert events[0].time_s == pytest.approx(0.5)


def test_rms_dbfs_reference_levels() -> None:
    assert rms_dbfs(np.full(320, 32767, np.int16)) == pytest.approx(0.0, abs=0.01)
    assert rms_dbfs(_burst(20, 16384)) == pytest.approx(
        -9.03, abs=0.05
    )  # sine: -3 dB, half scale: -6 dB
    assert rms_dbfs(np.zeros(320, np.int16)) == -120.0


@pytest.fixture(scope="module")
def silero() -> SileroVAD:
    return SileroVAD()


def test_silero_fixture_gives_one_utterance(silero: SileroVAD, sentence: np.ndarray) -> None:
    silero.reset()
    events = _feed(silero, sentence)
    assert [type(e) for _, e in events] == [SpeechStarted, UtteranceEnded]
    ended = events[1][1]
    assert isinstance(ended, UtteranceEnded)
    assert 0.9 <= ended.speech_start_s <= 1.2
    assert ended.audio_start_s <= ended.speech_start_s - 0.2
    assert 0.300 - 1e-9 <= events[1][0] - ended.speech_end_s <= 0.320 + 0.032


def test_silero_ignores_a_click_and_a_tone(silero: SileroVAD) -> None:
    silero.reset()
    click = np.zeros(RATE * 100 // 1000, np.int16)
    click[::40] = 20000
    assert _feed(silero, with_silence(click, RATE)) == []
    silero.reset()
    assert _feed(silero, with_silence(_burst(100), RATE)) == []


@pytest.mark.parametrize(("gain_db", "interrupts"), [(0.0, True), (-30.0, False)])
def test_silero_barge_in_gate_on_the_recent_level(
    sentence: np.ndarray, gain_db: float, interrupts: bool
) -> None:
    """In barge-in mode a speech start below BARGE_IN_THRESHOLD_DB does not interrupt, but
    it is still an utterance; out of barge-in mode every speech start interrupts."""
    pcm = (sentence * 10 ** (gain_db / 20)).astype(np.int16)
    for active in (True, False):
        vad = SileroVAD(barge_in_threshold_db=-40.0, barge_in_min_speech_ms=250)
        vad.set_barge_in(active)
        events = [e for _, e in _feed(vad, pcm)]
        assert [type(e) for e in events] == [SpeechStarted, UtteranceEnded], gain_db
        started = events[0]
        assert isinstance(started, SpeechStarted)
        assert started.interrupts is (interrupts or not active)


def test_silero_rejects_other_rates() -> None:
    with pytest.raises(ValueError):
        SileroVAD(sample_rate=8000)


# --- SpeechPaused (speculative ASR) ----------------------------------------------------


def _gap(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, np.int16)


def test_pause_event_is_off_by_default() -> None:
    pcm = with_silence(np.concatenate([_burst(300), _gap(200), _burst(300)]), RATE)
    assert not any(isinstance(e, SpeechPaused) for _, e in _feed(EnergyVAD(), pcm))


def test_pause_event_carries_the_utterance_so_far() -> None:
    pcm = with_silence(_burst(400), RATE)  # speech from 1.0 s to 1.4 s
    events = _feed(EnergyVAD(pause_ms=120), pcm)
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechPaused, UtteranceEnded]
    (_, _), (paused_at, paused), (_, ended) = events
    assert isinstance(paused, SpeechPaused) and isinstance(ended, UtteranceEnded)
    assert paused.speech_end_s == pytest.approx(1.4)
    assert paused.time_s == pytest.approx(1.4 + 0.12) == paused_at
    assert paused.audio_start_s == ended.audio_start_s
    assert paused.speech_end_s == ended.speech_end_s
    # the same samples as the final utterance: through the last speech frame and the
    # 120 ms of silence seen so far (the final one has 200 ms of trailing pre-roll)
    assert len(paused.pcm) == round((1.4 + 0.12 - paused.audio_start_s) * RATE)
    np.testing.assert_array_equal(paused.pcm, ended.pcm[: len(paused.pcm)])


def test_pause_event_once_per_pause_and_only_for_confirmed_speech() -> None:
    pcm = with_silence(
        np.concatenate([_burst(100), _gap(400), _burst(300), _gap(200), _burst(300), _gap(150)]),
        RATE,
    )
    events = [e for _, e in _feed(EnergyVAD(pause_ms=120), pcm)]
    # the 100 ms transient is never confirmed: no pause for it; then two pauses, one utterance
    assert [type(e) for e in events] == [
        SpeechStarted,
        SpeechPaused,
        SpeechPaused,
        UtteranceEnded,
    ]
    first, second, ended = events[1], events[2], events[3]
    assert isinstance(first, SpeechPaused) and isinstance(second, SpeechPaused)
    assert isinstance(ended, UtteranceEnded)
    assert first.speech_end_s < second.speech_end_s == ended.speech_end_s
    # only the last pause saw the utterance's final speech frame
    assert len(first.pcm) < len(second.pcm) <= len(ended.pcm)


@pytest.mark.parametrize("pause_ms", [300, 500])
def test_pause_not_shorter_than_the_timeout_gives_no_pause_event(pause_ms: int) -> None:
    pcm = with_silence(_burst(400), RATE)
    events = [e for _, e in _feed(EnergyVAD(pause_ms=pause_ms), pcm)]
    assert [type(e) for e in events] == [SpeechStarted, UtteranceEnded]


def test_pause_events_do_not_change_the_other_events(sentence: np.ndarray) -> None:
    plain = [e for _, e in _feed(EnergyVAD(), sentence)]
    paused = [e for _, e in _feed(EnergyVAD(pause_ms=100), sentence)]
    others = [e for e in paused if not isinstance(e, SpeechPaused)]
    assert [type(e) for e in others] == [type(e) for e in plain]
    a, b = plain[-1], others[-1]
    assert isinstance(a, UtteranceEnded) and isinstance(b, UtteranceEnded)
    np.testing.assert_array_equal(a.pcm, b.pcm)
    assert (a.speech_start_s, a.speech_end_s) == (b.speech_start_s, b.speech_end_s)


def test_silero_emits_pause_events(sentence: np.ndarray) -> None:
    vad = SileroVAD(pause_ms=120)
    events = [e for _, e in _feed(vad, sentence)]
    pauses = [e for e in events if isinstance(e, SpeechPaused)]
    ended = [e for e in events if isinstance(e, UtteranceEnded)]
    assert pauses and ended
    last = pauses[-1]
    assert last.speech_end_s == ended[-1].speech_end_s
    np.testing.assert_array_equal(last.pcm, ended[-1].pcm[: len(last.pcm)])
