//! The compose file as compose would see it: secrets required, every variable listed in
//! `.env.example`, services pinned, limited, health-checked and wired to each other.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::image::Dockerfile;
use super::{read, read_yaml_values, repo, str_of, yaml_docs};

// Hand-written: no maintained crate implements compose's interpolation, and `docker compose`
// is not installed here.
/// Expands compose-style references: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`,
/// `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`. Returns the text and the names
/// referenced, or the first required variable that is missing.
pub(super) fn interpolate(
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
pub(super) fn filled_env() -> BTreeMap<String, String> {
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
pub(super) fn compose_with(env: &BTreeMap<String, String>) -> Result<Value, String> {
    let (text, _) = interpolate(&read_yaml_values("compose/docker-compose.yml"), env)?;
    Ok(yaml_docs(&text, "compose/docker-compose.yml").remove(0))
}

pub(super) fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("compose has no service `{name}`"))
}

/// A service's `environment`, as a map (compose allows a map or a list of `K=V`).
pub(super) fn service_env(service: &Value) -> BTreeMap<String, String> {
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
pub(super) fn container_ports(service: &Value) -> BTreeSet<u16> {
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
pub(super) fn bind_mounts(service: &Value) -> Vec<(String, String)> {
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
pub(super) fn named_volumes(service: &Value) -> Vec<(String, String)> {
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
            assert!(!Dockerfile::load().healthcheck().is_empty());
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
