# syntax=docker/dockerfile:1
#
# otelgate container image.
#
#   docker build -t otelgate .
#   docker run --rm -v $PWD/otelgate.toml:/etc/otelgate/otelgate.toml:ro \
#     -v otelgate-data:/var/lib/otelgate \
#     -e OTELGATE_TELEMETRY__ADMIN_ENDPOINT=0.0.0.0:13133 -p 4317:4317 -p 4318:4318 otelgate
#
# The config file is not part of the image: mount one at /etc/otelgate/otelgate.toml (compose
# and the Kubernetes manifests do). The durable log lives in /var/lib/otelgate: give every
# container a persistent volume of its own there (see VOLUME below). Inside a container the
# admin endpoint must listen on 0.0.0.0 (OTELGATE_TELEMETRY__ADMIN_ENDPOINT=0.0.0.0:13133) for
# Prometheus to reach it; the HEALTHCHECK below probes 127.0.0.1:13133, which works for both
# 0.0.0.0 and 127.0.0.1.

# ---- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole context (see .dockerignore): the workspace's manifests, src/ (the gateway
# library), cli/ (the binary and its tools), migrations/ (embedded in the binary), benches/
# and tests/ (cargo reads their target declarations).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin otelgate \
    && install -m 0755 target/release/otelgate /usr/local/bin/otelgate

# ---- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: exporters with https:// endpoints and a [exporters.<name>.tls] ca_file
# chain often need the system store at hand. No curl or wget: the healthcheck uses bash's
# /dev/tcp (bash is part of the base image).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 otelgate \
    && useradd --system --uid 10001 --gid otelgate --home-dir /var/lib/otelgate --shell /usr/sbin/nologin otelgate \
    && mkdir -p /etc/otelgate /var/lib/otelgate \
    && chown otelgate:otelgate /var/lib/otelgate

COPY --from=builder /usr/local/bin/otelgate /usr/local/bin/otelgate

# The durable log (log.dir): every accepted request is appended here and synced to disk before
# it is acknowledged, next to each destination's cursor, so that after a crash or a restart the
# gateway delivers what it had not delivered yet. It must outlive the container: mount a
# persistent volume here (compose: a named volume; Kubernetes: a volumeClaimTemplate). Without
# one, Docker creates an anonymous volume, which `docker run --rm` deletes with the container.
# One gateway per directory: a second one sharing the volume refuses to start (LOCK file).
# OTELGATE_LOG__DIR overrides log.dir of the config file; set it to move the log elsewhere.
ENV OTELGATE_LOG__DIR=/var/lib/otelgate
VOLUME /var/lib/otelgate
WORKDIR /var/lib/otelgate

# OTLP/gRPC, OTLP/HTTP, admin (/metrics, /healthz, /readyz).
EXPOSE 4317 4318 13133

USER 10001:10001

# A plain HTTP/1.0 GET of /healthz over bash's /dev/tcp; healthy when the status line says 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/13133 && printf 'GET /healthz HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && read -r -t 2 status <&3 && [[ $status == *' 200 '* ]]"]

# SIGTERM starts otelgate's staged shutdown: receivers stop, and destinations drain for up to
# pipeline.shutdown_timeout_seconds. What is still undelivered then stays in the log and is
# delivered after the next start on the same volume. Give `docker stop` a longer --time than
# that timeout: a SIGKILL loses nothing acknowledged either, but cuts the drain short.
STOPSIGNAL SIGTERM
ENTRYPOINT ["otelgate", "run", "--config", "/etc/otelgate/otelgate.toml"]
