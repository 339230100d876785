//! Destinations that deliver accepted telemetry somewhere else.

pub mod otlp;
