"""A well-behaved caller (127.0.0.2) completes its turn while one address (127.0.0.1)
attacks the HTTP and media doors of a live `voicebridge serve`: an audio flood over the
WebSocket, clients that never read, RTP garbage to every port of the range, nested-JSON
metadata. Latency is measured by `bench/attacks.py`, not asserted here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.security.attacks import (
    Attack,
    nested_json,
    rtp_garbage_flood,
    slow_reader,
    ws_audio_flood,
)
from tests.security.live import BYSTANDER, LiveBridge, Turns, live_bridge, metric, ws_caller

pytestmark = pytest.mark.timeout(60)
ATTACK_S = 5.0


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBridge]:
    with live_bridge(tmp_path_factory.mktemp("bystander"), WS_SEND_TIMEOUT_S="2") as running:
        yield running


async def _bystander_during(attack: Attack, bridge: LiveBridge) -> tuple[str, Turns]:
    task = asyncio.ensure_future(attack(bridge, ATTACK_S))
    await asyncio.sleep(1.0)
    turns = await ws_caller(bridge.ws_url, BYSTANDER, turns=1, within_s=20)
    return await task, turns


@pytest.mark.parametrize(
    "attack",
    [ws_audio_flood, slow_reader, rtp_garbage_flood, nested_json],
    ids=lambda a: a.__name__,
)
def test_the_bystanders_turn_completes(bridge: LiveBridge, attack: Attack) -> None:
    outcome, turns = asyncio.run(_bystander_during(attack, bridge))
    context = f"{outcome}; {turns}\n{bridge.log_tail()}"
    assert turns.refused is None and not turns.errors, context
    assert len(turns.e2e_ms) == 1, context
    # Nothing the attacker did went unhandled in the bridge.
    assert "Traceback" not in bridge.log.read_text(errors="replace"), context


def test_a_websocket_audio_flood_is_cut_off(bridge: LiveBridge) -> None:
    """Audio faster than real time ends that call with 1008 and queues no ASR backlog."""
    outcome = asyncio.run(ws_audio_flood(bridge, 3.0))
    assert outcome.endswith("close 1008"), outcome
    # the close frame reaches the client just before the server has freed the call
    deadline = time.monotonic() + 5.0
    while metric(bridge, "pipeline_calls_active") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(bridge, "pipeline_calls_active") == 0, bridge.log_tail()
