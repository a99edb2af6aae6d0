//! The one place that knows the binary encoding of everything on disk and on the wire.
//!
//! Encoding is postcard (serde). Nothing else in Domicile imports postcard (`storage` uses this module
//! as `storage::codec`), so a format change is a change to this file. Encoded types avoid serde's
//! `flatten`, `skip_serializing_if` and untagged enums: postcard is not self-describing and those
//! attributes make a decoder misread the bytes.
//!
//! Two envelopes carry a checksum and a format version:
//!
//! * a **frame**, `[length u32 LE][crc32 u32 LE][version u8][payload]`, used by the log segments, the
//!   snapshot stream and every QUIC request and response. `length` counts the payload only; the crc
//!   covers the version byte and the payload. A reader bounds `length` before allocating.
//! * a **sealed value**, `[version u8][crc32 u32 LE][payload]`, used for state-machine values. The
//!   crc also covers the value's key, so a value that ends up under another key (a flipped key
//!   bit) does not verify.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors of the encoding layer.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode failed: {0}")]
    Encode(String),
    #[error("decode failed: {0}")]
    Decode(String),
    #[error("unsupported format version {found} (this build reads {supported})")]
    Version { found: u8, supported: u8 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("length {length} exceeds the bound {bound}")]
    TooLong { length: u64, bound: u64 },
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated { needed: u64, available: u64 },
}

/// The format version written into every frame and sealed value.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes before a frame's payload: length, crc32, version.
pub const FRAME_HEADER_BYTES: usize = 9;

/// Bytes before a sealed value's payload: version, crc32.
const SEAL_HEADER_BYTES: usize = 5;

/// Encodes `value` into a fresh buffer.
///
/// The buffer is allocated at the encoding's exact length first (a pass that adds up lengths and
/// copies nothing): grown by doubling, a mebibyte's snapshot chunk or a 2-MiB append was copied once
/// more at every step, which a profile of a snapshot transfer put among the sender's largest costs.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(encoded_len(value)?);
    encode_into(value, &mut out)?;
    Ok(out)
}

/// The length of `value`'s encoding, without encoding it.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    postcard::experimental::serialized_size(value).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    postcard::serialize_with_flavor(value, AppendFlavor(out)).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Writes straight into a `Vec`: postcard's own `to_extend` goes through `Extend` one byte at a
/// time (a reserve per byte), which showed in profiles of the log's appends.
struct AppendFlavor<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendFlavor<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Decodes exactly one value that fills `bytes`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = decode_prefix(bytes)?;
    if !rest.is_empty() {
        return Err(CodecError::Decode(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// Decodes exactly one value that fills `bytes`, borrowing from them: a byte string decodes as a slice
/// of `bytes` (no copy). postcard writes a `Vec<u8>` and a byte string alike (a length, then the bytes),
/// so a value encoded with owned bytes decodes borrowed.
pub fn decode_borrowed<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| CodecError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Decode(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// Decodes one value from the front of `bytes` and returns the rest.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), CodecError> {
    postcard::take_from_bytes(bytes).map_err(|e| CodecError::Decode(e.to_string()))
}

/// Appends one frame whose payload is `head` followed by `body`, both postcard-encoded.
///
/// Splitting the payload lets a reader decode the small `head` (e.g. group and index) and keep
/// `body` as bytes, without a second copy of the body.
pub fn encode_frame<H, B>(
    head: &H,
    body: Option<&B>,
    payload_bytes_max: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecError>
where
    H: Serialize + ?Sized,
    B: Serialize + ?Sized,
{
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    out[start + 8] = FORMAT_VERSION;
    let encoded = encode_into(head, out).and_then(|()| body.map_or(Ok(()), |body| encode_into(body, out)));
    if let Err(error) = encoded {
        // Leave `out` as it was, without half a frame (as for a payload over the bound below).
        out.truncate(start);
        return Err(error);
    }
    let payload_len = out.len() - start - FRAME_HEADER_BYTES;
    if payload_len > payload_bytes_max {
        out.truncate(start);
        return Err(CodecError::TooLong {
            length: payload_len as u64,
            bound: payload_bytes_max as u64,
        });
    }
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The fixed-size start of a frame, before its checksum has been verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_len: u32,
    pub crc: u32,
    pub version: u8,
}

impl FrameHeader {
    pub fn parse(bytes: &[u8; FRAME_HEADER_BYTES]) -> FrameHeader {
        FrameHeader {
            payload_len: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            crc: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            version: bytes[8],
        }
    }

    /// Total bytes of the frame, header included.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_BYTES as u64 + u64::from(self.payload_len)
    }
}

/// Verifies a whole frame (`bytes` = header + payload) and returns its payload.
///
/// The length must already have been bounded by the caller (it read exactly `frame_len` bytes).
pub fn open_frame(bytes: &[u8]) -> Result<&[u8], CodecError> {
    let header_bytes: &[u8; FRAME_HEADER_BYTES] = bytes
        .get(..FRAME_HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(CodecError::Truncated {
            needed: FRAME_HEADER_BYTES as u64,
            available: bytes.len() as u64,
        })?;
    let header = FrameHeader::parse(header_bytes);
    if bytes.len() as u64 != header.frame_len() {
        return Err(CodecError::Truncated {
            needed: header.frame_len(),
            available: bytes.len() as u64,
        });
    }
    let computed = crc32fast::hash(&bytes[8..]);
    if computed != header.crc {
        return Err(CodecError::Checksum {
            stored: header.crc,
            computed,
        });
    }
    if header.version != FORMAT_VERSION {
        return Err(CodecError::Version {
            found: header.version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(&bytes[FRAME_HEADER_BYTES..])
}

/// Seals a state-machine value: version, crc over (key, version, payload), payload.
pub fn seal<T: Serialize + ?Sized>(key: &[u8], value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION, 0, 0, 0, 0];
    encode_into(value, &mut out)?;
    let crc = seal_crc(key, FORMAT_VERSION, &out[SEAL_HEADER_BYTES..]);
    out[1..SEAL_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Verifies a sealed value against its key and decodes it.
pub fn unseal<T: DeserializeOwned>(key: &[u8], sealed: &[u8]) -> Result<T, CodecError> {
    verify_seal(key, sealed)?;
    decode(&sealed[SEAL_HEADER_BYTES..])
}

/// Verifies a sealed value against its key without decoding it (snapshot install).
pub fn verify_seal(key: &[u8], sealed: &[u8]) -> Result<(), CodecError> {
    if sealed.len() < SEAL_HEADER_BYTES {
        return Err(CodecError::Truncated {
            needed: SEAL_HEADER_BYTES as u64,
            available: sealed.len() as u64,
        });
    }
    let stored = u32::from_le_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]);
    let computed = seal_crc(key, sealed[0], &sealed[SEAL_HEADER_BYTES..]);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    if sealed[0] != FORMAT_VERSION {
        return Err(CodecError::Version {
            found: sealed[0],
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

fn seal_crc(key: &[u8], version: u8, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&(key.len() as u32).to_le_bytes());
    hasher.update(key);
    hasher.update(&[version]);
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoding_is_exactly_as_long_as_announced_and_is_postcards_own() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let values = [
            crate::peer::PeerRequest {
                group: 1 << 40,
                kind: crate::peer::RequestKind::SnapshotChunk,
                carries_data: true,
                body: bytes.clone(),
            },
            crate::peer::PeerRequest {
                group: 0,
                kind: crate::peer::RequestKind::Vote,
                carries_data: false,
                body: Vec::new(),
            },
        ];
        for value in &values {
            let encoded = encode(value).unwrap();
            assert_eq!(encoded.len(), encoded_len(value).unwrap());
            assert_eq!(encoded.capacity(), encoded.len(), "sized once, never grown");
            assert_eq!(encoded, postcard::to_allocvec(value).unwrap());
        }
    }

    #[test]
    fn frame_round_trips_and_detects_every_single_bit_flip() {
        let mut out = Vec::new();
        encode_frame(&(7u64, 9u64), Some(&"payload".to_string()), 1024, &mut out).unwrap();
        let payload = open_frame(&out).unwrap();
        let (head, rest): ((u64, u64), &[u8]) = decode_prefix(payload).unwrap();
        assert_eq!(head, (7, 9));
        assert_eq!(decode::<String>(rest).unwrap(), "payload");
        for bit in 0..out.len() * 8 {
            let mut damaged = out.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            // A flipped length changes how many bytes the frame claims; both must fail.
            assert!(open_frame(&damaged).is_err(), "bit {bit} flip went undetected");
        }
    }

    #[test]
    fn frame_payload_is_bounded() {
        let mut out = vec![1, 2, 3];
        let err = encode_frame(&vec![0u8; 100], None::<&()>, 10, &mut out).unwrap_err();
        assert!(matches!(err, CodecError::TooLong { .. }), "{err}");
        assert_eq!(
            out,
            vec![1, 2, 3],
            "a rejected frame must leave the buffer as it was"
        );
    }

    #[test]
    fn seal_binds_the_value_to_its_key() {
        let sealed = seal(b"key-a", &42u64).unwrap();
        assert_eq!(unseal::<u64>(b"key-a", &sealed).unwrap(), 42);
        assert!(matches!(
            unseal::<u64>(b"key-b", &sealed),
            Err(CodecError::Checksum { .. })
        ));
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 0x10;
        assert!(unseal::<u64>(b"key-a", &damaged).is_err());
    }
}
