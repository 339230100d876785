//! The OTLP exporter: one per configured backend. Each reads its own bounded queue, batches
//! requests per signal, sends batches with bounded concurrency over gRPC or HTTP/protobuf and
//! retries what the OTLP specification calls retryable. Exporters share nothing but the
//! immutable payloads, so one slow or dead backend never slows another.

mod client;
mod config;
mod error;
mod retry;
mod worker;

pub use client::OtlpClient;
pub use config::{BatchConfig, ClientTlsConfig, Compression, OtlpExporterConfig, Protocol};
pub use error::{OtlpExportError, RetryDecision};
pub use retry::{Backoff, RetryConfig};
pub use worker::{ExportReport, OtlpExporter};
