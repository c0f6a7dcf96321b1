#!/usr/bin/env bash
# Starts or stops the local AWS emulator (moto's server, from ./.venv) on
# 127.0.0.1. Usage:
#   infra/emulator.sh start [PORT]   # PORT 0 or absent: 4566; prints the endpoint URL
#   infra/emulator.sh env PORT       # prints `export AWS_ENDPOINT_URL…=…` lines
#   infra/emulator.sh stop PORT
#   infra/emulator.sh free-port      # prints a free loopback port
#
# `start` runs one process per service (see infra/emulator.py): DynamoDB and
# its streams on one free port, SQS on another, and on PORT the default
# endpoint, which serves Scheduler and forwards DynamoDB and SQS calls to
# their processes; the printed URL alone is a complete emulator. The
# per-service endpoints (the direct, faster path) go to
# .local/emulator-PORT.env, which `env PORT` prints. EMULATOR_SPLIT=0 starts
# a single process instead.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .local
free_port() {
  .venv/bin/python - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}
# launch NAME PORT [ENV=…]: one moto process in a process group of its own.
launch() {
  local name=$1 p=$2; shift 2
  env "$@" setsid .venv/bin/python infra/emulator.py -H 127.0.0.1 -p "$p" \
    > ".local/emulator-$port-$name.log" 2>&1 < /dev/null &
  echo $! >> "$pidfile"
}
wait_ready() {
  for _ in $(seq 1 150); do
    if .venv/bin/python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$1/moto-api/')" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "emulator did not start on port $1; see .local/emulator-$port-*.log" >&2
  return 1
}
stop() {
  if [ -f "$pidfile" ]; then
    while read -r pid; do
      [ -n "$pid" ] && { kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true; }
    done < "$pidfile"
    rm -f "$pidfile"
  fi
  rm -f "$envfile"
}
case "${1:-}" in
  free-port) free_port ;;
  start)
    port=${2:-4566}
    [ "$port" = 0 ] && port=4566
    pidfile=.local/emulator-$port.pid
    envfile=.local/emulator-$port.env
    if [ -f "$pidfile" ] && kill -0 "$(tail -n 1 "$pidfile")" 2>/dev/null; then
      echo "http://127.0.0.1:$port"; exit 0
    fi
    rm -f "$pidfile"
    url=http://127.0.0.1:$port
    if [ "${EMULATOR_SPLIT:-1}" = 0 ]; then
      launch all "$port"
      wait_ready "$port" || { stop; exit 1; }
      echo "export AWS_ENDPOINT_URL=$url" > "$envfile"
    else
      ddb=$(free_port); sqs=$(free_port)
      launch dynamodb "$ddb"
      launch sqs "$sqs"
      launch default "$port" "EMULATOR_ROUTES=dynamodb=http://127.0.0.1:$ddb sqs=http://127.0.0.1:$sqs"
      for p in "$ddb" "$sqs" "$port"; do wait_ready "$p" || { stop; exit 1; }; done
      cat > "$envfile" <<ENV
export AWS_ENDPOINT_URL=$url
export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$ddb
export AWS_ENDPOINT_URL_DYNAMODB_STREAMS=http://127.0.0.1:$ddb
export AWS_ENDPOINT_URL_SQS=http://127.0.0.1:$sqs
export AWS_ENDPOINT_URL_SCHEDULER=$url
ENV
    fi
    echo "$url" ;;
  env)
    port=${2:?port}
    cat ".local/emulator-$port.env" ;;
  stop)
    port=${2:?port}
    pidfile=.local/emulator-$port.pid
    envfile=.local/emulator-$port.env
    stop ;;
  *) echo "usage: $0 start [PORT] | env PORT | stop PORT | free-port" >&2; exit 2 ;;
esac
