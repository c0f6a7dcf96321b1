#!/usr/bin/env bash
# Fuzzes the API with schemathesis: it reads /v1/openapi.json from a local
# stack and sends generated requests (valid and invalid) to every operation,
# once as a tenant and once as the admin. Fails on any response ≥ 500 and on
# any status code, content type, header or body the spec does not allow.
#
# Usage: infra/fuzz.sh [short|long]
#   long (`make fuzz`): boundary values of every parameter (coverage phase)
#     plus 40 random cases per operation, as tenant and as admin.
#   short (`make test`): 15 random cases per operation (admin: tenant and flow routes).
#
# Nothing is delivered: the stack runs without queue pollers, scheduler bridge
# or reconciler (`courier-local up --no-delivery`), so the made-up target URLs
# of generated tasks are stored and never sent.
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
mode=${1:-long}
infra/tools.sh
[ -x target/debug/courier-local ] || cargo build --workspace --bins

started=()
cleanup() {
  for pid in "${started[@]}"; do kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true; done
  if [ -n "${emulator_port:-}" ]; then infra/emulator.sh stop "$emulator_port"; fi
}
trap cleanup EXIT
if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
  emulator_port=$(infra/emulator.sh free-port)
  infra/emulator.sh start "$emulator_port" > /dev/null
  eval "$(infra/emulator.sh env "$emulator_port")"
fi

out=.local/fuzz
mkdir -p "$out"
api_port=$(infra/emulator.sh free-port)
echo_port=$(infra/emulator.sh free-port)
export COURIER_ADMIN_KEY="fuzz-admin-$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(20))')"
export COURIER_STACK="fuzz-$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(4))')"
api="http://127.0.0.1:$api_port"
setsid target/debug/courier-local up --api "127.0.0.1:$api_port" --echo "127.0.0.1:$echo_port" --no-delivery \
  > "$out/stack.log" 2>&1 < /dev/null &
started+=($!)
for _ in $(seq 1 300); do
  if .venv/bin/python -c "import urllib.request; urllib.request.urlopen('$api/v1/health')" 2>/dev/null; then break; fi
  sleep 0.1
done

# A tenant of its own, with quotas the run cannot exhaust.
tenant_key=$(.venv/bin/python - "$api" <<'PY'
import json, os, sys, urllib.request
req = urllib.request.Request(
    sys.argv[1] + "/v1/tenants",
    data=json.dumps({"name": "fuzz", "max_active_tasks": 10000000, "create_rate_per_second": 100000}).encode(),
    headers={"authorization": "Bearer " + os.environ["COURIER_ADMIN_KEY"], "content-type": "application/json"},
    method="POST",
)
print(json.load(urllib.request.urlopen(req))["api_key"]["key"])
PY
)

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
total=0
status=0
run() { # run NAME KEY [st options…]
  local name=$1 key=$2
  shift 2
  set +e
  .venv/bin/st --no-color run "$api/v1/openapi.json" --url "$api" \
    --header "Authorization: Bearer $key" \
    --checks "$checks" --seed 8 --workers 1 --request-timeout 30 --suppress-health-check all "$@" > "$out/$name.log" 2>&1
  local rc=$?
  set -e
  # The summary line reads "N generated, N passed" (or "…, K failed, …").
  local line
  line=$(grep -A1 '^Test cases:' "$out/$name.log" | tail -1 | sed 's/^ *//')
  local n
  n=$(echo "$line" | grep -oE '^[0-9]+' || echo 0)
  total=$((total + n))
  echo "fuzz as $name: ${line:-no summary} (exit $rc; log: $out/$name.log)"
  if [ "$rc" -ne 0 ]; then
    sed -n '/FAILURES/,$p' "$out/$name.log" | head -80
    status=1
  fi
}
if [ "$mode" = short ]; then
  run tenant "$tenant_key" --phases examples,fuzzing --max-examples 15
  run admin "$COURIER_ADMIN_KEY" --phases examples,fuzzing --max-examples 15 --include-path-regex '^/v1/(tenants|flows)'
else
  run tenant "$tenant_key" --phases examples,coverage,fuzzing --max-examples 40
  run admin "$COURIER_ADMIN_KEY" --phases examples,coverage,fuzzing --max-examples 40
fi
echo "fuzz: $total requests generated in all"
exit $status
