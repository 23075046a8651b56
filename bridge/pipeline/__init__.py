"""The call pipeline: caller audio → VAD → ASR → LLM → sentences → TTS → door.

`call.Call` is a thin coordinator that owns a call's tasks and wires its parts:
`listener` (frames → VAD → utterances, the barge-in gate, the arrival clock),
`speculation` (ASR started on a pause), `reply` (LLM → sentences → TTS → sink, a handle
that barge-in cancels), `timing` (stage timers, budgets and the turn's `metrics` event),
`sentences` (the streaming splitter), `fallbacks` (the spoken fallback phrases), `pools`
(backend concurrency) and `manager` (`CallManager`: the call limit, the shared pools,
shutdown).
"""

from bridge.pipeline.call import Call
from bridge.pipeline.fallbacks import Fallbacks
from bridge.pipeline.listener import make_vad
from bridge.pipeline.manager import CallManager, UnknownTtsEngine
from bridge.pipeline.pools import BackendSet, Pools, backend_concurrency

__all__ = [
    "BackendSet",
    "Call",
    "CallManager",
    "Fallbacks",
    "Pools",
    "UnknownTtsEngine",
    "backend_concurrency",
    "make_vad",
]
