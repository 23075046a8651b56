"""Pure audio code: G.711, Opus, resampling, VAD, jitter buffer, RTP, DTMF, WAV.

No I/O, no asyncio, no configuration: everything here is a function of its inputs.
"""
