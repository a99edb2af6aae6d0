//! The writer: a node's audit trail on disk.
//!
//! [`AuditLog::submit`] queues an event and returns at once, with a [`Durable`] that completes once the
//! entry is on disk; [`AuditLog::append`] waits for it. Entries take their sequence, and their time from
//! the clock the caller supplies, in submission order under one lock, so the trail's order is the order
//! in which things were recorded. One writer thread signs, chains and writes whatever is queued, then
//! `fdatasync`s: everything queued while a sync runs shares the next one, as the Raft log's group commit
//! does. Nothing is acknowledged before the sync that covers it, so an acknowledged entry survives a
//! crash. A failed write or sync poisons the log until it is reopened (after one, the page cache can't be
//! trusted): every later entry fails, and [`AuditLog::failures`] counts them.
//!
//! A segment that reaches `segment_bytes_max` is closed and the next entry starts a new one, whose header
//! carries the last entry's hash; a new segment is also started when the node's certificate changed
//! since the last one (a renewed key), so each segment is signed by one key, named in its header.
//! Segment headers are written to a temporary file, synced and renamed into place, so a segment always
//! opens with a whole header.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use crate::entry::{AUDIT_FORMAT, Entry, GENESIS, Hash, MAGIC, SegmentHeader, encode_signed};
use crate::event::Event;
use crate::key::Signer;
use crate::segment::{Corruption, list_segments, scan_tail, segment_name};

/// Milliseconds since the Unix epoch. The node supplies its wall clock; the audit crate reads none.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// A segment is closed once it holds this many bytes.
    pub segment_bytes_max: u64,
}

impl AuditConfig {
    /// 16 MiB segments in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> AuditConfig {
        AuditConfig {
            dir: dir.into(),
            segment_bytes_max: 16 << 20,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit trail {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("audit trail damaged: {0}")]
    Corrupt(String),
    #[error("the audit trail failed and takes no more entries until it is reopened: {0}")]
    Poisoned(String),
}

impl From<Corruption> for AuditError {
    fn from(corruption: Corruption) -> AuditError {
        AuditError::Corrupt(corruption.to_string())
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |error| AuditError::Io {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

struct Queued {
    sequence: u64,
    time_unix_ms: u64,
    event: Event,
}

#[derive(Default)]
struct State {
    queue: Vec<Queued>,
    next_sequence: u64,
    /// Every entry with a sequence below this is on disk.
    durable_below: u64,
    failure: Option<String>,
    failures: u64,
    waiting: Vec<(u64, Waker)>,
    closing: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signals the writer: entries queued, or closing.
    queued: Condvar,
    /// Signals blocked waiters: a round finished.
    synced: Condvar,
    clock: Clock,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking writer must not leave every later caller panicking on the lock as well.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A node's audit trail, open for appending.
pub struct AuditLog {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    identity: String,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) the trail in `config.dir`: continues the last segment after cutting a torn
    /// tail, refuses damage elsewhere, and records an [`Event::Opened`] entry.
    pub fn open(config: AuditConfig, signer: Signer, clock: Clock) -> Result<AuditLog, AuditError> {
        let now = clock();
        let (writer, next_sequence, torn_bytes) = Writer::open(config, signer, now)?;
        let identity = writer.signer.identity().to_string();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_sequence,
                durable_below: next_sequence,
                ..State::default()
            }),
            queued: Condvar::new(),
            synced: Condvar::new(),
            clock,
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| writer.run(&thread_shared));
                if std::panic::catch_unwind(run).is_err() {
                    // Nobody waits forever for a writer that is gone.
                    let mut state = thread_shared.lock();
                    state.failure = Some("the writer thread panicked".into());
                    state.waiting.drain(..).for_each(|(_, waker)| waker.wake());
                    drop(state);
                    thread_shared.synced.notify_all();
                }
            })
            .map_err(|error| AuditError::Io {
                path: PathBuf::new(),
                reason: format!("can't start the writer thread: {error}"),
            })?;
        let log = AuditLog {
            shared,
            writer: Mutex::new(Some(thread)),
            identity: identity.clone(),
        };
        log.append(Event::Opened {
            identity,
            tail_cut_bytes: torn_bytes,
        })?;
        Ok(log)
    }

    /// The node identity of the certificate that signs the entries.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Queues `event`; the returned [`Durable`] completes once it is on disk (or failed).
    pub fn submit(&self, event: Event) -> Durable {
        let mut state = self.shared.lock();
        if let Some(failure) = &state.failure {
            let failure = failure.clone();
            state.failures += 1;
            return Durable::ready(Err(AuditError::Poisoned(failure)));
        }
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        let time_unix_ms = (self.shared.clock)();
        state.queue.push(Queued {
            sequence,
            time_unix_ms,
            event,
        });
        drop(state);
        self.shared.queued.notify_one();
        Durable::waiting(self.shared.clone(), sequence)
    }

    /// Appends `event` and returns its sequence once it is on disk.
    pub fn append(&self, event: Event) -> Result<u64, AuditError> {
        let durable = self.submit(event);
        let sequence = durable.sequence();
        durable.wait().map(|()| sequence.unwrap_or_default())
    }

    /// Completes once every entry submitted before the call is on disk.
    pub fn durable_now(&self) -> Durable {
        let state = self.shared.lock();
        match state.next_sequence.checked_sub(1) {
            Some(last) => Durable::waiting(self.shared.clone(), last),
            None => Durable::ready(Ok(())),
        }
    }

    /// Entries that could not be written (each failed submission after the log was poisoned, and the
    /// entries of the round that failed).
    pub fn failures(&self) -> u64 {
        self.shared.lock().failures
    }

    /// Entries on disk.
    pub fn durable_entries(&self) -> u64 {
        self.shared.lock().durable_below
    }

    /// Writes what is queued and stops the writer. Dropping the log does the same.
    pub fn close(&self) {
        self.shared.lock().closing = true;
        self.shared.queued.notify_all();
        if let Some(thread) = self.writer.lock().expect("writer handle lock").take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// An entry (or everything before a point) reaching the disk: a future for async callers, and
/// [`Durable::wait`] for threads that may block.
pub struct Durable {
    inner: DurableInner,
}

enum DurableInner {
    Ready(Option<Result<(), AuditError>>),
    Waiting { shared: Arc<Shared>, sequence: u64 },
}

impl Durable {
    fn ready(outcome: Result<(), AuditError>) -> Durable {
        Durable {
            inner: DurableInner::Ready(Some(outcome)),
        }
    }

    fn waiting(shared: Arc<Shared>, sequence: u64) -> Durable {
        Durable {
            inner: DurableInner::Waiting { shared, sequence },
        }
    }

    /// The entry's sequence, if it was queued.
    pub fn sequence(&self) -> Option<u64> {
        match &self.inner {
            DurableInner::Ready(_) => None,
            DurableInner::Waiting { sequence, .. } => Some(*sequence),
        }
    }

    /// Blocks the calling thread until the entry is on disk.
    pub fn wait(self) -> Result<(), AuditError> {
        match self.inner {
            DurableInner::Ready(outcome) => outcome.unwrap_or(Ok(())),
            DurableInner::Waiting { shared, sequence } => {
                let mut state = shared.lock();
                loop {
                    if let Some(outcome) = outcome_of(&state, sequence) {
                        return outcome;
                    }
                    state = shared
                        .synced
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
        }
    }
}

/// Whether `sequence` is settled: on disk, or never will be.
fn outcome_of(state: &State, sequence: u64) -> Option<Result<(), AuditError>> {
    if sequence < state.durable_below {
        return Some(Ok(()));
    }
    let failure = state.failure.as_ref()?;
    Some(Err(AuditError::Poisoned(failure.clone())))
}

impl Future for Durable {
    type Output = Result<(), AuditError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            DurableInner::Ready(outcome) => Poll::Ready(outcome.take().unwrap_or(Ok(()))),
            DurableInner::Waiting { shared, sequence } => {
                let mut state = shared.lock();
                if let Some(outcome) = outcome_of(&state, *sequence) {
                    return Poll::Ready(outcome);
                }
                state.waiting.push((*sequence, cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

/// The writer thread's side: the open segment and the chain's end.
struct Writer {
    config: AuditConfig,
    signer: Signer,
    file: File,
    path: PathBuf,
    bytes: u64,
    entries_in_segment: u64,
    last_hash: Hash,
    /// The next segment starts before the next entry (the certificate changed since the last one).
    rotate_first: bool,
}

impl Writer {
    /// Opens the trail's last segment (or creates the first); returns the next sequence and the bytes of
    /// a torn tail it cut.
    fn open(config: AuditConfig, signer: Signer, now: u64) -> Result<(Writer, u64, u64), AuditError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        remove_temporary_files(&dir)?;
        let segments = list_segments(&dir).map_err(io_error(&dir))?;
        let Some((_, path)) = segments.last() else {
            let (file, path, bytes) = create_segment(&dir, &signer, 0, GENESIS, now)?;
            let writer = Writer {
                config,
                signer,
                file,
                path,
                bytes,
                entries_in_segment: 0,
                last_hash: GENESIS,
                rotate_first: false,
            };
            return Ok((writer, 0, 0));
        };
        let tail = scan_tail(path).map_err(io_error(path))??;
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        if tail.torn_bytes > 0 {
            file.set_len(tail.good_len).map_err(io_error(path))?;
            file.sync_all().map_err(io_error(path))?;
        }
        let rotate_first = tail.header.certificate != signer.certificate();
        let mut writer = Writer {
            config,
            signer,
            file,
            path: path.clone(),
            bytes: tail.good_len,
            entries_in_segment: tail.entries,
            last_hash: tail.last_hash,
            rotate_first,
        };
        writer.seek_end()?;
        Ok((writer, tail.next_sequence, tail.torn_bytes))
    }

    fn seek_end(&mut self) -> Result<(), AuditError> {
        use std::io::Seek;
        self.file
            .seek(std::io::SeekFrom::Start(self.bytes))
            .map(|_| ())
            .map_err(io_error(&self.path))
    }

    fn run(mut self, shared: &Shared) {
        loop {
            let batch = {
                let mut state = shared.lock();
                while state.queue.is_empty() && !state.closing {
                    state = shared
                        .queued
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if state.queue.is_empty() {
                    return;
                }
                std::mem::take(&mut state.queue)
            };
            let last = batch.last().map_or(0, |queued| queued.sequence);
            let count = batch.len() as u64;
            let outcome = self.write(batch);
            let mut state = shared.lock();
            match outcome {
                Ok(()) => state.durable_below = last + 1,
                Err(error) => {
                    state.failures += count + state.queue.len() as u64;
                    state.failure = Some(error.to_string());
                    state.queue.clear();
                }
            }
            let durable_below = state.durable_below;
            let failed = state.failure.is_some();
            let mut woken = Vec::new();
            state.waiting.retain(|(sequence, waker)| {
                let settled = *sequence < durable_below || failed;
                if settled {
                    woken.push(waker.clone());
                }
                !settled
            });
            drop(state);
            shared.synced.notify_all();
            for waker in woken {
                waker.wake();
            }
            if failed {
                return;
            }
        }
    }

    /// Signs, chains and writes a batch, rotating as needed, then syncs.
    fn write(&mut self, batch: Vec<Queued>) -> Result<(), AuditError> {
        let mut buffer = Vec::new();
        for queued in batch {
            let rotate = self.rotate_first
                || (self.entries_in_segment > 0
                    && self.bytes + buffer.len() as u64 >= self.config.segment_bytes_max);
            if rotate {
                self.flush(&mut buffer)?;
                self.rotate(queued.sequence, queued.time_unix_ms)?;
            }
            let entry = Entry {
                sequence: queued.sequence,
                previous: self.last_hash,
                time_unix_ms: queued.time_unix_ms,
                event: queued.event,
            };
            let signer = &self.signer;
            self.last_hash = encode_signed(
                &entry,
                |message| signer.sign(message).map_err(|error| error.to_string()),
                &mut buffer,
            )
            .map_err(AuditError::Corrupt)?;
            self.entries_in_segment += 1;
        }
        self.flush(&mut buffer)
    }

    /// Writes `buffer` to the open segment and syncs it.
    fn flush(&mut self, buffer: &mut Vec<u8>) -> Result<(), AuditError> {
        if buffer.is_empty() {
            return Ok(());
        }
        self.file.write_all(buffer).map_err(io_error(&self.path))?;
        self.file.sync_data().map_err(io_error(&self.path))?;
        self.bytes += buffer.len() as u64;
        buffer.clear();
        Ok(())
    }

    /// Closes the open segment and starts the next at `first_sequence`, chained to the last entry.
    fn rotate(&mut self, first_sequence: u64, now: u64) -> Result<(), AuditError> {
        let dir = self.config.dir.clone();
        let (file, path, bytes) = create_segment(&dir, &self.signer, first_sequence, self.last_hash, now)?;
        self.file = file;
        self.path = path;
        self.bytes = bytes;
        self.entries_in_segment = 0;
        self.rotate_first = false;
        Ok(())
    }
}

/// Writes a new segment's header to a temporary file, syncs it, renames it into place and syncs the
/// directory; returns the segment open for appending.
fn create_segment(
    dir: &Path,
    signer: &Signer,
    first_sequence: u64,
    previous: Hash,
    now: u64,
) -> Result<(File, PathBuf, u64), AuditError> {
    let header = SegmentHeader {
        magic: MAGIC,
        format: AUDIT_FORMAT,
        first_sequence,
        previous,
        opened_unix_ms: now,
        algorithm: signer.algorithm(),
        certificate: signer.certificate().to_vec(),
    };
    let mut bytes = Vec::new();
    header
        .encode_frame(&mut bytes)
        .map_err(|error| AuditError::Corrupt(format!("segment header: {error}")))?;
    let path = dir.join(segment_name(first_sequence));
    let temporary = path.with_extension("log.tmp");
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(&bytes).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(io_error(&path))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir))?;
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_error(&path))?;
    Ok((file, path, bytes.len() as u64))
}

/// A header left unrenamed by a crash is not part of the trail.
fn remove_temporary_files(dir: &Path) -> Result<(), AuditError> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        if path.extension().is_some_and(|extension| extension == "tmp") {
            std::fs::remove_file(&path).map_err(io_error(&path))?;
        }
    }
    Ok(())
}
