//! Following the node's audit trail as it grows: the entries after a cursor, across segments, only as
//! far as the writer has synced.
//!
//! The reader keeps its place (segment file, byte offset, next sequence) and on each call reads whole
//! frames from there up to the first entry that is not yet durable (`durable_below`, the writer's own
//! count), so nothing is pushed that a crash could still take back. A frame cut short is the writer
//! mid-write: the reader stops before it and reads it whole next time. When the segment ends and a later
//! one exists (the writer rotated), it moves on. Reads are of bounded frames (`audit`'s reader), and a
//! call reads at most `entries_max` entries, so it is short however far behind the sink is.

use std::path::{Path, PathBuf};

use audit::entry::{ENTRY_PAYLOAD_BYTES_MAX, HEADER_PAYLOAD_BYTES_MAX, SegmentHeader, SignedEntry, hash};
use audit::segment::{Frame, FrameReader, list_segments};
use audit::{Entry, Hash};

/// Why the trail can't be read further now (the sink logs it and tries again later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailError {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: String,
}

impl std::fmt::Display for TrailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit trail {}, offset {}: {}",
            self.path.display(),
            self.offset,
            self.reason
        )
    }
}

#[derive(Debug)]
pub struct TrailReader {
    dir: PathBuf,
    /// The segment being read: its first sequence and path, and where the next frame starts (0: before
    /// its header).
    segment: Option<(u64, PathBuf)>,
    offset: u64,
    next_sequence: u64,
}

impl TrailReader {
    /// A reader whose first entry is `sequence` (or the first after it the trail holds).
    pub fn starting_at(dir: &Path, sequence: u64) -> Result<TrailReader, TrailError> {
        let mut reader = TrailReader {
            dir: dir.to_path_buf(),
            segment: None,
            offset: 0,
            next_sequence: sequence,
        };
        let segments = reader.segments()?;
        // The last segment starting at or before `sequence`; entries before it in there are skipped.
        let holding = segments
            .iter()
            .rev()
            .find(|(first, _)| *first <= sequence)
            .or(segments.first());
        reader.segment = holding.cloned();
        Ok(reader)
    }

    /// The sequence of the entry read next.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Calls `each` with the entries from the reader's place on, in order, that are durable (sequence
    /// below `durable_below`), at most `entries_max` of them; returns how many.
    pub fn read(
        &mut self,
        durable_below: u64,
        entries_max: usize,
        mut each: impl FnMut(Entry, Hash),
    ) -> Result<usize, TrailError> {
        let mut read = 0;
        while read < entries_max && self.next_sequence < durable_below {
            let Some((first, path)) = self.segment.clone().or_else(|| self.first_segment()) else {
                return Ok(read);
            };
            self.segment = Some((first, path.clone()));
            let error = |offset: u64, reason: String| TrailError {
                path: path.clone(),
                offset,
                reason,
            };
            let mut frames =
                FrameReader::open_at(&path, self.offset).map_err(|io| error(self.offset, io.to_string()))?;
            if self.offset == 0 {
                match frames.next_frame(HEADER_PAYLOAD_BYTES_MAX) {
                    Ok(Frame::Whole { payload, .. }) => {
                        SegmentHeader::decode(&payload).map_err(|reason| error(0, reason))?;
                    }
                    Ok(other) => return Err(error(0, format!("segment header: {other:?}"))),
                    Err(io) => return Err(error(0, io.to_string())),
                }
                self.offset = frames.offset();
            }
            let ended = loop {
                if read >= entries_max {
                    return Ok(read);
                }
                let frame = frames
                    .next_frame(ENTRY_PAYLOAD_BYTES_MAX)
                    .map_err(|io| error(self.offset, io.to_string()))?;
                let (offset, payload) = match frame {
                    Frame::Whole { offset, payload } => (offset, payload),
                    Frame::End => break true,
                    // The writer is mid-write: read it whole next time.
                    Frame::Torn { .. } => break false,
                    Frame::Damaged { offset, reason } => return Err(error(offset, reason)),
                };
                let signed = SignedEntry::decode(&payload)
                    .map_err(|decode| error(offset, format!("undecodable entry: {decode}")))?;
                let sequence = signed.entry.sequence;
                if sequence >= durable_below {
                    // Written, not yet synced: left where it is for the next call.
                    return Ok(read);
                }
                self.offset = frames.offset();
                if sequence < self.next_sequence {
                    continue; // before the starting point, in the segment that holds it
                }
                if sequence > self.next_sequence {
                    tracing::error!(
                        expected = self.next_sequence, found = sequence, file = %path.display(),
                        "entries are missing from the audit trail (run `domicile audit verify`)"
                    );
                }
                self.next_sequence = sequence + 1;
                each(signed.entry, hash(&payload));
                read += 1;
            };
            if !ended {
                return Ok(read);
            }
            // The segment ended: go on in the next one, if the writer has started it.
            match self.segment_after(first)? {
                Some(next) => {
                    self.segment = Some(next);
                    self.offset = 0;
                }
                None => return Ok(read),
            }
        }
        Ok(read)
    }

    fn segments(&self) -> Result<Vec<(u64, PathBuf)>, TrailError> {
        list_segments(&self.dir).map_err(|io| TrailError {
            path: self.dir.clone(),
            offset: 0,
            reason: io.to_string(),
        })
    }

    fn first_segment(&self) -> Option<(u64, PathBuf)> {
        self.segments().ok()?.into_iter().next()
    }

    fn segment_after(&self, first: u64) -> Result<Option<(u64, PathBuf)>, TrailError> {
        Ok(self.segments()?.into_iter().find(|(later, _)| *later > first))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use audit::{AuditConfig, AuditLog, Event, Signer};
    use placement::{Country, NodeId, SiteName};
    use raft::identity::{ClusterCa, NodeIdentity, Validity};
    use time::{Duration, OffsetDateTime};

    use super::*;

    /// A real audit trail in `dir`, signed by a fresh node certificate, with segments of `segment_bytes`.
    pub(crate) fn trail(dir: &Path, segment_bytes: u64) -> AuditLog {
        let now = OffsetDateTime::now_utc();
        let validity = || Validity {
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(1),
        };
        let ca = ClusterCa::generate("trail-test", validity()).unwrap();
        let identity = NodeIdentity {
            node: NodeId(1),
            site: SiteName("dublin-a".into()),
            country: Country::parse("IE").unwrap(),
        };
        let node = ca.issue(&identity, validity()).unwrap();
        let signer = Signer::from_pem(&node.cert_pem, &node.key_pem).unwrap();
        let config = AuditConfig {
            dir: dir.to_path_buf(),
            segment_bytes_max: segment_bytes,
        };
        AuditLog::open(config, signer, Arc::new(|| 1_796_000_000_000)).unwrap()
    }

    pub(crate) fn failed_purge(number: u64) -> Event {
        Event::PurgeFailed {
            group: "users-eu".into(),
            reason: format!("test {number}"),
        }
    }

    fn read_all(reader: &mut TrailReader, durable_below: u64, entries_max: usize) -> Vec<(u64, Hash)> {
        let mut read = Vec::new();
        reader
            .read(durable_below, entries_max, |entry, hash| {
                assert_ne!(hash, audit::entry::GENESIS, "an entry's hash is its own");
                read.push((entry.sequence, hash));
            })
            .unwrap();
        read
    }

    #[test]
    fn the_reader_follows_the_trail_across_rotations_as_far_as_it_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of about 2 KiB: a certificate, then a few entries each.
        let log = trail(dir.path(), 2_048);
        for number in 0..60 {
            log.append(failed_purge(number)).unwrap();
        }
        let segments = list_segments(dir.path()).unwrap().len();
        assert!(segments > 3, "the trail rotated: {segments} segments");
        let entries = log.durable_entries();
        assert_eq!(entries, 61, "the opening and sixty");

        let mut reader = TrailReader::starting_at(dir.path(), 0).unwrap();
        let first = read_all(&mut reader, 30, usize::MAX);
        assert_eq!(
            first.iter().map(|(sequence, _)| *sequence).collect::<Vec<_>>(),
            (0..30).collect::<Vec<_>>(),
            "nothing at or past the durable bound"
        );
        let bounded = read_all(&mut reader, entries, 7);
        assert_eq!(bounded.len(), 7, "at most entries_max a call");
        let rest = read_all(&mut reader, entries, usize::MAX);
        assert_eq!(rest.first().map(|(sequence, _)| *sequence), Some(37));
        assert_eq!(rest.last().map(|(sequence, _)| *sequence), Some(60));
        assert!(read_all(&mut reader, entries, usize::MAX).is_empty());

        // Entries written later, into new segments, are found from where the reader stopped.
        for number in 60..80 {
            log.append(failed_purge(number)).unwrap();
        }
        let later = read_all(&mut reader, log.durable_entries(), usize::MAX);
        assert_eq!(
            later.iter().map(|(sequence, _)| *sequence).collect::<Vec<_>>(),
            (61..81).collect::<Vec<_>>()
        );

        // Each hash is the next entry's `previous`, as a reader started anywhere sees.
        let all: Vec<(u64, Hash)> = first
            .into_iter()
            .chain(bounded)
            .chain(rest)
            .chain(later)
            .collect();
        for start in [0, 1, 29, 44, 80] {
            let mut reader = TrailReader::starting_at(dir.path(), start).unwrap();
            let mut seen = Vec::new();
            reader
                .read(81, usize::MAX, |entry, hash| {
                    seen.push((entry.sequence, entry.previous, hash))
                })
                .unwrap();
            assert_eq!(seen.first().map(|(sequence, _, _)| *sequence), Some(start));
            for (sequence, previous, hash) in seen {
                assert_eq!(hash, all[sequence as usize].1);
                if sequence > 0 {
                    assert_eq!(previous, all[sequence as usize - 1].1, "entry {sequence}");
                }
            }
        }
    }

    #[test]
    fn a_damaged_entry_is_named_and_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = trail(dir.path(), 1 << 20);
        for number in 0..5 {
            log.append(failed_purge(number)).unwrap();
        }
        log.close();
        let (_, path) = list_segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let mut reader = TrailReader::starting_at(dir.path(), 0).unwrap();
        let mut read = Vec::new();
        let error = reader
            .read(6, usize::MAX, |entry, _| read.push(entry.sequence))
            .unwrap_err();
        assert_eq!(read, [0, 1, 2, 3, 4], "up to the damage");
        assert!(error.reason.contains("checksum"), "{error}");
        assert_eq!(
            reader.next_sequence(),
            5,
            "the damaged entry is tried again, not passed over"
        );
    }
}
