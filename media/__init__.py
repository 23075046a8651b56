"""Pure audio code: G.711, Opus, resampling, VAD, jitter buffer, RTP, DTMF, WAV. No I/O, no asyncio."""
