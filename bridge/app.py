"""The bridge process: one asyncio loop serving every door, metrics and health.

`Bridge` wires settings, backends, metrics and the `CallManager` into one aiohttp
application: the WebSocket door (`/ws/call`), the WebRTC door (`/webrtc/*`), the browser
page (`/`, `/assets/*`), `/metrics`, `/healthz` and `/readyz`; it starts the SIP door when
`SIP_ENABLED`. `serve()` is what `voicebridge serve` runs: warm the backends, start, print
where to connect, wait for SIGTERM/SIGINT, shut down within `SHUTDOWN_GRACE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from typing import Protocol

from aiohttp import web

from bridge import web_page
from bridge.config import Settings
from bridge.doors import webrtc, websocket
from bridge.doors.sip import SipService, start_sip
from bridge.metrics import CONTENT_TYPE_LATEST, Metrics
from bridge.pipeline.manager import CallManager
from bridge.pipeline.pools import BackendSet
from bridge.readiness import readiness_report

__all__ = ["Bridge", "serve"]

log = logging.getLogger("bridge.app")


class ManagedBackends(BackendSet, Protocol):
    """`bridge.backends.Backends` as the app uses it."""

    async def warmup(self) -> None: ...

    async def aclose(self) -> None: ...


class Bridge:
    """The bridge's HTTP app, call manager and optional SIP door, started and stopped as one."""

    def __init__(
        self, settings: Settings, backends: ManagedBackends, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.metrics = metrics if metrics is not None else Metrics()
        self.calls = CallManager(settings, backends, self.metrics)
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        websocket.register(self.app, self.calls, settings, self.metrics)
        self.webrtc = webrtc.register(self.app, self.calls, settings)
        web_page.register(self.app)
        self._runner: web.AppRunner | None = None
        self._sip: SipService | None = None
        self.port = settings.gateway_port

    # --- HTTP handlers -------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "calls_active": self.calls.active})

    async def _readyz(self, request: web.Request) -> web.Response:
        """200 when ASR, LLM and the default TTS engine answer (`bridge.readiness`)."""
        backends = self.backends
        ready, body = await readiness_report(
            backends.asr,
            backends.llm,
            backends.tts,
            default_tts_engine=self.settings.default_tts_engine,
            accepting=self.calls.accepting,
        )
        return web.json_response(body, status=200 if ready else 503)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on GATEWAY_HOST:GATEWAY_PORT (port 0 picks a free one) and start SIP."""
        self._runner = web.AppRunner(
            self.app, shutdown_timeout=min(2.0, self.settings.shutdown_grace_s), access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.gateway_host, self.settings.gateway_port)
        await site.start()
        for address in self._runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                self.port = int(address[1])
                break
        if self.settings.sip_enabled:
            self._sip = await start_sip(self.settings, self.calls, self.metrics)

    @property
    def sip_running(self) -> bool:
        """True when the SIP door was started."""
        return self._sip is not None

    def urls(self) -> dict[str, str]:
        """Where to connect: HTTP, WebSocket and (when running) SIP."""
        host = self.settings.gateway_host
        shown = host if host not in ("0.0.0.0", "::", "") else _local_address()
        out = {
            "http": f"http://{shown}:{self.port}/",
            "websocket": f"ws://{shown}:{self.port}{websocket.PATH}",
            "metrics": f"http://{shown}:{self.port}/metrics",
        }
        if self._sip is not None:
            sip_host = self.settings.sip_public_host or (
                self.settings.sip_host
                if self.settings.sip_host not in ("0.0.0.0", "::", "")
                else _local_address()
            )
            out["sip"] = f"sip:bot@{sip_host}:{self.settings.sip_port}"
        return out

    async def stop(self) -> None:
        """Graceful stop: refuse new calls, hang up every call (SIP BYE, WebSocket 1001),
        stop SIP, close the HTTP server and the backends; bounded by SHUTDOWN_GRACE_S."""
        grace = self.settings.shutdown_grace_s
        deadline = time.monotonic() + grace
        await self.calls.shutdown(grace * 0.6)
        if self._sip is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sip.stop(), max(0.1, deadline - time.monotonic()))
            self._sip = None
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._runner.cleanup(), max(0.1, deadline - time.monotonic())
                )
            self._runner = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.backends.aclose(), max(0.1, deadline - time.monotonic()))


def _local_address() -> str:
    """This host's outward-facing address (no packet is sent), or 127.0.0.1."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        return str(s.getsockname()[0])
    return "127.0.0.1"


async def serve(settings: Settings) -> int:
    """Run the bridge until SIGTERM/SIGINT; return the process exit status."""
    from bridge.backends import build_backends

    backends = build_backends(settings)
    log.info("warming up backends")
    started = time.monotonic()
    await backends.warmup()
    log.info("backends warm in %.1fs", time.monotonic() - started)
    bridge = Bridge(settings, backends)
    await bridge.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    urls = bridge.urls()
    print("voicebridge ready", flush=True)
    for label in ("http", "websocket", "metrics", "sip"):
        if label in urls:
            print(f"  {label:<10} {urls[label]}", flush=True)
    await stop.wait()
    log.info("signal received: shutting down (grace %.1fs)", settings.shutdown_grace_s)
    await bridge.stop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
