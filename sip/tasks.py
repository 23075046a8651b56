"""One task-set helper for everything that owns background tasks: calls, doors, the UAS.

A `TaskSet` spawns named tasks, keeps a reference to each until it ends (so none is
garbage-collected mid-flight), logs any that fail with the owner's logger, and cancels and
waits for all of them on close. It lives here, in the stdlib-only bottom layer, because both
`sip/` (which may import nothing of `bridge/`) and `bridge/` use it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["TaskSet", "cancel_and_wait"]

T = TypeVar("T")


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel `tasks` and wait until every one has ended; their outcomes are discarded.

    The caller's own cancellation still propagates once they have ended."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning


class TaskSet:
    """Tasks owned by one object (a call, a door, the UAS), cancelled together."""

    def __init__(self, owner: str, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.owner = owner
        self._log = log
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Start `coro` as a task named `<owner>-<name>`; a failure is logged, not lost."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error("task %s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return sum(1 for t in self._tasks if not t.done())

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the tasks to end by themselves; False if some still run after `timeout_s`."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        return not pending

    async def cancel_all(self) -> None:
        """Cancel every task (except the one calling this) and wait until they have ended."""
        current = asyncio.current_task()
        await cancel_and_wait(*(t for t in self._tasks if t is not current))
