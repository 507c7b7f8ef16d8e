#!/usr/bin/env bash
# The project's test command: build from scratch, then run every compiled test file.
# Extra arguments go to `node --test` (e.g. --test-name-pattern=ketama).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/prepare.sh --clean

test_files=()
if [[ -d dist/test ]]; then
  mapfile -d '' test_files < <(find dist/test -type f -name '*.test.js' -print0 | sort -z)
fi
if [[ ${#test_files[@]} -eq 0 ]]; then
  echo "test.sh: no *.test.js files found under dist/test" >&2
  exit 1
fi

exec node --test --test-concurrency=1 --test-reporter=spec "$@" "${test_files[@]}"
