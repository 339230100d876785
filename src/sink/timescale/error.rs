//! Errors of the TimescaleDB sink, and the one place that decides which are retried. Errors
//! of connections say what to change when TLS is the cause.

use tokio_postgres::error::SqlState;

use super::config::TimescaleSinkConfig;

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
    /// A setting that cannot work, named as the user wrote it (`timescale.sslrootcert`,
    /// `sslmode in timescale.url`).
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    /// The first connection failed; `settings` are the ones in effect.
    #[error("cannot connect to PostgreSQL ({settings}): {message}")]
    Connect { settings: String, message: String },
}

/// The server's message (SQLSTATE, message, detail, constraint) or the client error chain,
/// and what to change when the cause is TLS (see `tls_hint`).
pub fn describe(error: &tokio_postgres::Error) -> String {
    let mut text = describe_cause(error);
    if let Some(hint) = tls_hint(error) {
        text.push_str("; ");
        text.push_str(hint);
    }
    text
}

fn describe_cause(error: &tokio_postgres::Error) -> String {
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
    std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// A pool error as [`describe`] puts it.
pub fn describe_pool(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(error) => describe(error),
        other => other.to_string(),
    }
}

/// The first connection failed: `error` with the hosts and TLS settings in effect, which are
/// what to check.
pub fn connect_error(
    config: &TimescaleSinkConfig,
    error: &deadpool_postgres::PoolError,
) -> TimescaleSinkError {
    let settings = match super::tls::connection_config(config) {
        Ok((pg, tls)) => {
            let ports = pg.get_ports();
            let hosts: Vec<String> = pg
                .get_hosts()
                .iter()
                .enumerate()
                .map(|(i, host)| {
                    let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                    match host {
                        tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                        tokio_postgres::config::Host::Unix(dir) => {
                            format!("{}/.s.PGSQL.{port}", dir.display())
                        }
                    }
                })
                .collect();
            format!("{}, {}", hosts.join(","), tls.summary())
        }
        Err(_) => "timescale.url".into(),
    };
    TimescaleSinkError::Connect {
        settings,
        message: describe_pool(error),
    }
}

const NEEDS_TLS: &str = "the server takes this connection only over TLS: set sslmode to \
    require or stronger (timescale.sslmode, or sslmode in timescale.url)";
const NEEDS_CLIENT_CERT: &str = "the server wants a client certificate: set sslcert and sslkey \
    (timescale.sslcert and timescale.sslkey, or in timescale.url)";
const CERT_USER: &str = "the client certificate's common name (CN) must be the user name, or \
    be mapped to it in the server's pg_ident.conf";
const NO_TLS: &str = "the server does not offer TLS: turn ssl on in the server, or set sslmode \
    to prefer or disable (timescale.sslmode, or sslmode in timescale.url)";
const WRONG_NAME: &str = "the server's certificate does not name the host connected to \
    (sslmode=verify-full): connect by a name the certificate holds, or set sslmode=verify-ca \
    to check only that a CA in sslrootcert signed it";
const WRONG_CA: &str = "the server's certificate is not signed by a CA in sslrootcert: point \
    timescale.sslrootcert (or sslrootcert in timescale.url) at the PEM file of the CA that \
    signed it";
const CLIENT_CERT_REFUSED: &str = "the server refused the client certificate: sslcert must be \
    signed by a CA in the server's ssl_ca_file, with sslkey its key";

/// What to change when a connection fails for a TLS or TLS-related reason, or `None`.
fn tls_hint(error: &tokio_postgres::Error) -> Option<&'static str> {
    if let Some(db) = error.as_db_error() {
        let message = db.message();
        return if message.ends_with("no encryption") {
            Some(NEEDS_TLS)
        } else if message.contains("requires a valid client certificate") {
            Some(NEEDS_CLIENT_CERT)
        } else if message.starts_with("certificate authentication failed") {
            Some(CERT_USER)
        } else {
            None
        };
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        let rustls_error = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()?
                .get_ref()?
                .downcast_ref::<rustls::Error>()
        });
        if let Some(hint) = rustls_error.and_then(rustls_hint) {
            return Some(hint);
        }
        // tokio-postgres's own words when the server answers `N` to `require`.
        if cause.to_string() == "server does not support TLS" {
            return Some(NO_TLS);
        }
        source = cause.source();
    }
    None
}

fn rustls_hint(error: &rustls::Error) -> Option<&'static str> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
    match error {
        Error::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            Some(WRONG_NAME)
        }
        Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => Some(WRONG_CA),
        Error::AlertReceived(
            Alert::UnknownCA
            | Alert::BadCertificate
            | Alert::CertificateRequired
            | Alert::AccessDenied,
        ) => Some(CLIENT_CERT_REFUSED),
        _ => None,
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
            TimescaleSinkError::Setup(_)
            | TimescaleSinkError::Config { .. }
            | TimescaleSinkError::Connect { .. } => return Failure::Permanent,
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
