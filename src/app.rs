//! Wiring and staged shutdown. Start-up builds the pipeline from the back: the durable log (on
//! by default) and each destination with its queue, fed by a reader of the log or, with the
//! log off, by the fan-out; then the receivers, binding every listener before reporting ready.
//! Shutdown runs the other way: receivers stop accepting and finish in-flight requests; the
//! log's writer syncs and stops; each destination drains what it holds and stops; whatever is
//! left at the deadline is reported as undelivered (with the log on, it stays in the log for
//! the next start).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;
use crate::export::otlp::{ExportReport, OtlpClient, OtlpExporter, OtlpExporterConfig};
use crate::pipeline::log::{Log, LogReader, LogStats};
use crate::pipeline::{
    queue, Dispatcher, Fanout, MemoryBudget, QueueConfig, QueueReceiver, QueueStats,
};
use crate::receiver::{self, Ingest};
use crate::sink::timescale::{
    self as timescale, Extractor, LogLedger, SchemaInfo, SinkReport, TimescaleSink,
    TimescaleSinkConfig,
};
use crate::{net, telemetry, Config, Signal};

/// A running gateway.
pub struct Gateway {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown_timeout: std::time::Duration,
    admin: Arc<AdminState>,
    /// Fired first: the gRPC and HTTP servers stop accepting.
    receivers_stop: CancellationToken,
    /// The receivers' server tasks. They own the last senders of every destination queue
    /// (inside `Ingest`), so when they have finished, the queues close.
    receivers: JoinSet<()>,
    destinations: Destinations,
    /// The durable log, when on, with its maintenance task.
    log: Option<DurableLog>,
    admin_stop: CancellationToken,
    admin_task: JoinHandle<()>,
}

/// Connections the kernel holds for a listener before the gateway accepts them (bursts of
/// clients connecting at once; at the connection limit, clients waiting for a slot).
const LISTEN_BACKLOG: u32 = 1024;

async fn bind(address: &str, key: &str) -> anyhow::Result<TcpListener> {
    let context = || format!("cannot listen on {address} ({key})");
    let addr = tokio::net::lookup_host(address)
        .await
        .with_context(context)?
        .next()
        .with_context(context)?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .with_context(context)?;
    socket.set_reuseaddr(true).with_context(context)?;
    socket.bind(addr).with_context(context)?;
    socket.listen(LISTEN_BACKLOG).with_context(context)
}

impl Gateway {
    /// Starts every component; returns once all listeners are bound and the gateway is ready.
    pub async fn start(config: Config) -> anyhow::Result<Gateway> {
        telemetry::prometheus();
        let budget = MemoryBudget::new(config.pipeline.memory_budget_bytes);
        let log = open_log(&config)?;
        let mut destinations = Destinations::new(&config, log.clone());
        for (name, exporter) in &config.exporters {
            destinations.start_exporter(name, exporter)?;
        }
        let database = match &config.timescale {
            Some(sink) => Some(destinations.start_sink(sink).await?),
            None => None,
        };
        let dispatcher = destinations.dispatcher();
        let durable_log = log.clone().map(DurableLog::start_maintenance);
        let ingest = Ingest::new(
            &config.receiver,
            dispatcher,
            budget.clone(),
            config.pipeline.retry_after(),
        );
        let tls = match &config.receiver.tls {
            Some(tls) => Some(net::tls_acceptor(&tls.cert_file, &tls.key_file)?),
            None => None,
        };

        let grpc_listener = bind(&config.receiver.grpc_endpoint, "receiver.grpc_endpoint").await?;
        let http_listener = bind(&config.receiver.http_endpoint, "receiver.http_endpoint").await?;
        let admin_listener =
            bind(&config.telemetry.admin_endpoint, "telemetry.admin_endpoint").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let receivers_stop = CancellationToken::new();
        let receivers = serve_otlp(
            &config,
            &ingest,
            [grpc_listener, http_listener],
            tls,
            &receivers_stop,
        );
        let admin = Arc::new(AdminState {
            ready: false.into(),
            queues: std::mem::take(&mut destinations.queues),
            budget,
            database,
            log,
        });
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(net::serve(
            admin_listener,
            None,
            crate::admin::router(admin.clone()),
            admin_stop.clone(),
            net::ConnectionLimits::new("admin", net::ConnectionConfig::admin(), 64),
        ));
        admin.ready.store(true, Ordering::Relaxed);
        tracing::info!(
            grpc = %grpc_addr,
            http = %http_addr,
            admin = %admin_addr,
            exporters = config.exporters.len(),
            worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            "otelgate is ready."
        );
        Ok(Gateway {
            grpc_addr,
            http_addr,
            admin_addr,
            shutdown_timeout: config.pipeline.shutdown_timeout(),
            admin,
            receivers_stop,
            receivers,
            destinations,
            log: durable_log,
            admin_stop,
            admin_task,
        })
    }

    /// The bound OTLP/gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound OTLP/HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Stops in stages (see the module docs) within the configured shutdown timeout and
    /// returns what each destination did.
    pub async fn shutdown(mut self) -> ShutdownReport {
        let deadline = Instant::now() + self.shutdown_timeout;
        self.admin.ready.store(false, Ordering::Relaxed);
        self.stop_receivers(deadline).await;
        // With the log: every accepted request is in it. The writer finishes its last group
        // once the receivers are gone; readers then read to the end and close the queues.
        if let Some(log) = &self.log {
            log.join_writer(deadline).await;
        }
        let (mut exporters, sink) = self.destinations.drain(deadline).await;
        let (kept_in_log, log) = match self.log {
            Some(log) => {
                let (kept_in_log, stats) = log.close().await;
                (kept_in_log, Some(stats))
            }
            None => (Vec::new(), None),
        };
        exporters.sort_by(|a, b| a.name.cmp(&b.name));
        for report in &exporters {
            tracing::info!(
                exporter = %report.name,
                delivered = report.delivered,
                failed = report.failed,
                undelivered = report.undelivered,
                "Exporter stopped."
            );
        }
        self.admin_stop.cancel();
        let _ = self.admin_task.await;
        ShutdownReport {
            exporters,
            sink,
            durable: log.is_some(),
            kept_in_log,
            log,
        }
    }

    /// Stops the receivers accepting and waits until `deadline` for their requests to
    /// finish; aborts what is left.
    async fn stop_receivers(&mut self, deadline: Instant) {
        self.receivers_stop.cancel();
        loop {
            match tokio::time::timeout_at(deadline, self.receivers.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("Receivers did not finish their requests before the deadline.");
                    self.receivers.abort_all();
                    break;
                }
            }
        }
    }
}

/// Opens the durable log when it is on.
fn open_log(config: &Config) -> anyhow::Result<Option<Arc<Log>>> {
    if config.log.enabled {
        return Ok(Some(Arc::new(Log::open(&config.log)?)));
    }
    tracing::warn!("The durable log is off (log.enabled = false): requests not yet delivered are lost if the process crashes or is killed.");
    Ok(None)
}

/// Serves OTLP/gRPC and OTLP/HTTP on their `listeners` (in that order) until `stop` fires,
/// with one set of connection slots for both.
fn serve_otlp(
    config: &Config,
    ingest: &Arc<Ingest>,
    listeners: [TcpListener; 2],
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: &CancellationToken,
) -> JoinSet<()> {
    let connections = &config.receiver.connections;
    let limits = net::ConnectionLimits::new(
        "otlp",
        connections.clone(),
        net::connection_budget(connections.max_connections),
    );
    let [grpc_listener, http_listener] = listeners;
    let mut receivers = JoinSet::new();
    receivers.spawn(net::serve(
        grpc_listener,
        tls.clone(),
        ingest.limit_bodies(receiver::grpc::router(ingest.clone())),
        stop.clone(),
        limits.clone(),
    ));
    receivers.spawn(net::serve(
        http_listener,
        tls,
        ingest.limit_bodies(receiver::http::router(ingest.clone())),
        stop.clone(),
        limits,
    ));
    receivers
}

/// Every destination's worker and the durable log's readers that feed them, started one
/// destination at a time and stopped together.
struct Destinations {
    log: Option<Arc<Log>>,
    /// With the log, bytes of requests each destination may hold read and not finished; the
    /// log keeps the rest on disk.
    window: u64,
    /// Without the log: every destination's queue sender, handed to the receivers.
    fanout: Fanout,
    /// Signals some destination takes; with the log, others are refused before appending.
    taken: Vec<Signal>,
    /// Every destination's queue, for `/readyz`.
    queues: Vec<Arc<QueueStats>>,
    readers: JoinSet<()>,
    readers_stop: CancellationToken,
    /// Fired at the shutdown deadline: exporters and the sink abandon what they still hold.
    workers_stop: CancellationToken,
    exporters: JoinSet<ExportReport>,
    /// The TimescaleDB sink's worker, stopped with the exporters.
    sink: Option<JoinHandle<SinkReport>>,
}

impl Destinations {
    fn new(config: &Config, log: Option<Arc<Log>>) -> Self {
        let count = config.exporters.len() + usize::from(config.timescale.is_some());
        let window = (config.pipeline.memory_budget_bytes / 2 / count.max(1) as u64)
            .max(config.receiver.max_request_bytes as u64);
        Destinations {
            log,
            window,
            fanout: Fanout::default(),
            taken: Vec::new(),
            queues: Vec::new(),
            readers: JoinSet::new(),
            readers_stop: CancellationToken::new(),
            workers_stop: CancellationToken::new(),
            exporters: JoinSet::new(),
            sink: None,
        }
    }

    /// Creates destination `name`'s queue and feeds it: from the fan-out without the log;
    /// with it, from the returned reader, to be started once the destination is ready.
    fn open_queue(
        &mut self,
        name: &str,
        signals: &[Signal],
        config: &QueueConfig,
    ) -> anyhow::Result<(QueueReceiver, Option<LogReader>)> {
        let (tx, rx) = queue(name, config.capacity);
        self.queues.push(tx.stats());
        self.taken.extend_from_slice(signals);
        let reader = match &self.log {
            Some(log) => Some(log.reader(name, signals, tx, config.lag_limits(), self.window)?),
            None => {
                self.fanout.add(name, signals, tx, config.clone());
                None
            }
        };
        Ok((rx, reader))
    }

    fn start_reader(&mut self, reader: LogReader) {
        self.readers.spawn(reader.run(self.readers_stop.clone()));
    }

    /// Starts the OTLP exporter `name`.
    fn start_exporter(&mut self, name: &str, config: &OtlpExporterConfig) -> anyhow::Result<()> {
        let client = OtlpClient::new(config)
            .with_context(|| format!("exporter `{name}` cannot be set up"))?;
        let (queue, reader) = self.open_queue(name, &config.signals, &config.queue)?;
        let durable = reader.is_some();
        if let Some(reader) = reader {
            self.start_reader(reader);
        }
        let exporter = OtlpExporter::new(name, config, client, queue, durable);
        self.exporters
            .spawn(exporter.run(self.workers_stop.clone()));
        Ok(())
    }

    /// Prepares the database and starts the TimescaleDB sink; returns what it found in the
    /// database.
    async fn start_sink(&mut self, config: &TimescaleSinkConfig) -> anyhow::Result<SchemaInfo> {
        let extractor = Arc::new(Extractor::new(config).map_err(anyhow::Error::msg)?);
        let pool = timescale::sink::pool(config)?;
        let schema = timescale::prepare_database(&pool, config, extractor.mappings()).await?;
        if let Some(warning) = schema.warning() {
            tracing::warn!("{warning}.");
        }
        let signals: Vec<_> = Signal::ALL
            .into_iter()
            .filter(|s| extractor.takes(*s))
            .collect();
        let (queue, reader) = self.open_queue(TimescaleSink::NAME, &signals, &config.queue)?;
        let ledger = match (&self.log, reader) {
            (Some(log), Some(reader)) => {
                let ledger = LogLedger::resume(&pool, log, &reader, extractor.mappings())
                    .await
                    .context("cannot read the ledger to resume from the log")?;
                self.start_reader(reader);
                Some(ledger)
            }
            _ => None,
        };
        let sink = TimescaleSink::new(config, extractor, pool, queue, ledger);
        self.sink = Some(tokio::spawn(sink.run(self.workers_stop.clone())));
        Ok(schema)
    }

    /// Where accepted requests go once every destination is started: into the durable log,
    /// or straight to the destinations' queues.
    fn dispatcher(&mut self) -> Dispatcher {
        match &self.log {
            Some(log) => {
                log.forget_other_destinations();
                Dispatcher::Durable {
                    log: log.take_appender().expect("taken once"),
                    signals: Signal::mask(&self.taken),
                }
            }
            None => Dispatcher::Memory(std::mem::take(&mut self.fanout)),
        }
    }

    /// Waits until `deadline` for the exporters, then the sink, to drain their queues and
    /// stop (by force past it); then stops the readers. Returns their reports.
    async fn drain(&mut self, deadline: Instant) -> (Vec<ExportReport>, Option<SinkReport>) {
        let exporters = self.join_exporters(deadline).await;
        let sink = self.join_sink(deadline).await;
        if let Some(report) = &sink {
            tracing::info!(
                written = report.rows_written,
                rejected = report.rows_rejected,
                failed = report.rows_failed,
                undelivered_rows = report.rows_undelivered,
                undelivered_requests = report.requests_undelivered,
                "TimescaleDB sink stopped."
            );
        }
        self.force_stop();
        while self.readers.join_next().await.is_some() {}
        (exporters, sink)
    }

    async fn join_exporters(&mut self, deadline: Instant) -> Vec<ExportReport> {
        let mut reports = Vec::new();
        let mut collect = |joined: Result<ExportReport, tokio::task::JoinError>| match joined {
            Ok(report) => reports.push(report),
            Err(error) => tracing::error!(%error, "An exporter task failed."),
        };
        loop {
            match tokio::time::timeout_at(deadline, self.exporters.join_next()).await {
                Ok(Some(joined)) => collect(joined),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("Shutdown deadline reached; stopping exporters.");
                    self.force_stop();
                    while let Some(joined) = self.exporters.join_next().await {
                        collect(joined);
                    }
                    break;
                }
            }
        }
        reports
    }

    async fn join_sink(&mut self, deadline: Instant) -> Option<SinkReport> {
        let mut handle = self.sink.take()?;
        let joined = match tokio::time::timeout_at(deadline, &mut handle).await {
            Ok(joined) => joined,
            Err(_) => {
                self.force_stop();
                handle.await
            }
        };
        match joined {
            Ok(report) => Some(report),
            Err(error) => {
                tracing::error!(%error, "The TimescaleDB sink task failed.");
                None
            }
        }
    }

    /// Forced stop: first freeze the log's cursors (what is abandoned now stays in the log),
    /// then stop readers, exporters and the sink.
    fn force_stop(&self) {
        if let Some(log) = &self.log {
            log.freeze();
        }
        self.readers_stop.cancel();
        self.workers_stop.cancel();
    }
}

/// The durable log and its maintenance task.
struct DurableLog {
    log: Arc<Log>,
    maintenance_stop: CancellationToken,
    maintenance: JoinHandle<()>,
}

impl DurableLog {
    fn start_maintenance(log: Arc<Log>) -> Self {
        let maintenance_stop = CancellationToken::new();
        let maintenance = tokio::spawn(log.clone().maintenance(maintenance_stop.clone()));
        DurableLog {
            log,
            maintenance_stop,
            maintenance,
        }
    }

    /// Waits until `deadline` for the writer to finish its last group.
    async fn join_writer(&self, deadline: Instant) {
        if tokio::time::timeout_at(deadline, self.log.join_writer())
            .await
            .is_err()
        {
            tracing::warn!("The durable log's writer did not finish before the deadline.");
        }
    }

    /// Once the destinations have stopped: runs maintenance a last time, then returns per
    /// destination the records kept for the next start, and what the log appended.
    async fn close(self) -> (Vec<(String, u64)>, LogStats) {
        self.maintenance_stop.cancel();
        let _ = self.maintenance.await;
        let final_log = self.log.clone();
        let _ = tokio::task::spawn_blocking(move || final_log.maintain()).await;
        let mut kept_in_log = Vec::new();
        for (destination, records) in self.log.backlog() {
            if records > 0 {
                tracing::info!(
                    %destination,
                    records,
                    "Kept in the durable log; delivered after the next start."
                );
            }
            kept_in_log.push((destination, records));
        }
        (kept_in_log, self.log.stats())
    }
}

/// What each destination did, returned by [`Gateway::shutdown`].
#[derive(Debug, Clone, Default)]
pub struct ShutdownReport {
    pub exporters: Vec<ExportReport>,
    pub sink: Option<SinkReport>,
    /// The durable log was on: what was not delivered is kept in it.
    pub durable: bool,
    /// Per destination, log records not yet finished (delivered on the next start).
    pub kept_in_log: Vec<(String, u64)>,
    /// What the durable log appended, when on.
    pub log: Option<LogStats>,
}

impl ShutdownReport {
    /// Items, rows and requests lost: not delivered before the deadline and not kept in
    /// the durable log.
    pub fn undelivered(&self) -> u64 {
        if self.durable {
            return 0;
        }
        self.exporters.iter().map(|r| r.undelivered).sum::<u64>()
            + self
                .sink
                .as_ref()
                .map_or(0, |s| s.rows_undelivered + s.requests_undelivered)
    }
}
