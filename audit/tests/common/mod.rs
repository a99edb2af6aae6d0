//! A cluster CA and node certificates as `domicile certs` issues them (rcgen, ECDSA P-256, the node
//! identity URI in the subject alternative names), and helpers to take a segment file apart.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use audit::entry::ENTRY_PAYLOAD_BYTES_MAX;
use audit::event::{Enforcement, Event, Refusal};
use audit::segment::{Frame, FrameReader};
use audit::{AuditConfig, AuditLog, Clock, ClusterCa, Signer};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// 2026-12-04T00:00:00Z, the clock every test entry is stamped with (plus its count).
pub const NOW_UNIX_MS: u64 = 1_796_342_400_000;

pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub struct NodeKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl NodeKey {
    pub fn signer(&self) -> Signer {
        Signer::from_pem(&self.cert_pem, &self.key_pem).expect("a node key and its certificate")
    }
}

fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::from_unix_timestamp((NOW_UNIX_MS / 1000) as i64).unwrap();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(365);
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Domicile cluster CA ({name})"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn cluster_ca(&self) -> ClusterCa {
        ClusterCa::from_pem(&self.cert_pem).unwrap()
    }

    pub fn node(&self, id: u64, site: &str, country: &str) -> NodeKey {
        let mut params = CertificateParams::new(vec![format!("node-{id}.domicile.internal")]).unwrap();
        let uri = format!("domicile://v1/node/{id}/site/{site}/country/{country}");
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("domicile n{id}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        NodeKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A clock that moves one millisecond per reading.
pub fn test_clock() -> Clock {
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(NOW_UNIX_MS));
    Arc::new(move || ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

pub fn open(dir: &Path, key: &NodeKey, segment_bytes_max: u64) -> AuditLog {
    let config = AuditConfig {
        dir: dir.to_path_buf(),
        segment_bytes_max,
    };
    AuditLog::open(config, key.signer(), test_clock()).expect("the audit trail opens")
}

/// A refusal like the ones the fence records, numbered.
pub fn refusal(number: u64) -> Event {
    Event::Refused(Refusal {
        enforcement: Enforcement::Egress,
        group: "users-eu".into(),
        node: Some(5),
        site: Some("ashburn".into()),
        country: Some("US".into()),
        jurisdiction: "EU".into(),
        reason: "egress_outside_jurisdiction".into(),
        message: format!("refusal number {number}"),
    })
}

/// The segment files of a trail, in order.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    audit::segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, path)| path)
        .collect()
}

/// Each entry frame of a segment: (offset, length in bytes, header included).
pub fn entry_frames(path: &Path) -> Vec<(usize, usize)> {
    let mut reader = FrameReader::open(path).unwrap();
    let Frame::Whole { .. } = reader.next_frame(audit::entry::HEADER_PAYLOAD_BYTES_MAX).unwrap() else {
        panic!("no header in {}", path.display());
    };
    let mut frames = Vec::new();
    loop {
        let start = reader.offset();
        match reader.next_frame(ENTRY_PAYLOAD_BYTES_MAX).unwrap() {
            Frame::Whole { .. } => frames.push((start as usize, (reader.offset() - start) as usize)),
            Frame::End => return frames,
            other => panic!("{}: {other:?}", path.display()),
        }
    }
}
