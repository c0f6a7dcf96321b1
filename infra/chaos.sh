#!/usr/bin/env bash
# `make chaos`: the debug build `make test` uses (the emulator, not the
# functions, bounds the speed), an emulator of its own, then courier-chaos
# (see infra/local/src/chaos.rs). CHAOS_ARGS passes options,
# e.g. CHAOS_ARGS="--tasks 300 --kill-every 5".
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
infra/tools.sh
cargo build --workspace --bins
port=$(infra/emulator.sh free-port)
# Only the default endpoint: this tool puts its own proxies (one upstream
# each) between the functions and the emulator; the default endpoint's
# process forwards DynamoDB and SQS calls to their own processes.
export AWS_ENDPOINT_URL=$(infra/emulator.sh start "$port")
trap 'infra/emulator.sh stop "$port"' EXIT
target/debug/courier-chaos --bin-dir target/debug ${CHAOS_ARGS:-}
