//! rustls configurations: the control plane's server (client certificates optional, checked
//! per route), agents' and members' clients (the cluster CA, a pinned name), and artifact
//! downloads (the system's roots, plus a given CA).

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::TlsError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Invalid(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Invalid(format!("bad private key PEM: {e}")))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut r = RootCertStore::empty();
    for c in certs_from_pem(ca_pem)? {
        r.add(c)?;
    }
    Ok(Arc::new(r))
}

/// A certificate and key that can be swapped while connections use them (rotation): serves
/// as the client certificate of an agent's requests and as its server certificate.
#[derive(Debug)]
pub struct ReloadableCert(RwLock<Arc<CertifiedKey>>);

impl ReloadableCert {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Arc<ReloadableCert>, TlsError> {
        Ok(Arc::new(ReloadableCert(RwLock::new(Self::load(cert_pem, key_pem)?))))
    }

    fn load(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        Ok(Arc::new(CertifiedKey::from_der(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?, &provider())?))
    }

    /// Uses a new certificate from the next handshake on.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let k = Self::load(cert_pem, key_pem)?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = k;
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl rustls::client::ResolvesClientCert for ReloadableCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// A server: `cert` presented; client certificates signed by `ca_pem` asked for, and
/// required when `require_client` (an agent's own server), optional otherwise (the control
/// plane, whose users have tokens; its agent routes check the certificate).
pub fn server_config(
    cert: Arc<ReloadableCert>,
    ca_pem: &str,
    require_client: bool,
) -> Result<ServerConfig, TlsError> {
    let b = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider());
    let verifier = if require_client { b.build() } else { b.allow_unauthenticated().build() }
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    // HTTP/1.1 only: tend's clients speak it, and over h2 an early refusal (401 before the body
    // is read) resets the stream, which curl reports as a framing error instead of the answer.
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// A server presenting a user-given certificate chain and key (PEM), e.g. one a public CA
/// signed, for browsers and tools; no client certificates.
pub fn user_server_config(chain_pem: &str, key_pem: &str) -> Result<ServerConfig, TlsError> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs_from_pem(chain_pem)?, key_from_pem(key_pem)?)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// Checks a server's certificate against the CA as if it were `name`, whatever host was dialled.
#[derive(Debug)]
struct PinnedName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for PinnedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client of tend's own servers: trusts `ca_pem` only; with `pinned`, the server must be
/// that name (e.g. `control.tend`) whatever address was dialled, else the dialled host;
/// presents `cert` when given.
pub fn client_config(
    ca_pem: &str,
    pinned: Option<&str>,
    cert: Option<Arc<ReloadableCert>>,
) -> Result<ClientConfig, TlsError> {
    let roots = roots(ca_pem)?;
    let b = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let b = match pinned {
        Some(name) => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError::Invalid(e.to_string()))?;
            let name =
                ServerName::try_from(name.to_string()).map_err(|e| TlsError::Invalid(e.to_string()))?;
            b.dangerous().with_custom_certificate_verifier(Arc::new(PinnedName { inner, name }))
        }
        None => b.with_root_certificates(roots),
    };
    Ok(match cert {
        Some(c) => b.with_client_cert_resolver(c),
        None => b.with_no_client_auth(),
    })
}

/// A client for artifact downloads: the system's roots (`/etc/ssl/certs`), and `extra_ca_pem`.
pub fn system_client_config(extra_ca_pem: Option<&str>) -> Result<ClientConfig, TlsError> {
    let mut r = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    r.add_parsable_certificates(found.certs);
    if let Some(pem) = extra_ca_pem {
        for c in certs_from_pem(pem)? {
            r.add(c)?;
        }
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(r)
        .with_no_client_auth())
}

/// Accepts any server certificate: only for fetching the cluster CA before a join, whose
/// fingerprint the join token pins (checked by the caller before anything is trusted).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client that fetches the CA certificate to compare with a join token's pin.
pub fn fetch_config() -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth())
}

/// A client config that trusts nobody: for plain-HTTP clients (`--plain-http` control planes),
/// which must still be given one (the build has no process-wide TLS provider).
pub fn plain_client_config() -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

/// Makes ring the process's TLS provider (for anything that asks rustls for the default);
/// harmless when one is set already.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
