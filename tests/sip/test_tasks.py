"""The one task-set helper: spawn, log failures, cancel-and-wait."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sip.tasks import TaskSet, cancel_and_wait


async def test_failures_are_logged_and_tasks_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("owner", logging.getLogger("test.tasks"))

    async def boom() -> None:
        raise RuntimeError("bang")

    task = tasks.spawn(boom(), "boom")
    assert task.get_name() == "owner-boom"
    with caplog.at_level(logging.ERROR, "test.tasks"):
        await asyncio.wait({task})
        await asyncio.sleep(0)
    assert "owner-boom failed" in caplog.text and "bang" in caplog.text
    assert len(tasks) == 0 and list(tasks) == []


async def test_cancel_all_waits_for_every_task_but_the_caller() -> None:
    tasks = TaskSet("owner", logging.getLogger("test.tasks"))
    cleaned: list[str] = []

    async def slow(name: str) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.01)  # cleanup that takes a moment
            cleaned.append(name)

    spawned = [tasks.spawn(slow(n), n) for n in "ab"]

    async def closer() -> None:
        await tasks.cancel_all()

    closing = tasks.spawn(closer(), "closer")
    await asyncio.sleep(0)
    await closing
    assert sorted(cleaned) == ["a", "b"]
    assert all(t.cancelled() for t in spawned)
    assert len(tasks) == 0


async def test_wait_reports_tasks_still_running() -> None:
    tasks = TaskSet("owner", logging.getLogger("test.tasks"))
    quick = tasks.spawn(asyncio.sleep(0.01), "quick")
    assert await tasks.wait(1.0) and quick.done()
    slow = tasks.spawn(asyncio.sleep(60), "slow")
    assert not await tasks.wait(0.01)
    await cancel_and_wait(slow)
    assert slow.cancelled()
