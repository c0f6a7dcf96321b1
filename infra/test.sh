#!/usr/bin/env bash
# `make test`: lints, then unit and integration tests against an emulator of
# its own on a free port (or against AWS_ENDPOINT_URL when it is set, e.g.
# LocalStack), then the IAM check of the calls the tests' functions made.
# Stops what it started; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
infra/tools.sh --browser

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cfn-lint template.yaml"
.venv/bin/cfn-lint template.yaml

echo "== build function binaries"
cargo build --workspace --bins

if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
  port=$(infra/emulator.sh free-port)
  infra/emulator.sh start "$port" > /dev/null
  trap 'infra/emulator.sh stop "$port"' EXIT
  # AWS_ENDPOINT_URL and one endpoint per service (the direct, faster path).
  eval "$(infra/emulator.sh env "$port")"
  echo "== emulator on $AWS_ENDPOINT_URL (per service: $(env | grep -c '^AWS_ENDPOINT_URL_') endpoints)"
  echo "== emulator checks (the patched moto paths answer like DynamoDB and SQS)"
  .venv/bin/python infra/emulator_check.py
  echo "== the Rust SDK takes the per-service endpoints (bootstrap with AWS_ENDPOINT_URL on a closed port)"
  default_endpoint=$AWS_ENDPOINT_URL
  # (KMS, the signing key, EventBridge, the events bus, and S3, the archive,
  # have no endpoint of their own: they are on the default one.)
  AWS_ENDPOINT_URL=http://127.0.0.1:9 AWS_ENDPOINT_URL_SCHEDULER=$default_endpoint AWS_ENDPOINT_URL_KMS=$default_endpoint \
    AWS_ENDPOINT_URL_EVENTBRIDGE=$default_endpoint AWS_ENDPOINT_URL_S3=$default_endpoint \
    target/debug/courier-local bootstrap --stack "endpoints-$port" > /dev/null
fi
# Every AWS call the functions make during the integration tests is recorded
# here (one proxy per function), then checked against template.yaml.
export COURIER_IAM_LOG="$PWD/target/debug/it-logs/iam-calls.jsonl"
mkdir -p "$(dirname "$COURIER_IAM_LOG")"
: > "$COURIER_IAM_LOG"
echo "== tests"
cargo test --workspace --no-fail-fast -- ${TEST_ARGS:-}
echo "== timed tests, one at a time on a quiet machine (rate windows and pauses measured at the target)"
cargo test -p courier-tests --test it -- --ignored --test-threads=1 ${TEST_ARGS:-}
echo "== IAM: every recorded call granted by its function's policy in template.yaml"
target/debug/courier-local iam-check --template template.yaml --log "$COURIER_IAM_LOG"
echo "== schemathesis (short)"
infra/fuzz.sh short
