//! Serving HTTP/1.1 and HTTP/2 (cleartext or TLS) on an already bound listener until a
//! cancellation token fires; shared by the gRPC, HTTP and admin endpoints. TLS material is
//! loaded here too, for servers and for exporter clients.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// TLS files that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read PEM file {path}: {message}")]
    Pem { path: String, message: String },
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads every certificate from a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            message: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// Reads the first private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// A TLS acceptor offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert_file)?, load_key(key_file)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The most an HTTP/1.1 connection reads ahead of its request handler.
const HTTP1_READ_BUFFER: usize = 64 * 1024;

/// A TLS handshake that takes longer than this is abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const fn default_max_connections() -> usize {
    4096
}
const fn default_header_read_timeout_ms() -> u64 {
    10_000
}
const fn default_body_read_timeout_ms() -> u64 {
    30_000
}
const fn default_idle_timeout_ms() -> u64 {
    60_000
}
const fn default_max_connection_age_grace_ms() -> u64 {
    30_000
}

/// 256 KiB: a client 10 ms away still sends 25 MB/s on one connection.
const fn default_http2_window_bytes() -> u32 {
    256 * 1024
}

/// How the OTLP listeners treat connections (`[receiver.connections]`). Every limit is there
/// so that clients that are slow, idle, numerous or hostile cannot hold what others need:
/// file descriptors, memory and tasks.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Most connections open at once, gRPC and HTTP together. At the limit the gateway stops
    /// accepting: new clients wait in the kernel's listen backlog. Capped at start-up so that
    /// connections leave the gateway the file descriptors it needs for itself (see
    /// [`FD_RESERVE`]).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP/1.1: a request's headers must arrive within this (slow-header attacks).
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this, from its headers to its last byte; a slower
    /// body is refused (HTTP 408, gRPC DEADLINE_EXCEEDED). 0 turns the limit off.
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// A connection on which nothing is sent or received for this long is asked to close
    /// (HTTP/2 GOAWAY; HTTP/1.1 closes between requests), then cut after the grace period.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Connections older than this (plus up to 10% jitter) are asked to close the same way,
    /// so long-lived gRPC clients reconnect and spread over the replicas behind a Service.
    /// 0 (the default) keeps connections for as long as they are used.
    #[serde(default)]
    pub max_connection_age_ms: u64,
    /// How long a connection asked to close (idle or too old) may finish its requests before
    /// it is cut.
    #[serde(default = "default_max_connection_age_grace_ms")]
    pub max_connection_age_grace_ms: u64,
    /// HTTP/2 flow-control window, per connection and per stream: how much of a request's
    /// body a client may send before the gateway reads it. Bodies are charged to the memory
    /// budget as they are read; what sits in this window is not, so it bounds the memory an
    /// HTTP/2 connection holds outside the budget (hyper's default is 1 MiB). Larger windows
    /// help only clients far away sending large requests.
    #[serde(default = "default_http2_window_bytes")]
    pub http2_window_bytes: u32,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_connections: default_max_connections(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            body_read_timeout_ms: default_body_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_connection_age_ms: 0,
            max_connection_age_grace_ms: default_max_connection_age_grace_ms(),
            http2_window_bytes: default_http2_window_bytes(),
        }
    }
}

impl ConnectionConfig {
    pub(crate) fn validate(&self) -> Result<(), crate::config::ConfigError> {
        for (key, value) in [
            (
                "receiver.connections.max_connections",
                self.max_connections as u64,
            ),
            (
                "receiver.connections.header_read_timeout_ms",
                self.header_read_timeout_ms,
            ),
            ("receiver.connections.idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if value == 0 {
                return Err(crate::config::ConfigError::invalid(
                    key,
                    "must be greater than 0",
                ));
            }
        }
        // RFC 9113: windows start at 65,535 and never exceed 2^31 - 1.
        if !(65_535..=i32::MAX as u32).contains(&self.http2_window_bytes) {
            return Err(crate::config::ConfigError::invalid(
                "receiver.connections.http2_window_bytes",
                "must be between 65535 and 2147483647",
            ));
        }
        Ok(())
    }

    /// The admin endpoint's connections: few, and the same timeouts.
    pub fn admin() -> Self {
        ConnectionConfig {
            max_connections: 64,
            ..ConnectionConfig::default()
        }
    }
}

/// File descriptors kept out of reach of client connections: durable-log segments and
/// cursor files, database and exporter connections, the admin endpoint's connections,
/// listeners, and what libraries open.
pub const FD_RESERVE: usize = 512;

/// Raises the soft limit on open files to the hard limit (as Go and Java runtimes do) and
/// returns how many connections the listeners may hold: `wanted`, or less when descriptors
/// do not allow it (with a warning).
pub fn connection_budget(wanted: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let Some(soft) = limit.current else {
        return wanted;
    };
    let allowed = (soft as usize).saturating_sub(FD_RESERVE).max(16);
    if wanted > allowed {
        tracing::warn!(
            max_connections = wanted,
            open_files_limit = soft,
            using = allowed,
            "receiver.connections.max_connections is more than the open-files limit allows; raise `ulimit -n` (LimitNOFILE) to use it."
        );
        return allowed;
    }
    wanted
}

/// A server's connection limits: the config and the slots shared by its listeners.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub config: ConnectionConfig,
    pub slots: Arc<Semaphore>,
    /// Labels this server's connection metrics (`otlp`, `admin`).
    pub server: &'static str,
}

impl ConnectionLimits {
    pub fn new(server: &'static str, config: ConnectionConfig, max_connections: usize) -> Self {
        ConnectionLimits {
            config,
            slots: Arc::new(Semaphore::new(max_connections)),
            server,
        }
    }
}

/// Serves `router` on `listener` until `cancel` fires, then stops accepting and waits for open
/// connections to finish their in-flight requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    cancel: CancellationToken,
    limits: ConnectionLimits,
) {
    let config = limits.config.clone();
    let builder = Arc::new(connection_builder(&config));
    let tasks = TaskTracker::new();
    let mut accept_errors =
        crate::telemetry::RateLimitedWarning::new("Accept failed; retrying shortly.");
    let open =
        metrics::gauge!(crate::telemetry::RECEIVER_OPEN_CONNECTIONS, "server" => limits.server);
    let shared = SharedByConnections {
        builder,
        tls,
        router,
        cancel,
        config,
        open,
        server: limits.server,
    };
    loop {
        let Some((stream, peer)) = accept(&listener, &mut accept_errors, &shared.cancel).await
        else {
            break;
        };
        // At the limit this client waits for a slot, and the listener accepts no one else
        // meanwhile: later clients wait in the kernel's listen backlog, holding no descriptor
        // of the gateway's.
        let Some(permit) = acquire_slot(&limits.slots, &shared.cancel).await else {
            break;
        };
        tasks.spawn(shared.connection(stream, peer, permit).run());
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// The HTTP/1.1 and HTTP/2 connection builder for `config`.
fn connection_builder(config: &ConnectionConfig) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        // Read-ahead per connection (hyper's default is ~400 KiB): bodies are charged to the
        // memory budget as they are read, this buffer is not.
        .max_buf_size(HTTP1_READ_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(config.http2_window_bytes)
        .initial_connection_window_size(config.http2_window_bytes);
    builder
}

/// Accepts the next client; `None` once `cancel` fires. Accept errors are warned about (rate
/// limited) and retried after a pause.
async fn accept(
    listener: &TcpListener,
    accept_errors: &mut crate::telemetry::RateLimitedWarning,
    cancel: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(error) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    accept_errors.warn(&error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = cancel.cancelled() => return None,
        }
    }
}

/// Waits for a connection slot; `None` once `cancel` fires.
async fn acquire_slot(
    slots: &Arc<Semaphore>,
    cancel: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        permit = slots.clone().acquire_owned() => Some(permit.expect("never closed")),
        () = cancel.cancelled() => None,
    }
}

/// What every connection of one listener is given a handle to.
struct SharedByConnections {
    builder: Arc<Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    router: Router,
    /// Shutdown: stops the accept loop and asks every connection to close.
    cancel: CancellationToken,
    config: ConnectionConfig,
    open: metrics::Gauge,
    server: &'static str,
}

impl SharedByConnections {
    /// An accepted connection, ready to be served on its own task.
    fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) -> Connection {
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let stream = ActivityIo {
            inner: stream,
            activity: activity.clone(),
        };
        Connection {
            stream,
            activity,
            peer,
            service: TowerToHyperService::new(self.router.clone()),
            builder: self.builder.clone(),
            tls: self.tls.clone(),
            cancel: self.cancel.clone(),
            config: self.config.clone(),
            open: self.open.clone(),
            server: self.server,
            permit,
        }
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    stream: ActivityIo,
    activity: Arc<Activity>,
    peer: SocketAddr,
    service: TowerToHyperService<Router>,
    builder: Arc<Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    cancel: CancellationToken,
    config: ConnectionConfig,
    open: metrics::Gauge,
    server: &'static str,
    /// The connection's slot, given back when the connection ends.
    permit: OwnedSemaphorePermit,
}

impl Connection {
    /// Serves the connection (after its TLS handshake, if any) until it ends.
    async fn run(self) {
        let Connection {
            stream,
            activity,
            peer,
            service,
            builder,
            tls,
            cancel,
            config,
            open,
            server,
            permit,
        } = self;
        open.increment(1.0);
        let result = match tls {
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                supervise(conn, &activity, &config, &cancel, server).await
            }
            Some(acceptor) => {
                let Some(stream) = tls_handshake(&acceptor, stream, peer).await else {
                    open.decrement(1.0);
                    return;
                };
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                supervise(conn, &activity, &config, &cancel, server).await
            }
        };
        open.decrement(1.0);
        if let Err(error) = result {
            tracing::debug!(%peer, error = %DisplayError(&error), "Connection ended with an error.");
        }
        drop(permit);
    }
}

/// Completes the TLS handshake within [`TLS_HANDSHAKE_TIMEOUT`]; `None` (logged) if it fails.
async fn tls_handshake(
    acceptor: &TlsAcceptor,
    stream: ActivityIo,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<ActivityIo>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed.");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out.");
            None
        }
    }
}

/// Runs one connection until it ends, asking it to close (HTTP/2 GOAWAY, HTTP/1.1 close after
/// the current request) at shutdown, when it has been idle for `idle_timeout_ms`, or when it
/// reaches its maximum age; a connection asked to close by idleness or age is cut after the
/// grace period. Shutdown itself waits (the caller bounds the wait).
async fn supervise<C: GracefulConnection>(
    conn: C,
    activity: &Activity,
    config: &ConnectionConfig,
    cancel: &CancellationToken,
    server: &'static str,
) -> Result<(), C::Error> {
    tokio::pin!(conn);
    let idle_timeout = Duration::from_millis(config.idle_timeout_ms);
    let grace = Duration::from_millis(config.max_connection_age_grace_ms);
    let max_age = (config.max_connection_age_ms > 0).then(|| {
        let age = config.max_connection_age_ms;
        Duration::from_millis(age + rand::random_range(0..=age / 10))
    });
    let born = Instant::now();
    let every = [Some(idle_timeout), max_age, Some(grace)]
        .into_iter()
        .flatten()
        .map(|d| d / 4)
        .fold(Duration::from_secs(1), Duration::min)
        .max(Duration::from_millis(10));
    let mut check = tokio::time::interval(every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutting_down = false;
    let mut closing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => return result,
            () = cancel.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = check.tick() => {
                let now = Instant::now();
                if let Some(since) = closing_since {
                    if now - since >= grace {
                        metrics::counter!(crate::telemetry::RECEIVER_CLOSED_CONNECTIONS, "server" => server, "reason" => "grace_expired").increment(1);
                        return Ok(());
                    }
                    continue;
                }
                let why = if activity.idle_for(now) >= idle_timeout {
                    "idle"
                } else if max_age.is_some_and(|age| now - born >= age) {
                    "max_age"
                } else {
                    continue;
                };
                metrics::counter!(crate::telemetry::RECEIVER_CLOSED_CONNECTIONS, "server" => server, "reason" => why).increment(1);
                closing_since = Some(now);
                if !shutting_down {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Shows a connection's error, whatever its type.
struct DisplayError<'a, E>(&'a E);

impl<E: std::fmt::Debug> std::fmt::Display for DisplayError<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// When a connection last sent or received a byte.
struct Activity {
    born: Instant,
    /// Milliseconds after `born`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            born: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        // Coarse on purpose: one relaxed store, skipped when the value is unchanged.
        if self.last_ms.load(Ordering::Relaxed) != ms {
            self.last_ms.store(ms, Ordering::Relaxed);
        }
    }

    fn idle_for(&self, now: Instant) -> Duration {
        let last = self.born + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

/// A stream that records when bytes last moved.
struct ActivityIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
