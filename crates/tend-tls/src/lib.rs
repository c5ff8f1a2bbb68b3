//! tend's trust: the cluster CA, certificates bound to an agent id or to the control plane,
//! rustls configurations for both ends, and the bounded HTTP(S) server both ends serve with.
//! Certificates are made from PEM text and a given `now`; the edges keep the files.
//!
//! Names, as Nomad does it: the control plane's certificate names `control.tend`, an agent's
//! names `<agent id>.agent.tend`. An agent checks it reached the control plane (not another
//! agent, whose certificate the same CA signed) by that name, whatever address it dialled; the
//! control plane checks an agent's routes against the id in the agent's certificate.

mod ca;
mod config;
pub mod serve;

pub use ca::{agent_csr, ClusterCa, Issued};
pub use config::{
    certs_from_pem, client_config, fetch_config, install_default_provider, plain_client_config,
    server_config, system_client_config, user_server_config, ReloadableCert,
};

/// The name in every control-plane member's certificate.
pub const CONTROL_NAME: &str = "control.tend";

/// The name in agent `id`'s certificate.
pub fn agent_name(id: &str) -> String {
    format!("{id}.agent.tend")
}

/// Something wrong with a certificate, key or request.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Invalid(String),
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the control plane reads from a peer's verified certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    /// DNS names (subject alternative names).
    pub names: Vec<String>,
    /// Hex serial number.
    pub serial: String,
    /// Seconds since the epoch.
    pub not_before_s: i64,
    pub not_after_s: i64,
}

impl PeerCert {
    /// Parses a DER certificate (already verified against the cluster CA by the handshake).
    pub fn parse(der: &[u8]) -> Option<PeerCert> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if let GeneralName::DNSName(d) = n {
                    names.push(d.to_string());
                }
            }
        }
        Some(PeerCert {
            names,
            serial: hex::encode(cert.raw_serial()),
            not_before_s: cert.validity().not_before.timestamp(),
            not_after_s: cert.validity().not_after.timestamp(),
        })
    }

    /// The agent this certificate was issued to.
    pub fn agent_id(&self) -> Option<&str> {
        let mut ids = self.names.iter().filter_map(|n| n.strip_suffix(".agent.tend"));
        let id = ids.next()?;
        // One identity per certificate: a certificate naming two agents is nobody.
        ids.next().is_none().then_some(id)
    }

    /// Whether this is a control-plane member's certificate.
    pub fn is_control_plane(&self) -> bool {
        self.names.iter().any(|n| n == CONTROL_NAME)
    }
}

/// SHA-256 of a PEM certificate's DER, in hex: what a join token pins.
pub fn fingerprint(cert_pem: &str) -> Result<String, TlsError> {
    use sha2::{Digest, Sha256};
    let der = certs_from_pem(cert_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Invalid("no certificate".into()))?;
    Ok(hex::encode(Sha256::digest(der.as_ref())))
}
