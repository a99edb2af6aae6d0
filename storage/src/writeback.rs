//! Bulk files sent to the disk as they are written, a window at a time, instead of all at once when
//! they are synced.
//!
//! A snapshot's spool (a build's, or one being received) and a fresh install's store are a gigabyte
//! each at volume. Left to the kernel, their pages stay dirty until its background writeback or the
//! file's sync sends them, hundreds of megabytes at once. Meanwhile every write of every group on
//! the machine waits for an fsync of its log, and on ext4 (data=ordered) an fsync commits the
//! filesystem's journal, which first waits for the data of every block allocated since the last
//! commit, whichever file it belongs to. Measured: three builds' 1.1-GB spools, written and synced
//! at once, stalled the writes of the cluster beside them for 0.4–1 s (docs/performance.md,
//! "Migrating a legacy group at volume").
//!
//! So a bulk writer starts the writeback of each window it fills ([`Writeback::written`]), without
//! waiting for it, as RocksDB's `bytes_per_sync` does; a thread that may wait can also wait for a
//! file's pages to be on the disk ([`wait_written`]) before it drops them from the cache. Neither is
//! a durability point: the file's data and metadata are durable only once it is synced, as before.

use std::fs::File;

/// Bytes written between two writeback starts.
pub const WRITEBACK_WINDOW_BYTES: u64 = 8 << 20;

/// Where a file written front to back has had its writeback started.
#[derive(Debug, Default)]
pub struct Writeback {
    started_to: u64,
}

impl Writeback {
    /// After `file` was written up to `end`: starts the writeback of what was written since the last
    /// start, once that is a whole window. Does not wait for the pages to be written (it may run on
    /// an async worker), only, when the device's request queue is full, for room in it.
    pub fn written(&mut self, file: &File, end: u64) {
        if end < self.started_to.saturating_add(WRITEBACK_WINDOW_BYTES) {
            return;
        }
        start(file, self.started_to, end);
        self.started_to = end;
    }

    /// How far writeback was started.
    pub fn started_to(&self) -> u64 {
        self.started_to
    }
}

/// Starts sending `file`'s dirty pages in `from..to` to the disk, without waiting for them to be
/// written. Advice: where the system has no such call, or refuses, nothing happens (the data is
/// written when it is synced).
fn start(file: &File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (
            libc::off64_t::try_from(from),
            libc::off64_t::try_from(to.saturating_sub(from)),
        ) else {
            return;
        };
        // SAFETY: sync_file_range reads no memory of ours; the descriptor is open for the call.
        let result =
            unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
        if result != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range(WRITE) refused");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to);
}

/// Sends every dirty page of `file` to the disk and waits until they, and any already on their way,
/// are written: its data, not its metadata (no journal commit), so it is no durability point. Where
/// the system has no such call, the file's data is synced instead.
pub fn wait_written(file: &File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: as above; offset 0 and length 0 mean the whole file.
        let result = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_cache;
    use std::io::Write;

    #[test]
    fn writeback_starts_only_at_whole_windows() {
        let file = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let mut writeback = Writeback::default();
        writeback.written(&file, WRITEBACK_WINDOW_BYTES - 1);
        assert_eq!(writeback.started_to(), 0, "less than a window: not yet");
        writeback.written(&file, WRITEBACK_WINDOW_BYTES + 10);
        assert_eq!(writeback.started_to(), WRITEBACK_WINDOW_BYTES + 10);
        writeback.written(&file, 2 * WRITEBACK_WINDOW_BYTES);
        assert_eq!(
            writeback.started_to(),
            WRITEBACK_WINDOW_BYTES + 10,
            "a window counts from the last start"
        );
    }

    #[test]
    fn pages_waited_for_are_clean_and_can_be_dropped() {
        // Beside the sources, not in a temporary directory that may be tmpfs (never written back).
        let mut file = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let len = 1 << 20;
        file.write_all(&vec![3u8; len]).unwrap();
        wait_written(&file).unwrap();
        page_cache::drop_cached(&file, len as u64);
        assert_eq!(
            page_cache::resident_pages(&file, len),
            0,
            "written back (not synced), the pages were clean and dropped"
        );
    }
}
