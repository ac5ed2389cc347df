#!/usr/bin/env bash
# Throughput of Authorize against health checks on the same server, in one
# run, for the memory store and for Redis (a throwaway redis-server), with a
# multi-threaded and a single-threaded runtime. Ratios, not absolute numbers,
# are what to compare: the machine is shared and noisy.
#
#   benches/run.sh [DURATION] [ROUNDS]      e.g. benches/run.sh 5s 3
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-5s}
ROUNDS=${2:-3}
cargo build --release --bin tollgate >/dev/null
BIN=target/release/tollgate
KEY=benchkey0123456789abcdefghijklmnopqrstuv
TMP=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP" >"$TMP/redis.log" 2>&1 &
until redis-cli -p "$RPORT" ping >/dev/null 2>&1; do sleep 0.1; done

run() { # name, extra serve args...
  local name=$1; shift
  local port; port=$(free_port)
  "$BIN" serve --config benches/catalog.yaml --listen "127.0.0.1:$port" "$@" >"$TMP/$name.log" 2>&1 &
  local pid=$!
  until "$BIN" authorize --server "http://127.0.0.1:$port" --stage bench/live --method /x/GET >/dev/null 2>&1; do sleep 0.1; done
  sleep 1   # Redis store: wait for the catalog and the probe
  echo "== $name"
  "$BIN" bench --server "http://127.0.0.1:$port" --key "$KEY" --stage bench/live --method /items/42/GET \
    --concurrency 64 --connections 4 --duration "$DURATION" --rounds "$ROUNDS"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run "memory, worker-threads 0 (one per CPU)"
run "memory, worker-threads 1" --worker-threads 1
run "redis, worker-threads 0 (one per CPU)" --redis-url "redis://127.0.0.1:$RPORT"
run "redis, worker-threads 1" --redis-url "redis://127.0.0.1:$RPORT" --worker-threads 1
