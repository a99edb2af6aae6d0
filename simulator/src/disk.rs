//! A simulated disk under the real log code: writes are volatile until a sync, and a crash drops or
//! tears what was not synced.
//!
//! The disk outlives the node's incarnations. Each incarnation gets a handle stamped with a
//! generation; when the node crashes the generation moves on, so a task of the dead incarnation
//! that still holds a file can neither write to nor sync the disk its successor recovers from (its
//! calls fail with EIO, which is also how its pending syncs learn they will never complete).
//!
//! Faults, all drawn by the caller from the seeded PRNG: EIO or ENOSPC on the next sync, a torn
//! unsynced tail at a crash, a bit flip in synced bytes (the log's checksums must catch it), and
//! the loss of the whole disk. The `lying_sync` switch (canary) acknowledges syncs without making
//! anything durable.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use storage::disk::{Disk, DiskFile};

use crate::prng::Prng;

/// The bytes of one file and what of them is durable.
#[derive(Default)]
struct FileState {
    bytes: Vec<u8>,
    synced_len: usize,
    /// Synced bytes overwritten since the last sync, oldest first: a crash puts them back.
    overwritten: Vec<(usize, Vec<u8>)>,
}

#[derive(Default)]
struct DiskState {
    files: BTreeMap<String, Arc<Mutex<FileState>>>,
    generation: u64,
    /// The next sync fails with this error (injected EIO / ENOSPC).
    fail_next_sync: Option<io::ErrorKind>,
    /// Canary: syncs succeed without making anything durable.
    lying_sync: bool,
    syncs: u64,
}

/// A node's disk, across its incarnations.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

/// What a crash did to the disk, for the trace.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CrashDamage {
    pub files: usize,
    pub bytes_lost: u64,
    pub torn_files: usize,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.state.lock().expect("sim disk lock")
    }

    /// A handle for a new incarnation; every older handle is detached from now on.
    pub fn attach(&self, wake: Arc<tokio::sync::Notify>) -> DiskHandle {
        let mut state = self.lock();
        state.generation += 1;
        DiskHandle {
            disk: self.clone(),
            generation: state.generation,
            wake,
        }
    }

    /// Detaches every handle (the node died): their writes and syncs fail from now on. A sync failure
    /// injected for the dead incarnation does not carry over to the next one.
    pub fn detach(&self) {
        let mut state = self.lock();
        state.generation += 1;
        state.fail_next_sync = None;
    }

    /// Power loss: unsynced overwrites are undone and each file's unsynced tail is dropped, or
    /// (with `tear`) cut at a random point inside it.
    pub fn crash(&self, rng: &mut Prng, tear: bool) -> CrashDamage {
        let state = self.lock();
        let mut damage = CrashDamage::default();
        for file in state.files.values() {
            let mut file = file.lock().expect("sim file lock");
            let file = &mut *file;
            damage.files += 1;
            for (offset, old) in file.overwritten.drain(..).rev() {
                file.bytes[offset..offset + old.len()].copy_from_slice(&old);
            }
            let unsynced = file.bytes.len() - file.synced_len.min(file.bytes.len());
            let kept = if tear && unsynced > 0 && rng.chance(300_000) {
                damage.torn_files += 1;
                rng.below(unsynced as u64) as usize
            } else {
                0
            };
            damage.bytes_lost += (unsynced - kept) as u64;
            let len = file.synced_len + kept;
            file.bytes.truncate(len);
            file.synced_len = file.bytes.len();
        }
        damage
    }

    /// Flips one bit in the synced bytes of a random non-empty file; returns where.
    pub fn flip_bit(&self, rng: &mut Prng) -> Option<(String, u64)> {
        let state = self.lock();
        let candidates: Vec<(&String, &Arc<Mutex<FileState>>)> = state
            .files
            .iter()
            .filter(|(_, file)| file.lock().expect("sim file lock").synced_len > 0)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (name, file) = *rng.pick(&candidates);
        let mut file = file.lock().expect("sim file lock");
        let offset = rng.below(file.synced_len as u64) as usize;
        file.bytes[offset] ^= 1 << rng.below(8);
        Some((name.clone(), offset as u64))
    }

    /// The disk is gone: every file, synced or not.
    pub fn lose_everything(&self) {
        self.lock().files.clear();
    }

    /// The next sync of any file fails with `kind` (EIO, ENOSPC (`StorageFull`)).
    pub fn fail_next_sync(&self, kind: io::ErrorKind) {
        self.lock().fail_next_sync = Some(kind);
    }

    /// Canary: acknowledge syncs without making anything durable.
    pub fn set_lying_sync(&self, lying: bool) {
        self.lock().lying_sync = lying;
    }

    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Bytes held, synced or not (memory accounting).
    pub fn bytes(&self) -> u64 {
        let state = self.lock();
        state
            .files
            .values()
            .map(|file| file.lock().expect("sim file lock").bytes.len() as u64)
            .sum()
    }
}

/// One incarnation's view of a [`SimDisk`].
#[derive(Clone)]
pub struct DiskHandle {
    disk: SimDisk,
    generation: u64,
    /// Woken on every write: the group-commit driver waits on it.
    wake: Arc<tokio::sync::Notify>,
}

fn detached() -> io::Error {
    io::Error::other("EIO: the disk was detached from this (crashed) incarnation")
}

impl DiskHandle {
    fn check(&self) -> io::Result<()> {
        if self.disk.lock().generation != self.generation {
            return Err(detached());
        }
        Ok(())
    }
}

impl Disk for DiskHandle {
    type File = SimFile;

    fn list(&self) -> io::Result<Vec<String>> {
        self.check()?;
        Ok(self.disk.lock().files.keys().cloned().collect())
    }

    fn open(&self, name: &str) -> io::Result<SimFile> {
        self.check()?;
        let state = self.disk.lock();
        let file = state
            .files
            .get(name)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
        Ok(SimFile {
            handle: self.clone(),
            file,
        })
    }

    fn create(&self, name: &str) -> io::Result<SimFile> {
        self.check()?;
        let mut state = self.disk.lock();
        if state.files.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, name.to_string()));
        }
        let file = Arc::new(Mutex::new(FileState::default()));
        state.files.insert(name.to_string(), file.clone());
        Ok(SimFile {
            handle: self.clone(),
            file,
        })
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.check()?;
        let mut state = self.disk.lock();
        state
            .files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }

    fn preallocation_bytes(&self) -> u64 {
        64 << 10
    }
}

/// A file of a [`SimDisk`], through one incarnation's handle.
pub struct SimFile {
    handle: DiskHandle,
    file: Arc<Mutex<FileState>>,
}

impl SimFile {
    fn lock(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.file.lock().expect("sim file lock")
    }
}

impl DiskFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().bytes.len() as u64)
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.handle.check()?;
        let mut state = self.lock();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start
            .checked_add(bytes.len())
            .ok_or(io::ErrorKind::InvalidInput)?;
        let synced_end = end.min(state.synced_len);
        if start < synced_end {
            let old = state.bytes[start..synced_end].to_vec();
            state.overwritten.push((start, old));
        }
        if state.bytes.len() < end {
            state.bytes.resize(end, 0);
        }
        state.bytes[start..end].copy_from_slice(bytes);
        drop(state);
        self.handle.wake.notify_one();
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let state = self.lock();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start.checked_add(buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        let source = state.bytes.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(source);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let lying = {
            let mut disk = self.handle.disk.lock();
            if disk.generation != self.handle.generation {
                return Err(detached());
            }
            if let Some(kind) = disk.fail_next_sync.take() {
                return Err(io::Error::new(kind, format!("injected {kind:?} on fdatasync")));
            }
            disk.syncs += 1;
            disk.lying_sync
        };
        if !lying {
            let mut state = self.lock();
            state.synced_len = state.bytes.len();
            state.overwritten.clear();
        }
        Ok(())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.handle.check()?;
        let mut state = self.lock();
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        state.bytes.truncate(len);
        state.synced_len = state.bytes.len();
        state.overwritten.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_synced_bytes_and_detaches_the_old_incarnation() {
        let disk = SimDisk::new();
        let handle = disk.attach(Arc::default());
        let file = handle.create("a").unwrap();
        file.append(b"durable").unwrap();
        file.sync().unwrap();
        file.append(b"-volatile").unwrap();
        disk.detach();
        disk.crash(&mut Prng::new(1), false);
        assert!(file.append(b"x").is_err(), "a dead incarnation can't write");
        assert!(file.sync().is_err(), "nor sync");
        let next = disk.attach(Arc::default());
        let mut buf = vec![0; 7];
        next.open("a").unwrap().read_at(0, &mut buf).unwrap();
        assert_eq!(buf, b"durable");
        assert_eq!(next.open("a").unwrap().len().unwrap(), 7);
    }

    #[test]
    fn injected_sync_errors_and_lying_syncs() {
        let disk = SimDisk::new();
        let handle = disk.attach(Arc::default());
        let file = handle.create("a").unwrap();
        disk.fail_next_sync(io::ErrorKind::StorageFull);
        assert_eq!(file.sync().unwrap_err().kind(), io::ErrorKind::StorageFull);
        disk.set_lying_sync(true);
        file.append(b"gone").unwrap();
        file.sync().unwrap();
        disk.crash(&mut Prng::new(1), false);
        assert_eq!(file.len().unwrap(), 0, "a lying sync kept nothing");
    }
}
