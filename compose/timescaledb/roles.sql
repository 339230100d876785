-- Read-only roles for Grafana and postgres_exporter, created once when the TimescaleDB volume
-- is initialised (see 10-otelgate-roles.sh). otelgate itself connects as POSTGRES_USER, which
-- owns the tables its migrations create. pg_read_all_data (PostgreSQL 14+) covers tables that
-- do not exist yet, including TimescaleDB's chunks and materialization hypertables, so no
-- grants need repeating after a migration.
--
-- psql variables: grafana_password, exporter_password.

CREATE ROLE grafana_reader LOGIN PASSWORD :'grafana_password' CONNECTION LIMIT 10;
GRANT pg_read_all_data TO grafana_reader;
-- Sessions, locks and statistics of every user, for the TimescaleDB dashboard.
GRANT pg_monitor TO grafana_reader;
ALTER ROLE grafana_reader SET statement_timeout = '30s';

CREATE ROLE postgres_exporter LOGIN PASSWORD :'exporter_password' CONNECTION LIMIT 5;
GRANT pg_monitor TO postgres_exporter;
GRANT pg_read_all_data TO postgres_exporter;
ALTER ROLE postgres_exporter SET statement_timeout = '10s';
