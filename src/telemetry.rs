//! Self-telemetry: the `tracing` subscriber, the Prometheus recorder, and every metric name
//! the gateway exports (names live here and nowhere else, so dashboards and alerts have one
//! place to check against).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::config::ConfigError;

/// Items (spans, metric data points, log records) accepted by a receiver. Labels: signal, transport.
pub const RECEIVER_ACCEPTED_ITEMS: &str = "otelgate_receiver_accepted_items_total";
/// Requests accepted by a receiver. Labels: signal, transport.
pub const RECEIVER_ACCEPTED_REQUESTS: &str = "otelgate_receiver_accepted_requests_total";
/// Requests refused by a receiver. Labels: signal, transport, reason.
pub const RECEIVER_REFUSED_REQUESTS: &str = "otelgate_receiver_refused_requests_total";
/// Items in requests refused after decoding (throttling, queue full, no destination for the
/// signal, shutting down). Labels: signal, transport, reason.
pub const RECEIVER_REFUSED_ITEMS: &str = "otelgate_receiver_refused_items_total";
/// Decompressed request body size in bytes. Labels: signal, transport.
pub const RECEIVER_REQUEST_BYTES: &str = "otelgate_receiver_request_bytes";
/// Counter: libraries' warning lines left out of the log, per target.
pub const LOG_SUPPRESSED_LINES: &str = "otelgate_log_suppressed_lines_total";
/// Gauge: connections open, per server (`otlp`, `admin`).
pub const RECEIVER_OPEN_CONNECTIONS: &str = "otelgate_receiver_open_connections";
/// Counter: connections the gateway asked to close or cut, per server and reason (`idle`,
/// `max_age`, `grace_expired`).
pub const RECEIVER_CLOSED_CONNECTIONS: &str = "otelgate_receiver_closed_connections_total";

/// Bytes of request data currently held in memory by the pipeline.
pub const MEMORY_BUDGET_USED_BYTES: &str = "otelgate_memory_budget_used_bytes";
/// The configured memory budget in bytes.
pub const MEMORY_BUDGET_LIMIT_BYTES: &str = "otelgate_memory_budget_limit_bytes";

/// Items delivered to an exporter's backend. Labels: exporter, signal.
pub const EXPORTER_SENT_ITEMS: &str = "otelgate_exporter_sent_items_total";
/// Items an exporter gave up on. Labels: exporter, signal, reason
/// (`non_retryable`, `retries_exhausted`, `shutdown`).
pub const EXPORTER_FAILED_ITEMS: &str = "otelgate_exporter_failed_items_total";
/// Items a backend rejected through `partial_success`. Labels: exporter, signal.
pub const EXPORTER_REJECTED_ITEMS: &str = "otelgate_exporter_rejected_items_total";
/// Items not queued for an exporter because its queue was full (policy `drop`). Labels: exporter, signal.
pub const EXPORTER_DROPPED_ITEMS: &str = "otelgate_exporter_dropped_items_total";
/// Export attempts retried. Labels: exporter, signal.
pub const EXPORTER_RETRIES: &str = "otelgate_exporter_retries_total";
/// Requests waiting in an exporter's queue. Labels: exporter.
pub const EXPORTER_QUEUE_DEPTH: &str = "otelgate_exporter_queue_depth";
/// Bytes waiting in an exporter's queue. Labels: exporter.
pub const EXPORTER_QUEUE_BYTES: &str = "otelgate_exporter_queue_bytes";
/// Items per exported batch. Labels: exporter, signal.
pub const EXPORTER_BATCH_ITEMS: &str = "otelgate_exporter_batch_items";
/// Bytes per exported batch (before compression). Labels: exporter, signal.
pub const EXPORTER_BATCH_BYTES: &str = "otelgate_exporter_batch_bytes";
/// Seconds from a batch's first attempt to its final outcome. Labels: exporter, signal, outcome.
pub const EXPORTER_LATENCY_SECONDS: &str = "otelgate_exporter_latency_seconds";

/// Label values for refusal reasons.
pub mod reason {
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const INVALID: &str = "invalid";
    pub const TOO_LARGE: &str = "too_large";
    pub const BODY_TIMEOUT: &str = "body_timeout";
    pub const UNSUPPORTED: &str = "unsupported_media_type";
    pub const NO_DESTINATION: &str = "no_destination";
    pub const MEMORY_BUDGET: &str = "memory_budget";
    pub const QUEUE_FULL: &str = "queue_full";
    pub const SHUTTING_DOWN: &str = "shutting_down";
    pub const NON_RETRYABLE: &str = "non_retryable";
    pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
    pub const SHUTDOWN: &str = "shutdown";
    pub const LOG_FULL: &str = "log_full";
    pub const DISK_FLOOR: &str = "disk_floor";
    pub const LOG_FAILED: &str = "log_failed";
    /// A failed write or sync of the durable log (`otelgate_log_refused_requests_total`).
    pub const LOG_IO: &str = "io";
    pub const LAG_LIMIT: &str = "lag_limit";
    /// A destination lags more than its `queue.throttle_lag_ms`: the request is refused
    /// (throttled) before it is validated.
    pub const THROTTLE_LAG: &str = "lag_throttle";
    pub const CORRUPT: &str = "corrupt";
}

/// Bytes of log segments on disk.
pub const LOG_BYTES: &str = "otelgate_log_bytes";
/// Records in the log (from the oldest segment to the head).
pub const LOG_RECORDS: &str = "otelgate_log_records";
/// Records appended (each one an accepted request).
pub const LOG_APPENDED_RECORDS: &str = "otelgate_log_appended_records_total";
/// Bytes appended.
pub const LOG_APPENDED_BYTES: &str = "otelgate_log_appended_bytes_total";
/// Requests in one group commit (one write and one sync).
pub const LOG_GROUP_REQUESTS: &str = "otelgate_log_group_requests";
/// Time of one group's write and sync.
pub const LOG_SYNC_SECONDS: &str = "otelgate_log_sync_seconds";
/// Requests the log refused, by reason (`log_full`, `disk_floor`, `io`).
pub const LOG_REFUSED_REQUESTS: &str = "otelgate_log_refused_requests_total";
/// Per destination: records not yet finished.
pub const LOG_LAG_RECORDS: &str = "otelgate_log_lag_records";
/// Per destination: bytes not yet finished.
pub const LOG_LAG_BYTES: &str = "otelgate_log_lag_bytes";
/// Per destination: age of the oldest record not yet finished.
pub const LOG_LAG_AGE_SECONDS: &str = "otelgate_log_lag_age_seconds";
/// Per destination: records read again after a restart.
pub const LOG_REPLAYED_RECORDS: &str = "otelgate_log_replayed_records_total";
/// Bytes of torn or corrupt log tail cut off at start-up.
pub const LOG_TRUNCATED_BYTES: &str = "otelgate_log_truncated_bytes_total";
/// Per destination and reason (`lag_limit`, `log_full`, `corrupt`): records it never got.
pub const LOG_DROPPED_RECORDS: &str = "otelgate_log_dropped_records_total";

const fn default_admin_endpoint() -> &'static str {
    "127.0.0.1:13133"
}

/// Admin endpoint and log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`. Keep it on loopback or a private
    /// network: it has no auth.
    #[serde(default = "admin_endpoint_default")]
    pub admin_endpoint: String,
    /// `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `otelgate=debug,info`. `RUST_LOG` wins when set.
    #[serde(default = "log_level_default")]
    pub log_level: String,
}

fn admin_endpoint_default() -> String {
    default_admin_endpoint().to_owned()
}

fn log_level_default() -> String {
    "info".to_owned()
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            admin_endpoint: admin_endpoint_default(),
            log_format: LogFormat::default(),
            log_level: log_level_default(),
        }
    }
}

impl TelemetryConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        crate::config::validate_listen_address("telemetry.admin_endpoint", &self.admin_endpoint)?;
        EnvFilter::try_new(&self.log_level)
            .map_err(|e| ConfigError::invalid("telemetry.log_level", e.to_string()))?;
        Ok(())
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global `tracing` subscriber. Later calls are no-ops (tests start many gateways).
pub fn init_logging(config: &TelemetryConfig) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(LibraryWarningLimit::default());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
}

/// Keeps libraries' per-connection warnings from flooding the log. h2 warns once for every
/// connection that resets streams too fast (an HTTP/2 rapid-reset attack): thousands of
/// lines a second. Warnings and errors of targets outside otelgate are logged at most
/// [`Self::PER_WINDOW`] times per call site per [`Self::WINDOW`]; the rest are counted in
/// `otelgate_log_suppressed_lines_total`. otelgate's own warnings are rate-limited where they
/// are raised ([`RateLimitedWarning`]).
#[derive(Default)]
struct LibraryWarningLimit {
    seen: std::sync::Mutex<
        std::collections::HashMap<tracing::callsite::Identifier, (std::time::Instant, u32)>,
    >,
}

impl LibraryWarningLimit {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
    const PER_WINDOW: u32 = 10;
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LibraryWarningLimit {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let meta = event.metadata();
        // Levels compare by verbosity: INFO and below pass untouched.
        if *meta.level() > tracing::Level::WARN || meta.target().starts_with("otelgate") {
            return true;
        }
        let now = std::time::Instant::now();
        let allowed = {
            let mut seen = self.seen.lock().expect("not poisoned");
            let (start, count) = seen.entry(meta.callsite()).or_insert((now, 0));
            if now - *start >= Self::WINDOW {
                (*start, *count) = (now, 0);
            }
            *count += 1;
            *count <= Self::PER_WINDOW
        };
        if !allowed {
            metrics::counter!(LOG_SUPPRESSED_LINES, "target" => meta.target().to_owned())
                .increment(1);
        }
        allowed
    }
}

/// The process-wide Prometheus recorder, installed on first use. Every gateway in a process
/// shares it (the `metrics` facade has one global recorder).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Suffix("_items".into()),
                    &[1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Suffix("_requests".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Suffix("_rows".into()),
                    &[1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Suffix("_bytes".into()),
                    &[
                        1024.0,
                        16384.0,
                        131_072.0,
                        1_048_576.0,
                        8_388_608.0,
                        67_108_864.0,
                    ],
                )
            })
            .expect("bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed by an embedding program; then our
        // handle renders nothing, which /metrics makes visible rather than hiding.
        let _ = metrics::set_global_recorder(recorder);
        describe_metrics();
        spawn_upkeep(handle.clone());
        handle
    })
}

/// How often histogram samples are folded into their buckets when nothing scrapes /metrics.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The name of the thread that runs the recorder's upkeep.
const UPKEEP_THREAD: &str = "metrics-upkeep";

/// A recorder made with `build_recorder` keeps every histogram sample until something folds
/// it into the buckets: a scrape of /metrics or `run_upkeep`. With nobody scraping, that is
/// about 8 bytes per sample for ever: under a 5-minute overload the gateway's RSS grew by
/// 84 MiB. This thread folds them every few seconds, whether or not anybody scrapes. It is
/// a thread, not a task, because the recorder outlives any one runtime.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name(UPKEEP_THREAD.into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the metrics upkeep thread: histogram samples will be kept until /metrics is scraped");
    }
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(RECEIVER_ACCEPTED_ITEMS, "Items accepted by a receiver.");
    describe_counter!(
        RECEIVER_ACCEPTED_REQUESTS,
        "Requests accepted by a receiver."
    );
    describe_counter!(RECEIVER_REFUSED_REQUESTS, "Requests refused, by reason.");
    describe_counter!(
        RECEIVER_REFUSED_ITEMS,
        "Items in refused requests, by reason."
    );
    describe_histogram!(
        RECEIVER_REQUEST_BYTES,
        Unit::Bytes,
        "Decompressed request size."
    );
    describe_gauge!(
        MEMORY_BUDGET_USED_BYTES,
        Unit::Bytes,
        "Request bytes in memory."
    );
    describe_gauge!(
        MEMORY_BUDGET_LIMIT_BYTES,
        Unit::Bytes,
        "Configured memory budget."
    );
    describe_counter!(EXPORTER_SENT_ITEMS, "Items delivered to a backend.");
    describe_counter!(
        EXPORTER_FAILED_ITEMS,
        "Items an exporter gave up on, by reason."
    );
    describe_counter!(
        EXPORTER_REJECTED_ITEMS,
        "Items a backend rejected (partial_success)."
    );
    describe_counter!(
        EXPORTER_DROPPED_ITEMS,
        "Items dropped because a queue was full."
    );
    describe_counter!(EXPORTER_RETRIES, "Export attempts retried.");
    describe_gauge!(
        EXPORTER_QUEUE_DEPTH,
        "Requests waiting in an exporter queue."
    );
    describe_gauge!(
        EXPORTER_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes waiting in an exporter queue."
    );
    describe_histogram!(EXPORTER_BATCH_ITEMS, "Items per exported batch.");
    describe_histogram!(
        EXPORTER_BATCH_BYTES,
        Unit::Bytes,
        "Bytes per exported batch."
    );
    describe_gauge!(
        LOG_BYTES,
        Unit::Bytes,
        "Bytes of durable log segments on disk."
    );
    describe_gauge!(LOG_RECORDS, "Records in the durable log.");
    describe_counter!(
        LOG_APPENDED_RECORDS,
        "Requests appended to the durable log."
    );
    describe_counter!(
        LOG_APPENDED_BYTES,
        Unit::Bytes,
        "Bytes appended to the durable log."
    );
    describe_histogram!(LOG_GROUP_REQUESTS, "Requests per group commit (one sync).");
    describe_histogram!(
        LOG_SYNC_SECONDS,
        Unit::Seconds,
        "Time of one group's write and sync."
    );
    describe_counter!(
        LOG_REFUSED_REQUESTS,
        "Requests the durable log refused, by reason."
    );
    describe_gauge!(LOG_LAG_RECORDS, "Records a destination has not finished.");
    describe_gauge!(
        LOG_LAG_BYTES,
        Unit::Bytes,
        "Bytes a destination has not finished."
    );
    describe_gauge!(
        LOG_LAG_AGE_SECONDS,
        Unit::Seconds,
        "Age of a destination's oldest unfinished record."
    );
    describe_counter!(LOG_REPLAYED_RECORDS, "Records read again after a restart.");
    describe_counter!(
        LOG_TRUNCATED_BYTES,
        Unit::Bytes,
        "Torn or corrupt log bytes cut off at start-up."
    );
    describe_counter!(
        LOG_DROPPED_RECORDS,
        "Log records a destination never got, by reason."
    );
    describe_gauge!(RECEIVER_OPEN_CONNECTIONS, "Client connections open.");
    describe_counter!(
        LOG_SUPPRESSED_LINES,
        "Libraries' warning lines left out of the log (at most 10 per call site per 10 s)."
    );
    describe_counter!(
        RECEIVER_CLOSED_CONNECTIONS,
        "Connections asked to close (idle, max_age) or cut after the grace period."
    );
    describe_counter!(SINK_ROWS, "Rows committed by the TimescaleDB sink.");
    describe_counter!(
        SINK_REJECTED_ROWS,
        "Records or rows kept in otelgate_rejected_rows."
    );
    describe_counter!(SINK_FAILED_ROWS, "Rows the TimescaleDB sink gave up on.");
    describe_counter!(
        SINK_RETRIES,
        "Batch writes retried after a transient failure."
    );
    describe_counter!(
        SINK_LEDGER_SKIPS,
        "Retried batches found already committed."
    );
    describe_counter!(
        SINK_REPLAY_SKIPPED_ROWS,
        "Rows of replayed log records already committed before a restart."
    );
    describe_counter!(
        SINK_NUL_REPLACED,
        "U+0000 characters written as U+FFFD in text and JSON cells."
    );
    describe_histogram!(SINK_BATCH_ROWS, "Rows per COPY batch.");
    describe_histogram!(
        SINK_COPY_SECONDS,
        Unit::Seconds,
        "Time of one committed batch write."
    );
    describe_histogram!(
        SINK_RECEIVE_TO_COMMIT_SECONDS,
        Unit::Seconds,
        "From accepting the oldest request of a batch to its commit."
    );
    describe_histogram!(
        EXPORTER_LATENCY_SECONDS,
        Unit::Seconds,
        "Time from a batch's first attempt to its outcome."
    );
}

/// Rows committed by the TimescaleDB sink. Labels: table.
pub const SINK_ROWS: &str = "otelgate_sink_rows_total";
/// Records or rows kept in `otelgate_rejected_rows` instead. Labels: table, reason
/// (`conversion`: the record could not be converted; `database`: PostgreSQL refused the row).
pub const SINK_REJECTED_ROWS: &str = "otelgate_sink_rejected_rows_total";
/// Rows given up on. Labels: table, reason (`retries_exhausted`, `permanent`, `shutdown`).
pub const SINK_FAILED_ROWS: &str = "otelgate_sink_failed_rows_total";
/// Batch writes retried after a transient failure. Labels: table.
pub const SINK_RETRIES: &str = "otelgate_sink_retries_total";
/// Retried batches found already committed in the ledger (so not written twice). Labels: table.
pub const SINK_LEDGER_SKIPS: &str = "otelgate_sink_ledger_skips_total";
/// Rows of replayed log records found already committed in the ledger, not written again.
pub const SINK_REPLAY_SKIPPED_ROWS: &str = "otelgate_sink_replay_skipped_rows_total";
/// U+0000 characters written as U+FFFD in text and JSON cells (PostgreSQL cannot store
/// them), counted as rows are built. Labels: table (the one written, `otelgate_rejected_rows`
/// for rejected records).
pub const SINK_NUL_REPLACED: &str = "otelgate_sink_nul_replaced_total";
/// Rows per COPY batch. Labels: table.
pub const SINK_BATCH_ROWS: &str = "otelgate_sink_batch_rows";
/// Seconds of one committed batch write: getting a connection, BEGIN, ledger row, COPY,
/// COMMIT. Labels: table.
pub const SINK_COPY_SECONDS: &str = "otelgate_sink_copy_seconds";
/// Seconds from the receiver accepting the oldest request of a batch to its commit. Labels: table.
pub const SINK_RECEIVE_TO_COMMIT_SECONDS: &str = "otelgate_sink_receive_to_commit_seconds";

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the events that reach it.
    #[derive(Clone, Default)]
    struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn library_warnings_are_rate_limited_per_call_site_and_ours_are_not() {
        use tracing_subscriber::layer::SubscriberExt;
        let count = Count::default();
        let subscriber = tracing_subscriber::registry()
            .with(LibraryWarningLimit::default())
            .with(count.clone());
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..50 {
                tracing::warn!(target: "h2::proto", "remotely-reset streams reached limit");
                tracing::error!(target: "hyper::server", "connection error");
                tracing::info!(target: "h2::proto", "an info line");
                tracing::warn!("otelgate's own warning");
            }
        });
        let seen = count.0.load(std::sync::atomic::Ordering::Relaxed);
        // 10 of each library call site, every info line, every line of ours.
        assert_eq!(seen, 10 + 10 + 50 + 50);
    }

    /// Histogram samples are only bounded if the upkeep thread runs: without it, a gateway
    /// nobody scrapes grows by every sample it records.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_recorder_comes_with_its_upkeep_thread() {
        let threads = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .filter(|name| name.trim_end() == UPKEEP_THREAD)
                .count()
        };
        prometheus();
        prometheus();
        // A new thread names itself once it runs: give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while threads() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(threads(), 1, "one upkeep thread per process");
    }
}

/// A warning that repeats (per connection, per record) logged at most once per interval, with
/// how many were left out since the last one.
#[derive(Debug)]
pub struct RateLimitedWarning {
    message: &'static str,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimitedWarning {
    const INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

    pub fn new(message: &'static str) -> Self {
        RateLimitedWarning {
            message,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(left out since the last one)` when this occurrence should be logged.
    pub fn due(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|last| now - last < Self::INTERVAL) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Logs `error` with the message, unless one was logged less than an interval ago.
    pub fn warn(&mut self, error: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.due() {
            tracing::warn!(%error, similar_since_last_warning = suppressed, "{}", self.message);
        }
    }
}
