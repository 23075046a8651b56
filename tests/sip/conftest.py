"""Fixtures: a running UAS on 127.0.0.1 with a recording application."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sip.transaction import TimerConfig
from sip.uas import UserAgentServer
from tests.sip.fakeapp import RecordingApp

FAST = TimerConfig(t1=0.05, t2=0.4, t4=0.5)


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
async def uas(app: RecordingApp) -> AsyncIterator[UserAgentServer]:
    server = UserAgentServer(app, "127.0.0.1", 0, timers=FAST, stop_timeout_s=0.3)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
