//! The cluster CA: made once, signs the control plane's certificates and agents' requests.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::{agent_name, TlsError, CONTROL_NAME};

/// The CA certificate and its key (PEM).
#[derive(Clone)]
pub struct ClusterCa {
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// A certificate issued to an agent.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub serial: String,
    pub not_after_s: i64,
}

fn at(s: i64) -> Result<OffsetDateTime, TlsError> {
    OffsetDateTime::from_unix_timestamp(s).map_err(|e| TlsError::Invalid(e.to_string()))
}

fn serial() -> Result<SerialNumber, TlsError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| TlsError::Invalid(e.to_string()))?;
    b[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&b))
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

impl ClusterCa {
    /// A new CA, valid ten years from `now_s`.
    pub fn generate(now_s: i64) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = name("tend cluster CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = at(now_s - 3600)?;
        p.not_after = at(now_s + 10 * 365 * 86_400)?;
        p.serial_number = Some(serial()?);
        let cert = p.self_signed(&key)?;
        Ok(ClusterCa { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A CA from its PEM files; refused unless the key is the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, TlsError> {
        let ca = ClusterCa { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string() };
        let issuer = ca.issuer()?;
        let cert = crate::certs_from_pem(cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::Invalid("no CA certificate".into()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        if parsed.public_key().raw != issuer.key().subject_public_key_info().as_slice() {
            return Err(TlsError::Invalid("the CA key does not belong to the CA certificate".into()));
        }
        Ok(ca)
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    /// A control-plane member's certificate and key: `control.tend`, loopback, and `extra`
    /// names or addresses (the member's advertised host); server and client use; one year.
    pub fn issue_control_plane(&self, extra: &[String], now_s: i64) -> Result<(String, String), TlsError> {
        let key = KeyPair::generate()?;
        let mut sans = vec![CONTROL_NAME.to_string(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
        sans.extend(extra.iter().cloned());
        sans.dedup();
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        for s in &sans {
            p.subject_alt_names.push(match s.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(s.clone().try_into()?),
            });
        }
        p.distinguished_name = name(CONTROL_NAME);
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = at(now_s - 3600)?;
        p.not_after = at(now_s + 365 * 86_400)?;
        p.serial_number = Some(serial()?);
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs an agent's request: whatever names it asked for, the certificate names only
    /// `<agent_id>.agent.tend`, for server and client use, valid `lifetime_s` from `now_s`.
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        agent_id: &str,
        now_s: i64,
        lifetime_s: i64,
    ) -> Result<Issued, TlsError> {
        let mut req = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Invalid(format!("not a valid certificate signing request: {e}")))?;
        let n = agent_name(agent_id);
        let serial = serial()?;
        let p = &mut req.params;
        p.subject_alt_names = vec![SanType::DnsName(n.clone().try_into()?)];
        p.distinguished_name = name(&n);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = at(now_s - 300)?;
        p.not_after = at(now_s + lifetime_s)?;
        p.serial_number = Some(serial.clone());
        p.custom_extensions.clear();
        let cert = req.signed_by(&self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: hex::encode(serial.to_bytes()),
            not_after_s: now_s + lifetime_s,
        })
    }
}

/// An agent's new key (PEM) and a request for a certificate naming `agent_id`.
pub fn agent_csr(agent_id: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec![agent_name(agent_id)])?;
    p.distinguished_name = name(&agent_name(agent_id));
    let csr = p.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}
