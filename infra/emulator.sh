#!/usr/bin/env bash
# Starts or stops the local AWS emulator (moto's server, from ./.venv) on
# 127.0.0.1. Usage:
#   infra/emulator.sh start [PORT]   # PORT 0 or absent: 4566; prints the endpoint URL
#   infra/emulator.sh stop PORT
#   infra/emulator.sh free-port      # prints a free loopback port
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .local
free_port() {
  .venv/bin/python - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}
case "${1:-}" in
  free-port) free_port ;;
  start)
    port=${2:-4566}
    pidfile=.local/emulator-$port.pid
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "http://127.0.0.1:$port"; exit 0
    fi
    setsid .venv/bin/python infra/emulator.py -H 127.0.0.1 -p "$port" > ".local/emulator-$port.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    for _ in $(seq 1 100); do
      if .venv/bin/python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null; then
        echo "http://127.0.0.1:$port"; exit 0
      fi
      sleep 0.1
    done
    echo "emulator did not start on port $port; see .local/emulator-$port.log" >&2
    exit 1 ;;
  stop)
    port=${2:?port}
    pidfile=.local/emulator-$port.pid
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
      rm -f "$pidfile"
    fi ;;
  *) echo "usage: $0 start [PORT] | stop PORT | free-port" >&2; exit 2 ;;
esac
