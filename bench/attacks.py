"""A bystander's turn latency while one address attacks a live `voicebridge serve`.

The bridge runs as a process on stub backends at the spec budget (whisper.cpp-style ASR
200 ms, Ollama-style LLM first token 150 ms + 10 ms per token, `/synthesize` TTS 200 ms;
`tests/fakes/stub_backends.py`). For each attack, one at a time, the attacker (127.0.0.1)
runs it for the whole measurement while a well-behaved WebSocket caller on 127.0.0.2
completes `--turns` turns (0.6 s of tone, silence at real time until the reply), and a
SIP INVITE from 127.0.0.2 is checked to be answered 200. E2E is measured by the bystander:
its last speech frame sent to the first bot audio frame received (so it includes the
VAD's 300 ms of trailing silence).

Printed: attack, what the attacker got, bystander turns ok, SIP bystander answered,
E2E p50/p95 and the p50 delta against the no-attack row.

The bridge is pinned to core 0 (`taskset`) and everything else (this process, the attacker,
the bystander, the stub backends) to core 1, so the attacker competes with the bridge only
through the traffic it sends.

Run: .venv/bin/python bench/attacks.py [--turns 5] [--only svmap,nested-json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.security import attacks
from tests.security.live import (
    BYSTANDER,
    LiveBridge,
    Turns,
    final_status,
    live_bridge,
    sip_invite,
    ws_caller,
)

ATTACKS: dict[str, attacks.Attack] = {
    "none": attacks.none,
    "svmap scan": attacks.svmap_scan,
    "svwar (INVITE, 100-199)": attacks.svwar_scan,
    "svcrack (wordlist)": attacks.svcrack_scan,
    "sipsak OPTIONS flood": attacks.sipsak_flood,
    "INVITE flood (no offer)": attacks.invite_flood,
    "un-ACKed INVITE flood": attacks.unacked_invite_flood,
    "RTP garbage flood": attacks.rtp_garbage_flood,
    "WebSocket audio flood": attacks.ws_audio_flood,
    "nested-JSON metadata": attacks.nested_json,
    "slow-reading WebSocket": attacks.slow_reader,
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    bridge: LiveBridge, attack: attacks.Attack, turns: int
) -> tuple[str, Turns, int | None]:
    """Run `attack` for as long as the bystander needs (about 1.2 s per turn, plus 1 s of
    head start), the bystander's turns and SIP INVITE in the middle of it."""
    seconds = 1.0 + 1.6 * turns + 2.0
    task = asyncio.ensure_future(attack(bridge, seconds))
    await asyncio.sleep(1.0)
    result = await ws_caller(bridge.ws_url, BYSTANDER, turns=turns, within_s=15 + 5 * turns)
    sip = await asyncio.to_thread(
        final_status, bridge.sip_port, BYSTANDER, sip_invite(bridge.sip_port, BYSTANDER)
    )
    return await task, result, sip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=5, help="bystander turns per attack")
    parser.add_argument("--only", default="", help="comma-separated substrings of attack names")
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})  # the load's core; the bridge gets core 0
    chosen = [
        name
        for name in ATTACKS
        if name == "none"
        or not args.only
        or any(part.strip().lower() in name.lower() for part in args.only.split(","))
    ]
    rows: list[tuple[str, str, str, str, float, float]] = []
    baseline = 0.0
    for name in chosen:
        # A fresh bridge per attack, so one attack's leftovers never bill the next.
        with tempfile.TemporaryDirectory() as workdir, live_bridge(Path(workdir), cpu=0) as bridge:
            outcome, result, sip = asyncio.run(measure(bridge, ATTACKS[name], args.turns))
        ok = f"{len(result.e2e_ms)}/{args.turns}"
        p50 = statistics.median(result.e2e_ms) if result.e2e_ms else float("nan")
        p95 = percentile(result.e2e_ms, 0.95) if result.e2e_ms else float("nan")
        if name == "none":
            baseline = p50
        answered = "200" if sip == 200 else str(sip or "no answer")
        rows.append((name, outcome, ok, answered, p50, p95))
        print(f"{name}: {outcome}; {result}", file=sys.stderr)
    print(
        "| attack | attacker got | bystander turns ok | bystander SIP INVITE "
        "| E2E p50 ms | E2E p95 ms | p50 delta ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, outcome, ok, answered, p50, p95 in rows:
        delta = "-" if name == "none" else f"{p50 - baseline:+.0f}"
        print(f"| {name} | {outcome} | {ok} | {answered} | {p50:.0f} | {p95:.0f} | {delta} |")


if __name__ == "__main__":
    main()
