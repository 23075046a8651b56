"""Every HTTP backend client through the fault proxy: each fault gives the right
`BackendError` kind within the timeout, the breaker opens after `BREAKER_FAILURES`, fails
fast while open, closes through its half-open probe; refused requests are retried once;
several servers share the load and a dead one is taken out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from bridge.backends import BackendError, HttpTTS, OllamaLLM, OpenAICompatLLM, WhisperCppASR
from bridge.backends._http import HttpBackend
from media.wav import write_wav
from tests.backends.helpers import drain
from tests.fakes.backend_servers import OllamaDouble, SseDouble, WhisperCppDouble, routes, serve
from tests.fakes.faultproxy import FaultProxy, Mode

TIMEOUT_S = 0.5
FAILURES = 2
COOLDOWN_S = 0.3
MARGIN_S = 2.0  # the machine is loaded
FAST_S = 0.05
BREAKER: dict[str, Any] = {"breaker_failures": FAILURES, "breaker_cooldown_s": COOLDOWN_S}
PCM = np.zeros(1600, dtype=np.int16)
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


async def _synthesize(request: web.Request) -> web.Response:
    await request.json()
    return web.Response(body=write_wav(np.zeros(22050, dtype=np.int16), 22050))


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _tts_app() -> web.Application:
    return routes(web.post("/synthesize", _synthesize), web.get("/healthz", _healthz))


@dataclass
class Kind:
    """One backend client kind: its double, how to make it, how to use it once."""

    name: str
    app: Callable[[], web.Application]
    make: Callable[[str], HttpBackend]
    use: Callable[[Any], Awaitable[object]]


KINDS = [
    Kind(
        "whisper.cpp",
        lambda: WhisperCppDouble().app(),
        lambda url: WhisperCppASR(url, TIMEOUT_S, 4, **BREAKER),
        lambda c: c.transcribe(PCM),
    ),
    Kind(
        "ollama",
        lambda: OllamaDouble().app(),
        lambda url: OllamaLLM(url, "llama3.2:3b", 150, TIMEOUT_S, 4, **BREAKER),
        lambda c: drain(c.stream(MESSAGES)),
    ),
    Kind(
        "openai",
        lambda: SseDouble().app(),
        lambda url: OpenAICompatLLM(url, "m", "", 150, TIMEOUT_S, 4, **BREAKER),
        lambda c: drain(c.stream(MESSAGES)),
    ),
    Kind(
        "tts",
        _tts_app,
        lambda url: HttpTTS("piper", url, None, TIMEOUT_S, 4, **BREAKER),
        lambda c: c.synthesize("Hello."),
    ),
]

FAULTS: list[tuple[Mode, dict[str, float], str]] = [
    ("down", {}, "connect"),
    ("blackhole", {}, "timeout"),
    ("slow", {"delay_s": TIMEOUT_S * 4}, "timeout"),
    ("reset", {"after_bytes": 60}, "connect"),
    ("truncate", {"after_bytes": 60}, "malformed"),
]


async def _proxied(stack: AsyncExitStack, app: web.Application) -> FaultProxy:
    url = await stack.enter_async_context(serve(app))
    return await stack.enter_async_context(FaultProxy("127.0.0.1", int(url.rsplit(":", 1)[1])))


async def _error(use: Awaitable[object]) -> tuple[BackendError, float]:
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await use
    return caught.value, time.monotonic() - started


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize("mode,params,error_kind", FAULTS, ids=[f[0] for f in FAULTS])
async def test_fault_opens_the_breaker_and_the_probe_closes_it(
    stack: AsyncExitStack, kind: Kind, mode: Mode, params: dict[str, float], error_kind: str
) -> None:
    proxy = await _proxied(stack, kind.app())
    client = kind.make(proxy.url)
    stack.push_async_callback(client.aclose)
    await kind.use(client)  # healthy first, with a kept-alive connection
    proxy.set(mode, **params)
    breaker = client.servers[0].breaker
    calls = 0
    while breaker.state == "closed" and calls < FAILURES:  # a refused call is tried twice
        error, elapsed = await _error(kind.use(client))
        calls += 1
        assert error.kind == error_kind, error
        assert elapsed < 2 * TIMEOUT_S + MARGIN_S
    assert breaker.consecutive == FAILURES
    assert breaker.state == "open" and not client.up and not await client.ready()

    error, elapsed = await _error(kind.use(client))
    assert error.kind == "unavailable"
    assert elapsed < FAST_S  # skipped at once, no timeout waited out

    proxy.set("pass")
    await asyncio.sleep(COOLDOWN_S * 1.2)
    await kind.use(client)  # the half-open probe
    assert breaker.state == "closed" and client.up


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_a_refused_request_is_retried_once_on_the_same_server(
    stack: AsyncExitStack, kind: Kind
) -> None:
    proxy = await _proxied(stack, kind.app())
    client = kind.make(proxy.url)
    stack.push_async_callback(client.aclose)
    proxy.set("down")
    asyncio.get_running_loop().call_later(0.01, proxy.set, "pass")  # back before the retry
    await kind.use(client)
    assert proxy.connections == 1
    assert client.servers[0].breaker.consecutive == 0


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_a_refused_request_is_retried_on_another_server(
    stack: AsyncExitStack, kind: Kind
) -> None:
    dead = await _proxied(stack, kind.app())
    alive = await _proxied(stack, kind.app())
    dead.set("down")
    client = kind.make(f"{dead.url}, {alive.url}")
    stack.push_async_callback(client.aclose)
    for _ in range(FAILURES + 2):
        await kind.use(client)
    assert dead.connections == 0 and alive.connections >= 1
    assert client.servers[0].breaker.state == "open" and client.up


async def test_an_llm_stream_is_never_retried_after_a_token(stack: AsyncExitStack) -> None:
    double = OllamaDouble(gate=asyncio.Event())
    proxy = await _proxied(stack, double.app())
    client = OllamaLLM(proxy.url, "llama3.2:3b", 150, TIMEOUT_S, 4, **BREAKER)
    stack.push_async_callback(client.aclose)
    tokens: list[str] = []
    with pytest.raises(BackendError):
        async for token in client.stream(MESSAGES):
            tokens.append(token)
            proxy.set("down")  # resets the live connection mid-reply
            proxy.set("pass")
    assert tokens == ["Hello"]
    assert proxy.connections == 1 and len(double.requests) == 1


async def test_two_asr_servers_one_killed_mid_run(stack: AsyncExitStack) -> None:
    doubles = [WhisperCppDouble(delay_s=0.01), WhisperCppDouble(delay_s=0.01)]
    proxies = [await _proxied(stack, d.app()) for d in doubles]
    asr = WhisperCppASR(
        ",".join(p.url for p in proxies), 2.0, 4, breaker_failures=2, breaker_cooldown_s=60
    )
    stack.push_async_callback(asr.aclose)
    assert asr.max_concurrency == 8
    breaker = asr.servers[0].breaker
    opened: list[int] = []  # requests the dead server had received when its breaker opened
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(asr.max_concurrency)  # the pipeline's pool
    done = 0
    outcomes: list[tuple[float, bool]] = []

    async def one() -> None:
        nonlocal done
        async with gate:
            started = loop.time()
            try:
                await asr.transcribe(PCM)
                outcomes.append((started, True))
            except BackendError:
                outcomes.append((started, False))
            done += 1
            if done == 50:
                proxies[0].set("down")

    def watch(up: bool) -> None:
        if breaker.state == "open" and not opened:
            opened.append(len(doubles[0].requests))
            opened_at.append(loop.time())

    opened_at: list[float] = []
    breaker._on_change = watch
    await asyncio.gather(*(one() for _ in range(100)))

    assert opened, "the dead server's breaker never opened"
    failed = [started for started, ok in outcomes if not ok]
    after = [ok for started, ok in outcomes if started > opened_at[0]]
    assert all(after) and after
    assert len(doubles[0].requests) == opened[0]  # nothing reached it after
    assert len(failed) <= 4  # at most what was in flight on it when it died
    assert len(doubles[0].requests) + len(doubles[1].requests) >= 100 - len(failed)
    print(f"failed while in flight: {len(failed)}; after open: {len(after)} all ok")


async def test_backend_up_metric_and_readiness_follow_the_breaker(stack: AsyncExitStack) -> None:
    from bridge.backends import Backends
    from bridge.metrics import Metrics
    from bridge.readiness import readiness_report

    proxy = await _proxied(stack, WhisperCppDouble().app())
    tts = await _proxied(stack, _tts_app())
    asr = WhisperCppASR(proxy.url, TIMEOUT_S, 4, **BREAKER)
    llm = OllamaLLM((await _proxied(stack, OllamaDouble().app())).url, "m", 150, TIMEOUT_S)
    backends = Backends(asr=asr, llm=llm, tts={"piper": HttpTTS("piper", tts.url)})
    stack.push_async_callback(backends.aclose)
    metrics = Metrics()
    backends.watch(metrics.backend_state)

    def up(key: str) -> float | None:
        return metrics.registry.get_sample_value("pipeline_backend_up", {"backend": key})

    assert (up("asr"), up("llm"), up("tts_piper")) == (1, 1, 1)
    ready, _ = await readiness_report(
        asr, llm, backends.tts, default_tts_engine="piper", accepting=True
    )
    assert ready
    proxy.set("blackhole")
    for _ in range(FAILURES):
        with pytest.raises(BackendError):
            await asr.transcribe(PCM)
    assert up("asr") == 0 and up("llm") == 1
    ready, body = await readiness_report(
        asr, llm, backends.tts, default_tts_engine="piper", accepting=True
    )
    assert not ready and body["backends"]["asr"]["breaker_open"] is True
    proxy.set("pass")
    await asyncio.sleep(COOLDOWN_S * 1.2)
    ready, body = await readiness_report(  # the health check is the half-open probe
        asr, llm, backends.tts, default_tts_engine="piper", accepting=True
    )
    assert ready and up("asr") == 1
