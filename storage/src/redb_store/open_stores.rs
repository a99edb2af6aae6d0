//! The redb files of one state-machine directory still open, counted, so whoever deletes the directory
//! can first wait until nothing reads or writes them.
//!
//! **Why.** A purge ([`crate`]'s caller retires a removed replica) stops the group's Raft instance and
//! then deletes its directory, cutting its files down a slice at a time (`crate::paced_removal`). But a
//! store outlives the Raft instance by a little: the state machine's thread finishes its queue, a sync
//! job or a view may still hold it, and the backend's last, durable commit at close runs then. Cut
//! under it, redb read past the file's new end (`read of 4096 bytes at 1484439552 failed: failed to
//! fill whole buffer`), latched the failure and failed that commit: seen in every migration of the
//! volume bench, in the removed replicas (docs/performance.md). No data was lost (it was being
//! deleted), but a store was written and read while it was being deleted, and its space was freed only
//! at its last close, not a slice at a time.
//!
//! Every [`super::Store`] of a backend (the live one, and each that an install replaced, until its
//! last view lets it go) holds one count here; [`StoresClosed::wait`] returns once none is left.

use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::time::Duration;

/// The open stores of one directory.
#[derive(Debug, Default)]
pub(super) struct OpenStores {
    open: Mutex<usize>,
    closed: Condvar,
}

impl OpenStores {
    /// One more store of the directory is open; counted until [`OpenStores::closed_one`].
    pub(super) fn opened_one(&self) {
        *self.open.lock().expect("open stores lock") += 1;
    }

    /// A store of the directory is closed: its redb file will not be touched again through it.
    pub(super) fn closed_one(&self) {
        let mut open = self.open.lock().expect("open stores lock");
        assert!(*open > 0, "a store closed that was never counted open");
        *open -= 1;
        if *open == 0 {
            self.closed.notify_all();
        }
    }
}

/// A hold on a backend's count of open stores, which outlives the backend: see the module's comment.
#[derive(Clone, Debug)]
pub struct StoresClosed(pub(super) Arc<OpenStores>);

impl StoresClosed {
    /// Waits until every store of the backend is closed, for `bound` at most. Whether they all are.
    pub fn wait(&self, bound: Duration) -> bool {
        let open = self.0.open.lock().expect("open stores lock");
        let (open, _) = self
            .0
            .closed
            .wait_timeout_while(open, bound, |open| *open > 0)
            .expect("open stores lock");
        *open == 0
    }
}
