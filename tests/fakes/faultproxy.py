"""A fault-injection TCP proxy for tests, in the spirit of Shopify's toxiproxy.

Put it between a client (the bridge, a backend client) and a server (a double from
`tests/fakes/backend_servers.py` or a real service), point the client at `proxy.url`, and
make the link misbehave with `proxy.set(mode, **params)`:

- `"pass"`: forward both ways (the default).
- `"down"`: the listening socket is closed, so new connections are refused
  (`ECONNREFUSED`); live connections are reset. Leaving `down` listens on the same port again.
- `"blackhole"`: accept and read, never forward, never answer.
- `"slow"`, `delay_s=`: wait `delay_s` before each response starts (the first upstream
  bytes after the client spoke).
- `"bandwidth"`, `bytes_per_s=`: the response flows at that rate.
- `"reset"`, `after_bytes=`: forward that many response bytes, then RST the client.
- `"truncate"`, `after_bytes=`: forward that many response bytes, then close cleanly (FIN).

A mode applies to new connections at once and to live ones at their next chunk, so a test
can flip it in the middle of a call; `reset` and `truncate` count `after_bytes` from the
moment the mode was set. `proxy.connections` counts accepted connections.

    async with FaultProxy("127.0.0.1", upstream_port) as proxy:
        client = WhisperCppASR(proxy.url)
        proxy.set("blackhole")
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import Literal

__all__ = ["MODES", "FaultProxy", "Mode"]

Mode = Literal["pass", "down", "blackhole", "slow", "bandwidth", "reset", "truncate"]
MODES: tuple[str, ...] = ("pass", "down", "blackhole", "slow", "bandwidth", "reset", "truncate")
_PARAMS: dict[str, tuple[str, ...]] = {
    "slow": ("delay_s",),
    "bandwidth": ("bytes_per_s",),
    "reset": ("after_bytes",),
    "truncate": ("after_bytes",),
}
_CHUNK = 65536
_BANDWIDTH_SLICE_S = 0.05


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN (SO_LINGER on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: FaultProxy, client_w: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client_w = client_w
        self.upstream_w: asyncio.StreamWriter | None = None
        self.awaiting_response = False
        self.generation = -1
        self.sent_in_generation = 0

    def kill(self) -> None:
        _rst(self.client_w)
        if self.upstream_w is not None:
            self.upstream_w.transport.abort()


class FaultProxy:
    """A TCP proxy from `127.0.0.1:<port>` to `upstream_host:upstream_port` whose link
    misbehaves on command (see the module docstring for the modes)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self.mode: Mode = "pass"
        self.params: dict[str, float] = {}
        self.connections = 0
        """Client connections accepted so far."""
        self._generation = 0
        self._server: asyncio.Server | None = None
        self._starting: asyncio.Task[None] | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`: what the client under test should use."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on an ephemeral port (kept for the proxy's whole life)."""
        self._listen()
        await self._await_listening()

    async def stop(self) -> None:
        """Stop listening and reset every live connection."""
        await self._await_listening()
        self._close_listener()
        for link in list(self._links):
            link.kill()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def set(self, mode: Mode, **params: float) -> None:
        """Switch the link to `mode` now (see the module docstring for `params`)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        needed = _PARAMS.get(mode, ())
        if set(params) != set(needed):
            raise ValueError(f"mode {mode!r} takes {needed}, got {tuple(params)}")
        was_down = self.mode == "down"
        self.mode = mode
        self.params = dict(params)
        self._generation += 1
        if mode == "down" and not was_down:
            self._close_listener()
            for link in list(self._links):
                link.kill()
        elif mode != "down" and was_down:
            self._listen()

    # --- listening ---

    def _listen(self) -> None:
        """Bind and listen synchronously, so a connect right after `set()` is never refused;
        the asyncio server that accepts from the backlog starts on the next loop turn."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._starting = asyncio.get_running_loop().create_task(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._accept, sock=sock)

    async def _await_listening(self) -> None:
        if self._starting is not None:
            await self._starting

    def _close_listener(self) -> None:
        starting, server = self._starting, self._server
        self._starting = self._server = None
        if server is not None:
            server.close()
        elif starting is not None:
            starting.add_done_callback(lambda _: self._close_late())

    def _close_late(self) -> None:
        if self.mode == "down" and self._server is not None:
            self._server.close()
            self._server = None

    # --- one connection ---

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        link = _Link(self, client_w)
        self._links.add(link)
        try:
            await self._run(link, client_r, client_w)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._links.discard(link)
            self._tasks.discard(task)
            if not client_w.is_closing():
                client_w.transport.abort()
            if link.upstream_w is not None:
                link.upstream_w.transport.abort()

    async def _run(
        self, link: _Link, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        if self.mode == "down":
            link.kill()
            return
        if self.mode == "blackhole":
            while await client_r.read(_CHUNK):
                pass
            return
        try:
            upstream_r, upstream_w = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            link.kill()  # the real server is down: the client sees its connection reset
            return
        link.upstream_w = upstream_w
        up = asyncio.ensure_future(self._pump_up(link, client_r, upstream_w))
        down = asyncio.ensure_future(self._pump_down(link, upstream_r, client_w))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if up.done() and not up.exception() and not down.done():
                await down  # the client half-closed: let the response finish
        finally:
            for pump in (up, down):
                pump.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def _pump_up(
        self, link: _Link, client_r: asyncio.StreamReader, upstream_w: asyncio.StreamWriter
    ) -> None:
        while data := await client_r.read(_CHUNK):
            if self.mode == "blackhole":
                continue
            link.awaiting_response = True
            upstream_w.write(data)
            await upstream_w.drain()
        if upstream_w.can_write_eof():
            upstream_w.write_eof()

    async def _pump_down(
        self, link: _Link, upstream_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        while data := await upstream_r.read(_CHUNK):
            if self.mode == "blackhole":
                continue
            if self.mode == "slow" and link.awaiting_response:
                await asyncio.sleep(self.params["delay_s"])
            link.awaiting_response = False
            if self.mode in ("reset", "truncate"):
                if await self._cut(link, data, client_w):
                    return
                continue
            if self.mode == "bandwidth":
                await self._throttle(data, client_w)
                continue
            client_w.write(data)
            await client_w.drain()
        client_w.close()

    async def _cut(self, link: _Link, data: bytes, client_w: asyncio.StreamWriter) -> bool:
        """Forward up to `after_bytes` of this mode's bytes; True once the link is cut."""
        if link.generation != self._generation:
            link.generation, link.sent_in_generation = self._generation, 0
        room = max(0, int(self.params["after_bytes"]) - link.sent_in_generation)
        if room:
            client_w.write(data[:room])
            await client_w.drain()
            link.sent_in_generation += min(room, len(data))
        if len(data) < room:
            return False
        if self.mode == "reset":
            await asyncio.sleep(0.05)  # let the forwarded bytes reach the client first
            link.kill()
        else:
            client_w.close()
            if link.upstream_w is not None:
                link.upstream_w.transport.abort()
        return True

    async def _throttle(self, data: bytes, client_w: asyncio.StreamWriter) -> None:
        rate = float(self.params["bytes_per_s"])
        step = max(1, int(rate * _BANDWIDTH_SLICE_S))
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            client_w.write(piece)
            await client_w.drain()
            await asyncio.sleep(len(piece) / rate)

    def __repr__(self) -> str:
        upstream = f"{self.upstream_host}:{self.upstream_port}"
        return f"<FaultProxy :{self.port} -> {upstream} {self.mode} {self.params or ''}>"
