"""Shared fixtures for the WebRTC door tests: the host's ICE interface and a speech file."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import espeak_pcm, wav_bytes, with_silence


def ice_interface_ip() -> str | None:
    """The address of a non-loopback IPv4 interface (aioice gathers no loopback candidates)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: picks the default route, sends nothing
            ip = str(s.getsockname()[0])
            if not ip.startswith("127."):
                return ip
        except OSError:
            pass
    try:  # no default route: any global-scope address will do
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "scope", "global"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    return match.group(1) if match else None


@pytest.fixture(scope="session")
def ice_ip() -> str:
    """Skip WebRTC media tests on a host with no network interface besides loopback."""
    ip = ice_interface_ip()
    if ip is None:
        pytest.skip("WebRTC needs a non-loopback network interface for ICE host candidates")
    return ip


SPOKEN = "Hello, can you tell me what time the store opens tomorrow?"


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48 kHz mono WAV of one spoken question and 5 s of silence (Chrome loops the fake
    microphone file; the silence leaves the bot time to answer before the question repeats)."""
    path = tmp_path_factory.mktemp("webrtc") / "question.wav"
    pcm = with_silence(espeak_pcm(SPOKEN, rate=48000), 48000, before_s=0.5, after_s=5.0)
    path.write_bytes(wav_bytes(pcm, 48000))
    return path
