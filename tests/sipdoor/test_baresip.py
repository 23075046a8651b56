"""A real softphone: baresip dials the echo door headless over PCMU and over Opus.

baresip's `aufile` module is the microphone (a WAV file; the call ends when the file does),
`sndfile` records what it sends and what it receives (`dump-*-enc.wav`, `dump-*-dec.wav`),
`aubridge` is a silent speaker, `menu` runs the `/dial` command given with `-e`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.sipdoor.helpers import echo_door, speech_stats
from tests.support import espeak_pcm, with_silence

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
]

CONFIG = """\
poll_method		epoll
sip_listen		127.0.0.1:0
call_local_timeout	30
audio_player		aubridge,nil
audio_alert		aubridge,nil
audio_source		aufile,{wav}
audio_srate		{rate}
audio_channels		{channels}
rtp_timeout		0
module_path		/usr/lib/baresip/modules
module			stdio.so
module			g711.so
module			opus.so
module			aufile.so
module			aubridge.so
module			sndfile.so
module_app		account.so
module_app		menu.so
snd_path		{dir}
"""


def _read_wav(path: Path) -> tuple[npt.NDArray[np.int16], int]:
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        channels, rate = w.getnchannels(), w.getframerate()
    if channels > 1:
        pcm = pcm.reshape(-1, channels)[:, 0].copy()
    return pcm, rate


def _write_wav(path: Path, pcm: npt.NDArray[np.int16], rate: int, channels: int) -> None:
    data = np.repeat(pcm[:, None], channels, axis=1) if channels > 1 else pcm
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.astype("<i2").tobytes())


@pytest.mark.parametrize(
    ("codec", "rate", "channels"), [("PCMU/8000/1", 8000, 1), ("opus/48000/2", 48000, 2)]
)
async def test_baresip_call_is_heard_and_echoed(
    tmp_path: Path, codec: str, rate: int, channels: int
) -> None:
    speech = with_silence(
        espeak_pcm("Hello, I would like to check my order.", rate=rate), rate, 0.5, 1.5
    )
    wav = tmp_path / "mic.wav"
    _write_wav(wav, speech, rate, channels)
    (tmp_path / "config").write_text(
        CONFIG.format(wav=wav, rate=rate, channels=channels, dir=tmp_path)
    )
    (tmp_path / "accounts").write_text(f"<sip:caller@127.0.0.1>;regint=0;audio_codecs={codec}\n")
    async with echo_door() as door:
        proc = await asyncio.create_subprocess_exec(
            "baresip",
            "-f",
            str(tmp_path),
            "-e",
            f"/dial sip:bridge@{door.target}",
            "-t",
            "15",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            for _ in range(300):  # the call ends when baresip's WAV runs out
                if door.calls.calls and all(c.closed_reason for c in door.calls.calls.values()):
                    break
                await asyncio.sleep(0.05)
        finally:
            if proc.returncode is None:
                proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log = (await proc.stdout.read()).decode(errors="replace") if proc.stdout else ""
        (call,) = door.calls.calls.values()
        assert call.closed_reason == "bye", log[-2000:]
        session = call.sink.session  # type: ignore[attr-defined]
        assert session.codec_info.name.lower() == codec.split("/")[0].lower()

    # the bridge received the WAV: same speech length (±60 ms) and level (±1 dB)
    sent_s, sent_db = speech_stats(speech, rate)
    got_s, got_db = speech_stats(call.audio, 16000)
    assert abs(got_s - sent_s) <= 0.06, (got_s, sent_s)
    assert abs(got_db - sent_db) <= 1.0, (got_db, sent_db)
    # baresip received the echo: the same speech came back through a second encode/decode
    (dec,) = await asyncio.to_thread(lambda: list(tmp_path.glob("dump-*-dec.wav")))
    echoed, echoed_rate = _read_wav(dec)
    back_s, back_db = speech_stats(echoed, echoed_rate)
    print(
        f"{codec}: sent {sent_s:.3f} s {sent_db:.2f} dBFS; bridge got {got_s:.3f} s "
        f"{got_db:.2f} dBFS; baresip got back {back_s:.3f} s {back_db:.2f} dBFS"
    )
    assert abs(back_s - sent_s) <= 0.1, (back_s, sent_s)
    assert abs(back_db - sent_db) <= 2.0, (back_db, sent_db)
