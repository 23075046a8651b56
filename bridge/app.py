"""The bridge process: one asyncio loop serving every door, metrics and health.

`Bridge` wires settings, backends, metrics and the `CallManager` into one aiohttp
application: the WebSocket door (`/ws/call`), the WebRTC door (`/webrtc/*`), the browser
page (`/`, `/assets/*`), `/metrics`, `/healthz` and `/readyz`; it starts the SIP door when
`SIP_ENABLED`. `serve()` is what `voicebridge serve` runs: warm the backends, start, print
where to connect, wait for SIGTERM/SIGINT, then drain: admit no new call (SIP 503 with
Retry-After, WebSocket 1013, WebRTC 503, `/readyz` 503) while the calls in progress finish,
for at most `DRAIN_TIMEOUT_S`; then hang up the rest (SIP BYE, WebSocket 1001) and stop
within `SHUTDOWN_GRACE_S`. A second signal skips what is left of the drain. Exit status 0;
2 when a port is already in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import web

from bridge import web_page
from bridge.access_http import HttpAccess, middleware
from bridge.config import Settings
from bridge.doors import webrtc, websocket
from bridge.doors.sip import SipService, start_sip
from bridge.metrics import CONTENT_TYPE_LATEST, Metrics
from bridge.pipeline.fallbacks import Fallbacks
from bridge.pipeline.manager import CallManager
from bridge.pipeline.pools import BackendSet
from bridge.readiness import readiness_report
from sip.access import AddressFilter

__all__ = ["Bridge", "PortInUse", "serve"]

log = logging.getLogger("bridge.app")


class PortInUse(OSError):
    """A port the bridge must listen on is taken; `setting` names the one to change."""

    def __init__(self, port: int, setting: str) -> None:
        super().__init__(errno.EADDRINUSE, f"port {port} is already in use ({setting})")
        self.port = port
        self.setting = setting


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
        if (watch := getattr(backends, "watch", None)) is not None:
            watch(self.metrics.backend_state)  # pipeline_backend_up, from the breakers
        self.fallbacks = Fallbacks.from_settings(settings)
        self.calls = CallManager(settings, backends, self.metrics, self.fallbacks)
        self.access = HttpAccess(AddressFilter.parse(settings.allow_from), settings.access_tokens)
        self.app = web.Application(middlewares=[middleware(self.access)])
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        websocket.register(self.app, self.calls, settings, self.metrics)
        self.webrtc = webrtc.register(self.app, self.calls, settings)
        web_page.register(self.app)
        self._runner: web.AppRunner | None = None
        self._sip: SipService | None = None
        self.port = settings.gateway_port
        self._hurry = asyncio.Event()

    # --- HTTP handlers -------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok" if self.calls.accepting else "draining",
                "calls_active": self.calls.active,
                "tasks": len(asyncio.all_tasks()),  # flat over a long run, or something leaks
            }
        )

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
        """Synthesize the fallback phrases, listen on GATEWAY_HOST:GATEWAY_PORT (port 0
        picks a free one) and start SIP."""
        await self.fallbacks.prepare(self.backends.tts, self.settings.tts_timeout_s)
        self._runner = web.AppRunner(
            self.app, shutdown_timeout=min(2.0, self.settings.shutdown_grace_s), access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.gateway_host, self.settings.gateway_port)
        async with self._undo_on_error(self.settings.gateway_port, "GATEWAY_PORT"):
            await site.start()
        for address in self._runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                self.port = int(address[1])
                break
        if self.settings.sip_enabled:
            async with self._undo_on_error(self.settings.sip_port, "SIP_PORT"):
                self._sip = await start_sip(self.settings, self.calls, self.metrics)

    @contextlib.asynccontextmanager
    async def _undo_on_error(self, port: int, setting: str) -> AsyncIterator[None]:
        """Start-up step: on failure stop the HTTP server again; a taken port is `PortInUse`."""
        try:
            yield
        except OSError as exc:
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(port, setting) from exc
            raise

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

    def drain(self) -> None:
        """Admit no new call; the calls in progress go on (`stop()` waits for them)."""
        self.calls.drain()

    def hurry(self) -> None:
        """End the drain now: `stop()` hangs up the calls still in progress at once."""
        self._hurry.set()

    async def stop(self, drain_s: float = 0.0) -> None:
        """Graceful stop, in order: admit no new call; wait up to `drain_s` for the calls in
        progress to end by themselves (cut short by `hurry()`); hang up the rest (SIP BYE,
        WebSocket 1001) within SHUTDOWN_GRACE_S; stop the SIP door (its own stop is
        bounded, so it is awaited, never cancelled, and its sockets always close); close
        the HTTP server and the backends. A step that fails is logged, and the next runs."""
        self.drain()
        if drain_s > 0 and self.calls.active:
            log.info("draining %d call(s) for up to %.0fs", self.calls.active, drain_s)
            hurry = asyncio.ensure_future(self._hurry.wait())
            idle = asyncio.ensure_future(self.calls.wait_idle(drain_s))
            await asyncio.wait((hurry, idle), return_when=asyncio.FIRST_COMPLETED)
            for task in (hurry, idle):
                task.cancel()
            await asyncio.gather(hurry, idle, return_exceptions=True)
            if self.calls.active:
                log.info("drain over: hanging up %d call(s)", self.calls.active)
        grace = self.settings.shutdown_grace_s
        deadline = time.monotonic() + grace
        try:
            await self.calls.shutdown(grace * 0.6)
        except Exception:
            log.exception("stop: ending the calls failed")
        if self._sip is not None:
            try:
                await self._sip.stop()
            except Exception:
                log.exception("stop: the SIP door did not stop cleanly")
            self._sip = None
        if self._runner is not None:
            try:
                await asyncio.wait_for(
                    self._runner.cleanup(), max(0.1, deadline - time.monotonic())
                )
            except Exception:
                log.exception("stop: the HTTP server did not close cleanly")
            self._runner = None
        try:
            await asyncio.wait_for(self.backends.aclose(), max(0.1, deadline - time.monotonic()))
        except Exception:
            log.exception("stop: closing the backends failed")


def _local_address() -> str:
    """This host's outward-facing address (no packet is sent), or 127.0.0.1."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        return str(s.getsockname()[0])
    return "127.0.0.1"


async def serve(settings: Settings) -> int:
    """Run the bridge until SIGTERM/SIGINT, drain and stop; return the process exit status."""
    from bridge.backends import build_backends

    backends = build_backends(settings)
    log.info("warming up backends")
    started = time.monotonic()
    await backends.warmup()
    log.info("backends warm in %.1fs", time.monotonic() - started)
    bridge = Bridge(settings, backends)
    try:
        await bridge.start()
    except PortInUse as exc:
        print(f"voicebridge serve: {exc.strerror}", file=sys.stderr, flush=True)
        await backends.aclose()
        return 2

    signals = 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info(
                "%s: draining %d call(s) for up to %.0fs (DRAIN_TIMEOUT_S); again to end now",
                signal.Signals(signum).name,
                bridge.calls.active,
                settings.drain_timeout_s,
            )
            bridge.drain()
            stop.set()
        else:
            log.info("%s again: ending the calls now", signal.Signals(signum).name)
            bridge.hurry()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    urls = bridge.urls()
    print("voicebridge ready", flush=True)
    for label in ("http", "websocket", "metrics", "sip"):
        if label in urls:
            print(f"  {label:<10} {urls[label]}", flush=True)
    try:
        await stop.wait()
        await bridge.stop(settings.drain_timeout_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
