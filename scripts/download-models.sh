#!/usr/bin/env bash
# Download the production models for a GPU host with internet (spec §6):
#   whisper   the whisper.cpp ggml model WHISPER_MODEL (ggml-large-v3-turbo.bin) into MODELS_DIR
#   ollama    `ollama pull OLLAMA_MODEL` (llama3.2:3b); starts `ollama serve` for the pull if needed
#   piper     the Piper voice PIPER_VOICE (en_US-lessac-medium, .onnx + .onnx.json) into MODELS_DIR/piper
#             (the piper image bakes this voice in at build time; this copy is for running
#             `python -m bridge.services.tts_server --engine piper` on the host)
# Usage: scripts/download-models.sh [whisper] [ollama] [piper]   (no argument: all three)
# Files already present are kept. Settings come from the environment, else .env, else defaults:
#   MODELS_DIR ~/.cache/voicebridge/models   HF_BASE https://huggingface.co   OLLAMA_BIN ollama
set -euo pipefail

# shellcheck source=scripts/host-settings.sh
source "$(dirname "${BASH_SOURCE[0]}")/host-settings.sh"

WHISPER_MODEL=$(setting WHISPER_MODEL ggml-large-v3-turbo.bin)
OLLAMA_MODEL=$(setting OLLAMA_MODEL llama3.2:3b)
PIPER_VOICE=$(setting PIPER_VOICE en_US-lessac-medium)
MODELS_DIR=$(setting MODELS_DIR "$HOME/.cache/voicebridge/models")
HF_BASE=$(setting HF_BASE https://huggingface.co)
OLLAMA_BIN=$(setting OLLAMA_BIN ollama)
OLLAMA_PORT=$(setting OLLAMA_PORT 11434)

# Fetch URL to FILE atomically (through FILE.part) unless FILE exists.
fetch() {
    local url=$1 file=$2
    if [[ -s $file ]]; then
        echo "have $file"
        return 0
    fi
    mkdir -p "$(dirname "$file")"
    echo "downloading $url"
    # Explicit checks: `set -e` does not apply inside a function called from `||`.
    if ! curl -fL --retry 3 --retry-delay 2 --progress-bar -o "$file.part" "$url"; then
        rm -f "$file.part"
        echo "download failed: $url" >&2
        return 1
    fi
    mv "$file.part" "$file" || return 1
    echo "saved $file"
}

download_whisper() {
    fetch "$HF_BASE/ggerganov/whisper.cpp/resolve/main/$WHISPER_MODEL" "$MODELS_DIR/$WHISPER_MODEL"
}

download_piper() {
    # en_US-lessac-medium -> en/en_US/lessac/medium/en_US-lessac-medium.onnx
    local locale=${PIPER_VOICE%%-*} rest=${PIPER_VOICE#*-} speaker quality lang path
    speaker=${rest%-*}
    quality=${rest##*-}
    lang=${locale%%_*}
    path="$lang/$locale/$speaker/$quality/$PIPER_VOICE"
    fetch "$HF_BASE/rhasspy/piper-voices/resolve/main/$path.onnx" "$MODELS_DIR/piper/$PIPER_VOICE.onnx" || return 1
    fetch "$HF_BASE/rhasspy/piper-voices/resolve/main/$path.onnx.json" "$MODELS_DIR/piper/$PIPER_VOICE.onnx.json"
}

download_ollama() {
    if ! command -v "$OLLAMA_BIN" >/dev/null 2>&1; then
        echo "Ollama binary '$OLLAMA_BIN' not found: install it (curl -fsSL https://ollama.com/install.sh | sh) and rerun" >&2
        return 1
    fi
    local started=""
    if ! curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:$OLLAMA_PORT/api/tags" 2>/dev/null; then
        echo "starting a temporary 'ollama serve' for the pull"
        OLLAMA_HOST="127.0.0.1:$OLLAMA_PORT" "$OLLAMA_BIN" serve >/dev/null 2>&1 &
        started=$!
        local tries=0
        until curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:$OLLAMA_PORT/api/tags" 2>/dev/null; do
            tries=$((tries + 1))
            if ((tries > 60)); then
                kill "$started" 2>/dev/null || true
                echo "ollama serve did not answer on :$OLLAMA_PORT" >&2
                return 1
            fi
            sleep 0.5
        done
    fi
    local status=0
    OLLAMA_HOST="127.0.0.1:$OLLAMA_PORT" "$OLLAMA_BIN" pull "$OLLAMA_MODEL" || status=$?
    if [[ -n $started ]]; then
        kill "$started" 2>/dev/null || true
        wait "$started" 2>/dev/null || true
    fi
    return "$status"
}

if ! command -v curl >/dev/null 2>&1; then
    echo "curl not found (Debian/Ubuntu: apt-get install curl)" >&2
    exit 1
fi

targets=("$@")
((${#targets[@]})) || targets=(whisper ollama piper)
failed=()
for target in "${targets[@]}"; do
    case $target in
        whisper | ollama | piper)
            "download_$target" || failed+=("$target")
            ;;
        *)
            echo "unknown target '$target' (expected whisper, ollama or piper)" >&2
            exit 2
            ;;
    esac
done
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
echo "models ready in $MODELS_DIR (and Ollama's store); next: scripts/start-host-services.sh"
