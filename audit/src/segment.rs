//! Segment files and reading their frames.
//!
//! A trail is a directory of segments named by the sequence of their first entry,
//! `audit-00000000000000000042.log`, each a header frame and entry frames. Frames are read one at a time
//! with their length bounded before anything is allocated for them, so a damaged or hostile file costs at
//! most one bounded frame of memory.
//!
//! Reading tells three endings apart: the file ends at a frame boundary (clean); it ends inside a frame
//! (torn: a write cut short by a crash, or the file was truncated); or a frame does not verify (damaged).
//! The writer cuts a torn tail when it reopens, and only if no valid frame follows the damage: a frame that
//! verifies after it means the damage is in the middle, and that is refused, not cut.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use wire::codec::{self, FRAME_HEADER_BYTES, FrameHeader};

use crate::entry::{ENTRY_PAYLOAD_BYTES_MAX, Hash, SegmentHeader, SignedEntry, hash};

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".log";

pub fn segment_name(first_sequence: u64) -> String {
    format!("{PREFIX}{first_sequence:020}{SUFFIX}")
}

/// The first sequence a segment's file name gives, if it is a segment's name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, by first sequence.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            segments.push((first, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// One step of reading a segment.
#[derive(Debug)]
pub enum Frame {
    /// A frame that verified: its payload, and where it started.
    Whole { offset: u64, payload: Vec<u8> },
    /// The file ends at a frame boundary.
    End,
    /// The file ends inside the frame starting at `offset`.
    Torn { offset: u64, reason: String },
    /// The frame at `offset` does not verify.
    Damaged { offset: u64, reason: String },
}

/// Reads a segment's frames in order.
pub struct FrameReader {
    reader: BufReader<File>,
    offset: u64,
}

impl FrameReader {
    pub fn open(path: &Path) -> std::io::Result<FrameReader> {
        FrameReader::open_at(path, 0)
    }

    /// Reads from `offset` on (where a frame starts).
    pub fn open_at(path: &Path, offset: u64) -> std::io::Result<FrameReader> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(FrameReader {
            reader: BufReader::new(file),
            offset,
        })
    }

    /// Where the next frame starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame, its payload bounded by `payload_bytes_max`.
    pub fn next_frame(&mut self, payload_bytes_max: usize) -> std::io::Result<Frame> {
        let offset = self.offset;
        let mut head = [0u8; FRAME_HEADER_BYTES];
        let got = read_up_to(&mut self.reader, &mut head)?;
        if got == 0 {
            return Ok(Frame::End);
        }
        if got < FRAME_HEADER_BYTES {
            return Ok(Frame::Torn {
                offset,
                reason: format!("{got} bytes of a {FRAME_HEADER_BYTES}-byte frame header"),
            });
        }
        let header = FrameHeader::parse(&head);
        if header.payload_len as usize > payload_bytes_max {
            return Ok(Frame::Damaged {
                offset,
                reason: format!(
                    "frame length {} exceeds the bound {payload_bytes_max}",
                    header.payload_len
                ),
            });
        }
        let mut frame = vec![0u8; header.frame_len() as usize];
        frame[..FRAME_HEADER_BYTES].copy_from_slice(&head);
        let got = read_up_to(&mut self.reader, &mut frame[FRAME_HEADER_BYTES..])?;
        if got < header.payload_len as usize {
            return Ok(Frame::Torn {
                offset,
                reason: format!("{got} of the frame's {} payload bytes", header.payload_len),
            });
        }
        self.offset += header.frame_len();
        match codec::open_frame(&frame) {
            Ok(_) => {
                frame.drain(..FRAME_HEADER_BYTES);
                Ok(Frame::Whole {
                    offset,
                    payload: frame,
                })
            }
            Err(error) => Ok(Frame::Damaged {
                offset,
                reason: error.to_string(),
            }),
        }
    }
}

/// Reads until `buffer` is full or the file ends; returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// What the writer finds at the end of the last segment when it reopens the trail.
#[derive(Debug)]
pub struct Tail {
    pub header: SegmentHeader,
    /// The sequence the next entry takes.
    pub next_sequence: u64,
    /// The hash of the last entry (the header's `previous` if the segment has none).
    pub last_hash: Hash,
    /// Entries in the segment.
    pub entries: u64,
    /// Where the last whole entry ends: the file's length once a torn tail is cut.
    pub good_len: u64,
    /// Bytes after `good_len`: an unfinished write to cut.
    pub torn_bytes: u64,
}

/// Why a segment can't be continued.
#[derive(Debug, thiserror::Error)]
#[error("{path}, offset {offset}: {reason}")]
pub struct Corruption {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: String,
}

/// Scans the last segment for where to continue: its last whole entry, and a torn tail to cut. Damage
/// anywhere but at the very end is [`Corruption`], named by file and offset.
pub fn scan_tail(path: &Path) -> std::io::Result<Result<Tail, Corruption>> {
    let corrupt = |offset: u64, reason: String| {
        Ok(Err(Corruption {
            path: path.to_path_buf(),
            offset,
            reason,
        }))
    };
    let file_len = std::fs::metadata(path)?.len();
    let mut reader = FrameReader::open(path)?;
    let header = match reader.next_frame(crate::entry::HEADER_PAYLOAD_BYTES_MAX)? {
        Frame::Whole { payload, .. } => match SegmentHeader::decode(&payload) {
            Ok(header) => header,
            Err(reason) => return corrupt(0, format!("segment header: {reason}")),
        },
        // Headers are written whole and renamed into place, so a bad one is damage, never a torn write.
        Frame::End => return corrupt(0, "empty segment".into()),
        Frame::Torn { reason, .. } | Frame::Damaged { reason, .. } => {
            return corrupt(0, format!("segment header: {reason}"));
        }
    };
    let mut tail = Tail {
        next_sequence: header.first_sequence,
        last_hash: header.previous,
        entries: 0,
        good_len: reader.offset(),
        torn_bytes: 0,
        header,
    };
    loop {
        let (offset, reason) = match reader.next_frame(ENTRY_PAYLOAD_BYTES_MAX)? {
            Frame::End => return Ok(Ok(tail)),
            Frame::Whole { offset, payload } => match SignedEntry::decode(&payload) {
                Ok(signed) if signed.entry.sequence == tail.next_sequence => {
                    // A header or entry claiming the last sequence number there is can only be damage or
                    // forgery: no trail appends 2^64 entries. An error, never an overflow.
                    let Some(next) = tail.next_sequence.checked_add(1) else {
                        return corrupt(
                            offset,
                            format!("entry {} is the last sequence number a trail can hold", u64::MAX),
                        );
                    };
                    tail.next_sequence = next;
                    tail.last_hash = hash(&payload);
                    tail.entries += 1;
                    tail.good_len = reader.offset();
                    continue;
                }
                Ok(signed) => {
                    let reason = format!(
                        "entry {} where entry {} belongs",
                        signed.entry.sequence, tail.next_sequence
                    );
                    return corrupt(offset, reason);
                }
                Err(error) => (offset, format!("undecodable entry: {error}")),
            },
            Frame::Torn { offset, reason } | Frame::Damaged { offset, reason } => (offset, reason),
        };
        if let Some(later) = valid_frame_after(path, offset)? {
            return corrupt(
                offset,
                format!(
                    "entry {} is damaged ({reason}) and a valid frame follows at offset {later}: \
                     not a torn write",
                    tail.next_sequence
                ),
            );
        }
        tail.torn_bytes = file_len - offset;
        return Ok(Ok(tail));
    }
}

/// The offset of the first frame after `damaged` that verifies, if any.
fn valid_frame_after(path: &Path, damaged: u64) -> std::io::Result<Option<u64>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(damaged + 1))?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)?;
    for start in 0..rest.len() {
        let Some(head) = rest.get(start..start + FRAME_HEADER_BYTES) else {
            break;
        };
        let header = FrameHeader::parse(head.try_into().expect("a frame header's length"));
        if header.payload_len as usize > ENTRY_PAYLOAD_BYTES_MAX || header.payload_len == 0 {
            continue;
        }
        let end = start + header.frame_len() as usize;
        if end <= rest.len() && codec::open_frame(&rest[start..end]).is_ok() {
            return Ok(Some(damaged + 1 + start as u64));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found reading the code while fuzzing: a segment whose header starts at the last sequence number
    /// there is, holding that entry, made the scan add one past `u64::MAX`.
    #[test]
    fn a_trail_at_the_last_sequence_number_is_damage_not_an_overflow() {
        use crate::entry::{AUDIT_FORMAT, Entry, GENESIS, MAGIC, SegmentHeader, encode_signed};
        use crate::key::SignatureAlgorithm;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(u64::MAX));
        let header = SegmentHeader {
            magic: MAGIC,
            format: AUDIT_FORMAT,
            first_sequence: u64::MAX,
            previous: GENESIS,
            opened_unix_ms: 0,
            algorithm: SignatureAlgorithm::EcdsaP256Sha256,
            certificate: Vec::new(),
        };
        let mut bytes = Vec::new();
        header.encode_frame(&mut bytes).unwrap();
        let entry = Entry {
            sequence: u64::MAX,
            previous: GENESIS,
            time_unix_ms: 0,
            event: crate::event::Event::Opened {
                identity: "test".into(),
                tail_cut_bytes: 0,
            },
        };
        // The scan reads no signature: any bytes do.
        encode_signed(&entry, |_| Ok(vec![0; 64]), &mut bytes).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let corruption = scan_tail(&path).unwrap().expect_err("damage, named");
        assert!(
            corruption.reason.contains("last sequence number"),
            "{}",
            corruption.reason
        );
    }

    #[test]
    fn segment_names_sort_by_sequence_and_parse_one_way() {
        assert_eq!(segment_name(42), "audit-00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "audit-42.log",
            "audit-0000000000000000004x.log",
            "audit-00000000000000000042.log.tmp",
            "other-00000000000000000042.log",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
        assert!(segment_name(9) < segment_name(10));
    }
}
