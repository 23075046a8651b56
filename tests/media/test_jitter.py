"""Jitter buffer: seeded acceptance schedule, wrap, jumps, SSRC change, late, dup, G.711 fade."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.codecs import Decoder, codec_for
from media.g711 import ulaw_encode
from media.jitter import JitterBuffer
from media.rtp import RtpPacket

FRAME = 160  # 20 ms at 8 kHz
CONCEALED = -1


def _decode(payload: bytes) -> np.ndarray:
    """Test codec: a frame whose every sample is the packet's index + 1 (0 stays silence)."""
    (index,) = struct.unpack("!H", payload[:2])
    return np.full(FRAME, index, np.int16)


class _IndexDecoder:
    """Test decoder: `_decode`, b"bad" is undecodable, a concealed frame is all `CONCEALED`."""

    def decode(self, payload: bytes) -> np.ndarray:
        if payload == b"bad":
            raise ValueError("bad payload")
        return _decode(payload)

    def conceal(self) -> np.ndarray:
        return np.full(FRAME, CONCEALED, np.int16)


def _ulaw() -> Decoder:
    return codec_for("pcmu").decoder()


def _buffer(playout_delay_ms: int = 60, max_conceal_frames: int = 5) -> JitterBuffer:
    return JitterBuffer(
        8000,
        FRAME,
        playout_delay_ms,
        decoder=_IndexDecoder(),
        max_conceal_frames=max_conceal_frames,
    )


def _packet(i: int, seq0: int = 0, ts0: int = 0, ssrc: int = 0x1234) -> RtpPacket:
    return RtpPacket(
        0, (seq0 + i) & 0xFFFF, (ts0 + i * FRAME) & 0xFFFFFFFF, ssrc, struct.pack("!H", i + 1)
    )


def _run(
    jb: JitterBuffer, arrivals: list[tuple[float, RtpPacket]], ticks: int, phase_ms: float = 10.0
) -> list[int]:
    """Push packets at their arrival times and pop once per 20 ms; the frame identity per tick."""
    arrivals = sorted(arrivals, key=lambda a: a[0])
    out, k = [], 0
    for tick in range(ticks):
        now = tick * 20.0 + phase_ms
        while k < len(arrivals) and arrivals[k][0] <= now:
            jb.push(arrivals[k][1])
            k += 1
        frame = jb.pop()
        assert frame.shape == (FRAME,) and frame.dtype == np.int16
        assert np.all(frame == frame[0])
        out.append(int(frame[0]))
    return out


def _schedule(seed: int, n: int) -> tuple[list[tuple[float, RtpPacket]], set[int], int]:
    """5% loss, 10% reordered (delayed 20-40 ms), 2% duplicated, sequence wrapping mid-way."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, RtpPacket]] = []
    lost: set[int] = set()
    duplicates = 0
    seq0 = 0x10000 - n // 2  # wraps half way through
    for i in range(n):
        if 5 <= i < n - 5 and rng.random() < 0.05:
            lost.add(i)
            continue
        t = i * 20.0 + rng.uniform(0, 5)
        if rng.random() < 0.10:
            t += rng.uniform(20, 40)
        packet = _packet(i, seq0=seq0, ts0=0xFFFFFFFF - 40 * FRAME)
        arrivals.append((t, packet))
        if rng.random() < 0.02:
            arrivals.append((t + rng.uniform(0, 40), packet))
            duplicates += 1
    return arrivals, lost, duplicates


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_acceptance_schedule_loss_reorder_duplicates_and_wrap(seed: int) -> None:
    n = 1500
    arrivals, lost, duplicates = _schedule(seed, n)
    assert {p.sequence for _, p in arrivals} >= {0xFFFF, 1}  # the schedule really wraps
    jb = _buffer()
    delay_ticks = 3
    out = _run(jb, arrivals, n + delay_ticks)
    # Before the first packet plus the playout delay: silence; then every index in order,
    # concealment exactly where a packet was lost, nothing skipped, nothing repeated.
    start = out.index(1)
    assert out[:start] == [0] * start and start == delay_ticks
    expected = [CONCEALED if i in lost else i + 1 for i in range(n)]
    assert out[start : start + n] == expected
    stats = jb.stats
    assert stats.lost == len(lost)
    assert stats.concealed == len(lost)
    assert stats.duplicate == duplicates
    assert stats.late == 0
    assert stats.received == n - len(lost)
    assert stats.depth == 0


def test_silence_before_first_packet_and_after_stream_stops() -> None:
    jb = _buffer(max_conceal_frames=2)
    assert not jb.pop().any()
    out = _run(jb, [(i * 20.0, _packet(i)) for i in range(5)], 12)
    assert out == [0, 0, 0, 1, 2, 3, 4, 5, CONCEALED, CONCEALED, 0, 0]
    assert jb.stats.concealed == 2 and jb.stats.lost == 0


def test_late_packet_is_dropped_and_counted() -> None:
    arrivals = [(i * 20.0, _packet(i)) for i in range(10) if i != 4]
    arrivals.append((4 * 20.0 + 150, _packet(4)))  # far beyond the playout delay
    jb = _buffer()
    out = _run(jb, arrivals, 13)
    assert out[3:13] == [1, 2, 3, 4, CONCEALED, 6, 7, 8, 9, 10]
    assert (jb.stats.late, jb.stats.lost, jb.stats.concealed) == (1, 0, 1)


def test_timestamp_jump_is_seamless() -> None:
    arrivals = []
    for i in range(30):
        p = _packet(i)
        if i >= 10:
            p = RtpPacket(0, p.sequence, (p.timestamp + 987654) & 0xFFFFFFFF, p.ssrc, p.payload)
        arrivals.append((i * 20.0, p))
    jb = _buffer()
    out = _run(jb, arrivals, 33)
    assert out[3:33] == list(range(1, 31))
    assert jb.stats.resyncs == 1 and jb.stats.concealed == 0


def test_backward_timestamp_jump_is_seamless() -> None:
    arrivals = [(i * 20.0, _packet(i, ts0=5_000_000 if i < 10 else 0)) for i in range(30)]
    out = _run(_buffer(), arrivals, 33)
    assert out[3:33] == list(range(1, 31))


def test_ssrc_change_continues_without_gap() -> None:
    arrivals = [(i * 20.0, _packet(i)) for i in range(10)]
    arrivals += [(i * 20.0, _packet(i, seq0=40000, ts0=123456, ssrc=0xBEEF)) for i in range(10, 20)]
    arrivals.append((10 * 20.0 + 5, _packet(9)))  # a straggler from the old SSRC
    jb = _buffer()
    out = _run(jb, arrivals, 23)
    assert out[3:23] == list(range(1, 21))
    assert jb.stats.resyncs == 1


def test_dtx_gap_plays_in_real_time() -> None:
    # Sender stops for 1 s (timestamps keep running) and resumes with the next sequence number.
    arrivals = [(i * 20.0, _packet(i)) for i in range(10)]
    arrivals += [
        (i * 20.0, RtpPacket(0, i - 50, i * FRAME, 0x1234, struct.pack("!H", i + 1)))
        for i in range(60, 70)
    ]
    jb = _buffer(max_conceal_frames=1)
    out = _run(jb, arrivals, 73)
    assert out[3:13] == list(range(1, 11))
    assert out[63:73] == list(range(61, 71))
    assert jb.stats.lost == 0


def test_sender_clock_running_fast_is_pulled_back() -> None:
    # Packets arrive 10% faster than the tick: the buffer must not grow without bound.
    arrivals = [(i * 18.0, _packet(i)) for i in range(400)]
    jb = _buffer()
    _run(jb, arrivals, 360)
    assert jb.stats.dropped > 0
    assert jb.stats.depth_ms <= 60 + 100 + 20


def test_sender_clock_running_slow_recovers() -> None:
    arrivals = [(i * 22.0, _packet(i)) for i in range(300)]
    jb = _buffer()
    out = _run(jb, arrivals, 330)
    played = [x for x in out if x > 0]
    assert played == sorted(played)
    assert len(played) > 250


def test_undecodable_payload_is_concealed() -> None:
    jb = JitterBuffer(8000, FRAME, 60, decoder=_IndexDecoder())
    arrivals = [(i * 20.0, _packet(i)) for i in range(6)]
    arrivals[3] = (60.0, RtpPacket(0, 3, 3 * FRAME, 0x1234, b"bad"))
    out = _run(jb, arrivals, 10)
    assert out[3:9] == [1, 2, 3, CONCEALED, 5, 6]
    assert jb.stats.invalid == 1


def test_dtmf_packets_marked_received_are_not_lost() -> None:
    jb = _buffer()
    for i in range(10):
        if i in (4, 5):
            jb.mark_received(_packet(i))
        else:
            jb.push(_packet(i))
    assert jb.stats.lost == 0 and jb.stats.received == 10


def test_g711_fade_repeat_halves_and_reaches_silence() -> None:
    tone = (np.sin(np.arange(FRAME) / 3) * 8000).astype(np.int16)
    jb = JitterBuffer(8000, FRAME, 60, decoder=_ulaw(), max_conceal_frames=3)
    packets = {i: RtpPacket(0, i, i * FRAME, 1, ulaw_encode(tone)) for i in range(10) if i != 4}
    peaks = []
    for tick in range(18):
        if tick in packets:
            jb.push(packets[tick])
        peaks.append(float(np.abs(jb.pop().astype(np.int32)).max()))
    peak = peaks[3]
    assert peak > 7000
    assert peaks[3 + 4] == pytest.approx(peak / 2, rel=0.02)  # lost packet 4: half-level repeat
    assert peaks[3 + 5] == peak  # packet 5 plays normally
    # After the stream ends: 1/2, 1/4, 1/8, then silence (max_conceal_frames=3).
    assert peaks[13:17] == pytest.approx([peak / 2, peak / 4, peak / 8, 0.0], rel=0.05, abs=1)
    assert _ulaw().conceal() is None


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**32 - 1),
    st.lists(st.integers(0, 60), min_size=40, max_size=40),
)
def test_never_stalls_and_never_reorders(seq0: int, ts0: int, jitter_ms: list[int]) -> None:
    arrivals = [(i * 20.0 + j, _packet(i, seq0, ts0)) for i, j in enumerate(jitter_ms)]
    out = _run(_buffer(playout_delay_ms=40), arrivals, 50)
    played = [x for x in out if x != CONCEALED and x != 0]
    assert played == sorted(set(played))


def test_with_real_opus_decoder_and_plc() -> None:
    opus = codec_for("opus")
    enc = opus.encoder()
    tone = (np.sin(2 * np.pi * 300 * np.arange(48000) / 48000) * 8000).astype(np.int16)
    packets = [
        RtpPacket(111, i, i * 960, 7, enc.encode(tone[i * 960 : (i + 1) * 960])) for i in range(30)
    ]
    jb = JitterBuffer(48000, 960, 60, decoder=opus.decoder())
    frames = []
    for tick in range(33):
        if tick < 30 and tick != 15:
            jb.push(packets[tick])
        frames.append(jb.pop())
    assert all(f.shape == (960,) for f in frames)
    concealed = frames[3 + 15]
    assert np.sqrt(np.mean(concealed.astype(np.float64) ** 2)) > 1000  # PLC, not silence
    assert (jb.stats.lost, jb.stats.concealed) == (1, 1)


def _tone_packet(seq: int, ts: int) -> RtpPacket:
    return RtpPacket(0, seq & 0xFFFF, ts & 0xFFFFFFFF, 1, bytes([0x10]) * FRAME)


@pytest.mark.parametrize("shift", [80, 10, 150, -10, 160 * 3 + 40])
def test_timestamp_shift_off_the_frame_grid_keeps_playing(shift: int) -> None:
    # The sender's timestamp moves by a non-multiple of the frame after packet 50.
    jb = JitterBuffer(8000, FRAME, 60, decoder=_ulaw())
    seq, ts, audible = 1, 0, []
    for i in range(50 + 3000):
        if i == 50:
            ts += shift
        jb.push(_tone_packet(seq, ts))
        seq, ts = seq + 1, ts + FRAME
        frame = jb.pop()
        assert frame.shape == (FRAME,)
        audible.append(bool(np.abs(frame).max() > 0))
        assert jb.stats.depth <= (60 + 100) // 20 + 1  # bounded, not one entry per packet
    after = audible[50 + 5 :]  # a short resync
    assert sum(after) >= 0.95 * len(after)
    snapped = round(shift / FRAME - 0.01) * FRAME  # to the nearest slot, half a frame down
    assert jb.stats.depth_ms == 60 + 1000 * snapped / 8000
    assert jb.stats.resyncs == 1


def test_off_grid_packets_reordered_across_the_shift_still_play() -> None:
    jb = _buffer()
    packets = [_packet(i, ts0=80 if i >= 10 else 0) for i in range(30)]
    packets[10], packets[11] = packets[11], packets[10]
    out = _run(jb, [(i * 20.0, p) for i, p in enumerate(packets)], 33)
    assert out[3:33] == list(range(1, 31))


def test_dtmf_event_does_not_move_the_audio_timing() -> None:
    # RFC 4733: during an event the timestamp stays at the event start, sequence numbers run on.
    jb = JitterBuffer(8000, FRAME, 60, decoder=_ulaw())
    seq, ts, audible = 1, 0, []
    for _ in range(50):
        jb.push(_tone_packet(seq, ts))
        seq, ts = seq + 1, ts + FRAME
        audible.append(bool(np.abs(jb.pop()).max() > 0))
    event_start, event_packets = ts, 13  # 260 ms including 3 end retransmissions
    for _ in range(event_packets):
        jb.mark_received(RtpPacket(101, seq, event_start, 1, b"\x05\x0a\x00\xa0"))
        seq, ts = seq + 1, ts + FRAME
        audible.append(bool(np.abs(jb.pop()).max() > 0))
    for _ in range(100):
        jb.push(_tone_packet(seq, ts))
        seq, ts = seq + 1, ts + FRAME
        frame = jb.pop()
        assert frame.shape == (FRAME,)
        audible.append(bool(np.abs(frame).max() > 0))
        assert jb.stats.depth_ms <= 60
    assert jb.stats.depth_ms == 60  # back to the playout delay
    assert (jb.stats.resyncs, jb.stats.lost, jb.stats.dropped) == (0, 0, 0)
    # Silence only for the event's own slots (less the concealment), nothing extra.
    assert audible[3:].count(False) <= event_packets - 5 + 1
    assert all(audible[50 + event_packets + 3 :])


def test_old_sequence_numbers_with_far_future_timestamps_stay_bounded() -> None:
    """200k hostile packets (old sequence numbers, timestamps far ahead) between ticks: the
    buffer keeps a bounded number of entries, so each `pop()` touches a bounded number too."""
    jb = _buffer()
    for i in range(50):
        jb.push(_packet(i, seq0=5000))
        jb.pop()
    rng = random.Random(3)
    bound = 0
    for n in range(200_000):
        seq = (5000 + 49 - rng.randrange(1, 900)) & 0xFFFF  # behind the newest, not a restart
        ts = (49 * FRAME + rng.randrange(10, 1 << 24) * FRAME) & 0xFFFFFFFF
        jb.push(RtpPacket(0, seq, ts, 0x1234, struct.pack("!H", 60000)))
        if n % 1000 == 0:
            jb.pop()
            bound = max(bound, len(jb._buffer))
    assert bound <= jb.max_packets
    assert len(jb._buffer) <= 30  # the distance window: a playout delay plus a jump of frames
    stats = jb.stats
    assert stats.out_of_window >= 600  # every new one beyond the window (the rest: seen)
    assert stats.out_of_window + stats.duplicate + stats.late == 200_000
    # and the real stream still plays after the flood
    for i in range(50, 60):
        jb.push(_packet(i, seq0=5000))
    frames = [int(jb.pop()[0]) for _ in range(10)]
    assert any(v > 50 for v in frames), frames


def test_count_bound_drops_the_overflow() -> None:
    jb = JitterBuffer(8000, FRAME, 60, decoder=_IndexDecoder(), max_packets=4, jump_ms=300)
    for i in range(10):  # all arrive before the first tick: only the first four are kept
        jb.push(_packet(i))
    assert len(jb._buffer) == 4
    assert jb.stats.out_of_window == 6
