#!/usr/bin/env bash
# Issue 11's measurements, one Markdown row per case: the memory store (one
# key), then Redis with each key count of KEYS_LIST, ROUNDS rounds each, the
# MEDIAN of the rounds for every column. Each round is a fresh throwaway
# redis-server and a fresh server (so Redis memory per key is measured from
# an empty state, and RSS from a fresh process) with the bench catalog
# (benches/catalog.yaml's stage and plan and bench keys 0..K, written by
# `tollgate bench-catalog generate`), and one `tollgate bench --json
# --redis-url ... --server-pid ...` (docs/benchmarks.md). With HALF=1 each
# case then runs ROUNDS more rounds paced (`bench --rate`) at half the
# median saturating Authorize rate, for the p99 at half saturation.
#
#   benches/perf.sh
#   DURATION=10s ROUNDS=3 KEYS_LIST="1 10000 100000" benches/perf.sh
#
# Settings (environment):
#   DURATION        length of each bench phase (5s)
#   ROUNDS          rounds per case, the median is reported (3)
#   KEYS_LIST       key counts of the Redis cases ("1 10000")
#   TOLLGATE_BIN    the binary (default: cargo build --release, target/release/tollgate)
#   SERVER_BIN      the binary that serves (default: TOLLGATE_BIN): an older
#                   build's server measured by this build's load generator,
#                   for a before/after in one run
#   WORKER_THREADS  the server's --worker-threads (1; empty: one per CPU)
#   CONCURRENCY     calls in flight (64)       CONNECTIONS   HTTP/2 connections (4)
#   BENCH_ROUNDS    (health, authorize) pairs within one bench run (1)
#   HALF            1: also the p99 at half the saturating rate (1)
#   MEMORY          1: include the memory-store case (1)
#   KEEP            1: keep the logs and each round's JSON (printed at the end)
#   ADMISSION       the bench plan's admission: exact or leased (exact)
# Needs redis-server/redis-cli, python3. A benchmark: not run by the tests or CI.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
KEYS_LIST=${KEYS_LIST:-1 10000}
WORKER_THREADS=${WORKER_THREADS-1}
CONCURRENCY=${CONCURRENCY:-64}
CONNECTIONS=${CONNECTIONS:-4}
BENCH_ROUNDS=${BENCH_ROUNDS:-1}
HALF=${HALF:-1}
MEMORY=${MEMORY:-1}
KEEP=${KEEP:-0}
ADMISSION=${ADMISSION:-exact}
if [ -z "${TOLLGATE_BIN:-}" ]; then
  cargo build --release --bin tollgate >/dev/null
  TOLLGATE_BIN=target/release/tollgate
fi
BIN=$TOLLGATE_BIN
SERVER_BIN=${SERVER_BIN:-$BIN}
TMP=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then echo "kept: $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One round: a fresh Redis (for the Redis store) and server, one bench run.
#   round STORE KEYS RATE OUT      (RATE empty: saturating)
round() {
  local store=$1 keys=$2 rate=$3 out=$4
  local port rport="" rpid="" spid
  port=$(free_port)
  local serve=(serve --config "$TMP/catalog-$keys.yaml" --listen "127.0.0.1:$port" --admin-listen off)
  [ -n "$WORKER_THREADS" ] && serve+=(--worker-threads "$WORKER_THREADS")
  local bench=(bench --server "http://127.0.0.1:$port" --keys "$keys" --stage bench/live --method /items/42/GET
    --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" --duration "$DURATION" --rounds "$BENCH_ROUNDS" --json)
  [ -n "$rate" ] && bench+=(--rate "$rate")
  if [ "$store" = redis ]; then
    rport=$(free_port)
    mkdir -p "$TMP/redis-$rport"
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP/redis-$rport" \
      >"$TMP/redis-$rport/log" 2>&1 &
    rpid=$!
    until redis-cli -p "$rport" ping >/dev/null 2>&1; do sleep 0.1; done
    serve+=(--redis-url "redis://127.0.0.1:$rport")
    bench+=(--redis-url "redis://127.0.0.1:$rport")
  fi
  "$SERVER_BIN" "${serve[@]}" >"$out.server.log" 2>&1 &
  spid=$!
  "$BIN" bench-catalog wait-serving --server "http://127.0.0.1:$port" --timeout 10m >/dev/null
  "$BIN" "${bench[@]}" --server-pid "$spid" >"$out"
  kill "$spid"; wait "$spid" 2>/dev/null || true
  if [ -n "$rpid" ]; then kill "$rpid"; wait "$rpid" 2>/dev/null || true; fi
}

# The medians of a case's rounds: `median FIELD FILES...`.
median() {
  python3 - "$@" <<'EOF'
import json, statistics, sys
field, files = sys.argv[1], sys.argv[2:]
vals = [json.load(open(f)).get(field) for f in files]
vals = [v for v in vals if v is not None]
print(statistics.median(vals) if vals else "")
EOF
}

CASES=()
[ "$MEMORY" = 1 ] && CASES+=("memory:1")
for k in $KEYS_LIST; do CASES+=("redis:$k"); done
for case in "${CASES[@]}"; do
  k=${case#*:}
  [ -f "$TMP/catalog-$k.yaml" ] || "$BIN" bench-catalog generate --keys "$k" --yaml "$TMP/catalog-$k.yaml" --admission "$ADMISSION" >/dev/null
done

ROWS=()
for case in "${CASES[@]}"; do
  store=${case%%:*} k=${case#*:}
  files=() half=()
  for r in $(seq "$ROUNDS"); do
    echo "== $store, $k key(s), round $r of $ROUNDS" >&2
    round "$store" "$k" "" "$TMP/$store-$k-$r.json"
    files+=("$TMP/$store-$k-$r.json")
  done
  rate=""
  if [ "$HALF" = 1 ]; then
    rate=$(python3 -c "print(round($(median authorize_per_sec "${files[@]}") / 2))")
    for r in $(seq "$ROUNDS"); do
      echo "== $store, $k key(s), paced at $rate/s, round $r of $ROUNDS" >&2
      round "$store" "$k" "$rate" "$TMP/$store-$k-half-$r.json"
      half+=("$TMP/$store-$k-half-$r.json")
    done
  fi
  ROWS+=("$(python3 - "$store" "$k" "$rate" "${#files[@]}" "${files[@]}" "${half[@]}" <<'EOF'
import json, statistics, sys
store, keys, rate, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
sat = [json.load(open(f)) for f in sys.argv[5:5 + n]]
half = [json.load(open(f)) for f in sys.argv[5 + n:]]

def med(runs, field):
    vals = [r[field] for r in runs if r.get(field) is not None]
    return statistics.median(vals) if vals else None

def fmt(v, spec):
    return "–" if v is None else format(v, spec)

name = f"{'memory' if store == 'memory' else 'Redis'}, {keys:,} key{'s' if keys != 1 else ''}"
if half:
    behind = sum(r["rounds"][i]["authorize"].get("behind_schedule", 0) for r in half for i in range(len(r["rounds"])))
    calls = sum(r["rounds"][i]["authorize"]["calls"] for r in half for i in range(len(r["rounds"])))
    half_cell = f"{fmt(med(half, 'p99_ms'), '.2f')} ms at {int(rate):,}/s"
    if behind:
        half_cell += f" ({behind} of {calls} calls behind schedule)"
else:
    half_cell = "–"
rss = med(sat, "rss_bytes")
cells = [
    name,
    fmt(med(sat, "ratio"), ".2f"),
    fmt(med(sat, "authorize_per_sec"), ",.0f"),
    f"{fmt(med(sat, 'p50_ms'), '.2f')} / {fmt(med(sat, 'p99_ms'), '.2f')} / {fmt(med(sat, 'p999_ms'), '.2f')}",
    half_cell,
    fmt(med(sat, "redis_us_per_decision"), ".1f"),
    fmt(med(sat, "redis_calls_per_decision"), ".2f"),
    fmt(med(sat, "redis_bytes_per_key"), ",.0f"),
    "–" if rss is None else f"{rss / 1e6:.1f} MB",
]
print("| " + " | ".join(cells) + " |")
EOF
)")
done

echo
echo "$(date -u +%Y-%m-%d), $(git rev-parse --short HEAD 2>/dev/null || echo '?'): median of $ROUNDS rounds, $DURATION phases," \
  "concurrency $CONCURRENCY over $CONNECTIONS connections, --worker-threads ${WORKER_THREADS:-(one per CPU)}"
echo
echo "| case | ratio | Authorize/s | p50 / p99 / p99.9 ms | p99 at half saturation | Redis µs/decision | Redis calls/decision | Redis bytes/key | server RSS |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
