#!/usr/bin/env bash
# `npm run bench`: figures for a replica warm next to memcached's ceiling, in one run.
# Extra arguments go to the benchmark (e.g. --items 200000 --value-size 1024).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/prepare.sh
exec node dist/bench/bench.js "$@"
