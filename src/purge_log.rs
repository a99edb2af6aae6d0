//! The replicas a node purged, each with the proof it acted on: `purged.jsonl` in the data directory, one
//! JSON record a line, appended and synced after each purge and read back at start-up. `GET /status`
//! reports it, and `domicile placement apply` turns it into the operator's purge attestation.
//!
//! A record is written once the deletion has completed, so a crash between the two leaves a retired replica
//! without a record: the status still lists the group as retired, and the attestation reports its proof as
//! unknown rather than invent one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use placement::{GroupId, Membership, NodeId};

use crate::admin_api::PurgeRecord;

pub struct PurgeLog {
    path: PathBuf,
    records: Mutex<Vec<PurgeRecord>>,
}

impl PurgeLog {
    /// Reads `purged.jsonl` under `data_dir`, if any. A line that does not parse (a crash mid-append tears
    /// the last one) is skipped with a warning.
    pub fn open(data_dir: &Path) -> anyhow::Result<PurgeLog> {
        let path = data_dir.join("purged.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(error).with_context(|| format!("can't read {}", path.display())),
        };
        let mut records = Vec::new();
        for (number, line) in text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
        {
            match serde_json::from_str(line) {
                Ok(record) => records.push(record),
                Err(error) => tracing::warn!(
                    file = %path.display(), line = number + 1, %error,
                    "an unreadable purge record is skipped"
                ),
            }
        }
        Ok(PurgeLog {
            path,
            records: Mutex::new(records),
        })
    }

    /// Records that this node's replica of `group` was deleted on `leader`'s proof, now.
    pub fn record(
        &self,
        group: &GroupId,
        leader: NodeId,
        term: u64,
        log_index: u64,
        membership: &Membership,
    ) -> PurgeRecord {
        let now = time::OffsetDateTime::now_utc();
        let record = PurgeRecord {
            group: group.0.clone(),
            leader: leader.0,
            term,
            log_index,
            voters: membership.voters.iter().map(|node| node.0).collect(),
            learners: membership.learners.iter().map(|node| node.0).collect(),
            deleted_at: rfc3339(now),
            deleted_at_unix_ms: u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        };
        if let Err(error) = self.append(&record) {
            // The deletion happened either way; only its record is missing from disk (kept in memory).
            tracing::error!(file = %self.path.display(), %error, "can't record a purge on disk");
        }
        self.records.lock().expect("purge log lock").push(record.clone());
        record
    }

    pub fn records(&self) -> Vec<PurgeRecord> {
        self.records.lock().expect("purge log lock").clone()
    }

    fn append(&self, record: &PurgeRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_string(record).map_err(std::io::Error::other)?;
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(line.as_bytes())?;
        file.sync_all()
    }
}

/// `2026-12-05T09:14:03Z`.
fn rfc3339(at: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = PurgeLog::open(dir.path()).unwrap();
        let membership = Membership::new([NodeId(1), NodeId(2), NodeId(3)], []);
        let written = log.record(&GroupId("users-legacy".into()), NodeId(1), 4, 17, &membership);
        assert_eq!(written.voters, vec![1, 2, 3]);
        assert!(
            written.deleted_at.ends_with('Z') && written.deleted_at.len() == 20,
            "{}",
            written.deleted_at
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("purged.jsonl"))
            .unwrap();
        file.write_all(b"{\"group\": \"torn").unwrap();
        let reopened = PurgeLog::open(dir.path()).unwrap();
        assert_eq!(reopened.records(), vec![written]);
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        let at = time::OffsetDateTime::from_unix_timestamp(1_796_461_243).unwrap();
        assert_eq!(rfc3339(at), "2026-12-05T09:00:43Z");
    }
}
