//! What the fuzz targets share: how an input is read, and the checksum repair that lets the fuzzer reach
//! the decoders behind a frame's crc32.
//!
//! Every record Domicile reads from the network or the disk is a `wire::codec` frame
//! `[length u32][crc32 u32][version u8][payload]` (or a sealed value, `[version][crc32][payload]`). A
//! mutated input almost never carries a matching crc32, so a target fed raw bytes tests the checksum and
//! little else. Each target therefore reads its first byte as a *mode*: raw (the bytes as they are, the
//! checksum check included) or repaired (every frame's crc32 recomputed before decoding, so the fuzzer
//! explores what lies behind it: postcard, bounds, the record kinds, their invariants). Both modes must
//! end in a value or a clean error: never a panic, never an allocation beyond the bounds.
//!
//! The seeds in `corpus/<target>/` are real frames from the real encoders (`examples/seeds.rs`).

use wire::codec::{FORMAT_VERSION, FRAME_HEADER_BYTES};

/// The message bound the targets use for whole frames, the product's default (`link::QuicConfig`).
pub const MESSAGE_BYTES_MAX: u32 = 64 << 20;

/// How a target reads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// Recompute every frame's checksum before decoding.
    pub repair: bool,
    /// Target-specific choices (which type to decode, which flag to set).
    pub choice: u8,
}

/// Splits an input into its mode byte and the bytes to decode.
pub fn split_mode(data: &[u8]) -> Option<(Mode, &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some((
        Mode {
            repair: first & 1 == 1,
            choice: first >> 1,
        },
        rest,
    ))
}

/// The mode byte that [`split_mode`] reads as `mode`.
pub fn mode_byte(repair: bool, choice: u8) -> u8 {
    (choice << 1) | u8::from(repair)
}

/// Recomputes the crc32 of every frame in `bytes` from `start`, frame after frame, as far as the
/// lengths lead (a frame that runs past the end, or a zero length, ends the walk). The version byte
/// is kept: a wrong version must still be refused by name.
pub fn repair_frames(bytes: &mut [u8], start: usize) {
    let mut offset = start;
    while let Some(header) = bytes.get(offset..offset + FRAME_HEADER_BYTES) {
        let payload_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let end = offset + FRAME_HEADER_BYTES + payload_len;
        if payload_len == 0 || end > bytes.len() {
            return;
        }
        let crc = crc32fast::hash(&bytes[offset + 8..end]);
        bytes[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        offset = end;
    }
}

/// Builds one frame around `payload` (a correct header: length, crc32, the current version).
pub fn frame_around(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.push(FORMAT_VERSION);
    frame.extend_from_slice(payload);
    let crc = crc32fast::hash(&frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Recomputes a sealed value's crc32 for `key` (`[version][crc32][payload]`, the crc over the key's
/// length, the key, the version and the payload: `wire::codec::seal`'s).
pub fn repair_seal(key: &[u8], sealed: &mut [u8]) {
    if sealed.len() < 5 {
        return;
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&(key.len() as u32).to_le_bytes());
    hasher.update(key);
    hasher.update(&sealed[..1]);
    hasher.update(&sealed[5..]);
    let crc = hasher.finalize();
    sealed[1..5].copy_from_slice(&crc.to_le_bytes());
}

/// Reads length-prefixed pieces (`u16` LE length, then that many bytes) until the input runs out; the
/// last piece takes what is left when its length overshoots. How targets that decode several values
/// (snapshot chunks, table items) cut one input.
pub fn pieces(mut data: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    while data.len() >= 2 {
        let len = u16::from_le_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let take = len.min(rest.len());
        pieces.push(&rest[..take]);
        data = &rest[take..];
    }
    pieces
}

/// The inverse of [`pieces`], for the seed generator.
pub fn join_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        let len = u16::try_from(piece.len()).expect("a seed piece fits a u16 length");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(piece);
    }
    out
}

/// Asserts that `value` survives a round trip through the codec byte for byte: its encoding decodes to
/// a value that encodes the same. For types without `PartialEq` (the protocol's envelopes).
pub fn assert_stable_encoding<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let first = wire::codec::encode(value).expect("a decoded value encodes");
    let again: T = wire::codec::decode(&first).expect("an encoded value decodes");
    let second = wire::codec::encode(&again).expect("a decoded value encodes");
    assert_eq!(first, second, "the encoding of a decoded value is not stable");
}

/// Asserts `decode(encode(value)) == value`.
pub fn assert_round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = wire::codec::encode(value).expect("a decoded value encodes");
    let again: T = wire::codec::decode(&bytes).expect("an encoded value decodes");
    assert_eq!(&again, value, "decode(encode(x)) != x");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_round_trip() {
        let parts: Vec<&[u8]> = vec![b"ab", b"", b"cde"];
        assert_eq!(pieces(&join_pieces(parts.clone())), parts);
    }

    #[test]
    fn a_repaired_frame_opens() {
        let mut frame = frame_around(b"payload");
        frame[5] ^= 0xff;
        assert!(wire::codec::open_frame(&frame).is_err());
        repair_frames(&mut frame, 0);
        assert_eq!(wire::codec::open_frame(&frame).unwrap(), b"payload");
    }

    #[test]
    fn a_repaired_seal_verifies() {
        let mut sealed = wire::codec::seal(b"key", &7u64).unwrap();
        sealed[2] ^= 1;
        repair_seal(b"key", &mut sealed);
        assert_eq!(wire::codec::unseal::<u64>(b"key", &sealed).unwrap(), 7);
    }
}
