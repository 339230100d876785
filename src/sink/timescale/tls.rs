//! TLS to PostgreSQL with libpq's settings and meanings: `sslmode` (`disable`, `prefer`,
//! `require`, `verify-ca`, `verify-full`; not `allow`), `sslrootcert` (a PEM file, or `system`
//! for the Mozilla roots), `sslcert` and `sslkey`. Each is read from the connection string
//! (last occurrence wins, as in libpq) and from the `[timescale]` key of the same name, which
//! takes precedence. libpq's default files under `~/.postgresql/` are not read.
//!
//! The handshake is in `tls_connect`.

use std::path::PathBuf;

use serde::Deserialize;

use super::config::TimescaleSinkConfig;
use super::conninfo::take_tls_params;
use super::error::TimescaleSinkError;

/// libpq's `sslmode`, without `allow` (cleartext first, TLS if refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Cleartext only.
    Disable,
    /// TLS if the server offers it, else cleartext. libpq's default, and otelgate's.
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, and the server's certificate is signed by a CA in `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    const NAMES: [(&'static str, SslMode); 5] = [
        ("disable", SslMode::Disable),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, mode)| *mode == self)
            .map_or("", |(name, _)| name)
    }

    fn parse(value: &str) -> Result<SslMode, String> {
        if let Some((_, mode)) = Self::NAMES.iter().find(|(name, _)| *name == value) {
            return Ok(*mode);
        }
        let names: Vec<&str> = Self::NAMES.iter().map(|(name, _)| *name).collect();
        let allow = match value {
            "allow" => " (`allow`, cleartext first, is not supported)",
            _ => "",
        };
        Err(format!(
            "sslmode `{value}` is not one of {}{allow}",
            names.join(", ")
        ))
    }

    /// What tokio-postgres does before the handshake; the checks are the connector's.
    fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            SslMode::Disable => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }
}

/// A setting's value and where it was given, to name it in messages.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Setting<T> {
    pub(super) value: T,
    /// `timescale.sslmode`, `sslmode in timescale.url`, or `default`.
    pub(super) origin: String,
}

/// What the server's certificate is checked against.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the Mozilla roots built into otelgate (webpki-roots).
    System,
}

/// The TLS settings of the sink's connections, resolved from `url` and `[timescale]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PgTls {
    pub(super) mode: Setting<SslMode>,
    pub(super) root_cert: Option<Setting<RootCert>>,
    pub(super) client_cert: Option<(Setting<PathBuf>, Setting<PathBuf>)>,
}

pub(super) fn invalid(key: &str, message: impl Into<String>) -> TimescaleSinkError {
    TimescaleSinkError::Config {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// tokio-postgres's settings for `config.url` without its TLS parameters, and the TLS
/// settings. Reads no file (see [`PgTls::connector`]).
pub fn connection_config(
    config: &TimescaleSinkConfig,
) -> Result<(tokio_postgres::Config, PgTls), TimescaleSinkError> {
    let (url, params) = take_tls_params(&config.url);
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| invalid("timescale.url", e.to_string()))?;
    let tls = PgTls::resolve(&params, config)?;
    pg.ssl_mode(tls.mode.value.negotiation());
    Ok((pg, tls))
}

impl<T> Setting<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Setting<U> {
        Setting {
            value: f(self.value),
            origin: self.origin,
        }
    }
}

impl PgTls {
    /// Each setting from its `[timescale]` key, else from its last occurrence in `params`
    /// (the URL's), then the checks libpq makes.
    fn resolve(
        params: &[(String, String)],
        config: &TimescaleSinkConfig,
    ) -> Result<PgTls, TimescaleSinkError> {
        let pick = |key: &str, from_config: Option<String>| match from_config {
            Some(value) => Some(Setting {
                value,
                origin: format!("timescale.{key}"),
            }),
            None => params
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| Setting {
                    value: v.clone(),
                    origin: format!("{key} in timescale.url"),
                }),
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        let root_cert = pick("sslrootcert", config.sslrootcert.clone()).map(|s| {
            s.map(|value| match value.as_str() {
                "system" => RootCert::System,
                file => RootCert::File(file.into()),
            })
        });
        let mode = pick("sslmode", config.sslmode.map(|m| m.name().to_owned()));
        let mode = Self::mode(mode, root_cert.as_ref())?;
        let client_cert = match (
            pick("sslcert", path(&config.sslcert)),
            pick("sslkey", path(&config.sslkey)),
        ) {
            (Some(cert), Some(key)) => Some((cert.map(PathBuf::from), key.map(PathBuf::from))),
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => {
                return Err(invalid(
                    &one.origin,
                    "sslcert and sslkey go together: set both (the client certificate and its \
                     private key, PEM)",
                ))
            }
        };
        Ok(PgTls {
            mode,
            root_cert,
            client_cert,
        })
    }

    /// The mode given, or the default, checked against the roots as libpq checks it.
    fn mode(
        given: Option<Setting<String>>,
        root_cert: Option<&Setting<RootCert>>,
    ) -> Result<Setting<SslMode>, TimescaleSinkError> {
        let system = root_cert.filter(|r| r.value == RootCert::System);
        let mode = match given {
            Some(s) => Setting {
                value: SslMode::parse(&s.value).map_err(|e| invalid(&s.origin, e))?,
                origin: s.origin,
            },
            // As libpq: the system roots vouch for names, so they mean verify-full.
            None if system.is_some() => Setting {
                value: SslMode::VerifyFull,
                origin: "sslrootcert=system".into(),
            },
            None => Setting {
                value: SslMode::Prefer,
                origin: "default".into(),
            },
        };
        let name = mode.value.name();
        if matches!(mode.value, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(invalid(
                &mode.origin,
                format!(
                    "sslmode={name} needs sslrootcert: a PEM file of the CA certificates that \
                     sign the server's certificate, or `system` for the built-in Mozilla roots \
                     (set timescale.sslrootcert, or sslrootcert in timescale.url)"
                ),
            ));
        }
        if let Some(system) = system {
            if !matches!(mode.value, SslMode::VerifyFull | SslMode::Disable) {
                return Err(invalid(
                    &mode.origin,
                    format!(
                        "sslmode={name} is too weak for sslrootcert=system ({}): use verify-full",
                        system.origin
                    ),
                ));
            }
        }
        Ok(mode)
    }

    /// The settings in effect, for messages: `sslmode=verify-full, sslrootcert=/etc/ca.pem`.
    pub fn summary(&self) -> String {
        let mut text = format!("sslmode={}", self.mode.value.name());
        if self.mode.value == SslMode::Disable {
            return text;
        }
        match self.root_cert.as_ref().map(|r| &r.value) {
            Some(RootCert::File(path)) => {
                text.push_str(&format!(", sslrootcert={}", path.display()))
            }
            Some(RootCert::System) => text.push_str(", sslrootcert=system"),
            None => text.push_str(", server certificate not checked"),
        }
        if let Some((cert, _)) = &self.client_cert {
            text.push_str(&format!(", sslcert={}", cert.value.display()));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves `url` with the `[timescale]` keys `keys` (TOML lines): the summary and what
    /// tokio-postgres is told, or the error, which must contain `expected`'s text.
    #[track_caller]
    fn check(url: &str, keys: &str, expected: Result<&str, &str>) {
        let config: TimescaleSinkConfig =
            toml::from_str(&format!("url = '{url}'\n{keys}")).expect("valid TOML");
        let got = connection_config(&config)
            .map(|(pg, tls)| format!("{} ({:?})", tls.summary(), pg.get_ssl_mode()))
            .map_err(|e| e.to_string());
        match expected {
            Ok(summary) => assert_eq!(got, Ok(summary.to_owned()), "{url} {keys}"),
            Err(needle) => assert!(
                got.as_ref().is_err_and(|e| e.contains(needle)),
                "{url} {keys}: {got:?}"
            ),
        }
    }

    #[test]
    fn settings_come_from_the_url_and_the_keys_which_win() {
        let unchecked = "server certificate not checked";
        check(
            "postgres://db/x",
            "",
            Ok(&format!("sslmode=prefer, {unchecked} (Prefer)")),
        );
        check(
            "postgres://db/x?sslmode=disable&sslrootcert=/ca.pem",
            "",
            Ok("sslmode=disable (Disable)"),
        );
        // The last occurrence in the URL wins, as in libpq.
        check(
            "postgres://db/x?sslmode=require&sslmode=verify-ca&sslrootcert=/ca.pem",
            "",
            Ok("sslmode=verify-ca, sslrootcert=/ca.pem (Require)"),
        );
        check(
            "postgres://db/x?sslmode=disable&sslrootcert=/url.pem",
            "sslmode = 'verify-full'\nsslrootcert = '/key.pem'",
            Ok("sslmode=verify-full, sslrootcert=/key.pem (Require)"),
        );
        check(
            "host=db sslmode=require sslcert=/c.pem",
            "sslkey = '/k.pem'",
            Ok(&format!(
                "sslmode=require, {unchecked}, sslcert=/c.pem (Require)"
            )),
        );
        check(
            "host=db sslrootcert=system",
            "",
            Ok("sslmode=verify-full, sslrootcert=system (Require)"),
        );
        check(
            "host=db sslrootcert=system sslmode=require",
            "",
            Err("sslmode in timescale.url: sslmode=require is too weak for sslrootcert=system"),
        );
        check(
            "host=db",
            "sslmode = 'verify-ca'",
            Err("timescale.sslmode: sslmode=verify-ca needs sslrootcert"),
        );
        check(
            "host=db sslcert=/c.pem",
            "",
            Err("sslcert in timescale.url: sslcert and sslkey go together"),
        );
        check(
            "host=db",
            "sslkey = '/k.pem'",
            Err("timescale.sslkey: sslcert and sslkey go together"),
        );
        check(
            "host=db sslmode=allow",
            "",
            Err("sslmode in timescale.url: sslmode `allow` is not one of"),
        );
        check("host=db sslmode=maybe", "", Err("`maybe` is not one of"));
        check("host=db nope=1", "", Err("timescale.url: "));
    }
}
