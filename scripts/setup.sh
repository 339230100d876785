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

# TimescaleDB for that PostgreSQL: the hypertable, compression, aggregate and policy tests
# need it, and no Debian package exists. Built from source against the headers of the exact
# server version that is installed (never upgrading the server). The source is, in order:
# $TIMESCALEDB_SOURCE (a tarball), the vendored tarball beside the checkout, the release.
TIMESCALEDB_VERSION=2.28.3
pg_bin_dir() {
    if [ -n "${PG_BIN_DIR:-}" ]; then
        echo "${PG_BIN_DIR}"
        return
    fi
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

install_timescaledb() {
    local bin major sharedir pkglibdir
    bin=$(pg_bin_dir)
    major=$("${bin}/postgres" --version | sed -E 's/.* ([0-9]+)\..*/\1/')
    sharedir="/usr/share/postgresql/${major}"
    pkglibdir="/usr/lib/postgresql/${major}/lib"
    if [ -x "${bin}/pg_config" ]; then
        sharedir=$("${bin}/pg_config" --sharedir)
        pkglibdir=$("${bin}/pg_config" --pkglibdir)
    fi
    if [ -f "${sharedir}/extension/timescaledb.control" ] && [ -f "${pkglibdir}/timescaledb.so" ]; then
        return
    fi
    if [ "${major}" != 15 ]; then
        echo "setup: TimescaleDB ${TIMESCALEDB_VERSION} is set up here for PostgreSQL 15 only;" \
            "this server is ${major}: install TimescaleDB for it (https://docs.timescale.com/self-hosted/latest/install/)" >&2
        exit 1
    fi
    if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: TimescaleDB is missing; on this system install TimescaleDB ${TIMESCALEDB_VERSION}" \
            "for PostgreSQL ${major} yourself (https://docs.timescale.com/self-hosted/latest/install/)" >&2
        exit 1
    fi
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
        echo "setup: TimescaleDB is missing and installing it needs root (or sudo)" >&2
        exit 1
    fi
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"

    # Headers of the installed server version exactly: the unpinned package upgrades the
    # server, and TimescaleDB's background jobs then fail.
    local server_version
    server_version=$(dpkg-query -W -f='${Version}' "postgresql-${major}")
    if [ "$(dpkg-query -W -f='${Version}' "postgresql-server-dev-${major}" 2>/dev/null)" != "${server_version}" ]; then
        apt_install "postgresql-server-dev-${major}=${server_version}"
    fi
    command -v cmake >/dev/null 2>&1 || apt_install cmake
    dpkg-query -W libssl-dev >/dev/null 2>&1 || apt_install libssl-dev

    local root source work
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    source="${TIMESCALEDB_SOURCE:-}"
    if [ -z "${source}" ]; then
        for candidate in "${root}/../shared/vendor/timescaledb-${TIMESCALEDB_VERSION}.tar.gz" \
            "${root}/../../shared/vendor/timescaledb-${TIMESCALEDB_VERSION}.tar.gz"; do
            if [ -f "${candidate}" ]; then
                source="${candidate}"
                break
            fi
        done
    fi
    work=$(mktemp -d)
    if [ -z "${source}" ]; then
        source="${work}/timescaledb.tar.gz"
        echo "setup: downloading TimescaleDB ${TIMESCALEDB_VERSION}"
        if ! curl -fsSL -o "${source}" \
            "https://github.com/timescale/timescaledb/archive/refs/tags/${TIMESCALEDB_VERSION}.tar.gz"; then
            echo "setup: cannot download TimescaleDB; set TIMESCALEDB_SOURCE to a tarball of its source" >&2
            exit 1
        fi
    fi
    echo "setup: building TimescaleDB ${TIMESCALEDB_VERSION} from ${source} (about 4 minutes)"
    tar -xzf "${source}" -C "${work}"
    local src
    src=$(find "${work}" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    (
        cd "${src}"
        ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
            -DPG_CONFIG="/usr/lib/postgresql/${major}/bin/pg_config" >"${work}/build.log" 2>&1
        make -C build -j"$(nproc)" >>"${work}/build.log" 2>&1
        $sudo make -C build install >>"${work}/build.log" 2>&1
    ) || {
        echo "setup: building TimescaleDB failed; the last lines of ${work}/build.log:" >&2
        tail -n 30 "${work}/build.log" >&2
        exit 1
    }
    rm -rf "${work}"
    echo "setup: TimescaleDB ${TIMESCALEDB_VERSION} installed for PostgreSQL ${major}"
}
install_timescaledb
