#!/usr/bin/env bash
# `make bench`: release build, an emulator of its own, then courier-bench
# (see infra/local/src/bin/courier-bench.rs). BENCH_ARGS passes options,
# e.g. BENCH_ARGS="--tasks 500".
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
infra/tools.sh
cargo build --release --bins -p api -p sender -p reconciler -p counter -p courier-local
port=$(infra/emulator.sh free-port)
# Only the default endpoint: this tool puts its own proxies (one upstream
# each) between the functions and the emulator; the default endpoint's
# process forwards DynamoDB and SQS calls to their own processes.
export AWS_ENDPOINT_URL=$(infra/emulator.sh start "$port")
trap 'infra/emulator.sh stop "$port"' EXIT
target/release/courier-bench --bin-dir target/release ${BENCH_ARGS:-}
