# Courier. `make run` starts everything locally; `make test` checks everything.
SHELL := /bin/bash

.PHONY: run test tools bench fuzz chaos build-lambda fmt clean

## run: local stack on 127.0.0.1 (emulator, API on :3000, sender, bridges, echo target)
run:
	infra/run.sh

## test: fmt, clippy, cfn-lint, unit and integration tests, a short fuzz, on a fresh emulator
test:
	infra/test.sh

## tools: install the pinned local tools (moto, cfn-lint) into ./.venv
tools:
	infra/tools.sh

## build-lambda: release arm64 Lambda zips via cargo-lambda (installed into ./.venv)
build-lambda:
	infra/tools.sh --lambda
	PATH="$(CURDIR)/.venv/bin:$$PATH" cargo lambda build --release --arm64 --output-format zip --bin api --bin sender --bin reconciler --bin counter

fmt:
	cargo fmt --all

clean:
	rm -rf .local

## bench: cost per delivery and speed on the local stack, release build, then flow control's overshoot and cost (prints figures)
bench:
	BENCH_ARGS="--flows $${BENCH_ARGS:-}" infra/bench.sh

## fuzz: schemathesis against /v1/openapi.json on a local stack that delivers nothing (prints counts)
fuzz:
	cargo build --workspace --bins
	infra/fuzz.sh long

## chaos: 1,000 tasks through 10 % failing AWS calls and sender kills (prints figures)
chaos:
	infra/chaos.sh
