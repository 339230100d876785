//! A randomized, seeded crash harness. Real `otelgate run` processes, a real PostgreSQL with
//! TimescaleDB and two recording OTLP backends take a mixed workload (see [`workload`]) from
//! several clients over gRPC and OTLP/HTTP while faults are injected at random moments:
//! `kill -9` of a gateway, PostgreSQL stopped at once, the sink's connections terminated, an
//! exporter backend hanging, chunks compressed and policy jobs run during inserts. After each
//! round, with every fault healed, it waits for each gateway's log to drain and checks:
//!
//! - every acknowledged record's rows are in their tables exactly once, with their values; a
//!   request whose answer never came may be there at most once; nothing else is (a throttled
//!   request, gRPC `RESOURCE_EXHAUSTED` or HTTP 429, was never appended and never lands);
//! - every acknowledged span, log record and data point reached both backends, and none of a
//!   throttled request did;
//! - each log's lag returns to 0, and nothing was rejected.
//!
//! The seed also picks each gateway's [`world::Tuning`] (log group wait, worker threads, the
//! sink's lag bound), so kills land on differently interleaved gateways, and faults that stall
//! the sink throttle clients on some of them.
//!
//! The seed fixes the workload and the fault plan (timing still varies from run to run). The
//! suite runs a few rounds; `scripts/chaos.sh` runs long ones and prints the table.

mod workload;
mod world;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otelgate::Signal;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use workload::{Client, Expected, FrameRow};
use world::World;

const CLIENTS: usize = 6;
const DRAIN: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillGateway(usize),
    StopPostgres,
    TerminateSinkConnections,
    BackendHangs(usize),
    CompressChunks,
    RunPolicyJobs,
}

impl Fault {
    fn kind(self) -> &'static str {
        match self {
            Fault::KillGateway(_) => "kill-9",
            Fault::StopPostgres => "pg-stop",
            Fault::TerminateSinkConnections => "pg-terminate",
            Fault::BackendHangs(_) => "backend-hangs",
            Fault::CompressChunks => "compress",
            Fault::RunPolicyJobs => "policy-jobs",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Planned {
    fault: Fault,
    at: Duration,
    hold: Duration,
}

impl std::fmt::Display for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.at.as_secs_f64();
        let hold = self.hold.as_secs_f64();
        match self.fault {
            Fault::KillGateway(g) => write!(f, "kill-9 g{g}@{at:.1}s+{hold:.1}s"),
            Fault::StopPostgres => write!(f, "pg-stop@{at:.1}s+{hold:.1}s"),
            Fault::TerminateSinkConnections => write!(f, "pg-terminate@{at:.1}s"),
            Fault::BackendHangs(b) => write!(f, "backend-{b}-hangs@{at:.1}s+{hold:.1}s"),
            Fault::CompressChunks => write!(f, "compress@{at:.1}s"),
            Fault::RunPolicyJobs => write!(f, "policy-jobs@{at:.1}s"),
        }
    }
}

/// One round's fault plan: one to three faults of different kinds.
fn plan(rng: &mut SmallRng, gateways: usize, window: Duration) -> Vec<Planned> {
    let mut kinds = vec![
        Fault::KillGateway(rng.random_range(0..gateways)),
        Fault::StopPostgres,
        Fault::TerminateSinkConnections,
        Fault::BackendHangs(rng.random_range(0..2)),
        Fault::CompressChunks,
        Fault::RunPolicyJobs,
    ];
    // Killing a gateway is what loses data if anything does: in most rounds.
    let mut plan = Vec::new();
    if rng.random_bool(0.6) {
        plan.push(kinds.remove(0));
    }
    while plan.is_empty() || (plan.len() < 3 && rng.random_bool(0.5)) {
        plan.push(kinds.remove(rng.random_range(0..kinds.len())));
    }
    let window_ms = window.as_millis() as u64;
    let mut plan: Vec<Planned> = plan
        .into_iter()
        .map(|fault| Planned {
            fault,
            at: Duration::from_millis(rng.random_range(100..window_ms - 100)),
            hold: Duration::from_millis(rng.random_range(100..1500)),
        })
        .collect();
    plan.sort_by_key(|p| p.at);
    plan
}

async fn inject(world: &World, planned: Planned) -> String {
    tokio::time::sleep(planned.at).await;
    match planned.fault {
        Fault::KillGateway(g) => {
            world.gateways[g].kill().await;
            tokio::time::sleep(planned.hold).await;
            world.gateways[g].start(Duration::from_secs(60)).await;
            String::new()
        }
        Fault::StopPostgres => {
            world.stop_postgres().await;
            tokio::time::sleep(planned.hold).await;
            world.start_postgres().await;
            String::new()
        }
        Fault::BackendHangs(b) => {
            world.backends[b].set_hanging(true);
            tokio::time::sleep(planned.hold).await;
            world.backends[b].set_hanging(false);
            String::new()
        }
        Fault::TerminateSinkConnections => {
            sql(
                world,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .await
        }
        Fault::CompressChunks => {
            sql(
                world,
                "SELECT count(compress_chunk(c, if_not_compressed => true)) FROM \
                 (SELECT show_chunks(t) AS c FROM unnest(ARRAY['frame_metadata', \
                 'detection_events', 'llm_requests']::regclass[]) AS t) chunks",
            )
            .await
        }
        Fault::RunPolicyJobs => {
            let Some(db) = world.db().await else {
                return "db down".into();
            };
            let jobs = match db
                .query(
                    "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name IN \
                     ('policy_retention', 'policy_compression', 'policy_refresh_continuous_aggregate')",
                    &[],
                )
                .await
            {
                Ok(rows) => rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
                Err(e) => return format!("jobs: {e}"),
            };
            let mut failed = 0;
            for job in &jobs {
                if db
                    .batch_execute(&format!("CALL run_job({job})"))
                    .await
                    .is_err()
                {
                    failed += 1;
                }
            }
            format!("{} jobs, {failed} failed", jobs.len())
        }
    }
}

/// Runs `query` on a fresh connection; what happened, for the report (the database may be down).
async fn sql(world: &World, query: &str) -> String {
    let Some(db) = world.db().await else {
        return "db down".into();
    };
    match db.simple_query(query).await {
        Ok(_) => String::new(),
        Err(e) => e
            .as_db_error()
            .map_or(e.to_string(), |d| d.message().to_owned()),
    }
}

/// What the clients learned: acknowledged requests; refused ones (throttled: gRPC
/// `RESOURCE_EXHAUSTED`, HTTP 429), which the gateway never appended and so must never land;
/// and ones whose answer never came (or was another error), which may have landed or not.
#[derive(Default)]
struct Outcomes {
    acked: Expected,
    unknown: Expected,
    refused: Expected,
    acked_requests: u64,
    refused_requests: u64,
    unknown_requests: u64,
}

/// Runs the clients until `stop`.
fn clients(
    world: &World,
    seed: u64,
    round: usize,
    outcomes: Arc<Mutex<Outcomes>>,
    stop: CancellationToken,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let http = reqwest::Client::new();
    for index in 0..CLIENTS {
        let gateway = &world.gateways[index % world.gateways.len()];
        let (grpc_addr, http_addr) = (gateway.grpc, gateway.http);
        let rng = SmallRng::seed_from_u64(seed ^ ((round as u64) << 20) ^ index as u64);
        let mut client = Client::new(&format!("s{seed}r"), round, index, rng);
        let (outcomes, stop, http) = (outcomes.clone(), stop.clone(), http.clone());
        tasks.spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let (signal, body, expected) = client.request();
                n += 1;
                let use_grpc = (n + client.index as u64).is_multiple_of(2);
                let result =
                    workload::send(&http, grpc_addr, http_addr, use_grpc, signal, body).await;
                let acked = result.is_ok();
                {
                    let mut outcomes = outcomes.lock().unwrap();
                    match result.as_ref().map_err(String::as_str) {
                        Ok(()) => {
                            outcomes.acked.absorb(expected);
                            outcomes.acked_requests += 1;
                        }
                        // Not in `unknown`: a row of a refused request is an unexpected row.
                        Err("ResourceExhausted" | "429") => {
                            outcomes.refused.absorb(expected);
                            outcomes.refused_requests += 1;
                        }
                        Err(_) => {
                            outcomes.unknown.absorb(expected);
                            outcomes.unknown_requests += 1;
                        }
                    }
                }
                if !acked {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
    }
    tasks
}

/// Items each backend has received so far, read incrementally.
#[derive(Default)]
struct BackendView {
    read: [usize; 3],
    seen: HashSet<String>,
    duplicates: u64,
}

impl BackendView {
    fn update(&mut self, backend: &otelgate_cli::demo::backend::RecordingBackend) {
        for signal in Signal::ALL {
            let bodies = backend.bodies_from(signal, self.read[signal.index()]);
            self.read[signal.index()] += bodies.len();
            for body in bodies {
                for id in workload::item_ids(signal, &body) {
                    if !self.seen.insert(id) {
                        self.duplicates += 1;
                    }
                }
            }
        }
    }
}

/// What one check found.
#[derive(Debug, Default)]
struct Findings {
    rows: usize,
    missing_rows: Vec<String>,
    duplicate_rows: Vec<String>,
    wrong_values: Vec<String>,
    unexpected_rows: Vec<String>,
    rejected: i64,
    missing_at_backends: [usize; 2],
    /// Items of refused requests that reached a backend.
    refused_at_backends: [usize; 2],
    backend_duplicates: [u64; 2],
}

impl Findings {
    fn ok(&self) -> bool {
        self.missing_rows.is_empty()
            && self.duplicate_rows.is_empty()
            && self.wrong_values.is_empty()
            && self.unexpected_rows.is_empty()
            && self.rejected == 0
            && self.missing_at_backends == [0, 0]
            && self.refused_at_backends == [0, 0]
    }
}

/// Compares the rows found (key -> values, one entry per row) with what was acknowledged
/// and what may have landed.
fn reconcile<K, V>(
    table: &str,
    found: Vec<(K, V)>,
    acked: &HashMap<K, V>,
    unknown: &HashMap<K, V>,
    findings: &mut Findings,
) where
    K: std::hash::Hash + Eq + std::fmt::Debug + Clone,
    V: PartialEq + std::fmt::Debug,
{
    findings.rows += found.len();
    let mut counts: HashMap<K, usize> = HashMap::new();
    for (key, value) in found {
        *counts.entry(key.clone()).or_default() += 1;
        match acked.get(&key).or_else(|| unknown.get(&key)) {
            Some(want) if *want != value => findings
                .wrong_values
                .push(format!("{table} {key:?}: {value:?}, sent {want:?}")),
            Some(_) => {}
            None => findings.unexpected_rows.push(format!("{table} {key:?}")),
        }
    }
    for (key, count) in &counts {
        if *count > 1 {
            findings
                .duplicate_rows
                .push(format!("{table} {key:?} x{count}"));
        }
    }
    for key in acked.keys() {
        if !counts.contains_key(key) {
            findings.missing_rows.push(format!("{table} {key:?}"));
        }
    }
}

async fn check(
    world: &World,
    run: &str,
    outcomes: &Outcomes,
    views: &mut [BackendView; 2],
) -> Findings {
    let db = world.db().await.expect("database up for the check");
    let mut findings = Findings::default();
    let like = format!("{run}%");
    let frames = db
        .query(
            "SELECT frame_id, camera_id, sequence, width FROM frame_metadata WHERE frame_id LIKE $1",
            &[&like],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                FrameRow {
                    camera_id: r.get(1),
                    sequence: r.get(2),
                    width: r.get(3),
                },
            )
        })
        .collect();
    reconcile(
        "frame_metadata",
        frames,
        &outcomes.acked.frames,
        &outcomes.unknown.frames,
        &mut findings,
    );
    let detections = db
        .query(
            "SELECT frame_id, track_id, object_class FROM detection_events WHERE frame_id LIKE $1",
            &[&like],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get::<_, String>(0), r.get::<_, i64>(1)), r.get(2)))
        .collect();
    reconcile(
        "detection_events",
        detections,
        &outcomes.acked.detections,
        &outcomes.unknown.detections,
        &mut findings,
    );
    let llm = db
        .query(
            "SELECT span_id, input_tokens FROM llm_requests WHERE service_name = 'chaos-camera'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, i64>(1)))
        .collect();
    reconcile(
        "llm_requests",
        llm,
        &outcomes.acked.llm,
        &outcomes.unknown.llm,
        &mut findings,
    );
    findings.rejected = db
        .query_one("SELECT count(*) FROM otelgate_rejected_rows", &[])
        .await
        .unwrap()
        .get(0);
    for (i, view) in views.iter_mut().enumerate() {
        view.update(&world.backends[i]);
        findings.missing_at_backends[i] = outcomes.acked.items.difference(&view.seen).count();
        findings.refused_at_backends[i] = outcomes.refused.items.intersection(&view.seen).count();
        findings.backend_duplicates[i] = view.duplicates;
    }
    findings
}

/// Waits until every gateway answers with a lag of 0; how long that took, or `None`.
async fn drain(world: &World) -> Option<Duration> {
    let started = Instant::now();
    let client = reqwest::Client::new();
    while started.elapsed() < DRAIN {
        let mut all = true;
        for gateway in &world.gateways {
            all &= gateway.lag(&client).await == Some(0);
        }
        if all {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

struct Settings {
    seed: u64,
    rounds: usize,
    gateways: usize,
}

impl Settings {
    /// `CHAOS_SEED` and `CHAOS_ROUNDS` override the defaults.
    fn from_env(gateways: usize, rounds: usize, seed: u64) -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        Settings {
            seed: var("CHAOS_SEED").unwrap_or(seed),
            rounds: var("CHAOS_ROUNDS")
                .map(|r: u64| r as usize)
                .unwrap_or(rounds),
            gateways,
        }
    }
}

async fn run(settings: Settings) {
    let Settings {
        seed,
        rounds,
        gateways,
    } = settings;
    let world = World::start(gateways, seed).await;
    let mut rng = SmallRng::seed_from_u64(seed);
    // Every frame id of this run starts so (see `clients`).
    let run = format!("s{seed}r");
    let mut total = Outcomes::default();
    let mut views: [BackendView; 2] = Default::default();
    let mut failed = Vec::new();
    let mut injected: std::collections::BTreeMap<&str, usize> = Default::default();
    let tunings: Vec<world::Tuning> = (0..gateways).map(|i| world::tuning(seed, i)).collect();
    println!(
        "chaos: seed {seed}, {rounds} rounds, {gateways} gateway(s) {tunings:?}, {CLIENTS} clients"
    );
    println!(
        "{:>5} | {:<60} | {:>6} | {:>5} | {:>7} | {:>4} | {:>4} | {:>5} | {:>5} | {:>7} | result",
        "round", "faults", "acked", "unkn", "rows", "miss", "dup", "wrong", "bk-mis", "drain"
    );
    for round in 0..rounds {
        let window = Duration::from_millis(rng.random_range(1500..3500));
        let plan = plan(&mut rng, gateways, window);
        for planned in &plan {
            *injected.entry(planned.fault.kind()).or_default() += 1;
        }
        let stop = CancellationToken::new();
        let round_outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let mut senders = clients(&world, seed, round, round_outcomes.clone(), stop.clone());
        let faults: Vec<_> = plan.iter().map(|p| inject(&world, *p)).collect();
        let notes = tokio::join!(futures_util::future::join_all(faults), async {
            tokio::time::sleep(window).await;
            stop.cancel();
        })
        .0;
        while senders.join_next().await.is_some() {}
        let this = std::mem::take(&mut *round_outcomes.lock().unwrap());
        let acked_now = this.acked_requests;
        total.acked_requests += this.acked_requests;
        total.unknown_requests += this.unknown_requests;
        total.refused_requests += this.refused_requests;
        total.acked.absorb(this.acked);
        total.refused.absorb(this.refused);
        total.unknown.absorb(this.unknown);
        let drained = drain(&world).await;
        let findings = check(&world, &run, &total, &mut views).await;
        let ok = drained.is_some() && findings.ok();
        let faults_text = plan
            .iter()
            .zip(&notes)
            .map(|(p, note)| {
                if note.is_empty() {
                    p.to_string()
                } else {
                    format!("{p} ({note})")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{:>5} | {:<60} | {:>6} | {:>5} | {:>7} | {:>4} | {:>4} | {:>5} | {:>5} | {:>7} | {}",
            round,
            faults_text,
            acked_now,
            total.unknown_requests,
            findings.rows,
            findings.missing_rows.len(),
            findings.duplicate_rows.len(),
            findings.wrong_values.len(),
            findings.missing_at_backends[0] + findings.missing_at_backends[1],
            drained.map_or("stuck".into(), |d| format!("{:.1}s", d.as_secs_f64())),
            if ok { "ok" } else { "FAIL" },
        );
        if !ok {
            println!("  round {round} findings: {findings:#?}");
            for (i, gateway) in world.gateways.iter().enumerate() {
                println!("  g{i} stderr:\n{}", gateway.stderr_tail());
            }
            failed.push(round);
            break;
        }
    }
    let mut clean = true;
    for gateway in &world.gateways {
        clean &= gateway.stop().await;
    }
    let all = &total;
    println!(
        "chaos: seed {seed}: {} acknowledged requests ({} rows, {} items), {} refused, {} unanswered; \
         backend duplicates (at least once) {} / {}; failed rounds {failed:?}",
        all.acked_requests,
        all.acked.rows(),
        all.acked.items.len(),
        all.refused_requests,
        all.unknown_requests,
        views[0].duplicates,
        views[1].duplicates,
    );
    assert!(
        failed.is_empty(),
        "invariants broken in round(s) {failed:?}"
    );
    assert!(clean, "a gateway did not exit cleanly on SIGTERM");
    assert!(all.acked_requests > 0, "nothing was acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_lose_and_duplicate_nothing_needs_timescaledb() {
    run(Settings::from_env(1, 4, 14)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_across_three_gateways_needs_timescaledb() {
    run(Settings::from_env(3, 3, 15)).await;
}
