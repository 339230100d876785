//! The TimescaleDB sink's connections over TLS, against a throwaway PostgreSQL with a
//! certificate from a CA made here, that takes TCP connections only over TLS: SCRAM-SHA-256
//! for a password user, `cert` for a certificate user. Each `sslmode` and certificate
//! setting, the errors that say what to fix, and a gateway writing rows over TLS.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use otelgate::sink::timescale::{connect_error, sink::pool, SslMode, TimescaleSinkConfig};
use otelgate::Signal;
use otelgate_cli::demo::postgres::{ServerOptions, TempPostgres};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::timescale::{connect, gateway_with_sink, sink_config, wait_count};
use crate::{fixture, grpc_export};

const TRACES: &str = "otlp-sdk-payloads/traces_frames_detections_genai.pb";

/// The password user (SCRAM-SHA-256) and the certificate user (`cert` authentication).
const PASSWORD_USER: &str = "otelgate";
const PASSWORD: &str = "s3cret";
const CERT_USER: &str = "otelgate_cert";

/// PEM files the client side uses.
struct Files {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    wrong_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A client certificate of the same name from `wrong_ca`, and its key.
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `names` (subject alternative names) or, without names, for the common
/// name `cn`, signed by `issuer`: PEM certificate and key.
fn leaf(issuer: &CertifiedIssuer<'_, KeyPair>, names: &[&str], cn: &str) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A cluster serving TLS with a certificate for 127.0.0.1 and localhost, trusting client
/// certificates of the same CA, and refusing TCP connections without TLS.
fn tls_postgres() -> (TempPostgres, Files) {
    let ca = new_ca("otelgate test CA");
    let wrong = new_ca("another CA");
    let (server_cert, server_key) = leaf(&ca, &["127.0.0.1", "localhost"], "postgres server");
    let (client_cert, client_key) = leaf(&ca, &[], CERT_USER);
    let (stranger_cert, stranger_key) = leaf(&wrong, &[], CERT_USER);
    let options = ServerOptions {
        settings: vec![
            "ssl=on".into(),
            "ssl_cert_file=server.crt".into(),
            "ssl_key_file=server.key".into(),
            "ssl_ca_file=ca.crt".into(),
            "password_encryption=scram-sha-256".into(),
        ],
        files: vec![
            ("server.crt".into(), server_cert.into_bytes()),
            ("server.key".into(), server_key.into_bytes()),
            ("ca.crt".into(), ca.pem().into_bytes()),
        ],
        hba: Some(vec![
            format!("hostssl all {CERT_USER} 127.0.0.1/32 cert"),
            "hostssl all all 127.0.0.1/32 scram-sha-256".into(),
        ]),
    };
    let pg = TempPostgres::start_with_options(false, true, &options).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    };
    let files = Files {
        ca: write("ca.pem", &ca.pem()),
        wrong_ca: write("wrong-ca.pem", &wrong.pem()),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
        stranger_cert: write("stranger.pem", &stranger_cert),
        stranger_key: write("stranger.key", &stranger_key),
        _dir: dir,
    };
    (pg, files)
}

async fn create_users(pg: &TempPostgres) {
    let db = connect(&pg.socket_url()).await;
    db.batch_execute(&format!(
        "CREATE ROLE {PASSWORD_USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}';
         CREATE ROLE {CERT_USER} LOGIN;"
    ))
    .await
    .unwrap();
}

/// Connects as the sink does (its pool, its first-connection error) and says whether the
/// session is encrypted and authenticated with SCRAM channel binding where it can be.
async fn sink_connects(config: &TimescaleSinkConfig) -> Result<bool, String> {
    let pool = pool(config).map_err(|e| e.to_string())?;
    let client = pool
        .get()
        .await
        .map_err(|e| connect_error(config, &e).to_string())?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// One way of connecting, and what comes of it: whether the session is encrypted, or the
/// words the error must hold.
struct Case {
    what: &'static str,
    url: String,
    /// `sslmode`, and `sslrootcert` (the right CA) when true, set in `[timescale]`.
    keys: (Option<SslMode>, bool),
    expected: Result<bool, Vec<String>>,
}

impl Case {
    fn ok(what: &'static str, url: String) -> Case {
        Case {
            what,
            url,
            keys: (None, false),
            expected: Ok(true),
        }
    }

    fn fails(what: &'static str, url: String, needles: &[&str]) -> Case {
        Case {
            expected: Err(needles.iter().map(|n| n.to_string()).collect()),
            ..Case::ok(what, url)
        }
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_certificates_and_their_errors() {
    let (pg, files) = tls_postgres();
    create_users(&pg).await;
    let port = pg.port();
    let password = format!("postgres://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{port}/postgres");
    let ca = path(&files.ca);
    let wrong_ca = path(&files.wrong_ca);
    let (cert, key) = (path(&files.client_cert), path(&files.client_key));
    let (stranger_cert, stranger_key) = (path(&files.stranger_cert), path(&files.stranger_key));
    let as_cert_user = format!("postgres://{CERT_USER}@127.0.0.1:{port}/postgres");
    // A name the server's certificate does not hold, reaching the same server.
    let wrong_name = format!(
        "host=db.example.invalid hostaddr=127.0.0.1 port={port} user={PASSWORD_USER} password={PASSWORD} dbname=postgres"
    );

    let verified = format!("{password}?sslmode=verify-full&sslrootcert={ca}");
    let cases = [
        Case::ok("prefer by default: TLS when offered", password.clone()),
        Case::ok(
            "require, SCRAM over TLS",
            format!("{password}?sslmode=require"),
        ),
        Case::ok(
            "SCRAM with channel binding required",
            format!("{password}?sslmode=require&channel_binding=require"),
        ),
        Case::fails(
            "a wrong password is refused (SCRAM, not trust)",
            format!("postgres://{PASSWORD_USER}:nope@127.0.0.1:{port}/postgres?sslmode=require"),
            &["password authentication failed"],
        ),
        Case::ok("verify-full with the right CA", verified.clone()),
        Case::ok(
            "verify-full by the DNS name localhost",
            verified.replace("127.0.0.1", "localhost"),
        ),
        Case::fails(
            "verify-full with the wrong CA",
            format!("{password}?sslmode=verify-full&sslrootcert={wrong_ca}"),
            &[
                "UnknownIssuer",
                "not signed by a CA in sslrootcert",
                &wrong_ca,
            ],
        ),
        Case::fails(
            "require with a CA file checks the chain, as libpq does",
            format!("{password}?sslmode=require&sslrootcert={wrong_ca}"),
            &["UnknownIssuer"],
        ),
        Case::fails(
            "verify-full against a name not in the certificate",
            format!("{wrong_name} sslmode=verify-full sslrootcert={ca}"),
            &["db.example.invalid", "set sslmode=verify-ca"],
        ),
        Case::ok(
            "verify-ca does not check the name",
            format!("{wrong_name} sslmode=verify-ca sslrootcert={ca}"),
        ),
        Case::fails(
            "verify-full without a CA",
            format!("{password}?sslmode=verify-full"),
            &["sslmode in timescale.url", "needs sslrootcert"],
        ),
        Case::fails(
            "a CA file that does not exist",
            format!("{password}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
            &["sslrootcert in timescale.url", "/nonexistent/ca.pem"],
        ),
        Case::ok(
            "client certificate authentication",
            format!(
                "{as_cert_user}?sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"
            ),
        ),
        Case::fails(
            "a certificate user without a certificate",
            format!("{as_cert_user}?sslmode=verify-full&sslrootcert={ca}"),
            &["set sslcert and sslkey"],
        ),
        Case::fails(
            "a client certificate from a CA the server does not trust",
            format!("{as_cert_user}?sslmode=verify-full&sslrootcert={ca}&sslcert={stranger_cert}&sslkey={stranger_key}"),
            &["the server refused the client certificate"],
        ),
        Case::fails(
            "sslcert without sslkey",
            format!("{as_cert_user}?sslmode=require&sslcert={cert}"),
            &["sslcert in timescale.url", "go together"],
        ),
        Case::fails(
            "disable against a server that takes only TLS",
            format!("{password}?sslmode=disable"),
            &["no encryption", "set sslmode to require"],
        ),
        Case {
            keys: (Some(SslMode::VerifyFull), true),
            ..Case::ok(
                "[timescale] keys take precedence over the URL",
                format!("{password}?sslmode=disable&sslrootcert={wrong_ca}"),
            )
        },
        Case::fails(
            "allow is not supported",
            format!("{password}?sslmode=allow"),
            &["`allow`"],
        ),
    ];
    for Case {
        what,
        url,
        keys: (mode, rootcert),
        expected,
    } in cases
    {
        let mut config = TimescaleSinkConfig::new(url);
        config.sslmode = mode;
        config.sslrootcert = rootcert.then(|| ca.clone());
        let got = sink_connects(&config).await;
        match (&got, &expected) {
            (Ok(encrypted), Ok(want)) => assert_eq!(encrypted, want, "{what}"),
            (Err(message), Err(needles)) => {
                for needle in needles {
                    assert!(
                        message.contains(needle.as_str()),
                        "{what}: {message:?} lacks {needle:?}"
                    );
                }
            }
            _ => panic!("{what}: got {got:?}, expected {expected:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_says_so() {
    let pg = TempPostgres::start_with(false, false).unwrap();
    let config = TimescaleSinkConfig::new(format!("{}?sslmode=require", pg.url()));
    let message = sink_connects(&config).await.unwrap_err();
    assert!(
        message.contains("server does not support TLS") && message.contains("turn ssl on"),
        "{message}"
    );
    // The default, prefer, falls back to cleartext.
    let config = TimescaleSinkConfig::new(pg.url());
    assert_eq!(sink_connects(&config).await, Ok(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_writes_rows_over_verified_tls_with_scram() {
    let (pg, files) = tls_postgres();
    create_users(&pg).await;
    let mut sink = sink_config(&format!(
        "postgres://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{}/postgres?sslmode=verify-full",
        pg.port()
    ));
    sink.sslrootcert = Some(path(&files.ca));
    let gateway = gateway_with_sink(sink).await;
    grpc_export(
        gateway.grpc_addr(),
        Signal::Traces,
        Bytes::from(fixture(TRACES)),
        &[],
    )
    .await
    .unwrap();
    let db = connect(&pg.socket_url()).await;
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 20).await,
        20
    );
    let encrypted = db
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = $1",
            &[&PASSWORD_USER],
        )
        .await
        .unwrap();
    let (ssl, all): (i64, i64) = (encrypted.get(0), encrypted.get(1));
    assert!(
        all > 0 && ssl == all,
        "{ssl} of {all} sink connections use TLS"
    );
    let report = gateway.shutdown().await.sink.unwrap();
    assert!(report.rows_written >= 20, "{report:?}");
}
