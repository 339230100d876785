#!/usr/bin/env bash
# Runs once, from /docker-entrypoint-initdb.d, when the TimescaleDB data volume is empty:
# creates the read-only roles of roles.sql with passwords from the container environment.
# (The image's entrypoint sources *.sh files that are not executable, so no `exit` here.)
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v grafana_password="${GRAFANA_DB_PASSWORD:?GRAFANA_DB_PASSWORD is required}" \
  -v exporter_password="${EXPORTER_DB_PASSWORD:?EXPORTER_DB_PASSWORD is required}" \
  -f /otelgate/roles.sql
