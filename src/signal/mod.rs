//! The three OTLP signals and what the gateway needs to know about each: its gRPC method and
//! HTTP path, how to validate a request body and how many items (spans, data points, log
//! records) it carries. Everything else in the crate is written once, generic over [`Signal`].

mod json;
pub(crate) mod proto;
pub(crate) mod schema;
#[cfg(test)]
mod testing;
mod wire;
pub use json::JsonError;
pub use wire::WireError;

use std::fmt;

use bytes::Bytes;
use prost::Message;
use serde::Deserialize;

/// An OTLP signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

/// Why a request body could not be accepted as OTLP.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid OTLP protobuf for {signal}: {source}")]
    Protobuf {
        signal: Signal,
        source: wire::WireError,
    },
    #[error("invalid OTLP/JSON for {signal}: {source}")]
    Json { signal: Signal, source: JsonError },
}

impl Signal {
    /// Every signal, in a fixed order (used to index per-signal state).
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// Which of the three signals `signals` names, indexed by [`Signal::index`].
    pub fn mask(signals: &[Signal]) -> [bool; 3] {
        let mut mask = [false; 3];
        for signal in signals {
            mask[signal.index()] = true;
        }
        mask
    }

    /// Lower-case name, as used in paths, config and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// Position in [`Signal::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Signal::Traces => 0,
            Signal::Metrics => 1,
            Signal::Logs => 2,
        }
    }

    /// OTLP/HTTP path, e.g. `/v1/traces`.
    pub const fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }

    /// OTLP/gRPC method path, e.g. `/opentelemetry.proto.collector.trace.v1.TraceService/Export`.
    pub const fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        }
    }

    /// The request message of this signal's `Export` method.
    fn request(self) -> schema::Msg {
        match self {
            Signal::Traces => schema::Msg::ExportTraces,
            Signal::Metrics => schema::Msg::ExportMetrics,
            Signal::Logs => schema::Msg::ExportLogs,
        }
    }

    /// Validates a protobuf `Export*ServiceRequest` body and counts its items, without
    /// decoding it (see [`wire`]): it accepts what `prost` would decode, provided that its
    /// trace and span ids have the lengths OTLP gives them.
    pub fn count_protobuf(self, body: &[u8]) -> Result<u64, DecodeError> {
        wire::validate(self.request(), body).map_err(|source| DecodeError::Protobuf {
            signal: self,
            source,
        })
    }

    /// Parses an OTLP/JSON body and returns it as protobuf, with its item count. Protobuf is
    /// the one form the pipeline carries, so JSON is converted exactly once, here (see
    /// [`json`]), and then counted and checked like any protobuf body.
    pub fn json_to_protobuf(self, body: &[u8]) -> Result<(Bytes, u64), DecodeError> {
        let protobuf =
            json::to_protobuf(self.request(), body).map_err(|source| DecodeError::Json {
                signal: self,
                source,
            })?;
        let items = self.count_protobuf(&protobuf)?;
        Ok((protobuf.into(), items))
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `partial_success` part of any `Export*ServiceResponse`. The three responses share one
/// wire shape (field 1: a message of `int64 rejected = 1; string error_message = 2`), so one
/// type decodes them all.
#[derive(Clone, PartialEq, Message)]
pub struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<PartialSuccess>,
}

/// Items a backend rejected from an otherwise accepted request.
#[derive(Clone, PartialEq, Message)]
pub struct PartialSuccess {
    #[prost(int64, tag = "1")]
    pub rejected: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}
