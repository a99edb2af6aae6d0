//! The framing layer: a QUIC stream's whole content as `link::frame::read_frame` reads it (one frame,
//! its length bounded before allocation, its checksum and version checked, nothing after it), decoded
//! as a node decodes a request (`Envelope`) and as a caller decodes an answer (`Reply<EnvelopeResponse>`).
//! Choice bit 0: which of the two; choice bit 1: a small bound (1 KiB) instead of the product's.
#![no_main]

use domicile_fuzz::{MESSAGE_BYTES_MAX, assert_stable_encoding, repair_frames, split_mode};
use libfuzzer_sys::fuzz_target;
use link::frame::{Reply, decode_frame};
use wire::client::{Envelope, EnvelopeResponse};

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = split_mode(data) else {
        return;
    };
    let mut stream = bytes.to_vec();
    if mode.repair {
        repair_frames(&mut stream, 0);
    }
    let bound = if mode.choice & 2 == 0 {
        MESSAGE_BYTES_MAX
    } else {
        1024
    };
    if mode.choice & 1 == 0 {
        if let Ok(envelope) = decode_frame::<Envelope>(&stream, bound) {
            assert!(stream.len() <= bound as usize + wire::codec::FRAME_HEADER_BYTES);
            assert_stable_encoding(&envelope);
        }
    } else if let Ok(reply) = decode_frame::<Reply<EnvelopeResponse>>(&stream, bound) {
        assert!(stream.len() <= bound as usize + wire::codec::FRAME_HEADER_BYTES);
        assert_stable_encoding(&reply);
    }
});
