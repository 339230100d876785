#!/usr/bin/env bash
# Formatting, lints and the whole test suite: the check every change must pass.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() {
    printf '\n==> %s\n' "$*"
}

# The whole workspace: the gateway library (otelgate) and the binary with its tools
# (cli/, otelgate-cli).
step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# Tests that need an external program end in `_needs_<program>` and fail when it is missing.
# TEST_ALLOW_MISSING (comma-separated: timescaledb, pgbouncer, prometheus, or all)
# allows a gap instead: the tests of a missing program it names are left out, and nextest's
# summary counts them as skipped.
pg_bin="${PG_BIN_DIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
present() {
    case "$1" in
        timescaledb) [ -n "${pg_bin}" ] && [ -f "${pg_bin}/../lib/timescaledb.so" ] ;;
        pgbouncer) [ -x /usr/sbin/pgbouncer ] || [ -x /usr/bin/pgbouncer ] ;;
        prometheus) command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 ;;
    esac
}
allowed=",${TEST_ALLOW_MISSING:-},"
filter="all()"
for program in timescaledb pgbouncer prometheus; do
    present "${program}" && continue
    if [[ "${allowed}" == *",${program},"* || "${allowed}" == *",all,"* ]]; then
        echo "test: ${program} is missing; its tests (*_needs_${program}) are skipped, as TEST_ALLOW_MISSING allows"
        filter="${filter} - test(/_needs_${program}\$/)"
    else
        echo "test: ${program} is missing; its tests (*_needs_${program}) will fail (./scripts/setup.sh installs it, or set TEST_ALLOW_MISSING=${program})"
    fi
done

# cli/'s own tests make cargo build the otelgate binary, which tests/it runs as a process.
step "cargo nextest run --workspace --no-fail-fast -E '${filter}'"
cargo nextest run --workspace --no-fail-fast -E "${filter}"

step "cargo bench --bench hot_paths -- --test (smoke run: each benchmark once)"
cargo bench --bench hot_paths -- --test
