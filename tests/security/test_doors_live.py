"""ALLOW_FROM on a live `voicebridge serve`: with loopback excluded (as a public address
is by the default), a SIP INVITE gets 403 and a WebSocket call or /metrics an HTTP 403;
with the defaults, loopback is admitted on every door."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.security.live import (
    ATTACKER,
    BYSTANDER,
    final_status,
    live_bridge,
    sip_invite,
    ws_caller,
)

pytestmark = pytest.mark.timeout(60)


def test_a_caller_outside_allow_from_is_refused_on_every_door(tmp_path: Path) -> None:
    with live_bridge(tmp_path, ALLOW_FROM="10.0.0.0/8") as bridge:
        sip = final_status(bridge.sip_port, ATTACKER, sip_invite(bridge.sip_port, ATTACKER))
        ws = asyncio.run(ws_caller(bridge.ws_url, ATTACKER, within_s=10))
        metrics = httpx.get(bridge.metrics_url, timeout=5).status_code
        healthz = httpx.get(f"http://127.0.0.1:{bridge.http_port}/healthz", timeout=5)
        context = bridge.log_tail()
    assert sip == 403, context
    assert ws.refused == 403 and not ws.e2e_ms, (ws, context)
    assert metrics == 403, context
    assert healthz.status_code == 200, "the orchestrator's probe stays open"


def test_the_defaults_admit_loopback_on_every_door(tmp_path: Path) -> None:
    with live_bridge(tmp_path) as bridge:
        sip = final_status(bridge.sip_port, BYSTANDER, sip_invite(bridge.sip_port, BYSTANDER))
        ws = asyncio.run(ws_caller(bridge.ws_url, ATTACKER, within_s=20))
        metrics = httpx.get(bridge.metrics_url, timeout=5).status_code
        context = bridge.log_tail()
    assert sip == 200, context
    assert ws.refused is None and not ws.errors and len(ws.e2e_ms) == 1, (ws, context)
    assert metrics == 200, context
