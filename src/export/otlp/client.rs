//! Sends one batch to a backend over OTLP/gRPC or OTLP/HTTP (protobuf) and reads the answer.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Endpoint, Identity};

use super::config::{ClientTlsConfig, Compression, OtlpExporterConfig, Protocol};
use super::error::OtlpExportError;
use super::gzip::FastGzip;
use crate::codec::BytesCodec;
use crate::signal::{ExportResponse, PartialSuccess};
use crate::Signal;

/// A connection to one backend. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub enum OtlpClient {
    Grpc {
        grpc: tonic::client::Grpc<FastGzip>,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
        base: String,
        headers: http::HeaderMap,
        gzip: bool,
    },
}

pub(super) struct TlsMaterial {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Reads and parses the TLS files of an exporter, naming the file at fault.
pub(super) fn read_tls(tls: &ClientTlsConfig) -> Result<TlsMaterial, OtlpExportError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| OtlpExportError::Setup(format!("cannot read {}: {e}", path.display())))
    };
    let ca = tls.ca_file.as_deref().map(read).transpose()?;
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    // Parse now so that a bad file is reported at start-up, naming the file.
    if let Some(path) = &tls.ca_file {
        crate::net::load_certs(path).map_err(|e| OtlpExportError::Setup(e.to_string()))?;
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        crate::net::load_certs(cert).map_err(|e| OtlpExportError::Setup(e.to_string()))?;
        crate::net::load_key(key).map_err(|e| OtlpExportError::Setup(e.to_string()))?;
    }
    Ok(TlsMaterial { ca, identity })
}

impl OtlpClient {
    /// Builds the client. Connections are made lazily, on the first export; this needs a
    /// Tokio runtime for the gRPC protocol.
    pub fn new(config: &OtlpExporterConfig) -> Result<Self, OtlpExportError> {
        let tls = config.tls.as_ref().map(read_tls).transpose()?;
        match config.protocol {
            Protocol::Grpc => Self::grpc(config, tls),
            Protocol::HttpProtobuf => Self::http(config, tls),
        }
    }

    fn grpc(
        config: &OtlpExporterConfig,
        tls: Option<TlsMaterial>,
    ) -> Result<Self, OtlpExportError> {
        let setup = |e: tonic::transport::Error| OtlpExportError::Setup(e.to_string());
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(setup)?
            .timeout(config.timeout())
            .connect_timeout(config.timeout().min(Duration::from_secs(5)))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if config.endpoint.starts_with("https://") {
            let mut tls_config = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
            if let Some(tls) = tls {
                if let Some(ca) = tls.ca {
                    tls_config = tls_config.ca_certificate(Certificate::from_pem(ca));
                }
                if let Some((cert, key)) = tls.identity {
                    tls_config = tls_config.identity(Identity::from_pem(cert, key));
                }
            }
            endpoint = endpoint.tls_config(tls_config).map_err(setup)?;
        }
        let channel = FastGzip::new(
            endpoint.connect_lazy(),
            config.compression == Compression::Gzip,
        );
        let mut grpc = tonic::client::Grpc::new(channel)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .max_decoding_message_size(4 * 1024 * 1024);
        if config.compression == Compression::Zstd {
            grpc = grpc.send_compressed(CompressionEncoding::Zstd);
        }
        let metadata = MetadataMap::from_headers(configured_headers(config)?);
        Ok(OtlpClient::Grpc { grpc, metadata })
    }

    fn http(
        config: &OtlpExporterConfig,
        tls: Option<TlsMaterial>,
    ) -> Result<Self, OtlpExportError> {
        let setup = |e: reqwest::Error| OtlpExportError::Setup(e.to_string());
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout())
            .connect_timeout(config.timeout().min(Duration::from_secs(5)))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(config.concurrency);
        if let Some(tls) = tls {
            if let Some(ca) = tls.ca {
                for cert in reqwest::Certificate::from_pem_bundle(&ca).map_err(setup)? {
                    builder = builder.add_root_certificate(cert);
                }
            }
            if let Some((mut cert, key)) = tls.identity {
                cert.push(b'\n');
                cert.extend_from_slice(&key);
                builder = builder.identity(reqwest::Identity::from_pem(&cert).map_err(setup)?);
            }
        }
        let mut headers = configured_headers(config)?;
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        let gzip = config.compression == Compression::Gzip;
        if gzip {
            headers.insert(
                http::header::CONTENT_ENCODING,
                http::HeaderValue::from_static("gzip"),
            );
        }
        Ok(OtlpClient::Http {
            client: builder.build().map_err(setup)?,
            base: config.endpoint.trim_end_matches('/').to_owned(),
            headers,
            gzip,
        })
    }

    /// Sends one `Export*ServiceRequest` (protobuf bytes) and returns what the backend
    /// rejected of it, if anything.
    pub async fn export(
        &self,
        signal: Signal,
        body: Bytes,
    ) -> Result<Option<PartialSuccess>, OtlpExportError> {
        match self {
            OtlpClient::Grpc { grpc, metadata } => {
                let mut grpc = grpc.clone();
                grpc.ready()
                    .await
                    .map_err(|e| OtlpExportError::Transport(e.to_string()))?;
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = metadata.clone();
                let path = PathAndQuery::from_static(signal.grpc_path());
                let response = grpc
                    .unary(request, path, BytesCodec)
                    .await
                    .map_err(OtlpExportError::Grpc)?;
                Ok(partial_success(&response.into_inner()))
            }
            OtlpClient::Http {
                client,
                base,
                headers,
                gzip,
            } => {
                let body = if *gzip { gzip_body(&body) } else { body };
                let response = client
                    .post(format!("{base}{}", signal.http_path()))
                    .headers(headers.clone())
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| OtlpExportError::Transport(chain(e)))?;
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| OtlpExportError::Transport(chain(e)))?;
                if status.is_success() {
                    Ok(partial_success(&body))
                } else {
                    Err(OtlpExportError::Http {
                        status,
                        retry_after,
                        message: error_message(&body),
                    })
                }
            }
        }
    }
}

/// The exporter's `headers`, as HTTP headers (gRPC metadata is built from the same map).
fn configured_headers(config: &OtlpExporterConfig) -> Result<http::HeaderMap, OtlpExportError> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &config.headers {
        let invalid =
            |e: &dyn std::fmt::Display| OtlpExportError::Setup(format!("header `{name}`: {e}"));
        let key = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|e| invalid(&e))?;
        let value = http::HeaderValue::from_str(value).map_err(|e| invalid(&e))?;
        headers.insert(key, value);
    }
    Ok(headers)
}

fn partial_success(body: &[u8]) -> Option<PartialSuccess> {
    // A body that is not a protobuf response (some backends answer JSON or nothing) carries
    // no partial-success information: the request was accepted.
    ExportResponse::decode(body)
        .ok()?
        .partial_success
        .filter(|p| p.rejected > 0 || !p.error_message.is_empty())
}

/// The message of a `google.rpc.Status` body, or the body as text, shortened.
fn error_message(body: &[u8]) -> String {
    let text = match tonic_types::pb::Status::decode(body) {
        Ok(status) if !status.message.is_empty() => status.message,
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    let mut text: String = text.chars().take(512).collect();
    if text.is_empty() {
        text.push_str("(empty body)");
    }
    text
}

fn gzip_body(body: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(body)
        .expect("writing to a Vec cannot fail");
    encoder
        .finish()
        .expect("writing to a Vec cannot fail")
        .into()
}

/// `error` and its causes, `outer: inner: ...` (anyhow's alternate form).
fn chain(error: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::new(error))
}
