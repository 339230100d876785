//! The TimescaleDB sink against a real throwaway PostgreSQL cluster (TimescaleDB preloaded
//! when installed): typed rows exactly once, rejected records kept aside, connection loss,
//! the ledger, PgBouncer in transaction mode, migrations, and the TimescaleDB features.
//!
//! One file per concern; this one holds the helpers every database test uses (here and in
//! other test modules):
//!
//! - `rows`: OTLP spans and log records become typed rows, bad records are kept aside;
//! - `exactly_once`: killed connections and replayed batches write every row once;
//! - `lag`: a database stalled by locks throttles clients at the sink's lag bound, and every
//!   acknowledged row still lands once; a due batch waits for the transaction in flight;
//! - `schema`: migrations, plain PostgreSQL, and TimescaleDB's hypertables, compression,
//!   continuous aggregates and retention;
//! - `pgbouncer`: the sink through PgBouncer in transaction pooling mode.

mod exactly_once;
mod lag;
mod pgbouncer;
mod rows;
mod schema;

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use otelgate::sink::timescale::TimescaleSinkConfig;
use otelgate::{Config, Gateway};
use prost::Message;

use crate::{start, WAIT};

const TRACES: &str = "otlp-sdk-payloads/traces_frames_detections_genai.pb";

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

pub fn sink_config(url: &str) -> TimescaleSinkConfig {
    let mut config = TimescaleSinkConfig::new(url);
    config.max_wait_ms = 5;
    config.max_elapsed_ms = 60_000;
    config
}

/// The config of a gateway whose only destination is the TimescaleDB sink.
pub fn config_with_sink(sink: TimescaleSinkConfig) -> Config {
    let mut config = Config::default();
    config.log.dir = crate::log_dir();
    config.receiver.grpc_endpoint = "127.0.0.1:0".into();
    config.receiver.http_endpoint = "127.0.0.1:0".into();
    config.telemetry.admin_endpoint = "127.0.0.1:0".into();
    config.pipeline.shutdown_timeout_seconds = 30;
    config.timescale = Some(sink);
    config
}

/// A gateway whose only destination is the TimescaleDB sink.
pub async fn gateway_with_sink(sink: TimescaleSinkConfig) -> Gateway {
    start(config_with_sink(sink)).await
}

pub async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits until `sql` (a count) reaches `expected`; returns the last value.
pub async fn wait_count(client: &tokio_postgres::Client, sql: &str, expected: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let n = count(client, sql).await;
        if n >= expected || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn traces(spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>) -> Bytes {
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    use otelgate_cli::demo::generator::kv_str;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", "checkout")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
    .encode_to_vec()
    .into()
}

/// Runs a TimescaleDB job or refresh, retrying while the scheduler runs the same one
/// (SQLSTATE 55P03, "concurrent refresh").
pub async fn run_exclusive(db: &tokio_postgres::Client, sql: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match db.batch_execute(sql).await {
            Ok(()) => return,
            Err(error)
                if error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(error) => panic!("{sql}: {error:?}"),
        }
    }
}
