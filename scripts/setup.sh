#!/usr/bin/env bash
# Installs what building and testing otelgate needs on top of a rustup-installed stable
# Rust: the rustfmt and clippy components, cargo-nextest, and the real programs the demo and
# the tests run: a PostgreSQL server, PgBouncer and Prometheus (Debian/Ubuntu packages).
# Safe to run again; prints nothing when everything is already there. Never upgrades
# installed packages (a PostgreSQL with TimescaleDB built against it stays as it is).
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

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: please install $* with your package manager" >&2
        exit 1
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    echo "setup: installing $*"
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-upgrade "$@" >/dev/null; then
        $sudo apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-upgrade "$@" >/dev/null
    fi
}

# PostgreSQL's server programs: the demo and the database tests start throwaway clusters.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${PG_BIN_DIR:-}" ]; then
    apt_install postgresql
fi
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
    apt_install pgbouncer
fi
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    apt_install prometheus
fi
