//! The file operations the log needs, and nothing more.
//!
//! The log's logic (framing, indexing, recovery, purge) is written against [`Disk`] so the same
//! code runs on real files in production ([`FsDisk`]) and on a simulated disk in tests and in the
//! simulator ([`MemDisk`], which can lose unsynced bytes the way a crash does). A disk is a flat
//! directory of named files. The log writes each file front to back at offsets it tracks itself,
//! into space it first fills with zeros ([`DiskFile::extend_zeroed`]): overwriting bytes that are
//! already allocated lets `fdatasync` flush the data alone, where growing the file would also
//! commit the new size to the file system's journal on every sync (about half the cost of a small
//! sync on ext4, measured in `benches/storage.rs`'s baseline).
//!
//! Contract every implementation keeps:
//! * `create` makes the new name durable (the directory entry survives a crash);
//! * `sync` makes every byte written before the call durable;
//! * `write_at`, `read_at` and `sync` may run concurrently on one file from different threads.

use std::collections::BTreeMap;
use std::fs;
use std::fs::File;
use std::io;
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
    /// How far ahead of its records the log should fill the file it writes with zeros
    /// ([`DiskFile::extend_zeroed`]); 0 where overwriting is no cheaper to sync than growing.
    fn preallocation_bytes(&self) -> u64 {
        0
    }
}

/// One open file.
// `len` is a size that can fail to be read; an `is_empty` would add nothing.
#[allow(clippy::len_without_is_empty)]
pub trait DiskFile: Send + Sync + 'static {
    fn len(&self) -> io::Result<u64>;
    /// Writes all of `bytes` at `offset`, growing the file if they reach past its end.
    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Appends all of `bytes` at the end of the file.
    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        self.write_at(self.len()?, bytes)
    }
    /// Grows the file to `len` bytes by writing zeros (real blocks, not a hole, so later writes
    /// into them change no file metadata). Not synced: the next `sync` covers it.
    fn extend_zeroed(&self, len: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut offset = self.len()?;
        while offset < len {
            let chunk = (len - offset).min(ZEROS.len() as u64);
            self.write_at(offset, &ZEROS[..chunk as usize])?;
            offset += chunk;
        }
        Ok(())
    }
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync).
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
        // Not O_APPEND: Linux would ignore the offsets of positioned writes.
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(name))
    }

    fn create(&self, name: &str) -> io::Result<File> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.join(name))?;
        self.sync_dir()?;
        Ok(file)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))?;
        self.sync_dir()
    }

    /// A few MiB: writing the zeros costs about as much wherever they go, and fewer, larger
    /// extensions mean fewer syncs that must also commit a new file size.
    fn preallocation_bytes(&self) -> u64 {
        4 << 20
    }
}

impl DiskFile for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        FileExt::write_all_at(self, bytes, offset)
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
    preallocation_bytes: u64,
}

/// A file of a [`MemDisk`].
#[derive(Clone, Default)]
pub struct MemFile {
    inner: Arc<Mutex<MemFileState>>,
}

#[derive(Default)]
struct MemFileState {
    bytes: Vec<u8>,
    /// The length of the file as of the last sync.
    synced_len: usize,
    /// The synced bytes that writes since the last sync overwrote, oldest first: a crash puts
    /// them back.
    overwritten: Vec<(usize, Vec<u8>)>,
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// A disk on which the log preallocates `bytes` at a time, as it does on real files, so tests
    /// and the simulator can crash it with a zero tail.
    pub fn preallocating(bytes: u64) -> MemDisk {
        MemDisk {
            preallocation_bytes: bytes,
            ..MemDisk::default()
        }
    }

    /// Loses every unsynced byte of every file, as power loss would.
    pub fn crash(&self) {
        let files = self.files.lock().expect("mem disk lock poisoned");
        for file in files.values() {
            let mut state = file.inner.lock().expect("mem file lock poisoned");
            let state = &mut *state;
            for (offset, old) in state.overwritten.drain(..).rev() {
                state.bytes[offset..offset + old.len()].copy_from_slice(&old);
            }
            state.bytes.truncate(state.synced_len);
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
            state.overwritten.clear();
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

    fn preallocation_bytes(&self) -> u64 {
        self.preallocation_bytes
    }
}

impl DiskFile for MemFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.inner.lock().expect("mem file lock poisoned").bytes.len() as u64)
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.inner.lock().expect("mem file lock poisoned");
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
        state.overwritten.clear();
        Ok(())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut state = self.inner.lock().expect("mem file lock poisoned");
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // Like the real one (ftruncate + fsync), this makes every earlier write durable too.
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
    fn mem_disk_crash_undoes_unsynced_overwrites_of_preallocated_space() {
        let disk = MemDisk::new();
        let file = disk.create("a").unwrap();
        file.append(b"head").unwrap();
        file.extend_zeroed(12).unwrap();
        file.sync().unwrap();
        assert_eq!(disk.bytes("a").unwrap(), b"head\0\0\0\0\0\0\0\0");
        file.write_at(4, b"sync").unwrap();
        file.sync().unwrap();
        file.write_at(8, b"lost").unwrap();
        file.write_at(10, b"grown").unwrap();
        disk.crash();
        assert_eq!(
            disk.bytes("a").unwrap(),
            b"headsync\0\0\0\0",
            "only the synced writes survive, at the synced length"
        );
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
