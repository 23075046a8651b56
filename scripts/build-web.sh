#!/usr/bin/env bash
# Build the browser page (bridge/web, React + Vite) into bridge/web/dist, which the bridge
# serves at "/". Installs node_modules with `npm ci` (or `npm install` when there is no
# lock file) only when they are missing or older than the lock; skips the build when dist
# is newer than every source. Uses npm's cache first (--prefer-offline); no CDN at run time.
set -euo pipefail

WEB_DIR="${WEB_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/bridge/web}"
cd "$WEB_DIR"

if ! command -v npm >/dev/null 2>&1; then
    echo "build-web: npm not found; install Node.js 20+ (Debian: apt-get install nodejs npm) to build the page" >&2
    exit 1
fi

lock=package-lock.json
stamp=node_modules/.package-lock.json
npm_flags=(--no-audit --no-fund --prefer-offline --loglevel=error)
if [[ ! -d node_modules || ! -f $stamp || package.json -nt $stamp || (-f $lock && $lock -nt $stamp) ]]; then
    if [[ -f $lock ]]; then
        echo "build-web: npm ci"
        npm ci "${npm_flags[@]}"
    else
        echo "build-web: npm install (no package-lock.json)"
        npm install "${npm_flags[@]}"
    fi
fi

sources=(index.html package.json vite.config.ts tsconfig.json)
[[ -f $lock ]] && sources+=("$lock")
if [[ -f dist/index.html ]]; then
    newer=$(find src "${sources[@]}" -newer dist/index.html -print -quit)
    if [[ -z $newer ]]; then
        echo "build-web: dist is up to date"
        exit 0
    fi
fi

echo "build-web: npm run build"
npm run build --silent
test -f dist/index.html
echo "build-web: built $WEB_DIR/dist"
