#!/usr/bin/env bash
# Formatting, lints and the whole test suite: the check every change must pass.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() {
    printf '\n==> %s\n' "$*"
}

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo nextest run --no-fail-fast"
cargo nextest run --no-fail-fast

step "cargo bench --bench hot_paths -- --test (smoke run: each benchmark once)"
cargo bench --bench hot_paths -- --test
