#!/usr/bin/env bash
# The main job on the embedded default: a local demo cluster, warmed and verified.
# Extra arguments go to `cachewarm demo` (e.g. --items 1000000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/prepare.sh
exec node dist/bin/cachewarm.js demo "$@"
