"""`CallManager` admission and accounting: drain mode, duplicate call ids, and calls a door
refuses after opening them (issue 13 deliverables 5 and 6, issue 12 finding 6)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest

from bridge.config import Settings
from bridge.contract import CallLimitExceeded, CallOptions
from bridge.metrics import Metrics
from bridge.pipeline.manager import CallManager, DuplicateCallId, refusal
from tests.fakes.bridge_process import in_process_bridge, ws_expect_close
from tests.fakes.pipeline import FakeBackends, RecordingSink


def _manager(**overrides: Any) -> tuple[CallManager, Metrics]:
    settings = Settings(_env_file=None, sip_enabled=False, **overrides)  # type: ignore[call-arg]
    metrics = Metrics()
    return CallManager(settings, FakeBackends(), metrics), metrics


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


async def test_a_duplicate_call_id_is_refused_and_the_first_call_survives() -> None:
    manager, metrics = _manager()
    first = await manager.open(CallOptions(door="sip", call_id="abc@host"), RecordingSink())
    with pytest.raises(DuplicateCallId):
        await manager.open(CallOptions(door="sip", call_id="abc@host"), RecordingSink())
    assert manager.get("abc@host") is first
    assert manager.active == 1
    assert _sample(metrics, "pipeline_calls_active") == 1
    assert _sample(metrics, "pipeline_calls_rejected_total", door="sip", reason="duplicate") == 1
    await first.close()
    assert manager.active == 0
    assert _sample(metrics, "pipeline_calls_active") == 0


async def test_closing_a_stale_call_never_removes_the_live_one_with_its_id() -> None:
    """The gauge never drifts: a call only ever removes itself."""
    manager, metrics = _manager()
    first = await manager.open(CallOptions(door="websocket", call_id="same"), RecordingSink())
    await first.close()
    second = await manager.open(CallOptions(door="websocket", call_id="same"), RecordingSink())
    await first.close()  # idempotent, and not the call registered under "same" now
    manager._forget(first)  # even a late duplicate notification
    assert manager.get("same") is second
    assert _sample(metrics, "pipeline_calls_active") == 1
    await second.close()
    assert _sample(metrics, "pipeline_calls_active") == 0


async def test_only_admitted_calls_count_in_calls_total() -> None:
    manager, metrics = _manager(max_concurrent_calls=2)
    refused = await manager.open(CallOptions(door="sip"), RecordingSink())
    await refused.close(refusal("no_codec"))  # e.g. the door answered 488 after opening
    spoken = await manager.open(CallOptions(door="sip"), RecordingSink())
    spoken.feed(np.zeros(320, np.int16))
    silent = await manager.open(CallOptions(door="websocket"), RecordingSink())
    with pytest.raises(CallLimitExceeded):
        await manager.open(CallOptions(door="sip"), RecordingSink())
    assert _sample(metrics, "pipeline_calls_total") == 1  # the one whose audio flows
    await silent.close("client closed")
    await spoken.close()
    assert _sample(metrics, "pipeline_calls_total") == 2
    assert _sample(metrics, "pipeline_calls_rejected_total", door="sip", reason="no_codec") == 1
    assert _sample(metrics, "pipeline_calls_rejected_total", door="sip", reason="full") == 1
    assert _sample(metrics, "pipeline_calls_active") == 0


async def test_drain_refuses_new_calls_and_waits_for_the_active_ones() -> None:
    manager, metrics = _manager()
    sink = RecordingSink()
    call = await manager.open(CallOptions(door="sip"), sink)
    manager.drain()
    assert not manager.accepting
    with pytest.raises(CallLimitExceeded, match="draining"):
        await manager.open(CallOptions(door="websocket"), RecordingSink())
    assert (
        _sample(metrics, "pipeline_calls_rejected_total", door="websocket", reason="draining") == 1
    )
    assert not await manager.wait_idle(0.05)
    assert not call.closed and sink.hangups == []  # draining does not touch live calls
    asyncio.get_running_loop().call_later(0.1, lambda: asyncio.ensure_future(call.close()))
    assert await manager.wait_idle(5.0)
    assert manager.active == 0
    await manager.shutdown(1.0)
    assert sink.hangups == []  # it ended by itself: nothing left to hang up


async def test_a_draining_bridge_refuses_websocket_1013_webrtc_503_and_readyz_503() -> None:
    async with in_process_bridge() as bridge:
        base = f"http://127.0.0.1:{bridge.port}"
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/readyz")).status_code == 200
            health = (await http.get("/healthz")).json()
            assert health["status"] == "ok" and health["tasks"] > 0
            bridge.drain()
            record = await ws_expect_close(
                f"ws://127.0.0.1:{bridge.port}/ws/call", [json.dumps({"codec": "pcm"})]
            )
            assert record.close_code == 1013
            assert record.events[0]["stage"] == "capacity"
            assert "draining" in record.events[0]["message"]
            offer = await http.post("/webrtc/offer", json={"sdp": "v=0\r\n", "type": "offer"})
            assert offer.status_code == 503
            assert (await http.get("/readyz")).status_code == 503
            health = (await http.get("/healthz")).json()
            assert health["status"] == "draining"  # alive: no orchestrator restarts it
    rejected = bridge.metrics.registry.get_sample_value(
        "pipeline_calls_rejected_total", {"door": "websocket", "reason": "draining"}
    )
    assert rejected == 1
