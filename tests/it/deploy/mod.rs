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
//!
//! One file per thing checked; this one holds what they share (reading the repository's
//! files, running programs with a deadline):
//!
//! - `compose`: compose's variables, secrets and services;
//! - `compose_gateway`: the gateway's compose config against the image and the other services;
//! - `image`: the Dockerfile and its healthcheck;
//! - `kubernetes`: the manifests under `deploy/kubernetes/`;
//! - `grafana`: provisioning and dashboards;
//! - `prometheus`: expressions, alert rules, promtool and a real Prometheus;
//! - `metrics`: every gateway metric the dashboards and alerts use is exported;
//! - `database`: postgres_exporter's metrics and every dashboard and exporter query;
//! - `pgbouncer`: the shipped PgBouncer config carrying a gateway's COPY batches.

mod compose;
mod compose_gateway;
mod database;
mod grafana;
mod image;
mod kubernetes;
mod metrics;
mod pgbouncer;
mod prometheus;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use otelgate::Config;
use serde_json::Value;

const TRACES: &str = "otlp-sdk-payloads/traces_frames_detections_genai.pb";
const OTLP_GRPC: u16 = 4317;
const OTLP_HTTP: u16 = 4318;
const ADMIN: u16 = 13133;

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

/// A YAML file without its comment lines: compose and Grafana expand variables in values only.
fn read_yaml_values(path: &str) -> String {
    read(path)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
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
    otelgate_cli::ports::free_port().unwrap()
}
