"""ALLOW_FROM, ACCESS_TOKENS and TURN credentials on the HTTP doors of an in-process `Bridge`
(issue 12, deliverables 1 and 2): a refused peer gets 403/401 before any WebSocket upgrade
or peer connection, probes stay open, TURN credentials go only to admitted clients."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from bridge.doors import webrtc
from tests.fakes.bridge_process import in_process_bridge, ws_call
from tests.fakes.pipeline import silence, tone

pytestmark = pytest.mark.timeout(30)

META = json.dumps({"codec": "pcm", "sample_rate": 16000})
OFFER = {"sdp": "v=0\r\n", "type": "offer"}


@pytest.fixture
def peer_connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every `RTCPeerConnection` the WebRTC door builds."""
    built: list[object] = []
    real = webrtc.RTCPeerConnection

    def counting(*args: Any, **kwargs: Any) -> Any:
        pc = real(*args, **kwargs)
        built.append(pc)
        return pc

    monkeypatch.setattr(webrtc, "RTCPeerConnection", counting)
    return built


async def status_of(
    method: str, url: str, headers: dict[str, str] | None = None, body: Any = None
) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, json=body, headers=headers) as resp:
            return resp.status


async def ws_status(url: str, headers: dict[str, str] | None = None) -> int:
    """101 when the upgrade happened, else the refusal's status."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, headers=headers) as ws:
                await ws.close()
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def test_outside_allow_from_gets_403_and_probes_stay_open(
    peer_connections: list[object],
) -> None:
    async with in_process_bridge(allow_from="10.0.0.0/8, 192.0.2.0/24") as b:
        base = f"http://127.0.0.1:{b.port}"
        assert await ws_status(f"ws://127.0.0.1:{b.port}/ws/call") == 403
        assert await status_of("POST", f"{base}/webrtc/offer", body=OFFER) == 403
        assert await status_of("GET", f"{base}/webrtc/config") == 403
        assert await status_of("GET", f"{base}/metrics") == 403
        assert await status_of("GET", f"{base}/healthz") == 200
        assert await status_of("GET", f"{base}/readyz") == 200
        assert b.calls.active == 0
    assert peer_connections == []


async def test_inside_allow_from_is_admitted() -> None:
    async with in_process_bridge(allow_from="127.0.0.0/8") as b:
        assert await status_of("GET", f"http://127.0.0.1:{b.port}/metrics") == 200
        assert await ws_status(f"ws://127.0.0.1:{b.port}/ws/call") == 101


@pytest.mark.parametrize(
    ("query", "headers", "expected"),
    [
        ("", None, 401),
        ("?token=wrong", None, 401),
        ("?token=", None, 401),
        ("", {"Authorization": "Bearer wrong"}, 401),
        ("", {"Authorization": "Basic czNjcmV0"}, 401),
        ("?token=s3cret-two", None, 101),
        ("", {"Authorization": "Bearer s3cret-one"}, 101),
    ],
    ids=["none", "wrong-query", "empty-query", "wrong-bearer", "basic", "query", "bearer"],
)
async def test_websocket_token(query: str, headers: dict[str, str] | None, expected: int) -> None:
    async with in_process_bridge(access_tokens=["s3cret-one", "s3cret-two"]) as b:
        assert await ws_status(f"ws://127.0.0.1:{b.port}/ws/call{query}", headers) == expected
        if expected != 101:
            assert b.calls.active == 0


async def test_a_call_with_a_token_completes_its_turn() -> None:
    chunks = [c.tobytes() for c in (silence(0.2), tone(0.6), silence(0.5))]
    async with in_process_bridge(access_tokens=["t0k"]) as b:
        record = await ws_call(
            f"ws://127.0.0.1:{b.port}/ws/call?token=t0k", META, chunks, bytes(640), within_s=15
        )
    assert "transcript" in record.types() and record.types()[-1] == "metrics"


async def test_webrtc_offer_and_config_need_the_token(peer_connections: list[object]) -> None:
    async with in_process_bridge(access_tokens=["t0k"]) as b:
        base = f"http://127.0.0.1:{b.port}"
        assert await status_of("POST", f"{base}/webrtc/offer", body=OFFER) == 401
        assert await status_of("POST", f"{base}/webrtc/offer?token=nope", body=OFFER) == 401
        assert await status_of("GET", f"{base}/webrtc/config") == 401
        assert await status_of("GET", f"{base}/webrtc/config?token=t0k") == 200
        bearer = {"Authorization": "Bearer t0k"}
        assert await status_of("GET", f"{base}/webrtc/config", headers=bearer) == 200
        assert await status_of("GET", f"{base}/metrics") == 200  # ALLOW_FROM only
        assert peer_connections == []


def expected_credential(secret: str, username: str) -> str:
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


async def test_turn_credentials_are_minted_for_admitted_clients_only() -> None:
    servers = [
        "stun:stun.example.org:3478",
        "turn:turn.example.org:3478?transport=udp",
        "turns:turn.example.org:5349",
    ]
    async with in_process_bridge(
        ice_servers=servers, turn_secret="shared", turn_ttl_s=600, access_tokens=["t0k"]
    ) as b:
        base = f"http://127.0.0.1:{b.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/webrtc/config") as resp:
                assert resp.status == 401
                assert "shared" not in await resp.text()
            async with http.get(f"{base}/webrtc/config?token=t0k") as resp:
                config = await resp.json()
        server_side = b.webrtc.configuration().iceServers or []
    stun, turn, turns = config["iceServers"]
    assert stun == {"urls": "stun:stun.example.org:3478"}
    for entry, url in ((turn, servers[1]), (turns, servers[2])):
        assert entry["urls"] == url
        expiry, _, _ = entry["username"].partition(":")
        assert 590 <= int(expiry) - time.time() <= 610
        assert entry["credential"] == expected_credential("shared", entry["username"])
    assert [s.urls for s in server_side] == servers
    assert server_side[0].username is None
    for server in server_side[1:]:
        assert server.username and server.credential == expected_credential(
            "shared", server.username
        )


async def test_static_turn_credentials_in_ice_servers_are_kept() -> None:
    async with in_process_bridge(ice_servers=["turn:alice:pw@turn.example.org:3478"]) as b:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{b.port}/webrtc/config") as resp:
                config = await resp.json()
    assert config["iceServers"] == [
        {"urls": "turn:turn.example.org:3478", "username": "alice", "credential": "pw"}
    ]


def test_token_compare_checks_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge import access_http
    from sip.access import AddressFilter

    compared: list[bytes] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(access_http.hmac, "compare_digest", spy)
    access = access_http.HttpAccess(AddressFilter.default(), ["a", "b", "c"])
    assert access.token_ok("a") and not access.token_ok("x") and not access.token_ok(None)
    assert compared == [b"a", b"b", b"c"] * 2
    assert access_http.HttpAccess(AddressFilter.default(), []).token_ok(None)


async def test_the_tools_pass_their_token(tmp_path: Any) -> None:
    import argparse

    import numpy as np

    from bridge.tools import call_client, loadtest
    from media.wav import write_wav

    for add in (call_client.add_arguments, loadtest.add_arguments):
        parser = argparse.ArgumentParser()
        add(parser)
        base = (
            ["ws://h/ws/call", "x.wav"]
            if add is call_client.add_arguments
            else ["--audio-dir", "."]
        )
        assert parser.parse_args([*base, "--token", "t0k"]).token == "t0k"
    assert loadtest.with_token("ws://h:1/ws/call", None) == "ws://h:1/ws/call"
    assert loadtest.with_token("ws://h:1/ws/call?a=1", "a b") == "ws://h:1/ws/call?a=1&token=a+b"

    pcm = np.concatenate([silence(0.2), tone(0.6), silence(0.6)])
    (tmp_path / "one.wav").write_bytes(write_wav(pcm, 16000))
    async with in_process_bridge(access_tokens=["t0k"]) as b:
        url = f"ws://127.0.0.1:{b.port}/ws/call"
        result = await call_client.call(loadtest.with_token(url, "t0k"), pcm, 16000, timeout_s=15)
        assert result.metrics["type"] == "metrics"
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await call_client.call(url, pcm, 16000, timeout_s=15)
        load = await loadtest.run_load(loadtest.with_token(url, "t0k"), 1, 0.1, tmp_path)
        assert load.calls_completed == 1 and not load.errors, load.summary()
