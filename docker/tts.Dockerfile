# syntax=docker/dockerfile:1
# The `/synthesize` services (spec §4.3, §4.4): `python -m bridge.services.tts_server --engine piper|coqui`.
# Targets: `piper` (ONNX, CPU, the voice baked in) and `coqui` (VITS on CPU torch, the model
# downloaded at build time, since the image is built where the internet is).
#   docker build -f docker/tts.Dockerfile --target piper .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- the voicebridge package with only what bridge.services.tts_server imports ---
FROM ${PYTHON_IMAGE} AS base
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY media media
COPY sip sip
COPY bridge bridge
# --no-deps keeps faster-whisper, llama.cpp and aiortc out of the TTS images; the list below
# is what bridge.services.tts_server imports (tests/deploy/test_docker.py checks it against pyproject).
RUN python -m venv /opt/venv \
    && pip install \
        "numpy>=1.26" "soxr>=0.5" "httpx>=0.27" "pydantic>=2.6" "pydantic-settings>=2.2" \
        "fastapi>=0.110" "uvicorn>=0.29" "onnxruntime>=1.17" "piper-tts>=1.2" \
    && pip install --no-deps .

# --- Piper: download the voice at build time ---
FROM base AS piper-build
ARG PIPER_VOICE=en_US-lessac-medium
RUN python -m piper.download_voices --data-dir /opt/voices "${PIPER_VOICE}" \
    && test -s "/opt/voices/${PIPER_VOICE}.onnx" \
    && test -s "/opt/voices/${PIPER_VOICE}.onnx.json"

FROM ${PYTHON_IMAGE} AS piper
ARG PIPER_VOICE=en_US-lessac-medium
RUN useradd --system --create-home --uid 10001 voicebridge
COPY --from=piper-build /opt/venv /opt/venv
COPY --from=piper-build /opt/voices /opt/voices
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIPER_VOICE=${PIPER_VOICE} \
    PIPER_VOICE_DIR=/opt/voices
WORKDIR /home/voicebridge
USER 10001
EXPOSE 5100/tcp
CMD ["python", "-m", "bridge.services.tts_server", "--engine", "piper", "--host", "0.0.0.0", "--port", "5100"]

# --- Coqui: CPU-only torch, coqui-tts (the pyproject `coqui` extra), the VITS model ---
FROM base AS coqui-build
ARG COQUI_MODEL=tts_models/en/ljspeech/vits
# torch from the CPU index first, so coqui-tts does not pull the CUDA wheels (~6 GB).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.1" "torchaudio>=2.1" \
    && pip install "coqui-tts==0.28.0"
COPY docker/coqui_model.py /src/docker/coqui_model.py
RUN python /src/docker/coqui_model.py "${COQUI_MODEL}" /opt/coqui/model

FROM ${PYTHON_IMAGE} AS coqui
# Coqui's VITS phonemizes with the espeak-ng program.
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng libsndfile1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --uid 10001 voicebridge
COPY --from=coqui-build /opt/venv /opt/venv
COPY --from=coqui-build /opt/coqui/model /opt/coqui/model
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    COQUI_MODEL_PATH=/opt/coqui/model
WORKDIR /home/voicebridge
USER 10001
EXPOSE 5200/tcp
CMD ["python", "-m", "bridge.services.tts_server", "--engine", "coqui", "--host", "0.0.0.0", "--port", "5200"]
