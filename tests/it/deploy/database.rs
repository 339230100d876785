//! The database side of the dashboards and alerts: every metric they read comes from
//! postgres_exporter, and every dashboard and exporter query runs against the migrated schema
//! as the read-only roles compose creates.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use otelgate::Signal;
use otelgate_cli::demo::postgres::{find_bin_dir, TempPostgres};
use prost::Message;

use super::grafana::{dashboard_sql, grafana_sql};
use super::prometheus::{prometheus_expressions, promql_metric_names, used_metrics};
use super::{repo, run_bounded, str_of, yaml};
use crate::grpc_export;
use crate::timescale::{connect, gateway_with_sink, sink_config, wait_count};

/// postgres_exporter's own metrics (default collectors of v0.20) that dashboards and rules use.
const POSTGRES_EXPORTER_BUILTINS: [&str; 4] = [
    "pg_up",
    "pg_stat_activity_count",
    "pg_settings_max_connections",
    "pg_database_size_bytes",
];

/// SQL that needs the TimescaleDB extension.
fn needs_timescaledb(sql: &str) -> bool {
    [
        "timescaledb_information",
        "hypertable_",
        "approximate_row_count",
        "time_bucket",
        "_timescaledb",
        "pg_extension WHERE extname = 'timescaledb'",
    ]
    .iter()
    .any(|marker| sql.contains(marker))
}

/// The metrics postgres_exporter makes of queries.yaml: `<namespace>_<column>` for each
/// GAUGE/COUNTER column, with the namespace's query and its labels and values.
struct ExporterQuery {
    namespace: String,
    query: String,
    columns: BTreeMap<String, String>,
}

fn exporter_queries() -> Vec<ExporterQuery> {
    let queries = yaml("compose/postgres-exporter/queries.yaml");
    queries
        .as_object()
        .unwrap()
        .iter()
        .map(|(namespace, spec)| {
            let columns = spec["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let (column, def) = m.as_object().unwrap().iter().next().unwrap();
                    let usage = str_of(&def["usage"], column).to_owned();
                    assert!(
                        ["LABEL", "GAUGE", "COUNTER"].contains(&usage.as_str()),
                        "{namespace}.{column}: usage {usage}"
                    );
                    assert!(
                        def["description"].is_string(),
                        "{namespace}.{column}: no description"
                    );
                    (column.clone(), usage)
                })
                .collect();
            ExporterQuery {
                namespace: namespace.clone(),
                query: str_of(&spec["query"], namespace).to_owned(),
                columns,
            }
        })
        .collect()
}

#[test]
fn database_metrics_in_dashboards_and_alerts_come_from_postgres_exporter() {
    let mut produced: BTreeSet<String> = POSTGRES_EXPORTER_BUILTINS
        .iter()
        .map(|s| s.to_string())
        .collect();
    for query in exporter_queries() {
        assert_eq!(
            query.namespace.starts_with("timescaledb_"),
            needs_timescaledb(&query.query),
            "{}: the namespace prefix must say whether it needs TimescaleDB",
            query.namespace
        );
        for (column, usage) in &query.columns {
            if usage != "LABEL" {
                produced.insert(format!("{}_{column}", query.namespace));
            }
        }
    }
    let used = used_metrics(&["pg_", "timescaledb_"]);
    assert!(!used.is_empty());
    for (name, origins) in &used {
        assert!(
            produced.contains(name),
            "{name} (used by {origins:?}) comes neither from queries.yaml \
             nor from postgres_exporter's default collectors"
        );
    }
    // Recording rules used in expressions are defined.
    let rules = yaml("compose/prometheus/rules/otelgate.rules.yml");
    let recorded: BTreeSet<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["record"].as_str())
        .collect();
    for (origin, expr) in prometheus_expressions() {
        for ident in promql_metric_names(&expr)
            .into_iter()
            .filter(|i| i.contains(':'))
        {
            assert!(
                recorded.contains(ident.as_str()),
                "{origin}: {ident} is not a recording rule"
            );
        }
    }
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["alert"].is_string())
        {
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{}: severity",
                rule["alert"]
            );
            assert!(
                rule["annotations"]["summary"].is_string()
                    && rule["annotations"]["description"].is_string(),
                "{}: annotations",
                rule["alert"]
            );
        }
    }
    println!(
        "{} database metric names used by dashboards and rules, all produced",
        used.len()
    );
}

/// Runs `psql` of the cluster's installation.
fn psql(pg: &TempPostgres, args: &[&str]) -> std::process::Output {
    let bin = find_bin_dir().unwrap().join("psql");
    run_bounded(
        Command::new(bin)
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
            .arg(pg.port().to_string())
            .args(["-U", "postgres", "-d", "postgres"])
            .args(args),
        Duration::from_secs(60),
    )
}

/// PostgreSQL's own message for a failed statement.
fn db_error(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map_or_else(|| error.to_string(), |db| db.message().to_owned())
}

async fn check_sql_against(pg: &TempPostgres, label: &str) {
    // The read-only roles compose creates, from the shipped SQL.
    let roles = psql(
        pg,
        &[
            "-v",
            "grafana_password=g",
            "-v",
            "exporter_password=e",
            "-f",
            repo("compose/timescaledb/roles.sql").to_str().unwrap(),
        ],
    );
    assert!(
        roles.status.success(),
        "roles.sql: {}",
        String::from_utf8_lossy(&roles.stderr)
    );

    let gateway = gateway_with_sink(sink_config(&pg.url())).await;
    let mut generator = otelgate_cli::demo::generator::TelemetryGenerator::new(5);
    for _ in 0..5 {
        let (request, _) = generator.traces(10);
        grpc_export(
            gateway.grpc_addr(),
            Signal::Traces,
            request.encode_to_vec().into(),
            &[],
        )
        .await
        .unwrap();
    }
    let admin = connect(&pg.url()).await;
    assert!(wait_count(&admin, "SELECT count(*) FROM frame_metadata", 50).await >= 50);
    assert!(wait_count(&admin, "SELECT count(*) FROM llm_requests", 1).await >= 1);
    let timescaledb = pg.timescaledb()
        && !admin
            .query(
                "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'",
                &[],
            )
            .await
            .unwrap()
            .is_empty();
    if timescaledb {
        // One refresh, so that job statistics exist.
        let refresh = "SELECT min(job_id) FROM timescaledb_information.jobs \
                       WHERE proc_name = 'policy_refresh_continuous_aggregate'";
        let job: i32 = admin.query_one(refresh, &[]).await.unwrap().get(0);
        crate::timescale::run_exclusive(&admin, &format!("CALL run_job({job})")).await;
    }
    let camera: String = admin
        .query_one(
            "SELECT camera_id FROM frame_metadata WHERE camera_id IS NOT NULL LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let model: String = admin
        .query_one(
            "SELECT request_model FROM llm_requests WHERE request_model IS NOT NULL LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let variables = BTreeMap::from([
        ("camera", format!("'{camera}'")),
        ("model", format!("'{model}'")),
    ]);
    let as_role = |role: &str| format!("postgres://{role}@127.0.0.1:{}/postgres", pg.port());

    let grafana = connect(&as_role("grafana_reader")).await;
    let (mut ran, mut skipped) = (0, 0);
    for (origin, sql) in dashboard_sql() {
        if needs_timescaledb(&sql) && !timescaledb {
            println!("[{label}] {origin}: TimescaleDB-only, left to the _needs_timescaledb test");
            skipped += 1;
            continue;
        }
        let sql = grafana_sql(&sql, &variables);
        let rows = grafana.simple_query(&sql).await.unwrap_or_else(|e| {
            panic!(
                "[{label}] {origin} fails as grafana_reader: {}\n{sql}",
                db_error(&e)
            )
        });
        let rows = rows
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        if origin.contains("Frames per camera (hourly)") {
            assert!(
                rows > 0,
                "[{label}] {origin} shows nothing for a camera that has frames"
            );
        }
        ran += 1;
    }
    let exporter = connect(&as_role("postgres_exporter")).await;
    for query in exporter_queries() {
        if query.namespace.starts_with("timescaledb_") && !timescaledb {
            println!(
                "[{label}] queries.yaml {}: TimescaleDB-only, left to the _needs_timescaledb test",
                query.namespace
            );
            skipped += 1;
            continue;
        }
        let statement = exporter.prepare(&query.query).await.unwrap_or_else(|e| {
            panic!(
                "[{label}] queries.yaml {} fails: {}",
                query.namespace,
                db_error(&e)
            )
        });
        let columns: BTreeMap<String, String> = statement
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_().name().to_owned()))
            .collect();
        assert_eq!(
            columns.keys().collect::<Vec<_>>(),
            query.columns.keys().collect::<Vec<_>>(),
            "{}: the query's columns and `metrics` differ",
            query.namespace
        );
        for (column, usage) in &query.columns {
            let ty = columns[column].as_str();
            let ok = if usage == "LABEL" {
                ["text", "varchar", "name"].contains(&ty)
            } else {
                ["float8", "float4", "int8", "int4", "int2", "numeric"].contains(&ty)
            };
            assert!(
                ok,
                "{}.{column}: {usage} column of type {ty}",
                query.namespace
            );
        }
        exporter
            .simple_query(&query.query)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "[{label}] queries.yaml {} fails as postgres_exporter: {}",
                    query.namespace,
                    db_error(&e)
                )
            });
        ran += 1;
    }
    println!(
        "[{label}] {ran} dashboard and exporter queries ran, {skipped} left out (TimescaleDB-only)"
    );
    assert!(
        !timescaledb || skipped == 0,
        "with TimescaleDB every query runs"
    );
    gateway.shutdown().await;
}

/// Every dashboard and exporter query, TimescaleDB-only ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_exporter_sql_runs_against_the_migrated_schema_needs_timescaledb() {
    let pg = crate::postgres_with_timescaledb(false);
    check_sql_against(&pg, "timescaledb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portable_dashboard_and_exporter_sql_runs_on_plain_postgresql() {
    let pg = TempPostgres::start_with(false, false).unwrap();
    check_sql_against(&pg, "plain").await;
}
