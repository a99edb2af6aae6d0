//! An entry and a segment's header, and their bytes.
//!
//! Every record is one of `wire`'s frames, `[length u32][crc32 u32][version u8][payload]`, the payload in
//! postcard. A segment file starts with a header frame ([`SegmentHeader`]), then one frame per entry,
//! whose payload is the entry ([`Entry`]) followed by its signature:
//!
//! ```text
//! payload   = postcard(Entry) ++ postcard(signature bytes)
//! signature = sign(node key, SIGNING_CONTEXT ++ postcard(Entry))
//! hash      = SHA-256(payload)         -- what the next entry's `previous` holds
//! ```
//!
//! The hash covers the signature too, so an entry re-signed by anyone breaks the link to the next one as
//! well as its own signature.

use ring::digest;
use serde::{Deserialize, Serialize};
use wire::codec::{self, CodecError};

use crate::event::Event;
use crate::key::SignatureAlgorithm;

/// SHA-256, the link of the chain.
pub type Hash = [u8; 32];

/// The `previous` of a log's very first entry.
pub const GENESIS: Hash = [0; 32];

/// Bound on an entry frame's payload: events are a few hundred bytes.
pub const ENTRY_PAYLOAD_BYTES_MAX: usize = 64 << 10;

/// Bound on a segment header's payload, which carries the node's certificate.
pub const HEADER_PAYLOAD_BYTES_MAX: usize = 32 << 10;

/// Bound on a signature's bytes (ECDSA P-384 in ASN.1 is at most 104).
pub const SIGNATURE_BYTES_MAX: usize = 512;

/// The first bytes of every segment header's payload.
pub const MAGIC: [u8; 8] = *b"DOMAUDIT";

/// The audit trail's own format version, beside the frame's (the codec's).
pub const AUDIT_FORMAT: u8 = 1;

/// Prefixed to an entry's bytes before signing: the node's TLS key signs audit entries too, and the
/// context keeps an entry's signature from passing for anything else's.
pub const SIGNING_CONTEXT: &[u8] = b"domicile audit entry v1\n";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's position in the node's trail: 0, 1, 2, ... across every segment.
    pub sequence: u64,
    /// The hash of the entry before it ([`GENESIS`] for the first).
    pub previous: Hash,
    /// When it was recorded, in milliseconds since the Unix epoch, by the node's clock: for a monitor's
    /// timeline; the order of the trail is `sequence`'s.
    pub time_unix_ms: u64,
    pub event: Event,
}

/// The first frame of every segment file: where the segment continues the chain, and the certificate
/// whose key signs its entries (so the segment can be checked with the cluster CA alone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    pub magic: [u8; 8],
    pub format: u8,
    /// The sequence of the segment's first entry.
    pub first_sequence: u64,
    /// The hash of the entry before its first (the previous segment's last), or [`GENESIS`].
    pub previous: Hash,
    /// When the segment was started, by the node's clock: the certificate must be valid then.
    pub opened_unix_ms: u64,
    pub algorithm: SignatureAlgorithm,
    /// The node's certificate, DER.
    pub certificate: Vec<u8>,
}

impl SegmentHeader {
    pub fn encode_frame(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        codec::encode_frame(self, None::<&()>, HEADER_PAYLOAD_BYTES_MAX, out)
    }

    /// Decodes a verified frame's payload, checking the magic and the format.
    pub fn decode(payload: &[u8]) -> Result<SegmentHeader, String> {
        let header: SegmentHeader = codec::decode(payload).map_err(|error| error.to_string())?;
        if header.magic != MAGIC {
            return Err("not an audit segment (wrong magic)".into());
        }
        if header.format != AUDIT_FORMAT {
            return Err(format!(
                "audit format {} (this build reads {AUDIT_FORMAT})",
                header.format
            ));
        }
        Ok(header)
    }
}

/// What an entry's key signs.
pub fn signed_message(entry_bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + entry_bytes.len());
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(entry_bytes);
    message
}

/// The link: SHA-256 of an entry frame's payload.
pub fn hash(payload: &[u8]) -> Hash {
    let digest = digest::digest(&digest::SHA256, payload);
    let mut hash = GENESIS;
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// An entry frame's payload taken apart: the entry, the bytes it was signed as, and the signature.
pub struct SignedEntry<'a> {
    pub entry: Entry,
    pub entry_bytes: &'a [u8],
    pub signature: Vec<u8>,
}

impl<'a> SignedEntry<'a> {
    pub fn decode(payload: &'a [u8]) -> Result<SignedEntry<'a>, CodecError> {
        let (entry, rest): (Entry, &[u8]) = codec::decode_prefix(payload)?;
        let entry_bytes = &payload[..payload.len() - rest.len()];
        let signature: Vec<u8> = codec::decode(rest)?;
        if signature.len() > SIGNATURE_BYTES_MAX {
            return Err(CodecError::TooLong {
                length: signature.len() as u64,
                bound: SIGNATURE_BYTES_MAX as u64,
            });
        }
        Ok(SignedEntry {
            entry,
            entry_bytes,
            signature,
        })
    }
}

/// Appends `entry`'s frame, signed by `sign`, to `out`; returns the entry's hash.
pub fn encode_signed(
    entry: &Entry,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
    out: &mut Vec<u8>,
) -> Result<Hash, String> {
    let entry_bytes = codec::encode(entry).map_err(|error| error.to_string())?;
    let signature = sign(&signed_message(&entry_bytes))?;
    let start = out.len();
    codec::encode_frame(entry, Some(&signature), ENTRY_PAYLOAD_BYTES_MAX, out)
        .map_err(|error| format!("entry {}: {error}", entry.sequence))?;
    let payload = &out[start + codec::FRAME_HEADER_BYTES..];
    debug_assert_eq!(
        &payload[..entry_bytes.len()],
        entry_bytes.as_slice(),
        "a frame's head is the entry's encoding"
    );
    Ok(hash(payload))
}

/// Lower-case hex, for hashes shown to people and monitors.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
