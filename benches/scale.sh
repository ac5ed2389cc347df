#!/usr/bin/env bash
# The catalog at scale (issue 9): for each catalog size K, measures every
# target of the issue on one throwaway Redis and prints one line per target:
#
#   name  measured  target  met|MISSED
#
#   benches/scale.sh [K ...]        default: 10000 100000 1000000
#
# Per K: generate the catalog file and the import CSV (bench keys 0..K,
# `tollgate bench-catalog generate`); time `check-config` of the file; start
# a Redis (free port, no persistence, SLOWLOG of everything over 1 ms) and an
# Admin replica; import the CSV through Admin (`keys import`, in chunks);
# start a replica on the catalog now in Redis and time it to SERVING, read
# its RSS; start the other replicas (REPLICAS in all) and time propagation
# of a key change to all of them; start one more replica and check that it
# wrote nothing to Redis and made no other replica reload; run `tollgate
# bench --keys K` alone, then beside a stream of CHURN_RATE changes/s; time
# ListApiKeys pages of 500; read the slowest catalog command in SLOWLOG.
#
# Not a test: nothing here runs in CI. Settings (environment):
#   TOLLGATE_BIN    the binary to measure (default: `cargo build --release`
#                   once, then target/release/tollgate)
#   REPLICAS=10     replicas for propagation and churn (fewer when memory is short)
#   TRIALS=20       propagation trials
#   BENCH_DURATION=10s   each `tollgate bench` phase
#   CHURN_RATE=100  Admin changes per second beside the second bench
#   NOISE=1.5       "within noise": p99 with churn <= NOISE x p99 alone
#   CHUNK_ROWS=5000      rows per import call
#   STEP_TIMEOUT=1800    seconds check-config or the import may take before
#                        it is stopped (and reported as MISSED)
#   KEEP=1          keep the work directory (logs, files) and print its path
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(10000 100000 1000000)
REPLICAS=${REPLICAS:-10}
TRIALS=${TRIALS:-20}
BENCH_DURATION=${BENCH_DURATION:-10s}
CHURN_RATE=${CHURN_RATE:-100}
NOISE=${NOISE:-1.5}
CHUNK_ROWS=${CHUNK_ROWS:-5000}
STEP_TIMEOUT=${STEP_TIMEOUT:-1800}
STAGE=bench/live
METHOD=/items/42/GET
# What a replica's log says when it loads the whole catalog (before the
# rewrite: "catalog reloaded"; after: "reloading the whole catalog" and
# "catalog loaded"); the check that a start makes no other replica reload
# counts these lines.
RELOAD_PATTERN='catalog reloaded|catalog loaded|reloading the whole catalog'
export TOLLGATE_ADMIN_TOKEN=scale-bench-admin-token-0123456789
export RUST_LOG=${RUST_LOG:-info}

for tool in redis-server redis-cli jq python3 timeout; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not on PATH" >&2; exit 1; }
done
if [ -z "${TOLLGATE_BIN:-}" ]; then
  cargo build --release --bin tollgate >/dev/null
  TOLLGATE_BIN=target/release/tollgate
fi
BIN=$(realpath "$TOLLGATE_BIN")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-scale.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l; }                     # seconds since $1
fmt() { printf "%.${2:-1}f" "$1"; }
le() { [ "$(echo "$1 <= $2" | bc -l)" = 1 ]; }              # $1 <= $2, decimals
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
note() { echo "# $*" >&2; }

# One result line; with a column name, the value also goes into that column
# of the Markdown row (docs/benchmarks.md's tables).
declare -A COL
report() { # name, measured, target, met (0|1|-), [column]
  local verdict=$4
  case "$verdict" in 1) verdict=met ;; 0) verdict=MISSED ;; esac
  printf '%-40s %-24s %-14s %s\n' "$1" "$2" "$3" "$verdict"
  [ -z "${5:-}" ] || COL[$5]=$2
}
col() { echo "${COL[$1]:--}"; }
markdown_row() { # K
  echo "| $1 | $(col check) | $(col import) | $(col start) | $(col rss) | $(col perkey) | $(col p50) / $(col p99) |" \
    "$(col alone) / $(col churn) | $(col changes) | $(col decisions) | $(col list50) / $(col listmax) |" \
    "$(col writes) / $(col reloads) | $(col slow) |"
}
check() { if le "$1" "$2"; then echo 1; else echo 0; fi; }

# Polls (every 50 ms, up to $2 s) until command $1 succeeds.
poll() {
  local deadline; deadline=$(echo "$(now) + $2" | bc)
  until eval "$1" >/dev/null 2>&1; do
    le "$(now)" "$deadline" || return 1
    sleep 0.05
  done
}

# start_replica NAME [serve args...]: starts a replica on $REDIS_URL with the
# bench catalog file (already applied: nothing to write) on free ports.
# Sets REPLICA_PID, REPLICA_URL (data plane), REPLICA_ADMIN (Admin listener).
start_replica() {
  local name=$1; shift
  local log="$RUN/$name.log"
  "$BIN" serve --config "$RUN/base.yaml" --redis-url "$REDIS_URL" \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
  REPLICA_PID=$!
  PIDS+=("$REPLICA_PID")
  echo "$REPLICA_PID" >"$RUN/$name.pid"
  poll "grep -q 'admin_addr=' '$log' && grep -q 'tollgate listening addr=' '$log'" 60 \
    || { echo "error: replica $name did not start listening; its log:" >&2; cat "$log" >&2; exit 1; }
  REPLICA_URL=http://$(sed -n 's/.*tollgate listening addr=\([^ ]*\).*/\1/p' "$log" | head -1)
  REPLICA_ADMIN=http://$(sed -n 's/.*admin_addr=\([^ ]*\).*/\1/p' "$log" | head -1)
  echo "$REPLICA_URL" >"$RUN/$name.url"
}

wait_serving() { # URL -> ms from now until SERVING
  "$BIN" bench-catalog wait-serving --server "$1" --timeout "${STEP_TIMEOUT}s" | jq -r .serving_after_ms
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
mem_available_kb() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }

# Write commands Redis ran so far ("COMMAND INFO" flags them; PUBLISH too,
# since it makes replicas act), one "command calls" line each.
write_calls() {
  redis-cli -p "$RPORT" INFO commandstats | tr -d '\r' \
    | sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),.*/\1 \2/p' | sort >"$RUN/cmdstats.tmp"
  while read -r cmd calls; do
    if [ "$cmd" = publish ] || redis-cli -p "$RPORT" COMMAND INFO "$cmd" | grep -qx write; then
      echo "$cmd $calls"
    fi
  done <"$RUN/cmdstats.tmp"
}

reload_lines() { # total lines matching RELOAD_PATTERN in the given replicas' logs
  local n=0 name
  for name in "$@"; do n=$((n + $(grep -Ec "$RELOAD_PATTERN" "$RUN/$name.log" || true))); done
  echo "$n"
}

stop_run() {
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    wait "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  PIDS=()
}

measure() { # K
  local K=$1
  RUN="$WORK/$K"
  mkdir -p "$RUN"
  COL=()
  echo
  echo "== $K keys ($(date -u +%FT%TZ), $BIN, $("$BIN" --version))"
  printf '%-40s %-24s %-14s %s\n' target measured goal verdict

  # 1. The files.
  "$BIN" bench-catalog generate --keys "$K" --yaml "$RUN/catalog.yaml" --csv "$RUN/keys.csv" >"$RUN/generate.json"
  "$BIN" bench-catalog generate --keys 0 --yaml "$RUN/base.yaml" >/dev/null
  note "generated $(jq -r '.yaml.bytes' "$RUN/generate.json") + $(jq -r '.csv.bytes' "$RUN/generate.json") bytes in $(fmt "$(jq -r .secs "$RUN/generate.json")" 2) s"

  # 2. check-config.
  local t0 secs rc=0
  t0=$(now)
  timeout "$STEP_TIMEOUT" "$BIN" check-config "$RUN/catalog.yaml" >"$RUN/check-config.out" 2>&1 || rc=$?
  secs=$(since "$t0")
  if [ "$rc" = 0 ]; then
    report "check-config time" "$(fmt "$secs") s" "<= 10 s" "$(check "$secs" 10)" check
  else
    report "check-config time" "> $(fmt "$secs" 0) s (exit $rc)" "<= 10 s" 0 check
  fi

  # 3. Redis, with a slow log of every command over 1 ms.
  RPORT=$(free_port)
  REDIS_URL=redis://127.0.0.1:$RPORT
  redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN" >"$RUN/redis.log" 2>&1 &
  PIDS+=($!)
  echo $! >"$RUN/redis.pid"
  poll "redis-cli -p $RPORT ping | grep -q PONG" 20 || { echo "error: redis-server did not start" >&2; cat "$RUN/redis.log" >&2; exit 1; }
  redis-cli -p "$RPORT" SLOWLOG RESET >/dev/null
  redis-cli -p "$RPORT" CONFIG SET slowlog-log-slower-than 1000 >/dev/null
  redis-cli -p "$RPORT" CONFIG SET slowlog-max-len 100000 >/dev/null

  # 4. The Admin replica (r0), which writes the bench stage and plan, then
  #    the import of the keys through it.
  start_replica r0
  local r0_admin=$REPLICA_ADMIN
  wait_serving "$REPLICA_URL" >/dev/null
  t0=$(now)
  rc=0
  timeout "$STEP_TIMEOUT" "$BIN" keys import "$RUN/keys.csv" --chunk-rows "$CHUNK_ROWS" --server "$r0_admin" --json \
    >"$RUN/import.json" 2>"$RUN/import.err" || rc=$?
  secs=$(since "$t0")
  if [ "$rc" != 0 ]; then
    report "CSV import time" "> $(fmt "$secs" 0) s (exit $rc)" "<= 60 s" 0 import
    note "import stopped: $(tail -1 "$RUN/import.err"); the later targets need the keys: not measured"
    stop_run
    markdown_row "$K" >>"$WORK/rows.md"
    return
  fi
  local imported warnings
  imported=$(jq '.ids | length' "$RUN/import.json")
  warnings=$(jq '.warnings | length' "$RUN/import.json")
  report "CSV import time" "$(fmt "$secs") s" "<= 60 s" "$(check "$secs" 60)" import
  report "CSV import: keys imported / warnings" "$imported / $warnings" "$K / 0" "$([ "$imported" = "$K" ] && [ "$warnings" = 0 ] && echo 1 || echo 0)"

  # 5. A replica starting on the catalog in Redis: time to SERVING, memory.
  t0=$(now)
  start_replica r1
  local r1_url=$REPLICA_URL r1_pid=$REPLICA_PID
  wait_serving "$r1_url" >/dev/null
  secs=$(since "$t0")
  report "replica start to SERVING" "$(fmt "$secs" 2) s" "<= 10 s" "$(check "$secs" 10)" start
  local rss empty_rss per_key
  rss=$(rss_kb "$r1_pid")
  start_replica empty --redis-prefix "empty$K:"   # the same process with no keys, for the per-key figure
  wait_serving "$REPLICA_URL" >/dev/null
  empty_rss=$(rss_kb "$REPLICA_PID")
  kill "$REPLICA_PID"; wait "$REPLICA_PID" 2>/dev/null || true; rm -f "$RUN/empty.pid"
  per_key=$(echo "($rss - $empty_rss) * 1024 / $K" | bc -l)
  report "replica RSS" "$(fmt "$(echo "$rss / 1024" | bc -l)") MB" "<= 400 MB" "$(check "$rss" $((400 * 1024)))" rss
  report "replica RSS per key (above no keys)" "$(fmt "$per_key" 0) B" "<= 400 B" "$(check "$per_key" 400)" perkey
  note "peak RSS of r1 while loading: $(awk '/^VmHWM:/ {print $2}' "/proc/$r1_pid/status") kB; with no keys: $empty_rss kB"

  # 6. The other replicas, as many as memory allows (each may hold two
  #    catalogs while it reloads), then propagation to all of them.
  local n=$REPLICAS fit
  fit=$(( $(mem_available_kb) / (2 * rss + 1) ))
  if [ "$fit" -lt $((n - 2)) ]; then n=$((fit + 2)); note "only $n replicas: memory for no more"; fi
  local names=(r0 r1) urls=("$(cat "$RUN/r0.url")" "$r1_url") i
  for ((i = 2; i < n; i++)); do
    start_replica "r$i"
    names+=("r$i"); urls+=("$REPLICA_URL")
  done
  for url in "${urls[@]:2}"; do wait_serving "$url" >/dev/null; done
  local replica_args=()
  for url in "${urls[@]}"; do replica_args+=(--replica "$url"); done
  "$BIN" bench-catalog propagation --server "$r0_admin" "${replica_args[@]}" --trials "$TRIALS" \
    --stage "$STAGE" --method "$METHOD" >"$RUN/propagation.json"
  local p50 p99 maxp
  p50=$(jq .all.p50_ms "$RUN/propagation.json")
  p99=$(jq .all.p99_ms "$RUN/propagation.json")
  maxp=$(jq .all.max_ms "$RUN/propagation.json")
  report "propagation to all $n replicas, p50" "$(fmt "$p50") ms" "-" - p50
  report "propagation to all $n replicas, p99" "$(fmt "$p99") ms (max $(fmt "$maxp"))" "<= 1000 ms" "$(check "$p99" 1000)" p99

  # 7. One more replica: it writes nothing, and no other replica reloads.
  #    Watched from before its start until one catalog poll (1 s) after it
  #    is SERVING, while nothing else happens (before the churn below, whose
  #    aftermath could make a replica reload on its own); then stopped.
  write_calls >"$RUN/writes.before"
  local reloads_before
  reloads_before=$(reload_lines "${names[@]}")
  start_replica extra
  wait_serving "$REPLICA_URL" >/dev/null
  sleep 1.1   # an observation window (one catalog poll), not a synchronisation
  write_calls >"$RUN/writes.after"
  local writes reloads
  writes=$(join -a2 -e0 -o 2.1,1.2,2.2 "$RUN/writes.before" "$RUN/writes.after" | awk '$3 > $2 {n += $3 - $2; printf "%s+%d ", $1, $3 - $2 > "/dev/stderr"} END {print n + 0}' 2>"$RUN/writes.diff")
  reloads=$(( $(reload_lines "${names[@]}") - reloads_before ))
  report "writes by a starting replica" "$(echo "$writes $(cat "$RUN/writes.diff")" | sed "s/ *$//")" "0" "$([ "$writes" = 0 ] && echo 1 || echo 0)" writes
  report "other replicas reloaded by it" "$reloads" "0" "$([ "$reloads" = 0 ] && echo 1 || echo 0)" reloads
  kill "$REPLICA_PID"; wait "$REPLICA_PID" 2>/dev/null || true; rm -f "$RUN/extra.pid"


  # 8. Decisions over all K keys, alone and beside a stream of changes.
  local bench_args=(--server "$r1_url" --keys "$K" --stage "$STAGE" --method "$METHOD" --rounds 1 --duration "$BENCH_DURATION" --json)
  "$BIN" bench "${bench_args[@]}" >"$RUN/bench-alone.json"
  local alone with churn_secs
  alone=$(jq '.rounds[0].authorize.p99_us / 1000' "$RUN/bench-alone.json")
  churn_secs=$(echo "2 * $(echo "$BENCH_DURATION" | tr -d s) + 5" | bc)
  "$BIN" bench-catalog churn --server "$r0_admin" --rate "$CHURN_RATE" --duration "${churn_secs}s" \
    >"$RUN/churn.json" 2>"$RUN/churn.err" &
  local churn_pid=$!
  PIDS+=("$churn_pid")
  poll "grep -q 'churn: started' '$RUN/churn.err'" "$STEP_TIMEOUT" || { echo "error: churn did not start:" >&2; cat "$RUN/churn.err" >&2; exit 1; }
  "$BIN" bench "${bench_args[@]}" >"$RUN/bench-churn.json"
  wait "$churn_pid" || { echo "error: churn failed:" >&2; cat "$RUN/churn.err" >&2; exit 1; }
  with=$(jq '.rounds[0].authorize.p99_us / 1000' "$RUN/bench-churn.json")
  local failed skipped attempted
  failed=$(jq .failed "$RUN/churn.json")
  skipped=$(jq .skipped "$RUN/churn.json")
  attempted=$(jq .attempted "$RUN/churn.json")
  report "decision p99, no changes" "$(fmt "$alone" 2) ms" "-" - alone
  report "decision p99, $CHURN_RATE changes/s" "$(fmt "$with" 2) ms" "<= $NOISE x alone" "$(check "$with" "$(echo "$NOISE * $alone" | bc -l)")" churn
  report "changes failed / skipped (of due)" "$failed / $skipped (of $((attempted + skipped)))" "0 / 0" "$([ "$failed" = 0 ] && [ "$skipped" = 0 ] && echo 1 || echo 0)" changes
  local errors calls
  errors=$(jq .rounds[0].authorize.errors "$RUN/bench-churn.json")
  calls=$(jq .rounds[0].authorize.calls "$RUN/bench-churn.json")
  report "decisions failed, $CHURN_RATE changes/s" "$errors of $calls" "0" "$([ "$errors" = 0 ] && echo 1 || echo 0)" decisions
  note "decisions failed alone: $(jq .rounds[0].authorize.errors "$RUN/bench-alone.json"); an Admin change took $(jq .latency.p50_ms "$RUN/churn.json") ms (p50), $(jq .latency.p99_ms "$RUN/churn.json") ms (p99); errors: $(jq -c .errors "$RUN/churn.json") $(jq -c .first_errors "$RUN/churn.json")"

  # 9. ListApiKeys pages of 500.
  "$BIN" bench-catalog list --server "$r0_admin" --pages 10 >"$RUN/list.json"
  report "ListApiKeys 500-key page, p50" "$(fmt "$(jq .p50_ms "$RUN/list.json")") ms" "-" - list50
  report "ListApiKeys 500-key page, max" "$(fmt "$(jq .max_ms "$RUN/list.json")") ms" "<= 50 ms" "$(check "$(jq .max_ms "$RUN/list.json")" 50)" listmax

  # 10. The slowest catalog command Redis saw in all of the above.
  "$BIN" bench-catalog slowlog --redis-url "$REDIS_URL" >"$RUN/slowlog.json"
  local slow cmd
  slow=$(jq '.longest_catalog.ms // 0' "$RUN/slowlog.json")
  cmd=$(jq -r '.longest_catalog.command // "-"' "$RUN/slowlog.json" | cut -c1-60)
  report "longest catalog command (SLOWLOG)" "$(fmt "$slow") ms" "<= 5 ms" "$(check "$slow" 5)" slow
  note "it was: $cmd ($(jq .catalog_entries "$RUN/slowlog.json") catalog commands over 1 ms)"

  stop_run
  markdown_row "$K" >>"$WORK/rows.md"
}

for K in "${SIZES[@]}"; do
  start=$(now)
  measure "$K"
  note "$K keys measured in $(fmt "$(since "$start")" 0) s"
done
echo
echo "Markdown rows (docs/benchmarks.md):"
cat "$WORK/rows.md" 2>/dev/null || true
