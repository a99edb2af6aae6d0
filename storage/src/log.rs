//! The node-wide Raft log: one append-only, segmented write-ahead log shared by every replica
//! group on the node, with an in-memory index per group.
//!
//! Guarantees:
//! * **Order.** Records reach the file in the order [`Wal`] accepts them, so syncing a position
//!   makes every earlier record durable (a segment is synced before the next one is started).
//! * **Replay equals the live state.** Recovery feeds every intact record through the same
//!   [`Wal::apply`] the live path uses, so the index rebuilt after a crash is the index the node
//!   had, minus unsynced records.
//! * **Damage is named.** A torn tail in the last segment is truncated and logged; anything else
//!   (bad checksum, a record that does not decode, an index gap, a missing segment, committed
//!   entries that are gone) refuses to open with the file, offset and group.
//! * **Purge by segment.** A segment is removed once it is not the active one, every older
//!   segment is gone and no group's live entry is in it. Each segment starts with a checkpoint of
//!   every group's vote, commit and purge point, so deleting old segments never loses metadata.
//!
//! * **Preallocation.** On disks that gain from it ([`Disk::preallocation_bytes`]) the active
//!   segment is filled with zeros ahead of its records, a chunk at a time, so a sync flushes data without a file-size update (see [`crate::disk`]); replay ends the
//!   records at the zero tail and tells it from damage (see [`crate::segment`]). A segment is cut
//!   to the length of its records when it is sealed.
//!
//! * **Write-behind.** Accepting a record copies it into an in-memory buffer that follows the
//!   active segment's written bytes; [`Wal::write_buffered`] writes the whole buffer with one
//!   write. The group-commit driver calls it once per round, just before its fdatasync, so every
//!   concurrent append costs a memory copy instead of a write system call (and a write failure
//!   poisons the log exactly as before). Reads of a record still in the buffer are served from it.
//!   The buffer is written early when it grows past [`BUFFER_BYTES_MAX`] and before a rotation.
//!
//! This module does no syncing of its own except at segment rotation: the group-commit driver
//! ([`crate::group_commit`]) decides when to write and fdatasync. It uses no thread, clock or
//! randomness.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;

use serde::Serialize;

use crate::codec;
use crate::disk::Disk;
use crate::disk::DiskFile;
use crate::entry_index::EntryIndex;
use crate::error::LogError;
use crate::segment;
use crate::segment::GroupCheckpoint;
use crate::segment::RECORD_PAYLOAD_BYTES_MAX;
use crate::segment::RecordHead;
use crate::segment::SEGMENT_FILE_BYTES_MAX;
use crate::segment::ScanEnd;

/// Accepted bytes beyond this are written without waiting for the driver, bounding the buffer.
pub const BUFFER_BYTES_MAX: usize = 4 << 20;

/// Tuning of the log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// A new segment is started before a write would make the active one larger than this.
    pub segment_bytes_max: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 64 << 20,
        }
    }
}

/// A byte position in the log; ordered by segment, then offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Where one entry's record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Location {
    segment: u64,
    offset: u64,
    frame_len: u32,
}

struct Segment<F> {
    file: Arc<F>,
    name: String,
    /// Where its records end.
    len: u64,
    /// The file's length: `len` plus the zero tail not yet written.
    allocated: u64,
    /// Entries of any group whose live record is in this segment.
    live_entries: u64,
}

#[derive(Clone, Debug, Default)]
struct GroupState {
    entries: EntryIndex<Location>,
    vote: Option<Vec<u8>>,
    committed: Option<(u64, Vec<u8>)>,
    purged: Option<(u64, Vec<u8>)>,
    /// This node's replica was purged ([`Wal::retire`]) and not brought back since.
    retired: bool,
}

/// Bytes reserved ahead of framing each entry.
const FRAME_RESERVE_BYTES: usize = 1024;

/// Entries of one group, framed outside the log's lock and written by [`Wal::append`].
pub struct EntryBatch {
    group: u64,
    bytes: Vec<u8>,
    /// (index, offset in `bytes`, frame length)
    frames: Vec<(u64, u32, u32)>,
}

impl EntryBatch {
    pub fn new(group: u64) -> EntryBatch {
        EntryBatch {
            group,
            bytes: Vec::new(),
            frames: Vec::new(),
        }
    }

    /// Frames `entry` as the entry at `index`.
    pub fn push<E: Serialize>(&mut self, index: u64, entry: &E) -> Result<(), LogError> {
        // Room for a typical entry up front: growing the buffer byte by byte as the encoder
        // writes would reallocate it several times per entry.
        self.bytes.reserve(FRAME_RESERVE_BYTES);
        let start = self.bytes.len();
        let head = RecordHead::Entry {
            group: self.group,
            index,
        };
        codec::encode_frame(&head, Some(entry), RECORD_PAYLOAD_BYTES_MAX, &mut self.bytes).map_err(|e| {
            LogError::Invalid {
                group: self.group,
                reason: format!("entry {index}: {e}"),
            }
        })?;
        let frame_len = self.bytes.len() - start;
        self.frames.push((index, start as u32, frame_len as u32));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }
}

/// What [`Wal::write_buffered`] left for the group-commit driver: sync `file` to make everything
/// up to `end` durable.
pub struct Written<F> {
    pub end: Position,
    pub file: Arc<F>,
}

/// Where to read one entry from, handed out so the read happens outside the log's lock.
pub struct EntryRef<F> {
    pub group: u64,
    pub index: u64,
    source: Source<F>,
    name: String,
    location: Location,
}

/// Where an entry's record is while it is read.
enum Source<F> {
    File(Arc<F>),
    /// A copy of the record, which was still in the write buffer when it was located.
    Buffered(Vec<u8>),
}

impl<F: DiskFile> EntryRef<F> {
    /// Reads and verifies the record; returns the encoded entry.
    pub fn read(&self) -> Result<Vec<u8>, LogError> {
        let Location {
            offset, frame_len, ..
        } = self.location;
        let corrupt = |reason: String| LogError::corrupt(self.name.clone(), offset, Some(self.group), reason);
        let read;
        let frame = match &self.source {
            Source::Buffered(frame) => frame,
            Source::File(file) => {
                let mut frame = vec![0u8; frame_len as usize];
                file.read_at(offset, &mut frame)
                    .map_err(|e| LogError::io(self.name.clone(), e))?;
                read = frame;
                &read
            }
        };
        let payload = codec::open_frame(frame).map_err(|e| corrupt(e.to_string()))?;
        let (head, body) = codec::decode_prefix::<RecordHead>(payload).map_err(|e| corrupt(e.to_string()))?;
        let expected = RecordHead::Entry {
            group: self.group,
            index: self.index,
        };
        if head != expected {
            return Err(corrupt(format!(
                "index points at {head:?}, expected {expected:?}"
            )));
        }
        Ok(body.to_vec())
    }
}

/// The log's state and logic; see the module docs.
pub struct Wal<D: Disk> {
    disk: D,
    config: LogConfig,
    segments: BTreeMap<u64, Segment<D::File>>,
    groups: BTreeMap<u64, GroupState>,
    /// Accepted records not yet written: they belong at the end of the active segment, whose
    /// `len` counts them.
    buffer: Vec<u8>,
    /// Set by the first failed write: the file's state is unknown after it.
    failed: Option<String>,
    /// True while the oldest segment on disk is replayed: its entries may follow records in
    /// segments already removed (see [`Wal::check_contiguous`]).
    replaying_oldest: bool,
}

impl<D: Disk> Wal<D> {
    /// Opens the log on `disk`, replaying every segment; see the module docs for what refuses.
    pub fn open(disk: D, config: LogConfig) -> Result<Wal<D>, LogError> {
        assert!(
            config.segment_bytes_max >= 4096,
            "segment_bytes_max must leave room for records"
        );
        let mut ids = Vec::new();
        for name in disk.list().map_err(|e| LogError::io("<log directory>", e))? {
            match segment::parse_segment_name(&name) {
                Some(id) => ids.push(id),
                None => tracing::debug!(%name, "ignoring a file that is not a log segment"),
            }
        }
        ids.sort_unstable();
        for pair in ids.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(LogError::corrupt(
                    segment::segment_name(pair[0] + 1),
                    0,
                    None,
                    "segment missing between existing segments",
                ));
            }
        }
        let mut wal = Wal {
            disk,
            config,
            segments: BTreeMap::new(),
            groups: BTreeMap::new(),
            buffer: Vec::new(),
            failed: None,
            replaying_oldest: false,
        };
        for (position, &id) in ids.iter().enumerate() {
            wal.replaying_oldest = position == 0;
            wal.replay_segment(id, position + 1 == ids.len())?;
        }
        wal.replaying_oldest = false;
        if let Some(&oldest) = ids.first() {
            wal.check_contiguous(oldest)?;
        }
        wal.check_committed_present()?;
        // The last segment may have been removed as torn before its checkpoint was complete.
        let active = ids.last().copied().unwrap_or(1);
        if !wal.segments.contains_key(&active) {
            wal.start_segment(active)?;
        }
        Ok(wal)
    }

    fn replay_segment(&mut self, id: u64, is_last: bool) -> Result<(), LogError> {
        let name = segment::segment_name(id);
        let file = self.disk.open(&name).map_err(|e| LogError::io(&name, e))?;
        let len = file.len().map_err(|e| LogError::io(&name, e))?;
        if len > SEGMENT_FILE_BYTES_MAX {
            return Err(LogError::corrupt(
                &name,
                0,
                None,
                format!("segment of {len} bytes exceeds the bound"),
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        file.read_at(0, &mut bytes).map_err(|e| LogError::io(&name, e))?;
        let file = Arc::new(file);
        let previous_len = self
            .segments
            .get(&id.wrapping_sub(1))
            .map(|previous| previous.len);
        self.segments.insert(
            id,
            Segment {
                file: file.clone(),
                name: name.clone(),
                len,
                allocated: len,
                live_entries: 0,
            },
        );
        let end = segment::scan(&name, id, &bytes, is_last, |record| {
            if record.offset == segment::SEGMENT_HEADER_BYTES as u64 {
                check_segment_start(&name, &record.head, previous_len)?;
            }
            let location = Location {
                segment: id,
                offset: record.offset,
                frame_len: record.frame_len,
            };
            let group = record.head.group();
            self.apply(record.head, location)
                .map_err(|reason| LogError::corrupt(&name, record.offset, group, format!("replay: {reason}")))
        })?;
        let (offset, reason) = match end {
            ScanEnd::Clean => return Ok(()),
            ScanEnd::ZeroTail { offset } if offset > segment::SEGMENT_HEADER_BYTES as u64 => {
                // Preallocated space after the last record: the next write goes there.
                self.segments.get_mut(&id).expect("segment inserted above").len = offset;
                return Ok(());
            }
            ScanEnd::ZeroTail { offset } => (offset, "no checkpoint before the zero tail".to_string()),
            ScanEnd::TornTail { offset, reason } => (offset, reason),
        };
        if offset <= segment::SEGMENT_HEADER_BYTES as u64 {
            // The crash hit while the segment was being started (its header or checkpoint is
            // torn): nothing in it was acknowledged. Remove it; open() starts it anew.
            tracing::warn!(file = %name, offset, %reason, "removing a log segment torn while being started");
            self.segments.remove(&id);
            drop(file);
            return self.disk.remove(&name).map_err(|e| LogError::io(&name, e));
        }
        tracing::warn!(file = %name, offset, %reason, "truncating the torn tail of the log");
        file.truncate(offset).map_err(|e| LogError::io(&name, e))?;
        let segment = self.segments.get_mut(&id).expect("segment inserted above");
        segment.len = file.len().map_err(|e| LogError::io(&name, e))?;
        segment.allocated = segment.len;
        Ok(())
    }

    /// After replay, every group's entries must start right after its purge point.
    ///
    /// The oldest segment's checkpoint holds the purge point as it was when that segment was
    /// started; entries written after it may continue entries of a removed, older segment, and a
    /// purge record further on moves the purge point past those. So a gap is allowed while the
    /// oldest segment is replayed, and checked here, once every purge record has been seen: one
    /// left over means entries are missing.
    fn check_contiguous(&self, oldest: u64) -> Result<(), LogError> {
        for (&group, state) in &self.groups {
            let (Some(first), Some((purged, _))) = (state.entries.first(), &state.purged) else {
                continue;
            };
            if first != purged + 1 {
                return Err(LogError::corrupt(
                    segment::segment_name(oldest),
                    0,
                    Some(group),
                    format!(
                        "entries start at {first} but the purge point is {purged}: entries between are missing"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A durable commit index beyond the log's end means acknowledged entries were lost.
    fn check_committed_present(&self) -> Result<(), LogError> {
        for (&group, state) in &self.groups {
            let Some((committed, _)) = &state.committed else {
                continue;
            };
            let last = state.entries.last().or(state.purged.as_ref().map(|(i, _)| *i));
            if last.is_none_or(|last| last < *committed) {
                return Err(LogError::LostCommittedEntries {
                    group,
                    committed: *committed,
                    last,
                });
            }
        }
        Ok(())
    }

    /// The one function that changes the index, used by the live path and by replay alike.
    /// Errors are reasons: corruption during replay, a contract violation when live.
    fn apply(&mut self, head: RecordHead, location: Location) -> Result<(), String> {
        match head {
            RecordHead::Entry { group, index } => {
                let state = self.groups.entry(group).or_default();
                if state.purged.as_ref().is_some_and(|(purged, _)| index <= *purged) {
                    // Written before a purge that a later checkpoint or record recorded.
                    return Ok(());
                }
                if let Some(last) = state.entries.last()
                    && Some(index) != last.checked_add(1)
                {
                    return Err(format!(
                        "group {group}: entry {index} does not follow entry {last}"
                    ));
                }
                if state.entries.is_empty()
                    && !self.replaying_oldest
                    && let Some((purged, _)) = &state.purged
                    && index != purged + 1
                {
                    return Err(format!(
                        "group {group}: entry {index} does not follow the purge point {purged}"
                    ));
                }
                state.entries.push(index, location);
                self.segments
                    .get_mut(&location.segment)
                    .expect("entry in a known segment")
                    .live_entries += 1;
            }
            RecordHead::Vote { group, vote } => self.groups.entry(group).or_default().vote = Some(vote),
            RecordHead::Committed { group, index, log_id } => {
                self.groups.entry(group).or_default().committed = Some((index, log_id));
            }
            RecordHead::Truncate { group, first_removed } => {
                let state = self.groups.entry(group).or_default();
                let removed = state.entries.split_off(first_removed);
                self.release(removed.iter());
            }
            RecordHead::Purge { group, index, log_id } => self.purge_group(group, index, log_id),
            RecordHead::Retire { group } => {
                let state = self.groups.entry(group).or_default();
                let removed = state.entries.split_off(0);
                state.committed = None;
                state.purged = None;
                state.retired = true;
                self.release(removed.iter());
            }
            RecordHead::Revive { group } => self.groups.entry(group).or_default().retired = false,
            RecordHead::Checkpoint { groups, .. } => {
                for checkpoint in groups {
                    let state = self.groups.entry(checkpoint.group).or_default();
                    state.vote = checkpoint.vote;
                    state.committed = checkpoint.committed;
                    if let Some((index, log_id)) = checkpoint.purged {
                        self.purge_group(checkpoint.group, index, log_id);
                    }
                }
            }
        }
        Ok(())
    }

    fn purge_group(&mut self, group: u64, index: u64, log_id: Vec<u8>) {
        let state = self.groups.entry(group).or_default();
        if state.purged.as_ref().is_some_and(|(purged, _)| *purged >= index) {
            return;
        }
        let removed = state.entries.remove_through(index);
        state.purged = Some((index, log_id));
        self.release(removed.iter());
    }

    fn release<'a>(&mut self, locations: impl Iterator<Item = &'a Location>) {
        for location in locations {
            let segment = self
                .segments
                .get_mut(&location.segment)
                .expect("live entry in a known segment");
            assert!(
                segment.live_entries > 0,
                "segment {} live count underflow",
                location.segment
            );
            segment.live_entries -= 1;
        }
    }

    fn check_usable(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(reason) => Err(LogError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    fn active_id(&self) -> u64 {
        *self
            .segments
            .keys()
            .next_back()
            .expect("the log always has an active segment")
    }

    /// Accepts bytes at the end of the active segment (into the write buffer), rotating first if
    /// they would not fit. Returns where they start.
    fn write(&mut self, bytes: &[u8]) -> Result<Position, LogError> {
        self.check_usable()?;
        let active = self.active_id();
        let segment = &self.segments[&active];
        if segment.len > segment::SEGMENT_HEADER_BYTES as u64
            && segment.len + bytes.len() as u64 > self.config.segment_bytes_max
        {
            self.rotate()?;
        }
        let active = self.active_id();
        let segment = self.segments.get_mut(&active).expect("active segment");
        let start = Position {
            segment: active,
            offset: segment.len,
        };
        segment.len += bytes.len() as u64;
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= BUFFER_BYTES_MAX {
            self.write_buffered()?;
        }
        Ok(start)
    }

    /// Writes the buffered records to the active segment with one write; returns the end of the
    /// log and the file to sync to make it durable. A failure poisons the log.
    pub fn write_buffered(&mut self) -> Result<Written<D::File>, LogError> {
        self.check_usable()?;
        let active = self.active_id();
        let segment_bytes_max = self.config.segment_bytes_max;
        let preallocation_bytes = self.disk.preallocation_bytes();
        let segment = self.segments.get_mut(&active).expect("active segment");
        let end = segment.len;
        if !self.buffer.is_empty() {
            let start = end - self.buffer.len() as u64;
            let result = preallocate(segment, end, preallocation_bytes, segment_bytes_max)
                .and_then(|()| segment.file.write_at(start, &self.buffer));
            if let Err(error) = result {
                self.failed = Some(format!("write to {} failed: {error}", segment.name));
                return Err(LogError::io(segment.name.clone(), error));
            }
            segment.allocated = segment.allocated.max(end);
            self.buffer.clear();
            // One huge record must not pin its memory for the life of the log.
            self.buffer.shrink_to(BUFFER_BYTES_MAX);
        }
        Ok(Written {
            end: Position {
                segment: active,
                offset: end,
            },
            file: segment.file.clone(),
        })
    }

    /// Seals the active segment (synced, so later positions imply it) and starts the next one
    /// with a checkpoint of every group's metadata.
    fn rotate(&mut self) -> Result<(), LogError> {
        self.write_buffered()?;
        let active = self.active_id();
        let segment = &self.segments[&active];
        // Synced (and cut to its records: a sealed segment has no zero tail) before the next
        // segment exists, so replay never finds a sealed segment shorter than its successor says.
        let result = segment.file.sync().and_then(|()| {
            if segment.allocated > segment.len {
                segment.file.truncate(segment.len)
            } else {
                Ok(())
            }
        });
        if let Err(error) = result {
            self.failed = Some(format!("sealing {} failed: {error}", segment.name));
            return Err(LogError::io(segment.name.clone(), error));
        }
        let segment = self.segments.get_mut(&active).expect("active segment");
        segment.allocated = segment.len;
        self.start_segment(active + 1)
    }

    fn start_segment(&mut self, id: u64) -> Result<(), LogError> {
        let name = segment::segment_name(id);
        let previous_segment_len = self
            .segments
            .get(&id.wrapping_sub(1))
            .map_or(0, |previous| previous.len);
        let mut bytes = segment::encode_header(id);
        let groups = self
            .groups
            .iter()
            .map(|(&group, state)| GroupCheckpoint {
                group,
                vote: state.vote.clone(),
                committed: state.committed.clone(),
                purged: state.purged.clone(),
            })
            .collect();
        let retired = self
            .groups
            .iter()
            .filter(|(_, state)| state.retired)
            .map(|(&group, _)| RecordHead::Retire { group });
        let checkpoint = RecordHead::Checkpoint {
            previous_segment_len,
            groups,
        };
        // Written with one append: the retirements share the checkpoint's fate if the start tears.
        for head in std::iter::once(checkpoint).chain(retired) {
            codec::encode_frame(&head, None::<&()>, RECORD_PAYLOAD_BYTES_MAX, &mut bytes).map_err(|e| {
                LogError::corrupt(&name, 0, None, format!("checkpoint does not fit a record: {e}"))
            })?;
        }
        // Synced at once: older segments may be removed from now on, and the metadata they held
        // then lives only in this checkpoint (one fdatasync per segment).
        let result = self
            .disk
            .create(&name)
            .and_then(|file| file.append(&bytes).and_then(|()| file.sync()).map(|()| file));
        let file = match result {
            Ok(file) => file,
            Err(error) => {
                self.failed = Some(format!("starting segment {name} failed: {error}"));
                return Err(LogError::io(name, error));
            }
        };
        self.segments.insert(
            id,
            Segment {
                file: Arc::new(file),
                name,
                len: bytes.len() as u64,
                allocated: bytes.len() as u64,
                live_entries: 0,
            },
        );
        Ok(())
    }

    fn write_record(&mut self, head: RecordHead) -> Result<Position, LogError> {
        let mut bytes = Vec::new();
        let group = head.group().unwrap_or_default();
        codec::encode_frame(&head, None::<&()>, RECORD_PAYLOAD_BYTES_MAX, &mut bytes).map_err(|e| {
            LogError::Invalid {
                group,
                reason: e.to_string(),
            }
        })?;
        let start = self.write(&bytes)?;
        let location = Location {
            segment: start.segment,
            offset: start.offset,
            frame_len: bytes.len() as u32,
        };
        self.apply(head, location)
            .map_err(|reason| LogError::Invalid { group, reason })?;
        Ok(Position {
            segment: start.segment,
            offset: start.offset + bytes.len() as u64,
        })
    }

    /// Appends a batch of one group's entries; they must continue the group's log. Returns the
    /// position the batch ends at; it is durable once the driver has written and synced past it.
    pub fn append(&mut self, batch: &EntryBatch) -> Result<Position, LogError> {
        assert!(!batch.is_empty(), "an empty batch has nothing to make durable");
        let group = batch.group;
        // A group with entries continues after its last one; one without continues after its purge
        // point; a fresh group may start anywhere (openraft decides the first index).
        let expected = self
            .groups
            .get(&group)
            .and_then(|state| match state.entries.last() {
                Some(last) => Some(last + 1),
                None => state.purged.as_ref().map(|(purged, _)| purged + 1),
            });
        let first = expected.unwrap_or(batch.frames[0].0);
        for (next, &(index, _, _)) in (first..).zip(&batch.frames) {
            if index != next {
                return Err(LogError::Invalid {
                    group,
                    reason: format!("append of entry {index} where {next} was expected"),
                });
            }
        }
        let start = self.write(&batch.bytes)?;
        for &(index, offset, frame_len) in &batch.frames {
            let location = Location {
                segment: start.segment,
                offset: start.offset + u64::from(offset),
                frame_len,
            };
            self.apply(RecordHead::Entry { group, index }, location)
                .map_err(|reason| LogError::Invalid { group, reason })?;
        }
        Ok(Position {
            segment: start.segment,
            offset: start.offset + batch.bytes.len() as u64,
        })
    }

    pub fn save_vote(&mut self, group: u64, vote: Vec<u8>) -> Result<Position, LogError> {
        self.write_record(RecordHead::Vote { group, vote })
    }

    pub fn save_committed(&mut self, group: u64, index: u64, log_id: Vec<u8>) -> Result<Position, LogError> {
        self.write_record(RecordHead::Committed { group, index, log_id })
    }

    /// Deletes the group's entries at `first_removed` and after.
    pub fn truncate(&mut self, group: u64, first_removed: u64) -> Result<Position, LogError> {
        self.write_record(RecordHead::Truncate { group, first_removed })
    }

    /// Deletes the group's entries up to and including `index`, then removes segments nobody
    /// needs any more.
    pub fn purge(&mut self, group: u64, index: u64, log_id: Vec<u8>) -> Result<Position, LogError> {
        let end = self.write_record(RecordHead::Purge { group, index, log_id })?;
        self.remove_unneeded_segments()?;
        Ok(end)
    }

    /// Deletes this node's replica of `group` from the log (see [`RecordHead::Retire`]), then
    /// removes segments nobody needs any more. The caller must have stopped the group's Raft
    /// instance and proven that a committed membership leaves this node out.
    pub fn retire(&mut self, group: u64) -> Result<Position, LogError> {
        let end = self.write_record(RecordHead::Retire { group })?;
        self.remove_unneeded_segments()?;
        Ok(end)
    }

    /// Makes a retired group a replica here again, from an empty log.
    pub fn revive(&mut self, group: u64) -> Result<Position, LogError> {
        self.write_record(RecordHead::Revive { group })
    }

    pub fn is_retired(&self, group: u64) -> bool {
        self.groups.get(&group).is_some_and(|state| state.retired)
    }

    /// Removes the oldest segments while they hold no live entry. Only a prefix is removed: a
    /// truncate record in a newer segment may be what keeps an older entry dead.
    fn remove_unneeded_segments(&mut self) -> Result<(), LogError> {
        let active = self.active_id();
        while let Some((&oldest, segment)) = self.segments.first_key_value() {
            if oldest == active || segment.live_entries > 0 {
                break;
            }
            let name = segment.name.clone();
            self.disk.remove(&name).map_err(|e| LogError::io(&name, e))?;
            tracing::debug!(file = %name, "removed a log segment every group has moved past");
            self.segments.remove(&oldest);
        }
        Ok(())
    }

    pub fn vote(&self, group: u64) -> Option<Vec<u8>> {
        self.groups.get(&group)?.vote.clone()
    }

    pub fn committed(&self, group: u64) -> Option<Vec<u8>> {
        Some(self.groups.get(&group)?.committed.as_ref()?.1.clone())
    }

    pub fn purged(&self, group: u64) -> Option<Vec<u8>> {
        Some(self.groups.get(&group)?.purged.as_ref()?.1.clone())
    }

    pub fn last_index(&self, group: u64) -> Option<u64> {
        self.groups.get(&group)?.entries.last()
    }

    /// Groups that have any state in the log.
    pub fn groups(&self) -> Vec<u64> {
        self.groups.keys().copied().collect()
    }

    /// Segment ids currently on disk (oldest first).
    pub fn segment_ids(&self) -> Vec<u64> {
        self.segments.keys().copied().collect()
    }

    /// Where to read the group's entries in `range` (only those present).
    pub fn locate(&self, group: u64, range: impl RangeBounds<u64>) -> Vec<EntryRef<D::File>> {
        let Some(state) = self.groups.get(&group) else {
            return Vec::new();
        };
        let range = (clone_bound(range.start_bound()), clone_bound(range.end_bound()));
        if range_is_empty(&range) {
            return Vec::new();
        }
        let active = self.active_id();
        let buffered_from = self.segments[&active].len - self.buffer.len() as u64;
        state
            .entries
            .range(range)
            .map(|(index, &location)| {
                let segment = &self.segments[&location.segment];
                let source = if location.segment == active && location.offset >= buffered_from {
                    let start = (location.offset - buffered_from) as usize;
                    Source::Buffered(self.buffer[start..start + location.frame_len as usize].to_vec())
                } else {
                    Source::File(segment.file.clone())
                };
                EntryRef {
                    group,
                    index,
                    source,
                    name: segment.name.clone(),
                    location,
                }
            })
            .collect()
    }
}

/// Fills the segment with zeros ahead of a write that would reach `end`, `chunk_bytes` at a time
/// and never past `segment_bytes_max` (a write larger than that simply grows the file). Each
/// extension makes one sync also commit the new file size.
fn preallocate<F: DiskFile>(
    segment: &mut Segment<F>,
    end: u64,
    chunk_bytes: u64,
    segment_bytes_max: u64,
) -> std::io::Result<()> {
    if chunk_bytes == 0 || end <= segment.allocated || segment.allocated >= segment_bytes_max {
        return Ok(());
    }
    let target = (segment.allocated + chunk_bytes).max(end).min(segment_bytes_max);
    segment.file.extend_zeroed(target)?;
    segment.allocated = target;
    Ok(())
}

fn clone_bound(bound: Bound<&u64>) -> Bound<u64> {
    match bound {
        Bound::Included(x) => Bound::Included(*x),
        Bound::Excluded(x) => Bound::Excluded(*x),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Every segment starts with a checkpoint; when its predecessor is still on disk, the
/// predecessor must have exactly the length the checkpoint recorded.
fn check_segment_start(name: &str, head: &RecordHead, previous_len: Option<u64>) -> Result<(), LogError> {
    let offset = segment::SEGMENT_HEADER_BYTES as u64;
    let RecordHead::Checkpoint {
        previous_segment_len, ..
    } = head
    else {
        return Err(LogError::corrupt(
            name,
            offset,
            head.group(),
            "segment does not start with a checkpoint",
        ));
    };
    match previous_len {
        Some(found) if found != *previous_segment_len => Err(LogError::corrupt(
            name,
            offset,
            None,
            format!(
                "the previous segment has {found} bytes but had {previous_segment_len} when this one started"
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether `range` holds no index at all (openraft may ask for an empty or inverted one).
fn range_is_empty(range: &(Bound<u64>, Bound<u64>)) -> bool {
    let start = match range.0 {
        Bound::Included(x) => x,
        Bound::Excluded(x) => match x.checked_add(1) {
            Some(x) => x,
            None => return true,
        },
        Bound::Unbounded => 0,
    };
    match range.1 {
        Bound::Included(end) => start > end,
        Bound::Excluded(end) => start >= end,
        Bound::Unbounded => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::MemDisk;

    fn small() -> LogConfig {
        LogConfig {
            segment_bytes_max: 4096,
        }
    }

    fn append(wal: &mut Wal<MemDisk>, group: u64, indexes: std::ops::RangeInclusive<u64>) {
        let mut batch = EntryBatch::new(group);
        for index in indexes {
            batch
                .push(index, &format!("g{group}-e{index}-{}", "x".repeat(100)))
                .unwrap();
        }
        wal.append(&batch).unwrap();
    }

    fn read_all(wal: &Wal<MemDisk>, group: u64) -> Vec<(u64, String)> {
        wal.locate(group, ..)
            .iter()
            .map(|r| (r.index, codec::decode::<String>(&r.read().unwrap()).unwrap()))
            .collect()
    }

    /// Writes what the log buffered and syncs every file, as the group-commit driver would.
    fn sync_all(wal: &mut Wal<MemDisk>, disk: &MemDisk) {
        wal.write_buffered().unwrap();
        for name in disk.list().unwrap() {
            disk.open(&name).unwrap().sync().unwrap();
        }
    }

    #[test]
    fn replay_rebuilds_the_same_index_across_segments() {
        let disk = MemDisk::new();
        let mut wal = Wal::open(disk.clone(), small()).unwrap();
        for round in 0..20u64 {
            append(&mut wal, 1, round * 10 + 1..=round * 10 + 10);
            append(&mut wal, 2, round * 5 + 1..=round * 5 + 5);
        }
        wal.save_vote(1, vec![1, 2]).unwrap();
        wal.truncate(2, 90).unwrap();
        wal.save_committed(1, 150, vec![9]).unwrap();
        assert!(wal.segment_ids().len() > 3, "the test needs several segments");
        let before = (read_all(&wal, 1), read_all(&wal, 2));
        sync_all(&mut wal, &disk);
        let reopened = Wal::open(disk, small()).unwrap();
        assert_eq!((read_all(&reopened, 1), read_all(&reopened, 2)), before);
        assert_eq!(reopened.last_index(2), Some(89));
        assert_eq!(reopened.vote(1), Some(vec![1, 2]));
        assert_eq!(reopened.committed(1), Some(vec![9]));
    }

    #[test]
    fn purge_removes_only_a_prefix_of_segments_nobody_needs_and_keeps_metadata() {
        let disk = MemDisk::new();
        let mut wal = Wal::open(disk.clone(), small()).unwrap();
        wal.save_vote(7, vec![7]).unwrap();
        append(&mut wal, 2, 1..=2);
        append(&mut wal, 1, 1..=100);
        append(&mut wal, 1, 101..=200);
        assert!(wal.segment_ids().len() >= 3, "the test needs several segments");
        wal.purge(1, 150, vec![150]).unwrap();
        assert_eq!(
            wal.segment_ids().first(),
            Some(&1),
            "group 2 still needs the oldest segment"
        );
        wal.purge(2, 2, vec![2]).unwrap();
        let segments_after = wal.segment_ids();
        assert!(segments_after.first() > Some(&2), "{segments_after:?}");
        sync_all(&mut wal, &disk);
        let reopened = Wal::open(disk, small()).unwrap();
        assert_eq!(reopened.vote(7), Some(vec![7]), "the checkpoint carries the vote");
        assert_eq!(reopened.purged(1), Some(vec![150]));
        assert_eq!(read_all(&reopened, 1).first().map(|e| e.0), Some(151));
        assert_eq!(reopened.last_index(2), None);
    }

    #[test]
    fn crash_loses_only_unsynced_records_and_the_torn_tail_is_cut() {
        let disk = MemDisk::new();
        let mut wal = Wal::open(disk.clone(), LogConfig::default()).unwrap();
        append(&mut wal, 1, 1..=5);
        sync_all(&mut wal, &disk);
        append(&mut wal, 1, 6..=8);
        wal.write_buffered().unwrap(); // written, never synced
        let name = segment::segment_name(1);
        let mut bytes = disk.bytes(&name).unwrap();
        bytes.truncate(bytes.len() - 3); // the last write was torn
        disk.set_bytes(&name, bytes);
        let mut reopened = Wal::open(disk.clone(), LogConfig::default()).unwrap();
        assert_eq!(reopened.last_index(1), Some(7));
        append(&mut reopened, 1, 8..=9);
        assert_eq!(read_all(&reopened, 1).len(), 9);
    }

    #[test]
    fn buffered_records_are_read_from_memory_and_reach_the_file_only_when_written() {
        let disk = MemDisk::new();
        let mut wal = Wal::open(disk.clone(), LogConfig::default()).unwrap();
        append(&mut wal, 1, 1..=3);
        sync_all(&mut wal, &disk);
        let synced_len = disk.bytes(&segment::segment_name(1)).unwrap().len();
        append(&mut wal, 1, 4..=6);
        append(&mut wal, 2, 1..=2);
        assert_eq!(
            disk.bytes(&segment::segment_name(1)).unwrap().len(),
            synced_len,
            "accepting records writes nothing"
        );
        let expected: Vec<_> = (1..=6)
            .map(|i| (i, format!("g1-e{i}-{}", "x".repeat(100))))
            .collect();
        assert_eq!(read_all(&wal, 1), expected, "buffered entries are readable");
        let written = wal.write_buffered().unwrap();
        assert_eq!(
            written.end.offset,
            disk.bytes(&segment::segment_name(1)).unwrap().len() as u64,
            "one write reaches the end of the log"
        );
        assert_eq!(read_all(&wal, 1), expected, "and the same from the file");
        disk.crash();
        let reopened = Wal::open(disk, LogConfig::default()).unwrap();
        assert_eq!(
            reopened.last_index(1),
            Some(3),
            "written but unsynced records are lost"
        );
        assert_eq!(reopened.last_index(2), None);
    }

    #[test]
    fn a_segment_torn_while_being_started_is_started_again() {
        let disk = MemDisk::new();
        let mut wal = Wal::open(disk.clone(), small()).unwrap();
        for batch in 0..12 {
            append(&mut wal, 1, batch * 10 + 1..=batch * 10 + 10);
        }
        sync_all(&mut wal, &disk);
        let last = *wal.segment_ids().last().unwrap();
        assert!(last > 2, "the test needs several segments");
        drop(wal);
        let name = segment::segment_name(last);
        let bytes = disk.bytes(&name).unwrap();
        disk.set_bytes(&name, bytes[..segment::SEGMENT_HEADER_BYTES + 3].to_vec());
        let mut wal = Wal::open(disk.clone(), small()).unwrap();
        assert_eq!(
            wal.segment_ids().last(),
            Some(&last),
            "the segment is started anew"
        );
        let expected = wal.last_index(1);
        assert!(
            expected.is_some_and(|last| last < 120),
            "the torn segment's entries are gone"
        );
        sync_all(&mut wal, &disk);
        drop(wal);
        let reopened = Wal::open(disk, small()).unwrap();
        assert_eq!(
            reopened.last_index(1),
            expected,
            "and the log opens again afterwards"
        );
    }

    /// Segments of 64 KiB, preallocated 16 KiB at a time.
    fn preallocating() -> (MemDisk, LogConfig) {
        let config = LogConfig {
            segment_bytes_max: 64 << 10,
        };
        (MemDisk::preallocating(16 << 10), config)
    }

    #[test]
    fn a_preallocated_log_recovers_its_synced_records_after_a_crash_and_goes_on() {
        let (disk, config) = preallocating();
        let mut wal = Wal::open(disk.clone(), config.clone()).unwrap();
        append(&mut wal, 1, 1..=40);
        sync_all(&mut wal, &disk);
        append(&mut wal, 1, 41..=45); // never synced
        let name = segment::segment_name(1);
        let bytes = disk.bytes(&name).unwrap();
        assert!(
            bytes.len() >= 16 << 10 && bytes.ends_with(&[0; 4096]),
            "the segment is filled with zeros ahead of its records"
        );
        drop(wal);
        disk.crash();
        let mut reopened = Wal::open(disk.clone(), config.clone()).unwrap();
        assert_eq!(reopened.last_index(1), Some(40), "the zero tail ends the records");
        for first in (41..1500).step_by(20) {
            append(&mut reopened, 1, first..=first + 19);
        }
        assert!(reopened.segment_ids().len() > 2, "the test needs rotations");
        let before = read_all(&reopened, 1);
        sync_all(&mut reopened, &disk);
        drop(reopened);
        disk.crash();
        let reopened = Wal::open(disk.clone(), config).unwrap();
        assert_eq!(read_all(&reopened, 1), before);
        for id in &reopened.segment_ids()[..reopened.segment_ids().len() - 1] {
            let bytes = disk.bytes(&segment::segment_name(*id)).unwrap();
            let end = segment::scan("sealed", *id, &bytes, false, |_| Ok(())).unwrap();
            assert_eq!(end, ScanEnd::Clean, "a sealed segment is cut to its records");
        }
    }

    #[test]
    fn a_zeroed_block_amid_synced_records_of_a_preallocated_segment_is_named() {
        let (disk, config) = preallocating();
        let mut wal = Wal::open(disk.clone(), config.clone()).unwrap();
        append(&mut wal, 3, 1..=60);
        sync_all(&mut wal, &disk);
        drop(wal);
        let name = segment::segment_name(1);
        let pristine = disk.bytes(&name).unwrap();
        for block in [1024, 2048, 4096] {
            let mut bytes = pristine.clone();
            bytes[block..block + 512].fill(0);
            disk.set_bytes(&name, bytes);
            match Wal::open(disk.clone(), config.clone()) {
                Err(LogError::Corrupt { file, offset, .. }) => {
                    assert_eq!(file, name);
                    assert!(offset <= block as u64, "{offset} names the damaged record");
                }
                Err(other) => panic!("unexpected error {other}"),
                Ok(wal) => panic!(
                    "zeros at {block} amid synced records were taken for a tail: {:?}",
                    wal.last_index(3)
                ),
            }
        }
    }

    #[test]
    fn appends_must_continue_the_log() {
        let mut wal = Wal::open(MemDisk::new(), LogConfig::default()).unwrap();
        append(&mut wal, 1, 3..=4);
        let mut gap = EntryBatch::new(1);
        gap.push(6, &"x").unwrap();
        assert!(matches!(
            wal.append(&gap),
            Err(LogError::Invalid { group: 1, .. })
        ));
        wal.purge(1, 10, vec![]).unwrap();
        assert_eq!(wal.last_index(1), None);
        let mut after_purge = EntryBatch::new(1);
        after_purge.push(11, &"y").unwrap();
        wal.append(&after_purge).unwrap();
    }

    #[test]
    fn a_lost_committed_entry_refuses_to_open() {
        let disk = MemDisk::new();
        let mut wal = Wal::open(disk.clone(), LogConfig::default()).unwrap();
        append(&mut wal, 4, 1..=3);
        wal.save_committed(4, 3, vec![]).unwrap();
        wal.truncate(4, 3).unwrap(); // only a damaged disk could do this to a committed entry
        sync_all(&mut wal, &disk);
        let error = Wal::open(disk, LogConfig::default()).err().expect("must refuse");
        assert!(
            matches!(
                error,
                LogError::LostCommittedEntries {
                    group: 4,
                    committed: 3,
                    last: Some(2)
                }
            ),
            "{error}"
        );
    }

    /// Appends entries 1..=100 of group 1 in batches of ten, purging up to 10 after the second
    /// batch, so every later segment's checkpoint carries that purge point.
    fn log_purged_early(disk: &MemDisk) -> Wal<MemDisk> {
        let mut wal = Wal::open(disk.clone(), small()).unwrap();
        for batch in 0..10u64 {
            append(&mut wal, 1, batch * 10 + 1..=batch * 10 + 10);
            if batch == 1 {
                wal.purge(1, 10, vec![10]).unwrap();
            }
        }
        assert!(wal.segment_ids().len() >= 4, "the test needs several segments");
        wal
    }

    #[test]
    fn a_log_whose_old_segments_were_purged_twice_reopens() {
        // The oldest segment left holds entries that continue a removed segment's, beyond the
        // purge point its checkpoint recorded; a purge record after them covers the gap.
        let disk = MemDisk::new();
        let mut wal = log_purged_early(&disk);
        wal.purge(1, 60, vec![60]).unwrap();
        assert!(wal.segment_ids()[0] > 1, "the second purge removes segments");
        sync_all(&mut wal, &disk);
        let reopened = Wal::open(disk, small()).unwrap();
        assert_eq!(reopened.purged(1), Some(vec![60]));
        assert_eq!(read_all(&reopened, 1).first().map(|e| e.0), Some(61));
        assert_eq!(reopened.last_index(1), Some(100));
    }

    #[test]
    fn entries_missing_after_the_purge_point_are_named() {
        let disk = MemDisk::new();
        let mut wal = log_purged_early(&disk);
        sync_all(&mut wal, &disk);
        let oldest_kept = wal.segment_ids()[2];
        drop(wal);
        // The first segments vanish although their entries were never purged.
        for id in 1..oldest_kept {
            disk.remove(&segment::segment_name(id)).unwrap();
        }
        let error = Wal::open(disk, small()).err().expect("a gap must refuse to open");
        assert!(
            matches!(&error, LogError::Corrupt { group: Some(1), reason, .. } if reason.contains("entries between are missing")),
            "{error}"
        );
    }

    #[test]
    fn a_retired_group_keeps_only_its_vote_across_segments_and_can_be_revived() {
        let disk = MemDisk::new();
        let mut wal = Wal::open(disk.clone(), small()).unwrap();
        wal.save_vote(1, vec![4, 2]).unwrap();
        append(&mut wal, 1, 1..=60);
        wal.save_committed(1, 60, vec![60]).unwrap();
        let segments_before = wal.segment_ids().len();
        assert!(segments_before >= 3, "the test needs several segments");
        wal.retire(1).unwrap();
        assert!(wal.is_retired(1));
        assert_eq!((wal.last_index(1), wal.committed(1)), (None, None));
        assert_eq!(wal.vote(1), Some(vec![4, 2]), "a retired replica keeps its vote");
        assert_eq!(
            wal.segment_ids().len(),
            1,
            "nothing needs the old segments any more"
        );
        let retired_in = wal.segment_ids()[0];
        // Another group writes on: new segments must carry the retirement forward.
        append(&mut wal, 2, 1..=60);
        wal.purge(2, 60, vec![60]).unwrap();
        assert!(
            wal.segment_ids()[0] > retired_in,
            "the segment holding the retirement is gone"
        );
        sync_all(&mut wal, &disk);
        let mut reopened = Wal::open(disk.clone(), small()).unwrap();
        assert!(
            reopened.is_retired(1),
            "the retirement outlives the segment it was written in"
        );
        assert_eq!(reopened.vote(1), Some(vec![4, 2]));
        assert_eq!((reopened.last_index(1), reopened.committed(1)), (None, None));
        // Brought back by a leader: a replica again, from an empty log.
        reopened.revive(1).unwrap();
        append(&mut reopened, 1, 1..=3);
        sync_all(&mut reopened, &disk);
        let revived = Wal::open(disk, small()).unwrap();
        assert!(!revived.is_retired(1));
        assert_eq!(revived.last_index(1), Some(3));
    }
}
