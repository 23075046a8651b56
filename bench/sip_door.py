"""SIP door load: SIPp callers against a stand-alone echo door process; prints a table.

    .venv/bin/python bench/sip_door.py                # concurrency 10, 50, 100
    .venv/bin/python bench/sip_door.py --levels 100 200 --hold-ms 6000

Every call speaks a 2 s espeak-ng sentence as PCMU RTP and is echoed back by the door
(`python -m bridge.tools.echo`), so the door decodes, resamples, jitter-buffers and paces 50
packets a second each way per call. Reported per level: SIPp's outcome (completed, failed,
retransmissions, INVITE→200 p95), the door process's CPU use (from /proc, user+system over
the run's wall time, and per call-second of media) and its media clock's late ticks and
resyncs (a resync means the event loop fell more than 60 ms behind).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.sipdoor.helpers import load_runner  # noqa: E402
from tests.support import espeak_pcm, wav_bytes, with_silence  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _start_door() -> tuple[subprocess.Popen[str], int]:
    low = random.randrange(20000, 50000, 2)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge.tools.echo",
            "--port",
            "0",
            "--rtp-min",
            str(low),
            "--rtp-max",
            str(low + 4999),
            "--max-calls",
            "10000",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("SIP_PORT="):
        proc.kill()
        raise SystemExit(f"echo door did not start: {line!r}")
    return proc, int(line.split("=")[1])


def _stop_door(proc: subprocess.Popen[str]) -> dict[str, object]:
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    lines = [x for x in out.splitlines() if x.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def main() -> int:
    """Run each level against a fresh door and print one row per level."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--hold-ms", type=int, default=4000)
    args = parser.parse_args()
    runner = load_runner()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        speech = espeak_pcm("Hello, I would like to check my order status.", rate=8000)
        wav.write_bytes(wav_bytes(with_silence(speech, 8000, 0.1, 0.1), 8000))
        header = (
            f"{'calls up':>8} {'placed':>6} {'ok':>5} {'failed':>6} {'retrans':>7} "
            f"{'INVITE p95':>10} {'door CPU':>8} {'CPU ms/call-s':>13} {'late ticks':>10} "
            f"{'resyncs':>7}"
        )
        print(header)
        print("-" * len(header))
        for level in args.levels:
            proc, port = _start_door()
            cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
            cfg = runner.RunConfig(
                target=f"127.0.0.1:{port}",
                scenario="load",
                calls=2 * level,
                concurrency=level,
                rate=max(10, level),
                hold_ms=args.hold_ms,
                wav=wav,
                local_ip="127.0.0.1",
                timeout_s=300,
            )
            result = runner.run(cfg)
            cpu, wall = _cpu_s(proc.pid) - cpu0, time.monotonic() - t0
            summary = _stop_door(proc)
            invite = result.response_ms.get("invite", [])
            p95 = f"{runner.percentile(invite, 0.95):.0f} ms" if invite else "-"
            media_s = float(summary.get("fed_seconds", 0.0)) or 1.0  # type: ignore[arg-type]
            print(
                f"{level:>8} {2 * level:>6} {result.calls_completed:>5} {result.calls_failed:>6} "
                f"{result.retransmissions:>7} {p95:>10} {100 * cpu / wall:>7.0f}% "
                f"{1000 * cpu / media_s:>13.2f} {summary.get('clock_late_ticks', '-'):>10} "
                f"{summary.get('clock_resyncs', '-'):>7}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
