//! Every row exactly once when the sink's connections are killed mid-batch, when a batch
//! whose commit landed is replayed (the ledger skips it), and when a transaction of several
//! tables fails transiently and is retried whole.

use std::time::Duration;

use otelgate::Signal;
use otelgate_cli::demo::postgres::TempPostgres;
use prost::Message;

use super::{connect, count, gateway_with_sink, sink_config, wait_count};
use crate::grpc_export;

/// Rows the built-in mappings make of a generated request, per table.
#[derive(Clone, Copy, Default)]
pub(super) struct RowCounts {
    pub(super) frames: i64,
    pub(super) detections: i64,
    pub(super) chats: i64,
}

pub(super) fn rows_of(
    request: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) -> RowCounts {
    let mut rows = RowCounts {
        frames: 0,
        detections: 0,
        chats: 0,
    };
    let spans = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans);
    for span in spans {
        match span.name.as_str() {
            "frame.process" => rows.frames += 1,
            name if name.starts_with("chat ") => rows.chats += 1,
            _ => {}
        }
        rows.detections += span.events.iter().filter(|e| e.name == "detection").count() as i64;
    }
    rows
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
    let mut generator = otelgate_cli::demo::generator::TelemetryGenerator::new(7);
    let (mut frames, mut detections, mut chats) = (0i64, 0i64, 0i64);
    for _ in 0..150 {
        let (request, _) = generator.traces(20);
        let rows = rows_of(&request);
        frames += rows.frames;
        detections += rows.detections;
        chats += rows.chats;
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
    // Each flush writes all three tables in one transaction: none may be missing or doubled.
    assert!(detections > 0 && chats > 0);
    for (table, key, expected) in [
        ("frame_metadata", "span_id", frames),
        (
            "detection_events",
            "(span_id, bbox_x, bbox_y, object_class)",
            detections,
        ),
        ("llm_requests", "span_id", chats),
    ] {
        let rows = count(&db, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(rows, expected, "{table}: rows lost or duplicated");
        let distinct = count(&db, &format!("SELECT count(DISTINCT {key}) FROM {table}")).await;
        assert_eq!(distinct, expected, "{table}: a row written twice");
    }
    let sink = report.sink.unwrap();
    assert_eq!(sink.rows_failed, 0);
    println!(
        "killed {killed} connections; {frames} frames arrived once each ({} rows written)",
        sink.rows_written
    );
}

/// The COPY of the frame rows that [`migrated_with_frames`] makes.
const FRAMES_COPY: &str = "COPY frame_metadata (time, camera_id) FROM STDIN (FORMAT binary)";

/// The settings the sink sets in its transactions by default.
fn default_settings(pg: &TempPostgres) -> otelgate::sink::timescale::TransactionSettings {
    let config = otelgate::sink::timescale::TimescaleSinkConfig::new(pg.url());
    otelgate::sink::timescale::TransactionSettings::new(&config.transaction_settings).unwrap()
}

/// A gateway that has migrated `pg`, a pool of its sink's connections for batches written by
/// hand, and three frame rows as binary COPY data ([`FRAMES_COPY`]). Their times are recent:
/// with TimescaleDB, the retention policy the gateway installed would drop chunks of old times
/// while the test runs.
async fn migrated_with_frames(
    pg: &TempPostgres,
) -> (otelgate::Gateway, deadpool_postgres::Pool, bytes::Bytes) {
    use otelgate::sink::timescale::sink::pool;
    use otelgate::sink::timescale::{Cell, Rows};
    let config = sink_config(&pg.url());
    let gateway = gateway_with_sink(config.clone()).await;
    let pool = pool(&config).unwrap();
    let now = otelgate_cli::demo::generator::now_nanos() as i64;
    let mut rows = Rows::default();
    for i in 0..3 {
        rows.push(&[Cell::Timestamp(now + i), Cell::Text(format!("cam-{i}"))]);
    }
    (gateway, pool, rows.into_batch().data().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_skips_a_replayed_batch() {
    use otelgate::sink::timescale::{copy_batch, CopyOutcome, LedgerClaim};
    let pg = TempPostgres::start(false).unwrap();
    let (gateway, pool, data) = migrated_with_frames(&pg).await;
    let settings = default_settings(&pg);
    let sql = FRAMES_COPY;
    let claim = |batch_id| LedgerClaim {
        batch_id,
        table: "frame_metadata",
        key: None,
        range: None,
    };
    let id = uuid::Uuid::new_v4();
    assert_eq!(
        copy_batch(&pool, &settings, sql, &data, 3, claim(id))
            .await
            .unwrap(),
        CopyOutcome::Committed
    );
    assert_eq!(
        copy_batch(&pool, &settings, sql, &data, 3, claim(id))
            .await
            .unwrap(),
        CopyOutcome::AlreadyCommitted
    );
    let other = uuid::Uuid::new_v4();
    assert_eq!(
        copy_batch(&pool, &settings, sql, &data, 3, claim(other))
            .await
            .unwrap(),
        CopyOutcome::Committed
    );
    // Two attempts of one batch at the same time (a retry racing a slow COMMIT): one writes.
    let racing = uuid::Uuid::new_v4();
    let (a, b) = tokio::join!(
        copy_batch(&pool, &settings, sql, &data, 3, claim(racing)),
        copy_batch(&pool, &settings, sql, &data, 3, claim(racing))
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

/// Batches of several tables in one transaction are claimed together: a retry of the whole
/// finds it committed, a racing attempt writes nothing, and a transaction whose ids are partly
/// in the ledger writes nothing and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_several_tables_is_claimed_whole() {
    use otelgate::sink::timescale::{
        copy_batch, copy_batches, CopyOutcome, LedgerClaim, TableBatch,
    };
    use otelgate::sink::timescale::{Cell, Rows};
    let pg = TempPostgres::start(false).unwrap();
    let (gateway, pool, frames) = migrated_with_frames(&pg).await;
    let settings = default_settings(&pg);
    let now = otelgate_cli::demo::generator::now_nanos() as i64;
    let mut rejected = Rows::default();
    for i in 0..2 {
        rejected.push(&[
            Cell::Timestamp(now + i),
            Cell::Text("frame_metadata".into()),
            Cell::Text("test".into()),
        ]);
    }
    let rejected = rejected.into_batch().data().clone();
    let frames_sql = FRAMES_COPY;
    let rejected_sql =
        "COPY otelgate_rejected_rows (time, table_name, reason) FROM STDIN (FORMAT binary)";
    let claim = |batch_id, table| LedgerClaim {
        batch_id,
        table,
        key: None,
        range: None,
    };
    let group = |a, b| {
        [
            TableBatch {
                copy_sql: frames_sql,
                data: &frames,
                rows: 3,
                claim: claim(a, "frame_metadata"),
            },
            TableBatch {
                copy_sql: rejected_sql,
                data: &rejected,
                rows: 2,
                claim: claim(b, "otelgate_rejected_rows"),
            },
        ]
    };
    let db = connect(&pg.url()).await;
    let totals = |db| async move {
        (
            count(db, "SELECT count(*) FROM frame_metadata").await,
            count(db, "SELECT count(*) FROM otelgate_rejected_rows").await,
            count(db, "SELECT count(*) FROM otelgate_ledger").await,
        )
    };
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    assert_eq!(
        copy_batches(&pool, &settings, &group(a, b)).await.unwrap(),
        CopyOutcome::Committed
    );
    assert_eq!(totals(&db).await, (3, 2, 2));
    assert_eq!(
        copy_batches(&pool, &settings, &group(a, b)).await.unwrap(),
        CopyOutcome::AlreadyCommitted
    );
    assert_eq!(totals(&db).await, (3, 2, 2));
    // Two attempts of one transaction at the same time: one writes.
    let (c, d) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let (one, other) = (group(c, d), group(c, d));
    let (first, second) = tokio::join!(
        copy_batches(&pool, &settings, &one),
        copy_batches(&pool, &settings, &other)
    );
    let mut outcomes = [first.unwrap(), second.unwrap()];
    outcomes.sort_by_key(|w| matches!(w, CopyOutcome::AlreadyCommitted));
    assert_eq!(
        outcomes,
        [CopyOutcome::Committed, CopyOutcome::AlreadyCommitted]
    );
    assert_eq!(totals(&db).await, (6, 4, 4));
    // One id already taken by another transaction: nothing of this one is written.
    let (e, f) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    copy_batch(
        &pool,
        &settings,
        frames_sql,
        &frames,
        3,
        claim(e, "frame_metadata"),
    )
    .await
    .unwrap();
    let error = copy_batches(&pool, &settings, &group(e, f))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("1 of the 2 batch ids"),
        "{error}"
    );
    assert_eq!(totals(&db).await, (9, 4, 5));
    gateway.shutdown().await;
}

/// A transaction of several tables that fails transiently is retried whole, once, and the
/// retry is counted under each of its tables. The failure is injected where it cannot miss:
/// a trigger on the ledger raises a serialization failure (SQLSTATE 40001) the first time the
/// sink claims batch ids, and never again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_transaction_counts_its_retry_under_each_table() {
    let pg = TempPostgres::start(false).unwrap();
    let gateway = gateway_with_sink(sink_config(&pg.url())).await;
    let db = connect(&pg.url()).await;
    db.batch_execute(
        "CREATE SEQUENCE injected_failures;
         CREATE FUNCTION fail_first_claim() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF nextval('injected_failures') = 1 THEN
                 RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001';
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER fail_first_claim BEFORE INSERT ON otelgate_ledger
             FOR EACH STATEMENT EXECUTE FUNCTION fail_first_claim();",
    )
    .await
    .unwrap();
    // One request with rows for all three tables: its rows leave in one flush.
    let mut generator = otelgate_cli::demo::generator::TelemetryGenerator::new(11);
    let (request, _) = generator.traces(40);
    let RowCounts {
        frames,
        detections,
        chats,
    } = rows_of(&request);
    assert!(frames > 0 && chats > 0 && detections > 0);
    grpc_export(
        gateway.grpc_addr(),
        Signal::Traces,
        request.encode_to_vec().into(),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM llm_requests", chats).await,
        chats
    );
    for (table, expected) in [
        ("frame_metadata", frames),
        ("detection_events", detections),
        ("llm_requests", chats),
    ] {
        let rows = count(&db, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(rows, expected, "{table}: rows lost or duplicated");
        let retries = crate::metric(
            gateway.admin_addr(),
            "otelgate_sink_retries_total",
            &[("table", table)],
        )
        .await;
        assert_eq!(retries, 1.0, "{table}: retries counted");
    }
    // The failure happened: the first claim drew 1, the retry 2.
    assert_eq!(
        count(&db, "SELECT last_value FROM injected_failures").await,
        2
    );
    gateway.shutdown().await;
}
