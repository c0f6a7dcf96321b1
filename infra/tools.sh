#!/usr/bin/env bash
# Installs the local stack's pinned tools into ./.venv (idempotent: reinstalls
# only when infra/requirements.txt changes). Usage: infra/tools.sh [--lambda]
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
