#!/usr/bin/env bash
# Side-by-side benchmark on one machine, in one run, under two shapes of load:
#   mixed  - the project's own: frames with 0-3 detections (1.5 on average) and one GenAI span
#            per ten frames, 2.6 rows per frame, 100 frames per request;
#   frames - frames with exactly 3 detections, 4 rows per frame, 128 spans per request, 8
#            connections; for forwarding, plain spans (`--shape spans`), 512 per request.
# Sections (BENCH_SECTIONS, default "1 2 3 4"):
#  1. rows into PostgreSQL, per shape: the raw binary COPY ceiling (the same rows written
#     straight into the same tables, 2 connections, 10,000 rows per COPY), then the gateway
#     (durable log on) paced at BENCH_PACED_FACTOR x the ceiling just measured over OTLP/gRPC
#     and over OTLP/HTTP, each followed by the ceiling again, in BENCH_ROUNDS rounds (default 3:
#     this VM's ceiling moves 10-50% within minutes, so each paced run is judged against the
#     ceilings just before and after it, and the table gives the median of the rounds and
#     how many kept up, i.e. committed their last row within 1 s of the end of sending);
#     then closed loops: without a lag
#     bound, and with `timescale.queue.throttle_lag_ms` (BENCH_THROTTLE_MS) with clients that
#     wait the advised delay and retry, as OTLP exporters do (`otelgate load --retry-throttled`).
#     Each ceiling and paced run also records the CPU seconds of PostgreSQL (all its processes),
#     the client and the gateway, and the table gives each path's CPU per million rows: on two
#     shared cores the rate a path can reach follows it, and it drifts far less than rows/s;
#     and the VM's CPU steal (/proc/stat), which makes a run incomparable with its neighbours;
#  2. receive-to-commit latency, paced at BENCH_LATENCY_ROWS rows/s (default 100000), per shape,
#     after 5 s of the same load to warm up (not measured); per second of commit p99 and max,
#     vmstat, and PostgreSQL's log are kept in $OUT, and the table gives steal and idle;
#  3. OTLP forwarding to one counting backend, otelgate (log on) against rotel (PyPI `rotel`),
#     per shape (mixed: 4 connections x 100 frames; spans: 8 connections x 512 spans) and per
#     transport, closed loop: spans delivered per second, CPU seconds per million spans and
#     peak RSS of the forwarding process (each started fresh for each run);
#  4. memory under overload: a gateway with a 64 MiB budget offered more than PostgreSQL takes.
# One table at the end puts the shapes side by side (also in $OUT/summary.txt).
# Knobs: BENCH_SECONDS (each run, default 30), BENCH_SHAPES (default "mixed frames"),
# BENCH_PACED_FACTOR (default 0.9), BENCH_PROTOCOLS (paced runs, default "grpc http"), BENCH_ROUNDS,
# BENCH_CLOSED_LOOPS (0 skips section 1's closed loops),
# BENCH_THROTTLE_MS (default 1000), BENCH_LATENCY_ROWS (default 100000), BENCH_SKIP_ROTEL=1,
# BENCH_FORWARD_COMPRESSION (section 3's compression towards the backend, for otelgate and rotel
# alike: none, the default, or gzip, both collectors' default),
# BENCH_PG_SETTINGS (the throwaway PostgreSQL's server settings, NAME=VALUE separated by
# spaces; default "max_wal_size=16GB backend_flush_after=256kB"; empty: the defaults),
# ROTEL (path of rotel-agent; default: installed from PyPI into target/bench-venv),
# BENCH_SINK_TOML (extra lines for the gateway's [timescale] section; default none: the
# defaults a user gets), BENCH_WORKER_THREADS (`pipeline.worker_threads` of the gateways that
# write rows, sections 1, 2 and 4; default 0: one per core), BENCH_OVERLOAD_SECONDS (default
# 60), BENCH_LOG_DIR (where the durable logs live; default the temporary work directory under
# $TMPDIR), OTELGATE_BIN (the binary to measure; default: target/release/otelgate, built
# first), BENCH_PIN=1 (PostgreSQL on the last CPU, everything else, gateway, its clients and
# the ceiling's client, on the others, with taskset: the database then has a core of its own,
# as it would on its own machine, and the ratios of section 1 show whether the gateway feeds
# it as fast as a raw COPY client instead of how the two share the cores).
# Everything listens on 127.0.0.1 and stops by itself. Results: $OUT (default target/bench-e2e).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECS=${BENCH_SECONDS:-30}
SHAPES=${BENCH_SHAPES:-"mixed frames"}
PACED_FACTOR=${BENCH_PACED_FACTOR:-0.9}
PROTOCOLS=${BENCH_PROTOCOLS:-"grpc http"}
THROTTLE_MS=${BENCH_THROTTLE_MS:-1000}
LATENCY_ROWS=${BENCH_LATENCY_ROWS:-100000}
OVERLOAD_SECS=${BENCH_OVERLOAD_SECONDS:-60}
SECTIONS=${BENCH_SECTIONS:-"1 2 3 4"}
SINK_TOML=${BENCH_SINK_TOML:-}
PIN=${BENCH_PIN:-0}
FORWARD_COMPRESSION=${BENCH_FORWARD_COMPRESSION:-none}
CLOSED_LOOPS=${BENCH_CLOSED_LOOPS:-1}
WORKER_THREADS=${BENCH_WORKER_THREADS:-0}
# PostgreSQL as a deployment that takes 100,000+ rows/s is set up: with the default
# max_wal_size (1 GB) such a load forces a checkpoint every ~13 s, and the end of each stalls
# commits for 0.1-0.4 s; with backend_flush_after at 0, dirty pages reach the disk in bursts
# that stall the gateway's log and PostgreSQL's commits alike (BENCHMARKS.md, "Checkpoints,
# writeback and the latency tail").
PG_SETTINGS=${BENCH_PG_SETTINGS-max_wal_size=16GB backend_flush_after=256kB}
ROUNDS=${BENCH_ROUNDS:-3}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
OUT=${OUT:-target/bench-e2e}
rm -rf "$OUT"
mkdir -p "$OUT"
if [[ -n "${OTELGATE_BIN:-}" ]]; then
    BIN=$OTELGATE_BIN
else
    BIN=target/release/otelgate
    cargo build --release -q --bin otelgate
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
LOG_ROOT=${BENCH_LOG_DIR:-$work}
mkdir -p "$LOG_ROOT"

# Command prefixes (taskset execs the command, so $! stays the command's own pid).
DB=() APP=()
if [ "$PIN" = 1 ]; then
    last_cpu=$(( $(nproc) - 1 ))
    [ "$last_cpu" -ge 1 ] || { echo "BENCH_PIN=1 needs at least 2 CPUs" >&2; exit 1; }
    DB=(taskset -c "$last_cpu") APP=(taskset -c "0-$(( last_cpu - 1 ))")
fi
log() { printf '==> %s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
wait_for() { # url, seconds
    for _ in $(seq 1 $(( $2 * 10 ))); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "timed out waiting for $1" >&2; return 1
}
cpu_seconds() { # pid -> utime+stime in seconds
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}
peak_rss_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }
sql() { psql "$PG_URL" -Atqc "$1"; }
# Per shape: frames (or spans) per request, connections, rows per frame.
batch_of() { case $1 in mixed) echo 100 ;; frames) echo 128 ;; spans) echo 512 ;; esac; }
connections_of() { case $1 in mixed) echo 16 ;; *) echo 8 ;; esac; }
rows_per_frame() { case $1 in mixed) echo 2.6 ;; frames) echo 4 ;; esac; }

# Autovacuum's runs are logged too (PostgreSQL 15 logs checkpoints by default): the server's
# log is kept as $OUT/postgres.log, beside section 2's per-second latencies and vmstat.
pg_args=(--setting log_autovacuum_min_duration=0)
for setting in $PG_SETTINGS; do pg_args+=(--setting "$setting"); done
log "starting a throwaway PostgreSQL (fsync on; settings: ${PG_SETTINGS:-the defaults})"
"${DB[@]}" $BIN testbed postgres "${pg_args[@]}" >"$work/pg.url" 2>"$work/pg.log" &
pids+=($!)
for _ in $(seq 1 600); do [ -s "$work/pg.url" ] && break; sleep 0.1; done
PG_URL=$(head -1 "$work/pg.url")
TSDB=$(grep -o 'TimescaleDB: .*' "$work/pg.log" || true)
log "PostgreSQL at $PG_URL ($TSDB)"
echo "$TSDB; server settings: ${PG_SETTINGS:-the defaults of PostgreSQL}; gateway worker threads: $([ "$WORKER_THREADS" = 0 ] && echo "one per core" || echo "$WORKER_THREADS")" >"$OUT/timescaledb.txt"
PG_DATA=$(sql "SHOW data_directory")
PG_PID=$(head -1 "$PG_DATA/postmaster.pid")

# CPU seconds, to compare what a row costs the whole machine on each path: on two shared
# cores the rate a path can reach follows its CPU per row, and CPU per row moves far less
# than rows/s does when the VM's speed drifts.
pg_cpu_seconds() { # every process of the cluster, exited backends included (the postmaster reaps them)
    { for child in $(pgrep -P "$PG_PID"); do awk '{ print $14 + $15 }' "/proc/$child/stat" 2>/dev/null; done
      awk '{ print $14 + $15 + $16 + $17 }' "/proc/$PG_PID/stat"
    } | awk -v hz="$(getconf CLK_TCK)" '{ s += $1 } END { print s / hz }'
}
client_cpu_mark() { # CLIENT_CPU = CPU seconds of this shell's finished children (run in this shell, not in $(...))
    times >"$work/times"
    CLIENT_CPU=$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$work/times")
}
steal_mark() { # -> "steal total" CPU ticks of the whole VM so far (/proc/stat): the time the
    # hypervisor gave these vCPUs' turn to someone else, and all ticks
    awk '$1 == "cpu" { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat
}
steal_percent() { # "steal total" before, "steal total" after -> steal in % of the interval
    python3 -c "import sys; s0, t0, s1, t1 = map(float, sys.argv[1:]); print(round(100 * (s1 - s0) / max(t1 - t0, 1), 1))" $1 $2
}
add_cpu() { # json-file key=seconds... -> adds the keys to the JSON object in the file
    python3 - "$@" <<'PY'
import json, sys
path, pairs = sys.argv[1], sys.argv[2:]
d = json.load(open(path))
d.update({k: round(float(v), 3) for k, v in (p.split("=", 1) for p in pairs)})
json.dump(d, open(path, "w"))
PY
}

rows_since() { # timestamp [until] -> "rows seconds": rows with ingested_at in [since, until)
    local until=${2:-infinity}
    sql "WITH r AS (SELECT ingested_at FROM frame_metadata WHERE ingested_at >= '$1' AND ingested_at < '$until'
                    UNION ALL SELECT ingested_at FROM detection_events WHERE ingested_at >= '$1' AND ingested_at < '$until'
                    UNION ALL SELECT ingested_at FROM llm_requests WHERE ingested_at >= '$1' AND ingested_at < '$until')
         SELECT count(*) || ' ' || coalesce(extract(epoch FROM max(ingested_at) - '$1'::timestamptz), 0) FROM r"
}

common_toml() { # name -> listeners, logging and the durable log of a gateway
    cat <<TOML
[receiver]
grpc_endpoint = "127.0.0.1:24317"
http_endpoint = "127.0.0.1:24318"
[telemetry]
admin_endpoint = "127.0.0.1:23133"
log_level = "warn"
[log]
dir = "$LOG_ROOT/log-$1"
TOML
}
gateway_toml() { # name [extra [timescale.queue] lines] -> $work/<name>.toml
    { common_toml "$1"; printf '[pipeline]\nworker_threads = %s\n' "$WORKER_THREADS"
      printf '[timescale]\nurl = "%s"\n%s\n' "$PG_URL" "$SINK_TOML"
      [ -z "${2:-}" ] || printf '[timescale.queue]\n%s\n' "$2"; } >"$work/$1.toml"
}
gateway_toml rows
cp "$work/rows.toml" "$OUT/gateway-rows.toml"
gateway_toml throttled "throttle_lag_ms = $THROTTLE_MS"

# Each rows run starts on empty tables, after a checkpoint: the same COPY slows as the
# tables and their indexes grow, so runs on tables of different sizes do not compare.
fresh_tables() {
    sql "TRUNCATE frame_metadata, detection_events, llm_requests"
    sql "CHECKPOINT"
}
ceiling() { # shape name -> $OUT/<name>.json
    fresh_tables
    local pg0 pg1 client0 steal0
    pg0=$(pg_cpu_seconds); client_cpu_mark; client0=$CLIENT_CPU; steal0=$(steal_mark)
    "${APP[@]}" $BIN testbed copy --database-url "$PG_URL" --seconds "$SECS" --connections 2 \
        --batch "$(batch_of "$1")" --shape "$1" --rows-per-copy 10000 >"$OUT/$2.json"
    client_cpu_mark; local steal1; steal1=$(steal_mark); sleep 0.5; pg1=$(pg_cpu_seconds)
    add_cpu "$OUT/$2.json" "client_cpu_seconds=$(python3 -c "print($CLIENT_CPU - $client0)")" \
        "postgres_cpu_seconds=$(python3 -c "print($pg1 - $pg0)")" \
        "steal_percent=$(steal_percent "$steal0" "$steal1")"
}

# One gateway run: config shape protocol rate(frames/s, 0 = closed loop) name [load options].
# Writes $OUT/<name>.json (the load report) and $OUT/<name>-rows.json: rows committed while
# the client sent and after, gateway CPU and peak RSS. WARMUP=N first sends N seconds of the
# same load, not measured (connections, the log's first segment, the day's chunks).
gateway_rows() {
    local config=$1 shape=$2 protocol=$3 rate=$4 name=$5 endpoint=http://127.0.0.1:24317
    shift 5
    [ "$protocol" = grpc ] || endpoint=http://127.0.0.1:24318
    rm -rf "$LOG_ROOT/log-$config"
    fresh_tables
    "${APP[@]}" $BIN run --config "$work/$config.toml" 2>"$work/$name.log" &
    local gw=$!; pids+=($gw)
    wait_for http://127.0.0.1:23133/readyz 30
    if [ "${WARMUP:-0}" -gt 0 ]; then
        "${APP[@]}" $BIN load --endpoint "$endpoint" --protocol "$protocol" --shape "$shape" \
            -c "$(connections_of "$shape")" -b "$(batch_of "$shape")" --rate "$rate" \
            --duration "$WARMUP" --json >/dev/null
        sleep 1
    fi
    local start cpu0 cpu1 loader pg0 pg1 client1 gateway1 stopped steal0 steal1
    start=$(sql "SELECT clock_timestamp()")
    pg0=$(pg_cpu_seconds); steal0=$(steal_mark)
    cpu0=$(cpu_seconds "$gw")
    "${APP[@]}" $BIN load --endpoint "$endpoint" --protocol "$protocol" --shape "$shape" \
        -c "$(connections_of "$shape")" -b "$(batch_of "$shape")" --rate "$rate" \
        --duration "$SECS" --database-url "$PG_URL" --json "$@" >"$OUT/$name.json" &
    loader=$!
    # The CPU of the client, the gateway and PostgreSQL as the client stops sending, before
    # the client's own queries that find the rows and their latencies.
    sleep "$SECS"
    client1=$(cpu_seconds "$loader"); gateway1=$(cpu_seconds "$gw"); pg1=$(pg_cpu_seconds); steal1=$(steal_mark)
    stopped=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
    wait "$loader"
    cpu1=$(cpu_seconds "$gw")
    local sent stop during total
    sent=$(json "$OUT/$name.json" "d['seconds']")
    stop=$(sql "SELECT ('$start'::timestamptz + interval '$sent seconds')")
    during=$(rows_since "$start" "$stop")
    total=$(rows_since "$start")
    python3 - "$OUT/$name-rows.json" "$sent" "$during" "$total" "$cpu0" "$cpu1" "$(peak_rss_kib "$gw")" <<'PY'
import json, sys
path, sent, during, total, cpu0, cpu1, hwm = sys.argv[1:]
during_rows, _ = during.split(); total_rows, total_secs = total.split()
json.dump({"sent_seconds": float(sent), "rows_while_sending": int(during_rows),
           "rows_per_second_while_sending": int(during_rows) / float(sent),
           "rows_total": int(total_rows), "backlog_rows": int(total_rows) - int(during_rows),
           "backlog_seconds": max(0.0, float(total_secs) - float(sent)),
           "gateway_cpu_seconds": float(cpu1) - float(cpu0), "gateway_peak_rss_kib": int(hwm)},
          open(path, "w"))
PY
    add_cpu "$OUT/$name-rows.json" "client_cpu_seconds_while_sending=$client1" \
        "gateway_cpu_seconds_while_sending=$(python3 -c "print($gateway1 - $cpu0)")" \
        "postgres_cpu_seconds_while_sending=$(python3 -c "print($pg1 - $pg0)")" \
        "rows_committed_while_sending=$(rows_since "$start" "$stopped" | cut -d' ' -f1)" \
        "steal_percent_while_sending=$(steal_percent "$steal0" "$steal1")"
    kill "$gw"; wait "$gw" 2>/dev/null || true
}

if want 1; then
for shape in $SHAPES; do
    rpf=$(rows_per_frame "$shape")
    log "1. $shape: raw binary COPY ceiling, ${SECS}s"
    ceiling "$shape" "copy-$shape-0"
    n=0
    for round in $(seq 1 "$ROUNDS"); do
        for protocol in $PROTOCOLS; do
            before=$(json "$OUT/copy-$shape-$n.json" "d['rows_per_second']")
            fps=$(python3 -c "print(round($before * $PACED_FACTOR / $rpf))")
            log "1. $shape, round $round of $ROUNDS: gateway, OTLP/$protocol, paced at $PACED_FACTOR x $before rows/s = $fps frames/s"
            gateway_rows rows "$shape" "$protocol" "$fps" "paced-$shape-$protocol-$round"
            add_cpu "$OUT/paced-$shape-$protocol-$round-rows.json" "ceiling_before=$n" "ceiling_after=$((n + 1))" \
                "offered_rows_per_second=$(python3 -c "print($fps * $rpf)")"
            n=$((n + 1))
            log "1. $shape: raw binary COPY ceiling again"
            ceiling "$shape" "copy-$shape-$n"
        done
    done
    [ "$CLOSED_LOOPS" = 1 ] || continue
    log "1. $shape: closed loop, OTLP/gRPC, no lag bound"
    gateway_rows rows "$shape" grpc 0 "closed-$shape"
    log "1. $shape: closed loop, OTLP/gRPC, throttle_lag_ms = $THROTTLE_MS, clients retry after the advised delay"
    gateway_rows throttled "$shape" grpc 0 "throttled-$shape" --retry-throttled
done
fi

if want 2; then
for shape in $SHAPES; do
    fps=$(python3 -c "print(round($LATENCY_ROWS / $(rows_per_frame "$shape")))")
    log "2. $shape: paced at $LATENCY_ROWS rows/s ($fps frames/s), OTLP/gRPC, after a 5 s warm-up"
    vmstat -t 1 >"$OUT/latency-$shape-vmstat.txt" &
    vmstat=$!
    WARMUP=5 gateway_rows rows "$shape" grpc "$fps" "latency-$shape"
    kill "$vmstat"; wait "$vmstat" 2>/dev/null || true
    # Per second of commit (warm-up included): frame rows, p99 and maximum receive-to-commit
    # in ms, computed as `otelgate load` does; to be read beside postgres.log and vmstat.
    sql "WITH l AS (SELECT ingested_at, extract(epoch FROM ingested_at - time) * 1000 - processing_ms AS ms
                    FROM frame_metadata)
         SELECT to_char(date_trunc('second', ingested_at), 'HH24:MI:SS') || ' rows=' || count(*)
                || ' p99=' || round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)
                || ' max=' || round(max(ms)::numeric, 1)
         FROM l GROUP BY date_trunc('second', ingested_at) ORDER BY 1" >"$OUT/latency-$shape-seconds.txt"
done
fi

if want 3; then
log "3. OTLP forwarding: counting backend on 127.0.0.1:25317"
$BIN testbed backend --listen 127.0.0.1:25317 >/dev/null &
pids+=($!)
wait_for http://127.0.0.1:25317/counts 10
delivered() { curl -fs http://127.0.0.1:25317/counts | python3 -c "import json,sys; print(json.load(sys.stdin)['traces'])"; }
settle() { # wait until the backend count stops moving (max 60 s); prints the count
    local last=-1 now
    for _ in $(seq 1 120); do now=$(delivered); [ "$now" = "$last" ] && break; last=$now; sleep 0.5; done
    echo "$now"
}
ROTEL=${ROTEL:-}
if [ "${BENCH_SKIP_ROTEL:-0}" != 1 ] && [ -z "$ROTEL" ]; then
    if [ ! -x target/bench-venv/bin/python ]; then
        python3 -m venv target/bench-venv
        target/bench-venv/bin/pip install -q rotel
    fi
    ROTEL=$(find target/bench-venv -name rotel-agent -type f | head -1)
    log "rotel: $("$ROTEL" --version)"
    "$ROTEL" --version >"$OUT/rotel-version.txt"
fi
{ common_toml forward; cat <<TOML
[exporters.down]
endpoint = "http://127.0.0.1:25317"
compression = "$FORWARD_COMPRESSION"
TOML
} >"$work/forward.toml"
start_collector() { # otelgate|rotel -> pid
    if [ "$1" = otelgate ]; then
        rm -rf "$LOG_ROOT/log-forward"
        $BIN run --config "$work/forward.toml" >/dev/null 2>"$work/forward.log" &
        echo $!
    else
        "$ROTEL" start --otlp-grpc-endpoint 127.0.0.1:24317 --otlp-http-endpoint 127.0.0.1:24318 \
            --exporter otlp --otlp-exporter-endpoint http://127.0.0.1:25317 --otlp-exporter-protocol grpc \
            --otlp-exporter-compression "$FORWARD_COMPRESSION" >"$work/rotel.log" 2>&1 </dev/null &
        echo $!
    fi
}
collectors="otelgate"
[ -z "$ROTEL" ] || collectors="otelgate rotel"
: >"$OUT/forwarding.jsonl"
echo "$FORWARD_COMPRESSION" >"$OUT/forward-compression.txt"
for shape in mixed spans; do
    for protocol in grpc http; do
        for collector in $collectors; do
            pid=$(start_collector "$collector"); pids+=("$pid")
            for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/24317) 2>/dev/null && break; sleep 0.1; done
            sleep 0.5
            endpoint=http://127.0.0.1:24317
            [ "$protocol" = grpc ] || endpoint=http://127.0.0.1:24318
            connections=4 batch=100
            [ "$shape" = mixed ] || { connections=8; batch=512; }
            log "3. $collector, $shape shape, OTLP/$protocol: $connections connections x $batch, closed loop, ${SECS}s"
            before=$(settle); cpu0=$(cpu_seconds "$pid")
            $BIN load --endpoint "$endpoint" --protocol "$protocol" --shape "$shape" -c "$connections" -b "$batch" \
                --duration "$SECS" --json >"$OUT/forward-$collector-$shape-$protocol.json"
            after=$(settle); cpu1=$(cpu_seconds "$pid"); hwm=$(peak_rss_kib "$pid")
            kill "$pid"; wait "$pid" 2>/dev/null || true
            python3 - "$collector" "$shape" "$protocol" "$before" "$after" "$cpu0" "$cpu1" "$hwm" \
                "$OUT/forward-$collector-$shape-$protocol.json" >>"$OUT/forwarding.jsonl" <<'PY'
import json, sys
collector, shape, protocol, before, after, cpu0, cpu1, hwm, path = sys.argv[1:]
load = json.load(open(path))
spans = int(after) - int(before)
cpu = float(cpu1) - float(cpu0)
print(json.dumps({"collector": collector, "shape": shape, "protocol": protocol,
  "spans_acknowledged": load["spans_acknowledged"], "spans_delivered": spans,
  "delivered_per_second": round(spans / load["seconds"]), "cpu_seconds": round(cpu, 2),
  "cpu_seconds_per_million_spans": round(cpu / max(spans, 1) * 1e6, 2),
  "peak_rss_mib": round(int(hwm) / 1024), "ack_p99_ms": round(load["ack_latency_ms"]["p99"], 2)}))
PY
            tail -1 "$OUT/forwarding.jsonl" >&2
        done
    done
done
fi

if want 4; then
log "4. memory under overload: 64 MiB budget, 32 connections, ${OVERLOAD_SECS}s"
sed -e 's/^\[pipeline\]/[pipeline]\nmemory_budget_bytes = 67108864/' "$work/rows.toml" >"$work/overload.toml"
rm -rf "$LOG_ROOT/log-rows"
$BIN run --config "$work/overload.toml" 2>"$work/overload.log" &
GW=$!; pids+=($GW)
wait_for http://127.0.0.1:23133/readyz 30
# RSS every 5 s while the load runs (seconds since the load started, KiB), to tell a plateau
# from growth.
(
    start=$SECONDS
    while [ -r "/proc/$GW/status" ]; do
        echo "$((SECONDS - start)) $(awk '/^VmRSS/ {print $2}' "/proc/$GW/status")"
        sleep 5
    done
) >"$OUT/overload-rss-series.txt" 2>/dev/null &
SAMPLER=$!; pids+=($SAMPLER)
$BIN load --endpoint http://127.0.0.1:24317 -c 32 -b 100 --duration "$OVERLOAD_SECS" --json >"$OUT/overload.json"
grep -E 'VmHWM|VmRSS' "/proc/$GW/status" | tr -s ' ' >"$OUT/overload-rss.txt"
kill "$SAMPLER"; wait "$SAMPLER" 2>/dev/null || true
kill "$GW"; wait "$GW" 2>/dev/null || true
fi

cp "$(dirname "$PG_DATA")/server.log" "$OUT/postgres.log" 2>/dev/null || true
python3 scripts/bench_e2e_table.py "$OUT" "$PACED_FACTOR" "$THROTTLE_MS" "$LATENCY_ROWS" | tee "$OUT/summary.txt"
