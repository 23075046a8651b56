"""The browser page: `GET /` and `GET /assets/...` from the built page (`bridge/web/dist`).

The page is the WebRTC door's client, but serving its files is not the door's business:
`bridge.app` registers these routes next to the doors. Until `make web` has built the page,
`/` answers 503 with a page that says how to build it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

__all__ = ["WEB_DIST", "WebPage", "register"]

WEB_DIST: Final = Path(__file__).resolve().parent / "web" / "dist"
"""Where `make web` (scripts/build-web.sh) puts the built page."""

_NOT_BUILT: Final = """<!doctype html><html><head><meta charset="utf-8">
<title>voicebridge: page not built</title></head><body>
<h1>The browser page is not built</h1>
<p>Run <code>make web</code> (or <code>make install</code>) to build <code>bridge/web/dist</code>,
then reload. The WebSocket and SIP doors work without it.</p></body></html>
"""


class WebPage:
    """Serves the page's `index.html` and its hashed assets from `web_root`."""

    def __init__(self, web_root: Path = WEB_DIST) -> None:
        self.web_root = web_root

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        """`GET /`: the page, or a 503 page that says how to build it."""
        index = self.web_root / "index.html"
        if not index.is_file():
            return web.Response(status=503, text=_NOT_BUILT, content_type="text/html")
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

    async def handle_asset(self, request: web.Request) -> web.StreamResponse:
        """`GET /assets/...`: the page's hashed bundles (cached for good)."""
        assets = (self.web_root / "assets").resolve()
        path = (assets / request.match_info["path"]).resolve()
        if not path.is_relative_to(assets) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(
            path, headers={"Cache-Control": "public, max-age=31536000, immutable"}
        )


def register(app: web.Application, web_root: Path = WEB_DIST) -> WebPage:
    """Add `/` and `/assets/{path}` to `app`."""
    page = WebPage(web_root)
    app.router.add_get("/", page.handle_index)
    app.router.add_get("/assets/{path:.+}", page.handle_asset)
    return page
