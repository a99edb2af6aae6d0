//! Advice to the kernel about file pages a node will not read again soon.
//!
//! A received snapshot's spool is written once, read back once by the install ahead, synced, and then
//! kept only as the current snapshot (read again only if this replica sends it to another). Left in
//! the page cache, its gigabyte pushes out pages that are read (the state machine's, the log's), and
//! each new page the transfer writes is a page the kernel must find and, on a virtual machine, that the
//! host may have to back again. Dropped once synced and read, its pages are reused by the rest of the
//! transfer instead (docs/performance.md, "Migrating a legacy group at volume").
//!
//! The install's fresh store is the other gigabyte a copy writes, and it too is dropped once written
//! back, as the install goes: the install reads little of it back (redb's own cache and the gathered
//! writes serve it), and kept, every page of it was a new page. Measured beside eight writers
//! (2026-12-06): the second copy's install threads 3.1–3.3 CPU-s instead of 5.1, its receive 4.0
//! instead of 5.4–6.1, the copy 75–76 MB/s instead of 52–59. Once installed, the store is read from
//! the disk until redb's cache and the page cache warm again.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Asks the kernel to drop the cached pages of `file`'s first `len` bytes. They must be clean (synced)
/// to be dropped; dirty ones are left alone. Advice only: a refusal is logged, never an error.
pub fn drop_cached(file: &File, len: u64) {
    let Ok(len) = libc::off_t::try_from(len) else {
        return;
    };
    advise_dontneed(file, len);
}

/// As [`drop_cached`], over the whole file, however long it is now.
pub fn drop_all_cached(file: &File) {
    // A length of 0 means up to the file's end.
    advise_dontneed(file, 0);
}

fn advise_dontneed(file: &File, len: libc::off_t) {
    // SAFETY: posix_fadvise reads no memory of ours; the descriptor is open for the call's duration.
    let result = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, len, libc::POSIX_FADV_DONTNEED) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::from_raw_os_error(result), "posix_fadvise(DONTNEED) refused");
    }
}

/// Pages of `file`'s first `len` bytes in the page cache: tests' witness of what was dropped.
#[cfg(test)]
pub(crate) fn resident_pages(file: &File, len: usize) -> usize {
    let page = 4096;
    // SAFETY: a read-only shared mapping of an open file, never dereferenced, unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    let mut residency = vec![0u8; len.div_ceil(page)];
    // SAFETY: `residency` has one byte per page of the mapping.
    let result = unsafe { libc::mincore(map, len, residency.as_mut_ptr()) };
    // SAFETY: the mapping made above, of `len` bytes.
    unsafe { libc::munmap(map, len) };
    assert_eq!(result, 0);
    residency.iter().filter(|byte| **byte & 1 == 1).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn synced_pages_are_dropped_from_the_cache_and_read_back_unchanged() {
        use std::io::{Read, Seek};
        let len = 1 << 20;
        // Beside the sources, not in a temporary directory that may be tmpfs (whose pages are the file).
        // An unnamed file: nothing is left behind.
        let mut file = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        file.write_all(&vec![7u8; len]).unwrap();
        file.sync_data().unwrap();
        assert!(
            resident_pages(&file, len) > 0,
            "just written, the pages are cached"
        );
        drop_cached(&file, len as u64);
        assert_eq!(resident_pages(&file, len), 0, "synced, they were dropped");
        drop_cached(&file, u64::MAX); // beyond `off_t`: ignored
        file.rewind().unwrap();
        file.write_all(&vec![7u8; len]).unwrap();
        file.sync_data().unwrap();
        assert!(resident_pages(&file, len) > 0, "written again, cached again");
        drop_all_cached(&file);
        assert_eq!(resident_pages(&file, len), 0, "dropped to the file's end");
        file.rewind().unwrap();
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back, vec![7u8; len]);
    }
}
