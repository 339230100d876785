//! The sink's lag bound (`timescale.queue.throttle_lag_ms`) against a real PostgreSQL that
//! stops taking rows: another session locks `detection_events` at random moments for random
//! lengths, while impatient clients keep sending frames over gRPC and HTTP and retry every
//! refusal after a few milliseconds (not after the advised delay). Checked at the end: every
//! stall throttled; no request sent after a refusal that came once the stall had lasted the
//! bound, nor once it had lasted well past it, acknowledged until it ended; requests accepted
//! again after the last stall; every acknowledged row in the database exactly once and no
//! refused one; and the refusals the clients saw are the ones the gateway counted. `OTELGATE_TEST_SEED` replays a run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use otelgate::Signal;
use otelgate_cli::demo::generator::TelemetryGenerator;
use otelgate_cli::demo::postgres::TempPostgres;
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::exactly_once::{rows_of, RowCounts};
use super::{connect, count, gateway_with_sink, sink_config, wait_count};
use crate::{grpc_export, metric, WAIT};

/// The sink's lag bound in this test.
const BOUND: Duration = Duration::from_millis(300);
/// How long after a stall began every request must be refused: the bound, plus room for a
/// request already past the lag check, a flush that was under way and a slow machine.
const REFUSED_AFTER: Duration = Duration::from_millis(1000);
const STALLS: usize = 3;
const CLIENTS: u64 = 4;

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// When each acknowledged request was sent, and its rows.
    acknowledged: Vec<(Instant, RowCounts)>,
    /// When each refused attempt was sent, and when its answer came.
    refused: Vec<(Instant, Instant)>,
}

enum Answer {
    Acknowledged,
    Throttled,
}

async fn send(
    grpc: bool,
    gateway: (std::net::SocketAddr, std::net::SocketAddr),
    http: &reqwest::Client,
    body: Bytes,
) -> Answer {
    if grpc {
        return match grpc_export(gateway.0, Signal::Traces, body, &[]).await {
            Ok(()) => Answer::Acknowledged,
            Err(status)
                if status.code() == tonic::Code::ResourceExhausted
                    && status.message().contains("`timescale`")
                    && status.message().contains("throttle_lag_ms (300)")
                    && tonic_types::StatusExt::get_details_retry_info(&status).is_some() =>
            {
                Answer::Throttled
            }
            Err(status) => panic!("unexpected gRPC answer: {status:?}"),
        };
    }
    let response = http
        .post(format!("http://{}/v1/traces", gateway.1))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("the HTTP request reaches the gateway");
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let text = String::from_utf8_lossy(&response.bytes().await.unwrap()).into_owned();
    match status {
        200 => Answer::Acknowledged,
        429 if retry_after && text.contains("throttle_lag_ms (300)") => Answer::Throttled,
        _ => panic!("unexpected HTTP answer {status}: {text}"),
    }
}

/// Sends generated frames until `stop`, each request over a transport picked at random,
/// retrying a refused request 10-40 ms later until it is acknowledged or `stop` is set.
async fn client(
    seed: u64,
    gateway: (std::net::SocketAddr, std::net::SocketAddr),
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut generator = TelemetryGenerator::new(seed);
    let http = reqwest::Client::new();
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let (request, _) = generator.traces(rng.random_range(5..=30));
        let rows = rows_of(&request);
        let body = Bytes::from(request.encode_to_vec());
        loop {
            let sent = Instant::now();
            match send(rng.random_bool(0.5), gateway, &http, body.clone()).await {
                Answer::Acknowledged => {
                    seen.acknowledged.push((sent, rows));
                    break;
                }
                Answer::Throttled => seen.refused.push((sent, Instant::now())),
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(10..40))).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(2..20))).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_database_throttles_at_the_lag_bound_and_acknowledged_rows_land_once() {
    let seed: u64 = std::env::var("OTELGATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("OTELGATE_TEST_SEED={seed}");
    let pg = TempPostgres::start(false).unwrap();
    let mut sink = sink_config(&pg.url());
    sink.queue.throttle_lag_ms = Some(BOUND.as_millis() as u64);
    let gateway = gateway_with_sink(sink).await;
    let addrs = (gateway.grpc_addr(), gateway.http_addr());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(seed.wrapping_add(i), addrs, stop.clone())))
        .collect();

    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5741_4c4c);
    let mut locker = connect(&pg.url()).await;
    let mut stalls = Vec::new();
    for _ in 0..STALLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..800))).await;
        let tx = locker.transaction().await.unwrap();
        // Conflicts with the ROW EXCLUSIVE lock every COPY takes: the sink's transactions wait.
        tx.batch_execute("LOCK TABLE detection_events IN SHARE MODE")
            .await
            .unwrap();
        let locked = Instant::now();
        tokio::time::sleep(Duration::from_millis(rng.random_range(1800..2600))).await;
        let unlocked = Instant::now();
        tx.commit().await.unwrap();
        stalls.push((locked, unlocked));
    }
    // The clients go on after the last stall, long enough for the sink to catch up.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Seen::default();
    for client in clients {
        let one = client.await.unwrap();
        seen.acknowledged.extend(one.acknowledged);
        seen.refused.extend(one.refused);
    }

    for (round, &(locked, unlocked)) in stalls.iter().enumerate() {
        let refused: Vec<_> = seen
            .refused
            .iter()
            .filter(|(sent, _)| *sent >= locked && *sent < unlocked)
            .collect();
        assert!(!refused.is_empty(), "stall {round} was never throttled");
        // The lag check happens somewhere between a request's sending and its answer, and
        // requests on different connections overtake each other: a request sent after a
        // refusal was answered was checked after it.
        let first_refusal = refused.iter().map(|(_, answered)| *answered).min();
        let last_accepted = seen
            .acknowledged
            .iter()
            .map(|(at, _)| *at)
            .filter(|&at| at >= locked && at < unlocked)
            .max();
        // Once refused, refused until the stall ends: nothing the sink holds can finish. Only
        // from a refusal checked at least BOUND into the stall: the transaction whose commit
        // let the lock be granted may reach the sink as finished a little after `locked`,
        // and until then a refusal can be followed by acceptances (seen under a loaded run).
        let settled = refused
            .iter()
            .filter(|(sent, _)| *sent >= locked + BOUND)
            .map(|(_, answered)| *answered)
            .min();
        if let Some(first) = settled {
            let accepted_between = seen
                .acknowledged
                .iter()
                .filter(|(at, _)| *at > first && *at + Duration::from_millis(50) < unlocked)
                .count();
            assert_eq!(
                accepted_between, 0,
                "stall {round}: requests acknowledged after a refusal {:?} into it, while still stalled",
                first - locked
            );
        }
        println!(
            "stall {round}: {:?} long, first refusal answered {:?} and last acknowledged request sent {:?} after it began",
            unlocked - locked,
            first_refusal.map(|at| at - locked),
            last_accepted.map(|at| at - locked),
        );
        // Requests sent once the stall had lasted well past the bound, and before it ended.
        let late = seen
            .acknowledged
            .iter()
            .filter(|(at, _)| {
                *at >= locked + REFUSED_AFTER && *at + Duration::from_millis(50) < unlocked
            })
            .count();
        assert_eq!(
            late, 0,
            "stall {round}: {late} requests acknowledged more than {REFUSED_AFTER:?} into a stall"
        );
    }
    let last_unlock = stalls.last().unwrap().1;
    assert!(
        seen.acknowledged.iter().any(|(at, _)| *at > last_unlock),
        "no request was accepted after the last stall"
    );

    let total = seen
        .acknowledged
        .iter()
        .fold(RowCounts::default(), |sum, (_, rows)| RowCounts {
            frames: sum.frames + rows.frames,
            detections: sum.detections + rows.detections,
            chats: sum.chats + rows.chats,
        });
    let db = connect(&pg.url()).await;
    assert_eq!(
        wait_count(
            &db,
            "SELECT count(*) FROM detection_events",
            total.detections
        )
        .await,
        total.detections,
        "acknowledged detections did not all arrive"
    );
    let refusals = metric(
        gateway.admin_addr(),
        "otelgate_receiver_refused_requests_total",
        &[("signal", "traces"), ("reason", "lag_throttle")],
    )
    .await;
    let report = gateway.shutdown().await;
    for (table, key, expected) in [
        ("frame_metadata", "span_id", total.frames),
        (
            "detection_events",
            "(span_id, bbox_x, bbox_y, object_class)",
            total.detections,
        ),
        ("llm_requests", "span_id", total.chats),
    ] {
        let rows = count(&db, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(
            rows, expected,
            "{table}: rows lost, duplicated or written for a refused request"
        );
        let distinct = count(&db, &format!("SELECT count(DISTINCT {key}) FROM {table}")).await;
        assert_eq!(distinct, expected, "{table}: a row written twice");
    }
    assert_eq!(
        refusals,
        seen.refused.len() as f64,
        "the gateway counted other refusals than the clients saw"
    );
    assert_eq!(report.sink.unwrap().rows_failed, 0);
    println!(
        "{} requests acknowledged, {} refused over {STALLS} stalls; {} frames and {} detections once each",
        seen.acknowledged.len(),
        seen.refused.len(),
        total.frames,
        total.detections
    );
}

/// Below saturation the sink prefers one transaction at a time: a batch that falls due while
/// another transaction is in flight waits for it, up to one more `max_wait_ms`, and only then
/// takes a second connection. Seen from PostgreSQL, with `detection_events` locked so that
/// the first transaction stays in flight: a second transaction waits on the lock only after
/// twice `max_wait_ms`, not after once. Every row lands once after the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_batch_waits_for_the_transaction_in_flight_up_to_one_more_max_wait() {
    const MAX_WAIT: Duration = Duration::from_millis(600);
    let pg = TempPostgres::start(false).unwrap();
    let url = format!("{}?application_name=otelgate-sink", pg.url());
    let mut sink = sink_config(&url);
    sink.max_wait_ms = MAX_WAIT.as_millis() as u64;
    sink.pool_size = 2;
    let gateway = gateway_with_sink(sink).await;
    let mut locker = connect(&pg.url()).await;
    let db = connect(&pg.url()).await;
    let waiting = || async {
        count(
            &db,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'otelgate-sink' AND wait_event_type = 'Lock'",
        )
        .await
    };
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE detection_events IN SHARE MODE")
        .await
        .unwrap();
    let mut generator = TelemetryGenerator::new(11);
    let mut total = RowCounts::default();
    let mut send = || {
        let (request, _) = generator.traces(10);
        let rows = rows_of(&request);
        total.frames += rows.frames;
        total.detections += rows.detections;
        grpc_export(
            gateway.grpc_addr(),
            Signal::Traces,
            Bytes::from(request.encode_to_vec()),
            &[],
        )
    };
    send().await.unwrap();
    // The first batch leaves after MAX_WAIT and waits on the lock.
    let deadline = Instant::now() + WAIT;
    while waiting().await < 1 {
        assert!(
            Instant::now() < deadline,
            "the first transaction never reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send().await.unwrap();
    let second = Instant::now();
    // Past the second batch's own deadline, before twice it: still one transaction.
    tokio::time::sleep(MAX_WAIT + MAX_WAIT / 3).await;
    let at_one_and_a_third = waiting().await;
    let checked_at = second.elapsed();
    let deadline = Instant::now() + WAIT;
    while waiting().await < 2 {
        assert!(Instant::now() < deadline, "the second batch never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left_after = second.elapsed();
    tx.commit().await.unwrap();
    if checked_at < 2 * MAX_WAIT {
        assert_eq!(
            at_one_and_a_third, 1,
            "a second transaction started {checked_at:?} after its batch's first rows, \
             while the first was in flight"
        );
    }
    assert!(
        left_after >= 2 * MAX_WAIT - Duration::from_millis(50),
        "the second batch left {left_after:?} after its first rows, before twice max_wait_ms"
    );
    assert_eq!(
        wait_count(
            &db,
            "SELECT count(*) FROM detection_events",
            total.detections
        )
        .await,
        total.detections
    );
    gateway.shutdown().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM frame_metadata").await,
        total.frames
    );
    println!(
        "the second batch left {left_after:?} after its first rows (max_wait_ms {MAX_WAIT:?})"
    );
}
