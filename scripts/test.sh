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

# The suite runs on the supported Node (22: the `node` devDependency, which npm puts first on
# PATH) and then on the machine's own Node when that is another version: cachewarm still runs
# there, and a break shows here before a user meets it.
baseline=node_modules/.bin/node
machine=${npm_node_execpath:-$(command -v node)}
echo "test.sh: the suite on Node $("$baseline" --version) (the supported baseline)" >&2
"$baseline" --test --test-concurrency=1 --test-reporter=spec "$@" "${test_files[@]}"
if [[ "$("$machine" --version)" != "$("$baseline" --version)" ]]; then
  echo "test.sh: the suite on this machine's Node $("$machine" --version) ($machine)" >&2
  "$machine" --test --test-concurrency=1 --test-reporter=spec "$@" "${test_files[@]}"
fi
