#!/usr/bin/env bash
# Installs the local stack's pinned tools into ./.venv (idempotent: reinstalls
# only when infra/requirements.txt changes). Usage: infra/tools.sh [--lambda|--browser]
# --lambda also installs cargo-lambda (for `make build-lambda`).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
want=$(sha256sum infra/requirements.txt | cut -c1-16)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing pinned tools into $venv (moto, cfn-lint)…"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r infra/requirements.txt
  echo "$want" > "$venv/.stamp"
fi
if [ "${1:-}" = "--lambda" ] && [ ! -x "$venv/bin/cargo-lambda" ]; then
  echo "installing cargo-lambda into $venv…"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'cargo-lambda==1.9.2'
fi
# --browser also installs Debian's Chromium, which the console's browser test
# drives with Playwright (pinned in infra/requirements.txt). Pinned to the
# version below when the archive still has it; Debian's security archive keeps
# only the newest build, so otherwise the current one is installed and named.
CHROMIUM_VERSION=156.0.8078.114-1~deb12u1
if [ "${1:-}" = "--browser" ] && ! command -v chromium > /dev/null; then
  echo "installing Debian's chromium (the console's browser test)…"
  as_root=()
  [ "$(id -u)" = 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get update -qq
  if ! DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "chromium=$CHROMIUM_VERSION" > /dev/null; then
    echo "chromium $CHROMIUM_VERSION is no longer in the archive: installing the current build"
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq chromium > /dev/null
  fi
  dpkg-query -W chromium
fi
