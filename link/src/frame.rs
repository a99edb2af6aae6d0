//! One exchange per stream: a request frame one way, its answer frame the other, each a `wire::codec`
//! frame `[length][crc32][version][payload]` whose length is bounded before anything is allocated.

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
    let mut frame = Vec::new();
    codec::encode_frame(value, None::<&()>, bytes_max as usize, &mut frame).map_err(QuicError::Codec)?;
    send.write_all(&frame)
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
    let parsed = FrameHeader::parse(&header);
    if parsed.payload_len > bytes_max {
        // Bounded before allocating: a peer can't make us reserve what it claims.
        let error = QuicError::TooLarge {
            length: u64::from(parsed.payload_len),
            bound: u64::from(bytes_max),
        };
        return Err(error.into());
    }
    let mut frame = vec![0u8; parsed.frame_len() as usize];
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&header);
    recv.read_exact(&mut frame[FRAME_HEADER_BYTES..])
        .await
        .map_err(|error| FrameError::Io(error.to_string()))?;
    // One frame per stream: read the stream's end too. A stream dropped before its end was read makes
    // quinn send a STOP_SENDING, one extra packet each way per request (measured: a third of the
    // cluster's packets under single-client puts).
    match recv.read(&mut [0u8; 1]).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(FrameError::Io(format!(
                "the stream holds more than the {}-byte payload its frame header announced",
                parsed.payload_len
            )));
        }
        Err(error) => return Err(FrameError::Io(error.to_string())),
    }
    let payload = codec::open_frame(&frame).map_err(QuicError::Codec)?;
    Ok(codec::decode(payload).map_err(QuicError::Codec)?)
}
