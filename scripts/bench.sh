#!/usr/bin/env bash
# `npm run bench`: figures for a replica warm next to memcached's ceiling, in one run.
# Extra arguments go to the benchmark (e.g. --items 200000 --value-size 1024).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/ensure-memcached.sh >&2
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci >&2
fi
npx tsc -p tsconfig.json
exec node dist/bench/bench.js "$@"
