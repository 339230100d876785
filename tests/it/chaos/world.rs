//! What the harness runs and breaks: one PostgreSQL with TimescaleDB, two recording OTLP
//! backends (one per exporter protocol) and one or more `otelgate run` processes, each with
//! its own durable log, all writing to the one database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use otelgate_cli::demo::backend::RecordingBackend;
use otelgate_cli::demo::postgres::TempPostgres;
use tokio::process::Child;
use tokio::sync::Mutex;

use crate::durable::free_port;

/// A user mapping that fills `frame_metadata` beside the two built-in ones.
const USER_MAPPING: &str = r#"
[[timescale.mappings]]
table = "frame_metadata"
record = "log"
name = "frame.legacy"
columns = [
  { name = "camera_id", type = "text", from = "attribute:cam" },
  { name = "frame_id", type = "text", from = "attribute:fid" },
  { name = "sequence", type = "int8", from = "attribute:seq" },
]
"#;

/// One gateway process, restartable on the same ports and log.
pub struct GatewayProcess {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    config: PathBuf,
    stderr: PathBuf,
    child: Mutex<Option<Child>>,
}

impl GatewayProcess {
    fn new(dir: &Path, pg_url: &str, backends: &[RecordingBackend; 2], tuning: Tuning) -> Self {
        let Tuning {
            group_wait_us,
            worker_threads,
            throttle_lag_ms,
        } = tuning;
        // The sink's lag bound: faults stall it, so clients are throttled until it catches up.
        let sink_queue = throttle_lag_ms.map_or(String::new(), |ms| {
            format!("[timescale.queue]\nthrottle_lag_ms = {ms}\n")
        });
        std::fs::create_dir_all(dir).unwrap();
        let (grpc, http, admin) = (free_port(), free_port(), free_port());
        let config = format!(
            r#"
[receiver]
grpc_endpoint = "{grpc}"
http_endpoint = "{http}"
[telemetry]
admin_endpoint = "{admin}"
[pipeline]
shutdown_timeout_seconds = 5
worker_threads = {worker_threads}
[log]
dir = "{log}"
# Saved cursors lag: every restart replays records whose rows are partly committed.
cursor_interval_ms = 300
# Groups that wait for company too, so kills land while appends wait to be synced.
group_wait_us = {group_wait_us}
[exporters.a]
endpoint = "{a}"
protocol = "grpc"
timeout_ms = 500
[exporters.a.batch]
max_wait_ms = 5
[exporters.a.retry]
initial_backoff_ms = 10
max_backoff_ms = 200
[exporters.b]
endpoint = "{b}"
protocol = "http/protobuf"
timeout_ms = 500
[exporters.b.batch]
max_wait_ms = 5
[exporters.b.retry]
initial_backoff_ms = 10
max_backoff_ms = 200
[timescale]
url = "{pg_url}"
max_wait_ms = 5
# Small batches on several connections: many ledger ranges, committed out of order.
max_rows = 64
pool_size = 3
{sink_queue}{USER_MAPPING}"#,
            log = dir.join("log").display(),
            a = backends[0].endpoint(),
            b = backends[1].endpoint(),
        );
        let path = dir.join("otelgate.toml");
        std::fs::write(&path, config).unwrap();
        GatewayProcess {
            grpc,
            http,
            admin,
            config: path,
            stderr: dir.join("stderr.log"),
            child: Mutex::new(None),
        }
    }

    /// Starts the process and waits until `/readyz` answers 200. A start that fails (the
    /// database is down, say) is retried until `deadline`.
    pub async fn start(&self, deadline: Duration) {
        let mut slot = self.child.lock().await;
        assert!(slot.is_none(), "gateway already running");
        let until = tokio::time::Instant::now() + deadline;
        let client = reqwest::Client::new();
        'spawn: loop {
            let stderr = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.stderr)
                .unwrap();
            let mut child = tokio::process::Command::new(crate::otelgate_binary())
                .args(["run", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(stderr)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            loop {
                let ready = client
                    .get(format!("http://{}/readyz", self.admin))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    *slot = Some(child);
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    assert!(
                        tokio::time::Instant::now() < until,
                        "gateway never started; see {}",
                        self.stderr.display()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'spawn;
                }
                assert!(
                    tokio::time::Instant::now() < until,
                    "gateway never became ready; see {}",
                    self.stderr.display()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// `kill -9`.
    pub async fn kill(&self) {
        if let Some(mut child) = self.child.lock().await.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    /// SIGTERM and a clean exit.
    pub async fn stop(&self) -> bool {
        let Some(mut child) = self.child.lock().await.take() else {
            return true;
        };
        let pid = child.id().unwrap().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .is_ok_and(|status| status.is_ok_and(|s| s.success()))
    }

    /// The log's lag summed over destinations, or `None` when the gateway does not answer.
    pub async fn lag(&self, client: &reqwest::Client) -> Option<u64> {
        let response = client
            .get(format!("http://{}/readyz", self.admin))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?;
        let status: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
        status["log"]["destinations"].as_array().map(|ds| {
            ds.iter()
                .map(|d| d["lag_records"].as_u64().unwrap_or(u64::MAX))
                .sum()
        })
    }

    /// The last lines the process wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Settings that change how a gateway interleaves its work, varied by seed and gateway.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// `log.group_wait_us`: none (the default), longer than a sync, or shorter.
    pub group_wait_us: u64,
    /// `pipeline.worker_threads`: one per core (the default) or a single thread, on which
    /// receivers, readers and the sink take turns.
    pub worker_threads: usize,
    /// The sink's `queue.throttle_lag_ms`: none (the default) or 300 ms.
    pub throttle_lag_ms: Option<u64>,
}

/// Gateway `gateway`'s [`Tuning`] in a run of `seed`: runs with three gateways have each
/// wait, and six consecutive seeds (or gateways) every pair of a wait and a thread count,
/// and every wait and every thread count with and without the sink's lag bound.
pub fn tuning(seed: u64, gateway: usize) -> Tuning {
    const WAITS_US: [u64; 3] = [0, 2000, 500];
    const WORKER_THREADS: [usize; 2] = [1, 0];
    const THROTTLE_LAG_MS: [Option<u64>; 2] = [None, Some(300)];
    let turn = seed as usize + gateway;
    Tuning {
        group_wait_us: WAITS_US[turn % WAITS_US.len()],
        worker_threads: WORKER_THREADS[turn % WORKER_THREADS.len()],
        throttle_lag_ms: THROTTLE_LAG_MS[(turn + 1) / 3 % THROTTLE_LAG_MS.len()],
    }
}

/// Everything a run needs.
pub struct World {
    pub pg: Arc<TempPostgres>,
    pub backends: [RecordingBackend; 2],
    pub gateways: Vec<GatewayProcess>,
}

impl World {
    /// Starts `gateways` gateways, each with its [`tuning`].
    pub async fn start(gateways: usize, seed: u64) -> World {
        // Durable: the harness crashes the server, and must not lose commits it acknowledged.
        let pg = Arc::new(crate::postgres_with_timescaledb(true));
        let backends = [
            RecordingBackend::start().await.unwrap(),
            RecordingBackend::start().await.unwrap(),
        ];
        let root = crate::log_dir();
        let gateways: Vec<GatewayProcess> = (0..gateways)
            .map(|i| {
                GatewayProcess::new(
                    &root.join(format!("g{i}")),
                    &pg.url(),
                    &backends,
                    tuning(seed, i),
                )
            })
            .collect();
        // One at a time: the first migrates, the others find the schema in place.
        for gateway in &gateways {
            gateway.start(Duration::from_secs(60)).await;
        }
        World {
            pg,
            backends,
            gateways,
        }
    }

    pub async fn db(&self) -> Option<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.pg.url(), tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(connection);
        Some(client)
    }

    pub async fn stop_postgres(&self) {
        let pg = self.pg.clone();
        tokio::task::spawn_blocking(move || pg.stop_immediately())
            .await
            .unwrap()
            .expect("pg_ctl stop -m immediate");
    }

    pub async fn start_postgres(&self) {
        let pg = self.pg.clone();
        tokio::task::spawn_blocking(move || pg.start_again())
            .await
            .unwrap()
            .expect("pg_ctl start");
    }
}
