//! Write-behind: a group's apply batches gather in memory and reach the store in one commit.
//!
//! A store's commit has a cost that does not depend on how much it writes: a redb write
//! transaction opens its tables, copies every page on the path to each key it touches and writes
//! its allocator state. A lightly loaded group applies one entry per batch, so it paid that cost
//! once per put, on each of its replicas — a quarter of a node's CPU per put on a 2-core machine,
//! measured by committing nothing (README, "Performance"). [`WriteBehind`] wraps any [`Backend`]:
//! a non-durable batch is merged into a map of pending changes, and the pending changes reach the
//! store in one commit when the state machine asks for durability (a durable batch, or the sync
//! job of its periodic durable commit or of a snapshot build) or when they grow past [`PENDING_CHANGES_MAX`] keys or [`PENDING_BYTES_MAX`] bytes.
//!
//! Nothing is less safe for it. A non-durable commit is lost in a crash anyway: after one the
//! store is at its last durable commit, which includes its own applied log id, and openraft
//! re-applies the committed entries after it from the log. Pending changes are lost the same way,
//! and never more than a non-durable commit would lose, because every durable commit carries all
//! of them.
//!
//! Reads see every batch committed through the wrapper: a view is the store's view with the
//! pending changes laid over it (an `Arc` of the map, copied on write only while a view holds it,
//! so a view stays consistent while later batches commit). If writing the pending changes to the
//! store fails, they are gone from the views too, so every later call fails instead of reading a
//! state that skips them.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;
use std::sync::Arc;

use crate::backend::Backend;
use crate::backend::BackendView;
use crate::backend::SyncJob;
use crate::backend::Table;
use crate::backend::Visit;
use crate::backend::WriteBatch;
use crate::error::StateMachineError;
use crate::snapshot::SnapshotData;
use crate::snapshot::SnapshotSpool;

/// Pending changes are written once this many keys are pending.
pub const PENDING_CHANGES_MAX: usize = 1024;

/// Pending changes are written once their keys and values add up to this many bytes (counting a
/// key again each time it changes: an upper bound on the memory they hold).
pub const PENDING_BYTES_MAX: usize = 1 << 20;

type Changes = BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>;

/// A [`Backend`] whose non-durable commits gather in memory (see the module docs).
pub struct WriteBehind<B> {
    inner: B,
    pending: Arc<Changes>,
    pending_bytes: usize,
    /// Why writing pending changes failed: they are lost, so nothing can be read or written.
    failed: Option<String>,
}

impl<B: Backend> WriteBehind<B> {
    pub fn new(inner: B) -> WriteBehind<B> {
        WriteBehind {
            inner,
            pending: Arc::default(),
            pending_bytes: 0,
            failed: None,
        }
    }

    /// The wrapped store, which holds only what was written through (tests, inspection).
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Keys changed and not yet written to the store.
    pub fn pending_changes(&self) -> usize {
        self.pending.len()
    }

    fn check(&self) -> Result<(), StateMachineError> {
        match &self.failed {
            None => Ok(()),
            Some(reason) => Err(StateMachineError::Backend(format!(
                "writing the state machine's pending changes failed earlier: {reason}"
            ))),
        }
    }

    /// Writes the pending changes, and `batch`'s over them, in one commit of the store.
    fn write_through(&mut self, batch: WriteBatch) -> Result<(), StateMachineError> {
        let mut changes = match Arc::try_unwrap(std::mem::take(&mut self.pending)) {
            Ok(changes) => changes,
            // A view still holds the map: it keeps its copy.
            Err(shared) => (*shared).clone(),
        };
        self.pending_bytes = 0;
        changes.extend(batch.changes);
        let written = self.inner.commit(WriteBatch {
            clear_first: false,
            changes,
            durable: batch.durable,
        });
        if let Err(error) = &written {
            self.failed = Some(error.to_string());
        }
        written
    }
}

impl<B: Backend> Backend for WriteBehind<B> {
    type View = Overlaid<B::View>;

    fn view(&self) -> Result<Self::View, StateMachineError> {
        self.check()?;
        Ok(Overlaid {
            base: self.inner.view()?,
            pending: self.pending.clone(),
        })
    }

    fn commit(&mut self, batch: WriteBatch) -> Result<(), StateMachineError> {
        self.check()?;
        if batch.clear_first {
            // Everything pending is older than the clear.
            self.pending = Arc::default();
            self.pending_bytes = 0;
            return self.inner.commit(batch);
        }
        if batch.durable {
            return self.write_through(batch);
        }
        let pending = Arc::make_mut(&mut self.pending);
        for (key, value) in batch.changes {
            self.pending_bytes += key.1.len() + value.as_ref().map_or(0, Vec::len);
            pending.insert(key, value);
        }
        if pending.len() >= PENDING_CHANGES_MAX || self.pending_bytes >= PENDING_BYTES_MAX {
            return self.write_through(WriteBatch::default());
        }
        Ok(())
    }

    /// Writes what is pending to the store (a non-durable commit, no wait for the disk), then
    /// hands over the store's job.
    fn sync_job(&mut self) -> Result<SyncJob, StateMachineError> {
        self.check()?;
        if !self.pending.is_empty() {
            self.write_through(WriteBatch::default())?;
        }
        self.inner.sync_job()
    }

    fn snapshot_spool(&self) -> Result<SnapshotSpool, StateMachineError> {
        self.check()?;
        self.inner.snapshot_spool()
    }

    fn snapshot_receive_spool(&self) -> Result<SnapshotSpool, StateMachineError> {
        self.check()?;
        self.inner.snapshot_receive_spool()
    }

    /// Everything pending is older than the snapshot, which replaces it.
    fn install_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
        self.check()?;
        self.pending = Arc::default();
        self.pending_bytes = 0;
        self.inner.install_snapshot(snapshot)
    }

    fn save_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
        self.check()?;
        self.inner.save_snapshot(snapshot)
    }

    fn load_snapshot(&self) -> Result<Option<SnapshotData>, StateMachineError> {
        self.check()?;
        self.inner.load_snapshot()
    }
}

/// A store's view with pending changes laid over it.
pub struct Overlaid<V> {
    base: V,
    pending: Arc<Changes>,
}

impl<V: BackendView> BackendView for Overlaid<V> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateMachineError> {
        if !self.pending.is_empty()
            && let Some(change) = self.pending.get(&(table, key.to_vec()))
        {
            return Ok(change.clone());
        }
        self.base.get(table, key)
    }

    fn len(&self, table: Table) -> Result<u64, StateMachineError> {
        let mut count = self.base.len(table)?;
        // The pending batch's keys of the table (few): each one added or removed relative to the store.
        for ((changed, key), change) in self.pending.iter() {
            if *changed != table {
                continue;
            }
            match (self.base.get(table, key)?.is_some(), change.is_some()) {
                (false, true) => count += 1,
                (true, false) => count = count.saturating_sub(1),
                _ => {}
            }
        }
        Ok(count)
    }

    fn scan_after(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut crate::backend::VisitWhile<'_>,
    ) -> Result<(), StateMachineError> {
        if self.pending.is_empty() {
            return self.base.scan_after(table, prefix, after, visit);
        }
        // A merge from `after` on, as `scan_prefix`'s from the prefix's start: a range copy reads its
        // batches so while clients write, and a walk from the start would make each batch cost the
        // whole range before it (quadratic in the range's size).
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded((table, after.to_vec())),
            _ => Bound::Included((table, prefix.to_vec())),
        };
        let mut pending = self
            .pending
            .range((start, Bound::Unbounded))
            .take_while(|((found, key), _)| *found == table && key.starts_with(prefix))
            .map(|((_, key), change)| (key.as_slice(), change.as_deref()))
            .peekable();
        let mut going = true;
        self.base.scan_after(table, prefix, after, &mut |key, value| {
            while let Some((pending_key, change)) = pending.next_if(|(pending_key, _)| *pending_key < key) {
                if let Some(changed) = change
                    && !visit(pending_key, changed)?
                {
                    going = false;
                    return Ok(false);
                }
            }
            going = match pending.next_if(|(pending_key, _)| *pending_key == key) {
                Some((_, Some(changed))) => visit(key, changed)?,
                Some((_, None)) => true,
                None => visit(key, value)?,
            };
            Ok(going)
        })?;
        if going {
            for (pending_key, change) in pending {
                if let Some(changed) = change
                    && !visit(pending_key, changed)?
                {
                    break;
                }
            }
        }
        Ok(())
    }

    fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        visit: &mut Visit<'_>,
    ) -> Result<(), StateMachineError> {
        if self.pending.is_empty() {
            return self.base.scan_prefix(table, prefix, visit);
        }
        // Both sides in key order: a merge, where a pending change replaces (or deletes) the
        // store's value for the same key.
        let mut pending = self
            .pending
            .range((table, prefix.to_vec())..)
            .take_while(|((found, key), _)| *found == table && key.starts_with(prefix))
            .map(|((_, key), change)| (key.as_slice(), change.as_deref()))
            .peekable();
        self.base.scan_prefix(table, prefix, &mut |key, value| {
            visit_pending_before(&mut pending, Some(key), visit)?;
            match pending.next_if(|(pending_key, _)| *pending_key == key) {
                Some((_, Some(changed))) => visit(key, changed),
                Some((_, None)) => Ok(()),
                None => visit(key, value),
            }
        })?;
        visit_pending_before(&mut pending, None, visit)
    }
}

/// Visits the pending values whose keys come before `bound` (all of them without one), skipping
/// deletions: keys the store does not hold, or whose deletion has nothing to remove here.
fn visit_pending_before<'a>(
    pending: &mut Peekable<impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>>,
    bound: Option<&[u8]>,
    visit: &mut Visit<'_>,
) -> Result<(), StateMachineError> {
    while let Some((key, change)) = pending.next_if(|(key, _)| bound.is_none_or(|bound| *key < bound)) {
        if let Some(value) = change {
            visit(key, value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::backend::MemBackend;
    use crate::backend::MemView;

    /// A [`MemBackend`] that records the commits it receives and can be made to fail them.
    #[derive(Default)]
    struct Recording {
        inner: MemBackend,
        commits: Arc<Mutex<Vec<(usize, bool)>>>,
        fail: bool,
    }

    impl Backend for Recording {
        type View = MemView;

        fn view(&self) -> Result<MemView, StateMachineError> {
            self.inner.view()
        }

        fn commit(&mut self, batch: WriteBatch) -> Result<(), StateMachineError> {
            if self.fail {
                return Err(StateMachineError::Backend("disk full".into()));
            }
            let commits = &mut self.commits.lock().unwrap();
            commits.push((batch.changes.len(), batch.durable));
            self.inner.commit(batch)
        }

        fn sync_job(&mut self) -> Result<SyncJob, StateMachineError> {
            self.inner.sync_job()
        }

        fn snapshot_spool(&self) -> Result<SnapshotSpool, StateMachineError> {
            self.inner.snapshot_spool()
        }

        fn install_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
            self.inner.install_snapshot(snapshot)
        }

        fn save_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
            self.inner.save_snapshot(snapshot)
        }

        fn load_snapshot(&self) -> Result<Option<SnapshotData>, StateMachineError> {
            self.inner.load_snapshot()
        }
    }

    fn put(table: Table, key: &[u8], value: &[u8]) -> WriteBatch {
        let mut batch = WriteBatch::default();
        batch.changes.insert((table, key.to_vec()), Some(value.to_vec()));
        batch
    }

    fn scan(view: &impl BackendView, table: Table, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut found = Vec::new();
        view.scan_prefix(table, prefix, &mut |key, value| {
            found.push((key.to_vec(), value.to_vec()));
            Ok(())
        })
        .unwrap();
        found
    }

    /// Up to `limit` items of a scan after `after`, as `scan_after` visits them.
    fn scan_from(
        view: &impl BackendView,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut found = Vec::new();
        view.scan_after(table, prefix, after, &mut |key, value| {
            found.push((key.to_vec(), value.to_vec()));
            Ok(found.len() < limit)
        })
        .unwrap();
        found
    }

    /// The same random batches (puts, deletes, durable commits, clears) through a `WriteBehind`
    /// and straight into a `MemBackend`: every get and every prefix scan agree after each batch.
    #[test]
    fn reads_through_the_overlay_match_a_store_that_commits_everything() {
        let mut seed: u64 = 0x5eed;
        let mut next = move |below: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % below
        };
        let mut behind = WriteBehind::new(MemBackend::new());
        let mut direct = MemBackend::new();
        let key = |n: u64| format!("k{}", n % 40).into_bytes();
        for step in 0..3_000 {
            let mut batch = WriteBatch::default();
            for _ in 0..=next(4) {
                let table = Table::ALL[next(3) as usize];
                let change = (next(3) > 0).then(|| format!("v{step}").into_bytes());
                batch.changes.insert((table, key(next(1_000))), change);
            }
            batch.durable = next(50) == 0;
            batch.clear_first = next(400) == 0;
            let copy = WriteBatch {
                clear_first: batch.clear_first,
                changes: batch.changes.clone(),
                durable: batch.durable,
            };
            behind.commit(batch).unwrap();
            direct.commit(copy).unwrap();
            let (through, expected) = (behind.view().unwrap(), direct.view().unwrap());
            for table in Table::ALL {
                assert_eq!(
                    through.len(table).unwrap(),
                    expected.len(table).unwrap(),
                    "step {step}: len {table:?}"
                );
                for n in 0..40 {
                    assert_eq!(
                        through.get(table, &key(n)).unwrap(),
                        expected.get(table, &key(n)).unwrap(),
                        "step {step}: get {table:?} {n}"
                    );
                }
                for prefix in [&b""[..], b"k", b"k1", b"k3", b"k39", b"x"] {
                    assert_eq!(
                        scan(&through, table, prefix),
                        scan(&expected, table, prefix),
                        "step {step}: scan {table:?} {prefix:?}"
                    );
                    for after in [None, Some(&b"k"[..]), Some(b"k17"), Some(b"k2"), Some(b"k9")] {
                        for limit in [1, 3, 100] {
                            assert_eq!(
                                scan_from(&through, table, prefix, after, limit),
                                scan_from(&expected, table, prefix, after, limit),
                                "step {step}: scan {table:?} {prefix:?} after {after:?}, {limit} items"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn pending_changes_reach_the_store_only_with_durability_or_past_the_bound() {
        let backend = Recording::default();
        let commits = backend.commits.clone();
        let mut behind = WriteBehind::new(backend);
        behind.commit(put(Table::Records, b"a", b"1")).unwrap();
        behind.commit(put(Table::Dedup, b"b", b"2")).unwrap();
        assert!(commits.lock().unwrap().is_empty(), "non-durable batches wait");
        assert_eq!(
            behind.inner().view().unwrap().get(Table::Records, b"a").unwrap(),
            None
        );
        assert_eq!(
            behind.view().unwrap().get(Table::Records, b"a").unwrap(),
            Some(b"1".to_vec()),
            "but are read"
        );

        behind
            .commit(WriteBatch {
                durable: true,
                ..put(Table::Meta, b"c", b"3")
            })
            .unwrap();
        assert_eq!(
            *commits.lock().unwrap(),
            vec![(3, true)],
            "one durable commit carries everything pending with its own changes"
        );
        assert_eq!(behind.pending_changes(), 0);

        for n in 0..PENDING_CHANGES_MAX {
            behind
                .commit(put(Table::Records, format!("{n:05}").as_bytes(), b"v"))
                .unwrap();
        }
        assert_eq!(
            *commits.lock().unwrap(),
            vec![(3, true), (PENDING_CHANGES_MAX, false)],
            "the bound on pending keys writes them in one non-durable commit"
        );
        let value = vec![7; PENDING_BYTES_MAX];
        behind.commit(put(Table::Records, b"big", &value)).unwrap();
        assert_eq!(
            commits.lock().unwrap().last(),
            Some(&(1, false)),
            "and so does the bound on bytes"
        );
    }

    #[test]
    fn a_view_stays_as_it_was_while_later_batches_commit() {
        let mut behind = WriteBehind::new(MemBackend::new());
        behind.commit(put(Table::Records, b"a", b"1")).unwrap();
        let before = behind.view().unwrap();
        behind.commit(put(Table::Records, b"a", b"2")).unwrap();
        behind
            .commit(WriteBatch {
                durable: true,
                ..put(Table::Records, b"b", b"3")
            })
            .unwrap();
        assert_eq!(
            scan(&before, Table::Records, b""),
            vec![(b"a".to_vec(), b"1".to_vec())]
        );
        assert_eq!(
            scan(&behind.view().unwrap(), Table::Records, b""),
            vec![(b"a".to_vec(), b"2".to_vec()), (b"b".to_vec(), b"3".to_vec())]
        );
    }

    #[test]
    fn a_failed_write_of_pending_changes_fails_every_later_call() {
        let mut behind = WriteBehind::new(Recording::default());
        behind.commit(put(Table::Records, b"a", b"1")).unwrap();
        behind.inner.fail = true;
        let durable = WriteBatch {
            durable: true,
            ..WriteBatch::default()
        };
        assert!(behind.commit(durable).is_err());
        behind.inner.fail = false;
        let error = behind.view().err().expect("a view would miss the lost changes");
        assert!(error.to_string().contains("disk full"), "{error}");
        assert!(behind.commit(put(Table::Records, b"b", b"2")).is_err());
    }

    #[test]
    fn a_clear_discards_what_is_pending() {
        let mut behind = WriteBehind::new(MemBackend::new());
        behind.commit(put(Table::Records, b"a", b"1")).unwrap();
        behind
            .commit(WriteBatch {
                clear_first: true,
                ..put(Table::Records, b"b", b"2")
            })
            .unwrap();
        assert_eq!(behind.pending_changes(), 0);
        assert_eq!(
            scan(&behind.view().unwrap(), Table::Records, b""),
            vec![(b"b".to_vec(), b"2".to_vec())]
        );
    }
}
