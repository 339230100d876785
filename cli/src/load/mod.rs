//! `otelgate load`: the load generator. Sends realistic OTLP (frame spans with detection
//! events and GenAI spans, or log records, or metrics) over gRPC or HTTP on C connections in
//! batches of B, either at a fixed rate for a duration (holding the schedule and reporting
//! when it could not) or as fast as acknowledgements allow. Reports offered and acknowledged
//! items per second, refusals by status, acknowledgement latency percentiles and, given the
//! database URL, receive-to-commit latency from the rows' `ingested_at` and rows found
//! against rows acknowledged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use otelgate::codec::BytesCodec;
use otelgate::Signal;
use prost::Message;
use serde::Serialize;

pub(crate) mod template;

use crate::demo::generator::{now_nanos, TelemetryGenerator, TraceShape};
use template::TraceTemplates;

/// Options of `otelgate load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Where to send: `http://host:4317` for grpc, `http://host:4318` for http.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// `grpc` or `http` (OTLP/HTTP protobuf).
    #[arg(long, default_value = "grpc")]
    pub protocol: String,
    /// `traces` (frame spans with detection events plus one GenAI span per ten frames),
    /// `logs` or `metrics`.
    #[arg(long, default_value = "traces")]
    pub signal: String,
    /// What trace requests hold: `mixed` (frames with 0-3 detections and one GenAI span per
    /// ten frames, 2.6 rows per frame), `frames` (frames with exactly 3 detections, 4 rows
    /// per frame) or `spans` (plain HTTP server spans, no rows; for forwarding).
    #[arg(long, value_enum, default_value_t = TraceShape::Mixed)]
    pub shape: TraceShape,
    /// Concurrent connections (each sends one request at a time).
    #[arg(long, short = 'c', default_value_t = 4)]
    pub connections: usize,
    /// Frames or spans (or log records, or metric requests' data points) per request.
    #[arg(long, short = 'b', default_value_t = 100)]
    pub batch: usize,
    /// Target frames (log records) per second over all connections; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// PostgreSQL URL of the gateway's TimescaleDB sink: measure receive-to-commit latency
    /// and check that every acknowledged frame became a row.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Behave like an OTLP exporter when throttled: a request refused with a throttling
    /// answer (gRPC `RESOURCE_EXHAUSTED` or `UNAVAILABLE`, HTTP 429 or 503) is sent again,
    /// unchanged, after the delay the server advised (RetryInfo, `Retry-After`; 1 s when it
    /// gave none), until the run ends. Its acknowledgement latency counts from the first try.
    /// Without it, a refused request is counted and the connection sends the next one at once.
    #[arg(long)]
    pub retry_throttled: bool,
}

/// What a load run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub protocol: String,
    pub signal: String,
    pub shape: TraceShape,
    pub connections: usize,
    pub batch: usize,
    pub target_rate: u64,
    pub seconds: f64,
    pub requests_sent: u64,
    pub requests_acknowledged: u64,
    pub items_sent: u64,
    pub items_acknowledged: u64,
    pub items_per_second_offered: f64,
    pub items_per_second_acknowledged: f64,
    /// Requests that started later than their schedule by more than one interval.
    pub requests_behind_schedule: u64,
    pub refusals: BTreeMap<String, u64>,
    pub ack_latency_ms: Percentiles,
    /// Spans of all kinds acknowledged (frames + detection-bearing frames' LLM spans).
    pub spans_acknowledged: u64,
    pub database: Option<DatabaseReport>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From unsorted samples.
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index].as_secs_f64() * 1000.0
        };
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        }
    }
}

/// Rows of this run found in PostgreSQL.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatabaseReport {
    pub frames_acknowledged: u64,
    pub frame_rows_found: u64,
    /// From a frame span's end (its send time) to its row's `ingested_at`.
    pub receive_to_commit_ms: Percentiles,
}

#[derive(Default)]
struct ConnectionTally {
    requests_sent: u64,
    requests_acknowledged: u64,
    items_sent: u64,
    items_acknowledged: u64,
    spans_acknowledged: u64,
    behind: u64,
    refusals: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

/// A refused request: the status, and the advised delay when it was a throttling answer.
struct Refusal {
    status: String,
    retry_after: Option<Duration>,
}

enum Client {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http(reqwest::Client, String),
}

impl Client {
    async fn connect(protocol: &str, endpoint: &str) -> anyhow::Result<Client> {
        match protocol {
            "grpc" => {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
                    .tcp_nodelay(true)
                    .connect()
                    .await?;
                Ok(Client::Grpc(tonic::client::Grpc::new(channel)))
            }
            "http" => Ok(Client::Http(
                reqwest::Client::new(),
                endpoint.trim_end_matches('/').to_owned(),
            )),
            other => anyhow::bail!("unknown protocol `{other}`: use grpc or http"),
        }
    }

    /// Sends one request; `Err` carries the refusal's status name and, for a throttling
    /// answer, the delay the server advised (1 s when it gave none).
    async fn send(&mut self, signal: Signal, body: Bytes) -> Result<(), Refusal> {
        let transport = |e: &dyn std::fmt::Display| Refusal {
            status: format!("transport: {e}"),
            retry_after: None,
        };
        match self {
            Client::Grpc(grpc) => {
                grpc.ready().await.map_err(|e| transport(&e))?;
                let path = http::uri::PathAndQuery::from_static(signal.grpc_path());
                grpc.unary::<Bytes, Bytes, _>(tonic::Request::new(body), path, BytesCodec)
                    .await
                    .map(|_| ())
                    .map_err(|s| {
                        let throttled = matches!(
                            s.code(),
                            tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                        );
                        let advised = tonic_types::StatusExt::get_details_retry_info(&s)
                            .and_then(|info| info.retry_delay);
                        Refusal {
                            status: format!("grpc {:?}", s.code()),
                            retry_after: throttled
                                .then(|| advised.unwrap_or(Duration::from_secs(1))),
                        }
                    })
            }
            Client::Http(client, base) => {
                let response = client
                    .post(format!("{base}{}", signal.http_path()))
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| transport(&e))?;
                let status = response.status();
                if status.is_success() {
                    return Ok(());
                }
                let advised = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let throttled = matches!(status.as_u16(), 429 | 503);
                Err(Refusal {
                    status: format!("http {}", status.as_u16()),
                    retry_after: throttled.then(|| advised.unwrap_or(Duration::from_secs(1))),
                })
            }
        }
    }
}

fn parse_signal(signal: &str) -> anyhow::Result<Signal> {
    Ok(match signal {
        "traces" => Signal::Traces,
        "logs" => Signal::Logs,
        "metrics" => Signal::Metrics,
        other => anyhow::bail!("unknown signal `{other}`: use traces, logs or metrics"),
    })
}

/// Runs a load as `args` say and returns the report (also printed by the CLI).
pub async fn run(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    let signal = parse_signal(&args.signal)?;
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| default_endpoint(&args.protocol));
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let connections = args.connections.max(1);
    let batch = args.batch.max(1);
    // Interval between one connection's requests at the target rate.
    let interval = (args.rate > 0)
        .then(|| Duration::from_secs_f64(batch as f64 * connections as f64 / args.rate as f64));
    let run_started = std::time::SystemTime::now();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..connections {
        let client = Client::connect(&args.protocol, &endpoint).await?;
        let seed = connection as u64 + 1;
        let load = ConnectionLoad::new(client, signal, args.shape, batch, seed, &run_id);
        tasks.spawn(load.run(interval, deadline, args.retry_throttled));
    }
    let mut total = ConnectionTally::default();
    while let Some(joined) = tasks.join_next().await {
        total.add(joined?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let database = match (&args.database_url, signal) {
        (Some(url), Signal::Traces) if args.shape != TraceShape::Spans => {
            Some(database_report(url, &run_id, total.items_acknowledged, run_started).await?)
        }
        _ => None,
    };
    Ok(total.into_report(args, connections, batch, seconds, database))
}

/// The gateway's local address for `protocol`.
fn default_endpoint(protocol: &str) -> String {
    match protocol {
        "http" => "http://127.0.0.1:4318".into(),
        _ => "http://127.0.0.1:4317".into(),
    }
}

impl ConnectionTally {
    /// Adds another connection's counts to these.
    fn add(&mut self, other: ConnectionTally) {
        self.requests_sent += other.requests_sent;
        self.requests_acknowledged += other.requests_acknowledged;
        self.items_sent += other.items_sent;
        self.items_acknowledged += other.items_acknowledged;
        self.spans_acknowledged += other.spans_acknowledged;
        self.behind += other.behind;
        for (status, n) in other.refusals {
            *self.refusals.entry(status).or_default() += n;
        }
        self.latencies.extend(other.latencies);
    }

    /// The report of a run that lasted `seconds` and had these totals.
    fn into_report(
        mut self,
        args: &LoadArgs,
        connections: usize,
        batch: usize,
        seconds: f64,
        database: Option<DatabaseReport>,
    ) -> LoadReport {
        LoadReport {
            protocol: args.protocol.clone(),
            signal: args.signal.clone(),
            shape: args.shape,
            connections,
            batch,
            target_rate: args.rate,
            seconds,
            requests_sent: self.requests_sent,
            requests_acknowledged: self.requests_acknowledged,
            items_sent: self.items_sent,
            items_acknowledged: self.items_acknowledged,
            items_per_second_offered: self.items_sent as f64 / seconds,
            items_per_second_acknowledged: self.items_acknowledged as f64 / seconds,
            requests_behind_schedule: self.behind,
            refusals: self.refusals,
            ack_latency_ms: Percentiles::of(&mut self.latencies),
            spans_acknowledged: self.spans_acknowledged,
            database,
        }
    }
}

/// One connection's share of the load: its client and what it sends.
struct ConnectionLoad {
    client: Client,
    signal: Signal,
    batch: usize,
    generator: TelemetryGenerator,
    /// Trace requests come from templates (see `template`), built before the clock starts.
    templates: Option<TraceTemplates>,
}

impl ConnectionLoad {
    fn new(
        client: Client,
        signal: Signal,
        shape: TraceShape,
        batch: usize,
        seed: u64,
        run_id: &str,
    ) -> Self {
        let generator = TelemetryGenerator::new(seed).with_run(run_id);
        let templates = (signal == Signal::Traces).then(|| {
            let generator = TelemetryGenerator::new(seed)
                .with_run(run_id)
                .with_shape(shape);
            // Ids differ from run to run: two runs with the same connection count must not send
            // the same trace and span ids.
            TraceTemplates::new(generator, batch, rand::random::<u64>())
        });
        ConnectionLoad {
            client,
            signal,
            batch,
            generator,
            templates,
        }
    }

    /// Sends one request at a time until `deadline`, one every `interval` when given.
    async fn run(
        mut self,
        interval: Option<Duration>,
        deadline: Instant,
        retry_throttled: bool,
    ) -> ConnectionTally {
        let mut tally = ConnectionTally::default();
        let mut next = Instant::now();
        while Instant::now() < deadline {
            if let Some(interval) = interval {
                let now = Instant::now();
                if next > now {
                    tokio::time::sleep(next - now).await;
                } else if now - next > interval {
                    tally.behind += 1;
                }
                next += interval;
            }
            let (body, items, spans) = self.next_request();
            tally.requests_sent += 1;
            tally.items_sent += items;
            let t0 = Instant::now();
            loop {
                match self.client.send(self.signal, body.clone()).await {
                    Ok(()) => {
                        tally.latencies.push(t0.elapsed());
                        tally.requests_acknowledged += 1;
                        tally.items_acknowledged += items;
                        tally.spans_acknowledged += spans;
                    }
                    Err(refusal) => {
                        *tally.refusals.entry(refusal.status).or_default() += 1;
                        if let (true, Some(delay)) = (retry_throttled, refusal.retry_after) {
                            if Instant::now() + delay < deadline {
                                tokio::time::sleep(delay).await;
                                continue;
                            }
                        }
                    }
                }
                break;
            }
        }
        tally
    }

    /// The next request's body, its items and its spans.
    fn next_request(&mut self) -> (Bytes, u64, u64) {
        match self.signal {
            Signal::Traces => {
                let templates = self.templates.as_mut().expect("built for traces");
                let (body, spans) = templates.next(now_nanos());
                (body, self.batch as u64, spans)
            }
            Signal::Logs => {
                let (request, records) = self.generator.logs(self.batch);
                (request.encode_to_vec().into(), records, 0)
            }
            Signal::Metrics => {
                let (request, points) = self.generator.metrics();
                (request.encode_to_vec().into(), points, 0)
            }
        }
    }
}

/// Waits for this run's frame rows (while they keep arriving), then measures their commit latency.
/// `since`: when the run started; only frames from then on are counted, so the time index
/// limits each count to this run's rows. The count is a scan of those rows, so it is taken
/// at growing intervals (0.25 s doubling to 4 s): polling a large backlog every 200 ms took
/// a core from the PostgreSQL it was waiting for.
async fn database_report(
    url: &str,
    run_id: &str,
    frames: u64,
    since: std::time::SystemTime,
) -> anyhow::Result<DatabaseReport> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let since = since - Duration::from_secs(5);
    let count_sql =
        "SELECT count(*) FROM frame_metadata WHERE time >= $2 AND attributes->>'load.run' = $1";
    // A closed-loop run can leave a backlog of a minute or more in a durable log: wait as
    // long as rows keep arriving, up to 30 s without progress or 10 minutes in all.
    let started = Instant::now();
    let mut progress = Instant::now();
    let mut pause = Duration::from_millis(250);
    let mut found: i64 = -1;
    loop {
        let now: i64 = client
            .query_one(count_sql, &[&run_id, &since])
            .await?
            .get(0);
        if now > found {
            progress = Instant::now();
        }
        found = now;
        if found as u64 >= frames
            || progress.elapsed() > Duration::from_secs(30)
            || started.elapsed() > Duration::from_secs(600)
        {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(4));
    }
    let rows = client
        .query(
            "SELECT (extract(epoch FROM ingested_at - time) * 1000 - processing_ms)::float8
             FROM frame_metadata WHERE time >= $2 AND attributes->>'load.run' = $1",
            &[&run_id, &since],
        )
        .await?;
    let mut samples: Vec<Duration> = rows
        .iter()
        .map(|r| Duration::from_secs_f64(r.get::<_, f64>(0).max(0.0) / 1000.0))
        .collect();
    Ok(DatabaseReport {
        frames_acknowledged: frames,
        frame_rows_found: found as u64,
        receive_to_commit_ms: Percentiles::of(&mut samples),
    })
}

/// The human-readable report.
pub fn print(report: &LoadReport) {
    let mode = if report.target_rate > 0 {
        format!("fixed rate {} items/s", report.target_rate)
    } else {
        "maximum rate (closed loop)".to_owned()
    };
    println!(
        "otelgate load: {} ({:?} shape) over {}, {} connections x batch {}, {mode}, {:.1} s",
        report.signal,
        report.shape,
        report.protocol,
        report.connections,
        report.batch,
        report.seconds
    );
    println!(
        "  items       offered {:.0}/s  acknowledged {:.0}/s  ({} of {} items)",
        report.items_per_second_offered,
        report.items_per_second_acknowledged,
        report.items_acknowledged,
        report.items_sent
    );
    println!(
        "  requests    sent {}  acknowledged {}  behind schedule {}",
        report.requests_sent, report.requests_acknowledged, report.requests_behind_schedule
    );
    if !report.refusals.is_empty() {
        let refusals: Vec<String> = report
            .refusals
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!("  refusals    {}", refusals.join(", "));
    }
    let p = &report.ack_latency_ms;
    println!(
        "  ack latency p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        p.p50, p.p90, p.p99, p.p999, p.max
    );
    if let Some(db) = &report.database {
        let p = &db.receive_to_commit_ms;
        println!(
            "  rows        {} frame rows found for {} frames acknowledged",
            db.frame_rows_found, db.frames_acknowledged
        );
        println!("  commit      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms (send to row committed)", p.p50, p.p90, p.p99, p.max);
    }
}
