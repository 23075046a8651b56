#!/usr/bin/env bash
# Start the GPU host services the compose bridge reaches through host.docker.internal
# (spec §2 and verification step 1): the whisper.cpp server on :8178 with the spec's model
# and Ollama on :11434 with the spec's LLM. A service that already answers is left alone.
# Checks that both answer (whisper.cpp `GET /`, Ollama `GET /api/tags` listing the model),
# prints what is missing and how to get it, and exits non-zero when anything is missing.
#
# Settings (environment, else .env beside docker-compose.yml, else the spec's defaults):
#   WHISPER_MODEL      ggml-large-v3-turbo.bin     OLLAMA_MODEL   llama3.2:3b
#   MODELS_DIR         ~/.cache/voicebridge/models (where scripts/download-models.sh puts them)
#   WHISPER_SERVER_BIN whisper-server on PATH      OLLAMA_BIN     ollama on PATH
#   WHISPER_PORT 8178  OLLAMA_PORT 11434  BIND_HOST 0.0.0.0 (containers must reach them)
#   RUN_DIR ~/.cache/voicebridge/run (pid and log files)  STARTUP_TIMEOUT_S 60
set -euo pipefail

# shellcheck source=scripts/host-settings.sh
source "$(dirname "${BASH_SOURCE[0]}")/host-settings.sh"

WHISPER_MODEL=$(setting WHISPER_MODEL ggml-large-v3-turbo.bin)
OLLAMA_MODEL=$(setting OLLAMA_MODEL llama3.2:3b)
MODELS_DIR=$(setting MODELS_DIR "$HOME/.cache/voicebridge/models")
WHISPER_SERVER_BIN=$(setting WHISPER_SERVER_BIN whisper-server)
OLLAMA_BIN=$(setting OLLAMA_BIN ollama)
WHISPER_PORT=$(setting WHISPER_PORT 8178)
OLLAMA_PORT=$(setting OLLAMA_PORT 11434)
BIND_HOST=$(setting BIND_HOST 0.0.0.0)
RUN_DIR=$(setting RUN_DIR "$HOME/.cache/voicebridge/run")
STARTUP_TIMEOUT_S=$(setting STARTUP_TIMEOUT_S 60)

whisper_url="http://127.0.0.1:${WHISPER_PORT}"
ollama_url="http://127.0.0.1:${OLLAMA_PORT}"
problems=()

missing() {
    problems+=("$1")
    printf 'MISSING: %s\n' "$1" >&2
}

answers() {
    curl -fsS -o /dev/null --max-time 3 "$1"
}

wait_until_answers() {
    local url=$1 pid=$2 deadline=$((SECONDS + STARTUP_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        answers "$url" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

start_background() {
    local name=$1
    shift
    mkdir -p "$RUN_DIR"
    nohup "$@" >"$RUN_DIR/$name.log" 2>&1 &
    echo $! >"$RUN_DIR/$name.pid"
    echo "$!"
}

if ! command -v curl >/dev/null 2>&1; then
    echo "MISSING: curl (Debian/Ubuntu: apt-get install curl); it is needed to check the services" >&2
    exit 1
fi

# --- whisper.cpp server -------------------------------------------------------------------
model_path="$MODELS_DIR/$WHISPER_MODEL"
if answers "$whisper_url/" 2>/dev/null; then
    echo "whisper.cpp server already answers on :$WHISPER_PORT"
else
    ready=true
    if ! command -v "$WHISPER_SERVER_BIN" >/dev/null 2>&1; then
        missing "whisper.cpp server binary '$WHISPER_SERVER_BIN' not found. Build it with GPU support:
    git clone https://github.com/ggml-org/whisper.cpp && cd whisper.cpp
    cmake -B build -DGGML_HIP=ON   # AMD ROCm; -DGGML_CUDA=ON for NVIDIA, -DGGML_VULKAN=ON otherwise
    cmake --build build -j --config Release --target whisper-server
  then put build/bin on PATH or set WHISPER_SERVER_BIN=/path/to/whisper-server"
        ready=false
    fi
    if [[ ! -f $model_path ]]; then
        missing "whisper.cpp model $model_path not found: run scripts/download-models.sh (or set MODELS_DIR / WHISPER_MODEL)"
        ready=false
    fi
    if $ready; then
        echo "starting whisper.cpp server on $BIND_HOST:$WHISPER_PORT with $model_path (log: $RUN_DIR/whisper-server.log)"
        pid=$(start_background whisper-server "$WHISPER_SERVER_BIN" \
            --host "$BIND_HOST" --port "$WHISPER_PORT" --model "$model_path")
        if wait_until_answers "$whisper_url/" "$pid"; then
            echo "whisper.cpp server answers on :$WHISPER_PORT (pid $pid)"
        else
            missing "whisper.cpp server did not answer on :$WHISPER_PORT within ${STARTUP_TIMEOUT_S}s; see $RUN_DIR/whisper-server.log"
        fi
    fi
fi

# --- Ollama -------------------------------------------------------------------------------
ollama_up=false
if answers "$ollama_url/api/tags" 2>/dev/null; then
    echo "Ollama already answers on :$OLLAMA_PORT"
    ollama_up=true
elif ! command -v "$OLLAMA_BIN" >/dev/null 2>&1; then
    missing "Ollama binary '$OLLAMA_BIN' not found. Install it (see https://ollama.com/download/linux):
    curl -fsSL https://ollama.com/install.sh | sh
  or set OLLAMA_BIN=/path/to/ollama.
  A systemd-installed Ollama listens on 127.0.0.1 only: set OLLAMA_HOST=0.0.0.0:$OLLAMA_PORT in its unit
  (systemctl edit ollama) so the containers can reach it through host.docker.internal"
else
    echo "starting Ollama on $BIND_HOST:$OLLAMA_PORT (log: $RUN_DIR/ollama.log)"
    pid=$(
        export OLLAMA_HOST="$BIND_HOST:$OLLAMA_PORT"
        start_background ollama "$OLLAMA_BIN" serve
    )
    if wait_until_answers "$ollama_url/api/tags" "$pid"; then
        echo "Ollama answers on :$OLLAMA_PORT (pid $pid)"
        ollama_up=true
    else
        missing "Ollama did not answer on :$OLLAMA_PORT within ${STARTUP_TIMEOUT_S}s; see $RUN_DIR/ollama.log"
    fi
fi
if $ollama_up; then
    tags=$(curl -fsS --max-time 5 "$ollama_url/api/tags")
    # An untagged name means :latest to Ollama.
    wanted=$OLLAMA_MODEL
    [[ $wanted == *:* ]] || wanted="$wanted:latest"
    if grep -qF "\"name\":\"$wanted\"" <<<"${tags//[[:space:]]/}"; then
        echo "Ollama has $wanted"
    else
        missing "Ollama model $wanted is not pulled: run 'ollama pull $OLLAMA_MODEL' (or scripts/download-models.sh)"
    fi
fi

# --- summary ------------------------------------------------------------------------------
if ((${#problems[@]})); then
    printf '\n%d problem(s); the bridge needs both services (ASR_BACKEND=whispercpp, LLM_BACKEND=ollama):\n' \
        "${#problems[@]}" >&2
    for problem in "${problems[@]}"; do
        printf -- '- %s\n' "${problem%%$'\n'*}" >&2
    done
    exit 1
fi
echo
echo "host services ready: whisper.cpp $whisper_url (model $WHISPER_MODEL), Ollama $ollama_url (model $OLLAMA_MODEL)"
echo "next: docker compose up --build"
