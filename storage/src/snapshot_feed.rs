//! A received snapshot installed while it is still arriving, so its install follows the transfer
//! instead of starting after it.
//!
//! At a million records a transfer took about 13 s and the install after it about 12 s: the
//! install (one redb write transaction fed from the spool file) waited for the last chunk before
//! it read the first. A receiving spool now publishes how far it has received ([`SpoolFeed`]), and
//! the store may start an *install ahead*: a thread of its own that takes each frame as soon as it
//! is received, checks it again (frame checksum and version, every sealed value against its key)
//! and hands its items to the store's install, then waits, without committing, for the state
//! machine to say whether openraft installs this snapshot ([`SpoolFeed::decide`]). Only then is
//! anything committed, so a transfer that is replaced, refused or not installed changes nothing.
//!
//! **The frames pass in memory.** The receiver (on the node's runtime, at the foreground's priority)
//! queues each frame here instead of writing it to the spool file, up to [`FEED_QUEUE_BYTES`]; the
//! install ahead (at the background's, `crate::priority`) writes it to the spool file at its place and
//! installs it from the same bytes. The kernel's copying of a gigabyte into the page cache was the
//! largest single cost of a learner (docs/performance.md), and the install read every byte back from
//! the file. A frame that finds the queue full (the install lags) is written to the file by the
//! receiver, as before, and the install reads it from there. However the install ahead ends — done,
//! failed, cancelled, or its thread unwinding — it first writes whatever is still queued to the file
//! and refuses every later frame, so the spool file is always whole once its last frame arrived.
//!
//! It is an optimisation with a fallback, never a second path to correctness: whoever else needs
//! to write to the store cancels it first ([`SpoolFeed::cancel`]), and an install that finds no
//! finished install ahead for its snapshot installs from the file as before.

use std::collections::VecDeque;
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

/// How far a receiving spool has received, the frames on their way to the install ahead, and what
/// is to become of it.
#[derive(Debug)]
pub struct SpoolFeed {
    state: Mutex<FeedState>,
    changed: Condvar,
    /// The queue's bound in bytes ([`FEED_QUEUE_BYTES`]; tests set it lower).
    queue_bytes_max: usize,
}

impl Default for SpoolFeed {
    fn default() -> SpoolFeed {
        SpoolFeed::with_queue_bound(FEED_QUEUE_BYTES)
    }
}

#[derive(Debug, Default)]
struct FeedState {
    /// Bytes of whole, checked frames received: queued here, or written to the spool file.
    written: u64,
    /// Frames received and not yet taken by the install ahead, each with its offset in the spool,
    /// in the order received.
    queue: VecDeque<(u64, Vec<u8>)>,
    queued_bytes: usize,
    /// Frames that passed through the queue, and those the receiver wrote to the file itself.
    frames_queued: u64,
    frames_written_by_receiver: u64,
    /// The install ahead has stopped taking frames: later ones go to the file.
    reader_gone: bool,
    /// The trailer was received: `written` is the snapshot's length.
    finished: bool,
    /// The spool was dropped unfinished (the transfer was replaced or refused).
    abandoned: bool,
    /// Someone else needs the store: the install ahead must let it go, uncommitted.
    cancelled: bool,
    /// The state machine's word once the whole snapshot was fed: commit (true) or drop.
    decision: Option<bool>,
}

/// See [`SpoolFeed::leave_on_drop`].
pub struct LeaveOnDrop<'a> {
    feed: &'a SpoolFeed,
    file: &'a fs::File,
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        self.feed.reader_leaves(self.file);
    }
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

/// Received frames held for the install ahead at most (32 chunks of a megabyte): a learner's memory
/// stays bounded however far the install lags, and a lag of a few seconds at a copy's rate still
/// passes in memory.
pub const FEED_QUEUE_BYTES: usize = 32 << 20;

impl SpoolFeed {
    /// A feed whose queue holds at most `queue_bytes_max` bytes of frames.
    pub fn with_queue_bound(queue_bytes_max: usize) -> SpoolFeed {
        SpoolFeed {
            state: Mutex::default(),
            changed: Condvar::new(),
            queue_bytes_max,
        }
    }

    fn update(&self, change: impl FnOnce(&mut FeedState)) {
        change(&mut self.state.lock().expect("spool feed lock"));
        self.changed.notify_all();
    }

    /// Queues the frame at `offset` for the install ahead, which writes it to the spool file; `false`
    /// if the queue is full or the install ahead has stopped taking frames: then the caller writes it.
    pub(crate) fn offer(&self, offset: u64, frame: &[u8]) -> bool {
        let mut state = self.state.lock().expect("spool feed lock");
        let full = state.queued_bytes + frame.len() > self.queue_bytes_max;
        if state.reader_gone || state.cancelled || full {
            state.frames_written_by_receiver += 1;
            return false;
        }
        assert!(
            state
                .queue
                .back()
                .is_none_or(|(last, bytes)| last + bytes.len() as u64 <= offset),
            "frames are queued in the spool's order"
        );
        state.queue.push_back((offset, frame.to_vec()));
        state.queued_bytes += frame.len();
        state.frames_queued += 1;
        true
    }

    /// Frames that passed in memory, and frames the receiver wrote to the file because the queue
    /// was full or the install ahead had stopped.
    pub fn frame_counts(&self) -> (u64, u64) {
        let state = self.state.lock().expect("spool feed lock");
        (state.frames_queued, state.frames_written_by_receiver)
    }

    /// The spool holds `written` bytes of whole, checked frames (queued or on file).
    pub(crate) fn published(&self, written: u64) {
        self.update(|state| {
            assert!(written >= state.written, "a spool only grows");
            state.written = written;
        });
    }

    /// The queued frame at `offset`, if the receiver queued it (otherwise it is on the file).
    fn take_queued(&self, offset: u64) -> Option<Vec<u8>> {
        let mut state = self.state.lock().expect("spool feed lock");
        if state.queue.front().is_none_or(|(at, _)| *at != offset) {
            return None;
        }
        let (_, frame) = state.queue.pop_front().expect("checked above");
        state.queued_bytes -= frame.len();
        Some(frame)
    }

    /// No install ahead will take frames (its thread could not start): every frame goes to the file.
    pub fn refuse_frames(&self) {
        self.update(|state| state.reader_gone = true);
    }

    /// Makes the caller the feed's reader until the guard drops (also while unwinding):
    /// then [`SpoolFeed::reader_leaves`]. A reader that may fail before it begins to read holds one
    /// from its start, so no frame is left queued for a reader that never came.
    pub fn leave_on_drop<'a>(&'a self, file: &'a fs::File) -> LeaveOnDrop<'a> {
        LeaveOnDrop { feed: self, file }
    }

    /// The install ahead stops taking frames: what is queued is written to `file` (unless the
    /// transfer was abandoned, and its file with it), and later frames go to the file directly.
    /// Under the lock, so no frame can be queued once it returns.
    fn reader_leaves(&self, file: &fs::File) {
        let mut state = self.state.lock().expect("spool feed lock");
        state.reader_gone = true;
        let queue = std::mem::take(&mut state.queue);
        state.queued_bytes = 0;
        if state.abandoned {
            return;
        }
        for (offset, frame) in queue {
            if let Err(error) = file.write_all_at(&frame, offset) {
                // The spool is then damaged where this frame should be; an install from it finds
                // that frame's checksum wrong and refuses the snapshot by name.
                tracing::error!(offset, %error, "could not write a queued snapshot frame to its spool");
            }
        }
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

    /// Takes every frame of the spool as it is received — from the queue (then writes it to the spool
    /// `file` at its place) or, if the receiver wrote it there, from the file —, checks it again, and
    /// hands every item to `visit`, its sealed value verified against its key first. Returns once the
    /// trailer was read; stops at a cancellation, an abandoned transfer or any damage. However it
    /// ends, what is still queued is written to the file first ([`SpoolFeed::reader_leaves`]).
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
        let _leave = self.leave_on_drop(file);
        let mut flushed = 0u64;
        let mut read = 0u64;
        let mut frame_number = 0u64;
        let mut from_file = Vec::new();
        while let Some(written) = self.wait_past(read)? {
            while read < written {
                // Checked at every frame, not only when caught up: a lagging install lets go at once.
                if self.state.lock().expect("spool feed lock").cancelled {
                    return Err(FeedStopped::Cancelled);
                }
                let corrupt = |reason: String| SnapshotError::Corrupt {
                    offset: read,
                    frame: frame_number,
                    reason,
                };
                let queued = self.take_queued(read);
                let frame = match &queued {
                    Some(frame) => {
                        file.write_all_at(frame, read)
                            .map_err(|e| corrupt(format!("writing the spool: {e}")))?;
                        frame.as_slice()
                    }
                    None => {
                        let io = |e: std::io::Error| corrupt(format!("reading the spool: {e}"));
                        let mut header_bytes = [0u8; FRAME_HEADER_BYTES];
                        file.read_exact_at(&mut header_bytes, read).map_err(io)?;
                        let header = FrameHeader::parse(&header_bytes);
                        if header.payload_len as usize > FRAME_PAYLOAD_BYTES_MAX {
                            let reason = format!("frame length {} exceeds the bound", header.payload_len);
                            return Err(corrupt(reason).into());
                        }
                        from_file.resize(header.frame_len() as usize, 0);
                        file.read_exact_at(&mut from_file, read).map_err(io)?;
                        from_file.as_slice()
                    }
                };
                if let SnapshotFrameRef::Chunk { items, .. } = open_one_frame(frame).map_err(corrupt)? {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::Backend;
    use crate::backend::MemBackend;
    use crate::backend::WriteBatch;
    use crate::snapshot::SnapshotData;
    use crate::snapshot::SnapshotHeader;
    use crate::snapshot::SnapshotSpool;

    /// A snapshot of `records` records of 3,000 bytes: about three per kilobyte of chunk.
    fn snapshot(records: usize) -> SnapshotData {
        let mut backend = MemBackend::new();
        let mut batch = WriteBatch::default();
        for i in 0..records {
            let key = format!("key-{i:06}").into_bytes();
            let value = codec::seal(&key, &vec![i as u8; 3000]).unwrap();
            batch.changes.insert((Table::Records, key), Some(value));
        }
        backend.commit(batch).unwrap();
        let header = SnapshotHeader {
            last_log_id: vec![1, 2],
            membership: vec![3],
            policy_version: 9,
        };
        crate::snapshot::build(&backend.view().unwrap(), header).unwrap()
    }

    /// Receives `sent` into a fed file spool while a reader follows it. With `hold`, the reader
    /// stops at its first item until every frame was received (so the queue fills, and the receiver
    /// writes what does not fit itself); with `cancel_after`, it is cancelled after that many items.
    /// Returns the received snapshot (read back from its file), the keys the reader saw, and the feed.
    fn receive(
        sent: &SnapshotData,
        queue_bytes: usize,
        hold: bool,
        cancel_after: Option<usize>,
    ) -> (SnapshotData, Vec<Vec<u8>>, Arc<SpoolFeed>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let feed = Arc::new(SpoolFeed::with_queue_bound(queue_bytes));
        let mut spool =
            SnapshotSpool::create_fed_file(&dir.path().join("receiving.tmp"), 1 << 30, feed.clone()).unwrap();
        let file = spool.file_handle().unwrap().unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let reader = {
            let feed = feed.clone();
            std::thread::spawn(move || {
                let mut keys = Vec::new();
                let fed = feed.feed(
                    &file,
                    &mut |_, key, _| {
                        if hold && keys.is_empty() {
                            released.recv().unwrap();
                        }
                        keys.push(key.to_vec());
                        if cancel_after == Some(keys.len()) {
                            feed.cancel();
                        }
                        Ok(())
                    },
                    &mut |_| Ok(()),
                );
                (fed, keys)
            })
        };
        for chunk in sent.chunks() {
            spool.push(&chunk.unwrap()).unwrap();
        }
        let received = spool.finish().unwrap();
        let _ = release.send(()); // a reader not held may be gone already
        let (fed, keys) = reader.join().unwrap();
        match cancel_after {
            None => fed.unwrap(),
            Some(_) => assert!(matches!(fed, Err(FeedStopped::Cancelled)), "{fed:?}"),
        }
        (received, keys, feed, dir)
    }

    #[test]
    fn frames_pass_in_memory_or_through_the_file_and_the_spool_is_whole_either_way() {
        let sent = snapshot(2000); // about 6 MB: six chunks and more
        let chunks = sent.chunk_count() as u64;
        let expected: Vec<Vec<u8>> = (0..2000).map(|i| format!("key-{i:06}").into_bytes()).collect();

        // A queue for everything: every frame passes in memory, and the reader writes the file.
        let (received, keys, feed, _dir) = receive(&sent, 64 << 20, false, None);
        assert_eq!(keys, expected, "every item, in order");
        assert_eq!(feed.frame_counts(), (chunks, 0));
        assert_eq!(received.to_bytes().unwrap(), sent.to_bytes().unwrap());

        // A queue of two chunks and a reader that lags: the receiver writes the rest itself.
        let (received, keys, feed, _dir) = receive(&sent, 2 << 20, true, None);
        assert_eq!(
            keys, expected,
            "every item, in order, from memory and from the file"
        );
        let (in_memory, by_receiver) = feed.frame_counts();
        assert_eq!(in_memory + by_receiver, chunks);
        assert!(
            in_memory >= 1 && by_receiver >= 1,
            "{in_memory} in memory, {by_receiver} by the receiver"
        );
        assert_eq!(received.to_bytes().unwrap(), sent.to_bytes().unwrap());
    }

    #[test]
    fn a_reader_that_stops_writes_what_was_queued_for_it_to_the_file() {
        let sent = snapshot(2000);
        // Cancelled at its first item while the receiver has queued several frames it never took.
        let (received, keys, feed, _dir) = receive(&sent, 64 << 20, true, Some(1));
        assert!(
            keys.len() < 2000,
            "it stopped at the end of the frame it was in: {}",
            keys.len()
        );
        let (in_memory, by_receiver) = feed.frame_counts();
        assert!(
            in_memory >= 2,
            "frames were queued before the reader stopped: {in_memory}"
        );
        assert_eq!(in_memory + by_receiver, sent.chunk_count() as u64);
        assert_eq!(
            received.to_bytes().unwrap(),
            sent.to_bytes().unwrap(),
            "the spool file is whole: an install from it needs every frame"
        );
    }

    #[test]
    fn a_feed_whose_reader_never_started_sends_every_frame_to_the_file() {
        let sent = snapshot(500);
        let dir = tempfile::tempdir().unwrap();
        let feed = Arc::new(SpoolFeed::default());
        feed.refuse_frames();
        let mut spool =
            SnapshotSpool::create_fed_file(&dir.path().join("receiving.tmp"), 1 << 30, feed.clone()).unwrap();
        for chunk in sent.chunks() {
            spool.push(&chunk.unwrap()).unwrap();
        }
        let received = spool.finish().unwrap();
        assert_eq!(feed.frame_counts(), (0, sent.chunk_count() as u64));
        assert_eq!(received.to_bytes().unwrap(), sent.to_bytes().unwrap());
    }
}
