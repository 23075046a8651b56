"""Attacks on a live bridge, each from one address (`ATTACKER`) for a bounded time, each
returning what the attacker got in a few words. Used by the attack tests and
`bench/attacks.py`; all traffic stays on 127.0.0.0/8."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import re
import socket
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable

import aiohttp
import numpy as np

from tests.fakes.bridge_process import ws_frame, ws_upgrade_request
from tests.fakes.pipeline import silence, tone
from tests.security.live import ATTACKER, PCM_META, LiveBridge, sip_invite, sip_options

Attack = Callable[[LiveBridge, float], Awaitable[str]]
_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


def statuses(text: str) -> collections.Counter[int]:
    """The SIP status codes in a tool's `-d` output (or any text with status lines)."""
    return collections.Counter(int(code) for code in re.findall(r"SIP/2\.0 (\d{3}) ", text))


def tool(args: list[str], within_s: float) -> subprocess.CompletedProcess[str]:
    """Run a sipvicious/sipsak command; killed past `within_s`."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=within_s)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(args, -9, out, err)


def svmap(bridge: LiveBridge, source: str = ATTACKER) -> subprocess.CompletedProcess[str]:
    """`svmap -d` (prints every reply) of the bridge's SIP port from `source`."""
    return tool(["svmap", "-d", "-b", source, "-p", str(bridge.sip_port), "127.0.0.1"], 20)


def svwar(bridge: LiveBridge, within_s: float = 20) -> subprocess.CompletedProcess[str]:
    """`svwar` guessing extensions 100-199 plus a few names, by INVITE."""
    args = ["svwar", "-b", ATTACKER, "-p", str(bridge.sip_port), "-m", "INVITE", "-e", "100-199"]
    return tool([*args, "-D", f"--maximumtime={int(within_s) - 2}", "127.0.0.1"], within_s)


def svcrack(
    bridge: LiveBridge, wordlist: str, user: str = "alice", within_s: float = 20
) -> subprocess.CompletedProcess[str]:
    """`svcrack` trying the passwords in the file `wordlist` for `user`, by INVITE."""
    args = ["svcrack", "-b", ATTACKER, "-p", str(bridge.sip_port), "-u", user, "-d", wordlist]
    return tool(
        [*args, "-m", "INVITE", f"--maximumtime={int(within_s) - 2}", "127.0.0.1"], within_s
    )


def found_rows(output: str) -> list[str]:
    """The data rows of a sipvicious result table (`| 100 | reqauth |`), header excluded."""
    rows = [line for line in output.splitlines() if line.startswith("|")]
    return rows[1:]


def _udp_flood(port: int, make: Callable[[], bytes], seconds: float) -> str:
    """Send `make()` datagrams to 127.0.0.1:`port` as fast as possible from ATTACKER for
    `seconds`, counting the status lines that came back."""
    sent = 0
    got: collections.Counter[int] = collections.Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ATTACKER, 0))
        sock.setblocking(False)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                sock.sendto(make(), ("127.0.0.1", port))
                sent += 1
            except BlockingIOError:
                pass
            while True:
                try:
                    got.update(statuses(sock.recv(65535).decode(errors="replace")))
                except (BlockingIOError, ConnectionRefusedError):
                    break
            if sent % 50 == 0:
                time.sleep(0.001)
    finals = {k: v for k, v in sorted(got.items()) if k >= 200}
    return f"{sent} sent, finals {finals or 'none'}"


async def none(bridge: LiveBridge, seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "-"


async def svmap_scan(bridge: LiveBridge, seconds: float) -> str:
    done = await asyncio.to_thread(svmap, bridge)
    return f"replies {dict(statuses(done.stdout)) or 'none'}"


async def svwar_scan(bridge: LiveBridge, seconds: float) -> str:
    done = await asyncio.to_thread(svwar, bridge, max(seconds, 5))
    return f"{len(found_rows(done.stdout))} extensions found"


async def svcrack_scan(bridge: LiveBridge, seconds: float) -> str:
    path = bridge.log.parent / "wordlist.txt"
    path.write_text("\n".join(["1234", "password", "secret", "alice", "letmein", "0000"]) + "\n")
    done = await asyncio.to_thread(svcrack, bridge, str(path), "alice", max(seconds, 5))
    return f"{len(found_rows(done.stdout))} passwords found"


async def sipsak_flood(bridge: LiveBridge, seconds: float) -> str:
    uri = f"sip:bot@127.0.0.1:{bridge.sip_port}"
    done = await asyncio.to_thread(tool, ["sipsak", "-F", "-e", "1000000", "-s", uri], seconds)
    return f"sipsak OPTIONS flood, exit {done.returncode}"


async def invite_flood(bridge: LiveBridge, seconds: float) -> str:
    """INVITEs without an offer, each a new Call-ID, as fast as the socket goes."""

    def make() -> bytes:
        return sip_options(bridge.sip_port, ATTACKER).replace(b"OPTIONS", b"INVITE")

    return await asyncio.to_thread(_udp_flood, bridge.sip_port, make, seconds)


async def unacked_invite_flood(bridge: LiveBridge, seconds: float) -> str:
    """INVITEs with an offer, never ACKed: each would hold a call slot and an RTP port."""
    return await asyncio.to_thread(
        _udp_flood, bridge.sip_port, lambda: sip_invite(bridge.sip_port, ATTACKER), seconds
    )


async def rtp_garbage_flood(bridge: LiveBridge, seconds: float) -> str:
    """RTP-looking packets (old sequence numbers, far-future timestamps) and noise to every
    port of the RTP range."""

    low, high = bridge.rtp_ports

    def flood() -> str:
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((ATTACKER, 0))
            sock.setblocking(False)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for port in range(low, high + 1, 2):
                    header = struct.pack(
                        "!BBHII", 0x80, 0, random.randrange(65536), random.getrandbits(32), 1
                    )
                    packet = header + os.urandom(160) if sent % 2 else os.urandom(60)
                    try:
                        sock.sendto(packet, ("127.0.0.1", port))
                        sent += 1
                    except (BlockingIOError, ConnectionRefusedError):
                        pass
                time.sleep(0.001)
        return f"{sent} packets, nothing back"

    return await asyncio.to_thread(flood)


async def _ws(bridge: LiveBridge) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ATTACKER, 0)))
    ws = await session.ws_connect(bridge.ws_url, max_msg_size=0)
    return session, ws


async def ws_audio_flood(bridge: LiveBridge, seconds: float) -> str:
    """One call pushing caller audio as fast as the socket takes it (reading what comes
    back, so the server's close is seen)."""
    session, ws = await _ws(bridge)
    pushed = 0

    async def read() -> None:
        while (await ws.receive()).type not in _CLOSED:
            pass

    reader = asyncio.ensure_future(read())
    try:
        await ws.send_str(json.dumps(PCM_META))
        end = time.monotonic() + seconds
        frame = os.urandom(640 * 50)
        while time.monotonic() < end and not reader.done():
            await ws.send_bytes(frame)
            pushed += 1
            await asyncio.sleep(0)
        await asyncio.wait([reader], timeout=2)
    except (aiohttp.ClientError, ConnectionError):
        await asyncio.wait([reader], timeout=2)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        code = ws.close_code
        await ws.close()
        await session.close()
    return f"{pushed} s of audio pushed, close {code}"


async def nested_json(bridge: LiveBridge, seconds: float) -> str:
    """Connect again and again with `[` * 100000 as the metadata."""
    codes: collections.Counter[int | None] = collections.Counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            session, ws = await _ws(bridge)
        except aiohttp.WSServerHandshakeError as exc:
            codes[exc.status] += 1
            continue
        try:
            await ws.send_str("[" * 100_000)
            async with asyncio.timeout(5):
                while (await ws.receive()).type not in _CLOSED:
                    pass
        except (TimeoutError, aiohttp.ClientError):
            pass
        codes[ws.close_code] += 1
        await ws.close()
        await session.close()
    return f"closes {dict(codes)}"


async def slow_reader(bridge: LiveBridge, seconds: float) -> str:
    """Raw-socket WebSocket calls that speak, then never read what the bot sends."""

    def run() -> str:
        socks = []
        for _ in range(4):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.bind((ATTACKER, 0))
            s.connect(("127.0.0.1", bridge.http_port))
            s.sendall(ws_upgrade_request("127.0.0.1"))
            s.sendall(ws_frame(1, json.dumps(PCM_META).encode()))
            socks.append(s)
        speech = np.concatenate([tone(0.6), silence(0.5)]).tobytes()
        end = time.monotonic() + seconds
        i = 0
        alive = len(socks)
        while time.monotonic() < end and alive:
            alive = 0
            chunk = speech[(i * 640) % len(speech) :][:640].ljust(640, b"\0")
            for s in socks:
                try:
                    s.setblocking(False)
                    s.send(ws_frame(2, chunk))
                    alive += 1
                except (BlockingIOError, OSError):
                    pass
            i += 1
            time.sleep(0.02)
        for s in socks:
            s.close()
        return f"{len(socks)} calls never reading, {alive} still open at the end"

    return await asyncio.to_thread(run)
