//! Snapshots: a consistent copy of a group's tables, framed for storage and transfer, streamed.
//!
//! A snapshot is a stream of frames (see [`crate::codec`]): a header (last applied log id,
//! membership, policy version), then chunks of table items, each at most
//! [`SNAPSHOT_CHUNK_BYTES_MAX`] bytes of payload, then a trailer with the counts. Every frame
//! carries its own crc32 and format version, so a receiver checks each chunk as it arrives and a
//! reader bounds every length before allocating.
//!
//! **Never whole in memory** (as TiKV and CockroachDB ship theirs). A snapshot is built from a
//! single read view of the backend, one point in the log, into a [`SnapshotSpool`] — a file beside
//! the store in production, a byte vector in the simulator and tests — one chunk at a time; a
//! receiver writes the chunks it is sent into a spool of its own, checking each frame, its order
//! and the final counts before it hands the snapshot over. A [`SnapshotData`] is a handle on the
//! finished spool and where each frame is in it: sending reads one frame at a time, installing
//! walks the frames and hands each item, its sealed value re-verified, to the backend's one
//! durable install transaction, so a damaged snapshot is refused before anything is committed.
//! What a node holds in memory for a snapshot is a frame or two, whatever the snapshot's size.
//!
//! A spool file that never became a store's current snapshot is deleted when its last handle goes
//! (an aborted transfer, a build superseded by an install); one that did is the store's, renamed
//! into place ([`SnapshotData::persist_as`]).

use std::fs;
use std::io::Read;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use serde::Deserialize;
use serde::Serialize;

use crate::apply;
use crate::backend::BackendView;
use crate::backend::Table;
use crate::backend::WriteBatch;
use crate::codec;
use crate::codec::FRAME_HEADER_BYTES;
use crate::codec::FrameHeader;
use crate::error::SnapshotError;
use crate::error::StateMachineError;
use crate::paced_removal;
use crate::snapshot_feed::SpoolFeed;
use crate::writeback::Writeback;

/// Items are packed into a chunk until its payload would pass this size.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;

/// Bound on any frame's payload when reading (a single large item may exceed the chunk target).
pub(crate) const FRAME_PAYLOAD_BYTES_MAX: usize = 4 << 20;

/// Bound on a snapshot kept in memory (the simulator's and tests' stores).
pub const MEMORY_SNAPSHOT_BYTES_MAX: u64 = 1 << 30;

/// What the snapshot is a copy of; the log id and membership are encoded by the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub last_log_id: Vec<u8>,
    pub membership: Vec<u8>,
    pub policy_version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotItem {
    table: Table,
    /// Serde bytes: encoded exactly as a sequence of `u8` (the format is unchanged), but written whole
    /// rather than one byte at a time, which was most of a snapshot build's CPU.
    #[serde(with = "wire::record::value_bytes")]
    key: Vec<u8>,
    /// The sealed value exactly as stored (serde bytes too).
    #[serde(with = "wire::record::value_bytes")]
    value: Vec<u8>,
}

/// The frames of a snapshot; the variant order is part of the format (append only).
#[derive(Debug, Serialize, Deserialize)]
enum SnapshotFrame {
    Header(SnapshotHeader),
    Chunk { sequence: u64, items: Vec<SnapshotItem> },
    Trailer { chunks: u64, items: u64 },
}

/// A frame as read: its items borrow their keys and values from the frame's bytes (the same
/// encoding as [`SnapshotFrame`], decoded without a copy of each key and value).
#[derive(Deserialize)]
pub(crate) enum SnapshotFrameRef<'a> {
    Header(SnapshotHeader),
    Chunk {
        sequence: u64,
        #[serde(borrow)]
        items: Vec<SnapshotItemRef<'a>>,
    },
    Trailer {
        chunks: u64,
        items: u64,
    },
}

#[derive(Deserialize)]
pub(crate) struct SnapshotItemRef<'a> {
    pub(crate) table: Table,
    #[serde(borrow)]
    pub(crate) key: &'a [u8],
    #[serde(borrow)]
    pub(crate) value: &'a [u8],
}

/// What the order and count checks need of a frame.
enum FrameSummary {
    Header(SnapshotHeader),
    Chunk { sequence: u64, items: u64 },
    Trailer { chunks: u64, items: u64 },
}

impl FrameSummary {
    fn of(frame: SnapshotFrameRef<'_>) -> FrameSummary {
        match frame {
            SnapshotFrameRef::Header(header) => FrameSummary::Header(header),
            SnapshotFrameRef::Chunk { sequence, items } => FrameSummary::Chunk {
                sequence,
                items: items.len() as u64,
            },
            SnapshotFrameRef::Trailer { chunks, items } => FrameSummary::Trailer { chunks, items },
        }
    }
}

/// The order and counts of a snapshot's frames, checked one frame at a time.
#[derive(Debug, Default)]
struct FrameOrder {
    header: Option<SnapshotHeader>,
    frames: u64,
    items: u64,
    complete: bool,
}

impl FrameOrder {
    fn accept(&mut self, frame: FrameSummary) -> Result<(), String> {
        let number = self.frames;
        match (frame, self.header.is_some(), self.complete) {
            (_, _, true) => return Err("bytes after the trailer".into()),
            (FrameSummary::Header(header), false, _) if number == 0 => self.header = Some(header),
            (FrameSummary::Chunk { sequence, items }, true, _) if sequence + 1 == number => {
                self.items += items;
            }
            (FrameSummary::Trailer { chunks, items }, true, _) => {
                if chunks + 1 != number || items != self.items {
                    return Err(format!(
                        "trailer counts {chunks} chunks/{items} items, found {}/{}",
                        number - 1,
                        self.items
                    ));
                }
                self.complete = true;
            }
            (FrameSummary::Header(_), _, _) => return Err("unexpected frame header".into()),
            (FrameSummary::Chunk { .. }, _, _) => return Err("unexpected frame chunk out of order".into()),
            (FrameSummary::Trailer { .. }, _, _) => return Err("unexpected frame trailer".into()),
        }
        self.frames += 1;
        Ok(())
    }
}

/// Checks one frame's length bound, checksum and version, and decodes it.
pub(crate) fn open_one_frame(frame: &[u8]) -> Result<SnapshotFrameRef<'_>, String> {
    let header_bytes: &[u8; FRAME_HEADER_BYTES] = frame
        .get(..FRAME_HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or("chunk shorter than a frame header")?;
    let header = FrameHeader::parse(header_bytes);
    if header.payload_len as usize > FRAME_PAYLOAD_BYTES_MAX {
        return Err(format!("frame length {} exceeds the bound", header.payload_len));
    }
    let payload = codec::open_frame(frame).map_err(|e| e.to_string())?;
    codec::decode_borrowed(payload).map_err(|e| e.to_string())
}

/// A spool file: deleted when dropped unless it became a store's current snapshot.
#[derive(Debug)]
struct SpoolFile {
    file: fs::File,
    /// Where the file is now (it moves once, when it becomes the current snapshot).
    path: Mutex<PathBuf>,
    /// Whether it is a store's current snapshot (then its store owns it).
    kept: Mutex<bool>,
    /// A receiving spool's progress, followed by an install ahead ([`crate::snapshot_feed`]).
    feed: Option<Arc<SpoolFeed>>,
    /// Its pages are sent to the disk as they are written, not all at its sync ([`crate::writeback`]).
    writeback: Writeback,
}

impl SpoolFile {
    fn path(&self) -> PathBuf {
        self.path.lock().expect("spool path lock").clone()
    }

    fn io_error(&self, error: impl std::fmt::Display) -> SnapshotError {
        SnapshotError::Io {
            file: self.path().display().to_string(),
            reason: error.to_string(),
        }
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if !*self.kept.get_mut().expect("spool kept lock") {
            // A gigabyte freed at once stalls every fsync on the disk (`crate::paced_removal`).
            paced_removal::remove_unused(self.path.get_mut().expect("spool path lock"));
        }
    }
}

#[derive(Debug)]
enum Bytes {
    Memory(Vec<u8>),
    File(SpoolFile),
}

/// Tells a spool's feed that the spool was dropped unfinished, unless it finished.
#[derive(Debug)]
struct AbandonOnDrop(Option<Arc<SpoolFeed>>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(feed) = self.0.take() {
            feed.abandoned();
        }
    }
}

/// Where a snapshot is being written: frames are appended, each checked, up to a byte bound.
#[derive(Debug)]
pub struct SnapshotSpool {
    bytes: Bytes,
    /// (offset, length) of every frame.
    frames: Vec<(u64, u32)>,
    len: u64,
    bytes_max: u64,
    order: FrameOrder,
    /// A receiving file spool's feed: told of every frame written, and of the end.
    feed: AbandonOnDrop,
}

impl SnapshotSpool {
    /// A spool in memory, of at most `bytes_max` bytes.
    pub fn in_memory(bytes_max: u64) -> SnapshotSpool {
        SnapshotSpool::new(Bytes::Memory(Vec::new()), bytes_max)
    }

    /// A spool in a new file at `path` (replacing any file there), of at most `bytes_max` bytes.
    pub fn create_file(path: &Path, bytes_max: u64) -> Result<SnapshotSpool, SnapshotError> {
        SnapshotSpool::create(path, bytes_max, None)
    }

    /// A spool in a new file at `path` for a snapshot being received, which publishes its progress
    /// to `feed` so the install can follow it ([`crate::snapshot_feed`]).
    pub fn create_fed_file(
        path: &Path,
        bytes_max: u64,
        feed: Arc<SpoolFeed>,
    ) -> Result<SnapshotSpool, SnapshotError> {
        SnapshotSpool::create(path, bytes_max, Some(feed))
    }

    fn create(
        path: &Path,
        bytes_max: u64,
        feed: Option<Arc<SpoolFeed>>,
    ) -> Result<SnapshotSpool, SnapshotError> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| SnapshotError::Io {
                file: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let file = SpoolFile {
            file,
            path: Mutex::new(path.to_path_buf()),
            kept: Mutex::new(false),
            feed: feed.clone(),
            writeback: Writeback::default(),
        };
        let mut spool = SnapshotSpool::new(Bytes::File(file), bytes_max);
        spool.feed = AbandonOnDrop(feed);
        Ok(spool)
    }

    fn new(bytes: Bytes, bytes_max: u64) -> SnapshotSpool {
        SnapshotSpool {
            bytes,
            frames: Vec::new(),
            len: 0,
            bytes_max,
            order: FrameOrder::default(),
            feed: AbandonOnDrop(None),
        }
    }

    /// A second handle on a file spool's file, for a reader that follows the writes.
    pub fn file_handle(&self) -> Result<Option<fs::File>, SnapshotError> {
        match &self.bytes {
            Bytes::Memory(_) => Ok(None),
            Bytes::File(spool) => spool.file.try_clone().map(Some).map_err(|e| spool.io_error(e)),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a received frame after checking it: its bound, checksum, version, and its place in
    /// the snapshot (header first, chunks in sequence, then the trailer with the right counts).
    pub fn push(&mut self, frame: &[u8]) -> Result<(), SnapshotError> {
        let decoded = open_one_frame(frame).map_err(|reason| self.corrupt(reason))?;
        self.push_checked(frame, FrameSummary::of(decoded))
    }

    fn corrupt(&self, reason: String) -> SnapshotError {
        SnapshotError::Corrupt {
            offset: self.len,
            frame: self.frames.len() as u64,
            reason,
        }
    }

    /// Appends a frame whose content is known (`summary`): the order is checked, not the bytes.
    fn push_checked(&mut self, frame: &[u8], summary: FrameSummary) -> Result<(), SnapshotError> {
        let end = self.len + frame.len() as u64;
        if end > self.bytes_max {
            return Err(SnapshotError::TooLarge {
                bytes: end,
                bound: self.bytes_max,
            });
        }
        self.order
            .accept(summary)
            .map_err(|reason| self.corrupt(reason))?;
        match &mut self.bytes {
            Bytes::Memory(bytes) => bytes.extend_from_slice(frame),
            Bytes::File(spool) => {
                spool
                    .file
                    .write_all_at(frame, self.len)
                    .map_err(|e| spool.io_error(e))?;
                spool.writeback.written(&spool.file, end);
            }
        }
        self.frames.push((self.len, frame.len() as u32));
        self.len = end;
        if let Some(feed) = &self.feed.0 {
            feed.published(self.len);
        }
        Ok(())
    }

    /// The finished snapshot: its trailer must have arrived. A file is not synced here (a receiver
    /// finishes on its network task): it is when it becomes a store's current snapshot
    /// ([`SnapshotData::persist_as`]), and installing it commits the store durably.
    pub fn finish(mut self) -> Result<SnapshotData, SnapshotError> {
        let Some(header) = self.order.header.clone().filter(|_| self.order.complete) else {
            return Err(self.corrupt("snapshot ends without a trailer".into()));
        };
        if let Some(feed) = self.feed.0.take() {
            feed.finished();
        }
        Ok(SnapshotData {
            inner: Arc::new(Inner {
                header,
                frames: self.frames,
                len: self.len,
                bytes: self.bytes,
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    header: SnapshotHeader,
    frames: Vec<(u64, u32)>,
    len: u64,
    bytes: Bytes,
}

/// Called with each item of a snapshot: its table, key and sealed value.
pub type VisitItem<'a> = dyn FnMut(Table, &[u8], &[u8]) -> Result<(), StateMachineError> + 'a;

/// A verified snapshot: a cheap handle on its spool (memory or file) and where each frame is.
#[derive(Clone, Debug)]
pub struct SnapshotData {
    inner: Arc<Inner>,
}

impl SnapshotData {
    /// How many frames (chunks to send) the snapshot has.
    pub fn chunk_count(&self) -> usize {
        self.inner.frames.len()
    }

    /// The `index`th frame: one bounded, self-checking chunk to send.
    pub fn read_chunk(&self, index: usize) -> Result<Vec<u8>, SnapshotError> {
        let Some(&(offset, len)) = self.inner.frames.get(index) else {
            return Err(SnapshotError::Corrupt {
                offset: self.inner.len,
                frame: index as u64,
                reason: format!("no frame {index} in a snapshot of {}", self.inner.frames.len()),
            });
        };
        match &self.inner.bytes {
            Bytes::Memory(bytes) => Ok(bytes[offset as usize..offset as usize + len as usize].to_vec()),
            Bytes::File(spool) => {
                let mut frame = vec![0; len as usize];
                spool
                    .file
                    .read_exact_at(&mut frame, offset)
                    .map_err(|e| spool.io_error(e))?;
                Ok(frame)
            }
        }
    }

    /// Every frame, read one after the other.
    pub fn chunks(&self) -> impl Iterator<Item = Result<Vec<u8>, SnapshotError>> + '_ {
        (0..self.chunk_count()).map(|index| self.read_chunk(index))
    }

    /// The whole snapshot as one byte string (tests and tools; a node never needs it).
    pub fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut bytes = Vec::new();
        for chunk in self.chunks() {
            bytes.extend_from_slice(&chunk?);
        }
        Ok(bytes)
    }

    /// Reassembles a snapshot in memory from received chunks, checking each one.
    pub fn from_chunks(
        chunks: impl IntoIterator<Item = impl AsRef<[u8]>>,
    ) -> Result<SnapshotData, SnapshotError> {
        let mut spool = SnapshotSpool::in_memory(MEMORY_SNAPSHOT_BYTES_MAX);
        for chunk in chunks {
            spool.push(chunk.as_ref())?;
        }
        spool.finish()
    }

    /// Verifies a whole snapshot held in memory (every frame, the order and the counts).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<SnapshotData, SnapshotError> {
        let mut spool = SnapshotSpool::in_memory(MEMORY_SNAPSHOT_BYTES_MAX);
        let mut offset = 0usize;
        while offset < bytes.len() {
            let frame = next_frame(&bytes[offset..]).map_err(|reason| spool.corrupt(reason))?;
            spool.push(frame)?;
            offset += frame.len();
        }
        spool.finish()
    }

    /// Opens and verifies a snapshot file (every frame, the order and the counts), reading one
    /// frame at a time. The file stays where it is: it is a store's current snapshot.
    pub fn open_file(path: &Path, bytes_max: u64) -> Result<SnapshotData, SnapshotError> {
        let io_error = |e: std::io::Error| SnapshotError::Io {
            file: path.display().to_string(),
            reason: e.to_string(),
        };
        let file = fs::File::open(path).map_err(io_error)?;
        let file_len = file.metadata().map_err(io_error)?.len();
        if file_len > bytes_max {
            return Err(SnapshotError::TooLarge {
                bytes: file_len,
                bound: bytes_max,
            });
        }
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
        let mut order = FrameOrder::default();
        let mut frames = Vec::new();
        let mut offset = 0u64;
        let mut frame = Vec::new();
        while offset < file_len {
            let corrupt = |reason: String| SnapshotError::Corrupt {
                offset,
                frame: frames.len() as u64,
                reason,
            };
            let mut header_bytes = [0u8; FRAME_HEADER_BYTES];
            reader
                .read_exact(&mut header_bytes)
                .map_err(|_| corrupt("truncated frame header".into()))?;
            let header = FrameHeader::parse(&header_bytes);
            if header.payload_len as usize > FRAME_PAYLOAD_BYTES_MAX {
                return Err(corrupt(format!(
                    "frame length {} exceeds the bound",
                    header.payload_len
                )));
            }
            frame.clear();
            frame.extend_from_slice(&header_bytes);
            frame.resize(header.frame_len() as usize, 0);
            reader
                .read_exact(&mut frame[FRAME_HEADER_BYTES..])
                .map_err(|_| corrupt("truncated frame".into()))?;
            let decoded = open_one_frame(&frame).map_err(corrupt)?;
            order.accept(FrameSummary::of(decoded)).map_err(corrupt)?;
            frames.push((offset, frame.len() as u32));
            offset += frame.len() as u64;
        }
        let Some(header) = order.header.filter(|_| order.complete) else {
            return Err(SnapshotError::Corrupt {
                offset,
                frame: frames.len() as u64,
                reason: "snapshot ends without a trailer".into(),
            });
        };
        Ok(SnapshotData {
            inner: Arc::new(Inner {
                header,
                frames,
                len: offset,
                bytes: Bytes::File(SpoolFile {
                    file,
                    path: Mutex::new(path.to_path_buf()),
                    kept: Mutex::new(true),
                    feed: None,
                    writeback: Writeback::default(),
                }),
            }),
        })
    }

    /// Writes a file spool's bytes to the disk (memory: nothing to do), so that a later
    /// [`SnapshotData::persist_as`] — under a lock, say — finds little or nothing left to sync.
    pub fn sync_data(&self) -> Result<(), SnapshotError> {
        match &self.inner.bytes {
            Bytes::File(spool) => spool.file.sync_data().map_err(|e| spool.io_error(e)),
            Bytes::Memory(_) => Ok(()),
        }
    }

    /// Durably makes this snapshot the file at `target` (a store's current snapshot): a spool file
    /// not yet kept anywhere is synced and renamed there; anything else (memory, another store's
    /// file) is copied to `temp` frame by frame, synced and renamed. Then the directory is synced.
    pub fn persist_as(&self, target: &Path, temp: &Path) -> Result<(), SnapshotError> {
        let io_error = |file: &Path, e: std::io::Error| SnapshotError::Io {
            file: file.display().to_string(),
            reason: e.to_string(),
        };
        let moved = match &self.inner.bytes {
            Bytes::File(spool) => {
                let mut kept = spool.kept.lock().expect("spool kept lock");
                let mut path = spool.path.lock().expect("spool path lock");
                if *path == target {
                    return Ok(());
                }
                if *kept {
                    false
                } else {
                    spool.file.sync_data().map_err(|e| io_error(&path, e))?;
                    fs::rename(&*path, target).map_err(|e| io_error(&path, e))?;
                    *path = target.to_path_buf();
                    *kept = true;
                    true
                }
            }
            Bytes::Memory(_) => false,
        };
        if !moved {
            let mut file = fs::File::create(temp).map_err(|e| io_error(temp, e))?;
            for chunk in self.chunks() {
                file.write_all(&chunk?).map_err(|e| io_error(temp, e))?;
            }
            file.sync_all().map_err(|e| io_error(temp, e))?;
            fs::rename(temp, target).map_err(|e| io_error(temp, e))?;
        }
        let dir = target.parent().unwrap_or(Path::new("."));
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(dir, e))
    }

    pub fn header(&self) -> &SnapshotHeader {
        &self.inner.header
    }

    /// A kept file that another snapshot replaced, and which is now also linked at `aside`: it is
    /// no longer kept, and when its last handle is dropped (a transfer reading it may still hold
    /// one) the file at `aside` is removed, paced. Without a kept file, nothing changes.
    pub fn retire_as(&self, aside: &Path) {
        if let Bytes::File(spool) = &self.inner.bytes {
            let mut kept = spool.kept.lock().expect("spool kept lock");
            if *kept {
                *spool.path.lock().expect("spool path lock") = aside.to_path_buf();
                *kept = false;
            }
        }
    }

    /// Where a file snapshot is kept now, if it is.
    pub fn kept_path(&self) -> Option<PathBuf> {
        match &self.inner.bytes {
            Bytes::File(spool) if *spool.kept.lock().expect("spool kept lock") => Some(spool.path()),
            _ => None,
        }
    }

    /// The feed this snapshot was received through, if an install may have followed it.
    pub fn feed(&self) -> Option<&Arc<SpoolFeed>> {
        match &self.inner.bytes {
            Bytes::File(spool) => spool.feed.as_ref(),
            Bytes::Memory(_) => None,
        }
    }

    /// The snapshot's size in bytes.
    pub fn len(&self) -> u64 {
        self.inner.len
    }

    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// Hands every item to `visit`, one chunk in memory at a time, each sealed value re-verified
    /// against its key first: a damaged item stops the walk with an error before it is visited.
    pub fn for_each_item(&self, visit: &mut VisitItem<'_>) -> Result<(), StateMachineError> {
        for index in 0..self.chunk_count() {
            let (offset, _) = self.inner.frames[index];
            let corrupt = |reason: String| SnapshotError::Corrupt {
                offset,
                frame: index as u64,
                reason,
            };
            let frame = self.read_chunk(index)?;
            // Checked when the snapshot was finished; checked again, as the bytes were read again.
            let SnapshotFrameRef::Chunk { items, .. } = open_one_frame(&frame).map_err(corrupt)? else {
                continue;
            };
            for item in items {
                codec::verify_seal(item.key, item.value)
                    .map_err(|e| corrupt(format!("item in table {}: {e}", item.table.name())))?;
                visit(item.table, item.key, item.value)?;
            }
        }
        Ok(())
    }

    /// The batch that replaces every table with this snapshot's content, each value re-verified:
    /// the whole snapshot in memory, for tests and tools (a store installs with
    /// [`crate::backend::Backend::install_snapshot`], streaming).
    pub fn install_batch(&self) -> Result<WriteBatch, StateMachineError> {
        let mut batch = WriteBatch {
            clear_first: true,
            durable: true,
            ..WriteBatch::default()
        };
        self.for_each_item(&mut |table, key, value| {
            batch.changes.insert((table, key.to_vec()), Some(value.to_vec()));
            Ok(())
        })?;
        Ok(batch)
    }
}

/// The frame at the start of `bytes`, its length bounded before it is taken.
fn next_frame(bytes: &[u8]) -> Result<&[u8], String> {
    let header_bytes: &[u8; FRAME_HEADER_BYTES] = bytes
        .get(..FRAME_HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or("truncated frame header")?;
    let header = FrameHeader::parse(header_bytes);
    if header.payload_len as usize > FRAME_PAYLOAD_BYTES_MAX {
        return Err(format!("frame length {} exceeds the bound", header.payload_len));
    }
    bytes
        .get(..header.frame_len() as usize)
        .ok_or_else(|| "truncated frame".into())
}

/// Builds a snapshot of every table as seen by `view`, in memory.
pub fn build(view: &impl BackendView, header: SnapshotHeader) -> Result<SnapshotData, StateMachineError> {
    build_into(view, header, SnapshotSpool::in_memory(MEMORY_SNAPSHOT_BYTES_MAX))
}

/// Builds a snapshot of every table as seen by `view` into `spool`, one chunk in memory at a time.
pub fn build_into(
    view: &impl BackendView,
    header: SnapshotHeader,
    spool: SnapshotSpool,
) -> Result<SnapshotData, StateMachineError> {
    let built = build_unless_given_up(view, header, spool, &mut |_| true, &|| false)?;
    Ok(built.expect("a build that is never given up finishes"))
}

/// [`build_into`], asking `go_on` after each chunk is written (with the bytes it took) whether to
/// finish, and `stop_now` before each item whether to stop at once: `None` when either said so, the
/// spool dropped unfinished (a file is deleted with whatever it held, written or not). `stop_now` is
/// for a build nobody will read (its state machine closed): a build starved of CPU behind the
/// foreground can take seconds over one chunk, and the replica's purge waits for it.
pub fn build_unless_given_up(
    view: &impl BackendView,
    header: SnapshotHeader,
    spool: SnapshotSpool,
    go_on: &mut dyn FnMut(u64) -> bool,
    stop_now: &dyn Fn() -> bool,
) -> Result<Option<SnapshotData>, StateMachineError> {
    let mut writer = Writer {
        spool,
        frame: Vec::new(),
        pending: Vec::new(),
        pending_bytes: 0,
        chunks: 0,
        items: 0,
        go_on,
        given_up: false,
    };
    writer.frame(
        &SnapshotFrame::Header(header.clone()),
        FrameSummary::Header(header),
    )?;
    for table in Table::ALL {
        view.scan_after(table, &[], None, &mut |key, value| {
            if stop_now() {
                writer.given_up = true;
                return Ok(false);
            }
            writer.item(table, key, value)?;
            Ok(!writer.given_up)
        })?;
        if writer.given_up {
            return Ok(None);
        }
    }
    writer.flush_chunk()?;
    if writer.given_up {
        return Ok(None);
    }
    let (chunks, items) = (writer.chunks, writer.items);
    writer.frame(
        &SnapshotFrame::Trailer { chunks, items },
        FrameSummary::Trailer { chunks, items },
    )?;
    Ok(Some(writer.spool.finish()?))
}

/// Reads the header fields a snapshot needs from the view it is built from.
pub fn header_from_view(view: &impl BackendView) -> Result<SnapshotHeader, StateMachineError> {
    Ok(SnapshotHeader {
        last_log_id: apply::read_meta(view, apply::META_APPLIED)?.unwrap_or_default(),
        membership: apply::read_meta(view, apply::META_MEMBERSHIP)?.unwrap_or_default(),
        policy_version: apply::read_policy_version(view)?,
    })
}

struct Writer<'a> {
    spool: SnapshotSpool,
    /// The frame being encoded (reused).
    frame: Vec<u8>,
    pending: Vec<SnapshotItem>,
    pending_bytes: usize,
    chunks: u64,
    items: u64,
    go_on: &'a mut dyn FnMut(u64) -> bool,
    /// `go_on` said no, or `stop_now` yes: nothing more is written.
    given_up: bool,
}

impl Writer<'_> {
    fn frame(&mut self, frame: &SnapshotFrame, summary: FrameSummary) -> Result<(), StateMachineError> {
        self.frame.clear();
        codec::encode_frame(frame, None::<&()>, FRAME_PAYLOAD_BYTES_MAX, &mut self.frame)
            .map_err(|e| StateMachineError::Backend(format!("snapshot frame: {e}")))?;
        Ok(self.spool.push_checked(&self.frame, summary)?)
    }

    fn item(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StateMachineError> {
        let size = key.len() + value.len() + 16;
        if !self.pending.is_empty() && self.pending_bytes + size > SNAPSHOT_CHUNK_BYTES_MAX {
            self.flush_chunk()?;
        }
        self.pending.push(SnapshotItem {
            table,
            key: key.to_vec(),
            value: value.to_vec(),
        });
        self.pending_bytes += size;
        self.items += 1;
        Ok(())
    }

    fn flush_chunk(&mut self) -> Result<(), StateMachineError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(&mut self.pending);
        let count = items.len() as u64;
        self.pending_bytes = 0;
        let sequence = self.chunks;
        self.frame(
            &SnapshotFrame::Chunk { sequence, items },
            FrameSummary::Chunk {
                sequence,
                items: count,
            },
        )?;
        self.chunks += 1;
        self.given_up = !(self.go_on)(self.frame.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::MemBackend;

    fn filled_backend(records: usize) -> MemBackend {
        let mut backend = MemBackend::new();
        let mut batch = WriteBatch::default();
        for i in 0..records {
            let key = format!("key-{i:06}").into_bytes();
            let value = codec::seal(&key, &vec![i as u8; 3000]).unwrap();
            batch.changes.insert((Table::Records, key), Some(value));
        }
        backend.commit(batch).unwrap();
        backend
    }

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            last_log_id: vec![1, 2],
            membership: vec![3],
            policy_version: 9,
        }
    }

    #[test]
    fn chunks_are_bounded_and_reassemble_into_the_same_tables() {
        let source = filled_backend(1000);
        let data = build(&source.view().unwrap(), header()).unwrap();
        let chunks: Vec<Vec<u8>> = data.chunks().collect::<Result<_, _>>().unwrap();
        assert!(chunks.len() > 3, "3 MB must take several chunks");
        assert!(
            chunks.iter().all(|c| c.len() <= SNAPSHOT_CHUNK_BYTES_MAX + 4096),
            "every chunk is bounded"
        );
        let received = SnapshotData::from_chunks(&chunks).unwrap();
        assert_eq!(received.header(), &header());
        let mut target = MemBackend::new();
        target.install_snapshot(&received).unwrap();
        let rebuilt = build(&target.view().unwrap(), header()).unwrap();
        assert_eq!(
            rebuilt.to_bytes().unwrap(),
            data.to_bytes().unwrap(),
            "install then rebuild gives identical bytes"
        );
    }

    /// A build given up stops at the chunk it was told at, and its spool file goes with it.
    #[test]
    fn a_build_given_up_stops_there_and_leaves_no_spool_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = filled_backend(2000); // about 6 MB: six chunks and more
        let spool_path = dir.path().join("building.tmp");
        let spool = SnapshotSpool::create_file(&spool_path, 1 << 30).unwrap();
        let mut asked = 0;
        let built = build_unless_given_up(
            &source.view().unwrap(),
            header(),
            spool,
            &mut |_| {
                asked += 1;
                asked < 2
            },
            &|| false,
        )
        .unwrap();
        assert!(built.is_none(), "given up after its second chunk");
        assert_eq!(asked, 2, "asked once per chunk, and no more once told no");
        assert!(!spool_path.exists(), "the unfinished spool is deleted");
        let spool = SnapshotSpool::create_file(&spool_path, 1 << 30).unwrap();
        let mut asked = 0;
        let built = build_unless_given_up(
            &source.view().unwrap(),
            header(),
            spool,
            &mut |bytes| {
                asked += 1;
                assert!(
                    bytes > 0 && bytes <= 2 * SNAPSHOT_CHUNK_BYTES_MAX as u64,
                    "{bytes} bytes"
                );
                true
            },
            &|| false,
        )
        .unwrap()
        .expect("a build never told to stop finishes");
        assert_eq!(
            asked,
            built.chunk_count() - 2,
            "once per chunk of items (header and trailer aside)"
        );
    }

    /// A build told to stop now stops within the chunk, before the next item: nothing more is read
    /// or written, and its spool file goes.
    #[test]
    fn a_build_told_to_stop_now_stops_before_the_next_item() {
        let dir = tempfile::tempdir().unwrap();
        let source = filled_backend(2000);
        let spool_path = dir.path().join("building.tmp");
        let spool = SnapshotSpool::create_file(&spool_path, 1 << 30).unwrap();
        let items_asked = std::cell::Cell::new(0u64);
        let mut chunks_asked = 0;
        let built = build_unless_given_up(
            &source.view().unwrap(),
            header(),
            spool,
            &mut |_| {
                chunks_asked += 1;
                true
            },
            &|| {
                items_asked.set(items_asked.get() + 1);
                items_asked.get() > 10
            },
        )
        .unwrap();
        assert!(built.is_none(), "stopped");
        assert_eq!(
            items_asked.get(),
            11,
            "asked before each item, and no more once told to stop"
        );
        assert_eq!(chunks_asked, 0, "stopped inside the first chunk");
        assert!(!spool_path.exists(), "the unfinished spool is deleted");
    }

    #[test]
    fn a_file_spool_holds_the_same_bytes_and_is_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let source = filled_backend(500);
        let in_memory = build(&source.view().unwrap(), header()).unwrap();
        let spool_path = dir.path().join("building.tmp");
        let spool = SnapshotSpool::create_file(&spool_path, 1 << 30).unwrap();
        let on_disk = build_into(&source.view().unwrap(), header(), spool).unwrap();
        assert_eq!(on_disk.to_bytes().unwrap(), in_memory.to_bytes().unwrap());
        let current = dir.path().join("current.snap");
        on_disk
            .persist_as(&current, &dir.path().join("current.tmp"))
            .unwrap();
        assert!(!spool_path.exists(), "the spool was renamed into place");
        drop(on_disk);
        assert!(current.exists(), "a kept snapshot outlives its handles");
        let reopened = SnapshotData::open_file(&current, 1 << 30).unwrap();
        assert_eq!(reopened.to_bytes().unwrap(), in_memory.to_bytes().unwrap());
        assert!(matches!(
            SnapshotData::open_file(&current, 1000),
            Err(SnapshotError::TooLarge { .. })
        ));

        let abandoned_path = dir.path().join("receiving.tmp");
        let mut abandoned = SnapshotSpool::create_file(&abandoned_path, 1 << 30).unwrap();
        abandoned.push(&in_memory.read_chunk(0).unwrap()).unwrap();
        assert!(
            matches!(
                abandoned.push(&in_memory.read_chunk(2).unwrap()),
                Err(SnapshotError::Corrupt { .. })
            ),
            "a chunk out of order is refused"
        );
        drop(abandoned);
        assert!(!abandoned_path.exists(), "an abandoned transfer leaves no file");

        let mut small = SnapshotSpool::create_file(&dir.path().join("small.tmp"), 100).unwrap();
        small.push(&in_memory.read_chunk(0).unwrap()).unwrap();
        assert!(
            matches!(
                small.push(&in_memory.read_chunk(1).unwrap()),
                Err(SnapshotError::TooLarge { .. })
            ),
            "the spool's bound is checked before writing"
        );
    }

    #[test]
    fn items_encode_as_they_did_before_they_were_serde_bytes() {
        #[derive(Serialize)]
        struct ItemAsDeclaredBefore {
            table: Table,
            key: Vec<u8>,
            value: Vec<u8>,
        }
        let key = b"EU/user-1/record".to_vec();
        let value = codec::seal(&key, &vec![7u8; 300]).unwrap();
        let before = ItemAsDeclaredBefore {
            table: Table::Records,
            key: key.clone(),
            value: value.clone(),
        };
        let now = SnapshotItem {
            table: Table::Records,
            key,
            value,
        };
        assert_eq!(
            codec::encode(&now).unwrap(),
            codec::encode(&before).unwrap(),
            "the snapshot format is unchanged"
        );
    }

    #[test]
    fn damage_anywhere_is_refused() {
        let data = build(&filled_backend(20).view().unwrap(), header()).unwrap();
        let bytes = data.to_bytes().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut rng = 0x5eed_u64;
        for round in 0..300 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let bit = (rng >> 11) as usize % (bytes.len() * 8);
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SnapshotData::from_bytes(damaged.clone()).is_err(),
                "bit {bit} flip was accepted"
            );
            if round % 10 == 0 {
                let path = dir.path().join("damaged.snap");
                fs::write(&path, &damaged).unwrap();
                assert!(
                    SnapshotData::open_file(&path, 1 << 30).is_err(),
                    "bit {bit} flip was accepted from a file"
                );
            }
        }
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                SnapshotData::from_bytes(bytes[..cut].to_vec()).is_err(),
                "truncation at {cut} was accepted"
            );
        }
    }
}
