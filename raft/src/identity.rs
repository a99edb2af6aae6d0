//! Node identities attested by the cluster CA.
//!
//! The fence trusts one fact about a peer: the country of its site. A node could be misconfigured, or lie, so
//! that fact never comes from the peer's own words. The cluster CA signs each node's certificate with a
//! versioned identity URI in its subject alternative names,
//!
//! ```text
//! domicile://v1/node/7/site/hamar/country/NO
//! ```
//!
//! and peers read the node id, site and country from the *verified* certificate after a mutual-TLS
//! handshake. A certificate from another CA, an expired one, or none at all fails the handshake; a valid
//! certificate whose identity disagrees with the topology (site unknown, wrong country, node placed
//! elsewhere) is refused by [`check_against_topology`].
//!
//! Certificate generation takes its validity window as arguments: this module never reads the clock, so
//! the simulator and tests decide what "now" is.

use placement::{Country, NodeId, SiteName, Topology};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

/// Certificates and TLS configurations from PEM, which a client service needs too: `link`'s.
pub use link::{CertifiedKey, TlsConfigs, TlsError, server_name, tls_configs};

const IDENTITY_PREFIX: &str = "domicile://v1/node/";
const CLIENT_PREFIX: &str = "domicile://v1/client/";
const OPERATOR_PREFIX: &str = "domicile://v1/operator/";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("site name `{0}` can't go in a certificate: use 1 to 63 of a-z, 0-9 and `-`")]
    BadSiteName(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("the certificate can't be parsed: {0}")]
    Parse(String),
    #[error("the certificate carries no Domicile node identity (a `{IDENTITY_PREFIX}...` URI)")]
    NoIdentity,
    #[error("the certificate carries more than one Domicile node identity")]
    SeveralIdentities,
    #[error("malformed node identity `{0}`")]
    Malformed(String),
    #[error("certificate says node {node} is at site `{site}`, which the topology does not have")]
    UnknownSite { node: NodeId, site: SiteName },
    #[error("certificate says site `{site}` is in {attested}, but the topology puts it in {configured}")]
    CountryMismatch {
        site: SiteName,
        attested: Country,
        configured: Country,
    },
    #[error(
        "certificate says node {node} is at site `{attested}`, but the topology places it at `{configured}`"
    )]
    NodeMisplaced {
        node: NodeId,
        attested: SiteName,
        configured: String,
    },
}

/// Who a node is, as its certificate attests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node: NodeId,
    pub site: SiteName,
    pub country: Country,
}

impl NodeIdentity {
    pub fn uri(&self) -> String {
        format!(
            "{IDENTITY_PREFIX}{}/site/{}/country/{}",
            self.node.0, self.site, self.country
        )
    }

    pub fn parse_uri(uri: &str) -> Result<NodeIdentity, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_string());
        let rest = uri.strip_prefix(IDENTITY_PREFIX).ok_or_else(malformed)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [node, "site", site, "country", country] = parts.as_slice() else {
            return Err(malformed());
        };
        // u64::from_str accepts a leading `+`; an identity has one spelling only.
        if !node.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(malformed());
        }
        let node = node.parse::<u64>().map(NodeId).map_err(|_| malformed())?;
        check_site_name(site)?;
        let country = Country::parse(country).map_err(|_| malformed())?;
        Ok(NodeIdentity {
            node,
            site: SiteName(site.to_string()),
            country,
        })
    }
}

/// A client service (not a node): it may call the client API, never speak Raft.
///
/// The CA may also attest the country the service runs in (`domicile://v1/client/billing/country/US`).
/// A service with no attested country is treated as outside every jurisdiction: where the topology marks
/// fields personal, it reads them pseudonymised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub name: String,
    pub country: Option<Country>,
}

impl ClientIdentity {
    /// A service with no attested country.
    pub fn named(name: impl Into<String>) -> ClientIdentity {
        ClientIdentity {
            name: name.into(),
            country: None,
        }
    }

    pub fn uri(&self) -> String {
        match self.country {
            Some(country) => format!("{CLIENT_PREFIX}{}/country/{country}", self.name),
            None => format!("{CLIENT_PREFIX}{}", self.name),
        }
    }

    pub fn parse_uri(uri: &str) -> Result<ClientIdentity, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_string());
        let rest = uri.strip_prefix(CLIENT_PREFIX).ok_or_else(malformed)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (name, country) = match parts.as_slice() {
            [name] => (*name, None),
            [name, "country", country] => (*name, Some(Country::parse(country).map_err(|_| malformed())?)),
            _ => return Err(malformed()),
        };
        check_label(name).map_err(|_| malformed())?;
        Ok(ClientIdentity {
            name: name.to_string(),
            country,
        })
    }
}

impl std::fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.country {
            Some(country) => write!(f, "client `{}` ({country})", self.name),
            None => write!(f, "client `{}`", self.name),
        }
    }
}

/// A person or tool allowed to change the cluster through the admin endpoints (learners, leadership,
/// drains, drills, apply steps). It may not call the client API or speak Raft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorIdentity {
    pub name: String,
}

impl OperatorIdentity {
    pub fn uri(&self) -> String {
        format!("{OPERATOR_PREFIX}{}", self.name)
    }

    pub fn parse_uri(uri: &str) -> Result<OperatorIdentity, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_string());
        let name = uri.strip_prefix(OPERATOR_PREFIX).ok_or_else(malformed)?;
        check_label(name).map_err(|_| malformed())?;
        Ok(OperatorIdentity {
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for OperatorIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "operator `{}`", self.name)
    }
}

/// Who is at the other end of a verified connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Node(NodeIdentity),
    Client(ClientIdentity),
    Operator(OperatorIdentity),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Node(node) => write!(f, "{} at {} ({})", node.node, node.site, node.country),
            Peer::Client(client) => client.fmt(f),
            Peer::Operator(operator) => operator.fmt(f),
        }
    }
}

fn check_site_name(site: &str) -> Result<(), IdentityError> {
    check_label(site)
}

/// Names in identities are labels (`placement::site::is_label`), so the URI parses one way only.
fn check_label(site: &str) -> Result<(), IdentityError> {
    if placement::site::is_label(site) {
        Ok(())
    } else {
        Err(IdentityError::BadSiteName(site.to_string()))
    }
}

/// A validity window, `[not_before, not_after]`.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// The cluster's certificate authority: the root every node certificate chains to.
pub struct ClusterCa {
    certified: CertifiedKey,
    issuer: Issuer<'static, KeyPair>,
}

impl ClusterCa {
    pub fn generate(cluster: &str, validity: Validity) -> Result<ClusterCa, IdentityError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Domicile cluster CA ({cluster})"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let certified = CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(ClusterCa {
            certified,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA written by [`ClusterCa::certified_key`] (e.g. `domicile certs init`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, IdentityError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let certified = CertifiedKey {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        };
        Ok(ClusterCa { certified, issuer })
    }

    pub fn certified_key(&self) -> &CertifiedKey {
        &self.certified
    }

    /// Issues a client certificate: it authenticates a service to the client API and nothing else.
    pub fn issue_client(
        &self,
        identity: &ClientIdentity,
        validity: Validity,
    ) -> Result<CertifiedKey, IdentityError> {
        check_label(&identity.name)?;
        self.issue_client_auth(
            identity.uri(),
            format!("domicile client {}", identity.name),
            validity,
        )
    }

    /// Issues an operator certificate: it authenticates a person or tool to the admin endpoints' changes.
    pub fn issue_operator(
        &self,
        identity: &OperatorIdentity,
        validity: Validity,
    ) -> Result<CertifiedKey, IdentityError> {
        check_label(&identity.name)?;
        self.issue_client_auth(
            identity.uri(),
            format!("domicile operator {}", identity.name),
            validity,
        )
    }

    /// A certificate that can only authenticate the side that dials (clients and operators, not nodes).
    fn issue_client_auth(
        &self,
        uri: String,
        common_name: String,
        validity: Validity,
    ) -> Result<CertifiedKey, IdentityError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a node certificate binding `identity`, usable both to serve and to dial (mutual TLS).
    pub fn issue(&self, identity: &NodeIdentity, validity: Validity) -> Result<CertifiedKey, IdentityError> {
        check_site_name(&identity.site.0)?;
        let mut params = CertificateParams::new(vec![server_name(identity.node.0)])?;
        params
            .subject_alt_names
            .push(SanType::URI(identity.uri().try_into()?));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("domicile {}", identity.node));
        params
            .distinguished_name
            .push(DnType::CountryName, identity.country.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Reads the node identity from a certificate. Call it only on a certificate the TLS handshake verified
/// against the cluster CA: an unverified certificate proves nothing.
pub fn attested_identity(cert_der: &[u8]) -> Result<NodeIdentity, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|error| IdentityError::Parse(error.to_string()))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|error| IdentityError::Parse(error.to_string()))?
        .map(|extension| extension.value.general_names.clone())
        .unwrap_or_default();
    let mut identities = names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("domicile:") => Some(*uri),
        _ => None,
    });
    let uri = identities.next().ok_or(IdentityError::NoIdentity)?;
    if identities.next().is_some() {
        return Err(IdentityError::SeveralIdentities);
    }
    NodeIdentity::parse_uri(uri)
}

/// The node identity in a PEM certificate (a node reading its own certificate at start-up).
pub fn node_identity_of_pem(cert_pem: &str) -> Result<NodeIdentity, IdentityError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|error| IdentityError::Pem {
        what: "the node certificate",
        reason: error.to_string(),
    })?;
    attested_identity(der.as_ref())
}

/// Reads the identity, node, client or operator, from a certificate the TLS handshake verified.
pub fn attested_peer(cert_der: &[u8]) -> Result<Peer, IdentityError> {
    match attested_identity(cert_der) {
        Ok(node) => Ok(Peer::Node(node)),
        Err(IdentityError::Malformed(uri)) if uri.starts_with(CLIENT_PREFIX) => {
            ClientIdentity::parse_uri(&uri).map(Peer::Client)
        }
        Err(IdentityError::Malformed(uri)) if uri.starts_with(OPERATOR_PREFIX) => {
            OperatorIdentity::parse_uri(&uri).map(Peer::Operator)
        }
        Err(error) => Err(error),
    }
}

/// Checks an attested identity against the topology: the site exists, stands in the attested country, and
/// is where the topology places the node. Any disagreement is refused rather than resolved in anyone's favour.
pub fn check_against_topology(identity: &NodeIdentity, topology: &Topology) -> Result<(), IdentityError> {
    let site = topology
        .site(&identity.site)
        .ok_or_else(|| IdentityError::UnknownSite {
            node: identity.node,
            site: identity.site.clone(),
        })?;
    if site.country != identity.country {
        return Err(IdentityError::CountryMismatch {
            site: site.name.clone(),
            attested: identity.country,
            configured: site.country,
        });
    }
    match topology.site_of(identity.node) {
        Some(placed) if placed.name == identity.site => Ok(()),
        placed => Err(IdentityError::NodeMisplaced {
            node: identity.node,
            attested: identity.site.clone(),
            configured: placed.map_or_else(|| "no site".to_string(), |site| format!("`{}`", site.name)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_round_trip_and_have_one_spelling() {
        let identity = NodeIdentity {
            node: NodeId(7),
            site: SiteName("hamar".into()),
            country: Country::parse("NO").unwrap(),
        };
        assert_eq!(identity.uri(), "domicile://v1/node/7/site/hamar/country/NO");
        assert_eq!(NodeIdentity::parse_uri(&identity.uri()).unwrap(), identity);
        for bad in [
            "domicile://v2/node/7/site/hamar/country/NO",
            "domicile://v1/node/+7/site/hamar/country/NO",
            "domicile://v1/node/7/site/Hamar/country/NO",
            "domicile://v1/node/7/site/hamar/country/UK",
            "domicile://v1/node/7/site/hamar/country/NO/extra",
            "domicile://v1/node/7/site//country/NO",
            "domicile://v1/node/99999999999999999999/site/hamar/country/NO",
        ] {
            assert!(NodeIdentity::parse_uri(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn client_and_operator_uris_round_trip_and_have_one_spelling() {
        let anywhere = ClientIdentity::named("billing");
        assert_eq!(anywhere.uri(), "domicile://v1/client/billing");
        let in_us = ClientIdentity {
            name: "billing".into(),
            country: Some(Country::parse("US").unwrap()),
        };
        assert_eq!(in_us.uri(), "domicile://v1/client/billing/country/US");
        for client in [anywhere, in_us] {
            assert_eq!(ClientIdentity::parse_uri(&client.uri()).unwrap(), client);
        }
        let operator = OperatorIdentity {
            name: "sre-ana".into(),
        };
        assert_eq!(operator.uri(), "domicile://v1/operator/sre-ana");
        assert_eq!(OperatorIdentity::parse_uri(&operator.uri()).unwrap(), operator);
        for bad in [
            "domicile://v1/client/",
            "domicile://v1/client/Billing",
            "domicile://v1/client/billing/country/UK",
            "domicile://v1/client/billing/country/us",
            "domicile://v1/client/billing/site/dublin",
            "domicile://v1/client/billing/country/US/extra",
        ] {
            assert!(ClientIdentity::parse_uri(bad).is_err(), "{bad} should be refused");
        }
        for bad in [
            "domicile://v1/operator/",
            "domicile://v1/operator/a/b",
            "domicile://v1/client/a",
        ] {
            assert!(
                OperatorIdentity::parse_uri(bad).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn the_verified_certificate_says_which_kind_of_peer_called() {
        let validity = Validity {
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::UNIX_EPOCH + time::Duration::days(365 * 100),
        };
        let ca = ClusterCa::generate("test", validity).unwrap();
        let der = |pair: CertifiedKey| {
            CertificateDer::from_pem_slice(pair.cert_pem.as_bytes())
                .unwrap()
                .to_vec()
        };
        let client = ClientIdentity {
            name: "billing".into(),
            country: Some(Country::parse("DE").unwrap()),
        };
        let operator = OperatorIdentity { name: "sre".into() };
        assert_eq!(
            attested_peer(&der(ca.issue_client(&client, validity).unwrap())).unwrap(),
            Peer::Client(client)
        );
        assert_eq!(
            attested_peer(&der(ca.issue_operator(&operator, validity).unwrap())).unwrap(),
            Peer::Operator(operator)
        );
    }
}
