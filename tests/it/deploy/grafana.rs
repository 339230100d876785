//! Grafana: provisioning matches compose, and dashboards are consistent (unique ids, known
//! datasources, no empty query, the continuous aggregates read).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::compose::{bind_mounts, compose_with, filled_env, interpolate, service, service_env};
use super::{json, read, read_yaml_values, repo, str_of, yaml};

/// Uids that grafana/otel-lgtm provisions itself (its docker/grafana-datasources.yaml).
const LGTM_DATASOURCES: [&str; 4] = ["prometheus", "tempo", "loki", "pyroscope"];

pub(super) fn dashboards() -> Vec<(String, Value)> {
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
pub(super) fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

/// SQL of every PostgreSQL panel target and template variable, with where it is from.
pub(super) fn dashboard_sql() -> Vec<(String, String)> {
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
pub(super) fn grafana_sql(sql: &str, variables: &BTreeMap<&str, String>) -> String {
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
