//! Cluster PKI: CA creation, CSRs, signing, and the CA hash that agents pin.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// The DNS name every coordinator certificate carries and every agent verifies. Agents dial
/// addresses, not names; what authenticates the coordinator is the pinned CA.
pub const COORDINATOR_SERVER_NAME: &str = "pyxis-coordinator";

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate generation or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM input could not be parsed.
    #[error("cannot parse {what}: {reason}")]
    Pem {
        /// What was being parsed.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A CA hash string is not `sha256:` followed by 64 hex digits.
    #[error("invalid CA hash {0:?}: expected sha256: followed by 64 hex digits (as printed by `pyxis token create`)")]
    BadCaHash(String),
    /// A certificate signing request is invalid.
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),
}

/// The CA hash agents pin: `sha256:` + hex SHA-256 of the CA certificate's DER encoding.
pub fn ca_hash(ca_der: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, ca_der))
    )
}

/// Parses `sha256:HEX` into the 32 raw bytes.
pub fn parse_ca_hash(text: &str) -> Result<[u8; 32], PkiError> {
    let hex_part = text
        .trim()
        .strip_prefix("sha256:")
        .ok_or_else(|| PkiError::BadCaHash(text.to_string()))?;
    let bytes = hex::decode(hex_part).map_err(|_| PkiError::BadCaHash(text.to_string()))?;
    bytes.try_into().map_err(|_| PkiError::BadCaHash(text.to_string()))
}

/// SHA-256 of a DER certificate, hex encoded (the node-certificate fingerprint).
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// A CA certificate with its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CaMaterial {
    /// CA certificate, PEM.
    pub cert_pem: String,
    /// CA private key (PKCS#8), PEM. Keep at mode 0600.
    pub key_pem: String,
}

/// Creates a new self-signed cluster CA.
pub fn generate_ca(cluster_name: &str) -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Pyxis cluster CA ({cluster_name})"));
    params.distinguished_name.push(DnType::OrganizationName, "Pyxis");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.self_signed(&key)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A loaded CA able to sign certificates.
#[derive(Debug)]
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl CertificateAuthority {
    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem {
            what: "CA key",
            reason: e.to_string(),
        })?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| PkiError::Pem {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| PkiError::Pem {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        let ca = Self {
            issuer,
            cert_der,
            cert_pem: cert_pem.to_string(),
        };
        ca.check_key_matches()?;
        Ok(ca)
    }

    /// Proves the key belongs to the certificate: a certificate signed with the key must
    /// verify against the CA certificate.
    fn check_key_matches(&self) -> Result<(), PkiError> {
        use rustls::client::danger::ServerCertVerifier;
        let mismatch = |reason: String| PkiError::Pem { what: "CA key", reason };
        let (probe, _) = self.issue_server_cert()?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).map_err(|e| PkiError::Pem {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .map_err(|e| PkiError::Pem {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        let name =
            rustls_pki_types::ServerName::try_from(COORDINATOR_SERVER_NAME).map_err(|e| mismatch(e.to_string()))?;
        verifier
            .verify_server_cert(&probe, &[], &name, &[], rustls_pki_types::UnixTime::now())
            .map(|_| ())
            .map_err(|e| mismatch(format!("does not match the CA certificate ({e})")))
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The hash agents pin.
    pub fn hash(&self) -> String {
        ca_hash(&self.cert_der)
    }

    /// Issues a fresh server certificate for the coordinator's QUIC endpoint.
    pub fn issue_server_cert(&self) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![COORDINATOR_SERVER_NAME.to_string()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, COORDINATOR_SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let (not_before, not_after) = validity(365);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| PkiError::Pem {
            what: "server key",
            reason: e.to_string(),
        })?;
        Ok((cert.der().clone(), key_der))
    }

    /// Signs a node's CSR. The subject is forced to `CN=<node_name>` and the usage to
    /// client authentication, whatever the CSR asked for.
    pub fn sign_node_csr(&self, csr_pem: &str, node_name: &str, valid_days: i64) -> Result<String, PkiError> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, node_name);
        params.distinguished_name.push(DnType::OrganizationName, "Pyxis nodes");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let (not_before, not_after) = validity(valid_days);
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
        csr.params = params;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

/// Validity window starting an hour ago (tolerates clock skew between hosts).
fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (now - time::Duration::hours(1), now + time::Duration::days(days))
}

fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    // A failing system RNG leaves a zero serial; uniqueness is not relied upon.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial);
    serial[0] &= 0x7f;
    serial
}

/// A node's locally generated key and the CSR to send with the join token.
#[derive(Debug)]
pub struct NodeKey {
    /// Private key (PKCS#8) PEM. Never leaves the node.
    pub key_pem: String,
    /// CSR PEM.
    pub csr_pem: String,
}

/// Generates a node key pair and a CSR for `node_name`.
pub fn generate_node_key(node_name: &str) -> Result<NodeKey, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node_name);
    let csr = params.serialize_request(&key)?;
    Ok(NodeKey {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem()?,
    })
}
