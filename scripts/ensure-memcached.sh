#!/usr/bin/env bash
# Makes sure a memcached binary is available for the integration tests, installing
# Debian's package when it is missing (fresh CI machines do not have it).
set -euo pipefail

if [[ -n "${MEMCACHED_BIN:-}" ]]; then
  if [[ -x "$MEMCACHED_BIN" ]]; then
    echo "ensure-memcached: using MEMCACHED_BIN=$MEMCACHED_BIN ($("$MEMCACHED_BIN" -V 2>/dev/null || echo 'version unknown'))"
    exit 0
  fi
  echo "ensure-memcached: MEMCACHED_BIN=$MEMCACHED_BIN is not an executable file" >&2
  exit 1
fi

if command -v memcached >/dev/null 2>&1; then
  echo "ensure-memcached: found $(command -v memcached) ($(memcached -V 2>/dev/null || echo 'version unknown'))"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-memcached: memcached is not installed and apt-get is not available; install memcached or set MEMCACHED_BIN" >&2
  exit 1
fi

as_root=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "ensure-memcached: memcached is not installed, and installing it needs root but sudo is not available" >&2
    exit 1
  fi
fi

echo "ensure-memcached: memcached not found; installing it with ${as_root[*]:+${as_root[*]} }apt-get"
if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update \
  || ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends memcached; then
  echo "ensure-memcached: installing memcached with apt-get failed" >&2
  exit 1
fi

if ! command -v memcached >/dev/null 2>&1; then
  echo "ensure-memcached: apt-get reported success but memcached is still not on PATH" >&2
  exit 1
fi
echo "ensure-memcached: installed $(command -v memcached) ($(memcached -V 2>/dev/null || echo 'version unknown'))"
