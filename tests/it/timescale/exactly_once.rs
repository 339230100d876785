//! Every row exactly once when the sink's connections are killed mid-batch and when a batch
//! whose commit landed is replayed (the ledger skips it).

use std::time::Duration;

use otelgate::Signal;
use otelgate_cli::demo::postgres::TempPostgres;
use prost::Message;

use super::{connect, count, gateway_with_sink, sink_config, wait_count};
use crate::grpc_export;

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
    use otelgate::sink::timescale::{copy_batch, CopyOutcome, LedgerClaim};
    use otelgate::sink::timescale::{Cell, Rows};
    let pg = TempPostgres::start(false).unwrap();
    let config = sink_config(&pg.url());
    // Migrate through a gateway start, then write batches by hand.
    let gateway = gateway_with_sink(config.clone()).await;
    let pool = pool(&config).unwrap();
    // Recent times: with TimescaleDB, the retention policy the gateway installed would drop
    // chunks of old times while the test runs.
    let now = otelgate_cli::demo::generator::now_nanos() as i64;
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
