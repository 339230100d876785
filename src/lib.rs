//! otelgate: an OTLP ingestion gateway. It receives OTLP over gRPC and HTTP, admits requests
//! against a memory budget, appends each one to a durable log on disk and acknowledges it once
//! synced; every destination (OTLP backends, unchanged, and the TimescaleDB sink, as typed
//! rows) reads the log through its own cursor, so one slow or dead destination never slows
//! the others. With the log off, requests go to per-destination queues in memory instead.
//! See `docs/ARCHITECTURE.md` for the shape of the whole; the command line and its tools
//! (`demo`, `load`, `testbed`) live in the `otelgate-cli` package (`cli/`).

pub mod admin;
pub mod app;
pub mod codec;
pub mod config;
pub mod export;
pub mod net;
pub mod pipeline;
pub mod receiver;
pub mod signal;
pub mod sink;
pub mod telemetry;

pub use app::Gateway;
pub use config::Config;
pub use signal::Signal;
