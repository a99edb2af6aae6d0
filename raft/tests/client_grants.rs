//! Who may touch what, over real QUIC: a service's calls are served only within its topology grants
//! (refusals typed, naming service and jurisdiction, counted and in the audit trail), and a reader outside
//! the jurisdiction gets personal fields pseudonymised — the same pseudonym from every node — while a
//! reader inside sees them in clear.
//!
//! Waiting polls with a deadline on tokio's clock (real sockets); no assertion is on a duration.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use audit::event::{ClientRefusalKind, Event};
use common::{ONE_CLUSTER_AT_A_TIME, ask, audited_cluster_of, events};
use placement::Country;
use raft::client_protocol::{ClientOp, ClientRequest, ClientResponse, ClientResult, Consistency};
use raft::identity::ClientIdentity;
use raft::quic::Dialer;
use storage::WriteId;

/// Three EEA sites and Ashburn; one EEA group whose records' `phone` and `ip` are personal. `billing`
/// reads and writes; `ledger` only writes; `support` only reads; `search` holds nothing.
const TOPOLOGY: &str = r#"
[[site]]
name = "dublin-a"
country = "IE"
nodes = [1]

[[site]]
name = "dublin-b"
country = "IE"
nodes = [2]

[[site]]
name = "hamar"
country = "NO"
nodes = [3]

[[site]]
name = "ashburn"
country = "US"
nodes = [9]

[[group]]
name = "users-eea"
jurisdiction = "EEA"
voters = 3

[[grant]]
service = "billing"
jurisdiction = "EEA"
access = "read-write"

[[grant]]
service = "ledger"
jurisdiction = "EEA"
access = "write"

[[grant]]
service = "support"
jurisdiction = "EEA"
access = "read"

[[personal_data]]
jurisdiction = "EEA"
format = "json"
fields = ["phone", "ip"]
"#;

const EEA_NODES: [u64; 3] = [1, 2, 3];
const PROFILE: &[u8] = br#"{"name":"Ana","phone":"+353 1 555 0142","ip":"192.0.2.7"}"#;

fn call(op: ClientOp) -> ClientRequest {
    ClientRequest::Call {
        jurisdiction: "EEA".into(),
        user_id: "user-42".into(),
        op,
    }
}

fn get(consistency: Consistency) -> ClientRequest {
    call(ClientOp::Get {
        record: "profile".into(),
        consistency,
    })
}

fn put(sequence: u64) -> ClientRequest {
    call(ClientOp::Put {
        record: "profile".into(),
        value: PROFILE.to_vec(),
        write: WriteId {
            client_id: 42,
            sequence,
        },
    })
}

/// Sends `request` to each EEA node in turn until one serves it, for up to 20 s.
async fn served(dialer: &Dialer, request: ClientRequest) -> ClientResult {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while tokio::time::Instant::now() < give_up {
        for node in EEA_NODES {
            match ask(dialer, node, request.clone()).await {
                ClientResponse::Done { result, .. } => return result,
                other => last = Some(other),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no EEA node served {request:?}; last answer {last:?}")
}

fn dialer(cluster: &common::Cluster, name: &str, country: Option<&str>) -> Dialer {
    let identity = ClientIdentity {
        name: name.into(),
        country: country.map(|code| Country::parse(code).unwrap()),
    };
    let (_, certificate) = cluster.client_certificate_for(&identity).unwrap();
    cluster.dialer(&certificate).unwrap()
}

fn value_of(result: ClientResult) -> String {
    match result {
        ClientResult::Value {
            record: Some(record), ..
        } => String::from_utf8(record.value).unwrap(),
        other => panic!("expected a record, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_served_only_within_the_services_grants() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = audited_cluster_of(TOPOLOGY).await;
    cluster.create_groups().await.unwrap();
    let billing = dialer(&cluster, "billing", Some("IE"));
    let ledger = dialer(&cluster, "ledger", Some("IE"));
    let support = dialer(&cluster, "support", Some("IE"));
    let search = dialer(&cluster, "search", Some("IE"));

    assert!(matches!(
        served(&billing, put(1)).await,
        ClientResult::Written { .. }
    ));
    assert!(matches!(
        served(&ledger, put(2)).await,
        ClientResult::Written { .. }
    ));
    assert_eq!(
        value_of(served(&support, get(Consistency::Linearizable)).await).as_bytes(),
        PROFILE
    );

    // Each call outside a grant, to n1: refused, typed, naming service and jurisdiction and what it needed.
    let refusals: Vec<(&Dialer, ClientRequest, &str, &str)> = vec![
        (&ledger, get(Consistency::Linearizable), "ledger", "read"),
        (&ledger, get(Consistency::Stale), "ledger", "read"),
        (&ledger, call(ClientOp::Scan), "ledger", "read"),
        (&support, put(3), "support", "write"),
        (
            &support,
            call(ClientOp::Delete {
                record: "profile".into(),
                write: WriteId {
                    client_id: 7,
                    sequence: 1,
                },
            }),
            "support",
            "write",
        ),
        (
            &ledger,
            call(ClientOp::CompareAndSet {
                record: "profile".into(),
                expected_revision: None,
                value: b"{}".to_vec(),
                write: WriteId {
                    client_id: 8,
                    sequence: 1,
                },
            }),
            "ledger",
            "read-write",
        ),
        (&search, get(Consistency::Stale), "search", "read"),
        (
            &search,
            ClientRequest::ShardMap {
                jurisdiction: "EEA".into(),
            },
            "search",
            "read",
        ),
    ];
    let before = cluster.node(1).host.incidents().client_calls_forbidden;
    for (dialer, request, service, needed) in &refusals {
        let kind = request.name();
        match ask(dialer, 1, request.clone()).await {
            ClientResponse::Forbidden {
                caller,
                jurisdiction,
                reason,
            } => {
                assert_eq!(caller, format!("client `{service}` (IE)"), "{kind}");
                assert_eq!(jurisdiction, "EEA");
                assert!(
                    reason.contains(&format!("service `{service}`"))
                        && reason.contains("`EEA`")
                        && reason.contains(&format!("{kind} needs {needed}")),
                    "{kind}: {reason}"
                );
            }
            other => panic!("{service}'s {kind} outside its grant was answered {other:?}"),
        }
    }
    assert_eq!(
        cluster.node(1).host.incidents().client_calls_forbidden - before,
        refusals.len() as u64
    );
    let recorded = events(&cluster, 1)
        .into_iter()
        .filter(|event| matches!(event, Event::ClientRefused(refusal) if refusal.kind == ClientRefusalKind::NotGranted))
        .count();
    assert_eq!(
        recorded,
        refusals.len(),
        "every refusal is in n1's trail before it is answered"
    );

    // The refused writes changed nothing: the record is the one billing and ledger wrote.
    assert_eq!(
        value_of(served(&billing, get(Consistency::Linearizable)).await).as_bytes(),
        PROFILE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_reader_sees_personal_fields_only_pseudonymised() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = audited_cluster_of(TOPOLOGY).await;
    cluster.create_groups().await.unwrap();
    let billing = dialer(&cluster, "billing", Some("IE"));
    let Some(ClientResult::Written { .. }) = Some(served(&billing, put(1)).await) else {
        panic!("the put was not written")
    };

    // Inside (Norway is in the EEA): in clear.
    let inside = dialer(&cluster, "support", Some("NO"));
    assert_eq!(
        value_of(served(&inside, get(Consistency::Linearizable)).await).as_bytes(),
        PROFILE
    );

    // Outside (the US), or with no attested country: pseudonymised, and the same from every node.
    for outside in [
        dialer(&cluster, "support", Some("US")),
        dialer(&cluster, "support", None),
    ] {
        let mut seen = Vec::new();
        for node in EEA_NODES {
            let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
            let value = loop {
                match ask(&outside, node, get(Consistency::Stale)).await {
                    ClientResponse::Done { result, .. } => break value_of(result),
                    other => assert!(tokio::time::Instant::now() < give_up, "n{node}: {other:?}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            seen.push(value);
        }
        for value in &seen {
            // The personal values hold characters a pseudonym never does ('+', ' ', '.'), so
            // looking for them cannot be fooled by a hex digest that happens to contain "555".
            assert!(
                !value.contains("555 0142") && !value.contains("192.0.2.7"),
                "a personal value leaked: {value}"
            );
            let object: serde_json::Value = serde_json::from_str(value).unwrap();
            assert_eq!(object["name"], "Ana", "fields that are not personal are kept");
            for field in ["phone", "ip"] {
                let digest = object[field].as_str().unwrap().strip_prefix("psn:1:");
                assert!(
                    digest.is_some_and(
                        |hex| hex.len() == 32 && hex.bytes().all(|byte| byte.is_ascii_hexdigit())
                    ),
                    "{field} is not a pseudonym: {value}"
                );
            }
        }
        assert!(
            seen.windows(2).all(|pair| pair[0] == pair[1]),
            "pseudonyms differ between nodes: {seen:?}"
        );

        // A scan is a read too; a linearizable get from the leader the same.
        let ClientResult::Records(records) = served(&outside, call(ClientOp::Scan)).await else {
            panic!("a scan answers records")
        };
        assert_eq!(String::from_utf8(records[0].1.value.clone()).unwrap(), seen[0]);
        assert_eq!(
            value_of(served(&outside, get(Consistency::Linearizable)).await),
            seen[0]
        );
    }

    // Every outside read was counted and recorded, with what was replaced.
    let reads: Vec<_> = EEA_NODES
        .iter()
        .flat_map(|&node| events(&cluster, node))
        .filter_map(|event| match event {
            Event::OutsideRead(read) => Some(read),
            _ => None,
        })
        .collect();
    assert_eq!(reads.len(), 2 * (EEA_NODES.len() + 2), "{reads:?}");
    assert!(
        reads
            .iter()
            .all(|read| read.fields_pseudonymised == 2 && read.jurisdiction == "EEA")
    );
    assert!(reads.iter().any(|read| read.caller == "client `support` (US)"));
    assert!(reads.iter().any(|read| read.caller == "client `support`"));
    let counted: u64 = EEA_NODES
        .iter()
        .map(|&node| cluster.node(node).host.incidents().outside_reads)
        .sum();
    assert_eq!(counted, reads.len() as u64);
}
