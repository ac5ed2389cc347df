#!/usr/bin/env bash
# Decision throughput on one Redis against a Redis Cluster of 3 primaries,
# and the cost of --redis-wait-replicas 1 (one Redis with one replica), with
# the decisions spread over KEYS bench keys (so over the cluster's slots).
# Ratios to health checks in the same run, as in benches/run.sh.
#
#   benches/cluster.sh [DURATION] [ROUNDS] [KEYS]     e.g. benches/cluster.sh 5s 3 10000
#
# Not a test: nothing here runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-5s}
ROUNDS=${2:-3}
KEYS=${3:-10000}
if [ -z "${TOLLGATE_BIN:-}" ]; then
  cargo build --release --bin tollgate >/dev/null
  TOLLGATE_BIN=target/release/tollgate
fi
BIN=$TOLLGATE_BIN
TMP=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

# Ports below 32768 with their bus port (+10000) free too.
free_port() {
  python3 - <<'EOF'
import random, socket
while True:
    p = random.randint(10000, 22000)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass
EOF
}

redis() { # port, extra args...
  local port=$1; shift
  mkdir -p "$TMP/r$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP/r$port" "$@" \
    >"$TMP/r$port/log" 2>&1 &
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
}

"$BIN" bench-catalog generate --keys "$KEYS" --yaml "$TMP/catalog.yaml" --csv "$TMP/keys.csv" >/dev/null

run() { # name, serve args...
  local name=$1; shift
  local port; port=$(free_port)
  "$BIN" serve --config "$TMP/catalog.yaml" --listen "127.0.0.1:$port" --admin-listen off --worker-threads 1 "$@" \
    >"$TMP/$name.log" 2>&1 &
  local pid=$!
  "$BIN" bench-catalog wait-serving --server "http://127.0.0.1:$port" >/dev/null
  echo "== $name"
  "$BIN" bench --server "http://127.0.0.1:$port" --keys "$KEYS" --stage bench/live --method /items/42/GET \
    --concurrency 64 --connections 4 --duration "$DURATION" --rounds "$ROUNDS"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

P1=$(free_port); redis "$P1"
run "one Redis" --redis-url "redis://127.0.0.1:$P1"

# A replica of it: --redis-wait-replicas 1 makes every batch wait for its copy.
P2=$(free_port); redis "$P2" --replicaof 127.0.0.1 "$P1"
until redis-cli -p "$P2" info replication | grep -q 'master_link_status:up'; do sleep 0.1; done
redis-cli -p "$P1" flushall >/dev/null
run "one Redis + a replica, --redis-wait-replicas 1" --redis-url "redis://127.0.0.1:$P1" --redis-wait-replicas 1

SEEDS=()
for _ in 1 2 3; do
  p=$(free_port); redis "$p" --cluster-enabled yes --cluster-config-file "$TMP/nodes-$p.conf"
  SEEDS+=("127.0.0.1:$p")
done
redis-cli --cluster create "${SEEDS[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
until redis-cli -p "${SEEDS[0]##*:}" cluster info | grep -q 'cluster_state:ok'; do sleep 0.1; done
URLS=$(printf 'redis://%s,' "${SEEDS[@]}"); URLS=${URLS%,}
run "Redis Cluster, 3 primaries" --redis-mode cluster --redis-url "$URLS"
