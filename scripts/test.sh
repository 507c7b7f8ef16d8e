#!/usr/bin/env bash
# The project's test command: build from scratch, then run every compiled test file.
# Extra arguments go to `node --test` (e.g. --test-name-pattern=ketama).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/ensure-memcached.sh

# npm ci wipes node_modules, so only pay for it when the lock file changed since the last install.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci
fi

# A deleted source file would otherwise leave its compiled test behind in dist/.
rm -rf dist
npx tsc -p tsconfig.json

test_files=()
if [[ -d dist/test ]]; then
  mapfile -d '' test_files < <(find dist/test -type f -name '*.test.js' -print0 | sort -z)
fi
if [[ ${#test_files[@]} -eq 0 ]]; then
  echo "test.sh: no *.test.js files found under dist/test" >&2
  exit 1
fi

exec node --test --test-concurrency=1 --test-reporter=spec "$@" "${test_files[@]}"
