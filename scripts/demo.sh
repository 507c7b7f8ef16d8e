#!/usr/bin/env bash
# The main job on the embedded default: a local demo cluster, warmed and verified.
# Extra arguments go to `cachewarm demo` (e.g. --items 1000000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/ensure-memcached.sh >&2
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci >&2
fi
npx tsc -p tsconfig.json
exec node dist/bin/cachewarm.js demo "$@"
