#!/usr/bin/env bash
# Soak: a gateway with its durable log on, writing frames into a throwaway TimescaleDB for a
# long time at a steady rate with a burst in the middle, sampled over time:
#  - gateway RSS every 5 s;
#  - per minute: frames offered and acknowledged, refusals, acknowledgement latency p50/p99
#    (`otelgate load`) and receive-to-commit latency p50/p99 of that minute's rows;
#  - at the end: every acknowledged frame is a row, once, with its 3 detections.
# Then plots it all into $OUT/soak.png (matplotlib, installed into target/soak-venv); lines
# "<from minute> <to minute> <label>" in $OUT/busy.txt shade other work done on the machine
# meanwhile (re-plot with `target/soak-venv/bin/python scripts/soak_plot.py $OUT`).
# Each minute is one `otelgate load` run, so the client reconnects every minute and there is
# a gap of about a second between minutes while it counts that minute's rows.
# Knobs: SOAK_MINUTES (default 120), SOAK_RATE (frames/s, default 1000), SOAK_BURST_AT (minute
# the burst starts, default half way less 5), SOAK_BURST_MINUTES (default 10), SOAK_BURST_FACTOR
# (default 10), SOAK_SHAPE (default frames: 3 detections per frame, 4 rows), SOAK_BATCH
# (spans per request, default 128), SOAK_CONNECTIONS (default 8), OUT (default target/soak).
# Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MINUTES=${SOAK_MINUTES:-120}
RATE=${SOAK_RATE:-1000}
BURST_AT=${SOAK_BURST_AT:-$(( MINUTES / 2 - 5 ))}
BURST_MINUTES=${SOAK_BURST_MINUTES:-10}
BURST_FACTOR=${SOAK_BURST_FACTOR:-10}
SHAPE=${SOAK_SHAPE:-frames}
BATCH=${SOAK_BATCH:-128}
CONNECTIONS=${SOAK_CONNECTIONS:-8}
OUT=${OUT:-target/soak}
rm -rf "$OUT"
mkdir -p "$OUT"
cargo build --release -q --bin otelgate
work=$(mktemp -d)
# A copy of the binary: rebuilding the tree while the soak runs does not change what it runs.
BIN=$work/otelgate
cp target/release/otelgate "$BIN"
git rev-parse HEAD >"$OUT/commit.txt" 2>/dev/null || true

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf '==> %s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
wait_for() { # url, seconds
    for _ in $(seq 1 $(( $2 * 10 ))); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "timed out waiting for $1" >&2; return 1
}

log "starting a throwaway PostgreSQL (fsync on)"
$BIN testbed postgres >"$work/pg.url" 2>"$work/pg.log" &
pids+=($!)
for _ in $(seq 1 600); do [ -s "$work/pg.url" ] && break; sleep 0.1; done
PG_URL=$(head -1 "$work/pg.url")
sql() { psql "$PG_URL" -Atqc "$1"; }

cat >"$work/gateway.toml" <<TOML
[receiver]
grpc_endpoint = "127.0.0.1:34317"
http_endpoint = "127.0.0.1:34318"
[telemetry]
admin_endpoint = "127.0.0.1:33133"
log_level = "warn"
[log]
dir = "$work/log"
[timescale]
url = "$PG_URL"
TOML
$BIN run --config "$work/gateway.toml" 2>"$OUT/gateway.log" &
GW=$!; pids+=($GW)
wait_for http://127.0.0.1:33133/readyz 30
log "gateway $GW up; $MINUTES minutes at $RATE frames/s, ${BURST_FACTOR}x from minute $BURST_AT for $BURST_MINUTES"

(
    start=$(date +%s)
    while [ -r "/proc/$GW/status" ]; do
        echo "$(( $(date +%s) - start )) $(awk '/^VmRSS/ {print $2}' "/proc/$GW/status")"
        sleep 5
    done
) >"$OUT/rss.txt" 2>/dev/null &
pids+=($!)

SOAK_START=$(date +%s)
: >"$OUT/minutes.jsonl"
for minute in $(seq 0 $(( MINUTES - 1 ))); do
    rate=$RATE
    if [ "$minute" -ge "$BURST_AT" ] && [ "$minute" -lt $(( BURST_AT + BURST_MINUTES )) ]; then
        rate=$(( RATE * BURST_FACTOR ))
    fi
    t0=$(( $(date +%s) - SOAK_START ))
    $BIN load --endpoint http://127.0.0.1:34317 --shape "$SHAPE" -c "$CONNECTIONS" -b "$BATCH" \
        --rate "$rate" --duration 60 --database-url "$PG_URL" --json >"$work/minute.json"
    python3 - "$minute" "$t0" "$rate" "$work/minute.json" >>"$OUT/minutes.jsonl" <<'PY'
import json, sys
minute, t0, rate, path = sys.argv[1:]
r = json.load(open(path))
db = r["database"]
print(json.dumps({"minute": int(minute), "t": int(t0), "rate": int(rate),
    "acknowledged": r["items_acknowledged"], "sent": r["items_sent"],
    "refusals": sum(r["refusals"].values()), "behind": r["requests_behind_schedule"],
    "ack_p50": r["ack_latency_ms"]["p50"], "ack_p99": r["ack_latency_ms"]["p99"], "ack_max": r["ack_latency_ms"]["max"],
    "rows_found": db["frame_rows_found"], "commit_p50": db["receive_to_commit_ms"]["p50"],
    "commit_p99": db["receive_to_commit_ms"]["p99"], "commit_max": db["receive_to_commit_ms"]["max"]}))
PY
    tail -1 "$OUT/minutes.jsonl" >&2
done

log "checking every acknowledged frame is a row, once, with its detections"
ACKED=$(python3 -c "import json; print(sum(json.loads(l)['acknowledged'] for l in open('$OUT/minutes.jsonl')))")
for _ in $(seq 1 120); do
    [ "$(sql "SELECT count(*) FROM frame_metadata")" -ge "$ACKED" ] && break
    sleep 0.5
done
sql "SELECT json_build_object(
        'frames_acknowledged', $ACKED,
        'frame_rows', (SELECT count(*) FROM frame_metadata),
        'distinct_frames', (SELECT count(DISTINCT span_id) FROM frame_metadata),
        'detection_rows', (SELECT count(*) FROM detection_events))" >"$OUT/totals.json"
grep -E 'VmHWM|VmRSS' "/proc/$GW/status" | tr -s ' ' >"$OUT/rss-final.txt"
cat "$OUT/totals.json" "$OUT/rss-final.txt" >&2
kill "$GW"; wait "$GW" 2>/dev/null || true

if [ ! -x target/soak-venv/bin/python ]; then
    python3 -m venv target/soak-venv
    target/soak-venv/bin/pip install -q matplotlib
fi
target/soak-venv/bin/python scripts/soak_plot.py "$OUT"
