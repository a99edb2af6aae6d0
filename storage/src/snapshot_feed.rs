//! A received snapshot read back while it is still arriving, so its install follows the transfer
//! instead of starting after it.
//!
//! At a million records a transfer took about 13 s and the install after it about 12 s: the
//! install (one redb write transaction fed from the spool file) waited for the last chunk before
//! it read the first. A receiving spool now publishes how far it has written ([`SpoolFeed`]), and
//! the store may start an *install ahead*: a thread of its own that reads each frame as soon as it
//! is written, checks it again (frame checksum and version, every sealed value against its key)
//! and hands its items to the store's install transaction, then waits, without committing, for
//! the state machine to say whether openraft installs this snapshot ([`SpoolFeed::decide`]). Only
//! then is anything committed, so a transfer that is replaced, refused or not installed changes
//! nothing.
//!
//! It is an optimisation with a fallback, never a second path to correctness: whoever else needs
//! to write to the store cancels it first ([`SpoolFeed::cancel`]), and an install that finds no
//! finished install ahead for its snapshot installs from the file as before. The feed holds no
//! chunk in memory: the reader reads the spool file, one frame at a time.

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::Condvar;
use std::sync::Mutex;

use crate::backend::Table;
use crate::codec;
use crate::codec::FRAME_HEADER_BYTES;
use crate::codec::FrameHeader;
use crate::error::SnapshotError;
use crate::error::StateMachineError;
use crate::snapshot::FRAME_PAYLOAD_BYTES_MAX;
use crate::snapshot::SnapshotFrameRef;
use crate::snapshot::open_one_frame;

/// How far a receiving spool has written, and what is to become of an install following it.
#[derive(Debug, Default)]
pub struct SpoolFeed {
    state: Mutex<FeedState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct FeedState {
    /// Bytes of whole, checked frames written to the spool file.
    written: u64,
    /// The trailer was written: `written` is the snapshot's length.
    finished: bool,
    /// The spool was dropped unfinished (the transfer was replaced or refused).
    abandoned: bool,
    /// Someone else needs the store: the install ahead must let it go, uncommitted.
    cancelled: bool,
    /// The state machine's word once the whole snapshot was fed: commit (true) or drop.
    decision: Option<bool>,
}

/// Why an install ahead stopped without being asked to commit.
#[derive(Debug, thiserror::Error)]
pub enum FeedStopped {
    #[error("the install ahead was cancelled")]
    Cancelled,
    #[error("the transfer was abandoned")]
    Abandoned,
    #[error(transparent)]
    Failed(#[from] StateMachineError),
}

impl From<SnapshotError> for FeedStopped {
    fn from(error: SnapshotError) -> FeedStopped {
        FeedStopped::Failed(error.into())
    }
}

/// Called with each item as it is read: its table, key and sealed value (already verified).
pub type FeedItem<'a> = dyn FnMut(Table, &[u8], &[u8]) -> Result<(), StateMachineError> + 'a;

/// Every this many bytes read, the install ahead asks the disk to take what was written so far
/// (see [`SpoolFeed::feed`]): a writeback window, so that little is ever waiting to be written.
pub const FEED_FLUSH_BYTES: u64 = crate::writeback::WRITEBACK_WINDOW_BYTES;

impl SpoolFeed {
    fn update(&self, change: impl FnOnce(&mut FeedState)) {
        change(&mut self.state.lock().expect("spool feed lock"));
        self.changed.notify_all();
    }

    /// The spool holds `written` bytes of whole, checked frames.
    pub(crate) fn published(&self, written: u64) {
        self.update(|state| {
            assert!(written >= state.written, "a spool only grows");
            state.written = written;
        });
    }

    /// The trailer is written.
    pub(crate) fn finished(&self) {
        self.update(|state| state.finished = true);
    }

    /// The spool was dropped before its trailer.
    pub(crate) fn abandoned(&self) {
        self.update(|state| state.abandoned = true);
    }

    /// Stops the install ahead at its next frame, or while it waits; it commits nothing.
    pub fn cancel(&self) {
        self.update(|state| state.cancelled = true);
    }

    /// Tells an install ahead that has fed every item whether to commit.
    pub fn decide(&self, commit: bool) {
        self.update(|state| state.decision = Some(commit));
    }

    /// Waits until the spool holds more than `read` bytes (returns how many), or is finished at
    /// `read` (returns `None`).
    fn wait_past(&self, read: u64) -> Result<Option<u64>, FeedStopped> {
        let mut state = self.state.lock().expect("spool feed lock");
        loop {
            if state.cancelled {
                return Err(FeedStopped::Cancelled);
            }
            if state.written > read {
                return Ok(Some(state.written));
            }
            if state.finished {
                return Ok(None);
            }
            if state.abandoned {
                return Err(FeedStopped::Abandoned);
            }
            state = self.changed.wait(state).expect("spool feed lock");
        }
    }

    /// Reads every frame of the spool `file` as it is written, each checked again, and hands every
    /// item to `visit`, its sealed value verified against its key first. Returns once the trailer
    /// was read; stops at a cancellation, an abandoned transfer or any damage.
    ///
    /// Every [`FEED_FLUSH_BYTES`] it calls `flush` with the bytes read so far: the spool and the
    /// store's file are written back as the transfer goes, so the syncs that make the snapshot
    /// durable once it is installed (the store's commit, the spool's before it becomes the current
    /// snapshot) find little left to write, where they found a gigabyte or two of dirty pages each.
    pub fn feed(
        &self,
        file: &fs::File,
        visit: &mut FeedItem<'_>,
        flush: &mut dyn FnMut(u64) -> Result<(), StateMachineError>,
    ) -> Result<(), FeedStopped> {
        let mut flushed = 0u64;
        let mut read = 0u64;
        let mut frame_number = 0u64;
        let mut frame = Vec::new();
        while let Some(written) = self.wait_past(read)? {
            while read < written {
                let corrupt = |reason: String| SnapshotError::Corrupt {
                    offset: read,
                    frame: frame_number,
                    reason,
                };
                let io = |e: std::io::Error| corrupt(format!("reading the spool: {e}"));
                let mut header_bytes = [0u8; FRAME_HEADER_BYTES];
                file.read_exact_at(&mut header_bytes, read).map_err(io)?;
                let header = FrameHeader::parse(&header_bytes);
                if header.payload_len as usize > FRAME_PAYLOAD_BYTES_MAX {
                    let reason = format!("frame length {} exceeds the bound", header.payload_len);
                    return Err(corrupt(reason).into());
                }
                frame.resize(header.frame_len() as usize, 0);
                file.read_exact_at(&mut frame, read).map_err(io)?;
                if let SnapshotFrameRef::Chunk { items, .. } = open_one_frame(&frame).map_err(corrupt)? {
                    for item in items {
                        codec::verify_seal(item.key, item.value)
                            .map_err(|e| corrupt(format!("item in table {}: {e}", item.table.name())))?;
                        visit(item.table, item.key, item.value)?;
                    }
                }
                read += frame.len() as u64;
                frame_number += 1;
                if read - flushed >= FEED_FLUSH_BYTES {
                    flush(read)?;
                    flushed = read;
                }
            }
        }
        Ok(())
    }

    /// After [`SpoolFeed::feed`]: waits for the state machine's decision. `true`: commit.
    pub fn await_decision(&self) -> Result<bool, FeedStopped> {
        let mut state = self.state.lock().expect("spool feed lock");
        loop {
            if state.cancelled {
                return Err(FeedStopped::Cancelled);
            }
            if let Some(commit) = state.decision {
                return Ok(commit);
            }
            state = self.changed.wait(state).expect("spool feed lock");
        }
    }
}
