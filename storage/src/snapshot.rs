//! Snapshots: a consistent copy of a group's tables, framed for storage and transfer.
//!
//! A snapshot is a stream of frames (see [`crate::codec`]): a header (last applied log id,
//! membership, policy version), then chunks of table items, each at most
//! [`SNAPSHOT_CHUNK_BYTES_MAX`] bytes of payload, then a trailer with the counts. Every frame
//! carries its own crc32 and format version, so a receiver can check each chunk as it arrives
//! ([`SnapshotData::from_chunks`]) and a reader bounds every length before allocating.
//!
//! It is built from a single read view of the backend, so it is one point in the log; installing
//! it replaces every table in one durable batch, after verifying every frame and every sealed
//! value, so a damaged snapshot is refused before anything changes.

use std::ops::Range;

use serde::Deserialize;
use serde::Serialize;

use crate::apply;
use crate::backend::BackendView;
use crate::backend::Table;
use crate::backend::WriteBatch;
use crate::codec;
use crate::codec::FRAME_HEADER_BYTES;
use crate::codec::FrameHeader;
use crate::error::SnapshotError;
use crate::error::StateMachineError;

/// Items are packed into a chunk until its payload would pass this size.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;

/// Bound on any frame's payload when reading (a single large item may exceed the chunk target).
const FRAME_PAYLOAD_BYTES_MAX: usize = 4 << 20;

/// What the snapshot is a copy of; the log id and membership are encoded by the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub last_log_id: Vec<u8>,
    pub membership: Vec<u8>,
    pub policy_version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotItem {
    table: Table,
    key: Vec<u8>,
    /// The sealed value exactly as stored.
    value: Vec<u8>,
}

/// The frames of a snapshot; the variant order is part of the format (append only).
#[derive(Debug, Serialize, Deserialize)]
enum SnapshotFrame {
    Header(SnapshotHeader),
    Chunk { sequence: u64, items: Vec<SnapshotItem> },
    Trailer { chunks: u64, items: u64 },
}

/// A verified snapshot: its bytes and where each frame is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotData {
    bytes: Vec<u8>,
    frames: Vec<Range<usize>>,
    header: SnapshotHeader,
}

impl SnapshotData {
    /// The snapshot's frames, each a bounded, self-checking chunk to send.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        self.frames.iter().map(|range| &self.bytes[range.clone()])
    }

    /// Reassembles a snapshot from received chunks, checking each one.
    pub fn from_chunks<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<SnapshotData, SnapshotError> {
        let mut bytes = Vec::new();
        for chunk in chunks {
            // Check each chunk on arrival so a damaged transfer fails at the damaged chunk.
            let offset = bytes.len() as u64;
            check_one_frame(chunk).map_err(|reason| SnapshotError::Corrupt {
                offset,
                frame: 0,
                reason,
            })?;
            bytes.extend_from_slice(chunk);
        }
        SnapshotData::from_bytes(bytes)
    }

    /// Verifies a whole snapshot (every frame, the order and the counts).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<SnapshotData, SnapshotError> {
        let (frames, header) = verify(&bytes, |_| Ok(()))?;
        Ok(SnapshotData {
            bytes,
            frames,
            header,
        })
    }

    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The batch that replaces every table with this snapshot's content, each value re-verified.
    pub fn install_batch(&self) -> Result<WriteBatch, SnapshotError> {
        let mut batch = WriteBatch {
            clear_first: true,
            durable: true,
            ..WriteBatch::default()
        };
        verify(&self.bytes, |item| {
            codec::verify_seal(&item.key, &item.value)
                .map_err(|e| format!("item in table {}: {e}", item.table.name()))?;
            batch.changes.insert((item.table, item.key), Some(item.value));
            Ok(())
        })?;
        Ok(batch)
    }
}

fn check_one_frame(chunk: &[u8]) -> Result<(), String> {
    let header_bytes: &[u8; FRAME_HEADER_BYTES] = chunk
        .get(..FRAME_HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or("chunk shorter than a frame header")?;
    let header = FrameHeader::parse(header_bytes);
    if header.payload_len as usize > FRAME_PAYLOAD_BYTES_MAX {
        return Err(format!("frame length {} exceeds the bound", header.payload_len));
    }
    codec::open_frame(chunk).map(|_| ()).map_err(|e| e.to_string())
}

/// Walks every frame, checking checksums, order and counts; hands each item to `visit`.
fn verify(
    bytes: &[u8],
    mut visit: impl FnMut(SnapshotItem) -> Result<(), String>,
) -> Result<(Vec<Range<usize>>, SnapshotHeader), SnapshotError> {
    let mut frames = Vec::new();
    let mut header = None;
    let mut items_seen = 0u64;
    let mut offset = 0usize;
    while offset < bytes.len() {
        let frame_number = frames.len() as u64;
        let corrupt = |reason: String| SnapshotError::Corrupt {
            offset: offset as u64,
            frame: frame_number,
            reason,
        };
        let header_bytes: &[u8; FRAME_HEADER_BYTES] = bytes
            .get(offset..offset + FRAME_HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| corrupt("truncated frame header".into()))?;
        let frame_header = FrameHeader::parse(header_bytes);
        if frame_header.payload_len as usize > FRAME_PAYLOAD_BYTES_MAX {
            return Err(corrupt(format!(
                "frame length {} exceeds the bound",
                frame_header.payload_len
            )));
        }
        let end = offset + frame_header.frame_len() as usize;
        let frame = bytes
            .get(offset..end)
            .ok_or_else(|| corrupt("truncated frame".into()))?;
        let payload = codec::open_frame(frame).map_err(|e| corrupt(e.to_string()))?;
        let decoded: SnapshotFrame = codec::decode(payload).map_err(|e| corrupt(e.to_string()))?;
        match (decoded, header.is_some()) {
            (SnapshotFrame::Header(h), false) if frame_number == 0 => header = Some(h),
            (SnapshotFrame::Chunk { sequence, items }, true) if sequence + 1 == frame_number => {
                for item in items {
                    items_seen += 1;
                    visit(item).map_err(corrupt)?;
                }
            }
            (SnapshotFrame::Trailer { chunks, items }, true) => {
                if chunks + 1 != frame_number || items != items_seen {
                    return Err(corrupt(format!(
                        "trailer counts {chunks} chunks/{items} items, found {}/{items_seen}",
                        frame_number - 1
                    )));
                }
                if end != bytes.len() {
                    return Err(corrupt("bytes after the trailer".into()));
                }
                frames.push(offset..end);
                return Ok((frames, header.expect("matched above")));
            }
            (other, _) => return Err(corrupt(format!("unexpected frame {}", frame_kind(&other)))),
        }
        frames.push(offset..end);
        offset = end;
    }
    Err(SnapshotError::Corrupt {
        offset: offset as u64,
        frame: frames.len() as u64,
        reason: "snapshot ends without a trailer".into(),
    })
}

fn frame_kind(frame: &SnapshotFrame) -> &'static str {
    match frame {
        SnapshotFrame::Header(_) => "header",
        SnapshotFrame::Chunk { .. } => "chunk out of order",
        SnapshotFrame::Trailer { .. } => "trailer",
    }
}

/// Builds a snapshot of every table as seen by `view`.
pub fn build(view: &impl BackendView, header: SnapshotHeader) -> Result<SnapshotData, StateMachineError> {
    let mut writer = Writer::default();
    writer.frame(&SnapshotFrame::Header(header))?;
    for table in Table::ALL {
        view.scan_prefix(table, &[], &mut |key, value| writer.item(table, key, value))?;
    }
    writer.flush_chunk()?;
    let (chunks, items) = (writer.chunks, writer.items);
    writer.frame(&SnapshotFrame::Trailer { chunks, items })?;
    Ok(SnapshotData::from_bytes(writer.bytes)?)
}

/// Reads the header fields a snapshot needs from the view it is built from.
pub fn header_from_view(view: &impl BackendView) -> Result<SnapshotHeader, StateMachineError> {
    Ok(SnapshotHeader {
        last_log_id: apply::read_meta(view, apply::META_APPLIED)?.unwrap_or_default(),
        membership: apply::read_meta(view, apply::META_MEMBERSHIP)?.unwrap_or_default(),
        policy_version: apply::read_policy_version(view)?,
    })
}

#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
    pending: Vec<SnapshotItem>,
    pending_bytes: usize,
    chunks: u64,
    items: u64,
}

impl Writer {
    fn frame(&mut self, frame: &SnapshotFrame) -> Result<(), StateMachineError> {
        codec::encode_frame(frame, None::<&()>, FRAME_PAYLOAD_BYTES_MAX, &mut self.bytes)
            .map_err(|e| StateMachineError::Backend(format!("snapshot frame: {e}")))
    }

    fn item(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StateMachineError> {
        let size = key.len() + value.len() + 16;
        if !self.pending.is_empty() && self.pending_bytes + size > SNAPSHOT_CHUNK_BYTES_MAX {
            self.flush_chunk()?;
        }
        self.pending.push(SnapshotItem {
            table,
            key: key.to_vec(),
            value: value.to_vec(),
        });
        self.pending_bytes += size;
        self.items += 1;
        Ok(())
    }

    fn flush_chunk(&mut self) -> Result<(), StateMachineError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let sequence = self.chunks;
        self.frame(&SnapshotFrame::Chunk { sequence, items })?;
        self.chunks += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::MemBackend;

    fn filled_backend(records: usize) -> MemBackend {
        let mut backend = MemBackend::new();
        let mut batch = WriteBatch::default();
        for i in 0..records {
            let key = format!("key-{i:06}").into_bytes();
            let value = codec::seal(&key, &vec![i as u8; 3000]).unwrap();
            batch.changes.insert((Table::Records, key), Some(value));
        }
        backend.commit(batch).unwrap();
        backend
    }

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            last_log_id: vec![1, 2],
            membership: vec![3],
            policy_version: 9,
        }
    }

    #[test]
    fn chunks_are_bounded_and_reassemble_into_the_same_tables() {
        let source = filled_backend(1000);
        let data = build(&source.view().unwrap(), header()).unwrap();
        let chunks: Vec<&[u8]> = data.chunks().collect();
        assert!(chunks.len() > 3, "3 MB must take several chunks");
        assert!(
            chunks.iter().all(|c| c.len() <= SNAPSHOT_CHUNK_BYTES_MAX + 4096),
            "every chunk is bounded"
        );
        let received = SnapshotData::from_chunks(chunks).unwrap();
        assert_eq!(received.header(), &header());
        let mut target = MemBackend::new();
        target.commit(received.install_batch().unwrap()).unwrap();
        let rebuilt = build(&target.view().unwrap(), header()).unwrap();
        assert_eq!(
            rebuilt.as_bytes(),
            data.as_bytes(),
            "install then rebuild gives identical bytes"
        );
    }

    #[test]
    fn damage_anywhere_is_refused() {
        let data = build(&filled_backend(20).view().unwrap(), header()).unwrap();
        let bytes = data.as_bytes().to_vec();
        let mut rng = 0x5eed_u64;
        for _ in 0..300 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let bit = (rng >> 11) as usize % (bytes.len() * 8);
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SnapshotData::from_bytes(damaged).is_err(),
                "bit {bit} flip was accepted"
            );
        }
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                SnapshotData::from_bytes(bytes[..cut].to_vec()).is_err(),
                "truncation at {cut} was accepted"
            );
        }
    }
}
