#!/usr/bin/env bash
# Installs what the engine and its tests need into this checkout, from scratch on a new machine
# (Python 3.11, gcc, node/npm): .venv (this package, compiled codec, test tools), .venv-official
# (the official Python iii-sdk, which also imports as `iii`, so it lives apart), .venv-sdk0113
# (the older official iii-sdk 0.11.3 that frameworks still pin), the official Node iii-sdk for the
# interop workers, and Debian's chromium (the console's browser tests; Playwright itself comes with
# the test extras) and redis-server (the Redis adapters' tests), installed when run as root.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

# The console's browser tests drive Debian's chromium (Playwright's browser downloads are not
# used); the Redis tests start their own redis-server.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  else
    echo "bootstrap: missing ${missing[*]} (the tests need them): sudo apt-get install -y ${missing[*]}" >&2
  fi
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
III_BUILD_EXTENSION=${III_BUILD_EXTENSION:-required} \
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,bench]"

[ -x .venv-official/bin/python ] || "$python" -m venv .venv-official
.venv-official/bin/pip install --quiet --disable-pip-version-check "iii-sdk==0.25.0"

[ -x .venv-sdk0113/bin/python ] || "$python" -m venv .venv-sdk0113
.venv-sdk0113/bin/pip install --quiet --disable-pip-version-check "iii-sdk==0.11.3"

(cd tests/interop/node && npm ci --no-audit --no-fund --loglevel=error)
