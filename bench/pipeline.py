"""Turn latency through the real `Call` with the embedded backends: speculative ASR off vs on.

Each turn opens a fresh `Call` (empty history, so every turn sends the LLM the same prompt)
on the real embedded backends built by `build_backends(load_settings())`, and feeds it an
espeak-ng question in 20 ms frames at real time, each frame fed at its slot on a frame clock
(`t0 + i * 20 ms`, no drift), then silence at real time until the turn's `metrics` event.
Real-time input matters: speculative ASR wins by overlapping transcription with the trailing
silence the VAD waits out, which only exists in wall time when audio arrives at real time.
The sink (the tests' `RecordingSink`) keeps the bot audio but plays none, BARGE_IN is off,
and turns alternate between the settings so drift in machine load hits both alike.
Consecutive turns never ask the same question: llama.cpp reuses the KV cache of a repeated
prompt, which would cut the second turn's time to first token to almost nothing; each
setting gets every question equally often when `--turns` is a multiple of 3.

Printed per setting: median and p90 of the `metrics` event's `asr_ms` (end of utterance to
transcript), `llm_first_token_ms`, `tts_ms` (first sentence) and `total_ms` (caller's last
speech frame to first bot audio), and the call's speculation hit/miss/skip counts.

Run: .venv/bin/python bench/pipeline.py [--turns 9] [--speculative-ms 120] [--max-tokens 40]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.backends import build_backends
from bridge.backends.base import BackendError
from bridge.config import Settings, load_settings
from bridge.contract import CALLER_RATE, CallOptions, Event
from bridge.metrics import Metrics
from bridge.pipeline import BackendSet, Call, Pools
from tests.fakes.pipeline import RecordingSink
from tests.support import espeak_pcm, with_silence

QUESTIONS = [
    "What time does the store open tomorrow morning?",
    "I would like to check the balance of my account.",
    "Can you help me change my delivery address?",
]
FIELDS = ["asr_ms", "llm_first_token_ms", "tts_ms", "total_ms"]
FRAME = CALLER_RATE // 50  # 20 ms
TURN_TIMEOUT_S = 60.0


async def feed_realtime(call: Call, pcm: npt.NDArray[np.int16]) -> None:
    """Feed `pcm` on a 20 ms frame clock, then silence until cancelled."""
    t0 = time.monotonic()
    silence = np.zeros(FRAME, np.int16)
    i = 0
    while True:
        start = i * FRAME
        call.feed(pcm[start : start + FRAME] if start < pcm.size else silence)
        i += 1
        await asyncio.sleep(max(0.0, t0 + i * FRAME / CALLER_RATE - time.monotonic()))


async def run_turn(
    settings: Settings, backends: BackendSet, pools: Pools, pcm: npt.NDArray[np.int16]
) -> tuple[Event, tuple[int, int, int]]:
    """One question through a fresh call; its metrics event and speculation counts."""
    sink = RecordingSink()
    call = Call(CallOptions(door="websocket"), sink, settings, backends, Metrics(), pools)
    call.start()
    feeder = asyncio.ensure_future(feed_realtime(call, pcm))
    try:
        await sink.wait_for("metrics", within_s=TURN_TIMEOUT_S)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await call.close("bench")
        for event in sink.events:
            if event["type"] == "error":
                logging.warning("turn error: %s", event)
    metrics = next(e for e in sink.events if e["type"] == "metrics")
    counts = (call.speculation_hits, call.speculation_misses, call.speculation_skipped)
    return metrics, counts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=9, help="turns per setting")
    parser.add_argument("--speculative-ms", type=int, default=120)
    parser.add_argument("--max-tokens", type=int, default=40, help="LLM_MAX_TOKENS for the bench")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")

    def settings_with(speculative_ms: int) -> Settings:
        return load_settings(
            barge_in=False,
            llm_max_tokens=args.max_tokens,
            sip_enabled=False,
            asr_speculative_silence_ms=speculative_ms,
        )

    base = settings_with(0)
    variants = {
        "off (0)": base,
        f"on ({args.speculative_ms} ms)": settings_with(args.speculative_ms),
    }
    backends = build_backends(base)
    try:
        t = time.monotonic()
        await backends.warmup()
        print(f"warm-up {time.monotonic() - t:.1f} s", file=sys.stderr)
        pools = Pools.from_settings(base, backends)
        questions = [with_silence(espeak_pcm(q), CALLER_RATE, 0.5, 0.0) for q in QUESTIONS]
        for j, settings in enumerate(variants.values()):  # unrecorded: first-use costs
            await run_turn(settings, backends, pools, questions[j])

        results: dict[str, list[Event]] = {name: [] for name in variants}
        counts: dict[str, list[int]] = {name: [0, 0, 0] for name in variants}
        n = len(variants) - 1  # the warm-up turns asked questions 0 and 1
        for i in range(args.turns):
            for name, settings in variants.items():
                n += 1
                event, (hits, misses, skipped) = await run_turn(
                    settings, backends, pools, questions[n % len(questions)]
                )
                results[name].append(event)
                counts[name] = [
                    a + b for a, b in zip(counts[name], (hits, misses, skipped), strict=True)
                ]
                print(
                    f"turn {i + 1} {name}: "
                    + " ".join(f"{f}={event.get(f)}" for f in FIELDS)
                    + f" hits={hits} misses={misses} skipped={skipped}",
                    file=sys.stderr,
                )
    except (BackendError, TimeoutError, AssertionError) as exc:  # AssertionError: no metrics
        sys.exit(f"bench failed: {exc!r}")
    finally:
        await backends.aclose()

    header = "| speculative ASR | " + " | ".join(f"{f} p50 / p90" for f in FIELDS)
    print(header + " | hits / misses / skipped |")
    print("|---" * (len(FIELDS) + 2) + "|")
    for name, events in results.items():
        cells = []
        for f in FIELDS:
            values = [float(v) for e in events if isinstance(v := e.get(f), int | float)]
            cells.append(
                f"{statistics.median(values):.0f} / {percentile(values, 0.9):.0f}"
                if values
                else "n/a"
            )
        hits, misses, skipped = counts[name]
        print(f"| {name} | " + " | ".join(cells) + f" | {hits} / {misses} / {skipped} |")
    print(f"\n{args.turns} turns per setting, real-time input, LLM_MAX_TOKENS={args.max_tokens}")


if __name__ == "__main__":
    asyncio.run(main())
