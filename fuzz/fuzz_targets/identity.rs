//! Certificates' identities (`raft::identity`): the identity URIs a node reads from a peer's verified
//! certificate (node, client service, operator), each with one spelling (what parses prints back the
//! same), and `attested_peer` over arbitrary DER (x509-parser, the subject alternative names), as
//! a node reads every connection's certificate; the audit crate's reading of a certificate's identity.
//!
//! Choice 0: the input is a URI (as UTF-8); otherwise DER.
#![no_main]

use domicile_fuzz::split_mode;
use libfuzzer_sys::fuzz_target;
use raft::identity::{
    ClientIdentity, NodeIdentity, OperatorIdentity, Peer, attested_identity, attested_peer,
};

fn uri(text: &str) {
    if let Ok(node) = NodeIdentity::parse_uri(text) {
        assert_eq!(node.uri(), text, "a node identity with two spellings");
    }
    if let Ok(client) = ClientIdentity::parse_uri(text) {
        assert_eq!(client.uri(), text, "a client identity with two spellings");
        let _ = client.to_string();
    }
    if let Ok(operator) = OperatorIdentity::parse_uri(text) {
        assert_eq!(operator.uri(), text, "an operator identity with two spellings");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = split_mode(data) else {
        return;
    };
    if mode.choice == 0 {
        if let Ok(text) = std::str::from_utf8(bytes) {
            uri(text);
        }
        return;
    }
    match attested_peer(bytes) {
        Ok(peer) => {
            let written = match &peer {
                Peer::Node(node) => node.uri(),
                Peer::Client(client) => client.uri(),
                Peer::Operator(operator) => operator.uri(),
            };
            uri(&written);
            let _ = peer.to_string();
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
    let _ = attested_identity(bytes);
    let _ = audit::key::NodeCertificate::identity_unverified(bytes);
});
