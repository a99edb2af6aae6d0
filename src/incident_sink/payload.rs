//! The JSON the webhook receives: one object per POST, `type` saying which of three it is.
//!
//! * `incident`: one audit entry — its sequence, hash and previous hash as in `domicile audit export -o
//!   json`, its kind, a one-line summary and the event itself — keyed `n<node>-<sequence>-<hash>`.
//! * `gap`: incidents given up because the spool was full: trail sequences `first_sequence` to
//!   `last_sequence`, of which `skipped_incidents` were incidents; keyed `n<node>-gap-<first>-<last>`.
//! * `audit.write_failed`: the trail itself can't be written (nothing more reaches it until the node
//!   restarts); keyed `n<node>-trail-failed-<durable entries>`.
//!
//! Every object carries `idempotency_key` (also the `Idempotency-Key` header), `cluster`, `node` and
//! `identity` (the node's certificate identity, which signs the trail).

use audit::entry::hex;
use audit::{Entry, Hash};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::backlog::Gap;

pub fn incident_key(node: u64, sequence: u64, hash: &Hash) -> String {
    format!("n{node}-{sequence}-{}", hex(hash))
}

pub fn incident(node: u64, cluster: &str, identity: &str, entry: &Entry, hash: &Hash) -> Value {
    json!({
        "type": "incident",
        "idempotency_key": incident_key(node, entry.sequence, hash),
        "cluster": cluster,
        "node": node,
        "identity": identity,
        "sequence": entry.sequence,
        "hash": hex(hash),
        "previous": hex(&entry.previous),
        "time": rfc3339(entry.time_unix_ms),
        "time_unix_ms": entry.time_unix_ms,
        "kind": entry.event.kind(),
        "summary": entry.event.describe(),
        "event": entry.event,
    })
}

pub fn gap(node: u64, cluster: &str, identity: &str, gap: &Gap) -> Value {
    json!({
        "type": "gap",
        "idempotency_key": format!("n{node}-gap-{}-{}", gap.first, gap.last),
        "cluster": cluster,
        "node": node,
        "identity": identity,
        "first_sequence": gap.first,
        "last_sequence": gap.last,
        "skipped_incidents": gap.incidents,
        "summary": format!(
            "{} incident(s) in audit entries {}..={} were not pushed (the spool was full); they are in the \
             node's trail: domicile audit export --from {}",
            gap.incidents, gap.first, gap.last, gap.first
        ),
    })
}

pub fn trail_failed(node: u64, cluster: &str, identity: &str, durable_entries: u64, failures: u64) -> Value {
    json!({
        "type": "audit.write_failed",
        "idempotency_key": format!("n{node}-trail-failed-{durable_entries}"),
        "cluster": cluster,
        "node": node,
        "identity": identity,
        "durable_entries": durable_entries,
        "failed_entries": failures,
        "summary": format!(
            "the audit trail can't be written after entry {}: {failures} entr(ies) failed; it takes no more \
             until the node restarts",
            durable_entries.saturating_sub(1)
        ),
    })
}

fn rfc3339(unix_ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{unix_ms}ms"))
}
