//! Large files deleted a slice at a time, so that freeing them does not stall every fsync on the disk.
//!
//! **Why.** Deleting a file frees its blocks in the filesystem's next journal commit, and on a
//! filesystem mounted with `discard` (ext4 `-o discard`, common on cloud and virtual disks: this
//! project's machines have it) that commit also sends the device a discard for every freed extent and
//! waits for it. Every fsync on the disk waits for that commit: the Raft log's of every group on the
//! machine, so every write. Measured (docs/storage.md, "Deleting large files"): unlinking a 2-GiB
//! file stalled a 4-KiB `O_DSYNC` writer beside it for up to 387 ms, and a migration's purge of two
//! replicas (3.3 GB each) gave 2.5 s of 50–80 % iowait.
//!
//! **How.** A file larger than a slice is cut from its end, [`REMOVAL_SLICE_BYTES`] at a time, each
//! cut made durable (`fdatasync` commits the journal, so each commit frees and discards one slice);
//! after each cut the remover waits as long as the cut took, so the journal is busy with the removal
//! at most half the time (RocksDB's `DeleteScheduler` truncates large files the same way, by
//! `bytes_max_delete_chunk`). Small files are unlinked, and the directory synced once a slice's worth
//! was unlinked. Then the file or tree is gone, and its parent directory synced: the removal is durable.
//!
//! The waits are on the remover's own thread; callers on an async runtime run it on a thread of its
//! own. A removal cut short by a crash leaves shorter files that are still the caller's to finish
//! (the data it held is already beyond reading where it was cut).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// How much of a file one durable cut frees.
pub const REMOVAL_SLICE_BYTES: u64 = 8 << 20;

/// The longest wait after one cut, however long the cut took: a disk that takes a second to free a
/// slice still loses the file at half its pace, not slower.
pub const REMOVAL_PAUSE_MAX: Duration = Duration::from_millis(250);

/// What a removal deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub files: u64,
    pub bytes: u64,
    /// Durable cuts and directory syncs made on the way: each one journal commit.
    pub commits: u64,
}

/// Removes the file at `path`, paced. A file that is not there was removed already.
pub fn remove_file(path: &Path) -> io::Result<Removed> {
    let mut removed = Removed::default();
    let mut remover = Remover::default();
    remover.file(path, &mut removed)?;
    remover.settle(parent_of(path), &mut removed)?;
    // A directory sync after the unlink (the last slice's commit) made the unlink durable already.
    if remover.synced_since_unlink {
        return Ok(removed);
    }
    match sync_dir(parent_of(path)) {
        // Its directory went too (a purged replica's, removed whole meanwhile).
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        result => result?,
    }
    Ok(removed)
}

/// Names of files being removed begin so: whoever owns a directory removes those a crash left there
/// at its next start.
pub const ASIDE_PREFIX: &str = "removing-";

/// A new name beside `path` for a file to be removed, unique in this process ([`ASIDE_PREFIX`], a
/// number, the file's name): moved or linked there first, a file can be removed at leisure while its
/// own name is used again at once.
pub fn aside_name(path: &Path) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(path).join(format!("{ASIDE_PREFIX}{number}-{name}"))
}

/// Removes the file at `path` without waiting, where nobody may wait (a spool abandoned, an install
/// not taken, a replaced snapshot's last handle dropped): one larger than a slice is moved aside
/// ([`aside_name`]), unless its name is an aside name already, and removed paced on a thread of its
/// own ([`remove_file_behind`]); a smaller one frees little and is unlinked at once. If it cannot be
/// moved it is removed at once.
pub fn remove_unused(path: &Path) {
    if is_small(path) {
        unlink_unused(path);
        return;
    }
    let aside_already = path
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with(ASIDE_PREFIX));
    if aside_already {
        remove_file_behind(path.to_path_buf());
        return;
    }
    let aside = aside_name(path);
    match fs::rename(path, &aside) {
        Ok(()) => remove_file_behind(aside),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "could not move a file aside to remove it; removing it at once");
            unlink_unused(path);
        }
    }
}

/// A file of at most a slice: freed at once, it stalls nothing much. A file that is not there (or
/// cannot be looked at) is not small: the caller's rename or removal then says why.
fn is_small(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.len() <= REMOVAL_SLICE_BYTES)
}

/// Unlinks a file no longer used; one already gone is no error, another failure only a warning.
fn unlink_unused(path: &Path) {
    if let Err(error) = fs::remove_file(path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), %error, "could not remove a file no longer used");
    }
}

/// A second name for the file at `path`, unique in this process ([`aside_name`]), given before the
/// file is replaced by a rename: the rename then frees nothing, and the file can be removed paced
/// once its last reader is done (its [`LinkedAside::keep`]). `None` (with a warning) if the link
/// failed: only the pacing is lost, the rename frees the file at once.
pub fn link_aside(path: &Path) -> Option<LinkedAside> {
    let aside = aside_name(path);
    match fs::hard_link(path, &aside) {
        Ok(()) => Some(LinkedAside { aside: Some(aside) }),
        Err(error) => {
            tracing::warn!(file = %aside.display(), %error, "could not link a file aside before replacing it");
            None
        }
    }
}

/// A second name given by [`link_aside`]. Dropped without [`LinkedAside::keep`] (the replacement
/// failed, the file is still in use under its own name), the second name is unlinked, which frees
/// nothing.
#[derive(Debug)]
pub struct LinkedAside {
    aside: Option<std::path::PathBuf>,
}

impl LinkedAside {
    /// The file was replaced: its second name is now its only one, for the caller to remove.
    pub fn keep(mut self) -> std::path::PathBuf {
        self.aside.take().expect("an aside name is kept once")
    }
}

impl Drop for LinkedAside {
    fn drop(&mut self) {
        if let Some(aside) = self.aside.take() {
            unlink_unused(&aside);
        }
    }
}

/// Removes the file at `path` paced, on a thread of its own, without waiting; one of at most a slice
/// is unlinked at once. `path` must be a name nobody uses again ([`aside_name`]). One left by a crash
/// is the owner's to find and remove at its next start.
pub fn remove_file_behind(path: std::path::PathBuf) {
    if is_small(&path) {
        unlink_unused(&path);
        return;
    }
    let on_thread = path.clone();
    let spawned = std::thread::Builder::new()
        .name("domicile-remove".into())
        .spawn(move || {
            if let Err(error) = remove_file(&on_thread) {
                tracing::warn!(file = %on_thread.display(), %error, "could not remove a file no longer used");
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start a removal thread; removing at once");
        unlink_unused(&path);
    }
}

/// Removes the directory at `path` and everything under it, paced. A directory that is not there
/// was removed already.
pub fn remove_dir_all(path: &Path) -> io::Result<Removed> {
    let mut removed = Removed::default();
    match fs::symlink_metadata(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(error) => return Err(error),
        Ok(_) => {}
    }
    Remover::default().tree(path, &mut removed)?;
    sync_dir(parent_of(path))?;
    Ok(removed)
}

/// How many times a directory is listed and emptied before its removal gives up.
const TREE_LISTINGS_MAX: usize = 3;

/// Bytes unlinked since the last journal commit this removal made, and whether its directory was synced
/// since its last unlink.
#[derive(Default)]
struct Remover {
    unsynced_bytes: u64,
    synced_since_unlink: bool,
}

impl Remover {
    fn tree(&mut self, dir: &Path, removed: &mut Removed) -> io::Result<()> {
        // A file moved aside in this directory while it was listed (a spool dropped late, renamed before
        // its removal behind) is found by the next listing.
        let mut listings = 1;
        loop {
            self.entries(dir, removed)?;
            match fs::remove_dir(dir) {
                Err(error)
                    if error.kind() == io::ErrorKind::DirectoryNotEmpty && listings < TREE_LISTINGS_MAX =>
                {
                    listings += 1;
                }
                result => return result,
            }
        }
    }

    /// Removes what `dir` holds, then commits the unlinks.
    fn entries(&mut self, dir: &Path, removed: &mut Removed) -> io::Result<()> {
        // Sorted: the same tree is removed in the same order every time.
        let mut entries = fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<io::Result<Vec<_>>>()?;
        entries.sort();
        for entry in entries {
            let is_dir = match fs::symlink_metadata(&entry) {
                Ok(metadata) => metadata.is_dir(),
                // Removed meanwhile by another remover (a file moved aside and removed behind).
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            if is_dir {
                self.tree(&entry, removed)?;
            } else {
                self.file(&entry, removed)?;
            }
        }
        self.settle(dir, removed)
    }

    /// Cuts a large regular file down to a slice, then unlinks it. A file that another remover
    /// removed meanwhile is gone, as asked.
    fn file(&mut self, path: &Path, removed: &mut Removed) -> io::Result<()> {
        match self.cut_and_unlink(path, removed) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            result => result,
        }
    }

    fn cut_and_unlink(&mut self, path: &Path, removed: &mut Removed) -> io::Result<()> {
        let metadata = fs::symlink_metadata(path)?;
        let mut len = metadata.len();
        removed.bytes += len;
        // A file with another name is not cut: its data is still that name's (a snapshot linked aside
        // before it was replaced, where a crash came before the replacement). Unlinking this name
        // frees nothing.
        if metadata.is_file() && metadata.nlink() == 1 && len > REMOVAL_SLICE_BYTES {
            let file = fs::OpenOptions::new().write(true).open(path)?;
            while len > REMOVAL_SLICE_BYTES {
                len -= REMOVAL_SLICE_BYTES;
                let took = timed(|| {
                    file.set_len(len)?;
                    file.sync_data()
                })?;
                removed.commits += 1;
                pause(took);
            }
        }
        fs::remove_file(path)?;
        removed.files += 1;
        self.synced_since_unlink = false;
        self.unsynced_bytes += len;
        if self.unsynced_bytes >= REMOVAL_SLICE_BYTES {
            self.settle(parent_of(path), removed)?;
        }
        Ok(())
    }

    /// Commits the unlinks made since the last commit (a directory sync), then pauses.
    fn settle(&mut self, dir: &Path, removed: &mut Removed) -> io::Result<()> {
        if self.unsynced_bytes == 0 {
            return Ok(());
        }
        let took = match timed(|| sync_dir(dir)) {
            Ok(took) => took,
            // The directory went too: nothing left to commit here.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.unsynced_bytes = 0;
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        removed.commits += 1;
        self.unsynced_bytes = 0;
        self.synced_since_unlink = true;
        pause(took);
        Ok(())
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

// The remover's own thread measures and waits in real time: the simulator never removes files (its
// stores are in memory), so this is not time it needs to control.
#[allow(clippy::disallowed_methods)]
fn timed(cut: impl FnOnce() -> io::Result<()>) -> io::Result<Duration> {
    let started = std::time::Instant::now();
    cut()?;
    Ok(started.elapsed())
}

#[allow(clippy::disallowed_methods)]
fn pause(took: Duration) {
    std::thread::sleep(took.min(REMOVAL_PAUSE_MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: u64) {
        let file = fs::File::create(path).unwrap();
        // Allocated, not sparse: the cuts must free real blocks.
        let chunk = vec![7u8; 1 << 20];
        let mut left = bytes;
        use std::io::Write;
        let mut writer = io::BufWriter::new(&file);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            writer.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        writer.flush().unwrap();
    }

    #[test]
    fn a_large_file_is_cut_a_slice_at_a_time_then_unlinked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let bytes = 3 * REMOVAL_SLICE_BYTES + 12_345;
        write(&path, bytes);
        let removed = remove_file(&path).unwrap();
        assert!(!path.exists());
        assert_eq!(removed.files, 1);
        assert_eq!(removed.bytes, bytes);
        // Three cuts leave 12,345 bytes, unlinked and committed by the directory sync.
        assert_eq!(removed.commits, 4);
        assert_eq!(remove_file(&path).unwrap(), Removed::default(), "gone already");
    }

    #[test]
    fn a_tree_is_removed_whole_and_its_small_files_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("groups").join("7");
        fs::create_dir_all(root.join("nested")).unwrap();
        write(&root.join("store.redb"), REMOVAL_SLICE_BYTES + 1);
        for n in 0..5 {
            write(&root.join("nested").join(format!("small-{n}")), 1000);
        }
        let removed = remove_dir_all(&root).unwrap();
        assert!(!root.exists());
        assert!(
            dir.path().join("groups").exists(),
            "only the tree named is removed"
        );
        assert_eq!(removed.files, 6);
        assert_eq!(removed.bytes, REMOVAL_SLICE_BYTES + 1 + 5000);
        // One cut of the large file; then, per directory, one sync for what it unlinked.
        assert_eq!(removed.commits, 3);
        assert_eq!(remove_dir_all(&root).unwrap(), Removed::default(), "gone already");
    }

    #[test]
    fn a_file_with_another_name_is_unlinked_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, aside) = (dir.path().join("current.snap"), dir.path().join("aside"));
        write(&kept, 2 * REMOVAL_SLICE_BYTES);
        fs::hard_link(&kept, &aside).unwrap();
        let removed = remove_file(&aside).unwrap();
        assert!(!aside.exists());
        assert_eq!(removed.commits, 1, "no cut, one directory sync");
        assert_eq!(
            fs::metadata(&kept).unwrap().len(),
            2 * REMOVAL_SLICE_BYTES,
            "the other name's data is whole"
        );
    }

    #[test]
    fn a_removal_cut_short_is_finished_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("7");
        fs::create_dir_all(&root).unwrap();
        write(&root.join("a"), 2 * REMOVAL_SLICE_BYTES);
        // As a crash would leave it: cut to one slice, not unlinked.
        fs::OpenOptions::new()
            .write(true)
            .open(root.join("a"))
            .unwrap()
            .set_len(REMOVAL_SLICE_BYTES)
            .unwrap();
        let removed = remove_dir_all(&root).unwrap();
        assert!(!root.exists());
        assert_eq!((removed.files, removed.bytes), (1, REMOVAL_SLICE_BYTES));
    }

    #[test]
    fn a_second_name_is_unlinked_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("current.snap");
        write(&file, 4096);
        let aside = link_aside(&file).expect("a link beside the file");
        drop(aside);
        let names = || fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(
            names(),
            1,
            "the replacement failed: the second name goes, the file stays"
        );
        assert_eq!(fs::read(&file).unwrap().len(), 4096);

        let kept = link_aside(&file).expect("a link beside the file").keep();
        fs::remove_file(&file).unwrap(); // as the rename over the file's name does
        assert!(
            kept.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(ASIDE_PREFIX)
        );
        assert_eq!(
            fs::read(&kept).unwrap().len(),
            4096,
            "kept: the data is there under its second name"
        );
    }

    #[test]
    fn an_unused_file_is_gone_from_its_name_at_once_and_a_large_one_is_removed_behind_once_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (small, large) = (dir.path().join("small"), dir.path().join("large"));
        write(&small, 4096);
        write(&large, 2 * REMOVAL_SLICE_BYTES);
        remove_unused(&small);
        remove_unused(&large);
        remove_unused(&dir.path().join("never-there"));
        assert!(!small.exists() && !large.exists(), "both names are free at once");
        // A replaced snapshot's last handle dropped: its aside name is kept, not moved aside again.
        let retired = dir.path().join(format!("{ASIDE_PREFIX}7-current.snap"));
        write(&retired, 2 * REMOVAL_SLICE_BYTES);
        remove_unused(&retired);
        let snapshots: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with("current.snap"))
            .collect();
        assert!(
            snapshots
                .iter()
                .all(|name| *name == format!("{ASIDE_PREFIX}7-current.snap")),
            "{snapshots:?}"
        );
        // The large one went aside and is removed on a thread of its own: wait for it, boundedly.
        let gone = crate::eventually(|| fs::read_dir(dir.path()).unwrap().count() == 0);
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(gone, "the large file was never removed: {left:?}");
    }
}
