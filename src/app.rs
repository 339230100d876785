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
use crate::pipeline::{queue, Fanout, MemoryBudget};
use crate::receiver::{self, Ingest};
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
    admin_stop: CancellationToken,
    admin_task: JoinHandle<()>,
}

async fn bind(address: &str, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} ({key})"))
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
        for (name, exporter) in &config.exporters {
            let client = OtlpClient::new(exporter)
                .with_context(|| format!("exporter `{name}` cannot be set up"))?;
            let (tx, rx) = queue(name, exporter.queue.capacity);
            queues.push(tx.stats());
            fanout.add(name, &exporter.signals, tx, exporter.queue.clone());
            let worker = OtlpExporter::new(name, exporter, client, rx);
            exporters.spawn(worker.run(exporters_stop.clone()));
        }
        let ingest = Ingest::new(
            &config.receiver,
            fanout,
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
        receivers.spawn(net::serve(
            grpc_listener,
            tls.clone(),
            receiver::grpc::router(ingest.clone()),
            receivers_stop.clone(),
        ));
        receivers.spawn(net::serve(
            http_listener,
            tls,
            receiver::http::router(ingest),
            receivers_stop.clone(),
        ));

        let admin = Arc::new(AdminState {
            ready: false.into(),
            queues,
            budget,
        });
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(net::serve(
            admin_listener,
            None,
            crate::admin::router(admin.clone()),
            admin_stop.clone(),
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
    /// returns each exporter's report.
    pub async fn shutdown(mut self) -> Vec<ExportReport> {
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
        let mut reports = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.exporters.join_next()).await {
                Ok(Some(Ok(report))) => reports.push(report),
                Ok(Some(Err(error))) => tracing::error!(%error, "An exporter task failed."),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("Shutdown deadline reached; stopping exporters.");
                    self.exporters_stop.cancel();
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
        reports
    }
}
