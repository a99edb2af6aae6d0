//! The delivery cursor: how far into the audit trail the webhook has acknowledged everything.
//!
//! `incident-sink.cursor` in the data directory, one of `wire`'s frames (length, crc32, version) holding
//! a magic, its own format number, the sequence of the next trail entry to consider and the hash of the
//! entry before it. It is written to a temporary file, synced, renamed into place and the directory
//! synced, so a crash leaves the old cursor or the new one, never half of either; and it is written only
//! after the receiver answered 2xx for everything below it, so a crash can only make the node send
//! again what was acknowledged (with the same idempotency keys), never skip what was not.
//!
//! The hash ties the cursor to one trail: a cursor that does not match the entry it points after (the
//! audit directory was replaced) is not trusted, and delivery starts again from the trail's beginning.

use std::io::Write;
use std::path::{Path, PathBuf};

use audit::Hash;
use serde::{Deserialize, Serialize};
use storage::codec;

const MAGIC: [u8; 8] = *b"DOMINCUR";
const CURSOR_FORMAT: u8 = 1;
/// Bound on the cursor frame's payload (it is about 50 bytes).
const PAYLOAD_BYTES_MAX: usize = 256;

/// Everything in the trail before `next_sequence` was delivered (or announced in a gap notice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub next_sequence: u64,
    /// The hash of entry `next_sequence - 1` (`audit::entry::GENESIS` at 0): the next entry's `previous`.
    pub previous: Hash,
}

impl Cursor {
    pub const START: Cursor = Cursor {
        next_sequence: 0,
        previous: audit::entry::GENESIS,
    };
}

#[derive(Serialize, Deserialize)]
struct Record {
    magic: [u8; 8],
    format: u8,
    cursor: Cursor,
}

pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("incident-sink.cursor")
}

/// The cursor in `path`; `Ok(None)` if there is none yet; an error naming what is wrong if it does not
/// verify.
pub fn load(path: &Path) -> Result<Option<Cursor>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    if bytes.len() > codec::FRAME_HEADER_BYTES + PAYLOAD_BYTES_MAX {
        return Err(format!(
            "{}: {} bytes, too long for a cursor",
            path.display(),
            bytes.len()
        ));
    }
    let payload = codec::open_frame(&bytes).map_err(|error| format!("{}: {error}", path.display()))?;
    let record: Record = codec::decode(payload).map_err(|error| format!("{}: {error}", path.display()))?;
    if record.magic != MAGIC {
        return Err(format!("{}: not an incident cursor", path.display()));
    }
    if record.format != CURSOR_FORMAT {
        return Err(format!(
            "{}: cursor format {} (this build reads {CURSOR_FORMAT})",
            path.display(),
            record.format
        ));
    }
    Ok(Some(record.cursor))
}

/// Replaces the cursor in `path`, durably and atomically.
pub fn store(path: &Path, cursor: Cursor) -> std::io::Result<()> {
    let record = Record {
        magic: MAGIC,
        format: CURSOR_FORMAT,
        cursor,
    };
    let mut bytes = Vec::new();
    codec::encode_frame(&record, None::<&()>, PAYLOAD_BYTES_MAX, &mut bytes)
        .map_err(std::io::Error::other)?;
    let temporary = path.with_extension("cursor.tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_a_round_trip_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        assert_eq!(load(&path), Ok(None));
        let cursor = Cursor {
            next_sequence: 42,
            previous: [7; 32],
        };
        store(&path, cursor).unwrap();
        assert_eq!(load(&path), Ok(Some(cursor)));
        let later = Cursor {
            next_sequence: 43,
            previous: [8; 32],
        };
        store(&path, later).unwrap();
        assert_eq!(load(&path), Ok(Some(later)));
        assert!(!path.with_extension("cursor.tmp").exists());

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let error = load(&path).unwrap_err();
        assert!(error.contains("incident-sink.cursor"), "{error}");

        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        assert!(load(&path).unwrap_err().contains("too long"));
        std::fs::write(&path, b"").unwrap();
        assert!(load(&path).is_err());
    }
}
