//! Mutual TLS under the cluster CA, from PEM: what a node and a client service both need to connect.
//!
//! Issuing certificates and reading the identity a certificate attests are the node's business
//! (`raft::identity`); this module only builds rustls configurations that trust the cluster CA alone and
//! present one certificate, and names the DNS name a node's certificate carries, which a dialler expects.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the CA certificate can't be used as a trust root: {0}")]
    TrustRoot(String),
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
}

/// The DNS name a node's certificate carries and a dialling peer expects: the TLS handshake itself then
/// checks that the dialled address answers with node `node`'s certificate.
pub fn server_name(node: u64) -> String {
    format!("node-{node}.domicile.internal")
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// TLS 1.3 configurations for one certificate holder (a node, or a client service): its server side
/// demands a client certificate from the cluster CA, its client side presents its own and accepts only
/// servers from the same CA. One crypto provider (ring).
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// A secret of the holder's that outlives its restarts, derived from its private key: the QUIC
    /// endpoint's stateless-reset and connection-id keys come from it ([`crate::QuicConfig::endpoint`]).
    pub endpoint_secret: [u8; 32],
}

/// What [`TlsConfigs::endpoint_secret`] is derived with: a label, so the key is never used as is.
const ENDPOINT_SECRET_LABEL: &[u8] = b"domicile/quic-endpoint-secret/v1";

pub fn tls_configs(ca_cert_pem: &str, node: &CertifiedKey) -> Result<TlsConfigs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes()).map_err(|error| TlsError::Pem {
        what: "the CA certificate",
        reason: error.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|error| TlsError::TrustRoot(error.to_string()))?;
    let roots = Arc::new(roots);
    let chain = || {
        CertificateDer::from_pem_slice(node.cert_pem.as_bytes())
            .map(|cert| vec![cert])
            .map_err(|error| TlsError::Pem {
                what: "the node certificate",
                reason: error.to_string(),
            })
    };
    let key = || {
        PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes()).map_err(|error| TlsError::Pem {
            what: "the node key",
            reason: error.to_string(),
        })
    };

    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|error| TlsError::TrustRoot(error.to_string()))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain()?, key()?)?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain()?, key()?)?;
    let label = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ENDPOINT_SECRET_LABEL);
    let mut endpoint_secret = [0; 32];
    endpoint_secret.copy_from_slice(ring::hmac::sign(&label, key()?.secret_der()).as_ref());
    Ok(TlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
        endpoint_secret,
    })
}
