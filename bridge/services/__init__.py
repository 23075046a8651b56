"""Services that run beside the bridge: the `/synthesize` TTS service of the Piper and
Coqui containers."""
