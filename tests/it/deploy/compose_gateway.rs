//! The gateway as compose runs it: its config loads with the image's and compose's
//! environment, matches the ports, mounts and addresses of the image and the other services,
//! keeps its durable log on a named volume, and passes `otelgate check-config`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use otelgate::export::otlp::Protocol;
use otelgate::pipeline::WhenFull;

use super::compose::{
    bind_mounts, compose_with, container_ports, filled_env, interpolate, named_volumes, service,
    service_env,
};
use super::image::{image_log_dir, Dockerfile};
use super::{
    host_port, ini_value, load_config, parse_memory, read, read_yaml_values, repo, run_bounded,
    str_of, yaml, ADMIN, OTLP_GRPC, OTLP_HTTP,
};

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
    let exposed: BTreeSet<u16> = docker.exposed.iter().map(|p| p.parse().unwrap()).collect();
    assert_eq!(exposed, BTreeSet::from([OTLP_GRPC, OTLP_HTTP, ADMIN]));
    let health = docker.healthcheck().join(" ");
    assert!(
        health.contains(&format!("/dev/tcp/127.0.0.1/{ADMIN}")) && health.contains("/healthz"),
        "{health}"
    );

    // The config file goes where the ENTRYPOINT reads it.
    let entrypoint = docker.entrypoint();
    let config_path = entrypoint
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("--config");
    assert!(bind_mounts(gateway)
        .iter()
        .any(|(s, t)| s == "./otelgate.toml" && t == config_path));
    let user = docker.user();
    assert!(!user.starts_with('0') && user != "root", "runs as root");
    let stages = &docker.stages;
    assert!(
        stages[0].starts_with("rust:1-bookworm")
            && stages.last().unwrap().starts_with("debian:bookworm-slim")
    );
    assert!(docker
        .runs
        .iter()
        .any(|run| run.contains("cargo build --release --locked")));

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

#[test]
fn the_cli_checks_the_compose_config_and_names_a_missing_secret() {
    let compose = compose_with(&filled_env()).unwrap();
    let env = service_env(service(&compose, "otelgate"));
    let run = |env: &BTreeMap<String, String>| {
        run_bounded(
            Command::new(crate::otelgate_binary())
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
