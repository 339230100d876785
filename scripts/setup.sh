#!/usr/bin/env bash
# Installs what building and testing otelgate needs on top of a rustup-installed stable
# Rust: the rustfmt and clippy components and cargo-nextest. Safe to run again; prints
# nothing when everything is already there.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) and retry." >&2
    exit 1
fi

add_component() {
    local component=$1
    if ! command -v rustup >/dev/null 2>&1; then
        echo "setup: ${component} is missing and rustup is not available to install it." >&2
        exit 1
    fi
    echo "setup: installing the ${component} component"
    rustup component add "${component}"
}

cargo fmt --version >/dev/null 2>&1 || add_component rustfmt
cargo clippy --version >/dev/null 2>&1 || add_component clippy

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup: installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
