"""Who may use the HTTP doors: `ALLOW_FROM` and `ACCESS_TOKENS` as one aiohttp middleware.

- `/ws/call`, `/webrtc/*` and `/metrics` refuse a peer outside `ALLOW_FROM` with 403
  before anything else happens (no WebSocket upgrade, no body read, no peer connection).
  The peer is `request.remote`, the direct TCP peer: behind a reverse proxy, ALLOW_FROM
  names the proxy (forwarded headers are not trusted, a client could forge them).
- When `ACCESS_TOKENS` is set, `/ws/call`, `/webrtc/offer` and `/webrtc/config` also need
  `Authorization: Bearer <token>` or `?token=<token>` (a browser cannot set headers on a
  WebSocket); else 401. Tokens are compared in constant time.
- `/healthz` and `/readyz` stay open for probes (they reveal only "ok" and the backend
  kinds); the static page (`/`, `/assets/*`) stays open too: it holds no secret, and every
  call it places goes through the guarded endpoints.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from sip.access import AddressFilter

__all__ = ["GUARDED_PREFIXES", "TOKEN_PATHS", "HttpAccess", "middleware"]

log = logging.getLogger("bridge.access")

GUARDED_PREFIXES: Final = ("/ws/", "/webrtc/", "/metrics")
"""Paths (by prefix) that only peers inside ALLOW_FROM may use."""
TOKEN_PATHS: Final = frozenset({"/ws/call", "/webrtc/offer", "/webrtc/config"})
"""Paths that also need a token when ACCESS_TOKENS is set."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpAccess:
    """The ALLOW_FROM and token checks of the HTTP doors."""

    def __init__(self, allow_from: AddressFilter, tokens: Sequence[str] = ()) -> None:
        self.allow_from = allow_from
        self._tokens = tuple(t.encode("utf-8") for t in tokens if t)

    @property
    def tokens_required(self) -> bool:
        """True when ACCESS_TOKENS is set."""
        return bool(self._tokens)

    def token_ok(self, presented: str | None) -> bool:
        """True when no token is required or `presented` is one of the tokens. Every token
        is compared (constant time each), so timing tells nothing about which one matched."""
        if not self._tokens:
            return True
        if not presented:
            return False
        candidate = presented.encode("utf-8", "replace")
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        return matched

    @staticmethod
    def presented_token(request: web.Request) -> str | None:
        """The `Authorization: Bearer` token, else the `token` query parameter."""
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return request.query.get("token")

    def refusal(self, request: web.Request) -> web.Response | None:
        """The 403/401 for `request`, or None when it may go on."""
        path = request.path
        if not path.startswith(GUARDED_PREFIXES):
            return None
        peer = request.remote or ""
        if not self.allow_from.allows(peer):
            log.info("http refused (403, not in ALLOW_FROM) peer=%s path=%s", peer, path)
            return web.json_response({"error": "forbidden"}, status=403)
        if path in TOKEN_PATHS and not self.token_ok(self.presented_token(request)):
            log.info("http refused (401, no valid token) peer=%s path=%s", peer, path)
            return web.json_response(
                {"error": "a valid access token is required"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="voicebridge"'},
            )
        return None


def middleware(access: HttpAccess) -> Middleware:
    """An aiohttp middleware that answers `access.refusal()` before any handler runs."""

    @web.middleware
    async def check_access(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = access.refusal(request)
        if refused is not None:
            return refused
        return await handler(request)

    return check_access
