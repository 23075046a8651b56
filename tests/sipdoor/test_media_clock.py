"""The door's media clock: an absolute 20 ms schedule that neither drifts nor bursts."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from bridge.doors.rtp_session import MAX_CATCH_UP, MediaClock

pytestmark = pytest.mark.timeout(20)


class FakeSession:
    def __init__(self, work_s: float = 0.0, fail: bool = False) -> None:
        self.local_port = 0
        self.work_s = work_s
        self.fail = fail
        self.ticks: list[tuple[float, int]] = []
        self.ended: list[str] = []
        self.stall_at: int | None = None

    def tick(self, now: float, skipped: int = 0) -> None:
        self.ticks.append((time.monotonic(), skipped))
        if self.fail:
            raise RuntimeError("boom")
        if self.stall_at is not None and len(self.ticks) == self.stall_at:
            time.sleep(0.2)  # the event loop stalls for 10 frames
        elif self.work_s:
            time.sleep(self.work_s)  # every tick costs a quarter of the period

    def end(self, reason: str) -> None:
        self.ended.append(reason)


async def _run(clock: MediaClock, seconds: float) -> None:
    await asyncio.sleep(seconds)
    await clock.stop()


async def test_slow_ticks_do_not_drift() -> None:
    clock = MediaClock()
    session = FakeSession(work_s=0.005)
    clock.add(session)  # type: ignore[arg-type]
    await _run(clock, 1.0)
    # frames accounted for (ticked, or skipped by a resync on a loaded machine) match the
    # wall time; a clock that slept 20 ms after each 5 ms of work would count ~40
    frames = len(session.ticks) + sum(s for _, s in session.ticks)
    assert 48 <= frames <= 52, frames


async def test_a_stall_resynchronises_instead_of_bursting() -> None:
    clock = MediaClock()
    session = FakeSession()
    session.stall_at = 10
    clock.add(session)  # type: ignore[arg-type]
    await _run(clock, 1.0)
    assert clock.resyncs >= 1
    assert session.ticks[10][1] > MAX_CATCH_UP  # the tick after the stall skips the lost frames
    after = [t for t, _ in session.ticks[10:14]]
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert all(gap > 0.010 for gap in gaps[1:]), gaps  # no back-to-back burst after the stall
    frames = len(session.ticks) + sum(s for _, s in session.ticks)
    assert 48 <= frames <= 52, frames


async def test_a_failing_session_is_dropped_and_ended_others_keep_ticking() -> None:
    clock = MediaClock()
    bad, good = FakeSession(fail=True), FakeSession()
    clock.add(bad)  # type: ignore[arg-type]
    clock.add(good)  # type: ignore[arg-type]
    await _run(clock, 0.3)
    assert len(bad.ticks) == 1 and bad.ended == ["media error"]
    assert len(good.ticks) >= 12
