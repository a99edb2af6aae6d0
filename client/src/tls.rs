use std::path::Path;

use link::{CertifiedKey, TlsConfigs, tls_configs};

use crate::ClientError;

/// The cluster CA to trust and this client's certificate (from `domicile certs client`).
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClientTls {
    /// Reads `ca.pem`, `client-NAME.pem` and `client-NAME.key` from `dir`.
    pub fn from_dir(dir: impl AsRef<Path>, name: &str) -> Result<ClientTls, ClientError> {
        let dir = dir.as_ref();
        let read = |file: String| {
            let path = dir.join(&file);
            std::fs::read_to_string(&path)
                .map_err(|error| ClientError::Tls(format!("{}: {error}", path.display())))
        };
        Ok(ClientTls {
            ca_cert_pem: read("ca.pem".into())?,
            cert_pem: read(format!("client-{name}.pem"))?,
            key_pem: read(format!("client-{name}.key"))?,
        })
    }

    pub(crate) fn configs(&self) -> Result<TlsConfigs, ClientError> {
        let certified = CertifiedKey {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        };
        tls_configs(&self.ca_cert_pem, &certified).map_err(|error| ClientError::Tls(error.to_string()))
    }
}
