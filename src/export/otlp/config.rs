//! Configuration of one OTLP exporter.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::pipeline::retry::RetryConfig;
use crate::pipeline::QueueConfig;
use crate::Signal;

/// Wire protocol towards the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// OTLP/gRPC; `endpoint` is `http(s)://host:port` (usually port 4317).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies; `endpoint` is the base URL, `/v1/<signal>` is appended
    /// (usually port 4318).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Request compression towards the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    #[default]
    Gzip,
    /// gRPC only; OTLP/HTTP defines gzip alone.
    Zstd,
}

const fn default_timeout_ms() -> u64 {
    10_000
}

const fn default_concurrency() -> usize {
    4
}

fn default_signals() -> Vec<Signal> {
    Signal::ALL.to_vec()
}

/// One OTLP backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    /// `http://host:port` or `https://host:port` (with a path prefix for HTTP if the backend needs one).
    pub endpoint: String,
    /// `grpc` (default) or `http/protobuf`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Signals this backend takes; default all three. E.g. `["logs"]` for Loki's OTLP endpoint.
    #[serde(default = "default_signals")]
    pub signals: Vec<Signal>,
    /// Extra request headers (gRPC metadata), e.g. `uptrace-dsn = "${UPTRACE_DSN}"`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `gzip` (default), `none`, or `zstd` (gRPC only).
    #[serde(default)]
    pub compression: Compression,
    /// Deadline of one export attempt.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Batches in flight at once towards this backend.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    /// TLS settings for `https` endpoints; the Mozilla root certificates
    /// bundled with otelgate (webpki-roots) are trusted by default; the OS store is not read.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
}

/// Custom trust and client identity for an `https` endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM file of CA certificates to trust (in addition to the bundled Mozilla roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS; needs `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

const fn default_max_items() -> u64 {
    8192
}

const fn default_max_bytes() -> usize {
    4 * 1024 * 1024
}

const fn default_max_wait_ms() -> u64 {
    50
}

/// How requests are merged into batches (per signal) before export. Requests are never split:
/// one larger than a limit is sent alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Send once a batch holds this many items.
    #[serde(default = "default_max_items")]
    pub max_items: u64,
    /// Send once a batch holds this many bytes (before compression).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Send a batch at the latest this long after its first request arrived. 0 sends every
    /// request at once, unbatched.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_items: default_max_items(),
            max_bytes: default_max_bytes(),
            max_wait_ms: default_max_wait_ms(),
        }
    }
}

impl BatchConfig {
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }
}

impl OtlpExporterConfig {
    /// A config with defaults for everything but the endpoint and protocol.
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        OtlpExporterConfig {
            endpoint: endpoint.into(),
            protocol,
            signals: default_signals(),
            headers: BTreeMap::new(),
            compression: Compression::default(),
            timeout_ms: default_timeout_ms(),
            concurrency: default_concurrency(),
            batch: BatchConfig::default(),
            queue: QueueConfig::default(),
            retry: RetryConfig::default(),
            tls: None,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let invalid =
            |field: &str, message: String| ConfigError::invalid(format!("{key}.{field}"), message);
        let uri: http::Uri = self
            .endpoint
            .parse()
            .map_err(|e| invalid("endpoint", format!("`{}` is not a URL: {e}", self.endpoint)))?;
        match uri.scheme_str() {
            Some("http") | Some("https") if uri.host().is_some() => {}
            _ => {
                return Err(invalid(
                    "endpoint",
                    format!(
                        "`{}` must be http://host:port or https://host:port",
                        self.endpoint
                    ),
                ))
            }
        }
        if self.tls.is_some() && uri.scheme_str() != Some("https") {
            return Err(invalid(
                "tls",
                "TLS settings need an https:// endpoint".into(),
            ));
        }
        if self.signals.is_empty() {
            return Err(invalid(
                "signals",
                "list at least one of traces, metrics, logs".into(),
            ));
        }
        if self.protocol == Protocol::HttpProtobuf && self.compression == Compression::Zstd {
            return Err(invalid(
                "compression",
                "zstd is only available with protocol = \"grpc\"; OTLP/HTTP uses gzip".into(),
            ));
        }
        for (name, value) in &self.headers {
            http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| invalid("headers", format!("`{name}` is not a valid header name")))?;
            http::HeaderValue::from_str(value).map_err(|_| {
                invalid(
                    "headers",
                    format!("the value of `{name}` is not a valid header value"),
                )
            })?;
        }
        if self.concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1".into()));
        }
        if self.timeout_ms == 0 {
            return Err(invalid("timeout_ms", "must be greater than 0".into()));
        }
        if self.batch.max_items == 0 || self.batch.max_bytes == 0 {
            return Err(invalid(
                "batch",
                "max_items and max_bytes must be greater than 0".into(),
            ));
        }
        if self.queue.capacity == 0 {
            return Err(invalid("queue.capacity", "must be at least 1".into()));
        }
        self.retry.validate().map_err(|m| invalid("retry", m))?;
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(invalid("tls", "cert_file and key_file go together".into()));
            }
            super::client::read_tls(tls).map_err(|e| invalid("tls", e.to_string()))?;
        }
        Ok(())
    }
}
