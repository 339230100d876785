//! Careless and hostile clients: idle connections, slow headers, slow bodies, more connections
//! than the gateway allows, long-lived connections, descriptor exhaustion. Each test checks
//! that the gateway ends what it should, keeps serving a normal client, and recovers by itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use otelgate::Signal;

use crate::durable::{free_port, run_gateway, run_gateway_with};
use crate::{config_for, log_dir, metric, start, WAIT};

fn traces() -> bytes::Bytes {
    let (request, _) = otelgate_cli::demo::generator::TelemetryGenerator::new(3).traces(2);
    prost::Message::encode_to_vec(&request).into()
}

/// Reads until the peer closes the connection or `within` passes; the bytes and whether it
/// closed.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// An in-process gateway forwarding to a recording backend, with `connections` adjusted.
async fn gateway_with(
    connections: impl FnOnce(&mut otelgate::net::ConnectionConfig),
) -> (
    otelgate::Gateway,
    otelgate_cli::demo::backend::RecordingBackend,
) {
    let backend = otelgate_cli::demo::backend::RecordingBackend::start()
        .await
        .unwrap();
    let mut config = config_for(&[("b", &backend, otelgate::export::otlp::Protocol::Grpc)]);
    connections(&mut config.receiver.connections);
    (start(config).await, backend)
}

async fn http_post_works(addr: SocketAddr) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .timeout(Duration::from_secs(2))
        .body(traces())
        .send()
        .await
        .expect("a normal client is served");
    assert!(response.status().is_success(), "{}", response.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_header_and_slow_body_connections_are_ended() {
    let (gateway, _backend) = gateway_with(|c| {
        c.idle_timeout_ms = 400;
        c.header_read_timeout_ms = 400;
        c.body_read_timeout_ms = 600;
        c.max_connection_age_grace_ms = 300;
    })
    .await;
    let (http, grpc, admin) = (
        gateway.http_addr(),
        gateway.grpc_addr(),
        gateway.admin_addr(),
    );

    let outcome = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        // Idle: connects and sends nothing, on both listeners.
        for addr in [http, grpc] {
            let mut idle = TcpStream::connect(addr).unwrap();
            let started = Instant::now();
            let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5));
            found.push(("idle", closed, started.elapsed()));
        }
        // Slow headers: one byte every 100 ms, never a full header block.
        let mut slow = TcpStream::connect(http).unwrap();
        let started = Instant::now();
        let line = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut closed = false;
        for byte in line {
            if slow.write_all(&[*byte]).is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !closed {
            closed = read_until_closed(&mut slow, Duration::from_secs(2)).1;
        }
        found.push(("slow headers", closed, started.elapsed()));
        // Slow body: headers at once, then 10 bytes every 100 ms of 100,000 announced.
        let mut slow = TcpStream::connect(http).unwrap();
        let started = Instant::now();
        slow.write_all(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 100000\r\n\r\n",
        )
        .unwrap();
        let mut answer = Vec::new();
        slow.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        while started.elapsed() < Duration::from_secs(5) {
            if slow.write_all(&[0u8; 10]).is_err() {
                break;
            }
            let mut buf = [0u8; 1024];
            if let Ok(n) = slow.read(&mut buf) {
                answer.extend_from_slice(&buf[..n]);
                if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let answer = String::from_utf8_lossy(&answer).to_string();
        (found, answer, started.elapsed())
    })
    .await
    .unwrap();
    let (found, answer, body_elapsed) = outcome;
    for (what, closed, elapsed) in &found {
        println!("{what}: closed {closed} after {elapsed:?}");
        assert!(closed, "{what} connection still open after {elapsed:?}");
        assert!(
            *elapsed < Duration::from_secs(4),
            "{what} connection closed only after {elapsed:?}"
        );
    }
    println!("slow body: answered after {body_elapsed:?}: {answer:?}");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "slow body not refused with 408: {answer:?}"
    );
    assert!(body_elapsed < Duration::from_secs(3));
    assert!(
        metric(
            admin,
            "otelgate_receiver_closed_connections_total",
            &[("reason", "idle")]
        )
        .await
            >= 2.0
    );
    assert_eq!(
        metric(
            admin,
            "otelgate_receiver_refused_requests_total",
            &[("reason", "body_timeout")]
        )
        .await,
        1.0
    );
    http_post_works(http).await;
    gateway.shutdown().await;
}

/// At the connection limit the gateway stops accepting; the admin endpoint still answers,
/// and once the connections go, the waiting client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds_and_recovers() {
    let (gateway, _backend) = gateway_with(|c| c.max_connections = 20).await;
    let (http, admin) = (gateway.http_addr(), gateway.admin_addr());
    // Twenty connections with a request each, kept open (HTTP/1.1 keep-alive). Blocking
    // sockets, off the runtime the gateway runs on.
    let held = tokio::task::spawn_blocking(move || {
        (0..20)
            .map(|_| {
                let mut stream = TcpStream::connect(http).unwrap();
                stream
                    .write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut buf = [0u8; 256];
                assert!(stream.read(&mut buf).unwrap() > 0, "held connection served");
                stream
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(
        metric(
            admin,
            "otelgate_receiver_open_connections",
            &[("server", "otlp")]
        )
        .await,
        20.0
    );
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        http_post_works(http).await;
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a 21st connection was served");
    let health = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert!(health.status().is_success());
    drop(held);
    let waited = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    println!("the 21st client was served after {waited:?}");
    gateway.shutdown().await;
}

/// Connections older than the maximum age are asked to close; a gRPC client reconnects and
/// loses no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_connections_are_asked_to_close_and_clients_reconnect() {
    let (gateway, _backend) = gateway_with(|c| {
        c.max_connection_age_ms = 300;
        c.max_connection_age_grace_ms = 2_000;
    })
    .await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.grpc_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let started = Instant::now();
    let (mut sent, mut raced) = (0, 0);
    while started.elapsed() < Duration::from_secs(2) {
        // A request can cross the GOAWAY on the wire; the server never saw it and gRPC
        // clients retry it on a new connection (as the OTLP exporters do). Anything else fails.
        let mut attempts = 0;
        loop {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let result = grpc
                .unary::<bytes::Bytes, bytes::Bytes, _>(
                    tonic::Request::new(traces()),
                    http::uri::PathAndQuery::from_static(Signal::Traces.grpc_path()),
                    otelgate::codec::BytesCodec,
                )
                .await;
            match result {
                Ok(_) => break,
                Err(status) if format!("{status:?}").contains("GoAway") && attempts < 3 => {
                    raced += 1;
                    attempts += 1;
                }
                Err(status) => panic!("a request failed across GOAWAY: {status:?}"),
            }
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{raced} requests crossed a GOAWAY and were sent again");
    let aged = metric(
        gateway.admin_addr(),
        "otelgate_receiver_closed_connections_total",
        &[("reason", "max_age")],
    )
    .await;
    println!("{sent} requests over 2 s, {aged} connections closed for age");
    assert!(aged >= 2.0, "connections were not recycled: {aged}");
    gateway.shutdown().await;
}

/// Under `ulimit -n 1024`, 1,100 idle connections cannot take the descriptors the gateway needs:
/// it holds at most 1,024 - `FD_RESERVE` of them (the kernel's backlog the rest), `/healthz`
/// answers, a client connected before keeps appending while the log starts new segments, and
/// once the connections are gone a new client is served without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_leaves_the_log_and_health_working() {
    // This process opens the connections: lift its own soft limit to the hard one.
    otelgate::net::connection_budget(2_000);
    let backend = otelgate_cli::demo::backend::RecordingBackend::start()
        .await
        .unwrap();
    let dir = log_dir();
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"
[receiver]
grpc_endpoint = "{grpc}"
http_endpoint = "{http}"
[telemetry]
admin_endpoint = "{admin}"
[log]
dir = "{log}"
segment_bytes = 65536
[exporters.b]
endpoint = "{endpoint}"
protocol = "grpc"
"#,
        log = dir.join("log").display(),
        endpoint = backend.endpoint(),
    );
    let path = dir.join("otelgate.toml");
    std::fs::write(&path, config).unwrap();
    // The gateway raises its soft limit to the hard one: set both.
    let wrapper = dir.join("limited.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec prlimit --nofile=1024:1024 {} \"$@\"\n",
            crate::otelgate_binary().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut child = run_gateway_with(&wrapper, &path, admin).await;
    // One client connects first and keeps its connection (gRPC: one HTTP/2 connection).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let send = |channel: tonic::transport::Channel| async move {
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.unwrap();
        client
            .unary::<bytes::Bytes, bytes::Bytes, _>(
                tonic::Request::new(traces()),
                http::uri::PathAndQuery::from_static(Signal::Traces.grpc_path()),
                otelgate::codec::BytesCodec,
            )
            .await
    };
    send(channel.clone()).await.unwrap();
    let held = tokio::task::spawn_blocking(move || {
        (0..1_100)
            .map_while(|_| TcpStream::connect_timeout(&http, Duration::from_secs(1)).ok())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let open = metric(
        admin,
        "otelgate_receiver_open_connections",
        &[("server", "otlp")],
    )
    .await;
    println!(
        "opened {} connections; the gateway holds {open} (1,024 descriptors, {} kept back)",
        held.len(),
        otelgate::net::FD_RESERVE
    );
    assert_eq!(held.len(), 1_100, "the kernel's backlog holds the rest");
    assert!(open <= (1024 - otelgate::net::FD_RESERVE) as f64);
    let health = reqwest::Client::new()
        .get(format!("http://{admin}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("/healthz answers while connections are at the limit");
    assert!(health.status().is_success());
    // Appends on the connection made before: several 64 KiB segments start meanwhile.
    // Segment files are named after their first record, so new names mean new segments.
    let segments = || {
        std::fs::read_dir(dir.join("log").join("log"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let before = segments();
    for _ in 0..300 {
        send(channel.clone())
            .await
            .expect("appends go on while clients hold every connection slot");
    }
    let after = segments();
    println!("log files: {before:?} before, {after:?} after");
    assert!(
        after.difference(&before).count() >= 2,
        "no new segments were started"
    );
    drop(held);
    http_post_works(http).await;
    assert!(
        backend.wait_for(Signal::Traces, 302 * 2, WAIT).await,
        "the log did not deliver what it took"
    );
    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert!(
        ready.status().is_success(),
        "not ready after the connections went"
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Peak resident memory (VmHWM) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/<pid>/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// 100 clients each send 4 MiB minus one byte of a 4 MiB body and stall (400 MiB offered):
/// bodies are charged to the 32 MiB memory budget as they arrive, so the gateway's peak RSS
/// grows by the budget plus a fixed overhead, not by what the clients send; a normal client
/// is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_stay_within_the_memory_budget() {
    const BUDGET: u64 = 32 << 20;
    const OVERHEAD: u64 = 96 << 20;
    let backend = otelgate_cli::demo::backend::RecordingBackend::start()
        .await
        .unwrap();
    let dir = log_dir();
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"
[receiver]
grpc_endpoint = "{grpc}"
http_endpoint = "{http}"
max_request_bytes = 4194304
[pipeline]
memory_budget_bytes = {BUDGET}
[telemetry]
admin_endpoint = "{admin}"
[log]
dir = "{log}"
[exporters.b]
endpoint = "{endpoint}"
protocol = "grpc"
"#,
        log = dir.join("log").display(),
        endpoint = backend.endpoint(),
    );
    let path = dir.join("otelgate.toml");
    std::fs::write(&path, config).unwrap();
    let child = run_gateway(&path, admin).await;
    let pid = child.id().unwrap();
    let before = peak_rss(pid);
    let senders: Vec<_> = (0..100)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(http).unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let head = format!(
                    "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
                    4 << 20
                );
                let _ = stream.write_all(head.as_bytes());
                // Refused bodies end with an answer and a closed connection: the write fails.
                let _ = stream.write_all(&vec![0x0a; (4 << 20) - 1]);
                stream
            })
        })
        .collect();
    // A normal client meanwhile, retrying throttling answers as OTLP exporters do.
    let started = Instant::now();
    let mut throttled = 0;
    loop {
        let response = reqwest::Client::new()
            .post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .timeout(Duration::from_secs(2))
            .body(traces())
            .send()
            .await
            .expect("a normal client is answered");
        if response.status() != 429 || throttled == 20 {
            assert!(response.status().is_success(), "{}", response.status());
            break;
        }
        throttled += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let normal = started.elapsed();
    println!("the normal client was throttled {throttled} times");
    let held: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        senders.into_iter().map(|s| s.join().unwrap()).collect()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak = peak_rss(pid);
    println!(
        "peak RSS {} MiB -> {} MiB (+{} MiB) with a {} MiB budget; a normal client took {normal:?}",
        before >> 20,
        peak >> 20,
        (peak - before) >> 20,
        BUDGET >> 20
    );
    assert!(
        peak - before < BUDGET + OVERHEAD,
        "RSS grew by {} MiB",
        (peak - before) >> 20
    );
    drop(held);
    drop(child);
}
