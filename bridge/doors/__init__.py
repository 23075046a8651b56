"""Doors: thin adapters that turn SIP/RTP, WebRTC and WebSocket callers into calls."""
