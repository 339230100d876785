//! Destinations that turn telemetry into rows.

pub mod timescale;
