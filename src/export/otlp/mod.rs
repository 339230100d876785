//! The OTLP exporter: one per configured backend. Each reads its own bounded queue, batches
//! requests per signal, sends batches with bounded concurrency over gRPC or HTTP/protobuf and
//! retries what the OTLP specification calls retryable, with the pipeline's retry policy
//! (`pipeline::retry`). Exporters share nothing but the immutable payloads, so one slow or
//! dead backend never slows another.

mod client;
mod config;
mod error;
mod gzip;
mod worker;

pub use client::OtlpClient;
pub use config::{BatchConfig, ClientTlsConfig, Compression, OtlpExporterConfig, Protocol};
pub use error::{OtlpExportError, RetryDecision};
pub use worker::{ExportReport, OtlpExporter};
