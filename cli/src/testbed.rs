//! `otelgate testbed`: the pieces benchmark scripts start as separate processes, so each can
//! be measured on its own: a throwaway PostgreSQL, a counting OTLP backend, and the raw
//! binary COPY ceiling (the same rows the gateway writes, written straight into PostgreSQL).

use std::time::{Duration, Instant};

use bytes::Bytes;
use otelgate::sink::timescale::{migrate, Extractor, Rows, TimescaleSinkConfig};
use otelgate::Signal;
use serde::Serialize;

use crate::demo::backend::RecordingBackend;
use crate::demo::generator::{now_nanos, TelemetryGenerator, TraceShape};
use crate::demo::postgres::{ServerOptions, TempPostgres};
use crate::load::template::TraceTemplates;

/// What to start.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TestbedCommand {
    /// Start a throwaway PostgreSQL (TimescaleDB when installed), migrate it, print its URL and
    /// keep it until Ctrl-C or SIGTERM.
    Postgres {
        /// Turn fsync off (faster, not durable).
        #[arg(long)]
        no_fsync: bool,
        /// A server setting, `name=value` (passed as `-c`; repeat for more), such as
        /// `max_wal_size=16GB`.
        #[arg(long = "setting", value_name = "NAME=VALUE")]
        settings: Vec<String>,
    },
    /// Run a counting OTLP backend (gRPC and HTTP on one port; `GET /counts` for totals)
    /// until Ctrl-C or SIGTERM.
    Backend {
        #[arg(long, default_value = "127.0.0.1:14317")]
        listen: String,
    },
    /// Write the rows the gateway would write for generated frames straight into PostgreSQL
    /// with binary COPY (the ceiling the gateway is compared with) and print rows/s as JSON.
    Copy {
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, short = 'c', default_value_t = 2)]
        connections: usize,
        /// Frames per generated request (as `otelgate load --batch`).
        #[arg(long, short = 'b', default_value_t = 100)]
        batch: usize,
        /// The frames' shape (as `otelgate load --shape`).
        #[arg(long, value_enum, default_value_t = TraceShape::Mixed)]
        shape: TraceShape,
        /// Rows per COPY (as the sink's `max_rows`).
        #[arg(long, default_value_t = 10_000)]
        rows_per_copy: usize,
    },
}

/// The raw COPY ceiling's result.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub shape: TraceShape,
    pub connections: usize,
    pub rows_per_copy: usize,
    pub seconds: f64,
    pub rows: u64,
    pub rows_per_second: f64,
}

pub async fn run(
    command: TestbedCommand,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    match command {
        TestbedCommand::Postgres { no_fsync, settings } => {
            if let Some(bad) = settings.iter().find(|s| !s.contains('=')) {
                anyhow::bail!("--setting {bad:?}: expected NAME=VALUE");
            }
            let options = ServerOptions {
                settings,
                ..ServerOptions::default()
            };
            let pg = tokio::task::spawn_blocking(move || {
                TempPostgres::start_with_options(!no_fsync, true, &options)
            })
            .await??;
            let config = TimescaleSinkConfig::new(pg.url());
            let extractor = Extractor::new(&config).map_err(anyhow::Error::msg)?;
            let (mut client, connection) =
                tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let info = migrate(&mut client, &config, extractor.mappings()).await?;
            println!("{}", pg.url());
            eprintln!(
                "TimescaleDB: {}",
                info.timescaledb.as_deref().unwrap_or("not installed")
            );
            shutdown.await;
            drop(pg);
        }
        TestbedCommand::Backend { listen } => {
            let backend = RecordingBackend::start_on(&listen, false).await?;
            println!("{}", backend.endpoint());
            shutdown.await;
        }
        TestbedCommand::Copy {
            database_url,
            seconds,
            connections,
            batch,
            shape,
            rows_per_copy,
        } => {
            let load = CopyLoad {
                connections,
                batch,
                shape,
                rows_per_copy,
            };
            let report = copy_ceiling(&database_url, seconds, load).await?;
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}

/// What the raw COPY ceiling writes.
struct CopyLoad {
    connections: usize,
    batch: usize,
    shape: TraceShape,
    rows_per_copy: usize,
}

/// Each connection generates frame requests (as `otelgate load` does), extracts their rows
/// with the built-in mappings (as the sink does) and COPYs them, `rows_per_copy` at a time per
/// table, without a ledger.
async fn copy_ceiling(url: &str, seconds: u64, load: CopyLoad) -> anyhow::Result<CopyReport> {
    let CopyLoad {
        connections,
        batch,
        shape,
        rows_per_copy,
    } = load;
    let config = TimescaleSinkConfig::new(url);
    let extractor = std::sync::Arc::new(Extractor::new(&config).map_err(anyhow::Error::msg)?);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..connections.max(1) {
        let extractor = extractor.clone();
        let url = url.to_owned();
        tasks.spawn(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let statements: Vec<String> = extractor
                .mappings()
                .iter()
                .map(|m| {
                    let columns: Vec<String> = otelgate::sink::timescale::mapping_columns(m)
                        .iter()
                        .map(|(c, _)| format!("\"{c}\""))
                        .collect();
                    format!(
                        "COPY \"{}\" ({}) FROM STDIN (FORMAT binary)",
                        m.table,
                        columns.join(", ")
                    )
                })
                .collect();
            // The requests `otelgate load` sends (the same templates, `load.run` attribute
            // included), so the rows are the gateway's and the client's CPU, taken from
            // PostgreSQL on a shared machine, is as small as the load generator's: building
            // each request with `prost` cost this client as much as extracting its rows.
            let run = uuid::Uuid::new_v4().simple().to_string();
            let generator = TelemetryGenerator::new(1000 + connection as u64)
                .with_run(&run)
                .with_shape(shape);
            let mut templates = TraceTemplates::new(generator, batch, rand::random::<u64>());
            let mut rows = 0u64;
            let mut pending = extractor.batch();
            while Instant::now() < deadline {
                let (body, _) = templates.next(now_nanos());
                extractor.extract(Signal::Traces, &body, &mut pending)?;
                for (index, table_rows) in pending.rows.iter_mut().enumerate() {
                    if table_rows.len() >= rows_per_copy {
                        rows += copy(&client, &statements[index], table_rows).await?;
                    }
                }
            }
            for (index, table_rows) in pending.rows.iter_mut().enumerate() {
                if !table_rows.is_empty() {
                    rows += copy(&client, &statements[index], table_rows).await?;
                }
            }
            anyhow::Ok(rows)
        });
    }
    let mut rows = 0;
    while let Some(joined) = tasks.join_next().await {
        rows += joined??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(CopyReport {
        shape,
        connections,
        rows_per_copy,
        seconds,
        rows,
        rows_per_second: rows as f64 / seconds,
    })
}

async fn copy(
    client: &tokio_postgres::Client,
    statement: &str,
    rows: &mut Rows,
) -> anyhow::Result<u64> {
    use futures_util::SinkExt;
    // The next batch is about as large: room for it up front instead of growing into it.
    let next = Rows::with_capacity(rows.data_len(), rows.len());
    let batch = std::mem::replace(rows, next).into_batch();
    let sink = client.copy_in::<_, Bytes>(statement).await?;
    futures_util::pin_mut!(sink);
    sink.send(batch.data().clone()).await?;
    let n = sink.finish().await?;
    Ok(n)
}
