//! Group commit: many appenders, one fdatasync.
//!
//! Appenders write their records under the log's lock and then [`push`](CommitQueue::push) the
//! end position of their write together with a waiter (openraft's flush callback). The driver
//! repeatedly takes the furthest written position, syncs the file holding it, and completes
//! every waiter at or before that position. While one sync runs, new appends pile up and share
//! the next one, so N concurrent appends across any number of groups cost about one sync.
//!
//! Guarantees:
//! * a waiter is completed with `Ok` only after a sync that started after its bytes were written;
//! * waiters complete in log order, each exactly once;
//! * after a failed sync every pending and later waiter gets an error: the page cache can no longer
//!   be trusted, so nothing is ever acknowledged again until the log is reopened.
//!
//! The queue is a plain data structure; what drives it is separate: [`SyncThread`] in production,
//! a task calling [`CommitQueue::sync_pending`] on the deterministic runtime in the simulator.
//! Under `--cfg loom` the queue's lock and condition variable come from loom (see
//! `tests` below for how to run the model check).

use std::collections::VecDeque;
use std::io;

#[cfg(loom)]
use loom::sync::Condvar;
#[cfg(loom)]
use loom::sync::Mutex;
#[cfg(not(loom))]
use std::sync::Condvar;
#[cfg(not(loom))]
use std::sync::Mutex;

use crate::disk::DiskFile;
use crate::log::Position;

/// Called once with the outcome of making an append durable.
pub type Waiter = Box<dyn FnOnce(Result<(), io::Error>) + Send>;

/// What the driver syncs.
pub trait SyncFile: Send + Sync + 'static {
    fn sync_file(&self) -> io::Result<()>;
}

impl<F: DiskFile> SyncFile for F {
    fn sync_file(&self) -> io::Result<()> {
        self.sync()
    }
}

/// Positions written but not yet durable, and who waits for them.
pub struct CommitQueue<F> {
    state: Mutex<QueueState<F>>,
    work: Condvar,
}

struct QueueState<F> {
    written: Position,
    synced: Position,
    /// The file holding `written`.
    file: Option<std::sync::Arc<F>>,
    waiters: VecDeque<(Position, Waiter)>,
    failed: Option<String>,
    closed: bool,
    syncs: u64,
}

impl<F: SyncFile> Default for CommitQueue<F> {
    fn default() -> Self {
        CommitQueue::new()
    }
}

impl<F: SyncFile> CommitQueue<F> {
    pub fn new() -> Self {
        CommitQueue {
            state: Mutex::new(QueueState {
                written: Position::default(),
                synced: Position::default(),
                file: None,
                waiters: VecDeque::new(),
                failed: None,
                closed: false,
                syncs: 0,
            }),
            work: Condvar::new(),
        }
    }

    /// Records that everything up to `end` is written to `file`; `waiter` runs once it is durable.
    ///
    /// Callers push while still holding the log's lock, so positions arrive in log order.
    pub fn push(&self, end: Position, file: std::sync::Arc<F>, waiter: Option<Waiter>) -> Result<(), String> {
        let mut state = self.state.lock().expect("commit queue lock poisoned");
        if let Some(reason) = state.failed.clone() {
            drop(state);
            if let Some(waiter) = waiter {
                waiter(Err(io::Error::other(reason.clone())));
            }
            return Err(reason);
        }
        assert!(
            end >= state.written,
            "positions must be pushed in log order: {end:?} after {:?}",
            state.written
        );
        state.written = end;
        state.file = Some(file);
        if let Some(waiter) = waiter {
            state.waiters.push_back((end, waiter));
        }
        drop(state);
        self.work.notify_one();
        Ok(())
    }

    /// Syncs once if anything written is not yet durable, then completes the waiters it covered.
    /// Never blocks waiting for work; returns whether it synced.
    pub fn sync_pending(&self) -> bool {
        let (target, file) = {
            let state = self.state.lock().expect("commit queue lock poisoned");
            if state.failed.is_some() || state.written <= state.synced {
                return false;
            }
            (
                state.written,
                state.file.clone().expect("a written position has a file"),
            )
        };
        // The sync runs without the lock: appenders keep writing and queue up for the next one.
        let result = file.sync_file();
        let (completed, outcome) = {
            let mut state = self.state.lock().expect("commit queue lock poisoned");
            match result {
                Ok(()) => {
                    state.syncs += 1;
                    if target > state.synced {
                        state.synced = target;
                    }
                    let mut completed = Vec::new();
                    while state
                        .waiters
                        .front()
                        .is_some_and(|(position, _)| *position <= target)
                    {
                        completed.push(state.waiters.pop_front().expect("front exists").1);
                    }
                    (completed, None)
                }
                Err(error) => {
                    let reason = format!("fdatasync failed: {error}");
                    tracing::error!(%reason, "the log refuses further writes");
                    state.failed = Some(reason.clone());
                    (
                        state.waiters.drain(..).map(|(_, waiter)| waiter).collect(),
                        Some(reason),
                    )
                }
            }
        };
        for waiter in completed {
            match &outcome {
                None => waiter(Ok(())),
                Some(reason) => waiter(Err(io::Error::other(reason.clone()))),
            }
        }
        true
    }

    /// Blocks until something needs syncing (`true`) or the queue is closed and drained (`false`).
    pub fn wait_for_work(&self) -> bool {
        let mut state = self.state.lock().expect("commit queue lock poisoned");
        loop {
            if state.failed.is_none() && state.written > state.synced {
                return true;
            }
            if state.closed {
                return false;
            }
            state = self.work.wait(state).expect("commit queue lock poisoned");
        }
    }

    /// Asks the driver to finish: it syncs what is pending, then stops.
    pub fn close(&self) {
        self.state.lock().expect("commit queue lock poisoned").closed = true;
        self.work.notify_all();
    }

    /// How many syncs have completed (tests assert that appends share them).
    pub fn sync_count(&self) -> u64 {
        self.state.lock().expect("commit queue lock poisoned").syncs
    }

    /// The position up to which everything is durable.
    pub fn synced(&self) -> Position {
        self.state.lock().expect("commit queue lock poisoned").synced
    }
}

/// The production driver: one thread per node that syncs whenever there is unsynced data.
/// Dropping it syncs what is pending and joins the thread.
pub struct SyncThread<F: SyncFile> {
    queue: std::sync::Arc<CommitQueue<F>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<F: SyncFile> SyncThread<F> {
    pub fn spawn(queue: std::sync::Arc<CommitQueue<F>>) -> io::Result<SyncThread<F>> {
        let driven = queue.clone();
        let thread = std::thread::Builder::new()
            .name("domicile-log-sync".into())
            .spawn(move || {
                while driven.wait_for_work() {
                    driven.sync_pending();
                }
            })?;
        Ok(SyncThread {
            queue,
            thread: Some(thread),
        })
    }
}

impl<F: SyncFile> Drop for SyncThread<F> {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the log sync thread panicked");
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;

    use super::*;

    #[derive(Default)]
    struct CountingFile {
        syncs: AtomicU64,
        fail: std::sync::atomic::AtomicBool,
    }

    impl SyncFile for CountingFile {
        fn sync_file(&self) -> io::Result<()> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                Err(io::Error::other("disk on fire"))
            } else {
                Ok(())
            }
        }
    }

    fn at(offset: u64) -> Position {
        Position { segment: 1, offset }
    }

    #[test]
    fn one_sync_completes_every_waiter_it_covers_in_order() {
        let queue = CommitQueue::<CountingFile>::new();
        let file = Arc::new(CountingFile::default());
        let (tx, rx) = mpsc::channel();
        for offset in [10, 20, 30] {
            let tx = tx.clone();
            queue
                .push(
                    at(offset),
                    file.clone(),
                    Some(Box::new(move |r| tx.send((offset, r.is_ok())).unwrap())),
                )
                .unwrap();
        }
        assert!(rx.try_recv().is_err(), "nothing may complete before a sync");
        assert!(queue.sync_pending());
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            vec![(10, true), (20, true), (30, true)]
        );
        assert_eq!(
            file.syncs.load(Ordering::SeqCst),
            1,
            "three appends share one sync"
        );
        assert!(!queue.sync_pending(), "nothing left to sync");
    }

    #[test]
    fn a_failed_sync_fails_pending_and_later_waiters() {
        let queue = CommitQueue::<CountingFile>::new();
        let file = Arc::new(CountingFile::default());
        file.fail.store(true, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        queue
            .push(
                at(10),
                file.clone(),
                Some(Box::new(move |r| tx.send(r.is_ok()).unwrap())),
            )
            .unwrap();
        queue.sync_pending();
        assert_eq!(rx.try_recv(), Ok(false));
        file.fail.store(false, Ordering::SeqCst);
        assert!(
            queue
                .push(
                    at(20),
                    file,
                    Some(Box::new(move |r| tx2.send(r.is_ok()).unwrap()))
                )
                .is_err()
        );
        assert_eq!(
            rx.try_recv(),
            Ok(false),
            "no acknowledgement after a failed fdatasync"
        );
    }

    #[test]
    fn the_thread_driver_syncs_and_stops_on_drop() {
        let queue = Arc::new(CommitQueue::<CountingFile>::new());
        let file = Arc::new(CountingFile::default());
        let driver = SyncThread::spawn(queue.clone()).unwrap();
        let (tx, rx) = mpsc::channel();
        queue
            .push(
                at(5),
                file.clone(),
                Some(Box::new(move |r| tx.send(r.is_ok()).unwrap())),
            )
            .unwrap();
        assert_eq!(rx.recv(), Ok(true));
        drop(driver);
        assert!(file.syncs.load(Ordering::SeqCst) >= 1);
    }
}

/// Model check of the queue's handshake between appenders and the driver.
///
/// Run with:
/// `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=/work/target-loom cargo test -p storage --lib --release group_commit::loom_tests`
#[cfg(all(test, loom))]
mod loom_tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;

    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;

    use super::*;

    struct LoomFile;

    impl SyncFile for LoomFile {
        fn sync_file(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_waiter_completes_once_in_order_after_a_covering_sync() {
        loom::model(|| {
            let queue = Arc::new(CommitQueue::<LoomFile>::new());
            let file = std::sync::Arc::new(LoomFile);
            let completed = Arc::new(AtomicUsize::new(0));
            // Waiters record the order they ran in (offsets are 1 and 2, one per appender).
            let order = std::sync::Arc::new(AtomicU64::new(0));
            let log_lock = Arc::new(Mutex::new(0u64));

            let appenders: Vec<_> = (0..2)
                .map(|_| {
                    let (queue, file, completed, order, log_lock) = (
                        queue.clone(),
                        file.clone(),
                        completed.clone(),
                        order.clone(),
                        log_lock.clone(),
                    );
                    loom::thread::spawn(move || {
                        // The log's lock orders positions, as Wal::append does.
                        let mut end = log_lock.lock().unwrap();
                        *end += 1;
                        let offset = *end;
                        let waiter: Waiter = Box::new(move |result| {
                            assert!(result.is_ok());
                            let previous = order.swap(offset, Ordering::SeqCst);
                            assert!(previous < offset, "waiter {offset} ran after {previous}");
                            completed.fetch_add(1, Ordering::SeqCst);
                        });
                        queue
                            .push(Position { segment: 1, offset }, file, Some(waiter))
                            .unwrap();
                    })
                })
                .collect();

            let driven = queue.clone();
            let driver = loom::thread::spawn(move || {
                while driven.wait_for_work() {
                    driven.sync_pending();
                }
            });
            for appender in appenders {
                appender.join().unwrap();
            }
            queue.close();
            driver.join().unwrap();
            assert_eq!(
                completed.load(Ordering::SeqCst),
                2,
                "every waiter completes exactly once"
            );
            assert_eq!(
                queue.synced(),
                Position {
                    segment: 1,
                    offset: 2
                }
            );
        });
    }
}
