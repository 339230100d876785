//! otelgate: an OTLP ingestion gateway. It receives OTLP over gRPC and HTTP, admits requests
//! against a memory budget and forwards each one, unchanged, to every configured backend
//! through a queue of that backend's own, so that one slow or dead backend never slows the
//! others. See `docs/ARCHITECTURE.md` for the shape of the whole.

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
