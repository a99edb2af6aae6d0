//! The file operations the log needs, and nothing more.
//!
//! The log's logic (framing, indexing, recovery, purge) is written against [`Disk`] so the same
//! code runs on real files in production ([`FsDisk`]) and on a simulated disk in tests and in the
//! simulator ([`MemDisk`], which can lose unsynced bytes the way a crash does). A disk is a flat
//! directory of named files; a file only grows by appending, except for recovery's truncation of
//! a torn tail.
//!
//! Contract every implementation keeps:
//! * `create` makes the new name durable (the directory entry survives a crash);
//! * `sync` makes every byte appended before the call durable;
//! * `append`, `read_at` and `sync` may run concurrently on one file from different threads.

use std::collections::BTreeMap;
use std::fs;
use std::fs::File;
use std::io;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

/// A directory of files.
pub trait Disk: Send + Sync + 'static {
    type File: DiskFile;

    /// Names of the files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Opens an existing file.
    fn open(&self, name: &str) -> io::Result<Self::File>;
    /// Creates a new, empty file (failing if it exists) and makes its name durable.
    fn create(&self, name: &str) -> io::Result<Self::File>;
    /// Removes a file and makes the removal durable.
    fn remove(&self, name: &str) -> io::Result<()>;
}

/// One open file.
// `len` is a size that can fail to be read; an `is_empty` would add nothing.
#[allow(clippy::len_without_is_empty)]
pub trait DiskFile: Send + Sync + 'static {
    fn len(&self) -> io::Result<u64>;
    /// Appends all of `bytes` at the end of the file.
    fn append(&self, bytes: &[u8]) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Cuts the file to `len` bytes and makes that durable.
    fn truncate(&self, len: u64) -> io::Result<()>;
}

/// Real files in one directory.
#[derive(Clone, Debug)]
pub struct FsDisk {
    dir: PathBuf,
}

impl FsDisk {
    /// Uses `dir`, creating it if needed.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<FsDisk> {
        fs::create_dir_all(dir.as_ref())?;
        Ok(FsDisk {
            dir: dir.as_ref().to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl Disk for FsDisk {
    type File = File;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn open(&self, name: &str) -> io::Result<File> {
        fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(self.dir.join(name))
    }

    fn create(&self, name: &str) -> io::Result<File> {
        let file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(self.dir.join(name))?;
        self.sync_dir()?;
        Ok(file)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))?;
        self.sync_dir()
    }
}

impl DiskFile for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        // Opened with O_APPEND: one write(2) per call lands at the end as a unit.
        (&*self).write_all(bytes)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        self.sync_all()
    }
}

/// An in-memory disk that remembers which bytes were synced, so a test (or the simulator) can
/// [`crash`](MemDisk::crash) it and keep only what a real disk would have kept.
#[derive(Clone, Default)]
pub struct MemDisk {
    files: Arc<Mutex<BTreeMap<String, MemFile>>>,
}

/// A file of a [`MemDisk`].
#[derive(Clone, Default)]
pub struct MemFile {
    inner: Arc<Mutex<MemFileState>>,
}

#[derive(Default)]
struct MemFileState {
    bytes: Vec<u8>,
    synced_len: usize,
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// Loses every unsynced byte of every file, as power loss would.
    pub fn crash(&self) {
        let files = self.files.lock().expect("mem disk lock poisoned");
        for file in files.values() {
            let mut state = file.inner.lock().expect("mem file lock poisoned");
            let synced = state.synced_len;
            state.bytes.truncate(synced);
        }
    }

    /// The current bytes of a file (tests use it to damage files).
    pub fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        let files = self.files.lock().expect("mem disk lock poisoned");
        files
            .get(name)
            .map(|f| f.inner.lock().expect("mem file lock poisoned").bytes.clone())
    }

    /// Replaces a file's bytes, all counted as synced (tests use it to damage files).
    pub fn set_bytes(&self, name: &str, bytes: Vec<u8>) {
        let files = self.files.lock().expect("mem disk lock poisoned");
        if let Some(file) = files.get(name) {
            let mut state = file.inner.lock().expect("mem file lock poisoned");
            state.synced_len = bytes.len();
            state.bytes = bytes;
        }
    }
}

impl Disk for MemDisk {
    type File = MemFile;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self
            .files
            .lock()
            .expect("mem disk lock poisoned")
            .keys()
            .cloned()
            .collect())
    }

    fn open(&self, name: &str) -> io::Result<MemFile> {
        let files = self.files.lock().expect("mem disk lock poisoned");
        files
            .get(name)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }

    fn create(&self, name: &str) -> io::Result<MemFile> {
        let mut files = self.files.lock().expect("mem disk lock poisoned");
        if files.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, name.to_string()));
        }
        let file = MemFile::default();
        files.insert(name.to_string(), file.clone());
        Ok(file)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut files = self.files.lock().expect("mem disk lock poisoned");
        files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }
}

impl DiskFile for MemFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.inner.lock().expect("mem file lock poisoned").bytes.len() as u64)
    }

    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        self.inner
            .lock()
            .expect("mem file lock poisoned")
            .bytes
            .extend_from_slice(bytes);
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let state = self.inner.lock().expect("mem file lock poisoned");
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start.checked_add(buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        let source = state.bytes.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(source);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.inner.lock().expect("mem file lock poisoned");
        state.synced_len = state.bytes.len();
        Ok(())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut state = self.inner.lock().expect("mem file lock poisoned");
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        state.bytes.truncate(len);
        state.synced_len = state.synced_len.min(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_disk_crash_keeps_only_synced_bytes() {
        let disk = MemDisk::new();
        let file = disk.create("a").unwrap();
        file.append(b"durable").unwrap();
        file.sync().unwrap();
        file.append(b"-volatile").unwrap();
        assert_eq!(file.len().unwrap(), 16);
        disk.crash();
        assert_eq!(disk.bytes("a").unwrap(), b"durable");
    }

    #[test]
    fn fs_disk_appends_reads_truncates_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FsDisk::new(dir.path()).unwrap();
        let file = disk.create("seg").unwrap();
        assert!(
            disk.create("seg").is_err(),
            "create must not clobber an existing file"
        );
        file.append(b"hello ").unwrap();
        file.append(b"world").unwrap();
        file.sync().unwrap();
        let mut buf = [0u8; 5];
        DiskFile::read_at(&file, 6, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        file.truncate(5).unwrap();
        assert_eq!(file.len().unwrap(), 5);
        assert!(
            DiskFile::read_at(&file, 3, &mut buf).is_err(),
            "read past the end must fail"
        );
        assert_eq!(disk.list().unwrap(), vec!["seg".to_string()]);
        disk.remove("seg").unwrap();
        assert!(disk.list().unwrap().is_empty());
    }
}
