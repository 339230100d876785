//! Prometheus: the expressions of dashboards and rules, the log-size alert, promtool on the
//! shipped config, rules and rule tests, and a real Prometheus scraping a gateway with the
//! shipped rules loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::time::Duration;

use otelgate::export::otlp::Protocol;
use otelgate::Signal;
use otelgate_cli::demo::backend::RecordingBackend;
use promql_parser::label::MatchOp;
use promql_parser::parser::Expr;
use promql_parser::util::{walk_expr, ExprVisitor};
use prost::Message;
use serde_json::Value;

use super::compose::{compose_with, filled_env, service, service_env};
use super::grafana::{dashboards, panels};
use super::image::Dockerfile;
use super::kubernetes::kubernetes_gateway;
use super::{free_port, installed, load_config, read, repo, run_bounded, str_of, yaml, Running};
use crate::{config_for, grpc_export, start};

/// Metric names an expression selects (the names of its vector and range selectors, also
/// given as `{__name__="..."}`), read from the syntax tree promql-parser builds with
/// Prometheus's grammar, so an expression that is not PromQL fails here. Grafana's
/// `$__rate_interval` is a duration at query time; it becomes one before parsing.
#[track_caller]
pub(super) fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let promql = expr.replace("$__rate_interval", "5m");
    let tree =
        promql_parser::parser::parse(&promql).unwrap_or_else(|e| panic!("not PromQL: {e}\n{expr}"));
    let mut names = MetricNames(BTreeSet::new());
    let Ok(_) = walk_expr(&mut names, &tree);
    names.0
}

/// Collects the metric names of the selectors it visits.
struct MetricNames(BTreeSet<String>);

impl ExprVisitor for MetricNames {
    type Error = Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Infallible> {
        let selector = match expr {
            Expr::VectorSelector(selector) => selector,
            Expr::MatrixSelector(range) => &range.vs,
            _ => return Ok(true),
        };
        self.0.extend(selector.name.iter().cloned());
        self.0.extend(
            selector
                .matchers
                .matchers
                .iter()
                .filter(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
                .map(|m| m.value.clone()),
        );
        Ok(true)
    }
}

/// Every Prometheus expression of the dashboards and the alert rules, with where it is from.
pub(super) fn prometheus_expressions() -> Vec<(String, String)> {
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

/// Metrics selected in dashboards and rules whose names start with one of `prefixes`.
pub(super) fn used_metrics(prefixes: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (origin, expr) in prometheus_expressions() {
        for ident in promql_metric_names(&expr) {
            if prefixes.iter().any(|p| ident.starts_with(p)) {
                used.entry(ident).or_default().push(origin.clone());
            }
        }
    }
    used
}

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
    let (request, _) = otelgate_cli::demo::generator::TelemetryGenerator::new(1).traces(3);
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
