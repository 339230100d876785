//! Errors of the TimescaleDB sink, and the one place that decides which are retried.

use tokio_postgres::error::SqlState;

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum TimescaleSinkError {
    #[error("cannot get a database connection: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("migration {name} failed: {}", describe(.source))]
    Migration {
        name: String,
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// The server's message (SQLSTATE, message, detail, constraint) or the client error chain.
pub fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(constraint) = db.constraint() {
            text.push_str(&format!(" [constraint {constraint}]"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn describe_pool(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(error) => describe(error),
        other => other.to_string(),
    }
}

/// How a failed batch write should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database or connection is (perhaps briefly) unavailable: retry the same batch.
    Transient,
    /// Some row's data was refused: split the batch to isolate the bad rows.
    BadData,
    /// Retrying cannot help (missing table, permissions): give up on the batch.
    Permanent,
}

impl TimescaleSinkError {
    /// Classifies a failure: connection loss, server shutdown, failover (read-only
    /// transactions), serialization conflicts and resource shortages are transient; data
    /// exceptions and constraint violations point at rows; everything else is permanent.
    pub fn failure(&self) -> Failure {
        let error = match self {
            // Wrong credentials or a missing database will not fix themselves.
            TimescaleSinkError::Pool(deadpool_postgres::PoolError::Backend(error)) => {
                match error.code().map(|c| &c.code()[..2]) {
                    Some("28") | Some("3D") => return Failure::Permanent,
                    _ => return Failure::Transient,
                }
            }
            TimescaleSinkError::Pool(_) => return Failure::Transient,
            TimescaleSinkError::Db(error) | TimescaleSinkError::Migration { source: error, .. } => {
                error
            }
            TimescaleSinkError::Setup(_) => return Failure::Permanent,
        };
        let Some(code) = error.code() else {
            // No SQLSTATE: the connection broke or closed.
            return Failure::Transient;
        };
        let class = &code.code()[..2];
        if matches!(class, "08" | "53" | "57" | "40")
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::LOCK_NOT_AVAILABLE
        {
            Failure::Transient
        } else if matches!(class, "22" | "23") {
            Failure::BadData
        } else {
            Failure::Permanent
        }
    }
}
