//! Deployment artefacts checked against the code and against real programs: the Dockerfile,
//! `compose/` (services, `.env.example`, the gateway config, PgBouncer, postgres_exporter's
//! queries, Grafana provisioning and dashboards, Prometheus config and alert rules) and
//! `deploy/kubernetes/`.
//!
//! What runs for real: otelgate's config loader and CLI on the shipped configs, a gateway whose
//! `/metrics` must export every metric the dashboards and alerts use, every dashboard and
//! exporter query against the migrated schema (as the read-only roles compose creates),
//! `promtool`, a Prometheus scraping a gateway with the shipped rules loaded, the shipped
//! PgBouncer config carrying a gateway's COPY batches, and the Dockerfile's and compose's
//! healthcheck commands. Docker and Kubernetes themselves cannot run here: their files are
//! checked statically. A test that needs a program ends in `_needs_<program>` and fails when
//! the program is missing (see `ALLOW_MISSING_ENV` in main.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use otelgate::demo::backend::{Failure, RecordingBackend};
use otelgate::demo::postgres::{find_bin_dir, TempPostgres};
use otelgate::export::otlp::Protocol;
use otelgate::pipeline::WhenFull;
use otelgate::{Config, Gateway, Signal};
use prost::Message;
use serde_json::Value;

use crate::timescale::{connect, count, gateway_with_sink, sink_config, wait_count};
use crate::{config_for, fixture, grpc_export, metric, start, WAIT};

const TRACES: &str = "otlp-sdk-payloads/traces_frames_detections_genai.pb";
const OTLP_GRPC: u16 = 4317;
const OTLP_HTTP: u16 = 4318;
const ADMIN: u16 = 13133;
/// Uids that grafana/otel-lgtm provisions itself (its docker/grafana-datasources.yaml).
const LGTM_DATASOURCES: [&str; 4] = ["prometheus", "tempo", "loki", "pyroscope"];
/// postgres_exporter's own metrics (default collectors of v0.20) that dashboards and rules use.
const POSTGRES_EXPORTER_BUILTINS: [&str; 4] = [
    "pg_up",
    "pg_stat_activity_count",
    "pg_settings_max_connections",
    "pg_database_size_bytes",
];
/// Gateway metrics a short healthy run cannot produce, with the reason; still checked to be
/// metric names the code defines.
const NOT_IN_A_HEALTHY_RUN: [(&str, &str); 3] = [
    (
        "otelgate_sink_failed_rows_total",
        "rows are given up only after timescale.max_elapsed_ms of database failures",
    ),
    (
        "otelgate_sink_retries_total",
        "needs a transient database failure (covered by the sink's own fault tests)",
    ),
    (
        "otelgate_sink_ledger_skips_total",
        "needs a batch retried after its commit landed (see the_ledger_skips_a_replayed_batch)",
    ),
];

// ---- files ----------------------------------------------------------------------------------

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[track_caller]
fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every YAML document of `text`, with merge keys applied, as JSON values.
#[track_caller]
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            let mut value = <serde_norway::Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{what}: merge keys: {e}"));
            serde_json::to_value(value).unwrap_or_else(|e| panic!("{what}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

#[track_caller]
fn yaml(path: &str) -> Value {
    let mut docs = yaml_docs(&read(path), path);
    assert_eq!(docs.len(), 1, "{path}: expected one YAML document");
    docs.remove(0)
}

#[track_caller]
fn json(path: &str) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not valid JSON: {e}"))
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {value}"))
}

/// `host:port` (or `scheme://host:port/...`) split into host and port.
#[track_caller]
fn host_port(address: &str) -> (String, u16) {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (host, port) = rest
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("`{address}` has no port"));
    (host.to_owned(), port.parse().expect("numeric port"))
}

// ---- compose interpolation ----------------------------------------------------------------

/// Expands compose-style references: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`,
/// `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`. Returns the text and the names
/// referenced, or the first required variable that is missing.
fn interpolate(
    text: &str,
    env: &BTreeMap<String, String>,
) -> Result<(String, BTreeSet<String>), String> {
    let mut out = String::with_capacity(text.len());
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').ok_or("unterminated ${")?;
            let body = &inner[..end];
            let name_len = body
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(body.len());
            let (name, op) = body.split_at(name_len);
            names.insert(name.to_owned());
            let value = env.get(name).map(String::as_str);
            let set = value.is_some_and(|v| !v.is_empty());
            let expanded = match op {
                "" => value.unwrap_or("").to_owned(),
                op if op.starts_with(":-") => {
                    if set { value.unwrap() } else { &op[2..] }.to_owned()
                }
                op if op.starts_with('-') => value.unwrap_or(&op[1..]).to_owned(),
                op if op.starts_with(":?") => match value {
                    Some(v) if set => v.to_owned(),
                    _ => return Err(format!("required variable {name}: {}", &op[2..])),
                },
                op if op.starts_with('?') => match value {
                    Some(v) => v.to_owned(),
                    None => return Err(format!("required variable {name}: {}", &op[1..])),
                },
                op => return Err(format!("unsupported interpolation `{name}{op}`")),
            };
            out.push_str(&expanded);
            rest = &inner[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                out.push('$');
            } else {
                names.insert(after[..len].to_owned());
                out.push_str(env.get(&after[..len]).map_or("", String::as_str));
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok((out, names))
}

/// A YAML file without its comment lines: compose and Grafana expand variables in values only.
fn read_yaml_values(path: &str) -> String {
    read(path)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `KEY=value` lines of an env file.
fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// `.env.example` with every empty value (the secrets) filled with a dummy.
fn filled_env() -> BTreeMap<String, String> {
    env_file(&read("compose/.env.example"))
        .into_iter()
        .map(|(k, v)| {
            let v = if v.is_empty() {
                format!("dummy{}", k.to_lowercase().replace('_', ""))
            } else {
                v
            };
            (k, v)
        })
        .collect()
}

/// The compose file as compose would see it with `env`.
fn compose_with(env: &BTreeMap<String, String>) -> Result<Value, String> {
    let (text, _) = interpolate(&read_yaml_values("compose/docker-compose.yml"), env)?;
    Ok(yaml_docs(&text, "compose/docker-compose.yml").remove(0))
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("compose has no service `{name}`"))
}

/// A service's `environment`, as a map (compose allows a map or a list of `K=V`).
fn service_env(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Container ports a service publishes.
fn container_ports(service: &Value) -> BTreeSet<u16> {
    service["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let spec = p.as_str().expect("ports are strings");
            let container = spec.rsplit(':').next().unwrap();
            container
                .split('/')
                .next()
                .unwrap()
                .parse::<u16>()
                .expect("numeric container port")
        })
        .collect()
}

/// Bind mounts of a service as (source relative to compose/, target).
fn bind_mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let mut parts = v.as_str()?.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            source
                .starts_with('.')
                .then(|| (source.to_owned(), target.to_owned()))
        })
        .collect()
}

/// Named-volume mounts of a service as (volume, target).
fn named_volumes(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let mut parts = v.as_str()?.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            (!source.starts_with('.') && !source.starts_with('/'))
                .then(|| (source.to_owned(), target.to_owned()))
        })
        .collect()
}

fn load_config(text: &str, origin: &str, env: &BTreeMap<String, String>) -> Config {
    Config::from_toml_with_env(text, Path::new(origin), env.clone())
        .unwrap_or_else(|e| panic!("{origin} does not load: {e}"))
}

fn parse_memory(limit: &str) -> u64 {
    let (number, unit) = limit.split_at(
        limit
            .find(|c: char| c.is_alphabetic())
            .unwrap_or(limit.len()),
    );
    let number: f64 = number.parse().expect("numeric memory limit");
    let factor = match unit {
        "" | "b" => 1u64,
        "k" | "K" | "Ki" => 1 << 10,
        "m" | "M" | "Mi" => 1 << 20,
        "g" | "G" | "Gi" => 1 << 30,
        other => panic!("unknown memory unit `{other}`"),
    };
    (number * factor as f64) as u64
}

// ---- the Dockerfile -------------------------------------------------------------------------

struct Dockerfile {
    text: String,
}

impl Dockerfile {
    fn load() -> Self {
        Dockerfile {
            text: read("Dockerfile").replace("\\\n", " "),
        }
    }

    /// Instructions (first word upper-case) and their arguments, continuation lines joined.
    fn instructions(&self, name: &str) -> Vec<String> {
        self.text
            .lines()
            .map(str::trim)
            .filter_map(|l| l.split_once(char::is_whitespace))
            .filter(|(i, _)| *i == name)
            .map(|(_, args)| args.trim().to_owned())
            .collect()
    }

    /// The runtime stage's `ENV` variables, which every container of the image starts with
    /// (`ENV KEY=value ...` and the old `ENV KEY value` form).
    fn env(&self) -> BTreeMap<String, String> {
        let runtime = self
            .text
            .rsplit_once("\nFROM ")
            .map_or(self.text.as_str(), |(_, r)| r);
        let unquote = |v: &str| v.trim_matches('"').to_owned();
        let mut env = BTreeMap::new();
        for line in runtime.lines().map(str::trim) {
            let Some(args) = line.strip_prefix("ENV ") else {
                continue;
            };
            let args = args.trim();
            match args.split_once(char::is_whitespace) {
                Some((key, value)) if !key.contains('=') => {
                    env.insert(key.to_owned(), unquote(value.trim()));
                }
                _ => {
                    for pair in args.split_whitespace() {
                        let (key, value) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("ENV `{pair}` is not KEY=value"));
                        env.insert(key.to_owned(), unquote(value));
                    }
                }
            }
        }
        env
    }

    /// The environment of a container of this image: the image's `ENV`, then `overrides`
    /// (compose's `environment`, a pod's `env`), which win.
    fn container_env(&self, overrides: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut env = self.env();
        env.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// The exec-form array of `HEALTHCHECK ... CMD [...]`.
    fn healthcheck(&self) -> Vec<String> {
        let check = self.instructions("HEALTHCHECK");
        assert_eq!(check.len(), 1, "one HEALTHCHECK");
        let (_, cmd) = check[0].split_once("CMD").expect("HEALTHCHECK ... CMD");
        serde_json::from_str(cmd.trim()).expect("HEALTHCHECK CMD in exec form (JSON array)")
    }
}

// ---- Prometheus expressions -----------------------------------------------------------------

/// Identifiers of a PromQL expression outside string literals.
fn promql_identifiers(expr: &str) -> BTreeSet<String> {
    let mut code = String::new();
    let mut quote = None;
    for c in expr.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' || c == '`' => {
                quote = Some(c);
                code.push(' ');
            }
            None => code.push(c),
        }
    }
    code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| !w.is_empty() && !w.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect()
}

/// Every Prometheus expression of the dashboards and the alert rules, with where it is from.
fn prometheus_expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, dashboard) in dashboards() {
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((format!("{path}: {}", panel["title"]), expr.to_owned()));
                }
            }
        }
    }
    let rules = yaml("compose/prometheus/rules/otelgate.rules.yml");
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
            out.push((
                format!("rule {name}"),
                str_of(&rule["expr"], name).to_owned(),
            ));
        }
    }
    out
}

// ---- Grafana --------------------------------------------------------------------------------

fn dashboards() -> Vec<(String, Value)> {
    let mut paths: Vec<_> = std::fs::read_dir(repo("compose/grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no dashboards");
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(repo(""))
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let value = json(&rel);
            (rel, value)
        })
        .collect()
}

/// Panels of a dashboard, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

/// SQL of every PostgreSQL panel target and template variable, with where it is from.
fn dashboard_sql() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, dashboard) in dashboards() {
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(sql) = target["rawSql"].as_str() {
                    out.push((format!("{path}: panel {}", panel["title"]), sql.to_owned()));
                }
            }
        }
        for var in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if var["datasource"]["uid"] == "postgres-timescale" {
                out.push((
                    format!("{path}: variable {}", var["name"]),
                    str_of(&var["query"], "variable query").to_owned(),
                ));
            }
        }
    }
    out
}

/// Replaces Grafana's macros and the dashboards' variables with SQL; fails on any left over.
#[track_caller]
fn grafana_sql(sql: &str, variables: &BTreeMap<&str, String>) -> String {
    let mut sql = sql.to_owned();
    while let Some(pos) = sql.find("$__timeFilter(") {
        let end = pos + sql[pos..].find(')').expect("closing parenthesis");
        let column = &sql[pos + "$__timeFilter(".len()..end];
        let predicate =
            format!("{column} BETWEEN now() - interval '7 days' AND now() + interval '1 hour'");
        sql.replace_range(pos..=end, &predicate);
    }
    sql = sql
        .replace("$__timeFrom()", "(now() - interval '7 days')")
        .replace("$__timeTo()", "now()");
    for (name, value) in variables {
        sql = sql
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(
        !sql.contains('$'),
        "unreplaced Grafana macro or variable in: {sql}"
    );
    sql
}

/// SQL that needs the TimescaleDB extension.
fn needs_timescaledb(sql: &str) -> bool {
    [
        "timescaledb_information",
        "hypertable_",
        "approximate_row_count",
        "time_bucket",
        "_timescaledb",
        "pg_extension WHERE extname = 'timescaledb'",
    ]
    .iter()
    .any(|marker| sql.contains(marker))
}

// ---- processes ------------------------------------------------------------------------------

/// A child process killed (and reaped) when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `command` to completion within `timeout`, killing it otherwise.
#[track_caller]
fn run_bounded(command: &mut Command, timeout: Duration) -> std::process::Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{command:?} did not finish within {timeout:?}");
        }
    }
}

fn installed(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- 1. compose, the gateway config and the Dockerfile, against each other and the code -----

#[test]
fn compose_refuses_to_start_without_its_secrets() {
    let example = env_file(&read("compose/.env.example"));
    let err = compose_with(&example).expect_err("compose must refuse empty secrets");
    assert!(err.contains("POSTGRES_PASSWORD"), "{err}");
    for (name, value) in &example {
        let secret = ["PASSWORD", "SECRET", "TOKEN"]
            .iter()
            .any(|s| name.contains(s));
        if secret {
            assert!(
                value.is_empty(),
                ".env.example gives {name} a value that would work"
            );
        }
    }
    let compose_text = read_yaml_values("compose/docker-compose.yml");
    let check = service(
        &compose_with(&filled_env()).unwrap(),
        "uptrace-config-check",
    )
    .clone();
    let check_script = check["command"].to_string();
    for name in example
        .keys()
        .filter(|n| n.contains("PASSWORD") || n.contains("SECRET") || n.contains("TOKEN"))
    {
        // Profile `uptrace` secrets cannot be `:?` (compose interpolates inactive services too):
        // the one-shot check service must name them instead.
        let required = compose_text.contains(&format!("${{{name}:?"));
        let optional = compose_text.contains(&format!("${{{name}:-"));
        if name.starts_with("UPTRACE_") {
            assert!(
                check_script.contains(name.as_str()),
                "uptrace-config-check does not check {name}"
            );
            assert!(
                service_env(&check).contains_key(name),
                "uptrace-config-check does not get {name}"
            );
        } else {
            assert!(
                required && !optional,
                "{name} must always be referenced as ${{{name}:?...}}"
            );
        }
    }
    let (_, referenced) = interpolate(&compose_text, &filled_env()).unwrap();
    let missing: Vec<_> = referenced
        .iter()
        .filter(|name| !example.contains_key(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "compose references variables .env.example does not list: {missing:?}"
    );
}

#[test]
fn compose_services_are_pinned_limited_checked_and_wired() {
    let compose = compose_with(&filled_env()).unwrap();
    let services = compose["services"].as_object().unwrap();
    let declared: BTreeSet<&str> = compose["volumes"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut used_volumes = BTreeSet::new();
    for (name, svc) in services {
        assert!(svc["restart"].is_string(), "{name}: no restart policy");
        let limits = &svc["deploy"]["resources"]["limits"];
        assert!(
            limits["memory"].is_string() && limits["cpus"].is_string(),
            "{name}: no resource limits"
        );
        let image = str_of(&svc["image"], name);
        if svc.get("build").is_none() {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                tag != "latest" && tag.contains(|c: char| c.is_ascii_digit()) && tag.contains('.'),
                "{name}: image `{image}` is not pinned to a version"
            );
        }
        let one_shot = svc["restart"] == "no";
        if name == "otelgate" {
            assert!(!Dockerfile::load().instructions("HEALTHCHECK").is_empty());
        } else if !one_shot {
            assert!(
                svc["healthcheck"]["test"].is_array(),
                "{name}: no healthcheck"
            );
        }
        for volume in svc["volumes"].as_array().into_iter().flatten() {
            let source = str_of(volume, name).split(':').next().unwrap();
            if !source.starts_with('.') && !source.starts_with('/') {
                assert!(
                    declared.contains(source),
                    "{name}: volume `{source}` is not declared"
                );
                used_volumes.insert(source.to_owned());
            }
        }
        for (source, _) in bind_mounts(svc) {
            assert!(
                repo(&format!("compose/{source}")).exists(),
                "{name}: mounts missing compose/{source}"
            );
        }
        for dependency in svc["depends_on"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            assert!(
                services.contains_key(dependency),
                "{name} depends on unknown {dependency}"
            );
        }
    }
    let declared: BTreeSet<String> = declared.into_iter().map(str::to_owned).collect();
    assert_eq!(
        declared, used_volumes,
        "declared and used named volumes differ"
    );
    let uptrace: BTreeSet<&str> = services
        .iter()
        .filter(|(_, s)| {
            s["profiles"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p == "uptrace"))
        })
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        uptrace,
        BTreeSet::from([
            "uptrace",
            "uptrace-clickhouse",
            "uptrace-config-check",
            "uptrace-postgres",
            "uptrace-redis"
        ])
    );
    for name in [
        "otelgate",
        "timescaledb",
        "pgbouncer",
        "postgres-exporter",
        "prometheus",
        "lgtm",
    ] {
        assert!(
            service(&compose, name)["profiles"].is_null(),
            "{name} must run without a profile"
        );
    }
    assert_eq!(
        str_of(&service(&compose, "timescaledb")["image"], "image"),
        "timescale/timescaledb:2.28.3-pg15"
    );
}

#[test]
fn compose_gateway_config_loads_and_matches_the_other_services() {
    let compose = compose_with(&filled_env()).unwrap();
    let gateway = service(&compose, "otelgate");
    let docker = Dockerfile::load();
    let env = docker.container_env(&service_env(gateway));
    for var in env.keys().filter(|k| k.starts_with("OTELGATE_")) {
        assert!(var.contains("__"), "{var} names no config key");
    }
    let config = load_config(
        &read("compose/otelgate.toml"),
        "compose/otelgate.toml",
        &env,
    );

    // Ports: config, compose, Dockerfile.
    assert_eq!(host_port(&config.receiver.grpc_endpoint).1, OTLP_GRPC);
    assert_eq!(host_port(&config.receiver.http_endpoint).1, OTLP_HTTP);
    assert_eq!(
        config.telemetry.admin_endpoint,
        format!("0.0.0.0:{ADMIN}"),
        "admin must listen on 0.0.0.0 in a container"
    );
    assert_eq!(
        container_ports(gateway),
        BTreeSet::from([OTLP_GRPC, OTLP_HTTP, ADMIN])
    );
    let exposed: BTreeSet<u16> = docker
        .instructions("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(exposed, BTreeSet::from([OTLP_GRPC, OTLP_HTTP, ADMIN]));
    let health = docker.healthcheck().join(" ");
    assert!(
        health.contains(&format!("/dev/tcp/127.0.0.1/{ADMIN}")) && health.contains("/healthz"),
        "{health}"
    );

    // The config file goes where the ENTRYPOINT reads it.
    let entrypoint: Vec<String> =
        serde_json::from_str(&docker.instructions("ENTRYPOINT")[0]).unwrap();
    let config_path = entrypoint
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("--config");
    assert!(bind_mounts(gateway)
        .iter()
        .any(|(s, t)| s == "./otelgate.toml" && t == config_path));
    let user = &docker.instructions("USER")[0];
    assert!(!user.starts_with('0') && user != "root", "runs as root");
    let stages = docker.instructions("FROM");
    assert!(
        stages[0].starts_with("rust:1-bookworm")
            && stages.last().unwrap().starts_with("debian:bookworm-slim")
    );
    assert!(docker.text.contains("cargo build --release --locked"));

    // Destinations point at compose services.
    let lgtm = &config.exporters["lgtm"];
    assert_eq!(host_port(&lgtm.endpoint), ("lgtm".into(), OTLP_GRPC));
    assert_eq!(lgtm.protocol, Protocol::Grpc);
    let uptrace = &config.exporters["uptrace"];
    assert_eq!(uptrace.protocol, Protocol::Grpc);
    assert_eq!(
        uptrace.queue.when_full,
        WhenFull::Drop,
        "a missing Uptrace must not push back on clients"
    );
    // With the log, a missing Uptrace must not hold the log until it refuses clients.
    assert!(
        uptrace
            .queue
            .max_lag_bytes
            .is_some_and(|lag| lag <= config.log.max_bytes / 2),
        "exporters.uptrace.queue.max_lag_bytes must leave the log to the other destinations"
    );
    let uptrace_config = yaml("compose/uptrace/uptrace.yml");
    let (host, port) = host_port(&uptrace.endpoint);
    assert_eq!(host, "uptrace");
    let grpc_listen = str_of(
        &uptrace_config["listen"]["grpc"]["addr"],
        "uptrace listen.grpc.addr",
    );
    assert_eq!(
        format!(":{port}"),
        grpc_listen,
        "otelgate sends to a port Uptrace does not listen on"
    );
    assert!(uptrace.headers["uptrace-dsn"].contains(&filled_env()["UPTRACE_PROJECT_TOKEN"]));
    let uptrace_env = service_env(service(&compose, "uptrace"));
    let (_, uptrace_vars) = interpolate(
        &read_yaml_values("compose/uptrace/uptrace.yml"),
        &uptrace_env,
    )
    .unwrap();
    for var in uptrace_vars {
        assert!(
            uptrace_env.contains_key(&var),
            "uptrace.yml uses ${{{var}}}, not in the uptrace service's environment"
        );
    }

    // The database path: otelgate -> pgbouncer -> timescaledb.
    let sink = config.timescale.as_ref().expect("[timescale]");
    assert!(
        sink.migrate_on_start,
        "compose relies on otelgate's migrations for the schema"
    );
    let pg: tokio_postgres::Config = sink.url.parse().unwrap();
    let ini = read("compose/pgbouncer/pgbouncer.ini");
    assert_eq!(format!("{:?}", pg.get_hosts()[0]), "Tcp(\"pgbouncer\")");
    assert_eq!(
        pg.get_ports()[0].to_string(),
        ini_value(&ini, "pgbouncer", "listen_port")
    );
    assert_eq!(
        pg.get_password(),
        Some(filled_env()["POSTGRES_PASSWORD"].as_bytes())
    );
    assert_eq!(ini_value(&ini, "pgbouncer", "pool_mode"), "transaction");
    assert_eq!(
        ini_value(&ini, "databases", "*"),
        "host=timescaledb port=5432"
    );
    assert!(
        container_ports(service(&compose, "pgbouncer")).is_empty(),
        "PgBouncer stays on the compose network"
    );
    let exporter_env = service_env(service(&compose, "postgres-exporter"));
    assert!(exporter_env["DATA_SOURCE_URI"].starts_with("timescaledb:5432/"));
    let roles = read("compose/timescaledb/roles.sql");
    assert!(roles.contains(&format!(
        "CREATE ROLE {} ",
        exporter_env["DATA_SOURCE_USER"]
    )));

    // Memory: the container limit leaves room above the memory budget.
    let limit = parse_memory(str_of(
        &gateway["deploy"]["resources"]["limits"]["memory"],
        "limit",
    ));
    assert!(
        limit >= config.pipeline.memory_budget_bytes + (256 << 20),
        "memory limit {limit} too close to the budget"
    );
    let grace = str_of(&gateway["stop_grace_period"], "stop_grace_period")
        .trim_end_matches('s')
        .parse::<u64>()
        .unwrap();
    assert!(
        grace > config.pipeline.shutdown_timeout_seconds,
        "stop_grace_period shorter than the shutdown timeout"
    );

    // Prometheus scrapes the gateway and the exporter where compose runs them.
    let prometheus = yaml("compose/prometheus/prometheus.yml");
    let targets: BTreeMap<&str, Vec<&str>> = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            let targets = job["static_configs"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|c| c["targets"].as_array().unwrap())
                .map(|t| t.as_str().unwrap())
                .collect();
            (job["job_name"].as_str().unwrap(), targets)
        })
        .collect();
    assert_eq!(targets["otelgate"], [format!("otelgate:{ADMIN}")]);
    assert_eq!(targets["postgres-exporter"], ["postgres-exporter:9187"]);
    assert_eq!(
        host_port(str_of(
            &prometheus["remote_write"][0]["url"],
            "remote_write"
        )),
        ("lgtm".into(), 9090)
    );
    assert!(bind_mounts(service(&compose, "prometheus"))
        .iter()
        .any(|(s, t)| s == "./prometheus" && t == "/etc/prometheus"));
}

/// The durable log's directory in the image: where `OTELGATE_LOG__DIR` points, a `VOLUME`, and
/// created for the gateway's user.
#[track_caller]
fn image_log_dir(docker: &Dockerfile) -> String {
    let dir = docker
        .env()
        .remove("OTELGATE_LOG__DIR")
        .expect("the image sets OTELGATE_LOG__DIR, so that the log lands on its volume");
    assert!(
        docker
            .instructions("VOLUME")
            .iter()
            .any(|v| v.split_whitespace().any(|v| v.trim_matches('"') == dir)),
        "the log directory {dir} is not a VOLUME of the image"
    );
    let chowned = docker.instructions("RUN").iter().any(|run| {
        run.split("&&").any(|cmd| {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            words.first() == Some(&"chown") && words.contains(&dir.as_str())
        })
    });
    assert!(
        chowned,
        "the image does not hand {dir} to its non-root user: the log could not be written"
    );
    dir
}

#[test]
fn compose_gateway_keeps_its_log_on_a_named_volume() {
    let compose = compose_with(&filled_env()).unwrap();
    let gateway = service(&compose, "otelgate");
    let docker = Dockerfile::load();
    let image_dir = image_log_dir(&docker);
    let toml = read("compose/otelgate.toml");
    // As the container sees it: the image's ENV, then compose's environment.
    let config = load_config(
        &toml,
        "compose/otelgate.toml",
        &docker.container_env(&service_env(gateway)),
    );
    assert!(config.log.enabled, "compose runs the gateway with its log");
    let dir = config.log.dir.to_str().expect("UTF-8 log.dir").to_owned();
    assert_eq!(
        dir, image_dir,
        "compose's environment moves the log off the image's volume"
    );
    // The file alone says the same, for `otelgate check-config` and runs outside the image.
    let file_only = load_config(&toml, "compose/otelgate.toml", &service_env(gateway));
    assert_eq!(
        file_only.log.dir, config.log.dir,
        "log.dir of otelgate.toml"
    );

    let (volume, _) = named_volumes(gateway)
        .into_iter()
        .find(|(_, target)| *target == dir)
        .unwrap_or_else(|| {
            panic!("no named volume at log.dir {dir}: the log would go with the container")
        });
    assert!(
        compose["volumes"].get(&volume).is_some(),
        "volume `{volume}` is not declared"
    );
    assert!(
        !bind_mounts(gateway)
            .iter()
            .any(|(_, t)| t == &dir || dir.starts_with(&format!("{t}/"))),
        "a bind mount hides the log volume"
    );
    // One gateway per log directory.
    for (name, svc) in compose["services"].as_object().unwrap() {
        if name != "otelgate" {
            assert!(
                !named_volumes(svc).iter().any(|(v, _)| *v == volume),
                "{name} shares the gateway's log volume `{volume}`"
            );
        }
    }
    assert_eq!(
        gateway["deploy"]["replicas"].as_u64().unwrap_or(1),
        1,
        "replicas of the gateway would share one log directory"
    );
}

/// The value of `key` in `[section]` of an ini file.
#[track_caller]
fn ini_value(ini: &str, section: &str, key: &str) -> String {
    let mut current = String::new();
    for line in ini.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
        } else if current == section {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    return v.trim().to_owned();
                }
            }
        }
    }
    panic!("no {key} in [{section}]")
}

#[test]
fn the_cli_checks_the_compose_config_and_names_a_missing_secret() {
    let compose = compose_with(&filled_env()).unwrap();
    let env = service_env(service(&compose, "otelgate"));
    let run = |env: &BTreeMap<String, String>| {
        run_bounded(
            Command::new(env!("CARGO_BIN_EXE_otelgate"))
                .args(["check-config", "--config"])
                .arg(repo("compose/otelgate.toml"))
                .env_clear()
                .envs(env),
            Duration::from_secs(30),
        )
    };
    let ok = run(&env);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && stdout.contains("config OK"),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.contains("lgtm") && stdout.contains("uptrace"),
        "{stdout}"
    );
    let mut without = env.clone();
    without.remove("POSTGRES_PASSWORD");
    let failed = run(&without);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success() && stderr.contains("POSTGRES_PASSWORD"),
        "{stderr}"
    );
}

// ---- Kubernetes -----------------------------------------------------------------------------

fn kubernetes() -> Vec<Value> {
    let dir = repo("deploy/kubernetes");
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml resources and the files differ"
    );
    present
        .iter()
        .flat_map(|name| yaml_docs(&read(&format!("deploy/kubernetes/{name}")), name))
        .collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

/// The gateway as the manifests run it.
struct KubernetesGateway {
    objects: Vec<Value>,
    /// The StatefulSet `otelgate`.
    set: Value,
    /// Its pod template.
    pod: Value,
    /// The config the pod would load: the ConfigMap's otelgate.toml with the image's `ENV` and
    /// the pod's environment (dummy values for secrets).
    config: Config,
}

fn kubernetes_gateway() -> KubernetesGateway {
    let objects = kubernetes();
    assert!(
        objects.iter().all(|o| o["kind"] != "Secret"),
        "manifests must reference Secrets, not carry them"
    );
    // Each replica needs its own log volume back after a restart: not a Deployment.
    let workloads: Vec<String> = objects
        .iter()
        .filter(|o| {
            ["Deployment", "ReplicaSet", "DaemonSet", "StatefulSet"]
                .contains(&o["kind"].as_str().unwrap_or(""))
        })
        .map(|o| {
            let name = o["metadata"]["name"].as_str().unwrap_or("");
            format!("{}/{name}", o["kind"].as_str().unwrap())
        })
        .collect();
    assert_eq!(workloads, ["StatefulSet/otelgate"]);
    let set = object(&objects, "StatefulSet", "otelgate").clone();
    let pod = set["spec"]["template"].clone();
    assert!(selects(
        &set["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    let container = &pod["spec"]["containers"][0];
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().unwrap() {
        let name = str_of(&var["name"], "env name").to_owned();
        let value = match var["value"].as_str() {
            Some(v) => v.to_owned(),
            None => {
                let key = &var["valueFrom"]["secretKeyRef"];
                assert!(
                    key["name"].is_string() && key["key"].is_string(),
                    "{name}: neither value nor secretKeyRef"
                );
                format!("dummy-{}", key["key"].as_str().unwrap())
            }
        };
        let secret = ["PASSWORD", "DSN", "TOKEN", "SECRET"]
            .iter()
            .any(|s| name.contains(s));
        assert!(
            !secret || var["value"].is_null(),
            "{name} must come from a Secret"
        );
        env.insert(name, value);
    }
    let env = Dockerfile::load().container_env(&env);
    let config_map = object(&objects, "ConfigMap", "otelgate-config");
    let toml = str_of(&config_map["data"]["otelgate.toml"], "otelgate.toml");
    let config = load_config(toml, "deploy/kubernetes/configmap.yaml", &env);
    KubernetesGateway {
        objects,
        set,
        pod,
        config,
    }
}

#[test]
fn kubernetes_pod_runs_the_image_with_the_shipped_config() {
    let KubernetesGateway { pod, config, .. } = kubernetes_gateway();
    let container = &pod["spec"]["containers"][0];
    assert_eq!(config.telemetry.admin_endpoint, format!("0.0.0.0:{ADMIN}"));

    let ports: BTreeMap<&str, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([
            ("admin", ADMIN as u64),
            ("otlp-grpc", OTLP_GRPC as u64),
            ("otlp-http", OTLP_HTTP as u64)
        ])
    );
    assert_eq!(host_port(&config.receiver.grpc_endpoint).1, OTLP_GRPC);
    assert_eq!(host_port(&config.receiver.http_endpoint).1, OTLP_HTTP);
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "admin", "{probe}");
    }

    // The config file lands where the image's ENTRYPOINT reads it.
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap();
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap();
    assert_eq!(volume["configMap"]["name"], "otelgate-config");
    let file = format!(
        "{}/{}",
        mount["mountPath"].as_str().unwrap(),
        volume["configMap"]["items"][0]["path"].as_str().unwrap()
    );
    assert!(
        Dockerfile::load().instructions("ENTRYPOINT")[0].contains(&file),
        "{file}"
    );
    let user = Dockerfile::load().instructions("USER")[0]
        .split(':')
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], user);

    // Shutdown and memory.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > config.pipeline.shutdown_timeout_seconds + 5,
        "grace period {grace}"
    );
    let limit = parse_memory(str_of(
        &container["resources"]["limits"]["memory"],
        "memory limit",
    ));
    assert!(limit >= config.pipeline.memory_budget_bytes + (256 << 20));
}

#[test]
fn kubernetes_objects_select_the_gateway_pods() {
    let KubernetesGateway {
        objects,
        pod,
        config,
        ..
    } = kubernetes_gateway();
    let labels = &pod["metadata"]["labels"];
    // Services, autoscaling, disruption budget, network policy and scraping select the pods.
    let service = object(&objects, "Service", "otelgate");
    assert!(selects(&service["spec"]["selector"], labels));
    let targets: BTreeMap<u64, &str> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["targetPort"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        targets,
        BTreeMap::from([
            (OTLP_GRPC as u64, "otlp-grpc"),
            (OTLP_HTTP as u64, "otlp-http")
        ])
    );
    let admin = object(&objects, "Service", "otelgate-admin");
    assert!(selects(&admin["spec"]["selector"], labels));
    assert_eq!(admin["spec"]["ports"][0]["targetPort"], "admin");
    let monitor = object(&objects, "ServiceMonitor", "otelgate");
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &admin["metadata"]["labels"]
    ));
    assert!(
        !selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &service["metadata"]["labels"]
        ),
        "the ServiceMonitor must not scrape the OTLP Service"
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        admin["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let hpa = object(&objects, "HorizontalPodAutoscaler", "otelgate");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "StatefulSet");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["apiVersion"], "apps/v1");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "otelgate");
    let pdb = object(&objects, "PodDisruptionBudget", "otelgate");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    assert!(
        pdb["spec"]["minAvailable"].as_u64().unwrap()
            < hpa["spec"]["minReplicas"].as_u64().unwrap()
    );
    let policy = object(&objects, "NetworkPolicy", "otelgate");
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        labels
    ));
    let port_set = |rules: &Value| -> BTreeSet<u64> {
        rules
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["ports"].as_array().unwrap())
            .map(|p| p["port"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        port_set(&policy["spec"]["ingress"]),
        BTreeSet::from([OTLP_GRPC as u64, OTLP_HTTP as u64, ADMIN as u64])
    );
    let sink: tokio_postgres::Config = config.timescale.as_ref().unwrap().url.parse().unwrap();
    let egress = port_set(&policy["spec"]["egress"]);
    assert!(
        egress.contains(&(sink.get_ports()[0] as u64)),
        "egress does not allow the database port"
    );
    for exporter in config.exporters.values() {
        assert!(
            egress.contains(&(host_port(&exporter.endpoint).1 as u64)),
            "egress does not allow {}",
            exporter.endpoint
        );
    }
}

#[test]
fn kubernetes_replicas_keep_their_log_on_a_claim_of_their_own() {
    let KubernetesGateway {
        objects,
        set,
        pod,
        config,
    } = kubernetes_gateway();
    let image_dir = image_log_dir(&Dockerfile::load());
    assert!(config.log.enabled, "the pods run with the durable log");
    let dir = config.log.dir.to_str().expect("UTF-8 log.dir").to_owned();
    assert_eq!(
        dir, image_dir,
        "the pod moves the log off the image's volume"
    );
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"], true,
        "the root filesystem is read-only, so the log must be on a mount"
    );
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount = mounts
        .iter()
        .find(|m| m["mountPath"] == dir.as_str())
        .unwrap_or_else(|| panic!("nothing is mounted at log.dir {dir}"));
    assert_ne!(mount["readOnly"], true, "the log volume is read-only");
    let name = str_of(&mount["name"], "volumeMounts name");
    // From a claim template, so that the volume comes back with the pod: a pod volume
    // (emptyDir) would lose the log, a shared claim would put two gateways on one log.
    assert!(
        !pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["name"] == name),
        "`{name}` at {dir} must come from volumeClaimTemplates, not the pod's volumes"
    );
    let claim = set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no volumeClaimTemplate `{name}`"));
    let modes: Vec<&str> = claim["spec"]["accessModes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        !modes.is_empty()
            && modes
                .iter()
                .all(|m| ["ReadWriteOnce", "ReadWriteOncePod"].contains(m)),
        "claim `{name}`: access modes {modes:?}, want one writer"
    );
    let size = parse_memory(str_of(
        &claim["spec"]["resources"]["requests"]["storage"],
        "storage request",
    ));
    assert!(
        size >= config.log.max_bytes + config.log.min_free_bytes,
        "claim `{name}` ({size} bytes) is smaller than log.max_bytes + log.min_free_bytes"
    );
    // Scaling down or deleting must not delete a claim that still holds undelivered data.
    let retention = &set["spec"]["persistentVolumeClaimRetentionPolicy"];
    for when in ["whenScaled", "whenDeleted"] {
        assert!(
            retention[when].is_null() || retention[when] == "Retain",
            "persistentVolumeClaimRetentionPolicy.{when} deletes logs"
        );
    }
    assert_eq!(set["spec"]["podManagementPolicy"], "Parallel");
    let governing = object(
        &objects,
        "Service",
        str_of(&set["spec"]["serviceName"], "serviceName"),
    );
    assert_eq!(
        governing["spec"]["clusterIP"], "None",
        "serviceName must be headless"
    );
    assert!(selects(
        &governing["spec"]["selector"],
        &pod["metadata"]["labels"]
    ));
}

// ---- Grafana provisioning --------------------------------------------------------------------

#[test]
fn grafana_provisioning_matches_compose_and_the_dashboards() {
    let compose = compose_with(&filled_env()).unwrap();
    let lgtm = service(&compose, "lgtm");
    let mounts = bind_mounts(lgtm);
    let datasources = yaml("compose/grafana/provisioning/datasources/otelgate.yaml");
    let mut uids: BTreeSet<String> = LGTM_DATASOURCES.iter().map(|s| s.to_string()).collect();
    for ds in datasources["datasources"].as_array().unwrap() {
        assert!(
            uids.insert(str_of(&ds["uid"], "uid").to_owned()),
            "duplicate datasource uid {}",
            ds["uid"]
        );
    }
    let timescale = datasources["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["uid"] == "postgres-timescale")
        .expect("uid postgres-timescale");
    assert_eq!(timescale["url"], "timescaledb:5432");
    let reader = str_of(&timescale["user"], "user");
    assert!(read("compose/timescaledb/roles.sql").contains(&format!("CREATE ROLE {reader} ")));
    // Grafana expands $VAR from the lgtm container's environment.
    let env = service_env(lgtm);
    let text = read_yaml_values("compose/grafana/provisioning/datasources/otelgate.yaml");
    let (_, vars) = interpolate(&text, &env).unwrap();
    for var in vars {
        assert!(
            env.contains_key(&var),
            "datasource uses ${var}, not in the lgtm service's environment"
        );
    }
    assert!(mounts.iter().any(
        |(s, t)| s == "./grafana/provisioning/datasources/otelgate.yaml"
            && t.starts_with("/otel-lgtm/grafana/conf/provisioning/datasources/")
    ));
    let providers = yaml("compose/grafana/provisioning/dashboards/otelgate.yaml");
    let path = str_of(
        &providers["providers"][0]["options"]["path"],
        "provider path",
    );
    assert!(
        mounts
            .iter()
            .any(|(s, t)| s == "./grafana/dashboards" && t == path),
        "dashboards are not mounted at {path}"
    );
    let home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].clone();
    assert!(
        repo(&home.replace(path, "compose/grafana/dashboards")).exists(),
        "home dashboard {home}"
    );

    let mut dashboard_uids = BTreeSet::new();
    let mut aggregates_used = BTreeSet::new();
    for (path, dashboard) in dashboards() {
        assert!(
            dashboard_uids.insert(str_of(&dashboard["uid"], "uid").to_owned()),
            "{path}: duplicate uid"
        );
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{path}: duplicate panel id"
            );
            assert!(
                panel["gridPos"]["w"].is_u64(),
                "{path}: panel without gridPos"
            );
            if panel["type"] == "row" {
                continue;
            }
            let mut refs = vec![&panel["datasource"]["uid"]];
            refs.extend(
                panel["targets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| &t["datasource"]["uid"]),
            );
            for uid in refs {
                assert!(
                    uids.contains(str_of(uid, "datasource uid")),
                    "{path}: panel {} uses unknown datasource {uid}",
                    panel["title"]
                );
            }
            for target in panel["targets"].as_array().unwrap() {
                let query = target["expr"].as_str().or(target["rawSql"].as_str());
                assert!(
                    query.is_some_and(|q| !q.trim().is_empty()),
                    "{path}: panel {} has an empty query",
                    panel["title"]
                );
            }
        }
    }
    for (_, sql) in dashboard_sql() {
        for view in [
            "frames_per_camera_hourly",
            "frames_per_camera_daily",
            "detections_per_camera_hourly",
            "detections_per_camera_daily",
            "detections_per_class_hourly",
            "llm_usage_hourly",
            "llm_usage_daily",
        ] {
            if sql.contains(view) {
                aggregates_used.insert(view);
            }
        }
    }
    for view in [
        "frames_per_camera_hourly",
        "detections_per_camera_hourly",
        "detections_per_class_hourly",
        "llm_usage_hourly",
    ] {
        assert!(
            aggregates_used.contains(view),
            "the domain dashboard does not read {view}"
        );
    }
}

// ---- 2. every metric the dashboards and alerts use is exported ---------------------------------

/// Metric names defined as constants in src/telemetry.rs.
fn telemetry_names() -> BTreeSet<String> {
    read("src/telemetry.rs")
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("pub const ")?
                .split_once(": &str = \"")
        })
        .map(|(_, value)| value.trim_end_matches("\";").to_owned())
        .filter(|value| value.starts_with("otelgate_"))
        .collect()
}

/// Metrics named in dashboards and rules that start with `prefix` (as whole identifiers).
fn used_metrics(prefixes: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (origin, expr) in prometheus_expressions() {
        for ident in promql_identifiers(&expr) {
            if prefixes.iter().any(|p| ident.starts_with(p)) {
                used.entry(ident).or_default().push(origin.clone());
            }
        }
    }
    used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_metrics_are_exported_after_a_load_run() {
    use otelgate::demo::generator::{kv_str, TelemetryGenerator};

    let pg = TempPostgres::start(false).unwrap();
    let backend = RecordingBackend::start().await.unwrap();
    let stuck = RecordingBackend::start().await.unwrap();
    stuck.set_hanging(true);
    let mut config = config_for(&[
        ("lgtm", &backend, Protocol::Grpc),
        ("stuck", &stuck, Protocol::Grpc),
    ]);
    // lgtm takes no metrics, so a metrics request has no destination (refused items).
    config.exporters.get_mut("lgtm").unwrap().signals = vec![Signal::Traces, Signal::Logs];
    let stuck_config = config.exporters.get_mut("stuck").unwrap();
    stuck_config.signals = vec![Signal::Logs];
    stuck_config.queue.capacity = 1;
    stuck_config.queue.when_full = WhenFull::Drop;
    stuck_config.concurrency = 1;
    stuck_config.batch.max_wait_ms = 0;
    config.timescale = Some(sink_config(&pg.url()));
    // Memory-only queues, so the `drop` policy produces dropped items (with the durable log
    // the log is the buffer and nothing is dropped).
    config.log.enabled = false;
    let gateway = start(config).await;
    let grpc = gateway.grpc_addr();

    // A retry, a non-retryable failure and a partial success from the backend.
    backend.fail_next(Failure::unavailable(), 1);
    backend.fail_next(Failure::invalid(), 1);
    backend.fail_next(Failure::partial(1), 1);
    let mut generator = TelemetryGenerator::new(11);
    for _ in 0..6 {
        let (request, _) = generator.traces(5);
        grpc_export(grpc, Signal::Traces, request.encode_to_vec().into(), &[])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    grpc_export(grpc, Signal::Traces, Bytes::from(fixture(TRACES)), &[])
        .await
        .unwrap();
    // Logs fill the stuck destination's queue: later ones are dropped for it.
    for _ in 0..4 {
        let (request, _) = generator.logs(5);
        grpc_export(grpc, Signal::Logs, request.encode_to_vec().into(), &[])
            .await
            .unwrap();
    }
    // A frame whose width is no number: kept aside as a rejected row.
    let bad = crate::timescale::traces(vec![opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: vec![7; 16],
        span_id: vec![7; 8],
        name: "frame.process".into(),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        attributes: vec![
            kv_str("camera.id", "cam-bad"),
            kv_str("frame.width", "wide"),
        ],
        ..Default::default()
    }]);
    grpc_export(grpc, Signal::Traces, bad, &[]).await.unwrap();
    // Refusals: garbage, and metrics nobody takes.
    assert!(grpc_export(
        grpc,
        Signal::Traces,
        Bytes::from_static(b"\xff\xff not protobuf"),
        &[]
    )
    .await
    .is_err());
    let (metrics_request, _) = generator.metrics();
    assert!(grpc_export(
        grpc,
        Signal::Metrics,
        metrics_request.encode_to_vec().into(),
        &[]
    )
    .await
    .is_err());

    let db = connect(&pg.url()).await;
    assert!(wait_count(&db, "SELECT count(*) FROM frame_metadata", 50).await >= 50);
    let wanted = [
        "otelgate_exporter_retries_total",
        "otelgate_exporter_failed_items_total",
        "otelgate_exporter_rejected_items_total",
        "otelgate_exporter_dropped_items_total",
        "otelgate_sink_rejected_rows_total",
        "otelgate_receiver_refused_items_total",
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    let exported = loop {
        let exported = exported_series(gateway.admin_addr()).await;
        if wanted.iter().all(|w| exported.series.contains(*w))
            || tokio::time::Instant::now() >= deadline
        {
            break exported;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stuck.set_hanging(false);
    gateway.shutdown().await;

    // The durable log's metrics, from gateways with the log, in the same process (the
    // Prometheus recorder is process-wide, so /metrics shows both runs).
    let durable = durable_log_run(&pg).await;
    let exported = Exported {
        series: exported.series.union(&durable.series).cloned().collect(),
        histograms: exported
            .histograms
            .union(&durable.histograms)
            .cloned()
            .collect(),
    };

    let defined = telemetry_names();
    let mut missing = Vec::new();
    for (name, origins) in used_metrics(&["otelgate_"]) {
        // A histogram's series carry a suffix; the constant names the histogram.
        let suffixed = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| defined.contains(*b)));
        let base = suffixed.unwrap_or(&name);
        assert!(
            defined.contains(base),
            "{name} (used by {origins:?}) is not a metric of src/telemetry.rs"
        );
        if suffixed.is_some() && !NOT_IN_A_HEALTHY_RUN.iter().any(|(n, _)| *n == base) {
            assert!(
                exported.histograms.contains(base),
                "{name}: {base} is not exported as a histogram"
            );
        }
        if let Some((_, why)) = NOT_IN_A_HEALTHY_RUN.iter().find(|(n, _)| *n == base) {
            println!(
                "EXCLUDED {name}: {why} (used by {} expressions)",
                origins.len()
            );
            continue;
        }
        if !exported.series.contains(&name) {
            missing.push(format!("{name} (used by {origins:?})"));
        }
    }
    assert!(
        missing.is_empty(),
        "used but not exported after the load run: {missing:#?}\nexported: {:#?}",
        exported.series
    );
    let used = used_metrics(&["otelgate_"]);
    for (name, _) in NOT_IN_A_HEALTHY_RUN {
        assert!(
            used.keys().any(|u| u.starts_with(name)),
            "stale exclusion {name}"
        );
    }
    println!(
        "{} otelgate metric names used by dashboards and rules, all exported",
        used.len()
    );
}

/// Polls `name{labels}` on `admin` until `done` holds for it (or [`WAIT`] passes); returns it.
async fn wait_metric(
    admin: std::net::SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = metric(admin, name, labels).await;
        if done(value) || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The durable log's part of the load run, each situation its metrics describe made to happen
/// and checked:
///
/// 1. a gateway with its log, the TimescaleDB sink, a healthy backend, a hanging backend that
///    holds the log (lag) and a hanging backend past its `max_lag_bytes` (dropped records);
/// 2. a restart on the same directory after a torn write (a cut tail) and with the sink's
///    cursor as a crash before its next save leaves it (replayed records, replayed rows the
///    sink skips by its ledger), with a disk floor no disk has (refused requests).
///
/// Write failures (`reason="io"`) are the one situation left out: the name is the same
/// counter as the refusals above, and its alert is covered by promtool's tests.
async fn durable_log_run(pg: &TempPostgres) -> Exported {
    let backend = RecordingBackend::start().await.unwrap();
    let holding = RecordingBackend::start().await.unwrap();
    let lagging = RecordingBackend::start().await.unwrap();
    holding.set_hanging(true);
    lagging.set_hanging(true);
    let mut config = config_for(&[
        ("lgtm", &backend, Protocol::Grpc),
        ("holding", &holding, Protocol::Grpc),
        ("lagging", &lagging, Protocol::Grpc),
    ]);
    config.timescale = Some(sink_config(&pg.url()));
    config.pipeline.shutdown_timeout_seconds = 1;
    config.log.segment_bytes = 64 * 1024;
    config.log.cursor_interval_ms = 50;
    for name in ["holding", "lagging"] {
        config.exporters.get_mut(name).unwrap().timeout_ms = 200;
    }
    config
        .exporters
        .get_mut("lagging")
        .unwrap()
        .queue
        .max_lag_bytes = Some(128 * 1024);
    let dir = config.log.dir.clone();
    let db = connect(&pg.url()).await;
    let frames_before = count(&db, "SELECT count(*) FROM frame_metadata").await;

    let gateway = start(config.clone()).await;
    let admin = gateway.admin_addr();
    // The sink's cursor as saved at start, before it wrote anything.
    let sink_cursor = dir.join("cursors").join("timescale");
    let cursor_at_start = std::fs::read(&sink_cursor).expect("the sink's cursor file");
    let body = Bytes::from(fixture(TRACES));
    let requests: u64 = 24; // 24 x 14 KiB: past the lag limit, over several segments
    for _ in 0..requests {
        grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[])
            .await
            .expect("the log accepts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let frames = frames_before + 20 * requests as i64;
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", frames).await,
        frames
    );
    assert!(
        backend.wait_for(Signal::Traces, requests * 30, WAIT).await,
        "the healthy backend did not get every span"
    );
    let dropped = wait_metric(
        admin,
        "otelgate_log_dropped_records_total",
        &[("destination", "lagging"), ("reason", "lag_limit")],
        |v| v > 0.0,
    )
    .await;
    let lag_records = wait_metric(
        admin,
        "otelgate_log_lag_records",
        &[("destination", "holding")],
        |v| v >= requests as f64,
    )
    .await;
    let lag_age = wait_metric(
        admin,
        "otelgate_log_lag_age_seconds",
        &[("destination", "holding")],
        |v| v > 0.0,
    )
    .await;
    let report = gateway.shutdown().await;
    assert!(dropped > 0.0, "nothing dropped past the lag limit");
    assert_eq!(lag_records, requests as f64, "lag of the holding backend");
    assert!(lag_age > 0.0, "no lag age for the holding backend");
    assert!(
        report
            .kept_in_log
            .iter()
            .any(|(name, records)| name == "holding" && *records == requests),
        "the holding backend's backlog is not kept in the log: {:?}",
        report.kept_in_log
    );

    // A write torn by a crash: part of a record after the last synced one.
    let segment = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .expect("a log segment");
    let torn = [0xA5u8; 7];
    std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&torn)
        .unwrap();
    // A crash between the sink's commits and its next cursor save: every row is replayed.
    std::fs::write(&sink_cursor, &cursor_at_start).unwrap();
    let mut restart = config;
    restart.log.min_free_bytes = u64::MAX / 2;
    let gateway = start(restart).await;
    let admin = gateway.admin_addr();
    let truncated = metric(admin, "otelgate_log_truncated_bytes_total", &[]).await;
    let skipped = wait_metric(
        admin,
        "otelgate_sink_replay_skipped_rows_total",
        &[("table", "frame_metadata")],
        |v| v >= 20.0 * requests as f64,
    )
    .await;
    let replayed_sink = metric(
        admin,
        "otelgate_log_replayed_records_total",
        &[("destination", "timescale")],
    )
    .await;
    let replayed_holding = wait_metric(
        admin,
        "otelgate_log_replayed_records_total",
        &[("destination", "holding")],
        |v| v > 0.0,
    )
    .await;
    let refusal = grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[])
        .await
        .expect_err("below the disk floor");
    let refused = metric(
        admin,
        "otelgate_log_refused_requests_total",
        &[("reason", "disk_floor")],
    )
    .await;
    let frames_after = count(&db, "SELECT count(*) FROM frame_metadata").await;
    let exported = exported_series(admin).await;
    gateway.shutdown().await;
    println!(
        "durable log: {requests} requests; {dropped} records dropped past the lag limit; \
         holding backend {lag_records} records behind ({lag_age:.2} s); after a torn write \
         {truncated} bytes cut; {replayed_sink} records replayed to the sink, which skipped \
         {skipped} frame rows; {replayed_holding} replayed to the holding backend; {refused} \
         refused below the disk floor"
    );
    assert_eq!(truncated, torn.len() as f64, "the torn bytes are cut");
    assert_eq!(
        replayed_sink, requests as f64,
        "the sink reads everything again"
    );
    assert_eq!(
        skipped,
        20.0 * requests as f64,
        "every frame row is skipped"
    );
    assert_eq!(frames_after, frames, "replayed rows were written twice");
    assert!(
        replayed_holding > 0.0,
        "nothing replayed to the holding backend"
    );
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert_eq!(refused, 1.0);
    exported
}

/// What a gateway's /metrics exports.
struct Exported {
    series: BTreeSet<String>,
    histograms: BTreeSet<String>,
}

async fn exported_series(admin: std::net::SocketAddr) -> Exported {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let histograms = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .map(str::to_owned)
        .collect();
    Exported { series, histograms }
}

/// The metrics postgres_exporter makes of queries.yaml: `<namespace>_<column>` for each
/// GAUGE/COUNTER column, with the namespace's query and its labels and values.
struct ExporterQuery {
    namespace: String,
    query: String,
    columns: BTreeMap<String, String>,
}

fn exporter_queries() -> Vec<ExporterQuery> {
    let queries = yaml("compose/postgres-exporter/queries.yaml");
    queries
        .as_object()
        .unwrap()
        .iter()
        .map(|(namespace, spec)| {
            let columns = spec["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let (column, def) = m.as_object().unwrap().iter().next().unwrap();
                    let usage = str_of(&def["usage"], column).to_owned();
                    assert!(
                        ["LABEL", "GAUGE", "COUNTER"].contains(&usage.as_str()),
                        "{namespace}.{column}: usage {usage}"
                    );
                    assert!(
                        def["description"].is_string(),
                        "{namespace}.{column}: no description"
                    );
                    (column.clone(), usage)
                })
                .collect();
            ExporterQuery {
                namespace: namespace.clone(),
                query: str_of(&spec["query"], namespace).to_owned(),
                columns,
            }
        })
        .collect()
}

#[test]
fn database_metrics_in_dashboards_and_alerts_come_from_postgres_exporter() {
    let mut produced: BTreeSet<String> = POSTGRES_EXPORTER_BUILTINS
        .iter()
        .map(|s| s.to_string())
        .collect();
    for query in exporter_queries() {
        assert_eq!(
            query.namespace.starts_with("timescaledb_"),
            needs_timescaledb(&query.query),
            "{}: the namespace prefix must say whether it needs TimescaleDB",
            query.namespace
        );
        for (column, usage) in &query.columns {
            if usage != "LABEL" {
                produced.insert(format!("{}_{column}", query.namespace));
            }
        }
    }
    let used = used_metrics(&["pg_", "timescaledb_"]);
    assert!(!used.is_empty());
    for (name, origins) in &used {
        assert!(
            produced.contains(name),
            "{name} (used by {origins:?}) comes neither from queries.yaml \
             nor from postgres_exporter's default collectors"
        );
    }
    // Recording rules used in expressions are defined.
    let rules = yaml("compose/prometheus/rules/otelgate.rules.yml");
    let recorded: BTreeSet<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["record"].as_str())
        .collect();
    for (origin, expr) in prometheus_expressions() {
        for ident in promql_identifiers(&expr)
            .into_iter()
            .filter(|i| i.contains(':'))
        {
            assert!(
                recorded.contains(ident.as_str()),
                "{origin}: {ident} is not a recording rule"
            );
        }
    }
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["alert"].is_string())
        {
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{}: severity",
                rule["alert"]
            );
            assert!(
                rule["annotations"]["summary"].is_string()
                    && rule["annotations"]["description"].is_string(),
                "{}: annotations",
                rule["alert"]
            );
        }
    }
    println!(
        "{} database metric names used by dashboards and rules, all produced",
        used.len()
    );
}

// ---- 3. every dashboard and exporter query runs against the migrated schema -------------------

/// Runs `psql` of the cluster's installation.
fn psql(pg: &TempPostgres, args: &[&str]) -> std::process::Output {
    let bin = find_bin_dir().unwrap().join("psql");
    run_bounded(
        Command::new(bin)
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
            .arg(pg.port().to_string())
            .args(["-U", "postgres", "-d", "postgres"])
            .args(args),
        Duration::from_secs(60),
    )
}

/// PostgreSQL's own message for a failed statement.
fn db_error(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map_or_else(|| error.to_string(), |db| db.message().to_owned())
}

async fn check_sql_against(pg: &TempPostgres, label: &str) {
    // The read-only roles compose creates, from the shipped SQL.
    let roles = psql(
        pg,
        &[
            "-v",
            "grafana_password=g",
            "-v",
            "exporter_password=e",
            "-f",
            repo("compose/timescaledb/roles.sql").to_str().unwrap(),
        ],
    );
    assert!(
        roles.status.success(),
        "roles.sql: {}",
        String::from_utf8_lossy(&roles.stderr)
    );

    let gateway = gateway_with_sink(sink_config(&pg.url())).await;
    let mut generator = otelgate::demo::generator::TelemetryGenerator::new(5);
    for _ in 0..5 {
        let (request, _) = generator.traces(10);
        grpc_export(
            gateway.grpc_addr(),
            Signal::Traces,
            request.encode_to_vec().into(),
            &[],
        )
        .await
        .unwrap();
    }
    let admin = connect(&pg.url()).await;
    assert!(wait_count(&admin, "SELECT count(*) FROM frame_metadata", 50).await >= 50);
    assert!(wait_count(&admin, "SELECT count(*) FROM llm_requests", 1).await >= 1);
    let timescaledb = pg.timescaledb()
        && !admin
            .query(
                "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'",
                &[],
            )
            .await
            .unwrap()
            .is_empty();
    if timescaledb {
        // One refresh, so that job statistics exist.
        let refresh = "SELECT min(job_id) FROM timescaledb_information.jobs \
                       WHERE proc_name = 'policy_refresh_continuous_aggregate'";
        let job: i32 = admin.query_one(refresh, &[]).await.unwrap().get(0);
        crate::timescale::run_exclusive(&admin, &format!("CALL run_job({job})")).await;
    }
    let camera: String = admin
        .query_one(
            "SELECT camera_id FROM frame_metadata WHERE camera_id IS NOT NULL LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let model: String = admin
        .query_one(
            "SELECT request_model FROM llm_requests WHERE request_model IS NOT NULL LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let variables = BTreeMap::from([
        ("camera", format!("'{camera}'")),
        ("model", format!("'{model}'")),
    ]);
    let as_role = |role: &str| format!("postgres://{role}@127.0.0.1:{}/postgres", pg.port());

    let grafana = connect(&as_role("grafana_reader")).await;
    let (mut ran, mut skipped) = (0, 0);
    for (origin, sql) in dashboard_sql() {
        if needs_timescaledb(&sql) && !timescaledb {
            println!("[{label}] {origin}: TimescaleDB-only, left to the _needs_timescaledb test");
            skipped += 1;
            continue;
        }
        let sql = grafana_sql(&sql, &variables);
        let rows = grafana.simple_query(&sql).await.unwrap_or_else(|e| {
            panic!(
                "[{label}] {origin} fails as grafana_reader: {}\n{sql}",
                db_error(&e)
            )
        });
        let rows = rows
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        if origin.contains("Frames per camera (hourly)") {
            assert!(
                rows > 0,
                "[{label}] {origin} shows nothing for a camera that has frames"
            );
        }
        ran += 1;
    }
    let exporter = connect(&as_role("postgres_exporter")).await;
    for query in exporter_queries() {
        if query.namespace.starts_with("timescaledb_") && !timescaledb {
            println!(
                "[{label}] queries.yaml {}: TimescaleDB-only, left to the _needs_timescaledb test",
                query.namespace
            );
            skipped += 1;
            continue;
        }
        let statement = exporter.prepare(&query.query).await.unwrap_or_else(|e| {
            panic!(
                "[{label}] queries.yaml {} fails: {}",
                query.namespace,
                db_error(&e)
            )
        });
        let columns: BTreeMap<String, String> = statement
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_().name().to_owned()))
            .collect();
        assert_eq!(
            columns.keys().collect::<Vec<_>>(),
            query.columns.keys().collect::<Vec<_>>(),
            "{}: the query's columns and `metrics` differ",
            query.namespace
        );
        for (column, usage) in &query.columns {
            let ty = columns[column].as_str();
            let ok = if usage == "LABEL" {
                ["text", "varchar", "name"].contains(&ty)
            } else {
                ["float8", "float4", "int8", "int4", "int2", "numeric"].contains(&ty)
            };
            assert!(
                ok,
                "{}.{column}: {usage} column of type {ty}",
                query.namespace
            );
        }
        exporter
            .simple_query(&query.query)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "[{label}] queries.yaml {} fails as postgres_exporter: {}",
                    query.namespace,
                    db_error(&e)
                )
            });
        ran += 1;
    }
    println!(
        "[{label}] {ran} dashboard and exporter queries ran, {skipped} left out (TimescaleDB-only)"
    );
    assert!(
        !timescaledb || skipped == 0,
        "with TimescaleDB every query runs"
    );
    gateway.shutdown().await;
}

/// Every dashboard and exporter query, TimescaleDB-only ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_exporter_sql_runs_against_the_migrated_schema_needs_timescaledb() {
    let pg = crate::postgres_with_timescaledb(false);
    check_sql_against(&pg, "timescaledb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portable_dashboard_and_exporter_sql_runs_on_plain_postgresql() {
    let pg = TempPostgres::start_with(false, false).unwrap();
    check_sql_against(&pg, "plain").await;
}

// ---- 4. promtool --------------------------------------------------------------------------------

/// otelgate exports no metric of `log.max_bytes`: the log-size alert and panel compare with the
/// recording rule `otelgate:log_max_bytes`, which must be `log.max_bytes` of every shipped
/// config, and the alert must say which size it assumes.
#[test]
fn the_log_size_alert_assumes_the_shipped_log_max_bytes() {
    let rules = yaml("compose/prometheus/rules/otelgate.rules.yml");
    let all: Vec<&Value> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let recorded: Vec<&&Value> = all
        .iter()
        .filter(|r| r["record"] == "otelgate:log_max_bytes")
        .collect();
    assert_eq!(
        recorded.len(),
        1,
        "one recording rule otelgate:log_max_bytes"
    );
    let expr = str_of(&recorded[0]["expr"], "otelgate:log_max_bytes");
    let assumed: u64 = expr
        .trim()
        .strip_prefix("vector(")
        .and_then(|e| e.strip_suffix(')'))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("otelgate:log_max_bytes is `{expr}`, not vector(<bytes>)"));
    let compose = compose_with(&filled_env()).unwrap();
    let env = Dockerfile::load().container_env(&service_env(service(&compose, "otelgate")));
    let compose_config = load_config(
        &read("compose/otelgate.toml"),
        "compose/otelgate.toml",
        &env,
    );
    let kubernetes_config = kubernetes_gateway().config;
    for (origin, config) in [
        ("compose/otelgate.toml", &compose_config),
        ("deploy/kubernetes/configmap.yaml", &kubernetes_config),
    ] {
        assert_eq!(
            assumed, config.log.max_bytes,
            "otelgate:log_max_bytes differs from log.max_bytes of {origin}"
        );
    }
    let alert = all
        .iter()
        .find(|r| r["alert"] == "OtelgateLogNearlyFull")
        .expect("alert OtelgateLogNearlyFull");
    assert!(
        str_of(&alert["expr"], "expr").contains("otelgate:log_max_bytes"),
        "OtelgateLogNearlyFull does not compare with otelgate:log_max_bytes"
    );
    assert_eq!(assumed % (1 << 30), 0, "log.max_bytes in whole GiB");
    let size = format!("{} GiB", assumed >> 30);
    assert!(
        str_of(&alert["annotations"]["description"], "description").contains(&size),
        "OtelgateLogNearlyFull's description does not say it assumes {size}"
    );
    println!(
        "otelgate:log_max_bytes = {assumed} ({size}) = log.max_bytes of compose and Kubernetes"
    );
}

#[test]
fn promtool_accepts_the_rules_and_the_config_needs_prometheus() {
    let Some(promtool) = installed("promtool") else {
        crate::missing(
            "prometheus",
            "promtool is not on PATH (apt-get install prometheus)",
        );
    };
    for args in [
        vec![
            "check",
            "rules",
            "compose/prometheus/rules/otelgate.rules.yml",
        ],
        vec!["check", "config", "compose/prometheus/prometheus.yml"],
        vec![
            "test",
            "rules",
            "compose/prometheus/rules/otelgate.rules.test.yml",
        ],
    ] {
        let output = run_bounded(
            Command::new(&promtool).args(&args).current_dir(repo("")),
            Duration::from_secs(60),
        );
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        println!("promtool {}: ok", args.join(" "));
    }
}

// ---- 5. a real Prometheus scrapes a gateway, with the shipped rules -----------------------------

async fn prometheus_query(client: &reqwest::Client, base: &str, path: &str) -> Option<Value> {
    let response = client.get(format!("{base}{path}")).send().await.ok()?;
    serde_json::from_slice(&response.bytes().await.ok()?).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_gateway_and_evaluates_the_rules_needs_prometheus() {
    let Some(prometheus) = installed("prometheus") else {
        crate::missing(
            "prometheus",
            "prometheus is not on PATH (apt-get install prometheus)",
        );
    };
    let backend = RecordingBackend::start().await.unwrap();
    let gateway = start(config_for(&[("lgtm", &backend, Protocol::Grpc)])).await;
    let (request, _) = otelgate::demo::generator::TelemetryGenerator::new(1).traces(3);
    grpc_export(
        gateway.grpc_addr(),
        Signal::Traces,
        request.encode_to_vec().into(),
        &[],
    )
    .await
    .unwrap();

    // The shipped config, pointed at this gateway, scraping every second, nothing sent anywhere.
    let mut config = yaml("compose/prometheus/prometheus.yml");
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    config["global"]["scrape_timeout"] = "1s".into();
    config.as_object_mut().unwrap().remove("remote_write");
    let jobs = config["scrape_configs"].as_array_mut().unwrap();
    jobs.retain(|job| job["job_name"] == "otelgate");
    assert_eq!(jobs.len(), 1, "no otelgate job in prometheus.yml");
    jobs[0]["static_configs"] =
        serde_json::json!([{ "targets": [gateway.admin_addr().to_string()] }]);
    let rules_glob = str_of(&config["rule_files"][0], "rule_files").to_owned();
    config["rule_files"] = serde_json::json!([repo("compose/prometheus").join(&rules_glob)]);
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let port = free_port();
    let _prometheus = Running(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let shipped = yaml("compose/prometheus/rules/otelgate.rules.yml");
    let groups: BTreeSet<String> = shipped["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_owned())
        .collect();
    let rule_count: usize = shipped["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["rules"].as_array().unwrap().len())
        .sum();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut up, mut accepted, mut healthy) = (false, false, 0usize);
    while tokio::time::Instant::now() < deadline && !(up && accepted && healthy == rule_count) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(v) = prometheus_query(
            &client,
            &base,
            "/api/v1/query?query=up%7Bjob%3D%22otelgate%22%7D",
        )
        .await
        {
            up = v["data"]["result"][0]["value"][1] == "1";
        }
        if let Some(v) = prometheus_query(
            &client,
            &base,
            "/api/v1/query?query=otelgate_receiver_accepted_requests_total",
        )
        .await
        {
            accepted = v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
        }
        if let Some(v) = prometheus_query(&client, &base, "/api/v1/rules").await {
            let loaded: BTreeSet<String> = v["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| g["name"].as_str().unwrap().to_owned())
                .collect();
            if loaded == groups {
                let rules: Vec<&Value> = v["data"]["groups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|g| g["rules"].as_array().unwrap())
                    .collect();
                if let Some(rule) = rules.iter().find(|r| r["health"] == "err") {
                    panic!(
                        "rule {} fails to evaluate: {}",
                        rule["name"], rule["lastError"]
                    );
                }
                healthy = rules.iter().filter(|r| r["health"] == "ok").count();
            }
        }
    }
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(
        up,
        "Prometheus never saw up{{job=\"otelgate\"}} == 1\n{log}"
    );
    assert!(
        accepted,
        "Prometheus has no otelgate_receiver_accepted_requests_total\n{log}"
    );
    assert_eq!(
        healthy, rule_count,
        "not every rule evaluated without error\n{log}"
    );
    println!(
        "prometheus scraped the gateway; {} groups, {rule_count} rules evaluated",
        groups.len()
    );
    gateway.shutdown().await;
}

// ---- 6. the shipped PgBouncer config carries a gateway's COPY batches ---------------------------

/// Sets `key = value` in `[section]`, replacing the existing line.
#[track_caller]
fn ini_set(ini: &str, section: &str, key: &str, value: &str) -> String {
    let mut current = String::new();
    let mut found = false;
    let lines: Vec<String> = ini
        .lines()
        .map(|line| {
            let trimmed = line.trim();
            if let Some(name) = trimmed.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = name.to_owned();
            } else if current == section
                && trimmed
                    .split_once('=')
                    .is_some_and(|(k, _)| k.trim() == key)
            {
                found = true;
                return format!("{key} = {value}");
            }
            line.to_owned()
        })
        .collect();
    assert!(found, "the shipped ini has no {key} in [{section}]");
    lines.join("\n") + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_pgbouncer_config_carries_a_gateway_sink_needs_pgbouncer() {
    let Some(binary) = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        crate::missing("pgbouncer", "apt-get install pgbouncer");
    };
    let pg = TempPostgres::start(false).unwrap();
    let dir = pg.dir().join("deploy-pgbouncer");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let password = uuid::Uuid::new_v4().simple().to_string();
    // Only addresses and paths change; pooling, auth type and limits are as shipped.
    let mut ini = read("compose/pgbouncer/pgbouncer.ini");
    ini = ini_set(
        &ini,
        "databases",
        "*",
        &format!("host=127.0.0.1 port={}", pg.port()),
    );
    ini = ini_set(&ini, "pgbouncer", "listen_addr", "127.0.0.1");
    ini = ini_set(&ini, "pgbouncer", "listen_port", &port.to_string());
    ini = ini_set(
        &ini,
        "pgbouncer",
        "auth_file",
        &dir.join("userlist.txt").display().to_string(),
    );
    ini.push_str(&format!(
        "logfile = {}\n",
        dir.join("pgbouncer.log").display()
    ));
    std::fs::write(dir.join("pgbouncer.ini"), &ini).unwrap();
    let user_env = BTreeMap::from([
        ("POSTGRES_USER".to_owned(), "postgres".to_owned()),
        ("POSTGRES_PASSWORD".to_owned(), password.clone()),
    ]);
    let (userlist, _) =
        interpolate(&read("compose/pgbouncer/userlist.txt.template"), &user_env).unwrap();
    std::fs::write(dir.join("userlist.txt"), userlist).unwrap();
    let mut command = if pg.runs_as_postgres_user() {
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            binary,
        ]);
        c
    } else {
        Command::new(binary)
    };
    let _bouncer = Running(
        command
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // The compose healthchecks of pgbouncer and timescaledb, run for real.
    let bin = find_bin_dir().unwrap();
    let compose = compose_with(&filled_env()).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let bouncer_check: Vec<String> = service(&compose, "pgbouncer")["healthcheck"]["test"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|a| a.as_str().unwrap().replace("6432", &port.to_string()))
        .collect();
    loop {
        let output = run_bounded(
            Command::new(bin.join(&bouncer_check[0])).args(&bouncer_check[1..]),
            Duration::from_secs(10),
        );
        if output.status.success() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pgbouncer healthcheck never passed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let db_check = service(&compose, "timescaledb")["healthcheck"]["test"][1]
        .as_str()
        .unwrap()
        .replace("5432", &pg.port().to_string());
    let output = run_bounded(
        Command::new("sh")
            .args(["-c", &db_check])
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("POSTGRES_USER", "postgres")
            .env("POSTGRES_DB", "postgres"),
        Duration::from_secs(10),
    );
    assert!(
        output.status.success(),
        "timescaledb healthcheck `{db_check}`: {}",
        String::from_utf8_lossy(&output.stdout)
    );

    // The shipped gateway config, its sink through this PgBouncer, OTLP exporters removed
    // (their hosts exist only in compose).
    let env = BTreeMap::from([
        ("POSTGRES_USER".to_owned(), "postgres".to_owned()),
        ("POSTGRES_PASSWORD".to_owned(), password.clone()),
        ("POSTGRES_DB".to_owned(), "postgres".to_owned()),
        (
            "UPTRACE_DSN".to_owned(),
            "http://token@uptrace:80?grpc=4317".to_owned(),
        ),
    ]);
    let mut config = load_config(
        &read("compose/otelgate.toml"),
        "compose/otelgate.toml",
        &env,
    );
    config.receiver.grpc_endpoint = "127.0.0.1:0".into();
    config.receiver.http_endpoint = "127.0.0.1:0".into();
    config.telemetry.admin_endpoint = "127.0.0.1:0".into();
    config.log.dir = crate::log_dir();
    config.exporters.clear();
    let sink = config.timescale.as_mut().unwrap();
    assert!(
        sink.url.contains("host=pgbouncer port=6432 "),
        "{}",
        sink.url
    );
    sink.url = sink.url.replace(
        "host=pgbouncer port=6432 ",
        &format!("host=127.0.0.1 port={port} "),
    );
    let gateway = start(config).await;
    for _ in 0..3 {
        grpc_export(
            gateway.grpc_addr(),
            Signal::Traces,
            Bytes::from(fixture(TRACES)),
            &[],
        )
        .await
        .unwrap();
    }
    let db = connect(&pg.url()).await;
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 60).await,
        60
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM llm_requests", 30).await,
        30
    );
    let report = gateway.shutdown().await;
    assert_eq!(report.sink.unwrap().rows_failed, 0);
    let wrong = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres password=wrong dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await;
    assert!(
        wrong.is_err(),
        "PgBouncer let a wrong password in: auth_type is not enforced"
    );
}

// ---- the Dockerfile's healthcheck, run for real -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_tells_a_serving_gateway_from_a_dead_one() {
    let backend = RecordingBackend::start().await.unwrap();
    let gateway: Gateway = start(config_for(&[("lgtm", &backend, Protocol::Grpc)])).await;
    let check = Dockerfile::load().healthcheck();
    let run = |port: u16| {
        let args: Vec<String> = check
            .iter()
            .map(|a| a.replace(&ADMIN.to_string(), &port.to_string()))
            .collect();
        run_bounded(
            Command::new(&args[0]).args(&args[1..]),
            Duration::from_secs(10),
        )
        .status
    };
    assert!(
        run(gateway.admin_addr().port()).success(),
        "healthcheck fails against a serving gateway"
    );
    gateway.shutdown().await;
    assert!(
        !run(free_port()).success(),
        "healthcheck passes with nothing listening"
    );
}
