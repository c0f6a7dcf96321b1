#!/usr/bin/env bash
# `make chaos`: release build, an emulator of its own, then courier-chaos
# (see infra/local/src/chaos.rs). CHAOS_ARGS passes options,
# e.g. CHAOS_ARGS="--tasks 300 --kill-every 5".
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
infra/tools.sh
cargo build --release --bins -p api -p sender -p reconciler -p courier-local
port=$(infra/emulator.sh free-port)
export AWS_ENDPOINT_URL=$(infra/emulator.sh start "$port")
trap 'infra/emulator.sh stop "$port"' EXIT
target/release/courier-chaos --bin-dir target/release ${CHAOS_ARGS:-}
