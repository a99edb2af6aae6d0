//! Typed errors of the storage crate, one enum per surface.
//!
//! Corruption is never a panic and never a silent skip: it is a [`LogError::Corrupt`] (or its
//! state-machine and snapshot counterparts) that names the file, the byte offset and, when the
//! damaged bytes still tell us, the replica group. Such an error means "refuse to start": the
//! operator has to restore the replica from its peers.

use std::io;

/// Errors of the encoding layer, whose codec `wire` holds.
pub use wire::codec::CodecError;

/// Errors of the node-wide Raft log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The operating system failed an operation; retrying may help only after operator action.
    #[error("log i/o failed on {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },

    /// Bytes on disk are not what we wrote. The node must not serve the affected groups.
    #[error("log corrupt in {file} at offset {offset} (group {}): {reason}", display_group(*group))]
    Corrupt {
        file: String,
        offset: u64,
        /// The group the damaged record belonged to, when it can still be told.
        group: Option<u64>,
        reason: String,
    },

    /// The log has fewer entries than the durably recorded commit index: acknowledged data is gone
    /// (for example the file was truncated at a record boundary by something other than us).
    #[error("group {group} lost committed entries: committed index {committed} but the log ends at {last:?}")]
    LostCommittedEntries {
        group: u64,
        committed: u64,
        last: Option<u64>,
    },

    /// An earlier write or sync failed; after a failed fdatasync the page cache can no longer be
    /// trusted (PostgreSQL "fsyncgate"), so the log refuses all further work until reopened.
    #[error("log is failed after an earlier i/o error: {0}")]
    Poisoned(String),

    /// The caller broke the log's contract (e.g. a gap in appended indexes).
    #[error("invalid log operation on group {group}: {reason}")]
    Invalid { group: u64, reason: String },
}

fn display_group(group: Option<u64>) -> String {
    match group {
        Some(group) => group.to_string(),
        None => "unknown".to_string(),
    }
}

impl LogError {
    pub(crate) fn io(file: impl Into<String>, source: io::Error) -> Self {
        LogError::Io {
            file: file.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        file: impl Into<String>,
        offset: u64,
        group: Option<u64>,
        reason: impl Into<String>,
    ) -> Self {
        LogError::Corrupt {
            file: file.into(),
            offset,
            group,
            reason: reason.into(),
        }
    }
}

impl From<LogError> for io::Error {
    fn from(error: LogError) -> Self {
        let kind = match &error {
            LogError::Io { source, .. } => source.kind(),
            LogError::Corrupt { .. } | LogError::LostCommittedEntries { .. } => io::ErrorKind::InvalidData,
            LogError::Poisoned(_) => io::ErrorKind::Other,
            LogError::Invalid { .. } => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, error)
    }
}

/// Errors of the state machine and its backing store.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    #[error("state machine store failed: {0}")]
    Backend(String),

    /// A stored value failed its checksum or did not decode: refuse to serve it.
    #[error("state machine corrupt in {location}: {reason}")]
    Corrupt { location: String, reason: String },

    #[error("snapshot rejected: {0}")]
    Snapshot(#[from] SnapshotError),

    #[error("state machine worker stopped")]
    WorkerStopped,

    /// Every handle on the state machine was dropped while a snapshot build ran: the group was closed
    /// (its replica purged, or its node stopping), and nobody will take the snapshot.
    #[error("the state machine was closed; its snapshot build was given up")]
    Closed,
}

impl From<StateMachineError> for io::Error {
    fn from(error: StateMachineError) -> Self {
        let kind = match &error {
            StateMachineError::Corrupt { .. } | StateMachineError::Snapshot(_) => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

/// Errors of snapshot encoding, transfer and verification.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A frame of the snapshot stream is damaged; `offset` is its position in the stream.
    #[error("snapshot corrupt at offset {offset} (frame {frame}): {reason}")]
    Corrupt { offset: u64, frame: u64, reason: String },

    /// The snapshot does not match the metadata openraft asked us to install.
    #[error("snapshot does not match its metadata: {0}")]
    MetaMismatch(String),

    /// Reading or writing a snapshot's file failed.
    #[error("snapshot file {file}: {reason}")]
    Io { file: String, reason: String },

    /// A snapshot grew past the bound of the place it is kept in.
    #[error("snapshot of more than {bound} bytes refused (it reached {bytes})")]
    TooLarge { bytes: u64, bound: u64 },
}
