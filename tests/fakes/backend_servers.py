"""In-test backend servers speaking whisper.cpp's `/inference` and Ollama's `/api/chat` wire
formats, plus an OpenAI-style SSE server for the failure cases a real server will not produce.

Each double records what it received so tests can assert the request shape, and has a
`mode` that makes it misbehave the way real servers do: slow, erroring, truncated, garbage.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from media.wav import read_wav


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run `app` on 127.0.0.1 on an ephemeral port; yield its base URL."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def routes(*table: web.RouteDef) -> web.Application:
    """An aiohttp application serving `table` (`web.get(...)`, `web.post(...)`)."""
    app = web.Application()
    app.add_routes(table)
    return app


async def _abort(request: web.Request, response: web.StreamResponse | None = None) -> None:
    """Drop the connection mid-reply, as a crashing server does."""
    if response is not None:
        await response.write(b"")
    assert request.transport is not None
    request.transport.abort()


@dataclass
class WhisperCppDouble:
    """whisper.cpp `server`: multipart `file` + form fields in, `{"text": ...}` out."""

    text: str = " The quick brown fox jumps over the lazy dog.\n"
    mode: str = "ok"  # ok | slow | http500 | error_json | garbage | no_text | truncated
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def app(self) -> web.Application:
        return routes(web.get("/", self._index), web.post("/inference", self._inference))

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(
            text="<html><body>whisper.cpp server</body></html>", content_type="text/html"
        )

    async def _inference(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            received: dict[str, Any] = {"content_type": request.content_type, "fields": {}}
            reader = await request.multipart()
            async for part in reader:
                assert isinstance(part, BodyPartReader)
                name = part.name or ""
                if part.filename is not None:
                    payload = bytes(await part.read())
                    received["file"] = {
                        "name": name,
                        "filename": part.filename,
                        "content_type": part.headers.get("Content-Type"),
                        "pcm_rate": read_wav(payload),
                    }
                else:
                    received["fields"][name] = await part.text()
            self.requests.append(received)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return await self._reply(request)
        finally:
            self.in_flight -= 1

    async def _reply(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "slow":
            await asyncio.sleep(30)
        if self.mode == "http500":
            return web.Response(status=500, text="Internal Server Error")
        if self.mode == "error_json":
            return web.json_response({"error": "failed to read WAV file"}, status=400)
        if self.mode == "garbage":
            return web.Response(text="<html>proxy error</html>", content_type="application/json")
        if self.mode == "no_text":
            return web.json_response({"segments": []})
        if self.mode == "truncated":
            response = web.StreamResponse(headers={"Content-Length": "200"})
            response.content_type = "application/json"
            await response.prepare(request)
            await response.write(b'{"text": " The qu')
            await _abort(request, response)
            return response
        return web.json_response({"text": self.text})


OLLAMA_TOKENS = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]


def _ollama_chunk(model: str, content: str) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": "2026-11-24T10:00:00.000000000Z",
        "message": {"role": "assistant", "content": content},
        "done": False,
    }


def _ollama_final(model: str, count: int) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": "2026-11-24T10:00:01.000000000Z",
        "message": {"role": "assistant", "content": ""},
        "done_reason": "stop",
        "done": True,
        "total_duration": 4883583458,
        "load_duration": 1334875,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 342546000,
        "eval_count": count,
        "eval_duration": 4535599000,
    }


@dataclass
class OllamaDouble:
    """Ollama `/api/chat` streaming NDJSON, `/api/tags` for readiness."""

    tokens: list[str] = field(default_factory=lambda: list(OLLAMA_TOKENS))
    mode: str = "ok"  # ok | slow | http500 | not_found | garbage | error_line | no_done | truncated
    gate: asyncio.Event | None = None  # when set, hold the reply after the first token until set
    token_delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        return routes(web.get("/api/tags", self._tags), web.post("/api/chat", self._chat))

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "llama3.2:3b", "model": "llama3.2:3b"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"content_type": request.content_type, "body": body})
        model = body.get("model", "")
        if self.mode == "http500":
            return web.json_response({"error": "llama runner process has terminated"}, status=500)
        if self.mode == "not_found":
            return web.json_response({"error": f"model '{model}' not found"}, status=404)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if self.mode == "slow":
            await asyncio.sleep(30)
        try:
            for index, token in enumerate(self.tokens):
                await self._line(response, _ollama_chunk(model, token))
                if index == 0 and self.gate is not None:
                    await self.gate.wait()
                if index == 1 and self.mode in ("garbage", "error_line", "truncated", "no_done"):
                    return await self._misbehave(request, response)
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
            await self._line(response, _ollama_final(model, len(self.tokens)))
        except (ConnectionResetError, ConnectionError):
            self.disconnected.set()
            return response
        await response.write_eof()
        return response

    async def _misbehave(
        self, request: web.Request, response: web.StreamResponse
    ) -> web.StreamResponse:
        if self.mode == "garbage":
            await response.write(b"<html>502 Bad Gateway</html>\n")
        elif self.mode == "error_line":
            await self._line(
                response, {"error": "an unknown error was encountered while running the model"}
            )
        elif self.mode == "truncated":
            await response.write(b'{"model": "llama3.2:3b", "message": {"role": "assis')
            await _abort(request, response)
            return response
        await response.write_eof()
        return response

    @staticmethod
    async def _line(response: web.StreamResponse, obj: dict[str, Any]) -> None:
        await response.write(json.dumps(obj).encode() + b"\n")


@dataclass
class SseDouble:
    """An OpenAI-style `/v1/chat/completions` SSE stream that misbehaves on request."""

    mode: str = "ok"  # ok | no_done | garbage | error_event | http401
    requests: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        return routes(
            web.post("/v1/chat/completions", self._chat), web.get("/v1/models", self._models)
        )

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"headers": dict(request.headers), "body": await request.json()})
        if self.mode == "http401":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ("Hi", " there"):
            event = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        if self.mode == "garbage":
            await response.write(b"data: {not json\n\n")
        elif self.mode == "error_event":
            await response.write(b'data: {"error": {"message": "context length exceeded"}}\n\n')
        elif self.mode == "ok":
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
