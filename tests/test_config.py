"""bridge.config: spec §6 defaults, environment overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import ConfigError, Settings, load_settings


def test_spec_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    s = load_settings()
    assert s.gateway_port == 8080
    assert s.max_concurrent_calls == 100
    assert (s.asr_pool_size, s.llm_pool_size, s.tts_pool_size) == (10, 10, 10)
    assert s.vad_speech_threshold_db == -30
    assert s.vad_silence_timeout_ms == 300
    assert s.vad_min_speech_ms == 250
    assert s.llm_max_tokens == 150
    assert s.default_tts_engine == "piper"
    assert (s.asr_backend, s.llm_backend, s.tts_backend) == ("embedded", "embedded", "embedded")
    assert s.sip_port == 5060


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9999")
    monkeypatch.setenv("LLM_BACKEND", "ollama")
    monkeypatch.setenv("ICE_SERVERS", "stun:a.example:3478, turn:b.example")
    s = load_settings()
    assert s.gateway_port == 9999
    assert s.llm_backend == "ollama"
    assert s.ice_servers == ["stun:a.example:3478", "turn:b.example"]


def test_dotenv_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("OLLAMA_MODEL=qwen2.5:0.5b\n")
    assert load_settings().ollama_model == "qwen2.5:0.5b"


@pytest.mark.parametrize(
    ("name", "value", "expect"),
    [
        ("LLM_BACKEND", "gpt", "LLM_BACKEND='gpt': expected one of embedded, ollama, openai"),
        ("GATEWAY_PORT", "seventy", "GATEWAY_PORT='seventy': expected int"),
        ("GATEWAY_PORT", "70000", "GATEWAY_PORT='70000': expected int >= 1 and <= 65535"),
        ("BARGE_IN", "maybe", "BARGE_IN='maybe': expected true or false"),
        ("DEFAULT_TTS_ENGINE", "festival", "expected one of piper, coqui"),
        ("ALLOW_FROM", "10.0.0.0/8,bogus", "ALLOW_FROM='10.0.0.0/8,bogus': bad address or CIDR"),
        ("SIP_AUTH_USERS", "alice", "SIP_AUTH_USERS entry 'alice' is not user:password"),
    ],
)
def test_bad_value_is_one_line_naming_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expect: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert expect in message


def test_rtp_range_must_be_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTP_PORT_MIN", "20000")
    monkeypatch.setenv("RTP_PORT_MAX", "10000")
    with pytest.raises(ConfigError, match="RTP_PORT_MIN"):
        load_settings()


def test_env_example_lists_every_setting() -> None:
    from pathlib import Path

    text = (Path(__file__).parent.parent / ".env.example").read_text()
    names = {
        line.split("=", 1)[0]
        for line in text.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert {f.upper() for f in Settings.model_fields} <= names
