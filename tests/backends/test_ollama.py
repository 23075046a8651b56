"""OllamaLLM against an in-test server speaking Ollama's NDJSON `/api/chat` stream."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from bridge.backends import Message, OllamaLLM
from tests.backends.helpers import drain, error_from
from tests.fakes.backend_servers import OLLAMA_TOKENS, OllamaDouble, serve
from tests.support import free_port

MESSAGES: list[Message] = [
    {"role": "system", "content": "You are a helpful call center agent."},
    {"role": "user", "content": "Hi, I need help with my bill."},
]


async def test_streams_tokens_and_sends_ollamas_request_shape() -> None:
    double = OllamaDouble()
    async with serve(double.app()) as url:
        llm = OllamaLLM(url, "llama3.2:3b", max_tokens=42, timeout_s=5)
        try:
            tokens = [token async for token in llm.stream(MESSAGES)]
            assert await llm.ready()
        finally:
            await llm.aclose()
    assert tokens == OLLAMA_TOKENS
    (request,) = double.requests
    assert request["content_type"] == "application/json"
    assert request["body"] == {
        "model": "llama3.2:3b",
        "messages": MESSAGES,
        "stream": True,
        "options": {"num_predict": 42},
    }


async def test_tokens_arrive_before_the_reply_is_finished() -> None:
    gate = asyncio.Event()
    double = OllamaDouble(gate=gate)
    async with serve(double.app()) as url:
        llm = OllamaLLM(url, "llama3.2:3b", timeout_s=5)
        try:
            async with aclosing(llm.stream(MESSAGES)) as stream:
                first = await asyncio.wait_for(anext(stream), 3)
                gate.set()
                rest = [token async for token in stream]
        finally:
            await llm.aclose()
    assert [first, *rest] == OLLAMA_TOKENS


async def test_stopping_early_closes_the_connection() -> None:
    double = OllamaDouble(token_delay_s=0.05, tokens=["word"] * 100)
    async with serve(double.app()) as url:
        llm = OllamaLLM(url, "llama3.2:3b", timeout_s=5)
        try:
            async with aclosing(llm.stream(MESSAGES)) as stream:
                async for _ in stream:
                    break
            await asyncio.wait_for(double.disconnected.wait(), 3)
        finally:
            await llm.aclose()


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("slow", "timeout"),
        ("http500", "http"),
        ("not_found", "http"),
        ("garbage", "malformed"),
        ("error_line", "http"),
        ("no_done", "malformed"),
        ("truncated", "malformed"),
    ],
)
async def test_failures_raise_typed_errors(mode: str, kind: str) -> None:
    double = OllamaDouble(mode=mode)
    received: list[str] = []
    async with serve(double.app()) as url:
        llm = OllamaLLM(url, "llama3.2:3b", timeout_s=0.5)
        error = await error_from(llm, lambda: drain(llm.stream(MESSAGES), received))
    assert (error.kind, error.backend, error.url) == (kind, "ollama", f"{url}/api/chat")
    if mode in ("garbage", "error_line", "no_done", "truncated"):
        assert received == OLLAMA_TOKENS[:2]  # what came before the fault was delivered


async def test_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    llm = OllamaLLM(url, "llama3.2:3b", timeout_s=2)
    error = await error_from(llm, lambda: drain(llm.stream(MESSAGES)), ready_after=False)
    assert (error.kind, error.url) == ("connect", f"{url}/api/chat")
