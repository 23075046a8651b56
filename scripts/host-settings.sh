#!/usr/bin/env bash
# Sourced by the host scripts: `setting KEY DEFAULT` reads KEY from the environment, else
# from the repository's .env (never executed), else DEFAULT.
# shellcheck disable=SC2034  # repo_dir is used by the scripts that source this file

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Read KEY from .env without executing it; strips one pair of surrounding quotes.
env_file_value() {
    local key=$1 file="$repo_dir/.env" line value
    [[ -f $file ]] || return 0
    line=$(grep -E "^${key}=" "$file" | tail -n 1) || return 0
    value=${line#*=}
    value=${value%\"}
    value=${value#\"}
    value=${value%\'}
    value=${value#\'}
    printf '%s' "$value"
}

setting() {
    local key=$1 default=$2 value
    value=${!key:-}
    [[ -n $value ]] || value=$(env_file_value "$key")
    printf '%s' "${value:-$default}"
}
