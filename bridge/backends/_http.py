"""Shared plumbing for the HTTP backends: one base class for a client of one or several
servers (least-busy choice, a circuit breaker per server, retry once on a connect error,
readiness probe, close) and one error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypedDict, TypeVar, Unpack

import httpx

from bridge.backends.base import BackendError, ErrorKind
from bridge.backends.breaker import CircuitBreaker

__all__ = ["BreakerOptions", "HttpBackend", "Server", "split_urls"]

_DETAIL_CHARS = 200
RETRY_DELAY_S = 0.1
"""Before retrying a refused request on the same server (no other server is up)."""

T = TypeVar("T")


class BreakerOptions(TypedDict, total=False):
    """Circuit-breaker settings for every server of one backend."""

    breaker_failures: int
    breaker_cooldown_s: float


def make_client(timeout_s: float, pool_size: int) -> httpx.AsyncClient:
    """An httpx client whose pool holds at most `pool_size` connections.

    Requests beyond the pool wait for a free connection (no pool timeout), so the bridge
    queues them where it can measure them; connect, read and write are bounded by
    `timeout_s` (for a stream: the wait for each next piece).
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, pool=None),
        limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
        follow_redirects=False,
        trust_env=False,
    )


def error_kind(exc: httpx.HTTPError) -> ErrorKind:
    """Classify an httpx failure as one of the `BackendError` kinds."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.HTTPStatusError):
        return "http"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return "malformed"  # a truncated or unparseable HTTP reply
    return "connect"


def translate(exc: httpx.HTTPError, backend: str, url: str) -> BackendError:
    """Turn an httpx exception into the one backend error class."""
    detail = str(exc) or type(exc).__name__
    return BackendError(backend, url, error_kind(exc), detail[:_DETAIL_CHARS])


async def raise_for_status(response: httpx.Response, backend: str, url: str) -> None:
    """Raise `BackendError(kind="http")` with the status and the start of the body."""
    if response.is_success:
        return
    try:
        body = (await response.aread()).decode("utf-8", "replace").strip()
    except httpx.HTTPError:
        body = ""
    detail = f"HTTP {response.status_code}" + (f": {body[:_DETAIL_CHARS]}" if body else "")
    raise BackendError(backend, url, "http", detail, status=response.status_code)


async def probe(client: httpx.AsyncClient, url: str) -> bool:
    """True when a GET on `url` answers 2xx."""
    try:
        response = await client.get(url)
    except httpx.HTTPError:
        return False
    return response.is_success


def join_url(base: str, path: str) -> str:
    """`base` without its trailing slash, then `path`."""
    return base.rstrip("/") + path


def split_urls(url: str) -> list[str]:
    """`WHISPER_URL` and friends: one URL or a comma-separated list of them."""
    urls = [part.strip() for part in url.split(",") if part.strip()]
    if not urls:
        raise ValueError(f"no server URL in {url!r}")
    return urls


def is_server_failure(error: BackendError) -> bool:
    """Does `error` count against the server's breaker? Connect errors, timeouts, malformed
    replies and 5xx (or an error the server reported mid-stream) do; a 4xx is the request's
    fault, and `unavailable` is the breaker's own answer."""
    if error.kind == "unavailable":
        return False
    if error.kind == "http":
        return error.status is None or error.status >= 500
    return True


def _refused(error: BackendError) -> bool:
    """The request never reached the server, so it is safe to send again."""
    return isinstance(error.__cause__, httpx.ConnectError)


@dataclass(eq=False)
class Server:
    """One server behind a backend: its pool, its breaker, its requests in flight."""

    url: str
    endpoint: str
    client: httpx.AsyncClient
    breaker: CircuitBreaker
    in_flight: int = 0


class HttpBackend:
    """A backend that is a client of one or several servers (`url` is a comma-separated
    list). Each request goes to the least-busy server whose breaker is closed (or to one due
    its half-open probe); a request refused at connect is retried once, elsewhere if it can.
    `ready()` GETs each server's `health_path`; `aclose()` closes the pools."""

    name: str
    health_path = "/"
    """What the server answers with 2xx once it can serve (set by each subclass)."""

    def __init__(
        self,
        url: str,
        endpoint_path: str,
        timeout_s: float,
        pool_size: int,
        **breaker: Unpack[BreakerOptions],
    ) -> None:
        self.url = url
        failures = breaker.get("breaker_failures", 3)
        cooldown_s = breaker.get("breaker_cooldown_s", 10.0)
        self.servers = [
            Server(
                base,
                join_url(base, endpoint_path),
                make_client(timeout_s, pool_size),
                CircuitBreaker(failures, cooldown_s, on_change=self._breaker_changed),
            )
            for base in split_urls(url)
        ]
        self.endpoint = self.servers[0].endpoint
        self.max_concurrency = pool_size * len(self.servers)
        """Requests all servers take at once: `pool_size` each (see `backend_concurrency`)."""
        self._watchers: list[Callable[[bool], None]] = []
        self._turn = itertools.count()

    @property
    def up(self) -> bool:
        """True while at least one server's breaker is closed."""
        return any(server.breaker.up for server in self.servers)

    def watch(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(up)` now and whenever `up` changes (for `pipeline_backend_up`)."""
        self._watchers.append(callback)
        callback(self.up)

    def _breaker_changed(self, _server_up: bool) -> None:
        for callback in self._watchers:
            callback(self.up)

    def malformed(self, server: Server, detail: str) -> BackendError:
        """The error for a reply from `server` this backend cannot make sense of."""
        return BackendError(self.name, server.endpoint, "malformed", detail)

    # --- choosing a server ---

    def _pick(self, avoid: Server | None = None) -> Server | None:
        """The server for the next request, its breaker slot taken; None when every
        breaker (but `avoid`'s) is open."""
        servers = [s for s in self.servers if s is not avoid]
        for server in servers:
            if server.breaker.probe_due() and server.breaker.acquire():
                return server
        closed = [s for s in servers if s.breaker.state == "closed"]
        if not closed:
            return None
        start = next(self._turn) % len(closed)  # ties go round the list
        rotated = closed[start:] + closed[:start]
        return min(rotated, key=lambda s: s.in_flight)

    def _unavailable(self) -> BackendError:
        return BackendError(self.name, self.url, "unavailable", "circuit breaker open")

    async def _retry_server(self, failed: Server) -> Server | None:
        """Where to resend a refused request: another server, else the same one shortly."""
        other = self._pick(avoid=failed)
        if other is not None:
            return other
        await asyncio.sleep(RETRY_DELAY_S)
        return self._pick()

    # --- one request ---

    async def _attempt(self, server: Server, op: Callable[[Server], Awaitable[T]]) -> T:
        server.in_flight += 1
        try:
            result = await op(server)
        except httpx.HTTPError as exc:
            error = translate(exc, self.name, server.endpoint)
            self._judge(server, error)
            raise error from exc
        except BackendError as error:
            self._judge(server, error)
            raise
        except BaseException:
            server.breaker.release()
            raise
        finally:
            server.in_flight -= 1
        server.breaker.success()
        return result

    @staticmethod
    def _judge(server: Server, error: BackendError) -> None:
        if is_server_failure(error):
            server.breaker.failure()
        else:
            server.breaker.success()  # it answered, sanely, with a 4xx

    async def _call(self, op: Callable[[Server], Awaitable[T]]) -> T:
        """Run the idempotent request `op` on a server; once more if it was refused."""
        server = self._pick()
        if server is None:
            raise self._unavailable()
        try:
            return await self._attempt(server, op)
        except BackendError as error:
            if not _refused(error):
                raise
            retry = await self._retry_server(server)
            if retry is None:
                raise
        return await self._attempt(retry, op)

    async def _stream(
        self, op: Callable[[Server], AsyncIterator[str]]
    ) -> AsyncGenerator[str, None]:
        """Yield `op`'s pieces from a server; a stream refused before its first piece is
        retried once, never after a piece was yielded."""
        server = self._pick()
        if server is None:
            raise self._unavailable()
        retried = False
        while True:
            yielded = False
            server.in_flight += 1
            try:
                async with contextlib.aclosing(op(server)) as pieces:  # type: ignore[type-var]
                    async for piece in pieces:
                        yielded = True
                        yield piece
            except httpx.HTTPError as exc:
                error = translate(exc, self.name, server.endpoint)
                self._judge(server, error)
                error.__cause__ = exc
            except BackendError as exc:
                self._judge(server, exc)
                error = exc
            except BaseException:
                if yielded:
                    server.breaker.success()  # the consumer stopped a healthy stream
                else:
                    server.breaker.release()
                raise
            else:
                server.breaker.success()
                return
            finally:
                server.in_flight -= 1
            if yielded or retried or not _refused(error):
                raise error
            retried = True
            retry = await self._retry_server(server)
            if retry is None:
                raise error
            server = retry

    # --- readiness and close ---

    async def ready(self) -> bool:
        """True when some server's breaker is closed and it answers `GET health_path` with
        2xx. A server whose cooldown is over takes the check as its half-open probe, so an
        idle bridge (no calls while it is not ready) still finds its servers back."""
        results = await asyncio.gather(*(self._server_ready(s) for s in self.servers))
        return any(results)

    async def _server_ready(self, server: Server) -> bool:
        health = join_url(server.url, self.health_path)
        if server.breaker.state == "closed":
            return await probe(server.client, health)
        if not server.breaker.acquire():
            return False
        try:
            ok = await probe(server.client, health)
        except BaseException:
            server.breaker.release()
            raise
        if ok:
            server.breaker.success()
        else:
            server.breaker.failure()
        return ok

    async def warmup(self) -> None:
        """Nothing to load on this side."""

    async def aclose(self) -> None:
        """Close every server's connection pool."""
        await asyncio.gather(*(server.client.aclose() for server in self.servers))
