//! The tools around the otelgate gateway, kept out of its library: `demo` (a gateway, a
//! throwaway PostgreSQL and two in-process backends, driven for a few seconds), `load` (the
//! OTLP load generator), `testbed` (the pieces benchmark scripts run as separate processes) and
//! `ports` (ports for servers that other processes bind).
//! The `otelgate` binary of this package runs them as subcommands next to the gateway's own;
//! the gateway's tests and benchmarks use their helpers (`TempPostgres`, `RecordingBackend`,
//! `TelemetryGenerator`). They reach the gateway only through the public API of the `otelgate`
//! library.

pub mod demo;
pub mod load;
pub mod ports;
pub mod testbed;
