//! Signing with the node's key, and checking a node's certificate with the cluster CA alone.
//!
//! The node signs its entries with the private key of its TLS certificate (ECDSA P-256 as `domicile
//! certs` and rcgen make it; P-384 and Ed25519 keys work too), so the auditor needs no other key
//! material: each segment carries the certificate, the cluster CA vouches for it, and its public key
//! checks every entry. Signing draws from the OS's randomness (ECDSA's nonces, hedged by ring); it runs on
//! the audit log's writer thread, never in code the simulator runs.

use std::time::Duration;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::{Deserialize, Serialize};
use webpki::{EndEntityCert, KeyUsage};

/// The identity URI prefix a node certificate carries (see `raft::identity`).
const NODE_IDENTITY_PREFIX: &str = "domicile://v1/node/";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("the node key is not PKCS#8 (as `domicile certs` writes it)")]
    NotPkcs8,
    #[error("the node key is neither ECDSA P-256, ECDSA P-384 nor Ed25519")]
    UnsupportedKey,
    #[error("the node key does not belong to the node certificate")]
    KeyMismatch,
    #[error("the certificate can't be parsed: {0}")]
    Parse(String),
    #[error("the certificate is not valid under the cluster CA at {at_unix_ms} ms: {reason}")]
    Untrusted { at_unix_ms: u64, reason: String },
    #[error("the certificate carries no Domicile node identity (a `{NODE_IDENTITY_PREFIX}...` URI)")]
    NoIdentity,
    #[error("signing failed")]
    Sign,
}

/// How entries are signed: the node key's scheme, named in each segment's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignatureAlgorithm {
    /// ECDSA over P-256 with SHA-256, signature in ASN.1 DER (what `openssl dgst -sha256 -verify` reads).
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    Ed25519,
}

impl SignatureAlgorithm {
    fn verifier(self) -> &'static dyn rustls_pki_types::SignatureVerificationAlgorithm {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => webpki::ring::ECDSA_P256_SHA256,
            SignatureAlgorithm::EcdsaP384Sha384 => webpki::ring::ECDSA_P384_SHA384,
            SignatureAlgorithm::Ed25519 => webpki::ring::ED25519,
        }
    }
}

enum SigningKey {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// The node's key and certificate, ready to sign entries.
pub struct Signer {
    algorithm: SignatureAlgorithm,
    key: SigningKey,
    certificate: Vec<u8>,
    identity: String,
    random: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The node's certificate and its PKCS#8 private key, as PEM (the node's TLS files).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Signer, KeyError> {
        let certificate = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|error| KeyError::Pem {
                what: "the node certificate",
                reason: error.to_string(),
            })?
            .to_vec();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|error| KeyError::Pem {
            what: "the node key",
            reason: error.to_string(),
        })?;
        let PrivateKeyDer::Pkcs8(pkcs8) = key else {
            return Err(KeyError::NotPkcs8);
        };
        let random = SystemRandom::new();
        let pkcs8 = pkcs8.secret_pkcs8_der();
        let (algorithm, key) = if let Ok(key) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &random)
        {
            (SignatureAlgorithm::EcdsaP256Sha256, SigningKey::Ecdsa(key))
        } else if let Ok(key) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8, &random)
        {
            (SignatureAlgorithm::EcdsaP384Sha384, SigningKey::Ecdsa(key))
        } else if let Ok(key) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8) {
            (SignatureAlgorithm::Ed25519, SigningKey::Ed25519(key))
        } else {
            return Err(KeyError::UnsupportedKey);
        };
        let identity = node_identity(&certificate)?;
        let signer = Signer {
            algorithm,
            key,
            certificate,
            identity,
            random,
        };
        // The key must be the certificate's: otherwise every entry would fail verification.
        let probe = b"domicile audit key check";
        let signed = signer.sign(probe)?;
        if !verify_with(&signer.certificate, algorithm, probe, &signed) {
            return Err(KeyError::KeyMismatch);
        }
        Ok(signer)
    }

    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.key {
            SigningKey::Ecdsa(key) => key
                .sign(&self.random, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
            SigningKey::Ed25519(key) => Ok(key.sign(message).as_ref().to_vec()),
        }
    }

    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    /// The certificate, DER.
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    /// The node identity URI its certificate carries.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The public key, for tests comparing keys.
    pub fn public_key(&self) -> &[u8] {
        match &self.key {
            SigningKey::Ecdsa(key) => key.public_key().as_ref(),
            SigningKey::Ed25519(key) => key.public_key().as_ref(),
        }
    }
}

/// The cluster CA's certificate: what an auditor trusts.
#[derive(Clone, Debug)]
pub struct ClusterCa {
    der: CertificateDer<'static>,
}

impl ClusterCa {
    pub fn from_pem(pem: &str) -> Result<ClusterCa, KeyError> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|error| KeyError::Pem {
            what: "the cluster CA certificate",
            reason: error.to_string(),
        })?;
        webpki::anchor_from_trusted_cert(&der).map_err(|error| KeyError::Parse(format!("{error:?}")))?;
        Ok(ClusterCa { der })
    }
}

/// A node certificate the cluster CA vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertificate {
    der: Vec<u8>,
    identity: String,
}

impl NodeCertificate {
    /// Checks that `der` chains to `ca` and was valid at `at_unix_ms`, and reads its node identity.
    pub fn verify(der: &[u8], ca: &ClusterCa, at_unix_ms: u64) -> Result<NodeCertificate, KeyError> {
        let anchor = webpki::anchor_from_trusted_cert(&ca.der)
            .map_err(|error| KeyError::Parse(format!("the cluster CA: {error:?}")))?;
        let cert_der = CertificateDer::from(der);
        let cert =
            EndEntityCert::try_from(&cert_der).map_err(|error| KeyError::Parse(format!("{error:?}")))?;
        let at = UnixTime::since_unix_epoch(Duration::from_millis(at_unix_ms));
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            at,
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|error| KeyError::Untrusted {
            at_unix_ms,
            reason: format!("{error:?}"),
        })?;
        Ok(NodeCertificate {
            der: der.to_vec(),
            identity: node_identity(der)?,
        })
    }

    /// The node identity a certificate names, without checking it (for display only).
    pub fn identity_unverified(der: &[u8]) -> Option<String> {
        node_identity(der).ok()
    }

    /// The node identity URI, e.g. `domicile://v1/node/5/site/ashburn/country/US`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn verify_signature(&self, algorithm: SignatureAlgorithm, message: &[u8], signature: &[u8]) -> bool {
        verify_with(&self.der, algorithm, message, signature)
    }
}

fn verify_with(cert_der: &[u8], algorithm: SignatureAlgorithm, message: &[u8], signature: &[u8]) -> bool {
    let der = CertificateDer::from(cert_der);
    EndEntityCert::try_from(&der).is_ok_and(|cert| {
        cert.verify_signature(algorithm.verifier(), message, signature)
            .is_ok()
    })
}

/// The node identity URI in a certificate's subject alternative names.
fn node_identity(cert_der: &[u8]) -> Result<String, KeyError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|error| KeyError::Parse(error.to_string()))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|error| KeyError::Parse(error.to_string()))?
        .map(|extension| extension.value.general_names.clone())
        .unwrap_or_default();
    names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with(NODE_IDENTITY_PREFIX) => {
                Some(uri.to_string())
            }
            _ => None,
        })
        .ok_or(KeyError::NoIdentity)
}
