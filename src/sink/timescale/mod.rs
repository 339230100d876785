//! The TimescaleDB row sink: one more destination, with its own log reader (or, with the log
//! off, its own queue in the fan-out) and the shared batching loop. It
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
mod writer;

pub use config::{LlmPrice, TimescaleSinkConfig, TransactionSettings};
pub use copy::{Cell, CopyBatch, RowWriter, Rows};
pub use error::{connect_error, TimescaleSinkError};
pub use extract::{Extractor, RowBatch};
pub use ledger::{Committed, LedgerKey, LedgerRange, RowKey};
pub use mapping::{mapping_columns, ColumnType, Mapping, MappingConfig, RecordKind};
pub use schema::{migrate, SchemaInfo};
pub use sink::{prepare_database, LogLedger, SinkReport, TimescaleSink};
pub use tls::SslMode;
pub use writer::{copy_batch, copy_batches, CopyOutcome, LedgerClaim, TableBatch};
