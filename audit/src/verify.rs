//! The auditor's side: checking a node's trail offline, with the cluster CA's certificate alone.
//!
//! For a directory, every segment in sequence order; for a single file, that segment, trusting where its
//! header says it continues the chain. Each segment's certificate must chain to the CA (valid when the
//! segment was started) and name the same node as the rest; each entry must verify as a frame, be the
//! next in sequence, carry a signature that the certificate's key checks, and hold the hash of the entry
//! before it. The first entry that fails is reported with its position (its sequence) and what is wrong:
//!
//! * **missing** — the entry is not there (deleted, or a segment is gone, or the trail ends before
//!   `expect_entries`);
//! * **altered** — its bytes do not verify (a flipped byte, a bad length) or do not decode;
//! * **reordered** — it is there, but after a later entry;
//! * **unsigned** — no signature, or one the node's certificate does not check (altered and re-framed,
//!   or signed with another key);
//! * **truncated** — the file ends inside it;
//! * **chain** — it is validly signed but does not hold the hash of the entry before it (something
//!   before it was replaced);
//! * **certificate** — the segment's certificate is not from the cluster CA, was not valid then, or names
//!   another node.
//!
//! A trail cut at an entry boundary looks whole: only something kept outside the node (a monitor's last
//! received sequence, given as `expect_entries`) shows that its end is missing.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::entry::{
    ENTRY_PAYLOAD_BYTES_MAX, HEADER_PAYLOAD_BYTES_MAX, Hash, SegmentHeader, SignedEntry, hash, hex,
    signed_message,
};
use crate::key::{ClusterCa, NodeCertificate};
use crate::segment::{Frame, FrameReader, list_segments, parse_segment_name};

/// How far past an out-of-place entry the verifier looks for the one that belongs there.
const LOOKAHEAD_FRAMES_MAX: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakKind {
    Missing,
    Altered,
    Reordered,
    Unsigned,
    Truncated,
    Chain,
    Certificate,
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakKind::Missing => "missing",
            BreakKind::Altered => "altered",
            BreakKind::Reordered => "reordered",
            BreakKind::Unsigned => "unsigned",
            BreakKind::Truncated => "truncated",
            BreakKind::Chain => "chain broken",
            BreakKind::Certificate => "certificate",
        })
    }
}

/// The first place the trail does not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Break {
    /// The sequence of the entry that is missing, altered, out of place or unsigned.
    pub position: u64,
    pub kind: BreakKind,
    pub file: PathBuf,
    pub offset: u64,
    pub detail: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "entry {}: {} ({}, offset {}): {}",
            self.position,
            self.kind,
            self.file.display(),
            self.offset,
            self.detail
        )
    }
}

/// What verifying found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The node identity the segments' certificates name.
    pub identity: Option<String>,
    pub segments: usize,
    /// Entries that verified, from `first_sequence` on.
    pub entries: u64,
    pub first_sequence: Option<u64>,
    /// The last entry that verified and its hash (to compare with what a monitor last received).
    pub last: Option<(u64, Hash)>,
    pub broken: Option<Break>,
}

impl Report {
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identity = self.identity.as_deref().unwrap_or("an unknown node");
        let range = match (self.first_sequence, self.last) {
            (Some(first), Some((last, hash))) => {
                format!("entries {first}..={last}, last hash {}", hex(&hash))
            }
            _ => "no entries".into(),
        };
        match &self.broken {
            None => write!(
                f,
                "intact: {} entries in {} segment(s) signed by {identity} ({range})",
                self.entries, self.segments
            ),
            Some(broken) => write!(
                f,
                "BROKEN at {broken}\n{} entries before it verified, signed by {identity} ({range})",
                self.entries
            ),
        }
    }
}

/// The input can't be verified at all (exit 2): no such path, no segment, unreadable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VerifyError(pub String);

#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// The trail must hold at least this many entries (sequences 0 to this − 1): what a monitor saw.
    pub expect_entries: Option<u64>,
}

/// Verifies the trail in `path`: a directory of segments, or one segment file.
pub fn verify(path: &Path, ca: &ClusterCa, options: VerifyOptions) -> Result<Report, VerifyError> {
    let unreadable = |error: std::io::Error| VerifyError(format!("{}: {error}", path.display()));
    let (files, whole) = if path.is_dir() {
        let files = list_segments(path).map_err(unreadable)?;
        if files.is_empty() {
            return Err(VerifyError(format!(
                "{}: no audit segments (audit-*.log) here",
                path.display()
            )));
        }
        (files, true)
    } else if path.is_file() {
        let name = path.file_name().and_then(|name| name.to_str());
        let first = name.and_then(parse_segment_name).unwrap_or(0);
        (vec![(first, path.to_path_buf())], false)
    } else {
        return Err(VerifyError(format!(
            "{}: no such file or directory",
            path.display()
        )));
    };
    let mut verifier = Verifier {
        ca,
        whole,
        certificates: Vec::new(),
        report: Report {
            identity: None,
            segments: 0,
            entries: 0,
            first_sequence: None,
            last: None,
            broken: None,
        },
        expected: None,
        previous: None,
    };
    for (named_first, file) in &files {
        if let Some(broken) = verifier.segment(file, *named_first)? {
            verifier.report.broken = Some(broken);
            return Ok(verifier.report);
        }
    }
    let next = verifier.expected.unwrap_or(0);
    if let Some(expected) = options.expect_entries
        && next < expected
    {
        let (_, last_file) = files.last().expect("at least one segment");
        let offset = std::fs::metadata(last_file).map_or(0, |metadata| metadata.len());
        verifier.report.broken = Some(Break {
            position: next,
            kind: BreakKind::Missing,
            file: last_file.clone(),
            offset,
            detail: format!(
                "the trail ends before entry {next}, but {expected} entries were expected: its end was cut"
            ),
        });
    }
    Ok(verifier.report)
}

struct Verifier<'a> {
    ca: &'a ClusterCa,
    /// A whole trail (a directory): it must start at entry 0 and its segments follow each other.
    whole: bool,
    certificates: Vec<(Vec<u8>, NodeCertificate)>,
    report: Report,
    /// The sequence the next entry must have.
    expected: Option<u64>,
    /// The hash the next entry must hold.
    previous: Option<Hash>,
}

impl Verifier<'_> {
    /// Verifies one segment; returns the first break in it.
    fn segment(&mut self, path: &Path, named_first: u64) -> Result<Option<Break>, VerifyError> {
        let unreadable = |error: std::io::Error| VerifyError(format!("{}: {error}", path.display()));
        let here = self.expected.unwrap_or(named_first);
        let broken = |position: u64, kind: BreakKind, offset: u64, detail: String| {
            Ok(Some(Break {
                position,
                kind,
                file: path.to_path_buf(),
                offset,
                detail,
            }))
        };
        let mut reader = FrameReader::open(path).map_err(unreadable)?;
        let header = match reader.next_frame(HEADER_PAYLOAD_BYTES_MAX).map_err(unreadable)? {
            Frame::Whole { payload, .. } => match SegmentHeader::decode(&payload) {
                Ok(header) => header,
                Err(reason) => {
                    return broken(here, BreakKind::Altered, 0, format!("segment header: {reason}"));
                }
            },
            Frame::End => return broken(here, BreakKind::Truncated, 0, "empty segment file".into()),
            Frame::Torn { reason, .. } => {
                return broken(here, BreakKind::Truncated, 0, format!("segment header: {reason}"));
            }
            Frame::Damaged { reason, .. } => {
                return broken(here, BreakKind::Altered, 0, format!("segment header: {reason}"));
            }
        };
        let first = header.first_sequence;
        match (self.whole, self.expected) {
            (true, None) if first != 0 => {
                let detail = format!("the trail starts at entry {first}: entries 0..{first} are gone");
                return broken(0, BreakKind::Missing, 0, detail);
            }
            (true, Some(expected)) if first > expected => {
                let detail = format!(
                    "entries {expected}..{first} are gone: the segment after entry {} starts at entry {first}",
                    expected.saturating_sub(1)
                );
                return broken(expected, BreakKind::Missing, 0, detail);
            }
            (true, Some(expected)) if first < expected => {
                let detail = format!(
                    "a segment starting at entry {first} follows entry {}",
                    expected - 1
                );
                return broken(first, BreakKind::Reordered, 0, detail);
            }
            _ => {}
        }
        if let Some(previous) = self.previous
            && header.previous != previous
        {
            let detail = "the segment does not continue the chain of the one before it".into();
            return broken(first, BreakKind::Chain, 0, detail);
        }
        let certificate = match self.certificate(&header) {
            Ok(certificate) => certificate,
            Err(detail) => return broken(first, BreakKind::Certificate, 0, detail),
        };
        self.report.segments += 1;
        self.report.first_sequence.get_or_insert(first);
        let mut expected = first;
        let mut previous = header.previous;
        let identity = certificate.identity().to_string();
        loop {
            let (offset, payload) = match reader.next_frame(ENTRY_PAYLOAD_BYTES_MAX).map_err(unreadable)? {
                Frame::End => break,
                Frame::Whole { offset, payload } => (offset, payload),
                Frame::Torn { offset, reason } => {
                    return broken(expected, BreakKind::Truncated, offset, reason);
                }
                Frame::Damaged { offset, reason } => {
                    return broken(expected, BreakKind::Altered, offset, reason);
                }
            };
            let signed = match SignedEntry::decode(&payload) {
                Ok(signed) => signed,
                Err(error) => {
                    let detail = format!("undecodable entry: {error}");
                    return broken(expected, BreakKind::Altered, offset, detail);
                }
            };
            let sequence = signed.entry.sequence;
            if sequence != expected {
                let (kind, detail) = out_of_place(path, reader.offset(), expected, sequence)?;
                return broken(expected, kind, offset, detail);
            }
            if signed.signature.is_empty() {
                return broken(expected, BreakKind::Unsigned, offset, "no signature".into());
            }
            let message = signed_message(signed.entry_bytes);
            if !certificate.verify_signature(header.algorithm, &message, &signed.signature) {
                let detail = format!(
                    "the signature does not verify with the key of {identity}: the entry was altered \
                     after signing, or signed with another key"
                );
                return broken(expected, BreakKind::Unsigned, offset, detail);
            }
            if signed.entry.previous != previous {
                let detail = format!(
                    "it does not hold the hash of entry {}: an entry before it was replaced",
                    expected.saturating_sub(1)
                );
                return broken(expected, BreakKind::Chain, offset, detail);
            }
            previous = hash(&payload);
            self.report.entries += 1;
            self.report.last = Some((sequence, previous));
            expected += 1;
        }
        self.expected = Some(expected);
        self.previous = Some(previous);
        Ok(None)
    }

    /// The segment's certificate, checked against the CA (once per distinct certificate) and against the
    /// node the trail's earlier segments name.
    fn certificate(&mut self, header: &SegmentHeader) -> Result<NodeCertificate, String> {
        let known = self
            .certificates
            .iter()
            .find(|(der, _)| *der == header.certificate)
            .map(|(_, certificate)| certificate.clone());
        let certificate = match known {
            Some(certificate) => certificate,
            None => {
                let certificate =
                    NodeCertificate::verify(&header.certificate, self.ca, header.opened_unix_ms)
                        .map_err(|error| format!("the segment's certificate: {error}"))?;
                self.certificates
                    .push((header.certificate.clone(), certificate.clone()));
                certificate
            }
        };
        match &self.report.identity {
            Some(identity) if identity != certificate.identity() => Err(format!(
                "the segment is signed by {}, the trail before it by {identity}",
                certificate.identity()
            )),
            Some(_) => Ok(certificate),
            None => {
                self.report.identity = Some(certificate.identity().to_string());
                Ok(certificate)
            }
        }
    }
}

/// Where entry `expected` is when entry `found` stands in its place: later in the segment (reordered), or
/// nowhere (missing).
fn out_of_place(
    path: &Path,
    after: u64,
    expected: u64,
    found: u64,
) -> Result<(BreakKind, String), VerifyError> {
    if found < expected {
        return Ok((
            BreakKind::Reordered,
            format!(
                "entry {found} stands where entry {expected} belongs, after entry {}",
                expected - 1
            ),
        ));
    }
    let unreadable = |error: std::io::Error| VerifyError(format!("{}: {error}", path.display()));
    let mut reader = FrameReader::open_at(path, after).map_err(unreadable)?;
    for _ in 0..LOOKAHEAD_FRAMES_MAX {
        let Frame::Whole { offset, payload } =
            reader.next_frame(ENTRY_PAYLOAD_BYTES_MAX).map_err(unreadable)?
        else {
            break;
        };
        if SignedEntry::decode(&payload).is_ok_and(|signed| signed.entry.sequence == expected) {
            return Ok((
                BreakKind::Reordered,
                format!(
                    "entry {found} stands where entry {expected} belongs; entry {expected} follows at offset {offset}"
                ),
            ));
        }
    }
    let gone = if expected.checked_add(1) == Some(found) {
        format!("entry {expected} is gone")
    } else {
        format!("entries {expected}..{found} are gone")
    };
    Ok((
        BreakKind::Missing,
        format!(
            "{gone}: entry {found} follows entry {}",
            expected.saturating_sub(1)
        ),
    ))
}

/// One entry as read back for a monitor (frames checked, signatures not: see [`verify`]).
#[derive(Clone, Debug)]
pub struct ReadEntry {
    pub entry: crate::entry::Entry,
    pub hash: Hash,
    /// The node identity of the segment's certificate (not verified against a CA here).
    pub identity: String,
}

/// Calls `each` with every entry of the trail in `path` (a directory or a segment file), in order. Stops
/// with an error naming file and offset at the first frame that does not verify.
pub fn read_entries(path: &Path, mut each: impl FnMut(ReadEntry)) -> Result<(), VerifyError> {
    let files = if path.is_dir() {
        list_segments(path).map_err(|error| VerifyError(format!("{}: {error}", path.display())))?
    } else {
        vec![(0, path.to_path_buf())]
    };
    for (_, file) in files {
        let unreadable = |error: std::io::Error| VerifyError(format!("{}: {error}", file.display()));
        let mut reader = FrameReader::open(&file).map_err(unreadable)?;
        let header = match reader.next_frame(HEADER_PAYLOAD_BYTES_MAX).map_err(unreadable)? {
            Frame::Whole { payload, .. } => SegmentHeader::decode(&payload)
                .map_err(|reason| VerifyError(format!("{}: segment header: {reason}", file.display())))?,
            other => {
                return Err(VerifyError(format!(
                    "{}: segment header unreadable: {other:?}",
                    file.display()
                )));
            }
        };
        let identity = NodeCertificate::identity_unverified(&header.certificate).unwrap_or_default();
        loop {
            match reader.next_frame(ENTRY_PAYLOAD_BYTES_MAX).map_err(unreadable)? {
                Frame::End => break,
                Frame::Whole { offset, payload } => {
                    let signed = SignedEntry::decode(&payload).map_err(|error| {
                        VerifyError(format!("{}, offset {offset}: {error}", file.display()))
                    })?;
                    each(ReadEntry {
                        entry: signed.entry,
                        hash: hash(&payload),
                        identity: identity.clone(),
                    });
                }
                Frame::Torn { offset, reason } | Frame::Damaged { offset, reason } => {
                    return Err(VerifyError(format!(
                        "{}, offset {offset}: {reason}",
                        file.display()
                    )));
                }
            }
        }
    }
    Ok(())
}
