"""Real attack tools (Debian's sipvicious `svmap`/`svwar`/`svcrack`, and `sipsak`) against a
live `voicebridge serve` on stub backends: a scanner outside ALLOW_FROM learns nothing but
403; with digest auth on, extension and password guessing find nothing and place no call;
a flood from one address leaves a call from another address alone."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.attacks import (
    Attack,
    found_rows,
    sipsak_flood,
    statuses,
    svcrack,
    svmap,
    svwar,
    unacked_invite_flood,
)
from tests.security.live import (
    ATTACKER,
    BYSTANDER,
    LiveBridge,
    Turns,
    final_status,
    live_bridge,
    metric,
    sip_invite,
    ws_caller,
)

PASSWORD = "correct-horse-battery"
pytestmark = pytest.mark.timeout(60)


def test_the_tools_are_installed() -> None:
    for name in ("svmap", "svwar", "svcrack", "sipsak"):
        assert shutil.which(name), f"{name} is missing: apt-get install sipvicious sipsak"


@pytest.fixture(scope="module")
def auth_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBridge]:
    """A bridge with digest auth for one user, admitting all of loopback."""
    workdir = tmp_path_factory.mktemp("auth")
    with live_bridge(workdir, SIP_AUTH_USERS=f"alice:{PASSWORD}") as bridge:
        yield bridge


def test_svmap_outside_allow_from_gets_only_403(tmp_path: Path) -> None:
    with live_bridge(tmp_path, ALLOW_FROM=f"{BYSTANDER}/32") as bridge:
        scan = svmap(bridge, ATTACKER)
        control = svmap(bridge, BYSTANDER)
    context = f"{scan.stdout}\n{scan.stderr}"
    # The admitted address is answered (the scan itself works)...
    assert statuses(control.stdout).get(200), control.stdout
    # ...the other learns nothing: a 403 or silence, no Allow/Accept capability list.
    seen = statuses(scan.stdout)
    assert set(seen) <= {403}, context
    assert "Allow: INVITE" not in scan.stdout, context


def test_svwar_finds_no_extension_and_places_no_call(auth_bridge: LiveBridge) -> None:
    done = svwar(auth_bridge)
    context = f"{done.stdout}\n{done.stderr[-2000:]}\n{auth_bridge.log_tail()}"
    assert found_rows(done.stdout) == [], context
    # Every extension is answered alike: an INVITE with an offer (which svwar cannot send)
    # is challenged, not answered (asked from the other address: the scanner's own may be
    # rate-limited by now).
    for user in ("alice", "100", "nobody"):
        invite = sip_invite(auth_bridge.sip_port, BYSTANDER, user=user)
        assert final_status(auth_bridge.sip_port, BYSTANDER, invite) == 401, context
    assert metric(auth_bridge, "pipeline_calls_total") == 0, context


def test_svcrack_without_the_password_places_no_call(
    auth_bridge: LiveBridge, tmp_path: Path
) -> None:
    wordlist = tmp_path / "words.txt"
    wordlist.write_text("\n".join(["1234", "password", "alice", "secret", "letmein"]) + "\n")
    done = svcrack(auth_bridge, str(wordlist))
    context = f"{done.stdout}\n{done.stderr[-2000:]}\n{auth_bridge.log_tail()}"
    assert found_rows(done.stdout) == [], context
    invite = sip_invite(auth_bridge.sip_port, BYSTANDER, user="alice")
    assert final_status(auth_bridge.sip_port, BYSTANDER, invite) == 401, context
    assert metric(auth_bridge, "pipeline_calls_total") == 0, context


async def _under(
    attack: Attack, bridge: LiveBridge, seconds: float
) -> tuple[str, Turns, int | None]:
    task = asyncio.ensure_future(attack(bridge, seconds))
    await asyncio.sleep(1.0)  # the flood is in full swing before the bystander calls
    turns = await ws_caller(bridge.ws_url, BYSTANDER, turns=1, within_s=20)
    sip = await asyncio.to_thread(
        final_status, bridge.sip_port, BYSTANDER, sip_invite(bridge.sip_port, BYSTANDER)
    )
    return await task, turns, sip


def test_a_flood_from_one_source_leaves_another_callers_turn_alone(tmp_path: Path) -> None:
    """sipsak's flood mode and an un-ACKed INVITE flood from 127.0.0.1, each 6 s; callers
    from 127.0.0.2 (WebSocket: one full turn; SIP: the INVITE is answered 200)."""
    with live_bridge(tmp_path, MAX_CONCURRENT_CALLS="20") as bridge:
        for attack in (sipsak_flood, unacked_invite_flood):
            outcome, turns, sip = asyncio.run(_under(attack, bridge, 6.0))
            context = f"{attack.__name__}: {outcome} {turns}\n{bridge.log_tail()}"
            assert turns.refused is None and not turns.errors, context
            assert len(turns.e2e_ms) == 1, context
            assert sip == 200, context
