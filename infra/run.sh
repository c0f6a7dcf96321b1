#!/usr/bin/env bash
# `make run`: the emulator, the resources, the API on http://127.0.0.1:3000,
# the sender, both bridges and an echo target. Ctrl-C stops all of it.
# COURIER_TARGET_POLICY / COURIER_TARGET_ALLOWLIST are passed to the functions.
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
port=${EMULATOR_PORT:-4566}
infra/tools.sh
# Release binaries, as deployed: the stack runs at the speed users will see
# (a debug build takes a third more CPU per call). The first build takes a few minutes.
cargo build --release --workspace --bins
endpoint=$(infra/emulator.sh start "$port")
trap 'infra/emulator.sh stop "$port"' EXIT
# AWS_ENDPOINT_URL and one endpoint per service (the direct, faster path).
eval "$(infra/emulator.sh env "$port")"
echo "emulator: $endpoint (state is in memory; it goes when you stop)"
# The target guard: local-only unless the environment asks for the deployed
# guard, e.g. `COURIER_TARGET_POLICY=public COURIER_TARGET_ALLOWLIST= make run`.
export COURIER_TARGET_POLICY=${COURIER_TARGET_POLICY:-local-only}
export COURIER_TARGET_ALLOWLIST=${COURIER_TARGET_ALLOWLIST:-}
echo "target guard: policy $COURIER_TARGET_POLICY, allow-list '${COURIER_TARGET_ALLOWLIST}'"
target/release/courier-local up --api "127.0.0.1:${API_PORT:-3000}" --echo "127.0.0.1:${ECHO_PORT:-3001}"
