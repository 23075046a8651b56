"""The fault-injection proxy itself, each mode against a tiny aiohttp server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from tests.fakes.backend_servers import routes, serve
from tests.fakes.faultproxy import FaultProxy

BODY = b"x" * 20000


async def _body(request: web.Request) -> web.Response:
    return web.Response(body=BODY)


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(20):
        await response.write(b"tick\n")
        await asyncio.sleep(0.05)
    await response.write_eof()
    return response


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    app = routes(web.get("/body", _body), web.post("/echo", _echo), web.get("/stream", _stream))
    async with serve(app) as url:
        port = int(url.rsplit(":", 1)[1])
        async with FaultProxy("127.0.0.1", port) as p:
            yield p


def _client(timeout_s: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout_s, trust_env=False)


async def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    async with _client() as client:
        assert (await client.get(f"{proxy.url}/body")).content == BODY
        echoed = await client.post(f"{proxy.url}/echo", content=b"hello" * 1000)
    assert echoed.content == b"hello" * 1000
    assert proxy.url == f"http://127.0.0.1:{proxy.port}"


async def test_down_refuses_and_comes_back_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    proxy.set("down")
    async with _client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{proxy.url}/body")
        proxy.set("pass")
        assert proxy.port == port
        assert (await client.get(f"{proxy.url}/body")).status_code == 200


async def test_down_resets_a_live_connection(proxy: FaultProxy) -> None:
    async with _client() as client:
        asyncio.get_running_loop().call_later(0.2, proxy.set, "down")
        with pytest.raises(httpx.HTTPError):
            async with client.stream("GET", f"{proxy.url}/stream") as response:
                async for _ in response.aiter_bytes():
                    pass


async def test_blackhole_never_answers(proxy: FaultProxy) -> None:
    proxy.set("blackhole")
    async with _client(timeout_s=0.3) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"{proxy.url}/body")
    assert time.monotonic() - started >= 0.3


async def test_blackhole_flipped_during_a_stream_stalls_it(proxy: FaultProxy) -> None:
    async with _client(timeout_s=0.5) as client:
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream("GET", f"{proxy.url}/stream") as response:
                async for _ in response.aiter_bytes():
                    proxy.set("blackhole")


async def _timed_body(proxy: FaultProxy) -> float:
    """Seconds to GET the whole body through `proxy` (which must deliver it intact)."""
    async with _client() as client:
        started = time.monotonic()
        response = await client.get(f"{proxy.url}/body")
    assert response.content == BODY
    return time.monotonic() - started


async def test_slow_delays_the_response_start(proxy: FaultProxy) -> None:
    proxy.set("slow", delay_s=0.4)
    assert await _timed_body(proxy) >= 0.4


async def test_bandwidth_limits_the_rate(proxy: FaultProxy) -> None:
    proxy.set("bandwidth", bytes_per_s=40000)
    assert await _timed_body(proxy) >= 0.4  # 20 kB at 40 kB/s is 0.5 s


async def test_reset_after_bytes(proxy: FaultProxy) -> None:
    proxy.set("reset", after_bytes=100)
    async with _client() as client:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await client.get(f"{proxy.url}/body")


async def test_truncate_closes_cleanly_mid_body(proxy: FaultProxy) -> None:
    proxy.set("truncate", after_bytes=1000)
    async with _client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{proxy.url}/body")


async def test_truncate_raw_bytes_then_eof(proxy: FaultProxy) -> None:
    proxy.set("truncate", after_bytes=50)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /body HTTP/1.1\r\nHost: x\r\n\r\n")
    received = await asyncio.wait_for(reader.read(), 5)  # EOF, not a reset
    writer.close()
    assert len(received) == 50


async def test_unknown_mode_or_missing_params_are_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        proxy.set("slow")
    with pytest.raises(ValueError):
        proxy.set("flaky")  # type: ignore[arg-type]
