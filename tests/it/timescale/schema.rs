//! The schema the sink migrates: migrations are idempotent and safe when run together, plain
//! PostgreSQL gets plain tables and views with a warning, and TimescaleDB gets hypertables,
//! compression, continuous aggregates and retention.

use bytes::Bytes;
use otelgate::Signal;
use otelgate_cli::demo::postgres::TempPostgres;

use super::{connect, count, gateway_with_sink, run_exclusive, sink_config, wait_count, TRACES};
use crate::{fixture, grpc_export};

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
