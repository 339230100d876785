//! The TimescaleDB row sink: one more destination of the fan-out, with its own queue. It
//! selects the records that describe the users' domain (frames, detections, LLM calls, and
//! whatever user mappings name), converts them to typed rows, and writes them with binary
//! COPY, exactly once per batch (a ledger row commits in the same transaction as the COPY).

mod config;
mod conninfo;
mod copy;
mod error;
mod extract;
pub mod ledger;
mod mapping;
mod schema;
pub mod sink;
mod tls;
mod tls_connect;
mod view;

pub use config::{LlmPrice, TimescaleSinkConfig};
pub use copy::{Cell, CopyBatch, RowWriter, Rows};
pub use error::{connect_error, TimescaleSinkError};
pub use extract::{Extractor, RowBatch};
pub use ledger::{Committed, LedgerKey, LedgerRange, RowKey};
pub use mapping::{mapping_columns, ColumnType, Mapping, MappingConfig, RecordKind};
pub use schema::{migrate, SchemaInfo};
pub use sink::{ledger_keys, LogLedger, SinkReport, TimescaleSink};
pub use tls::SslMode;
