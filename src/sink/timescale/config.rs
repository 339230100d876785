//! Configuration of the TimescaleDB sink.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::TimescaleSinkError;
use super::mapping::MappingConfig;
use super::tls::SslMode;
use crate::config::ConfigError;
use crate::pipeline::QueueConfig;

/// Two COPY transactions at once: on a 2-core database, four concurrent writers into the same
/// chunks' indexes cost PostgreSQL 10-30% more CPU per row than two (docs/BENCHMARKS.md,
/// "Connections and CPU per row").
const fn default_pool_size() -> usize {
    2
}

const fn default_max_rows() -> usize {
    10_000
}

const fn default_max_wait_ms() -> u64 {
    5
}

const fn default_true() -> bool {
    true
}

const fn default_retention_days() -> u32 {
    30
}

const fn default_max_elapsed_ms() -> u64 {
    300_000
}

const fn default_ledger_retention_hours() -> u64 {
    24
}

const fn default_rejected_retention_days() -> u64 {
    7
}

/// `backend_flush_after = 256kB`: the sink's sessions fill the newest chunks, and with
/// PostgreSQL's default (0) the pages they evict pile up in the kernel's page cache until a
/// checkpoint's fsync or the kernel's writeback sends them in one burst that stalls every
/// commit behind it. Set here it covers the sink's own writes; autovacuum's and others' need
/// the server's setting (docs/TIMESCALE.md; docs/BENCHMARKS.md, "Checkpoints, writeback and
/// the latency tail").
fn default_transaction_settings() -> BTreeMap<String, String> {
    BTreeMap::from([("backend_flush_after".to_owned(), "256kB".to_owned())])
}

/// [`TimescaleSinkConfig::transaction_settings`], checked: set first in each of the sink's
/// transactions with `set_config(name, value, true)` (what `SET LOCAL` does, with the name and
/// value as parameters, so nothing is quoted by hand).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransactionSettings {
    names: Vec<String>,
    values: Vec<String>,
}

impl TransactionSettings {
    /// The query that sets them: one row per setting.
    const SQL: &'static str =
        "SELECT set_config(name, value, true) FROM unnest($1::text[], $2::text[]) AS s(name, value)";

    /// Refuses a name that is not a setting's name (letters, digits and `_`, with one `.` for
    /// an extension's settings). Whether PostgreSQL knows the name and takes the value is
    /// found out at start-up ([`super::sink::prepare_database`]).
    pub fn new(settings: &BTreeMap<String, String>) -> Result<Self, String> {
        let part = |p: &str| {
            p.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        for name in settings.keys() {
            let mut parts = name.split('.');
            let valid = match (parts.next(), parts.next(), parts.next()) {
                (Some(a), None, _) => part(a),
                (Some(a), Some(b), None) => part(a) && part(b),
                _ => false,
            };
            if !valid {
                return Err(format!("{name:?} is not the name of a PostgreSQL setting"));
            }
        }
        Ok(TransactionSettings {
            names: settings.keys().cloned().collect(),
            values: settings.values().cloned().collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Sets them in `tx`, for the rest of it.
    pub async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        if self.is_empty() {
            return Ok(());
        }
        tx.query_typed(
            Self::SQL,
            &[
                (&self.names, tokio_postgres::types::Type::TEXT_ARRAY),
                (&self.values, tokio_postgres::types::Type::TEXT_ARRAY),
            ],
        )
        .await
        .map(drop)
    }
}

/// Price of a model, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LlmPrice {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

/// Where and how rows are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimescaleSinkConfig {
    /// libpq-style connection string or URL, e.g. `postgres://otelgate:${PGPASSWORD}@db:5432/telemetry`.
    /// Works through PgBouncer in transaction pooling mode. Its `sslmode`, `sslrootcert`,
    /// `sslcert` and `sslkey` are read as libpq reads them (see `tls`).
    pub url: String,
    /// TLS to PostgreSQL, as libpq's `sslmode`; takes precedence over `sslmode` in `url`.
    /// Unset in both: `prefer` (TLS when the server offers it, certificate not checked),
    /// or `verify-full` with `sslrootcert = "system"`.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// PEM file of the CA certificates the server's certificate must chain to, or `system`
    /// for the built-in Mozilla roots; takes precedence over `sslrootcert` in `url`. Needed by
    /// `verify-ca` and `verify-full`; with `prefer` or `require` it makes them check the chain.
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// Client certificate (PEM), for `cert` authentication or `clientcert=` in pg_hba.conf.
    /// Requires `sslkey`; takes precedence over `sslcert` in `url`.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    /// The client certificate's private key (PEM). Takes precedence over `sslkey` in `url`.
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
    /// Connections, and so COPY batches in flight at once.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Rows per COPY batch (per mapping: a table written by two mappings gets two batches).
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// A batch is written at the latest this long after its first row arrived.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Apply the SQL migrations at start-up (otherwise run `otelgate migrate`).
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
    /// Include the built-in `frame_metadata`, `detection_events` and `llm_requests` mappings.
    #[serde(default = "default_true")]
    pub builtin_mappings: bool,
    /// With TimescaleDB, rows older than this are dropped by a retention policy (0 disables).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// A batch still failing this long after its first attempt (database down) is given up
    /// and counted as failed.
    #[serde(default = "default_max_elapsed_ms")]
    pub max_elapsed_ms: u64,
    /// Ledger rows (one per committed batch) are pruned after this many hours.
    #[serde(default = "default_ledger_retention_hours")]
    pub ledger_retention_hours: u64,
    /// Rows of `otelgate_rejected_rows` are pruned after this many days.
    #[serde(default = "default_rejected_retention_days")]
    pub rejected_retention_days: u64,
    /// Prices used for `llm_requests.cost_usd`, keyed by model name (response model first,
    /// then request model).
    #[serde(default)]
    pub llm_prices: BTreeMap<String, LlmPrice>,
    /// User-defined mappings, in addition to the built-in ones.
    #[serde(default)]
    pub mappings: Vec<MappingConfig>,
    /// PostgreSQL settings the sink sets (`SET LOCAL`) at the start of each of its
    /// transactions, so they apply to its own writes only and work through PgBouncer in
    /// transaction mode. Replaces the default set as a whole.
    #[serde(default = "default_transaction_settings")]
    pub transaction_settings: BTreeMap<String, String>,
    #[serde(default)]
    pub queue: QueueConfig,
}

impl TimescaleSinkConfig {
    /// A config with defaults for everything but the connection string.
    pub fn new(url: impl Into<String>) -> Self {
        TimescaleSinkConfig {
            url: url.into(),
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            pool_size: default_pool_size(),
            max_rows: default_max_rows(),
            max_wait_ms: default_max_wait_ms(),
            migrate_on_start: true,
            builtin_mappings: true,
            retention_days: default_retention_days(),
            max_elapsed_ms: default_max_elapsed_ms(),
            ledger_retention_hours: default_ledger_retention_hours(),
            rejected_retention_days: default_rejected_retention_days(),
            llm_prices: BTreeMap::new(),
            mappings: Vec::new(),
            transaction_settings: default_transaction_settings(),
            queue: QueueConfig::default(),
        }
    }

    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }

    pub fn max_elapsed(&self) -> Duration {
        Duration::from_millis(self.max_elapsed_ms)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        // The connection settings, and the certificate files they name.
        super::tls::connection_config(self)
            .and_then(|(_, tls)| tls.connector())
            .map_err(|e| match e {
                TimescaleSinkError::Config { key, message } => ConfigError::invalid(key, message),
                other => ConfigError::invalid("timescale", other.to_string()),
            })?;
        if self.pool_size == 0 || self.max_rows == 0 {
            return Err(ConfigError::invalid(
                "timescale",
                "pool_size and max_rows must be at least 1",
            ));
        }
        if self.ledger_retention_hours.saturating_mul(3_600_000) <= self.max_elapsed_ms {
            return Err(ConfigError::invalid(
                "timescale.ledger_retention_hours",
                "must outlast max_elapsed_ms, or ledger rows of batches still being retried could be pruned",
            ));
        }
        super::mapping::compile(self).map_err(|e| ConfigError::invalid("timescale.mappings", e))?;
        TransactionSettings::new(&self.transaction_settings)
            .map_err(|e| ConfigError::invalid("timescale.transaction_settings", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<TransactionSettings, String> {
        TransactionSettings::new(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn transaction_settings_take_setting_names_only() {
        for good in [
            "backend_flush_after",
            "_x1",
            "pg_stat_statements.track",
            "a.b_2",
        ] {
            assert!(settings(&[(good, "1")]).is_ok(), "{good}");
        }
        for bad in ["", "1abc", "a b", "a;b", "a.b.c", ".a", "a.", "a-b", "é"] {
            let error = settings(&[(bad, "1")]).unwrap_err();
            assert!(
                error.contains("is not the name of a PostgreSQL setting"),
                "{bad}: {error}"
            );
        }
        assert!(settings(&[]).unwrap().is_empty());
        let defaults = TimescaleSinkConfig::new("postgres://x/y").transaction_settings;
        assert_eq!(
            defaults.into_iter().collect::<Vec<_>>(),
            [("backend_flush_after".to_owned(), "256kB".to_owned())]
        );
    }
}
