"""Every setting of the bridge, read from the environment and `.env` (pydantic-settings).

The names are the spec's (§6) plus the ones voicebridge adds for SIP, RTP, the backend
choice and barge-in. `load_settings()` turns a bad value into one `ConfigError` line that
names the variable and what it accepts, so start-up stops with a message an operator can act on.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from sip.access import DEFAULT_ALLOW_FROM, AddressFilter
from sip.auth import parse_users

AsrBackend = Literal["embedded", "whispercpp"]
LlmBackend = Literal["embedded", "ollama", "openai"]
TtsBackend = Literal["embedded", "http"]
TtsEngine = Literal["piper", "coqui"]
TTS_ENGINES: tuple[TtsEngine, ...] = get_args(TtsEngine)
"""Every TTS engine a caller may name, in the order the page lists them."""
VadEngine = Literal["energy", "silero"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

# The value kinds the settings share; `_accepted()` reads their bounds back for the error.
Port = Annotated[int, Field(ge=1, le=65535)]
Count = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(gt=0)]
Decibels = Annotated[float, Field(le=0.0)]
SpeechMs = Annotated[int, Field(ge=20)]
OptionalMs = Annotated[int, Field(ge=0)]


class ConfigError(ValueError):
    """A setting has a value the bridge cannot start with; the message is one line."""


class Settings(BaseSettings):
    """The bridge's configuration. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Host services (spec §6)
    whisper_url: str = "http://host.docker.internal:8178"
    ollama_url: str = "http://host.docker.internal:11434"
    whisper_model: str = "ggml-large-v3-turbo.bin"

    # LLM (spec §6)
    ollama_model: str = "llama3.2:3b"
    llm_system_prompt: str = (
        "You are a helpful call center agent. Keep responses concise and conversational."
    )
    llm_max_tokens: int = Field(150, ge=1, le=8192)

    # TTS (spec §6)
    piper_url: str = "http://piper:5100"
    coqui_url: str = "http://coqui:5200"
    default_tts_engine: TtsEngine = "piper"
    """The engine of calls that do not choose one (SIP calls never do)."""
    piper_voice: str = "en_US-lessac-medium"
    """A voice name of the Piper service, or an .onnx path for the embedded Piper."""

    # Gateway (spec §6)
    gateway_host: str = "0.0.0.0"
    gateway_port: Port = 8080
    max_concurrent_calls: Count = 100
    """Over it, SIP answers 503 and the WebSocket door closes with 1013."""
    asr_pool_size: Count = 10
    """ASR requests in flight per server listed in WHISPER_URL (a whisper.cpp server serves
    one at a time: 1 per server is right for whisper.cpp)."""
    llm_pool_size: Count = 10
    """LLM streams in flight (Ollama, an OpenAI-compatible server or the embedded model)."""
    tts_pool_size: Count = 10
    """TTS requests in flight per engine. Past any pool size, requests wait in the bridge,
    where the stage timings measure the wait."""

    # VAD (spec §6; pre-speech from spec §5)
    vad_engine: VadEngine = "energy"
    vad_speech_threshold_db: Decibels = -30.0
    """A frame at or above this RMS (dBFS) is speech, for the energy VAD."""
    vad_silence_timeout_ms: SpeechMs = 300
    """Trailing silence that ends an utterance."""
    vad_min_speech_ms: SpeechMs = 250
    """Speech needed before a sound counts as an utterance (clicks and coughs do not)."""
    vad_pre_speech_ms: OptionalMs = 200
    """Audio kept from before the speech onset, so the first syllable reaches ASR."""

    # Monitoring (spec §6)
    prometheus_port: Port = 9090
    grafana_port: Port = 3001

    # Backend choice (voicebridge): the embedded trio runs on a laptop with no GPU
    asr_backend: AsrBackend = "embedded"
    """`whispercpp` (WHISPER_URL) or `embedded` (faster-whisper in this process)."""
    llm_backend: LlmBackend = "embedded"
    """`ollama`, `openai` (vLLM, llama.cpp server) or `embedded` (llama.cpp in this process)."""
    tts_backend: TtsBackend = "embedded"
    """`http` (the Piper/Coqui `/synthesize` services) or `embedded` (Piper in this process)."""
    openai_url: str = "http://localhost:8000"
    openai_model: str = "default"
    openai_api_key: str = ""
    embedded_asr_model: str = ""
    """Path to a CTranslate2 Whisper model; empty = the shipped tiny.en."""
    embedded_llm_model: str = ""
    """Path to a GGUF file; empty = the shipped SmolLM2-135M-Instruct."""
    backend_timeout_s: Seconds = 10.0
    inference_threads: Count = 2

    # Call behaviour (voicebridge)
    barge_in: bool = True
    barge_in_threshold_db: Decibels = -24.0
    barge_in_min_speech_ms: SpeechMs = 250
    asr_speculative_silence_ms: OptionalMs = 120
    """Pause that starts a speculative transcription; 0 = no speculative ASR."""

    # SIP and RTP (voicebridge)
    sip_enabled: bool = True
    sip_host: str = "0.0.0.0"
    sip_port: Port = 5060
    sip_public_host: str = ""  # address written into SDP/Contact; empty = guessed per request
    rtp_port_min: int = Field(10000, ge=1024, le=65535)
    rtp_port_max: int = Field(20000, ge=1024, le=65535)
    rtp_timeout_s: Seconds = 30.0
    jitter_playout_ms: int = Field(60, ge=0, le=1000)

    # WebRTC (voicebridge)
    ice_servers: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Process (voicebridge)
    log_level: LogLevel = "INFO"
    shutdown_grace_s: Seconds = 5.0
    ws_max_frame_bytes: int = Field(65536, ge=1024)

    # Access control (voicebridge): who may use the doors at all
    allow_from: str = DEFAULT_ALLOW_FROM
    """CIDR list admitted by every door (SIP, /ws/call, /webrtc/*, /metrics); the default
    admits loopback and private ranges only. Others get SIP 403 / HTTP 403."""
    sip_auth_users: str = ""
    """`user:password`, `user:md5:<HA1>` or `user:sha256:<HA1>`, comma-separated; empty = no
    digest authentication of INVITEs."""
    sip_auth_realm: str = "voicebridge"
    access_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Bearer tokens for /ws/call and /webrtc/offer (`Authorization: Bearer` or `?token=`);
    empty = no token needed."""
    turn_secret: str = ""
    """coturn `static-auth-secret`: TURN credentials are minted per admitted client, valid
    for TURN_TTL_S; empty = the ICE_SERVERS URLs are handed out as they are."""
    turn_ttl_s: Count = 3600
    sip_max_requests_per_s: float = Field(500.0, gt=0)
    """Requests per second one source address may send (token bucket, burst of one second's
    worth); high enough for a SIPp load test from one address."""
    max_call_duration_s: Seconds = 3600.0
    """A call is ended with a BYE (or close) after this long, whatever it does."""
    rtp_hold_timeout_s: Seconds = 300.0
    """A call that sends no media because it is on hold or inactive is ended after this long."""
    ws_send_timeout_s: Seconds = 10.0
    """A WebSocket client that reads nothing for this long is closed (1008) and its call freed."""

    # Faults and deploys (voicebridge)
    asr_timeout_s: Seconds = 8.0
    llm_first_token_timeout_s: Seconds = 8.0
    tts_timeout_s: Seconds = 8.0
    """Per-stage budgets on the caller's path; past one the caller hears a fallback phrase."""
    fallback_repeat_text: str = "Sorry, I didn't catch that, could you say it again?"
    """Spoken when speech recognition fails."""
    fallback_trouble_text: str = "I'm having trouble right now, one moment please."
    """Spoken when the LLM or TTS fails; synthesized at start-up, so it plays when TTS is down."""
    breaker_failures: Count = 3
    """Consecutive failures that open a backend's circuit breaker."""
    breaker_cooldown_s: Seconds = 10.0
    """How long an open breaker skips its backend before one probe request goes through."""
    drain_timeout_s: Seconds = 300.0
    """On SIGTERM: how long active calls may go on while no new call is admitted."""
    history_messages: Count = 12
    """User/assistant messages of history kept per call and sent to the LLM."""

    @field_validator("ice_servers", "access_tokens", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("allow_from")
    @classmethod
    def _check_allow_from(cls, value: str) -> str:
        AddressFilter.parse(value)  # a bad entry raises ValueError naming it
        return value

    @field_validator("sip_auth_users")
    @classmethod
    def _check_auth_users(cls, value: str) -> str:
        if value.strip():
            parse_users(value)
        return value

    @model_validator(mode="after")
    def _check_rtp_range(self) -> Settings:
        if self.rtp_port_min > self.rtp_port_max:
            raise ValueError("RTP_PORT_MIN must not exceed RTP_PORT_MAX")
        return self

    @model_validator(mode="after")
    def _check_speculative_silence(self) -> Settings:
        if self.asr_speculative_silence_ms >= self.vad_silence_timeout_ms:
            raise ValueError(
                "ASR_SPECULATIVE_SILENCE_MS must be less than VAD_SILENCE_TIMEOUT_MS (0 = off)"
            )
        return self


def _accepted(field_name: str) -> str:
    """Describe the values a field accepts, for the one-line error."""
    field = Settings.model_fields[field_name]
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    if annotation is bool:
        return "true or false"
    bounds = []
    for meta in field.metadata:
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{word} {getattr(meta, attr)}")
    kind = getattr(annotation, "__name__", str(annotation))
    return f"{kind} " + " and ".join(bounds) if bounds else kind


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise `ConfigError` with one line naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = error.get("loc") or ()
        if loc and isinstance(loc[0], str) and loc[0] in Settings.model_fields:
            name = loc[0]
            why = (
                str(error.get("msg", "")).removeprefix("Value error, ")
                if error.get("type") == "value_error"
                else f"expected {_accepted(name)}"
            )
            raise ConfigError(f"invalid {name.upper()}={error.get('input')!r}: {why}") from None
        raise ConfigError(f"invalid configuration: {error.get('msg')}") from None
    except SettingsError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
