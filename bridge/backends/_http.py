"""Shared plumbing for the HTTP backends: one base class (pooled client, readiness probe,
close) and one error mapping."""

from __future__ import annotations

import httpx

from bridge.backends.base import BackendError, ErrorKind

_DETAIL_CHARS = 200


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
    raise BackendError(backend, url, "http", detail)


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


class HttpBackend:
    """A backend that is a client of one server: one pooled httpx client, `ready()` as a
    GET on the server's `health_path`, nothing to warm up, `aclose()` closes the pool."""

    name: str
    health_path = "/"
    """What the server answers with 2xx once it can serve (set by each subclass)."""

    def __init__(self, url: str, endpoint_path: str, timeout_s: float, pool_size: int) -> None:
        self.url = url
        self.endpoint = join_url(url, endpoint_path)
        self._client = make_client(timeout_s, pool_size)

    def malformed(self, detail: str) -> BackendError:
        """The error for a reply this backend cannot make sense of."""
        return BackendError(self.name, self.endpoint, "malformed", detail)

    async def ready(self) -> bool:
        """True when the server answers `GET health_path` with 2xx."""
        return await probe(self._client, join_url(self.url, self.health_path))

    async def warmup(self) -> None:
        """Nothing to load on this side."""

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
