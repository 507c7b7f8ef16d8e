#!/usr/bin/env bash
# Makes sure a memcached binary is available for the integration tests, and saslpasswd2 for
# the SASL tests (memcached -S against a sasldb), installing Debian's packages (memcached,
# sasl2-bin) when they are missing (fresh CI machines do not have them). Also the two
# third-party clients test/third-party-clients.test.ts reads a warmed replica with: pylibmc
# for Debian's own /usr/bin/python3 (python3-pylibmc) and spymemcached's jar
# (libspymemcached-java); without them that test skips, saying why, and the rest still runs.
set -euo pipefail

apt_updated=false

# apt_install <package> <what is missing>: installs a Debian package with apt-get, as root
# (through sudo when not root). Returns non-zero, having said why, when it cannot.
apt_install() {
  local package=$1 missing=$2
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-memcached: $missing is not installed and apt-get is not available; install $package" >&2
    return 1
  fi

  local as_root=()
  if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      as_root=(sudo)
    else
      echo "ensure-memcached: $missing is not installed, and installing $package needs root but sudo is not available" >&2
      return 1
    fi
  fi

  echo "ensure-memcached: $missing not found; installing $package with ${as_root[*]:+${as_root[*]} }apt-get"
  if [[ "$apt_updated" != true ]]; then
    if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update; then
      echo "ensure-memcached: apt-get update failed" >&2
      return 1
    fi
    apt_updated=true
  fi
  if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$package"; then
    echo "ensure-memcached: installing $package with apt-get failed" >&2
    return 1
  fi
}

if [[ -n "${MEMCACHED_BIN:-}" ]]; then
  if [[ ! -x "$MEMCACHED_BIN" ]]; then
    echo "ensure-memcached: MEMCACHED_BIN=$MEMCACHED_BIN is not an executable file" >&2
    exit 1
  fi
  echo "ensure-memcached: using MEMCACHED_BIN=$MEMCACHED_BIN ($("$MEMCACHED_BIN" -V 2>/dev/null || echo 'version unknown'))"
elif command -v memcached >/dev/null 2>&1; then
  echo "ensure-memcached: found $(command -v memcached) ($(memcached -V 2>/dev/null || echo 'version unknown'))"
else
  apt_install memcached memcached || exit 1
  if ! command -v memcached >/dev/null 2>&1; then
    echo "ensure-memcached: apt-get reported success but memcached is still not on PATH" >&2
    exit 1
  fi
  echo "ensure-memcached: installed $(command -v memcached) ($(memcached -V 2>/dev/null || echo 'version unknown'))"
fi

# saslpasswd2 lives in /usr/sbin, which is not on a normal user's PATH on Debian.
find_saslpasswd2() {
  command -v saslpasswd2 2>/dev/null || { [[ -x /usr/sbin/saslpasswd2 ]] && echo /usr/sbin/saslpasswd2; }
}

if saslpasswd2=$(find_saslpasswd2); then
  echo "ensure-memcached: found $saslpasswd2 (for the SASL tests)"
else
  apt_install sasl2-bin saslpasswd2 || exit 1
  if ! saslpasswd2=$(find_saslpasswd2); then
    echo "ensure-memcached: apt-get reported success but saslpasswd2 is still not found" >&2
    exit 1
  fi
  echo "ensure-memcached: installed $saslpasswd2 (for the SASL tests)"
fi

# The third-party clients (test/third-party-clients.test.ts). pylibmc is Debian's package for
# Debian's python, /usr/bin/python3 (a pyenv python on PATH would not see it).
if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import pylibmc' >/dev/null 2>&1; then
  echo "ensure-memcached: found pylibmc $(/usr/bin/python3 -c 'import pylibmc; print(pylibmc.__version__)' 2>/dev/null) for /usr/bin/python3 (for the third-party client tests)"
elif apt_install python3-pylibmc 'pylibmc (for /usr/bin/python3)' && /usr/bin/python3 -c 'import pylibmc' >/dev/null 2>&1; then
  echo "ensure-memcached: installed pylibmc for /usr/bin/python3 (for the third-party client tests)"
else
  echo "ensure-memcached: warning: pylibmc is not available to /usr/bin/python3; the pylibmc test will be skipped" >&2
fi

SPYMEMCACHED_JAR=/usr/share/java/spymemcached.jar
if [[ -f "$SPYMEMCACHED_JAR" ]]; then
  echo "ensure-memcached: found $SPYMEMCACHED_JAR (for the third-party client tests)"
elif apt_install libspymemcached-java "$SPYMEMCACHED_JAR" && [[ -f "$SPYMEMCACHED_JAR" ]]; then
  echo "ensure-memcached: installed $SPYMEMCACHED_JAR (for the third-party client tests)"
else
  echo "ensure-memcached: warning: $SPYMEMCACHED_JAR is not available; the spymemcached test will be skipped" >&2
fi
