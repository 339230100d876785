//! Wiring and staged shutdown. Start-up builds the pipeline from the back (exporters and
//! their queues first, then the receivers that feed them) and binds every listener before
//! reporting ready. Shutdown runs the other way: receivers stop accepting and finish in-flight
//! requests, which drops the last queue senders; each exporter then drains its queue and
//! stops; whatever is left at the deadline is reported as undelivered.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;
use crate::export::otlp::{ExportReport, OtlpClient, OtlpExporter};
use crate::pipeline::log::Log;
use crate::pipeline::{queue, Dispatcher, Fanout, MemoryBudget};
use crate::receiver::{self, Ingest};
use crate::sink::timescale::{
    self as timescale, Committed, Extractor, LogLedger, SchemaInfo, SinkReport, TimescaleSink,
};
use crate::{net, telemetry, Config};

/// A running gateway.
pub struct Gateway {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown_timeout: std::time::Duration,
    admin: Arc<AdminState>,
    /// Fired first: the gRPC and HTTP servers stop accepting.
    receivers_stop: CancellationToken,
    /// The receivers' server tasks. They own the last senders of every exporter queue (inside
    /// `Ingest`), so when they have finished, the queues close.
    receivers: JoinSet<()>,
    /// Fired at the shutdown deadline: exporters abandon what they still hold.
    exporters_stop: CancellationToken,
    exporters: JoinSet<ExportReport>,
    /// The TimescaleDB sink's worker, stopped with the exporters.
    sink: Option<JoinHandle<SinkReport>>,
    /// The durable log, when on, with its destinations' readers and its maintenance task.
    log: Option<Arc<Log>>,
    readers: JoinSet<()>,
    readers_stop: CancellationToken,
    maintenance_stop: CancellationToken,
    maintenance: Option<JoinHandle<()>>,
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
        let exporters_stop = CancellationToken::new();
        let mut exporters = JoinSet::new();
        let mut fanout = Fanout::default();
        let mut queues = Vec::new();
        let log = if config.log.enabled {
            Some(Arc::new(Log::open(&config.log)?))
        } else {
            tracing::warn!("The durable log is off (log.enabled = false): requests not yet delivered are lost if the process crashes or is killed.");
            None
        };
        // With the log, each destination may hold this many bytes of requests it has read
        // and not finished; the log keeps the rest on disk.
        let destinations = config.exporters.len() + usize::from(config.timescale.is_some());
        let window = (config.pipeline.memory_budget_bytes / 2 / destinations.max(1) as u64)
            .max(config.receiver.max_request_bytes as u64);
        let readers_stop = CancellationToken::new();
        let mut readers = JoinSet::new();
        // Signals some destination takes; with the log, others are refused before appending.
        let mut taken = Vec::new();
        for (name, exporter) in &config.exporters {
            let client = OtlpClient::new(exporter)
                .with_context(|| format!("exporter `{name}` cannot be set up"))?;
            let (tx, rx) = queue(name, exporter.queue.capacity);
            queues.push(tx.stats());
            taken.extend_from_slice(&exporter.signals);
            let mut exporter = exporter.clone();
            match &log {
                Some(log) => {
                    // The log keeps what is not delivered: retry until delivered or stopped.
                    exporter.retry.max_elapsed_ms = u64::MAX;
                    let reader = log.reader(
                        name,
                        &exporter.signals,
                        tx,
                        exporter.queue.max_lag_bytes,
                        window,
                    )?;
                    readers.spawn(reader.run(readers_stop.clone()));
                }
                None => fanout.add(name, &exporter.signals, tx, exporter.queue.clone()),
            }
            let mut worker = OtlpExporter::new(name, &exporter, client, rx);
            if log.is_some() {
                worker = worker.durable();
            }
            exporters.spawn(worker.run(exporters_stop.clone()));
        }
        let mut sink = None;
        let mut schema = None;
        if let Some(config) = &config.timescale {
            let extractor = Arc::new(Extractor::new(config).map_err(anyhow::Error::msg)?);
            let pool = timescale::sink::pool(config)?;
            let info = prepare_database(&pool, config, &extractor).await?;
            if let Some(warning) = info.warning() {
                tracing::warn!("{warning}.");
            }
            let sink_signals: Vec<_> = crate::Signal::ALL
                .into_iter()
                .filter(|s| extractor.takes(*s))
                .collect();
            let (tx, rx) = queue("timescale", config.queue.capacity);
            queues.push(tx.stats());
            taken.extend_from_slice(&sink_signals);
            let ledger = match &log {
                Some(log) => {
                    let reader = log.reader(
                        "timescale",
                        &sink_signals,
                        tx,
                        config.queue.max_lag_bytes,
                        window,
                    )?;
                    let replay_until = log.opened_at().seq;
                    let committed = if reader.start().seq < replay_until {
                        let current = timescale::ledger_keys(extractor.mappings());
                        let committed =
                            Committed::load(&pool, log.id(), reader.start().seq, &current)
                                .await
                                .context("cannot read the ledger to resume from the log")?;
                        tracing::info!(
                            ledger_rows = committed.len(),
                            "Rows committed before the restart will be skipped."
                        );
                        committed
                    } else {
                        Committed::default()
                    };
                    let progress = reader.tracker();
                    readers.spawn(reader.run(readers_stop.clone()));
                    Some(LogLedger {
                        log_id: log.id(),
                        replay_until,
                        committed,
                        progress,
                    })
                }
                None => {
                    fanout.add("timescale", &sink_signals, tx, config.queue.clone());
                    None
                }
            };
            let worker = TimescaleSink::new(config, extractor, pool, rx, ledger);
            sink = Some(tokio::spawn(worker.run(exporters_stop.clone())));
            schema = Some(info);
        }
        let (dispatcher, maintenance_stop, maintenance) = match &log {
            Some(log) => {
                log.forget_other_destinations();
                let appender = log.take_appender().expect("taken once");
                let stop = CancellationToken::new();
                let task = tokio::spawn(log.clone().maintenance(stop.clone()));
                (
                    Dispatcher::Durable {
                        log: appender,
                        signals: crate::Signal::mask(&taken),
                    },
                    stop,
                    Some(task),
                )
            }
            None => (Dispatcher::Memory(fanout), CancellationToken::new(), None),
        };
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
        let mut receivers = JoinSet::new();
        // One set of connection slots for both OTLP listeners.
        let connections = &config.receiver.connections;
        let limits = net::ConnectionLimits::new(
            "otlp",
            connections.clone(),
            net::connection_budget(connections.max_connections),
        );
        receivers.spawn(net::serve(
            grpc_listener,
            tls.clone(),
            ingest.limit_bodies(receiver::grpc::router(ingest.clone())),
            receivers_stop.clone(),
            limits.clone(),
        ));
        receivers.spawn(net::serve(
            http_listener,
            tls,
            ingest.limit_bodies(receiver::http::router(ingest.clone())),
            receivers_stop.clone(),
            limits,
        ));

        let admin = Arc::new(AdminState {
            ready: false.into(),
            queues,
            budget,
            database: schema,
            log: log.clone(),
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
            exporters_stop,
            exporters,
            sink,
            log,
            readers,
            readers_stop,
            maintenance_stop,
            maintenance,
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
        // With the log: every accepted request is in it. The writer finishes its last group
        // once the receivers are gone; readers then read to the end and close the queues.
        if let Some(log) = &self.log {
            if tokio::time::timeout_at(deadline, log.join_writer())
                .await
                .is_err()
            {
                tracing::warn!("The durable log's writer did not finish before the deadline.");
            }
        }
        let mut reports = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.exporters.join_next()).await {
                Ok(Some(Ok(report))) => reports.push(report),
                Ok(Some(Err(error))) => tracing::error!(%error, "An exporter task failed."),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("Shutdown deadline reached; stopping exporters.");
                    self.stop_destinations();
                    while let Some(joined) = self.exporters.join_next().await {
                        match joined {
                            Ok(report) => reports.push(report),
                            Err(error) => tracing::error!(%error, "An exporter task failed."),
                        }
                    }
                    break;
                }
            }
        }
        let sink = match self.sink.take() {
            None => None,
            Some(mut handle) => {
                let joined = match tokio::time::timeout_at(deadline, &mut handle).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        self.stop_destinations();
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
        };
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
        self.stop_destinations();
        while self.readers.join_next().await.is_some() {}
        let mut kept_in_log = Vec::new();
        if let Some(log) = &self.log {
            self.maintenance_stop.cancel();
            if let Some(task) = self.maintenance.take() {
                let _ = task.await;
            }
            let final_log = log.clone();
            let _ = tokio::task::spawn_blocking(move || final_log.maintain()).await;
            for (destination, records) in log.backlog() {
                if records > 0 {
                    tracing::info!(
                        %destination,
                        records,
                        "Kept in the durable log; delivered after the next start."
                    );
                }
                kept_in_log.push((destination, records));
            }
        }
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        for report in &reports {
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
            exporters: reports,
            sink,
            durable: self.log.is_some(),
            kept_in_log,
            log: self.log.as_ref().map(|log| log.stats()),
        }
    }

    /// Forced stop of the destinations: first freeze the log's cursors (what is abandoned
    /// now stays in the log), then stop readers, exporters and the sink.
    fn stop_destinations(&self) {
        if let Some(log) = &self.log {
            log.freeze();
        }
        self.readers_stop.cancel();
        self.exporters_stop.cancel();
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
    pub log: Option<crate::pipeline::log::LogStats>,
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

/// Migrates the database (unless disabled), or only finds out whether TimescaleDB is there.
async fn prepare_database(
    pool: &deadpool_postgres::Pool,
    config: &crate::sink::timescale::TimescaleSinkConfig,
    extractor: &Extractor,
) -> anyhow::Result<SchemaInfo> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| timescale::connect_error(config, &e))?;
    if config.migrate_on_start {
        Ok(timescale::migrate(&mut client, config, extractor.mappings()).await?)
    } else {
        let version = client
            .query_typed_opt(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                &[],
            )
            .await?
            .map(|row| row.get(0));
        Ok(SchemaInfo {
            timescaledb: version,
            applied: Vec::new(),
        })
    }
}
