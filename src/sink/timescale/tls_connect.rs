//! The rustls connector for the sink's TLS settings ([`PgTls`]), through
//! tokio-postgres-rustls (which also gives SCRAM its channel binding), with the `ring`
//! provider. rustls's own verifier always checks the host name, which `verify-ca` and
//! `require` must not, so the server's certificate is checked by [`ServerCertCheck`]: the
//! chain against the roots when there are any, and the name only for `verify-full`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::TimescaleSinkError;
use super::tls::{invalid, PgTls, RootCert, Setting, SslMode};

impl PgTls {
    /// The connector for these settings, with the certificate files read (errors name the
    /// file and the setting). With `disable` nothing is read and the connector is never used.
    pub fn connector(&self) -> Result<MakeRustlsConnect, TimescaleSinkError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let disabled = self.mode.value == SslMode::Disable;
        let roots = match self.root_cert.as_ref().filter(|_| !disabled) {
            None => None,
            Some(root) => Some(Arc::new(root_store(root)?)),
        };
        let check = ServerCertCheck {
            roots,
            check_name: self.mode.value == SslMode::VerifyFull,
            algorithms,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("timescale", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(check));
        let config = match self.client_cert.as_ref().filter(|_| !disabled) {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = crate::net::load_certs(&cert.value)
                    .map_err(|e| invalid(&cert.origin, e.to_string()))?;
                let private = crate::net::load_key(&key.value)
                    .map_err(|e| invalid(&key.origin, e.to_string()))?;
                builder.with_client_auth_cert(chain, private).map_err(|e| {
                    invalid(
                        &cert.origin,
                        format!(
                            "{} and {} ({}) are not a certificate and its key: {e}",
                            cert.value.display(),
                            key.value.display(),
                            key.origin
                        ),
                    )
                })?
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

fn root_store(root: &Setting<RootCert>) -> Result<RootCertStore, TimescaleSinkError> {
    let path = match &root.value {
        RootCert::System => {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        }
        RootCert::File(path) => path,
    };
    let certs = crate::net::load_certs(path).map_err(|e| invalid(&root.origin, e.to_string()))?;
    let mut store = RootCertStore::empty();
    let (_, unusable) = store.add_parsable_certificates(certs);
    if store.is_empty() {
        return Err(invalid(
            &root.origin,
            format!(
                "{}: none of its {unusable} certificates can be a CA certificate",
                path.display()
            ),
        ));
    }
    Ok(store)
}

/// Checks the server's certificate as `sslmode` says: without roots (`prefer` or `require`
/// without `sslrootcert`) it is not checked, as in libpq; with them its chain must end at
/// one of them (`verify-ca`, and `prefer` or `require` with `sslrootcert`, as libpq does when
/// a root file exists); and for `verify-full` it must also name the host. Handshake
/// signatures are always checked, so the server holds the certificate's key.
#[derive(Debug)]
struct ServerCertCheck {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerCertCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if self.check_name {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
