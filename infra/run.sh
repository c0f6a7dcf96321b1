#!/usr/bin/env bash
# `make run`: the emulator, the resources, the API on http://127.0.0.1:3000,
# the sender, both bridges and an echo target. Ctrl-C stops all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
port=${EMULATOR_PORT:-4566}
infra/tools.sh
cargo build --workspace --bins
endpoint=$(infra/emulator.sh start "$port")
trap 'infra/emulator.sh stop "$port"' EXIT
export AWS_ENDPOINT_URL=$endpoint
echo "emulator: $endpoint (state is in memory; it goes when you stop)"
target/debug/courier-local up --api "127.0.0.1:${API_PORT:-3000}" --echo "127.0.0.1:${ECHO_PORT:-3001}"
