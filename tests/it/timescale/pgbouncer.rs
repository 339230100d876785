//! The sink through Debian's PgBouncer in transaction pooling mode.

use std::time::Duration;

use otelgate::Signal;
use otelgate_cli::demo::postgres::TempPostgres;
use prost::Message;

use super::{connect, count, gateway_with_sink, sink_config, wait_count};
use crate::{grpc_export, WAIT};

/// Debian's pgbouncer in transaction pooling mode in front of the cluster, run as the
/// `postgres` user when this process is root (pgbouncer refuses root too).
struct PgBouncer {
    child: std::process::Child,
    port: u16,
}

impl PgBouncer {
    fn start(pg: &TempPostgres) -> Option<PgBouncer> {
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = otelgate_cli::ports::free_port().unwrap();
        let dir = pg.dir();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\npostgres = host=127.0.0.1 port={} dbname=postgres user=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = transaction\ndefault_pool_size = 2\n\
                 max_client_conn = 100\nlogfile = {}\n",
                pg.port(),
                dir.join("users.txt").display(),
                dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        let mut command = if pg.runs_as_postgres_user() {
            let _ = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status();
            // setpriv execs pgbouncer itself (runuser would fork and outlive a kill).
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                binary,
            ]);
            c
        } else {
            std::process::Command::new(binary)
        };
        let child = command
            .arg(&ini)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Some(PgBouncer { child, port })
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_through_pgbouncer_in_transaction_mode_needs_pgbouncer() {
    let pg = TempPostgres::start(false).unwrap();
    let Some(bouncer) = PgBouncer::start(&pg) else {
        crate::missing("pgbouncer", "apt-get install pgbouncer");
    };
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", bouncer.port);
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pgbouncer did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Four sink connections share two server connections: statements of different clients
    // interleave on the same server sessions.
    let mut sink = sink_config(&url);
    sink.pool_size = 4;
    sink.max_rows = 100;
    let gateway = gateway_with_sink(sink).await;
    let mut generator = otelgate_cli::demo::generator::TelemetryGenerator::new(3);
    let sends = (0..100).map(|_| {
        let (request, _) = generator.traces(20);
        grpc_export(
            gateway.grpc_addr(),
            Signal::Traces,
            request.encode_to_vec().into(),
            &[],
        )
    });
    for result in futures_util::future::join_all(sends).await {
        result.unwrap();
    }
    let db = connect(&pg.url()).await;
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 2000).await,
        2000
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM llm_requests", 200).await,
        200
    );
    let report = gateway.shutdown().await;
    let sink = report.sink.unwrap();
    assert_eq!(sink.rows_failed, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM frame_metadata").await,
        2000
    );
    let log = std::fs::read_to_string(pg.dir().join("pgbouncer.log")).unwrap_or_default();
    assert!(!log.contains("prepared statement"), "{log}");
}
