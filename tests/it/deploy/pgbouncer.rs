//! The shipped PgBouncer config, with only its addresses and paths changed, carries a gateway's
//! COPY batches, and compose's healthchecks of PgBouncer and TimescaleDB pass against it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use otelgate::Signal;
use otelgate_cli::demo::postgres::{find_bin_dir, TempPostgres};

use super::compose::{compose_with, filled_env, interpolate, service};
use super::{free_port, load_config, read, run_bounded, Running, TRACES};
use crate::timescale::{connect, wait_count};
use crate::{fixture, grpc_export, start, WAIT};

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
