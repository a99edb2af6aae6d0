//! Mutual TLS between nodes, handshaking in memory through rustls: who a peer is comes from its verified
//! certificate, and certificates from another CA, expired ones, or none at all are refused at the handshake.

use std::sync::Arc;

use placement::{Country, Jurisdiction, NodeId, SiteName, TopologyFile};
use raft::identity::{
    ClusterCa, IdentityError, NodeIdentity, Validity, attested_identity, check_against_topology, server_name,
    tls_configs,
};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use time::{Duration, OffsetDateTime};

const TOPOLOGY: &str = r#"
[[site]]
name = "dublin-a"
country = "IE"
nodes = [1]

[[site]]
name = "hamar"
country = "NO"
nodes = [7]

[[site]]
name = "ashburn"
country = "US"
nodes = [9]
"#;

fn valid_now() -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity {
        not_before: now - Duration::hours(1),
        not_after: now + Duration::days(30),
    }
}

fn identity(node: u64, site: &str, country: &str) -> NodeIdentity {
    NodeIdentity {
        node: NodeId(node),
        site: SiteName(site.into()),
        country: Country::parse(country).unwrap(),
    }
}

/// Runs a TLS 1.3 handshake in memory. On success returns what each side attests about the other: the
/// server's view of the client, then the client's view of the server.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    dial: NodeId,
) -> Result<(NodeIdentity, NodeIdentity), rustls::Error> {
    let name = ServerName::try_from(server_name(dial.0)).unwrap();
    let mut client = ClientConnection::new(client, name)?;
    let mut server = ServerConnection::new(server)?;
    // A TLS 1.3 handshake with client auth takes a few flights; bound the loop so a bug can't spin.
    for _ in 0..16 {
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes).unwrap();
        }
        let mut flight = &bytes[..];
        while !flight.is_empty() {
            server.read_tls(&mut flight).unwrap();
            server.process_new_packets()?;
        }
        let mut bytes = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut bytes).unwrap();
        }
        let mut flight = &bytes[..];
        while !flight.is_empty() {
            client.read_tls(&mut flight).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            let peer = |certs: Option<&[rustls::pki_types::CertificateDer<'_>]>| {
                attested_identity(certs.expect("mutual TLS has a peer certificate")[0].as_ref()).unwrap()
            };
            return Ok((peer(server.peer_certificates()), peer(client.peer_certificates())));
        }
    }
    panic!("handshake did not finish in 16 flights");
}

#[test]
fn peers_learn_each_others_site_from_the_verified_certificate() {
    let ca = ClusterCa::generate("test", valid_now()).unwrap();
    let hamar = ca.issue(&identity(7, "hamar", "NO"), valid_now()).unwrap();
    let dublin = ca.issue(&identity(1, "dublin-a", "IE"), valid_now()).unwrap();
    let ca_pem = &ca.certified_key().cert_pem;
    let (hamar_tls, dublin_tls) = (
        tls_configs(ca_pem, &hamar).unwrap(),
        tls_configs(ca_pem, &dublin).unwrap(),
    );

    let (client_seen, server_seen) =
        handshake(dublin_tls.client, hamar_tls.server.clone(), NodeId(7)).unwrap();
    assert_eq!(client_seen, identity(1, "dublin-a", "IE"));
    assert_eq!(server_seen, identity(7, "hamar", "NO"));

    // A CA written out and loaded again (as `domicile certs init` then `certs node` do) issues valid certs.
    let reloaded = ClusterCa::from_pem(ca_pem, &ca.certified_key().key_pem).unwrap();
    let later = reloaded
        .issue(&identity(9, "ashburn", "US"), valid_now())
        .unwrap();
    let later_tls = tls_configs(ca_pem, &later).unwrap();
    let (seen, _) = handshake(later_tls.client, hamar_tls.server.clone(), NodeId(7)).unwrap();
    assert_eq!(seen.country.as_str(), "US");
}

#[test]
fn a_us_node_that_claims_dublin_is_still_treated_as_us() {
    let file = TopologyFile::parse(TOPOLOGY).unwrap();
    let ca = ClusterCa::generate("test", valid_now()).unwrap();
    let ca_pem = &ca.certified_key().cert_pem;
    // Node 9's operator set `site = "dublin-a"` in its config, but its certificate was issued for Ashburn.
    // Nothing a node says about itself is read: only the certificate.
    let us = ca.issue(&identity(9, "ashburn", "US"), valid_now()).unwrap();
    let hamar = ca.issue(&identity(7, "hamar", "NO"), valid_now()).unwrap();
    let (seen, _) = handshake(
        tls_configs(ca_pem, &us).unwrap().client,
        tls_configs(ca_pem, &hamar).unwrap().server,
        NodeId(7),
    )
    .unwrap();
    assert_eq!(seen, identity(9, "ashburn", "US"));
    check_against_topology(&seen, &file.topology).unwrap();
    assert!(
        !file.topology.is_inside(seen.node, &Jurisdiction::eea()),
        "the fence sees a US node"
    );

    // A certificate that itself disagrees with the topology is refused, not resolved in its favour.
    let lying_country = identity(9, "dublin-a", "US");
    assert!(matches!(
        check_against_topology(&lying_country, &file.topology),
        Err(IdentityError::CountryMismatch { .. })
    ));
    let wrong_site = identity(9, "dublin-a", "IE");
    assert!(matches!(
        check_against_topology(&wrong_site, &file.topology),
        Err(IdentityError::NodeMisplaced { .. })
    ));
    let unknown_site = identity(9, "atlantis", "US");
    assert!(matches!(
        check_against_topology(&unknown_site, &file.topology),
        Err(IdentityError::UnknownSite { .. })
    ));
}

#[test]
fn another_ca_an_expired_certificate_or_none_is_refused_at_the_handshake() {
    let ca = ClusterCa::generate("prod", valid_now()).unwrap();
    let rogue = ClusterCa::generate("rogue", valid_now()).unwrap();
    let ca_pem = &ca.certified_key().cert_pem;
    let server = tls_configs(
        ca_pem,
        &ca.issue(&identity(7, "hamar", "NO"), valid_now()).unwrap(),
    )
    .unwrap()
    .server;

    // A client certificate from another CA, even with a plausible identity.
    let forged = rogue.issue(&identity(1, "dublin-a", "IE"), valid_now()).unwrap();
    let forged_client = tls_configs(&rogue.certified_key().cert_pem, &forged)
        .unwrap()
        .client;
    // The rogue client would not trust our server either; give it our CA so the failure is the server's.
    let forged_client_trusting_us = tls_configs(ca_pem, &forged).unwrap().client;
    let error = handshake(forged_client_trusting_us, server.clone(), NodeId(7)).unwrap_err();
    assert_eq!(
        error,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        "client cert from another CA"
    );
    let error = handshake(forged_client, server.clone(), NodeId(7)).unwrap_err();
    assert_eq!(
        error,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        "server cert from another CA"
    );

    // An expired client certificate.
    let now = OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - Duration::days(30),
        not_after: now - Duration::days(1),
    };
    let stale = ca.issue(&identity(1, "dublin-a", "IE"), expired).unwrap();
    let error = handshake(
        tls_configs(ca_pem, &stale).unwrap().client,
        server.clone(),
        NodeId(7),
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "expired: {error:?}"
    );

    // No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(pem_der(ca_pem)))
        .unwrap();
    let anonymous = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let error = handshake(Arc::new(anonymous), server, NodeId(7)).unwrap_err();
    assert_eq!(
        error,
        rustls::Error::NoCertificatesPresented,
        "no client certificate"
    );
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}
