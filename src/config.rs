//! The gateway's configuration: one TOML file, overridable from the environment, with
//! `${VAR}` references for secrets. Each component's section is defined beside the
//! component; this module owns loading, precedence and validation.
//!
//! Precedence, lowest to highest (see [`Config::load`]):
//! 1. the documented defaults,
//! 2. the TOML file,
//! 3. environment variables `OTELGATE_<SECTION>__<KEY>` (path segments joined by `__`; a
//!    variable without `__`, such as Kubernetes' service links `OTELGATE_SERVICE_HOST`, is
//!    not an override and is ignored),
//!
//! Then `${VAR}` references in any string value are replaced by the variable's value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::export::otlp::OtlpExporterConfig;
use crate::pipeline::log::LogConfig;
use crate::pipeline::PipelineConfig;
use crate::receiver::ReceiverConfig;
use crate::sink::timescale::TimescaleSinkConfig;
use crate::telemetry::TelemetryConfig;

/// Prefix of environment variables that override config values.
pub const ENV_PREFIX: &str = "OTELGATE_";
/// Separator between path segments in an override variable's name.
pub const ENV_PATH_SEPARATOR: &str = "__";
/// Names the config file (`--config`); not an override.
pub const ENV_CONFIG_FILE: &str = "OTELGATE_CONFIG";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// OTLP receivers (gRPC and HTTP), limits, auth and TLS.
    #[serde(default)]
    pub receiver: ReceiverConfig,
    /// Admission (memory budget) and shutdown.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Admin endpoint and logs.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Named OTLP exporters; every accepted request goes to each one that takes its signal.
    #[serde(default)]
    pub exporters: BTreeMap<String, OtlpExporterConfig>,
    /// The TimescaleDB row sink; off when absent.
    #[serde(default)]
    pub timescale: Option<TimescaleSinkConfig>,
    /// The durable log (on by default).
    #[serde(default)]
    pub log: LogConfig,
}

/// What is wrong with a configuration. Every variant names the key or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Syntax {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("key `{key}` references ${{{var}}}, which is not set in the environment")]
    MissingVar { key: String, var: String },
    #[error("key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// A validation error for `key`.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads the configuration from an optional file and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let origin = path.unwrap_or(Path::new("<defaults>"));
        Self::from_toml_with_env(&text, origin, std::env::vars())
    }

    /// Builds a configuration from TOML text and a set of environment variables, applying the
    /// precedence documented on this module, then validates it.
    pub fn from_toml_with_env(
        text: &str,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|source| ConfigError::Syntax {
            path: origin.to_owned(),
            source: Box::new(source),
        })?;
        let env: BTreeMap<String, String> = env.into_iter().collect();
        for (var, value) in &env {
            if var == ENV_CONFIG_FILE {
                continue;
            }
            // Every top-level key is a section, so an override names at least two segments.
            // Variables without a separator are not overrides: Kubernetes sets
            // `OTELGATE_SERVICE_HOST`, `OTELGATE_PORT`, ... in every pod of a namespace with a
            // Service named `otelgate`, and those must not stop the gateway from starting.
            if let Some(path) = var.strip_prefix(ENV_PREFIX) {
                if path.contains(ENV_PATH_SEPARATOR) {
                    apply_env_override(&mut table, var, path, value)?;
                }
            }
        }
        let mut value = toml::Value::Table(table);
        expand_vars(&mut value, &mut Vec::new(), &env)?;
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid {
                key,
                message: e.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: addresses, endpoints, files, cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.receiver.validate()?;
        self.pipeline.validate()?;
        self.telemetry.validate()?;
        self.log.validate()?;
        if self.receiver.max_request_bytes as u64 > self.pipeline.memory_budget_bytes {
            return Err(ConfigError::invalid(
                "receiver.max_request_bytes",
                format!(
                    "{} exceeds pipeline.memory_budget_bytes ({}): such requests could never be admitted",
                    self.receiver.max_request_bytes, self.pipeline.memory_budget_bytes
                ),
            ));
        }
        if self.exporters.is_empty() && self.timescale.is_none() {
            return Err(ConfigError::invalid(
                "exporters",
                "no destination is configured: add an [exporters.<name>] or a [timescale] section",
            ));
        }
        if let Some(timescale) = &self.timescale {
            timescale.validate()?;
            if self.exporters.contains_key("timescale") {
                return Err(ConfigError::invalid(
                    "exporters.timescale",
                    "the name `timescale` belongs to the row sink; rename this exporter",
                ));
            }
        }
        for (name, exporter) in &self.exporters {
            validate_name(name)
                .map_err(|m| ConfigError::invalid(format!("exporters.{name}"), m))?;
            exporter.validate(&format!("exporters.{name}"))?;
            self.log
                .validate_lag(&format!("exporters.{name}.queue"), &exporter.queue)?;
        }
        if let Some(timescale) = &self.timescale {
            self.log.validate_lag("timescale.queue", &timescale.queue)?;
        }
        Ok(())
    }
}

/// Checks a listen address is `host:port` (an IP address or a name resolved at start-up).
pub fn validate_listen_address(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("`{value}` is not host:port (e.g. 0.0.0.0:4317 or localhost:4317)"),
        ))
    }
}

/// Destination names appear in metric labels and logs: keep them plain.
fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err("names must be 1-63 characters of a-z, A-Z, 0-9, '_' or '-'".into())
    }
}

/// Sets the value at `path` (`SECTION__KEY__...`, lower-cased, then matched exactly against the
/// keys of the file, so `OTELGATE_EXPORTERS__LGTM__ENDPOINT` addresses `[exporters.lgtm]`) to `raw`. Where the file already holds a string there, `raw`
/// stays a string; otherwise it is read as a TOML value (`8`, `true`, `["traces"]`) and
/// falls back to a string.
fn apply_env_override(
    table: &mut toml::Table,
    var: &str,
    path: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let segments: Vec<String> = path
        .split(ENV_PATH_SEPARATOR)
        .map(str::to_ascii_lowercase)
        .collect();
    if segments.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            var: var.to_owned(),
            message: format!("empty path segment; separate keys with `{ENV_PATH_SEPARATOR}`"),
        });
    }
    let (last, parents) = segments.split_last().expect("split yields one segment");
    let mut node = table;
    for segment in parents {
        let entry = node
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.to_owned(),
            message: format!("`{segment}` is a value, not a section"),
        })?;
    }
    let value = match node.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_owned()),
        _ => parse_scalar(raw),
    };
    node.insert(last.clone(), value);
    Ok(())
}

fn parse_scalar(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Replaces `${VAR}` in every string with the variable's value; `$${` stands for a literal `${`.
fn expand_vars(
    value: &mut toml::Value,
    path: &mut Vec<String>,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) if s.contains("${") => *s = expand_string(s, path, env)?,
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                expand_vars(item, path, env)?;
                path.pop();
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                path.push(key.clone());
                expand_vars(item, path, env)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_string(
    s: &str,
    path: &[String],
    env: &BTreeMap<String, String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("${") {
        if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ConfigError::invalid(path.join("."), "unterminated `${` reference"))?;
        let var = &after[..end];
        let value = env.get(var).ok_or_else(|| ConfigError::MissingVar {
            key: path.join("."),
            var: var.to_owned(),
        })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [exporters.lgtm]
        endpoint = "http://127.0.0.1:4317"
    "#;

    #[track_caller]
    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_with_env(text, Path::new("test.toml"), env)
    }

    #[track_caller]
    fn load_err(text: &str, env: &[(&str, &str)]) -> String {
        load(text, env)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn defaults_fill_everything_but_destinations() {
        let config = load(MINIMAL, &[]).unwrap();
        assert_eq!(config.receiver.grpc_endpoint, "0.0.0.0:4317");
        assert_eq!(config.receiver.http_endpoint, "0.0.0.0:4318");
        assert_eq!(config.telemetry.admin_endpoint, "127.0.0.1:13133");
        assert_eq!(config.exporters["lgtm"].signals.len(), 3);
    }

    #[test]
    fn throttle_lag_needs_the_log_and_a_positive_bound() {
        let with = |extra: &str| format!("{MINIMAL}\n[exporters.lgtm.queue]\n{extra}\n");
        let config = load(&with("throttle_lag_ms = 2000"), &[]).unwrap();
        let limits = config.exporters["lgtm"].queue.lag_limits();
        assert_eq!(limits.throttle_lag, Some(std::time::Duration::from_secs(2)));
        let err = load_err(&with("throttle_lag_ms = 0"), &[]);
        assert!(
            err.contains("exporters.lgtm.queue.throttle_lag_ms"),
            "{err}"
        );
        let err = load_err(
            &format!("[log]\nenabled = false\n{}", with("throttle_lag_ms = 100")),
            &[],
        );
        assert!(
            err.contains("throttle_lag_ms") && err.contains("durable log"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_err(&format!("{MINIMAL}\nbogus = 1\n"), &[]);
        assert!(err.contains("bogus"), "{err}");
        let err = load_err(
            &format!("{MINIMAL}\n[receiver]\ngrpc_endpont = \"x\"\n"),
            &[],
        );
        assert!(
            err.contains("receiver") && err.contains("grpc_endpont"),
            "{err}"
        );
        let err = load_err(
            &format!("{MINIMAL}\n[exporters.lgtm.batch]\nmax_itmes = 1\n"),
            &[],
        );
        assert!(err.contains("exporters.lgtm.batch"), "{err}");
        assert!(err.contains("max_itmes"), "{err}");
    }

    #[test]
    fn environment_overrides_file_values() {
        let config = load(
            MINIMAL,
            &[
                ("OTELGATE_RECEIVER__GRPC_ENDPOINT", "127.0.0.1:9999"),
                ("OTELGATE_EXPORTERS__LGTM__CONCURRENCY", "9"),
                ("OTELGATE_EXPORTERS__LGTM__SIGNALS", "[\"logs\"]"),
                (
                    "OTELGATE_EXPORTERS__EXTRA__ENDPOINT",
                    "http://127.0.0.1:5317",
                ),
                ("UNRELATED", "x"),
                ("OTELGATE_CONFIG", "/etc/otelgate.toml"),
                ("OTELGATE_TELEMETRY__ADMIN_ENDPOINT", "localhost:9000"),
            ],
        )
        .unwrap();
        assert_eq!(config.receiver.grpc_endpoint, "127.0.0.1:9999");
        assert_eq!(config.exporters["lgtm"].concurrency, 9);
        assert_eq!(config.exporters["lgtm"].signals, vec![crate::Signal::Logs]);
        assert_eq!(config.exporters["extra"].endpoint, "http://127.0.0.1:5317");
        assert_eq!(config.telemetry.admin_endpoint, "localhost:9000");
    }

    #[test]
    fn kubernetes_service_link_variables_are_not_overrides() {
        let config = load(
            MINIMAL,
            &[
                ("OTELGATE_SERVICE_HOST", "10.0.0.7"),
                ("OTELGATE_PORT", "tcp://10.0.0.7:4317"),
                ("OTELGATE_PORT_4317_TCP_ADDR", "10.0.0.7"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.receiver.grpc_endpoint,
            Config::default().receiver.grpc_endpoint
        );
    }

    #[test]
    fn unknown_environment_keys_are_named() {
        let err = load_err(MINIMAL, &[("OTELGATE_RECEIVER__NOPE", "1")]);
        assert!(err.contains("receiver") && err.contains("nope"), "{err}");
    }

    #[test]
    fn var_references_expand_and_missing_ones_are_named() {
        let text = format!(
            "{MINIMAL}\n[exporters.lgtm.headers]\nuptrace-dsn = \"https://${{DSN}}@x $${{kept}}\"\n"
        );
        let config = load(&text, &[("DSN", "secret")]).unwrap();
        assert_eq!(
            config.exporters["lgtm"].headers["uptrace-dsn"],
            "https://secret@x ${kept}"
        );
        let err = load_err(&text, &[]);
        assert!(err.contains("exporters.lgtm.headers.uptrace-dsn"), "{err}");
        assert!(err.contains("DSN"), "{err}");
    }

    #[test]
    fn invalid_values_are_rejected_with_their_key() {
        let cases = [
            ("[receiver]\ngrpc_endpoint = \"nope\"\n", "receiver.grpc_endpoint"),
            ("[pipeline]\nmemory_budget_bytes = 0\n", "pipeline.memory_budget_bytes"),
            ("[exporters.x]\nendpoint = \"ftp://a\"\n", "exporters.x.endpoint"),
            (
                "[exporters.x]\nendpoint = \"http://a\"\nprotocol = \"http/protobuf\"\ncompression = \"zstd\"\n",
                "exporters.x.compression",
            ),
            ("[exporters.x]\nendpoint = \"http://a\"\nsignals = []\n", "exporters.x.signals"),
            ("[exporters.\"a b\"]\nendpoint = \"http://a\"\n", "exporters.a b"),
            ("", "exporters"),
            (
                "[receiver]\nmax_request_bytes = 2000\n[pipeline]\nmemory_budget_bytes = 1000\n[exporters.x]\nendpoint = \"http://a:1\"\n",
                "receiver.max_request_bytes",
            ),
            ("[telemetry]\nadmin_endpoint = \"localhost\"\n[exporters.x]\nendpoint = \"http://a:1\"\n", "telemetry.admin_endpoint"),
            ("[timescale]\nurl = \"host=db\"\nsslmode = \"verify-full\"\nsslrootcert = \"/nonexistent/ca.pem\"\n", "key `timescale.sslrootcert`: cannot read PEM file /nonexistent/ca.pem"),
            ("[timescale]\nurl = \"host=db sslmode=verify-ca\"\n", "key `sslmode in timescale.url`: sslmode=verify-ca needs sslrootcert"),
            ("[log]\ngroup_wait_us = 100001\n[exporters.x]\nendpoint = \"http://a:1\"\n", "key `log.group_wait_us`: must be at most 100000"),
            ("[pipeline]\nworker_threads = 1025\n[exporters.x]\nendpoint = \"http://a:1\"\n", "key `pipeline.worker_threads`: must be at most 1024"),
        ];
        for (text, key) in cases {
            let err = load_err(text, &[]);
            assert!(err.contains(key), "expected `{key}` in: {err}");
        }
    }
}
