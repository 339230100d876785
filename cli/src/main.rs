//! The `otelgate` command line. Everything but argument parsing lives in the libraries: the
//! gateway's (`otelgate`) and the tools' (`otelgate_cli`: demo, load, testbed).

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use otelgate::{telemetry, Config, Gateway};
use otelgate_cli::{demo, load, testbed};

/// mimalloc instead of the system allocator: decoding OTLP and building rows allocate many
/// small objects across threads, where glibc malloc spent ~40% of the gateway's CPU under
/// load (see docs/BENCHMARKS.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "otelgate",
    version,
    about = "OTLP ingestion gateway: receive once, forward to every backend."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or Ctrl-C.
    Run {
        /// TOML config file; without it, defaults and OTELGATE_* environment variables apply.
        #[arg(long, short, env = "OTELGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load and validate a config file; print what is wrong, naming the key.
    CheckConfig {
        #[arg(long, short, env = "OTELGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Apply the database migrations of the [timescale] section and exit.
    Migrate {
        #[arg(long, short, env = "OTELGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Start the gateway on the standard ports with two in-process backends, send realistic
    /// frame, detection and LLM telemetry through it for a few seconds and print what happened.
    Demo(demo::DemoArgs),
    /// Send realistic OTLP load to a gateway (or any OTLP endpoint) and report throughput,
    /// refusals, latency and, with --database-url, rows and commit latency.
    Load(load::LoadArgs),
    /// Benchmark aids run as separate processes: a throwaway PostgreSQL, a counting OTLP
    /// backend, the raw binary COPY ceiling.
    #[command(subcommand)]
    Testbed(testbed::TestbedCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::CheckConfig { config } => check_config(config),
        Command::Migrate { config } => block_on(migrate(config)),
        Command::Demo(args) => block_on(demo::run(args)),
        Command::Load(args) => block_on(run_load(args)),
        Command::Testbed(command) => block_on(testbed::run(command, shutdown_signal())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `future` to completion on a runtime with one worker per CPU core.
fn block_on(future: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    runtime(0)?.block_on(future)
}

/// A multi-threaded tokio runtime with `worker_threads` workers (0: one per CPU core).
fn runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    Ok(builder.build()?)
}

/// `otelgate run`: the config decides the runtime's threads, so it is read before the runtime
/// exists.
fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(path.as_deref())?;
    runtime(config.pipeline.worker_threads)?.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    telemetry::init_logging(&config.telemetry);
    let gateway = Gateway::start(config).await?;
    shutdown_signal().await;
    tracing::info!("Shutting down: no new requests; draining queues.");
    let undelivered = gateway.shutdown().await.undelivered();
    if undelivered > 0 {
        anyhow::bail!("{undelivered} items could not be delivered before the shutdown deadline");
    }
    Ok(())
}

async fn migrate(path: Option<PathBuf>) -> anyhow::Result<()> {
    use otelgate::sink::timescale::{migrate, sink::pool, Extractor};
    let config = Config::load(path.as_deref())?;
    telemetry::init_logging(&config.telemetry);
    let Some(timescale) = config.timescale else {
        anyhow::bail!("the config has no [timescale] section: nothing to migrate");
    };
    let extractor = Extractor::new(&timescale).map_err(anyhow::Error::msg)?;
    let pool = pool(&timescale)?;
    let mut client = pool
        .get()
        .await
        .map_err(|e| otelgate::sink::timescale::connect_error(&timescale, &e))?;
    let info = migrate(&mut client, &timescale, extractor.mappings()).await?;
    match &info.timescaledb {
        Some(version) => println!("TimescaleDB {version}"),
        None => println!("warning: {}", info.warning().unwrap_or_default()),
    }
    if info.applied.is_empty() {
        println!("schema is up to date");
    } else {
        println!("applied: {}", info.applied.join(", "));
    }
    Ok(())
}

async fn run_load(args: load::LoadArgs) -> anyhow::Result<()> {
    let report = load::run(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        load::print(&report);
    }
    Ok(())
}

fn check_config(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(path.as_deref())?;
    let exporters = config.exporters.keys().cloned().collect::<Vec<_>>();
    println!(
        "config OK: gRPC {}, HTTP {}, admin {}, exporters: {}, TimescaleDB sink: {}",
        config.receiver.grpc_endpoint,
        config.receiver.http_endpoint,
        config.telemetry.admin_endpoint,
        if exporters.is_empty() {
            "none".into()
        } else {
            exporters.join(", ")
        },
        if config.timescale.is_some() {
            "on"
        } else {
            "off"
        },
    );
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
