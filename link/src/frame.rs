//! One exchange per stream: a request frame one way, its answer frame the other, each a `wire::codec`
//! frame `[length][crc32][version][payload]` whose length is bounded before anything is allocated.
//!
//! [`read_frame`] reads a stream; [`decode_frame`] is the same checks on a stream's whole content held in
//! memory (no I/O), for tests and the fuzz targets (`fuzz/`). Both share the bound and the decoding.

use quinn::{RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wire::codec::{self, FRAME_HEADER_BYTES, FrameHeader};

use crate::QuicError;

/// What an answer frame holds: the server's response, or why it refused the request frame (too large,
/// damaged, undecodable).
pub type Reply<Response> = Result<Response, String>;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Transport(#[from] QuicError),
    #[error("{0}")]
    Io(String),
}

/// Writes `value` as the stream's one frame and finishes the stream.
pub async fn write_frame<T: Serialize + ?Sized>(
    send: &mut SendStream,
    value: &T,
    bytes_max: u32,
) -> Result<(), FrameError> {
    // Sized before it is written (a snapshot chunk is a mebibyte: grown by doubling, it was copied
    // again at each step), then handed to quinn whole: `write_chunk` takes the buffer over, where
    // `write_all` copied it into quinn's own.
    let payload = codec::encoded_len(value).map_err(QuicError::Codec)?;
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.min(bytes_max as usize));
    codec::encode_frame(value, None::<&()>, bytes_max as usize, &mut frame).map_err(QuicError::Codec)?;
    send.write_chunk(bytes::Bytes::from(frame))
        .await
        .map_err(|error| FrameError::Io(error.to_string()))?;
    send.finish().map_err(|error| FrameError::Io(error.to_string()))?;
    Ok(())
}

/// Reads the stream's one frame, through the stream's end, and decodes it.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream, bytes_max: u32) -> Result<T, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    recv.read_exact(&mut header)
        .await
        .map_err(|error| FrameError::Io(error.to_string()))?;
    let parsed = bounded_header(&header, bytes_max)?;
    // The frame's bytes appended as quinn hands them over, into a buffer of the frame's (bounded) length:
    // not zeroed first only to be overwritten (a snapshot chunk is a mebibyte).
    let frame_len = parsed.frame_len() as usize;
    let mut frame = Vec::with_capacity(frame_len);
    frame.extend_from_slice(&header);
    while frame.len() < frame_len {
        match recv.read_chunk(frame_len - frame.len(), true).await {
            Ok(Some(chunk)) => frame.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(FrameError::Io(format!(
                    "the stream ended after {} bytes, inside a frame of {frame_len}",
                    frame.len()
                )));
            }
            Err(error) => return Err(FrameError::Io(error.to_string())),
        }
    }
    // One frame per stream: read the stream's end too. A stream dropped before its end was read makes
    // quinn send a STOP_SENDING, one extra packet each way per request (measured: a third of the
    // cluster's packets under single-client puts).
    match recv.read(&mut [0u8; 1]).await {
        Ok(None) => {}
        Ok(Some(_)) => return Err(more_than_announced(&parsed)),
        Err(error) => return Err(FrameError::Io(error.to_string())),
    }
    decode_whole(&frame)
}

/// What [`read_frame`] makes of a stream whose whole content is `stream`: its one frame, bounded by
/// `bytes_max`, verified and decoded. A stream that ends early or holds more than the frame is refused.
pub fn decode_frame<T: DeserializeOwned>(stream: &[u8], bytes_max: u32) -> Result<T, FrameError> {
    let header: &[u8; FRAME_HEADER_BYTES] = stream
        .get(..FRAME_HEADER_BYTES)
        .and_then(|header| header.try_into().ok())
        .ok_or_else(|| {
            FrameError::Io(format!(
                "the stream ended after {} bytes, inside the {FRAME_HEADER_BYTES}-byte frame header",
                stream.len()
            ))
        })?;
    let parsed = bounded_header(header, bytes_max)?;
    let frame_len = parsed.frame_len();
    if (stream.len() as u64) < frame_len {
        return Err(FrameError::Io(format!(
            "the stream ended after {} bytes, inside a frame of {frame_len}",
            stream.len()
        )));
    }
    if stream.len() as u64 > frame_len {
        return Err(more_than_announced(&parsed));
    }
    decode_whole(stream)
}

/// Parses a frame header and bounds its length, before anything is allocated for the payload.
fn bounded_header(header: &[u8; FRAME_HEADER_BYTES], bytes_max: u32) -> Result<FrameHeader, FrameError> {
    let parsed = FrameHeader::parse(header);
    if parsed.payload_len > bytes_max {
        // Bounded before allocating: a peer can't make us reserve what it claims.
        let error = QuicError::TooLarge {
            length: u64::from(parsed.payload_len),
            bound: u64::from(bytes_max),
        };
        return Err(error.into());
    }
    Ok(parsed)
}

fn more_than_announced(parsed: &FrameHeader) -> FrameError {
    FrameError::Io(format!(
        "the stream holds more than the {}-byte payload its frame header announced",
        parsed.payload_len
    ))
}

/// Verifies a whole frame (header and payload, exactly) and decodes its payload.
fn decode_whole<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    let payload = codec::open_frame(frame).map_err(QuicError::Codec)?;
    Ok(codec::decode(payload).map_err(QuicError::Codec)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(value: &(u64, String)) -> Vec<u8> {
        let mut frame = Vec::new();
        codec::encode_frame(value, None::<&()>, 1024, &mut frame).unwrap();
        frame
    }

    #[test]
    fn a_whole_stream_decodes_to_what_was_framed() {
        let value = (7u64, "seven".to_string());
        let frame = framed(&value);
        assert_eq!(decode_frame::<(u64, String)>(&frame, 1024).unwrap(), value);
    }

    #[test]
    fn a_stream_short_long_oversized_or_damaged_is_refused() {
        let frame = framed(&(7, "seven".into()));
        for cut in 0..frame.len() {
            let error = decode_frame::<(u64, String)>(&frame[..cut], 1024).unwrap_err();
            assert!(
                error.to_string().contains("the stream ended after"),
                "cut at {cut}: {error}"
            );
        }
        let mut longer = frame.clone();
        longer.push(0);
        let error = decode_frame::<(u64, String)>(&longer, 1024).unwrap_err();
        assert!(error.to_string().contains("holds more than"), "{error}");
        let error = decode_frame::<(u64, String)>(&frame, 3).unwrap_err();
        assert!(
            matches!(error, FrameError::Transport(QuicError::TooLarge { bound: 3, .. })),
            "{error}"
        );
        let mut damaged = frame.clone();
        *damaged.last_mut().unwrap() ^= 1;
        let error = decode_frame::<(u64, String)>(&damaged, 1024).unwrap_err();
        assert!(
            matches!(error, FrameError::Transport(QuicError::Codec(_))),
            "{error}"
        );
    }
}
