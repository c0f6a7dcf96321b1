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
# The bench puts its own counting proxies between every caller and the
# emulator: the callers get only the default endpoint (the proxy's), and the
# proxies forward each service to its own process, read from BENCH_-prefixed
# copies of the per-service endpoints.
export AWS_ENDPOINT_URL=$(infra/emulator.sh start "$port")
trap 'infra/emulator.sh stop "$port"' EXIT
eval "$(infra/emulator.sh env "$port" | grep '_URL_' | sed 's/^export /export BENCH_/')"
target/release/courier-bench --bin-dir target/release ${BENCH_ARGS:-}
