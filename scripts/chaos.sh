#!/usr/bin/env bash
# The randomized crash harness (tests/it/chaos), for long runs:
#   scripts/chaos.sh [--rounds N] [--seed S] [--gateways 1|3]
# Prints one line per round (faults injected, acknowledged requests, rows, missing, duplicate
# and wrong rows, items missing at the backends, drain time) and stops at the first round whose
# invariants fail. Needs what the test suite needs (./scripts/setup.sh), TimescaleDB included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds=50
seed=$(date +%s)
gateways=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --gateways) gateways=$2; shift 2 ;;
        *) echo "usage: $0 [--rounds N] [--seed S] [--gateways 1|3]" >&2; exit 2 ;;
    esac
done
case "${gateways}" in
    1) test=chaos::randomized_faults_lose_and_duplicate_nothing_needs_timescaledb ;;
    3) test=chaos::randomized_faults_across_three_gateways_needs_timescaledb ;;
    *) echo "--gateways is 1 or 3" >&2; exit 2 ;;
esac

export CHAOS_ROUNDS=${rounds} CHAOS_SEED=${seed}
# The harness runs the otelgate binary (package otelgate-cli), which `--test it` alone does
# not build.
cargo build --release -q --bin otelgate
cargo nextest run --release --cargo-quiet --no-capture --test it -E "test(=${test})" 2>&1 \
    | grep -vE '^\s+[0-9]+: |^\s+at |^note: |Nextest run ID'
