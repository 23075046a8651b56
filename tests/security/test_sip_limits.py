"""SIP floods (issue 12 findings 5 and 7): per-source rate, bounded transactions, bounded
un-ACKed INVITEs, TCP connections per source. Each flood measures the tables it aims at."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from sip import guard as guard_module
from sip import transport as transport_module
from sip.guard import SipGuard
from sip.message import SipResponse
from sip.uas import UserAgentServer
from tests.sip.client import Call, SipClient
from tests.sip.conftest import FAST
from tests.sip.fakeapp import RecordingApp


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


async def _server(app: RecordingApp, guard: SipGuard) -> UserAgentServer:
    server = UserAgentServer(app, "127.0.0.1", 0, timers=FAST, stop_timeout_s=0.3, guard=guard)
    await server.start()
    return server


@pytest.fixture
async def server(app: RecordingApp) -> AsyncIterator[UserAgentServer]:
    uas = await _server(app, SipGuard())
    yield uas
    await uas.stop()


async def _statuses(client: SipClient, wait_s: float = 0.5) -> list[int]:
    seen: list[int] = []
    while True:
        try:
            message = await client.recv(wait_s)
        except TimeoutError:
            return seen
        if isinstance(message, SipResponse) and message.status >= 200:
            seen.append(message.status)


def test_default_bounds() -> None:
    assert guard_module.MAX_TRANSACTIONS_PER_SOURCE == 2000
    assert guard_module.MAX_TRANSACTIONS == 20000
    assert guard_module.MAX_UNACKED_INVITES_PER_SOURCE == 200
    assert transport_module.TCP_MAX_CONNECTIONS_PER_SOURCE == 200


async def test_rate_limit_drops_and_logs_once(
    app: RecordingApp, caplog: pytest.LogCaptureFixture
) -> None:
    uas = await _server(app, SipGuard.build(max_requests_per_s=10))
    try:
        async with SipClient(uas.local_port) as client:
            with caplog.at_level(logging.WARNING, logger="sip.uas"):
                for _ in range(60):
                    client.send(Call(client).request("OPTIONS"))
                statuses = await _statuses(client)
        assert 10 <= len(statuses) <= 20  # the burst, plus what refilled meanwhile
        assert set(statuses) == {200}
        assert uas.guard.dropped == 60 - len(statuses)
        lines = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert 1 <= len(lines) <= 2  # one line per source per interval, not per request
    finally:
        await uas.stop()


async def test_default_rate_does_not_throttle_a_load_test(app: RecordingApp) -> None:
    uas = await _server(app, SipGuard.build(max_requests_per_s=500))
    try:
        async with SipClient(uas.local_port) as client:
            for _ in range(300):  # what sipp -l 100 sends at once, and more
                client.send(Call(client).request("OPTIONS"))
            statuses = await _statuses(client)
        assert statuses.count(200) == 300
        assert uas.guard.dropped == 0
    finally:
        await uas.stop()


async def test_transactions_bounded_per_source_and_in_total(app: RecordingApp) -> None:
    guard = SipGuard(max_transactions_per_source=40, max_transactions=60)
    uas = await _server(app, guard)
    try:
        async with SipClient(uas.local_port) as client:
            for _ in range(200):
                client.send(Call(client).request("OPTIONS"))
            statuses = await _statuses(client)
            assert statuses.count(200) == 40
            assert statuses.count(503) == 160
            assert uas.transactions == 40
            assert uas.transactions_by_source == {"127.0.0.1": 40}
            # the table drains by itself (timer J) and the source is served again
            await asyncio.sleep(FAST.t1 * 64 + 0.5)
            assert uas.transactions == 0 and uas.transactions_by_source == {}
            client.send(Call(client).request("OPTIONS"))
            assert await _statuses(client) == [200]
        guard.max_transactions_per_source = 1000
        before = uas.transactions  # the last OPTIONS' transaction may still wait (timer J)
        async with SipClient(uas.local_port) as client:
            for _ in range(200):
                client.send(Call(client).request("OPTIONS"))
            statuses = await _statuses(client)
            assert statuses.count(200) == 60 - before  # now the total bound bites
            assert uas.transactions == 60
    finally:
        await uas.stop()


async def test_unacked_invites_bounded_per_source(
    server: UserAgentServer, app: RecordingApp
) -> None:
    server.guard.max_unacked_invites_per_source = 50  # the default (200) at a test's scale
    async with SipClient(server.local_port) as client:
        calls = [Call(client) for _ in range(80)]
        for call in calls:
            client.send(call.invite())  # answered 200, never ACKed
        finals: dict[str, int] = {}
        while len(finals) < len(calls):  # one final per call (no ACK: 2xx retransmitted)
            message = await client.recv(2.0)
            if isinstance(message, SipResponse) and message.status >= 200:
                finals.setdefault(message.call_id, message.status)
        statuses = list(finals.values())
        assert statuses.count(200) == 50
        assert statuses.count(503) == 30
        assert len(app.invites) == 50
        assert server.unacked_invites == {"127.0.0.1": 50}
        assert len(server.dialogs) == 50


async def test_acked_calls_do_not_count_against_the_bound(
    server: UserAgentServer, app: RecordingApp
) -> None:
    server.guard.max_unacked_invites_per_source = 3
    async with SipClient(server.local_port) as client:
        for _ in range(6):
            await Call(client).establish()
        await app.wait_for(lambda: len(app.established) == 6)
        assert server.unacked_invites == {}


async def test_tcp_connections_bounded_per_source(
    app: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "TCP_MAX_CONNECTIONS_PER_SOURCE", 3)
    uas = await _server(app, SipGuard())
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(6):
            held.append(await asyncio.open_connection("127.0.0.1", uas.tcp_port))
        await asyncio.sleep(0.3)
        assert uas.tcp_connections == 3
        for reader, _writer in held[3:]:
            assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed by us
    finally:
        for _reader, writer in held:
            writer.close()
        await uas.stop()


async def test_one_source_cannot_hold_every_call_slot_with_unacked_invites() -> None:
    """The SIP door bounds one source's un-ACKed INVITEs at half of MAX_CONCURRENT_CALLS, so
    an un-ACKed flood from one address leaves room for a caller from another."""
    from tests.sipdoor.helpers import echo_door

    async with echo_door(max_calls=4, max_concurrent_calls=4) as door:
        port = door.service.port
        async with SipClient(port) as attacker, SipClient(port, local_host="127.0.0.2") as caller:
            flood = [Call(attacker) for _ in range(4)]
            for call in flood:
                attacker.send(call.invite())  # answered, never ACKed
            finals: dict[str, int] = {}
            while len(finals) < len(flood):
                message = await attacker.recv(3.0)
                if isinstance(message, SipResponse) and message.status >= 200:
                    finals.setdefault(message.call_id, message.status)
            assert sorted(finals.values()) == [200, 200, 503, 503]
            await Call(caller).establish()  # another address still gets a call slot
