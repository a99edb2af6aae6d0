//! Group commit: many appenders, one write and one fdatasync.
//!
//! Appenders hand their records to the log, which copies them into its write buffer (see
//! [`crate::log`]), and then [`push`](CommitQueue::push) the position their records end at
//! together with a waiter (openraft's flush callback), both under the log's lock. The driver
//! repeatedly asks the log to write everything buffered ([`Journal::write_buffered`], one write
//! system call), syncs the file, and completes every waiter at or before the position written.
//! While one round's sync runs, new appends fill the buffer for the next round, so N concurrent
//! appends across any number of groups cost about one write and one sync.
//!
//! Gathering. Appenders that each wait for their own acknowledgement would otherwise split into
//! two halves that take turns: the half a round acknowledges appends again while the next round
//! (holding the other half) is already syncing, so every sync covers only half of them. Before a
//! round, [`SyncThread`] therefore waits until as many waiters are pending as the previous round
//! saw (those it acknowledged plus those still waiting), the way PostgreSQL's `commit_delay` waits
//! for its siblings, but never longer than the previous round took: where the appenders do not
//! come back (load just dropped), an acknowledgement is late by at most one round, and the round
//! after that expects only the waiters it saw. (Half a round proved too short for 64 appenders
//! to come back on two busy cores: syncs then covered 45–55 of them instead of 63.)
//!
//! Completing. A sync moves the durable watermark and marks the waiters it covered as
//! acknowledged; the driver then completes them one at a time, and every push takes over those it
//! has not reached yet ([`Acknowledged`]) and completes them once the log's lock is released. A
//! waiter is openraft's callback, which wakes the task waiting for it. Woken from the driver's
//! thread, the runtime thread that takes the task preempted the driver, ran that one task, found
//! nothing else and parked again: a context-switch pair per waiter (profile of 64 appenders on two
//! cores). Now the first woken appender's next append wakes the rest of the round from inside the
//! runtime, where a wake is a queue push. The driver never waits for that hand-over: it keeps
//! completing whatever is still acknowledged.
//!
//! Syncing on the appender's thread. Handing a lone append to the driver costs two thread
//! hand-offs (wake the driver; the driver wakes the appender's task), each a wait for a core on a
//! busy machine. A follower replicating one leader's appends is on the write path of every client
//! request and usually has nothing else to sync, so its append may [`claim`](CommitQueue::push_claiming)
//! the round instead: when no round is running and nothing else is unsynced, the appender writes and
//! syncs on its own thread, exactly as the driver would, and the driver is not woken. Appends that
//! arrive meanwhile queue for the driver, which takes them when the claimed round ends. Only one
//! round runs at a time, whoever runs it.
//!
//! Guarantees:
//! * a waiter is completed with `Ok` only after a sync that started after its bytes were written;
//! * each waiter is completed exactly once; waiters are taken in log order, but the driver and an
//!   appender may run those of one round concurrently (openraft accepts flush callbacks in any
//!   order: it keeps the newest);
//! * after a failed write or sync every waiter not yet covered, and every later one, gets an
//!   error: the page cache can no longer be trusted, so nothing is ever acknowledged again until
//!   the log is reopened.
//!
//! The queue is a plain data structure; what drives it is separate: [`SyncThread`] in production,
//! a task calling [`CommitQueue::sync_pending`] (through `LogEngine::sync_pending`) on the
//! deterministic runtime in the simulator, whose rounds are paced by simulated sync latency and do
//! not gather.
//! Under `--cfg loom` the queue's lock and condition variable come from loom (see
//! `loom_tests` below for how to run the model check).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

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

/// The log as the driver sees it: a buffer of accepted records to write out before each sync.
pub trait Journal: Send + Sync + 'static {
    type File: SyncFile;

    /// Writes every record accepted so far; returns the position they end at and the file that
    /// holds it (earlier files are already synced).
    fn write_buffered(&self) -> io::Result<(Position, Arc<Self::File>)>;
}

/// Called after every push, for drivers that wait on something other than the queue's condition
/// variable (the simulator's task waits on its runtime's notification).
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// Positions accepted but not yet durable, and who waits for them.
pub struct CommitQueue {
    state: Mutex<QueueState>,
    work: Condvar,
}

struct QueueState {
    /// The furthest position pushed: accepted by the log, not necessarily written.
    accepted: Position,
    synced: Position,
    waiters: VecDeque<(Position, Waiter)>,
    /// How many waiters at the front of `waiters` a sync has covered but nobody has completed
    /// yet: the driver and appenders take them from there (see [`Acknowledged`]).
    acknowledged: usize,
    /// A round is writing and syncing: the driver's, or an appender's that claimed it.
    syncing: bool,
    failed: Option<String>,
    closed: bool,
    syncs: u64,
    /// Waiters the last round saw: those it acknowledged and those already waiting for the next.
    waiters_seen: usize,
    notify: Option<Notify>,
}

impl QueueState {
    /// Takes up to `limit` waiters a sync has covered, in log order.
    fn take_acknowledged(&mut self, limit: usize) -> Acknowledged {
        assert!(
            self.acknowledged <= self.waiters.len(),
            "{} waiters acknowledged but only {} queued",
            self.acknowledged,
            self.waiters.len()
        );
        let count = self.acknowledged.min(limit);
        self.acknowledged -= count;
        Acknowledged(self.waiters.drain(..count).map(|(_, waiter)| waiter).collect())
    }

    /// Waiters no sync has covered yet.
    fn waiters_pending(&self) -> usize {
        self.waiters.len() - self.acknowledged
    }
}

/// Waiters whose records a completed sync covered, taken out of the queue by whoever completes
/// them: the driver, or an appender in [`CommitQueue::push`]. Completing on drop means none is
/// lost on an early return.
#[must_use = "dropping completes the waiters; do it after releasing the log's lock"]
pub struct Acknowledged(Vec<Waiter>);

impl Acknowledged {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Tells each waiter, in log order, that its records are durable.
    pub fn complete(self) {
        drop(self);
    }
}

impl Drop for Acknowledged {
    fn drop(&mut self) {
        for waiter in self.0.drain(..) {
            waiter(Ok(()));
        }
    }
}

impl Default for CommitQueue {
    fn default() -> Self {
        CommitQueue::new()
    }
}

impl CommitQueue {
    pub fn new() -> Self {
        CommitQueue {
            state: Mutex::new(QueueState {
                accepted: Position::default(),
                synced: Position::default(),
                waiters: VecDeque::new(),
                acknowledged: 0,
                syncing: false,
                failed: None,
                closed: false,
                syncs: 0,
                waiters_seen: 0,
                notify: None,
            }),
            work: Condvar::new(),
        }
    }

    /// Calls `notify` after every later push.
    pub fn set_notify(&self, notify: Notify) {
        self.state.lock().expect("commit queue lock poisoned").notify = Some(notify);
    }

    /// Records that everything up to `end` is accepted by the log; `waiter` runs once it is
    /// durable. Returns the waiters of the last sync that nobody has completed yet: the caller
    /// completes them, after releasing the log's lock.
    ///
    /// Callers push while still holding the log's lock, so positions arrive in log order and a
    /// record is in the log's buffer before its position is here.
    pub fn push(&self, end: Position, waiter: Option<Waiter>) -> Result<Acknowledged, String> {
        self.push_inner(end, waiter, false)
            .map(|(acknowledged, _claimed)| acknowledged)
    }

    /// Like [`push`](CommitQueue::push), but when no round is running and nothing before `end` is
    /// unsynced, claims the next round for the caller instead of waking the driver (see the module
    /// docs). Returns whether it claimed: if so, the caller must call
    /// [`sync_claimed`](CommitQueue::sync_claimed) once it has released the log's lock, or nothing
    /// is ever synced again.
    pub fn push_claiming(&self, end: Position, waiter: Waiter) -> Result<(Acknowledged, bool), String> {
        self.push_inner(end, Some(waiter), true)
    }

    fn push_inner(
        &self,
        end: Position,
        waiter: Option<Waiter>,
        claim: bool,
    ) -> Result<(Acknowledged, bool), String> {
        let mut state = self.state.lock().expect("commit queue lock poisoned");
        if let Some(reason) = state.failed.clone() {
            drop(state);
            if let Some(waiter) = waiter {
                waiter(Err(io::Error::other(reason.clone())));
            }
            return Err(reason);
        }
        let waiter_pushed = waiter.is_some();
        assert!(
            end >= state.accepted,
            "positions must be pushed in log order: {end:?} after {:?}",
            state.accepted
        );
        let was_idle = state.accepted <= state.synced;
        state.accepted = end;
        let acknowledged = state.take_acknowledged(usize::MAX);
        if let Some(waiter) = waiter {
            state.waiters.push_back((end, waiter));
        }
        let claimed = claim && was_idle && !state.syncing;
        if claimed {
            state.syncing = true;
            return Ok((acknowledged, true));
        }
        // Wake the driver only when what it may be waiting for has just become true: work after
        // idleness (`wait_for_work`) or the waiters it gathers for (`gather`). Waking it on every
        // push would cost a context switch per append. While a round runs it could not start
        // one: the round's end wakes it if anything is left.
        let wake =
            !state.syncing && (was_idle || (waiter_pushed && state.waiters_pending() == state.waiters_seen));
        let notify = state.notify.clone();
        drop(state);
        if wake {
            self.work.notify_one();
        }
        if let Some(notify) = notify {
            notify();
        }
        Ok((acknowledged, false))
    }

    /// Runs the round a [`push_claiming`](CommitQueue::push_claiming) claimed, on the caller's
    /// thread: writes what the log buffered, syncs it and completes the waiters it covered.
    pub fn sync_claimed<J: Journal + ?Sized>(&self, journal: &J) {
        assert!(
            self.state.lock().expect("commit queue lock poisoned").syncing,
            "sync_claimed without a claimed round"
        );
        self.run_round(journal);
    }

    /// Writes and syncs once if anything accepted is not yet durable, then completes the waiters
    /// it covered. Never blocks waiting for work; returns whether it synced.
    pub fn sync_pending<J: Journal + ?Sized>(&self, journal: &J) -> bool {
        {
            let mut state = self.state.lock().expect("commit queue lock poisoned");
            if state.failed.is_some() || state.accepted <= state.synced || state.syncing {
                return false;
            }
            state.syncing = true;
        }
        self.run_round(journal);
        true
    }

    /// One claimed round: write, sync, complete. Ends the claim.
    fn run_round<J: Journal + ?Sized>(&self, journal: &J) {
        // Neither the write nor the sync holds the queue's lock: appenders keep pushing and queue
        // up for the next round. The write takes the log's lock only while it copies the buffer
        // to the page cache.
        let result = journal
            .write_buffered()
            .map_err(|error| format!("writing the log failed: {error}"))
            .and_then(|(end, file)| {
                file.sync_file()
                    .map(|()| end)
                    .map_err(|error| format!("fdatasync failed: {error}"))
            });
        self.complete(result);
    }

    /// Completes the waiters a round covered, or fails every waiter not yet covered for good.
    fn complete(&self, result: Result<Position, String>) {
        let target = match result {
            Ok(target) => target,
            Err(reason) => return self.fail(reason),
        };
        let more = {
            let mut state = self.state.lock().expect("commit queue lock poisoned");
            assert!(state.syncing, "a round completed that nobody claimed");
            state.syncing = false;
            state.syncs += 1;
            if target > state.synced {
                state.synced = target;
            }
            let synced = state.synced;
            state.acknowledged = state
                .waiters
                .iter()
                .take_while(|(position, _)| *position <= synced)
                .count();
            state.waiters_seen = state.waiters.len();
            state.accepted > state.synced || state.closed
        };
        if more {
            // Pushed during the round, which kept them from waking the driver; or the driver is
            // closing and waits for this round to end.
            self.work.notify_one();
        }
        // One at a time, releasing the lock in between: waking a waiter's task may hand this
        // thread's CPU to it, and an append it makes meanwhile takes the rest of the round and
        // wakes them from its runtime thread (see the module docs). Nothing is left for later.
        loop {
            let next = self
                .state
                .lock()
                .expect("commit queue lock poisoned")
                .take_acknowledged(1);
            if next.is_empty() {
                break;
            }
            next.complete();
        }
    }

    /// Poisons the queue: waiters already covered by a sync still get `Ok`, every other one an
    /// error, and so does every later push.
    fn fail(&self, reason: String) {
        tracing::error!(%reason, "the log refuses further writes");
        let (acknowledged, failed) = {
            let mut state = self.state.lock().expect("commit queue lock poisoned");
            state.failed = Some(reason.clone());
            state.syncing = false;
            let acknowledged = state.take_acknowledged(usize::MAX);
            let failed: Vec<_> = state.waiters.drain(..).map(|(_, waiter)| waiter).collect();
            (acknowledged, failed)
        };
        // A closing driver may be waiting for a claimed round that just failed.
        self.work.notify_all();
        acknowledged.complete();
        for waiter in failed {
            waiter(Err(io::Error::other(reason.clone())));
        }
    }

    /// Blocks until something needs syncing (`true`) or the queue is closed and drained (`false`).
    pub fn wait_for_work(&self) -> bool {
        let mut state = self.state.lock().expect("commit queue lock poisoned");
        loop {
            let unsynced = state.failed.is_none() && state.accepted > state.synced;
            if unsynced && !state.syncing {
                return true;
            }
            // A claimed round still running may leave work behind: its end wakes us.
            if state.closed && !unsynced {
                return false;
            }
            state = self.work.wait(state).expect("commit queue lock poisoned");
        }
    }

    /// Waits, at most `patience`, until as many waiters are pending as the last round saw, so that
    /// appenders it acknowledged share the next round with those that were already waiting.
    /// Returns at once when the queue is closed or failed. See the module docs.
    #[cfg(not(loom))]
    pub fn gather(&self, patience: std::time::Duration) {
        let state = self.state.lock().expect("commit queue lock poisoned");
        let _state = self
            .work
            .wait_timeout_while(state, patience, |state| {
                !state.closed && state.failed.is_none() && state.waiters_pending() < state.waiters_seen
            })
            .expect("commit queue lock poisoned");
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

/// The production driver: one thread per node that writes and syncs whenever something accepted
/// is not yet durable. Dropping it syncs what is pending and joins the thread.
pub struct SyncThread {
    queue: Arc<CommitQueue>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SyncThread {
    pub fn spawn<J: Journal>(queue: Arc<CommitQueue>, journal: Arc<J>) -> io::Result<SyncThread> {
        let driven = queue.clone();
        let thread = std::thread::Builder::new()
            .name("domicile-log-sync".into())
            .spawn(move || drive(&driven, &*journal))?;
        Ok(SyncThread {
            queue,
            thread: Some(thread),
        })
    }
}

/// The sync thread's loop. It reads the wall clock only to bound [`CommitQueue::gather`] by the
/// previous round's duration; this thread never runs in the simulator, whose driver is a task.
#[cfg(not(loom))]
#[allow(clippy::disallowed_methods)]
fn drive<J: Journal>(queue: &CommitQueue, journal: &J) {
    let mut patience = std::time::Duration::ZERO;
    while queue.wait_for_work() {
        queue.gather(patience);
        let started = std::time::Instant::now();
        if queue.sync_pending(journal) {
            patience = started.elapsed();
        }
    }
}

/// Under loom the driver is modelled without gathering (loom models no timeouts).
#[cfg(loom)]
fn drive<J: Journal>(queue: &CommitQueue, journal: &J) {
    while queue.wait_for_work() {
        queue.sync_pending(journal);
    }
}

impl Drop for SyncThread {
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
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;

    use super::*;

    /// A log whose buffer is just the offset accepted so far; it counts writes and syncs.
    #[derive(Default)]
    struct CountingJournal {
        accepted: AtomicU64,
        writes: AtomicU64,
        file: Arc<CountingFile>,
        fail_write: AtomicBool,
    }

    #[derive(Default)]
    struct CountingFile {
        syncs: AtomicU64,
        fail: AtomicBool,
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

    impl Journal for CountingJournal {
        type File = CountingFile;

        fn write_buffered(&self) -> io::Result<(Position, Arc<CountingFile>)> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            if self.fail_write.load(Ordering::SeqCst) {
                return Err(io::Error::other("no space left"));
            }
            Ok((at(self.accepted.load(Ordering::SeqCst)), self.file.clone()))
        }
    }

    impl CountingJournal {
        /// Accepts records up to `offset` and pushes their end, as the log does under its lock.
        fn append(&self, queue: &CommitQueue, offset: u64, waiter: Option<Waiter>) -> Result<(), String> {
            self.accepted.store(offset, Ordering::SeqCst);
            queue.push(at(offset), waiter).map(Acknowledged::complete)
        }
    }

    fn at(offset: u64) -> Position {
        Position { segment: 1, offset }
    }

    #[test]
    fn one_write_and_one_sync_complete_every_waiter_they_cover_in_order() {
        let queue = CommitQueue::new();
        let journal = CountingJournal::default();
        let (tx, rx) = mpsc::channel();
        for offset in [10, 20, 30] {
            let tx = tx.clone();
            journal
                .append(
                    &queue,
                    offset,
                    Some(Box::new(move |r| tx.send((offset, r.is_ok())).unwrap())),
                )
                .unwrap();
        }
        assert!(rx.try_recv().is_err(), "nothing may complete before a sync");
        assert!(queue.sync_pending(&journal));
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            vec![(10, true), (20, true), (30, true)]
        );
        assert_eq!(
            journal.writes.load(Ordering::SeqCst),
            1,
            "three appends share one write"
        );
        assert_eq!(
            journal.file.syncs.load(Ordering::SeqCst),
            1,
            "three appends share one sync"
        );
        assert_eq!(queue.synced(), at(30));
        assert!(!queue.sync_pending(&journal), "nothing left to sync");
    }

    #[test]
    fn a_failed_sync_fails_pending_and_later_waiters() {
        let queue = CommitQueue::new();
        let journal = CountingJournal::default();
        journal.file.fail.store(true, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        journal
            .append(&queue, 10, Some(Box::new(move |r| tx.send(r.is_ok()).unwrap())))
            .unwrap();
        queue.sync_pending(&journal);
        assert_eq!(rx.try_recv(), Ok(false));
        journal.file.fail.store(false, Ordering::SeqCst);
        assert!(
            journal
                .append(&queue, 20, Some(Box::new(move |r| tx2.send(r.is_ok()).unwrap())))
                .is_err()
        );
        assert_eq!(
            rx.try_recv(),
            Ok(false),
            "no acknowledgement after a failed fdatasync"
        );
    }

    #[test]
    fn a_failed_write_fails_the_waiters_without_a_sync() {
        let queue = CommitQueue::new();
        let journal = CountingJournal::default();
        journal.fail_write.store(true, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        journal
            .append(&queue, 10, Some(Box::new(move |r| tx.send(r.is_ok()).unwrap())))
            .unwrap();
        queue.sync_pending(&journal);
        assert_eq!(
            rx.try_recv(),
            Ok(false),
            "no acknowledgement after a failed write"
        );
        assert_eq!(journal.file.syncs.load(Ordering::SeqCst), 0);
        assert!(journal.append(&queue, 20, None).is_err(), "and no later append");
    }

    /// The driver completes the first waiter of a round; that waiter appends again (as a woken
    /// appender does) and its push takes over the rest of the round.
    #[test]
    fn an_append_completes_the_waiters_a_sync_covered_that_the_driver_has_not_reached() {
        let queue = Arc::new(CommitQueue::new());
        let journal = Arc::new(CountingJournal::default());
        let (tx, rx) = mpsc::channel();
        let (first_queue, first_journal, first_tx) = (queue.clone(), journal.clone(), tx.clone());
        let first: Waiter = Box::new(move |result| {
            first_tx.send((10, result.is_ok())).unwrap();
            let synced = first_queue.synced();
            let late_tx = first_tx.clone();
            let late: Waiter = Box::new(move |r| late_tx.send((40, r.is_ok())).unwrap());
            first_journal.accepted.store(40, Ordering::SeqCst);
            let acknowledged = first_queue.push(at(40), Some(late)).unwrap();
            assert_eq!(synced, at(30), "the sync covered the whole round");
            // The two other waiters of the round, not the one just pushed.
            assert!(!acknowledged.is_empty());
            acknowledged.complete();
            first_tx.send((0, true)).unwrap(); // marks where the take-over ended
        });
        journal.append(&queue, 10, Some(first)).unwrap();
        for offset in [20, 30] {
            let tx = tx.clone();
            journal
                .append(
                    &queue,
                    offset,
                    Some(Box::new(move |r| tx.send((offset, r.is_ok())).unwrap())),
                )
                .unwrap();
        }
        assert!(queue.sync_pending(&*journal));
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            vec![(10, true), (20, true), (30, true), (0, true)],
            "20 and 30 were completed by the push, each once"
        );
        assert!(queue.sync_pending(&*journal));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![(40, true)]);
        assert_eq!(queue.sync_count(), 2);
    }

    #[test]
    fn a_failed_sync_still_acknowledges_what_an_earlier_sync_covered() {
        let queue = CommitQueue::new();
        let journal = CountingJournal::default();
        let (tx, rx) = mpsc::channel();
        for offset in [10, 20] {
            let tx = tx.clone();
            journal
                .append(
                    &queue,
                    offset,
                    Some(Box::new(move |r| tx.send((offset, r.is_ok())).unwrap())),
                )
                .unwrap();
        }
        // Covered by a sync, not yet completed by anyone, when the next sync fails.
        queue.state.lock().unwrap().synced = at(10);
        queue.state.lock().unwrap().acknowledged = 1;
        journal.file.fail.store(true, Ordering::SeqCst);
        queue.sync_pending(&journal);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![(10, true), (20, false)]);
    }

    #[test]
    fn a_round_expects_back_the_waiters_the_last_round_saw() {
        let queue = CommitQueue::new();
        let journal = CountingJournal::default();
        journal.append(&queue, 10, Some(Box::new(|_| {}))).unwrap();
        journal.append(&queue, 20, Some(Box::new(|_| {}))).unwrap();
        queue.sync_pending(&journal);
        journal.append(&queue, 30, Some(Box::new(|_| {}))).unwrap();
        journal.append(&queue, 40, Some(Box::new(|_| {}))).unwrap();
        assert_eq!(queue.state.lock().unwrap().waiters_seen, 2);
        // Both are back: gathering returns at once however patient it is.
        queue.gather(std::time::Duration::from_secs(3600));
        queue.sync_pending(&journal);
        queue.close();
        queue.gather(std::time::Duration::from_secs(3600));
        assert!(!queue.wait_for_work(), "closed and drained");
    }

    #[test]
    fn the_thread_driver_syncs_and_stops_on_drop() {
        let queue = Arc::new(CommitQueue::new());
        let journal = Arc::new(CountingJournal::default());
        let driver = SyncThread::spawn(queue.clone(), journal.clone()).unwrap();
        let (tx, rx) = mpsc::channel();
        journal
            .append(&queue, 5, Some(Box::new(move |r| tx.send(r.is_ok()).unwrap())))
            .unwrap();
        assert_eq!(rx.recv(), Ok(true));
        drop(driver);
        assert!(journal.file.syncs.load(Ordering::SeqCst) >= 1);
    }
    fn reporting(tx: &mpsc::Sender<(u64, bool)>, offset: u64) -> Waiter {
        let tx = tx.clone();
        Box::new(move |r| tx.send((offset, r.is_ok())).unwrap())
    }

    #[test]
    fn an_appender_claims_an_idle_queue_and_syncs_without_the_driver() {
        let queue = CommitQueue::new();
        let journal = CountingJournal::default();
        let (tx, rx) = mpsc::channel();
        journal.accepted.store(10, Ordering::SeqCst);
        let (acknowledged, claimed) = queue.push_claiming(at(10), reporting(&tx, 10)).unwrap();
        assert!(acknowledged.is_empty());
        assert!(claimed, "nothing else was unsynced and no round ran");
        assert!(
            !queue.sync_pending(&journal),
            "the driver may not run a round while one is claimed"
        );
        assert_eq!(journal.file.syncs.load(Ordering::SeqCst), 0);
        assert!(
            rx.try_recv().is_err(),
            "nothing completes before the claimed sync"
        );
        queue.sync_claimed(&journal);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![(10, true)]);
        assert_eq!(journal.file.syncs.load(Ordering::SeqCst), 1);
        assert_eq!(queue.synced(), at(10));
    }

    #[test]
    fn a_claim_is_refused_while_anything_is_unsynced() {
        let queue = CommitQueue::new();
        let journal = CountingJournal::default();
        let (tx, rx) = mpsc::channel();
        journal.append(&queue, 10, Some(reporting(&tx, 10))).unwrap();
        journal.accepted.store(20, Ordering::SeqCst);
        let (acknowledged, claimed) = queue.push_claiming(at(20), reporting(&tx, 20)).unwrap();
        acknowledged.complete();
        assert!(!claimed, "10 waits for the driver: 20 joins its round");
        assert!(queue.sync_pending(&journal));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![(10, true), (20, true)]);
        assert_eq!(journal.file.syncs.load(Ordering::SeqCst), 1, "one round for both");
    }

    /// A record pushed after a claimed round wrote the buffer is left for the driver, which the
    /// round's end wakes: it could not start a round while the claim held.
    #[test]
    fn the_driver_takes_over_what_a_claimed_round_did_not_cover() {
        let queue = Arc::new(CommitQueue::new());
        let journal = Arc::new(CountingJournal::default());
        let (tx, rx) = mpsc::channel();
        journal.accepted.store(10, Ordering::SeqCst);
        let (_, claimed) = queue.push_claiming(at(10), reporting(&tx, 10)).unwrap();
        assert!(claimed);
        // Accepted by the queue but not in what the claimed round will write (the journal still
        // ends at 10): as if pushed just after the round's write.
        let late = queue.push(at(20), Some(reporting(&tx, 20))).unwrap();
        assert!(late.is_empty());
        let (found_tx, found_rx) = mpsc::channel();
        let waiting = queue.clone();
        let driver = std::thread::spawn(move || found_tx.send(waiting.wait_for_work()).unwrap());
        queue.sync_claimed(&*journal);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![(10, true)]);
        assert_eq!(
            found_rx.recv_timeout(std::time::Duration::from_secs(10)),
            Ok(true),
            "the claimed round's end wakes the driver for the record it left"
        );
        driver.join().unwrap();
        journal.accepted.store(20, Ordering::SeqCst);
        assert!(queue.sync_pending(&*journal));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![(20, true)]);
    }

    /// Closing while an appender's round runs: the driver waits for that round and syncs what
    /// it left before stopping.
    #[test]
    fn a_closing_driver_waits_for_a_claimed_round() {
        let queue = Arc::new(CommitQueue::new());
        let journal = Arc::new(CountingJournal::default());
        let (tx, rx) = mpsc::channel();
        journal.accepted.store(10, Ordering::SeqCst);
        let (_, claimed) = queue.push_claiming(at(10), reporting(&tx, 10)).unwrap();
        assert!(claimed);
        queue.push(at(20), Some(reporting(&tx, 20))).unwrap().complete();
        let driver = SyncThread::spawn(queue.clone(), journal.clone()).unwrap();
        journal.accepted.store(15, Ordering::SeqCst);
        let closing = std::thread::spawn(move || drop(driver));
        queue.sync_claimed(&*journal);
        // The round wrote up to 15 only; the driver, woken by its end, writes and syncs 20.
        journal.accepted.store(20, Ordering::SeqCst);
        closing.join().unwrap();
        let completed: Vec<_> = rx.try_iter().collect();
        assert_eq!(completed, vec![(10, true), (20, true)]);
        assert_eq!(queue.synced(), at(20));
    }
}

/// Model check of the queue's handshake between appenders, the log's buffer and the driver.
///
/// Run with:
/// `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=/work/target-loom cargo test -p storage --lib --release group_commit::loom_tests`
///
/// Since the hand-over of acknowledged waiters to appenders, the exhaustive search runs for more
/// than half an hour on two shared cores; `LOOM_MAX_PREEMPTIONS=4` (every schedule with at most
/// four preemptions) takes about 70 s for both models. A push that took over waiters no sync
/// covered fails the first within a second; a claimed round that does not wake the driver for
/// what it left fails the second, as a deadlock (both checked by hand on 2026-12-02).
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicU64;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::atomic::Ordering;

    use super::*;

    /// A log whose records are offsets: `accepted` is the end of the buffer (under the log's
    /// lock, as in `Wal`), `written` what reached the file, `durable` what a sync covered.
    struct LoomLog {
        accepted: Mutex<u64>,
        file: std::sync::Arc<LoomFile>,
    }

    struct LoomFile {
        written: AtomicU64,
        durable: AtomicU64,
        /// Rounds between their write and the end of their sync: never more than one.
        rounds: AtomicUsize,
    }

    impl SyncFile for LoomFile {
        fn sync_file(&self) -> io::Result<()> {
            self.durable
                .fetch_max(self.written.load(Ordering::SeqCst), Ordering::SeqCst);
            assert_eq!(
                self.rounds.fetch_sub(1, Ordering::SeqCst),
                1,
                "one round at a time"
            );
            Ok(())
        }
    }

    impl Journal for LoomLog {
        type File = LoomFile;

        fn write_buffered(&self) -> io::Result<(Position, std::sync::Arc<LoomFile>)> {
            assert_eq!(
                self.file.rounds.fetch_add(1, Ordering::SeqCst),
                0,
                "one round at a time"
            );
            let accepted = self.accepted.lock().unwrap();
            self.file.written.fetch_max(*accepted, Ordering::SeqCst);
            Ok((
                Position {
                    segment: 1,
                    offset: *accepted,
                },
                self.file.clone(),
            ))
        }
    }

    fn new_log() -> std::sync::Arc<LoomLog> {
        std::sync::Arc::new(LoomLog {
            accepted: Mutex::new(0),
            file: std::sync::Arc::new(LoomFile {
                written: AtomicU64::new(0),
                durable: AtomicU64::new(0),
                rounds: AtomicUsize::new(0),
            }),
        })
    }

    /// Completions, under a lock the model waits on: a waiter nobody completes leaves every thread
    /// blocked, which loom reports as a deadlock.
    type Completions = Arc<(Mutex<usize>, Condvar)>;

    /// An appender: buffers one record and pushes it under the log's lock, as `LogEngine::write`
    /// does (or, `claiming`, as `LogEngine::write_and_sync` does, running the round it claims).
    fn spawn_appender(
        queue: &Arc<CommitQueue>,
        log: &std::sync::Arc<LoomLog>,
        completed: &Completions,
        claiming: bool,
    ) -> loom::thread::JoinHandle<()> {
        let (queue, log, completed) = (queue.clone(), log.clone(), completed.clone());
        loom::thread::spawn(move || {
            let mut accepted = log.accepted.lock().unwrap();
            *accepted += 1;
            let offset = *accepted;
            let file = log.file.clone();
            let waiter: Waiter = Box::new(move |result| {
                assert!(result.is_ok());
                assert!(
                    file.durable.load(Ordering::SeqCst) >= offset,
                    "waiter {offset} completed before a sync covered its write"
                );
                *completed.0.lock().unwrap() += 1;
                completed.1.notify_all();
            });
            let position = Position { segment: 1, offset };
            let (acknowledged, claimed) = if claiming {
                queue.push_claiming(position, waiter).unwrap()
            } else {
                (queue.push(position, Some(waiter)).unwrap(), false)
            };
            drop(accepted);
            // A push may take over a waiter a sync covered that the driver has not completed:
            // completed here, outside the log's lock.
            acknowledged.complete();
            if claimed {
                queue.sync_claimed(&*log);
            }
        })
    }

    /// Two appenders (the first claiming an idle round when `claiming`) and the driver; checks that
    /// both waiters complete before the queue is closed, once each, and that both records are durable.
    fn model(claiming: bool) {
        let queue = Arc::new(CommitQueue::new());
        let log = new_log();
        let completed: Completions = Arc::new((Mutex::new(0), Condvar::new()));
        let appenders = [
            spawn_appender(&queue, &log, &completed, claiming),
            spawn_appender(&queue, &log, &completed, false),
        ];
        let (driven, journal) = (queue.clone(), log.clone());
        let driver = loom::thread::spawn(move || {
            while driven.wait_for_work() {
                driven.sync_pending(&*journal);
            }
        });
        for appender in appenders {
            appender.join().unwrap();
        }
        {
            let mut count = completed.0.lock().unwrap();
            while *count < 2 {
                count = completed.1.wait(count).unwrap();
            }
        }
        queue.close();
        driver.join().unwrap();
        assert_eq!(
            *completed.0.lock().unwrap(),
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
        assert_eq!(log.file.durable.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn every_waiter_completes_once_after_a_sync_covering_its_write_whoever_completes_it() {
        loom::model(|| model(false));
    }

    /// One appender runs the round itself when it finds the queue idle, beside the other appender
    /// and the driver: rounds never overlap (`LoomFile`), and a record the claimed round left is
    /// synced by the driver it wakes.
    #[test]
    fn a_claimed_round_and_the_driver_never_overlap_nor_lose_a_waiter() {
        loom::model(|| model(true));
    }
}
