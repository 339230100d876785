//! The TimescaleDB sink against a real throwaway PostgreSQL cluster (TimescaleDB preloaded
//! when installed): typed rows exactly once, rejected records kept aside, connection loss,
//! the ledger, PgBouncer in transaction mode, migrations, and the TimescaleDB features.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use otelgate::demo::postgres::TempPostgres;
use otelgate::sink::timescale::{LlmPrice, TimescaleSinkConfig};
use otelgate::{Config, Gateway, Signal};
use prost::Message;

use crate::{fixture, grpc_export, metric, start, WAIT};

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

/// A gateway whose only destination is the TimescaleDB sink.
pub async fn gateway_with_sink(sink: TimescaleSinkConfig) -> Gateway {
    let mut config = Config::default();
    config.log.dir = crate::log_dir();
    config.receiver.grpc_endpoint = "127.0.0.1:0".into();
    config.receiver.http_endpoint = "127.0.0.1:0".into();
    config.telemetry.admin_endpoint = "127.0.0.1:0".into();
    config.pipeline.shutdown_timeout_seconds = 30;
    config.timescale = Some(sink);
    start(config).await
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

fn string_attr(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            any_value::Value::DoubleValue(d) => Some(d.to_string()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_spans_become_typed_rows_exactly_once() {
    let pg = TempPostgres::start(false).unwrap();
    let body = fixture(TRACES);
    let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
    let spans: Vec<_> = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let mut sink = sink_config(&pg.url());
    for span in &spans {
        if let Some(model) = string_attr(&span.attributes, "gen_ai.response.model") {
            sink.llm_prices.insert(
                model,
                LlmPrice {
                    input_per_million: 1.0,
                    output_per_million: 2.0,
                },
            );
        }
    }
    let gateway = gateway_with_sink(sink).await;
    grpc_export(
        gateway.grpc_addr(),
        Signal::Traces,
        Bytes::from(body.clone()),
        &[],
    )
    .await
    .unwrap();

    let resource = request.resource_spans[0].resource.as_ref().unwrap();
    let service_name = string_attr(&resource.attributes, "service.name");
    assert!(service_name.is_some());
    let frames: Vec<_> = spans.iter().filter(|s| s.name == "frame.process").collect();
    let detections: usize = frames
        .iter()
        .map(|s| s.events.iter().filter(|e| e.name == "detection").count())
        .sum();
    let llm: Vec<_> = spans
        .iter()
        .filter(|s| s.attributes.iter().any(|kv| kv.key.starts_with("gen_ai.")))
        .collect();
    assert_eq!((frames.len(), llm.len()), (20, 10));
    let db = connect(&pg.url()).await;
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 20).await,
        20
    );
    assert_eq!(
        wait_count(
            &db,
            "SELECT count(*) FROM detection_events",
            detections as i64
        )
        .await,
        detections as i64
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM llm_requests", 10).await,
        10
    );

    for span in &frames {
        let row = db
            .query_one(
                "SELECT camera_id, frame_id, sequence, width, height, processing_ms, status, trace_id, service_name, attributes
                 FROM frame_metadata WHERE span_id = $1",
                &[&span.span_id],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, Option<String>>(0),
            string_attr(&span.attributes, "camera.id")
        );
        assert_eq!(
            row.get::<_, Option<String>>(1),
            string_attr(&span.attributes, "frame.id")
        );
        assert_eq!(
            row.get::<_, Option<i64>>(2).map(|v| v.to_string()),
            string_attr(&span.attributes, "frame.sequence")
        );
        assert_eq!(
            row.get::<_, Option<i64>>(3).map(|v| v.to_string()),
            string_attr(&span.attributes, "frame.width")
        );
        assert_eq!(
            row.get::<_, Option<i64>>(4).map(|v| v.to_string()),
            string_attr(&span.attributes, "frame.height")
        );
        let duration_ms = (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e6;
        assert!((row.get::<_, f64>(5) - duration_ms).abs() < 1e-6);
        assert!(row.get::<_, Option<String>>(6).is_some());
        assert_eq!(row.get::<_, Vec<u8>>(7), span.trace_id);
        assert_eq!(row.get::<_, Option<String>>(8), service_name);
        let attributes: serde_json::Value = row.get(9);
        assert!(
            attributes.get("camera.id").is_none(),
            "mapped attributes are not repeated in `attributes`"
        );
    }
    for span in &llm {
        let row = db
            .query_one(
                "SELECT provider, operation, request_model, response_model, input_tokens, output_tokens, duration_ms, cost_usd
                 FROM llm_requests WHERE span_id = $1",
                &[&span.span_id],
            )
            .await
            .unwrap();
        let provider = string_attr(&span.attributes, "gen_ai.provider.name")
            .or(string_attr(&span.attributes, "gen_ai.system"));
        assert_eq!(row.get::<_, Option<String>>(0), provider);
        assert_eq!(
            row.get::<_, Option<String>>(1),
            string_attr(&span.attributes, "gen_ai.operation.name")
        );
        assert_eq!(
            row.get::<_, Option<String>>(2),
            string_attr(&span.attributes, "gen_ai.request.model")
        );
        let input: i64 = string_attr(&span.attributes, "gen_ai.usage.input_tokens")
            .unwrap()
            .parse()
            .unwrap();
        let output: i64 = string_attr(&span.attributes, "gen_ai.usage.output_tokens")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(row.get::<_, Option<i64>>(4), Some(input));
        assert_eq!(row.get::<_, Option<i64>>(5), Some(output));
        let cost: f64 = row.get(7);
        assert!((cost - (input as f64 * 1.0 + output as f64 * 2.0) / 1e6).abs() < 1e-12);
    }
    // Detections inherit camera and frame from their span.
    let orphans = count(
        &db,
        "SELECT count(*) FROM detection_events WHERE camera_id IS NULL OR frame_id IS NULL",
    )
    .await;
    assert_eq!(orphans, 0);
    let total = 20 + detections as i64 + 10;
    assert_eq!(
        count(
            &db,
            "SELECT coalesce(sum(row_count), 0)::int8 FROM otelgate_ledger"
        )
        .await,
        total
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM frame_metadata WHERE ingested_at IS NULL"
        )
        .await,
        0
    );
    let rows_metric = metric(gateway.admin_addr(), "otelgate_sink_rows_total", &[]).await;
    assert_eq!(rows_metric, total as f64);
    let report = gateway.shutdown().await;
    assert_eq!(report.sink.unwrap().rows_written, total as u64);
}

fn span(
    name: &str,
    attributes: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
    seq: u8,
) -> opentelemetry_proto::tonic::trace::v1::Span {
    let now = otelgate::demo::generator::now_nanos();
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: vec![seq; 16],
        span_id: vec![seq; 8],
        name: name.into(),
        start_time_unix_nano: now - 5_000_000,
        end_time_unix_nano: now,
        attributes,
        ..Default::default()
    }
}

pub fn traces(spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>) -> Bytes {
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    use otelgate::demo::generator::kv_str;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_kept_aside_and_the_rest_arrive() {
    use otelgate::demo::generator::{kv_f64, kv_int, kv_str};
    let pg = TempPostgres::start(false).unwrap();
    let mut sink = sink_config(&pg.url());
    sink.mappings = vec![toml::from_str(
        r#"
        table = "checkouts"
        record = "span"
        name = "checkout"
        columns = [
          { name = "amount", type = "float8", from = "attribute:amount", required = true },
          { name = "user_id", type = "uuid", from = "attribute:user.id" },
        ]"#,
    )
    .unwrap()];
    let gateway = gateway_with_sink(sink).await;
    let db = connect(&pg.url()).await;
    db.batch_execute("ALTER TABLE frame_metadata ADD CONSTRAINT width_positive CHECK (width > 0)")
        .await
        .unwrap();

    let user = "6f1c2a9e-8d4b-4c1e-9a57-3b2d1e0f4a6c";
    let mut spans = vec![
        span(
            "checkout",
            vec![
                kv_f64("amount", 9.5),
                kv_str("user.id", user),
                kv_str("note", "kept"),
            ],
            1,
        ),
        span("checkout", vec![kv_str("amount", "abc")], 2),
        span("checkout", vec![kv_str("user.id", user)], 3),
    ];
    for i in 0..5u8 {
        let width = if i == 2 { -1 } else { 1920 };
        spans.push(span(
            "frame.process",
            vec![kv_str("camera.id", "cam-1"), kv_int("frame.width", width)],
            10 + i,
        ));
    }
    grpc_export(gateway.grpc_addr(), Signal::Traces, traces(spans), &[])
        .await
        .unwrap();

    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM otelgate_rejected_rows", 3).await,
        3
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 4).await,
        4
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM checkouts", 1).await,
        1
    );
    let row = db
        .query_one(
            "SELECT amount, user_id::text, attributes FROM checkouts",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, f64>(0), 9.5);
    assert_eq!(row.get::<_, String>(1), user);
    assert_eq!(
        row.get::<_, serde_json::Value>(2),
        serde_json::json!({ "note": "kept" })
    );
    let rejected = db
        .query("SELECT table_name, reason, record FROM otelgate_rejected_rows ORDER BY table_name, reason", &[])
        .await
        .unwrap();
    let reasons: Vec<(String, String)> = rejected.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(reasons[0].0, "checkouts");
    assert!(reasons[0].1.contains("amount"), "{reasons:?}");
    assert!(
        reasons[1].1.contains("amount: required value missing"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2].0, "frame_metadata");
    assert!(reasons[2].1.contains("width_positive"), "{reasons:?}");
    // The refused row is kept as its cells, read back from the COPY data.
    let refused: serde_json::Value = rejected[2].get(2);
    let cells = refused["row"].as_array().expect("the refused row's cells");
    assert!(
        cells.contains(&serde_json::json!(-1)) && cells.contains(&serde_json::json!("cam-1")),
        "{refused}"
    );
    let record: serde_json::Value = rejected[0].get(2);
    assert_eq!(record["attributes"]["amount"], "abc");
    assert_eq!(
        count(&db, "SELECT count(*) FROM frame_metadata WHERE width < 0").await,
        0
    );
    let conversion = metric(
        gateway.admin_addr(),
        "otelgate_sink_rejected_rows_total",
        &[("reason", "conversion")],
    )
    .await;
    let database = metric(
        gateway.admin_addr(),
        "otelgate_sink_rejected_rows_total",
        &[("reason", "database")],
    )
    .await;
    assert_eq!((conversion, database), (2.0, 1.0));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_and_duplicate_nothing() {
    let pg = TempPostgres::start(false).unwrap();
    let url = format!("{}?application_name=otelgate-sink", pg.url());
    let mut sink = sink_config(&url);
    sink.max_rows = 200;
    let gateway = gateway_with_sink(sink).await;
    let db = connect(&pg.url()).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        let url = pg.url();
        tokio::spawn(async move {
            let db = connect(&url).await;
            let mut killed = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let row = db
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'otelgate-sink'",
                        &[],
                    )
                    .await
                    .unwrap();
                killed += row.get::<_, i64>(0);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            killed
        })
    };
    let mut generator = otelgate::demo::generator::TelemetryGenerator::new(7);
    let mut frames = 0i64;
    for _ in 0..150 {
        let (request, _) = generator.traces(20);
        frames += 20;
        grpc_export(
            gateway.grpc_addr(),
            Signal::Traces,
            request.encode_to_vec().into(),
            &[],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = killer.await.unwrap();
    assert!(
        killed > 0,
        "no connection was killed; the test proved nothing"
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", frames).await,
        frames
    );
    let report = gateway.shutdown().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM frame_metadata").await,
        frames,
        "duplicates"
    );
    assert_eq!(
        count(&db, "SELECT count(DISTINCT span_id) FROM frame_metadata").await,
        frames
    );
    let sink = report.sink.unwrap();
    assert_eq!(sink.rows_failed, 0);
    println!(
        "killed {killed} connections; {frames} frames arrived once each ({} rows written)",
        sink.rows_written
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_skips_a_replayed_batch() {
    use otelgate::sink::timescale::sink::pool;
    use otelgate::sink::timescale::{copy_batch, Cell, CopyOutcome, LedgerClaim, Rows};
    let pg = TempPostgres::start(false).unwrap();
    let config = sink_config(&pg.url());
    // Migrate through a gateway start, then write batches by hand.
    let gateway = gateway_with_sink(config.clone()).await;
    let pool = pool(&config).unwrap();
    // Recent times: with TimescaleDB, the retention policy the gateway installed would drop
    // chunks of old times while the test runs.
    let now = otelgate::demo::generator::now_nanos() as i64;
    let mut rows = Rows::default();
    for i in 0..3 {
        rows.push(&[Cell::Timestamp(now + i), Cell::Text(format!("cam-{i}"))]);
    }
    let data = rows.into_batch().data().clone();
    let sql = "COPY frame_metadata (time, camera_id) FROM STDIN (FORMAT binary)";
    let claim = |batch_id| LedgerClaim {
        batch_id,
        table: "frame_metadata",
        key: None,
        range: None,
    };
    let id = uuid::Uuid::new_v4();
    assert_eq!(
        copy_batch(&pool, sql, &data, 3, claim(id)).await.unwrap(),
        CopyOutcome::Committed
    );
    assert_eq!(
        copy_batch(&pool, sql, &data, 3, claim(id)).await.unwrap(),
        CopyOutcome::AlreadyCommitted
    );
    let other = uuid::Uuid::new_v4();
    assert_eq!(
        copy_batch(&pool, sql, &data, 3, claim(other))
            .await
            .unwrap(),
        CopyOutcome::Committed
    );
    // Two attempts of one batch at the same time (a retry racing a slow COMMIT): one writes.
    let racing = uuid::Uuid::new_v4();
    let (a, b) = tokio::join!(
        copy_batch(&pool, sql, &data, 3, claim(racing)),
        copy_batch(&pool, sql, &data, 3, claim(racing))
    );
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|w| matches!(w, CopyOutcome::AlreadyCommitted));
    assert_eq!(
        outcomes,
        [CopyOutcome::Committed, CopyOutcome::AlreadyCommitted]
    );
    let db = connect(&pg.url()).await;
    assert_eq!(count(&db, "SELECT count(*) FROM frame_metadata").await, 9);
    assert_eq!(count(&db, "SELECT count(*) FROM otelgate_ledger").await, 3);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_when_run_together() {
    use otelgate::sink::timescale::{migrate, Extractor};
    let pg = TempPostgres::start(false).unwrap();
    let config = sink_config(&pg.url());
    let extractor = Extractor::new(&config).unwrap();
    let runs = (0..3).map(|_| {
        let config = config.clone();
        let mappings = extractor.mappings().to_vec();
        let url = pg.url();
        tokio::spawn(async move {
            let mut client = connect(&url).await;
            migrate(&mut client, &config, &mappings).await.unwrap()
        })
    });
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.unwrap().applied);
    }
    let db = connect(&pg.url()).await;
    let expected = if pg.timescaledb() { 5 } else { 4 };
    assert_eq!(
        applied.len(),
        expected,
        "each migration applied once: {applied:?}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM otelgate_migrations").await,
        expected as i64
    );
    let mut client = connect(&pg.url()).await;
    let again = migrate(&mut client, &config, extractor.mappings())
        .await
        .unwrap();
    assert!(again.applied.is_empty());
}

/// Debian's pgbouncer in transaction pooling mode in front of the cluster, run as the
/// `postgres` user when this process is root (pgbouncer refuses root too).
struct PgBouncer {
    child: std::process::Child,
    port: u16,
}

impl PgBouncer {
    fn start(pg: &TempPostgres) -> Option<PgBouncer> {
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = pg.dir();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\npostgres = host=127.0.0.1 port={} dbname=postgres user=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = transaction\ndefault_pool_size = 2\n\
                 max_client_conn = 100\nlogfile = {}\n",
                pg.port(),
                dir.join("users.txt").display(),
                dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        let mut command = if pg.runs_as_postgres_user() {
            let _ = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status();
            // setpriv execs pgbouncer itself (runuser would fork and outlive a kill).
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                binary,
            ]);
            c
        } else {
            std::process::Command::new(binary)
        };
        let child = command
            .arg(&ini)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Some(PgBouncer { child, port })
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_through_pgbouncer_in_transaction_mode_needs_pgbouncer() {
    let pg = TempPostgres::start(false).unwrap();
    let Some(bouncer) = PgBouncer::start(&pg) else {
        crate::missing("pgbouncer", "apt-get install pgbouncer");
    };
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", bouncer.port);
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pgbouncer did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Four sink connections share two server connections: statements of different clients
    // interleave on the same server sessions.
    let mut sink = sink_config(&url);
    sink.pool_size = 4;
    sink.max_rows = 100;
    let gateway = gateway_with_sink(sink).await;
    let mut generator = otelgate::demo::generator::TelemetryGenerator::new(3);
    let sends = (0..100).map(|_| {
        let (request, _) = generator.traces(20);
        grpc_export(
            gateway.grpc_addr(),
            Signal::Traces,
            request.encode_to_vec().into(),
            &[],
        )
    });
    for result in futures_util::future::join_all(sends).await {
        result.unwrap();
    }
    let db = connect(&pg.url()).await;
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 2000).await,
        2000
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM llm_requests", 200).await,
        200
    );
    let report = gateway.shutdown().await;
    let sink = report.sink.unwrap();
    assert_eq!(sink.rows_failed, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM frame_metadata").await,
        2000
    );
    let log = std::fs::read_to_string(pg.dir().join("pgbouncer.log")).unwrap_or_default();
    assert!(!log.contains("prepared statement"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_postgresql_gets_plain_tables_and_views_with_a_warning() {
    let pg = TempPostgres::start_with(false, false).unwrap();
    let gateway = gateway_with_sink(sink_config(&pg.url())).await;
    let ready: serde_json::Value = serde_json::from_slice(
        &reqwest::get(format!("http://{}/readyz", gateway.admin_addr()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(ready["database"]["timescaledb"].is_null());
    assert!(ready["database"]["warning"]
        .as_str()
        .unwrap()
        .contains("TimescaleDB is not installed"));
    grpc_export(
        gateway.grpc_addr(),
        Signal::Traces,
        Bytes::from(fixture(TRACES)),
        &[],
    )
    .await
    .unwrap();
    let db = connect(&pg.url()).await;
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM llm_requests", 10).await,
        10
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 20).await,
        20
    );
    for (view, expected) in [
        (
            "SELECT coalesce(sum(frames), 0)::int8 FROM frames_per_camera_hourly",
            20,
        ),
        (
            "SELECT coalesce(sum(frames), 0)::int8 FROM frames_per_camera_daily",
            20,
        ),
        (
            "SELECT coalesce(sum(requests), 0)::int8 FROM llm_usage_hourly",
            10,
        ),
        (
            "SELECT coalesce(sum(requests), 0)::int8 FROM llm_usage_daily",
            10,
        ),
    ] {
        assert_eq!(count(&db, view).await, expected, "{view}");
    }
    let detections = count(&db, "SELECT count(*) FROM detection_events").await;
    assert_eq!(
        count(
            &db,
            "SELECT coalesce(sum(detections), 0)::int8 FROM detections_per_class_hourly"
        )
        .await,
        detections
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
        )
        .await,
        0
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypertables_compression_aggregates_and_retention_needs_timescaledb() {
    let pg = crate::postgres_with_timescaledb(false);
    let gateway = gateway_with_sink(sink_config(&pg.url())).await;
    let db = connect(&pg.url()).await;
    let hypertables: Vec<String> = db
        .query(
            "SELECT hypertable_name::text FROM timescaledb_information.hypertables ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        hypertables,
        ["detection_events", "frame_metadata", "llm_requests"]
    );
    let jobs: Vec<(String, i64)> = db
        .query("SELECT proc_name::text, count(*) FROM timescaledb_information.jobs WHERE proc_name IN ('policy_compression', 'policy_retention', 'policy_refresh_continuous_aggregate') GROUP BY 1 ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        jobs,
        [
            ("policy_compression".into(), 3),
            ("policy_refresh_continuous_aggregate".into(), 7),
            ("policy_retention".into(), 3)
        ]
    );
    let drop_after: String = db
        .query_one("SELECT config->>'drop_after' FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention' AND hypertable_name = 'frame_metadata'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(drop_after, "30 days");

    // Three days of frames and detections from 8 cameras, through the gateway's own tables.
    db.batch_execute(
        "INSERT INTO frame_metadata (time, trace_id, span_id, service_name, attributes, camera_id, frame_id, sequence, width, height, processing_ms, status)
         SELECT now() - interval '3 days' + i * interval '2 seconds',
                decode(md5(i::text), 'hex'), substring(decode(md5(i::text || 's'), 'hex') from 1 for 8),
                'camera-analytics', '{\"host.name\": \"edge-1\"}',
                'cam-' || (i % 8), 'frame-' || i, i, 1920, 1080, 5 + (i % 30), 'ok'
         FROM generate_series(1, 120000) AS i;
         INSERT INTO detection_events (time, camera_id, frame_id, object_class, confidence, bbox_x, bbox_y, bbox_w, bbox_h, track_id)
         SELECT now() - interval '3 days' + i * interval '3 seconds', 'cam-' || (i % 8), 'frame-' || i,
                (ARRAY['person','car','truck','dog'])[1 + i % 4], 0.5 + (i % 50) / 100.0, i % 1800, i % 1000, 50, 80, i % 500
         FROM generate_series(1, 80000) AS i;",
    )
    .await
    .unwrap();
    let compressed = count(&db, "SELECT count(compress_chunk(c))::int8 FROM show_chunks('frame_metadata', older_than => INTERVAL '1 day') c").await;
    assert!(compressed >= 2, "compressed {compressed} chunks");
    let (before, after): (i64, i64) = {
        let row = db
            .query_one("SELECT before_compression_total_bytes, after_compression_total_bytes FROM hypertable_compression_stats('frame_metadata')", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let ratio = before as f64 / after as f64;
    println!("frame_metadata compression: {before} -> {after} bytes, {ratio:.1}:1 over {compressed} chunks");
    assert!(ratio > 2.0, "compression ratio {ratio:.2}");

    for view in [
        "frames_per_camera_hourly",
        "detections_per_class_hourly",
        "detections_per_camera_daily",
    ] {
        run_exclusive(
            &db,
            &format!("CALL refresh_continuous_aggregate('{view}', NULL, NULL)"),
        )
        .await;
    }
    let aggregate = "SELECT bucket, camera_id, frames FROM frames_per_camera_hourly ORDER BY 1, 2";
    let plain = "SELECT time_bucket(INTERVAL '1 hour', time), camera_id, count(*) FROM frame_metadata GROUP BY 1, 2 ORDER BY 1, 2";
    let rows = |sql: &'static str| {
        let db = &db;
        async move {
            db.query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r.get::<_, std::time::SystemTime>(0),
                        r.get::<_, Option<String>>(1),
                        r.get::<_, i64>(2),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let (a, p) = (rows(aggregate).await, rows(plain).await);
    assert!(a.len() > 8 * 48);
    assert_eq!(
        a, p,
        "frames_per_camera_hourly differs from a plain GROUP BY"
    );
    let by_class =
        "SELECT bucket, object_class, detections FROM detections_per_class_hourly ORDER BY 1, 2";
    let by_class_plain = "SELECT time_bucket(INTERVAL '1 hour', time), object_class, count(*) FROM detection_events GROUP BY 1, 2 ORDER BY 1, 2";
    assert_eq!(rows(by_class).await, rows(by_class_plain).await);
    let confidence_gap: f64 = db
        .query_one(
            "SELECT coalesce(max(abs(a.mean_confidence - p.c)), 0) FROM detections_per_class_hourly a
             JOIN (SELECT time_bucket(INTERVAL '1 hour', time) b, object_class, avg(confidence) c FROM detection_events GROUP BY 1, 2) p
             ON a.bucket = p.b AND a.object_class = p.object_class",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(confidence_gap < 1e-9);

    // Retention: rows older than 30 days go when the job runs.
    db.batch_execute("INSERT INTO frame_metadata (time, camera_id) SELECT now() - interval '40 days' + i * interval '1 minute', 'old' FROM generate_series(1, 100) i")
        .await
        .unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM frame_metadata WHERE camera_id = 'old'"
        )
        .await,
        100
    );
    let job: i32 = db
        .query_one("SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention' AND hypertable_name = 'frame_metadata'", &[])
        .await
        .unwrap()
        .get(0);
    run_exclusive(&db, &format!("CALL run_job({job})")).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM frame_metadata WHERE camera_id = 'old'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM frame_metadata").await,
        120000
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_and_detection_log_records_become_rows() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use otelgate::demo::generator::{kv_f64, kv_int, kv_str};
    let pg = TempPostgres::start(false).unwrap();
    let gateway = gateway_with_sink(sink_config(&pg.url())).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let records = vec![
        LogRecord {
            time_unix_nano: now,
            event_name: "frame".into(),
            severity_text: "INFO".into(),
            attributes: vec![
                kv_str("camera.id", "cam-7"),
                kv_str("frame.id", "f-1"),
                kv_int("frame.width", 640),
            ],
            ..Default::default()
        },
        // Older SDKs name events with the `event.name` attribute.
        LogRecord {
            observed_time_unix_nano: now,
            attributes: vec![
                kv_str("event.name", "detection"),
                kv_str("camera.id", "cam-7"),
                kv_str("object.class", "forklift"),
                kv_f64("detection.confidence", 0.9),
            ],
            ..Default::default()
        },
        LogRecord {
            time_unix_nano: now,
            event_name: "other".into(),
            ..Default::default()
        },
    ];
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/logs", gateway.http_addr()))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&request).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let db = connect(&pg.url()).await;
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM detection_events", 1).await,
        1
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 1).await,
        1
    );
    let frame = db
        .query_one(
            "SELECT camera_id, frame_id, width, status FROM frame_metadata",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(frame.get::<_, String>(0), "cam-7");
    assert_eq!(frame.get::<_, String>(1), "f-1");
    assert_eq!(frame.get::<_, i64>(2), 640);
    assert_eq!(frame.get::<_, String>(3), "INFO");
    let detection = db
        .query_one("SELECT object_class, confidence FROM detection_events", &[])
        .await
        .unwrap();
    assert_eq!(detection.get::<_, String>(0), "forklift");
    assert_eq!(detection.get::<_, f64>(1), 0.9);
    gateway.shutdown().await;
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
