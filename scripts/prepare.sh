#!/usr/bin/env bash
# Gets a checkout ready to run: memcached installed, node_modules current, TypeScript built.
# --clean rebuilds dist/ from nothing, so a deleted source leaves no stale compiled file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/ensure-memcached.sh >&2
# npm ci wipes node_modules, so only pay for it when the lock file changed since the last install.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci >&2
fi
if [[ "${1:-}" == "--clean" ]]; then rm -rf dist; fi
npx tsc -p tsconfig.json
