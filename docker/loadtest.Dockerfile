# syntax=docker/dockerfile:1
# The load tester (spec §4.5 over SIP): SIPp scenarios driven by sipp/run, which prints the
# spec's summary from SIPp's call counts and the bridge's /metrics histograms (sipp/latency.py).
#   docker compose run loadtest --concurrency 10 --duration 30s
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS loadtest
# sip-tester is Debian's SIPp (built with PCAP and RTP streaming); espeak-ng speaks the
# sentence the callers play when no --wav is given.
RUN apt-get update \
    && apt-get install -y --no-install-recommends sip-tester espeak-ng \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --uid 10001 loadtest
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
# sipp/run builds its RTP pcaps with media/ (numpy, soxr); sipp/latency.py reads /metrics.
RUN python -m venv /opt/venv \
    && pip install "numpy>=1.26" "soxr>=0.5" "prometheus-client>=0.20"
WORKDIR /opt/loadtest
COPY media media
COPY sipp sipp
USER 10001
ENTRYPOINT ["python", "sipp/run"]
CMD ["--target", "bridge:5060", "--concurrency", "10", "--duration", "30s"]
