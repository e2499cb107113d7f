//! QUIC (quinn) configurations over rustls with the ring provider.
//!
//! Three roles:
//! - the coordinator's server, which requires TLS 1.3, presents `[server cert, CA cert]`,
//!   and accepts connections with a node certificate signed by the cluster CA or with no
//!   client certificate at all (those may only enroll; the coordinator enforces that);
//! - the agent's bootstrap client, which trusts exactly the CA whose SHA-256 it was given
//!   (`--ca-hash`): no trust on first use;
//! - the agent's mutual-TLS client, which trusts the stored CA and presents its node cert.

use std::{sync::Arc, time::Duration};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::WebPkiClientVerifier,
    DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// ALPN identifier of the agent link.
pub const ALPN: &[u8] = b"pyxis/1";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// rustls refused the configuration (bad key, bad certificate).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA.
    #[error("cannot build the certificate verifier from the CA: {0}")]
    Verifier(String),
    /// The rustls configuration lacks what QUIC needs.
    #[error("TLS configuration not usable for QUIC: {0}")]
    Quic(String),
}

/// The single crypto provider used across the tree.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport_config(keep_alive: Duration) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive));
    // Idle timeout is a few keep-alives: a silently vanished peer is detected in ~20 s,
    // while node liveness itself is judged from capacity reports.
    if let Ok(idle) = quinn::IdleTimeout::try_from(keep_alive * 4) {
        transport.max_idle_timeout(Some(idle));
    }
    Arc::new(transport)
}

/// Builds the coordinator's QUIC server configuration.
pub fn server_config(
    ca_der: CertificateDer<'static>,
    server_cert: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, TlsConfigError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone())?;
    let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsConfigError::Verifier(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(vec![server_cert, ca_der], server_key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsConfigError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config(Duration::from_secs(5)));
    Ok(config)
}

/// Builds the agent's bootstrap client: no client certificate, and the server chain must
/// contain the CA whose hash is `pinned_ca_sha256`.
pub fn bootstrap_client_config(pinned_ca_sha256: [u8; 32]) -> Result<quinn::ClientConfig, TlsConfigError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        pinned: pinned_ca_sha256,
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    finish_client(tls)
}

/// Builds the agent's mutual-TLS client from its stored identity.
pub fn mtls_client_config(
    ca_der: CertificateDer<'static>,
    node_cert: CertificateDer<'static>,
    node_key: PrivateKeyDer<'static>,
) -> Result<quinn::ClientConfig, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![node_cert], node_key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    finish_client(tls)
}

fn finish_client(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsConfigError> {
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| TlsConfigError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config(Duration::from_secs(5)));
    Ok(config)
}

/// Trusts the server only if its presented chain carries the CA with the pinned hash and
/// the server certificate verifies against that CA.
#[derive(Debug)]
struct PinnedCaVerifier {
    pinned: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| ring::digest::digest(&ring::digest::SHA256, cert.as_ref()).as_ref() == self.pinned)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the coordinator's CA does not match --ca-hash: wrong coordinator, or a stale hash (get the current one from `pyxis token create`)"
                        .to_string(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Peer certificate chain of an established connection, if the peer presented one.
pub fn peer_certificates(connection: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|b| *b)
}
