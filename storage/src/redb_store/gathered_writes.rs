//! redb's page writes to a fresh install's file, gathered in memory and written as runs.
//!
//! **Why.** redb writes its write buffer back one page per `pwrite`: 4 KiB at a time, in the order of
//! its cache's stripes and evictions. A gigabyte install made some 300,000 of them, and on ext4 each
//! pays for a page-cache folio of its own, a delayed-allocation reservation and an extent-tree
//! update. Profiled on a learner's install thread: 44 % of its CPU in those writes, 1.5 CPU-s for the
//! gigabyte, where the same bytes written a megabyte at a time cost 0.2 (`dd`, 4 KiB against 1 MiB
//! blocks, on the same disk: 0.91 against 0.18 s of system time). A fresh install's pages are
//! allocated front to back, so many of the pages redb writes back in a stretch of time are
//! neighbours: gathered and sorted, they go to the file as runs (22,886 writes for the 337,621 pages
//! of a million-record install; its install threads took 3.6–4.0 CPU-s instead of 5.4–5.8 beside
//! eight writers, docs/performance.md, "Migrating a legacy group at volume").
//!
//! **What it keeps true.** Gathered bytes are not in the file yet, exactly as written bytes in the
//! page cache are not on the disk yet: redb's durability rests on `sync_data` alone, and every
//! `sync_data` (and `set_len`, `close`) first writes everything gathered. A read is served from what
//! is gathered when one gathered write holds all of it, and from the file once everything gathered
//! is written when it overlaps any other way; a write that overlaps a gathered one differently than
//! exactly (the same offset and length, which replaces it) writes everything gathered first. So
//! every read sees the last write of every byte, as it would without gathering.
//!
//! Only while the install fills: once it is finished (durable, everything written), the same redb
//! `Database` becomes the live store, and the live store's writes, scattered over the whole file,
//! gain nothing from gathering ([`GatherSwitch::stop`] makes every call go straight to the file).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use redb::BackendError;
use redb::StorageBackend;
use redb::backends::FileBackend;

/// Bytes gathered before they are written: one buffer per install, allocated at its first write and
/// freed when it stops. 16 MiB made runs of 15 pages on average; 64 MiB made runs of 40 but no faster
/// install, for four times the memory (docs/performance.md).
pub(super) const GATHERED_BYTES_MAX: usize = 16 << 20;

/// Largest single write, in bytes and in pieces (Linux's `IOV_MAX`): a longer run goes to the file
/// in several.
const RUN_BYTES_MAX: usize = 4 << 20;
const RUN_PIECES_MAX: usize = 1024;

/// redb's file, with its writes gathered until [`GatherSwitch::stop`].
#[derive(Debug)]
pub(super) struct GatheredWrites(Arc<Shared>);

/// The install's hold on its backend, which redb's `Database` owns.
#[derive(Debug)]
pub(super) struct GatherSwitch(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    /// redb's own file backend: every call that is not a gathered write goes to it, locks included.
    file: FileBackend,
    /// The same open file, for the vectored writes of gathered runs.
    raw: fs::File,
    /// Read without the lock on every call; set to false, under the lock, once.
    gathering: AtomicBool,
    gathered: Mutex<Gathered>,
}

/// Writes not yet in the file: their bytes back to back in one buffer (allocated once, so a write
/// costs a copy and no allocation), and where each goes, non-overlapping, by offset.
#[derive(Debug, Default)]
struct Gathered {
    bytes: Vec<u8>,
    /// File offset → (start in `bytes`, length).
    writes: BTreeMap<u64, (usize, usize)>,
    counts: GatherCounts,
}

/// How well gathering worked for one install.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct GatherCounts {
    /// Writes redb made.
    pub(super) taken: u64,
    /// Writes that went to the file.
    pub(super) written: u64,
}

impl GatheredWrites {
    /// Gathers the writes to `file` until the returned switch is stopped.
    pub(super) fn new(file: fs::File) -> Result<(GatheredWrites, GatherSwitch), redb::DatabaseError> {
        let raw = file.try_clone()?;
        let shared = Arc::new(Shared {
            file: FileBackend::new(file)?,
            raw,
            gathering: AtomicBool::new(true),
            gathered: Mutex::new(Gathered::default()),
        });
        Ok((GatheredWrites(shared.clone()), GatherSwitch(shared)))
    }
}

impl Shared {
    /// The gathered writes, if gathering is still on (then the lock is held).
    fn gathered(&self) -> Option<MutexGuard<'_, Gathered>> {
        if !self.gathering.load(Ordering::Acquire) {
            return None;
        }
        let gathered = self.gathered.lock().expect("gathered writes lock");
        // Stopped between the load and the lock: `stop` wrote everything gathered.
        self.gathering.load(Ordering::Acquire).then_some(gathered)
    }

    /// Writes everything gathered, if gathering is on.
    fn write_gathered(&self) -> io::Result<()> {
        match self.gathered() {
            Some(mut gathered) => gathered.write_all(&self.raw),
            None => Ok(()),
        }
    }
}

impl GatherSwitch {
    /// Writes everything gathered and makes every later call go straight to the file. Returns how
    /// many writes redb made while gathering, and how many went to the file.
    pub(super) fn stop(&self) -> io::Result<GatherCounts> {
        let mut gathered = self.0.gathered.lock().expect("gathered writes lock");
        gathered.write_all(&self.0.raw)?;
        gathered.bytes = Vec::new();
        self.0.gathering.store(false, Ordering::Release);
        Ok(gathered.counts)
    }
}

impl Gathered {
    /// The gathered write that overlaps `offset..offset + len`, if any: its offset, start in
    /// `bytes` and length. Writes do not overlap each other, so only the last one starting before
    /// the end can.
    fn overlapping(&self, offset: u64, len: usize) -> Option<(u64, usize, usize)> {
        let end = offset.checked_add(len as u64)?;
        let (&at, &(start, data_len)) = self.writes.range(..end).next_back()?;
        (at + data_len as u64 > offset).then_some((at, start, data_len))
    }

    /// Takes a write that overlaps nothing gathered.
    fn take(&mut self, offset: u64, data: &[u8]) {
        debug_assert!(self.overlapping(offset, data.len()).is_none());
        if self.bytes.capacity() == 0 {
            self.bytes.reserve_exact(GATHERED_BYTES_MAX);
        }
        self.writes.insert(offset, (self.bytes.len(), data.len()));
        self.bytes.extend_from_slice(data);
    }

    /// Writes every gathered write to `file` in offset order, neighbours joined into one vectored
    /// write of at most [`RUN_BYTES_MAX`]. A write that fails leaves everything gathered; redb then
    /// fails the database (its later calls return the error), as for a failed write of its own.
    fn write_all(&mut self, file: &fs::File) -> io::Result<()> {
        let mut run: Vec<&[u8]> = Vec::with_capacity(RUN_PIECES_MAX);
        let (mut run_offset, mut run_len) = (0u64, 0usize);
        for (&offset, &(start, len)) in &self.writes {
            let joins = run_offset + run_len as u64 == offset
                && run_len + len <= RUN_BYTES_MAX
                && run.len() < RUN_PIECES_MAX;
            if !joins && !run.is_empty() {
                write_vectored_at(file, &run, run_offset)?;
                self.counts.written += 1;
                run.clear();
            }
            if run.is_empty() {
                (run_offset, run_len) = (offset, 0);
            }
            run.push(&self.bytes[start..start + len]);
            run_len += len;
        }
        if !run.is_empty() {
            write_vectored_at(file, &run, run_offset)?;
            self.counts.written += 1;
        }
        self.writes.clear();
        self.bytes.clear();
        Ok(())
    }
}

/// Writes `pieces`, back to back, at `offset`: one `pwritev`, and the rest piece by piece if the
/// kernel takes less than all of it.
fn write_vectored_at(file: &fs::File, pieces: &[&[u8]], offset: u64) -> io::Result<()> {
    let mut written = 0usize;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        assert!(
            pieces.len() <= RUN_PIECES_MAX,
            "a run holds at most IOV_MAX pieces"
        );
        let vectors: Vec<libc::iovec> = pieces
            .iter()
            .map(|piece| libc::iovec {
                iov_base: piece.as_ptr() as *mut libc::c_void,
                iov_len: piece.len(),
            })
            .collect();
        let at = libc::off_t::try_from(offset).map_err(|_| io::Error::other("write offset out of range"))?;
        // SAFETY: every iovec points into a slice borrowed for the call, which the kernel only reads
        // (`iov_base` is `*mut` in the C declaration alone); the count is at most IOV_MAX.
        let result = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                vectors.as_ptr(),
                vectors.len() as libc::c_int,
                at,
            )
        };
        if result < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        } else {
            written = result as usize;
        }
    }
    // What was not written (all of it where there is no `pwritev`), piece by piece.
    let mut at = offset;
    for piece in pieces {
        let skip = written.min(piece.len());
        written -= skip;
        at += skip as u64;
        if skip < piece.len() {
            file.write_all_at(&piece[skip..], at)?;
            at += (piece.len() - skip) as u64;
        }
    }
    Ok(())
}

impl StorageBackend for GatheredWrites {
    fn len(&self) -> io::Result<u64> {
        // redb sets a file's length before it writes past its end, so nothing gathered lies beyond it.
        self.0.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        if let Some(mut gathered) = self.0.gathered() {
            match gathered.overlapping(offset, out.len()) {
                None => {}
                Some((at, start, len)) if at <= offset && offset + out.len() as u64 <= at + len as u64 => {
                    let from = start + (offset - at) as usize;
                    out.copy_from_slice(&gathered.bytes[from..from + out.len()]);
                    return Ok(());
                }
                Some(_) => gathered.write_all(&self.0.raw)?,
            }
        }
        self.0.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.write_gathered()?;
        self.0.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.write_gathered()?;
        self.0.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let Some(mut gathered) = self.0.gathered() else {
            return self.0.file.write(offset, data);
        };
        if data.is_empty() {
            // Nothing to write, and kept as an entry it would replace a gathered write at its offset.
            return Ok(());
        }
        gathered.counts.taken += 1;
        match gathered.overlapping(offset, data.len()) {
            None => {}
            Some((at, start, len)) if at == offset && len == data.len() => {
                gathered.bytes[start..start + len].copy_from_slice(data);
                return Ok(());
            }
            Some(_) => gathered.write_all(&self.0.raw)?,
        }
        if gathered.bytes.len() + data.len() > GATHERED_BYTES_MAX {
            gathered.write_all(&self.0.raw)?;
        }
        if data.len() > GATHERED_BYTES_MAX {
            gathered.counts.written += 1;
            return self.0.file.write(offset, data);
        }
        gathered.take(offset, data);
        if gathered.bytes.len() == GATHERED_BYTES_MAX {
            gathered.write_all(&self.0.raw)?;
        }
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        self.0.write_gathered()?;
        self.0.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn backend(dir: &tempfile::TempDir) -> (GatheredWrites, GatherSwitch, fs::File) {
        let path = dir.path().join("gathered");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let (backend, switch) = GatheredWrites::new(file).unwrap();
        (backend, switch, fs::File::open(&path).unwrap())
    }

    #[test]
    fn every_read_sees_the_last_write_and_a_sync_puts_everything_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, _switch, file) = backend(&dir);
        let len = 512 * PAGE;
        backend.set_len(len).unwrap();
        // What the file would hold if every write went straight to it.
        let mut model = vec![0u8; len as usize];
        // A fixed seed: the same operations on every run.
        let mut draw = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
        for round in 0..4_000u64 {
            match draw.u64(..10) {
                // Writes of one to eight pages, or an odd length, anywhere: overlapping earlier ones
                // exactly, partly, or not at all.
                0..=5 => {
                    let pages = draw.u64(1..=8);
                    let offset =
                        draw.u64(..len / PAGE - pages) * PAGE + if draw.u64(..8) == 0 { 100 } else { 0 };
                    let length = pages * PAGE - if draw.u64(..8) == 0 { 300 } else { 0 };
                    let data: Vec<u8> = (0..length).map(|i| (i as u8) ^ (round as u8)).collect();
                    backend.write(offset, &data).unwrap();
                    model[offset as usize..(offset + length) as usize].copy_from_slice(&data);
                }
                6..=8 => {
                    let offset = draw.u64(..len - 2 * PAGE);
                    let length = draw.u64(1..=2 * PAGE);
                    let mut out = vec![0u8; length as usize];
                    backend.read(offset, &mut out).unwrap();
                    assert_eq!(
                        out,
                        model[offset as usize..(offset + length) as usize],
                        "round {round}"
                    );
                }
                _ => {
                    backend.sync_data().unwrap();
                    let mut on_disk = vec![0u8; len as usize];
                    file.read_exact_at(&mut on_disk, 0).unwrap();
                    assert!(on_disk == model, "round {round}: the file after a sync differs");
                }
            }
        }
    }

    #[test]
    fn an_empty_write_changes_nothing_gathered() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, _switch, _file) = backend(&dir);
        backend.set_len(2 * PAGE).unwrap();
        backend.write(PAGE, &[7; PAGE as usize]).unwrap();
        backend.write(PAGE, &[]).unwrap();
        let mut out = [0u8; PAGE as usize];
        backend.read(PAGE, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 7));
    }

    #[test]
    fn neighbouring_pages_written_in_any_order_go_to_the_file_as_a_few_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, switch, file) = backend(&dir);
        let pages = 2_048u64; // 8 MiB: under the gathering bound, so only `stop` writes them.
        backend.set_len(pages * PAGE).unwrap();
        let mut order: Vec<u64> = (0..pages).collect();
        fastrand::Rng::with_seed(7).shuffle(&mut order);
        for &page in &order {
            backend
                .write(page * PAGE, &vec![page as u8; PAGE as usize])
                .unwrap();
        }
        let mut first = [0u8; 16];
        file.read_exact_at(&mut first, 0).unwrap();
        assert_eq!(
            first, [0; 16],
            "nothing is in the file before the gathered writes are written"
        );
        let counts = switch.stop().unwrap();
        assert_eq!(counts.taken, pages);
        assert_eq!(
            counts.written,
            pages * PAGE / RUN_BYTES_MAX as u64,
            "one write per full run"
        );
        for page in [0, 1, 700, pages - 1] {
            let mut out = vec![0u8; PAGE as usize];
            file.read_exact_at(&mut out, page * PAGE).unwrap();
            assert!(out.iter().all(|&b| b == page as u8), "page {page}");
        }
    }

    #[test]
    fn gathering_stops_at_the_bound_and_after_stop_every_write_goes_straight_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, switch, file) = backend(&dir);
        let bound_pages = GATHERED_BYTES_MAX as u64 / PAGE;
        backend.set_len((bound_pages + 2) * PAGE).unwrap();
        for page in 0..bound_pages {
            backend.write(page * PAGE, &[1; PAGE as usize]).unwrap();
        }
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, bound_pages * PAGE - 1).unwrap();
        assert_eq!(last, [1], "reaching the bound wrote everything gathered");

        switch.stop().unwrap();
        backend.write(bound_pages * PAGE, &[2; PAGE as usize]).unwrap();
        file.read_exact_at(&mut last, bound_pages * PAGE).unwrap();
        assert_eq!(last, [2], "after stop, a write is in the file at once");
        let counts = switch.stop().unwrap();
        assert_eq!(counts.taken, bound_pages, "writes after stop are not gathered");
    }
}
