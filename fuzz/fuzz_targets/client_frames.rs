//! Client frames' payloads (`wire::client`): what a node decodes from a client service (`Envelope`,
//! `ClientRequest`) and what the client library decodes from a node (`Reply<EnvelopeResponse>`,
//! `ClientResponse`, `ClientResult`), straight from postcard (the frame around them is `link_frame`'s).
//! A value that decodes must encode back to bytes that decode to the same value.
#![no_main]

use domicile_fuzz::{assert_round_trip, assert_stable_encoding, split_mode};
use libfuzzer_sys::fuzz_target;
use link::frame::Reply;
use wire::client::{ClientRequest, ClientResponse, ClientResult, Envelope, EnvelopeResponse};
use wire::codec::decode;

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = split_mode(data) else {
        return;
    };
    match mode.choice % 5 {
        0 => {
            if let Ok(envelope) = decode::<Envelope>(bytes) {
                if let Envelope::Client(request) = &envelope {
                    let _ = (request.jurisdiction(), request.name());
                    if let ClientRequest::Call { op, .. } | ClientRequest::RoutedCall { op, .. } = request {
                        let _ = (op.name(), op.is_stale_read());
                    }
                }
                assert_stable_encoding(&envelope);
            }
        }
        1 => {
            if let Ok(request) = decode::<ClientRequest>(bytes) {
                assert_stable_encoding(&request);
            }
        }
        2 => {
            if let Ok(reply) = decode::<Reply<EnvelopeResponse>>(bytes) {
                assert_stable_encoding(&reply);
            }
        }
        3 => {
            if let Ok(response) = decode::<ClientResponse>(bytes) {
                assert_stable_encoding(&response);
                // A map a client would route by: only once checked whole, and then never a panic.
                if let ClientResponse::Map(map) | ClientResponse::Moved { map, .. } = &response
                    && map.check().is_ok()
                {
                    let _ = (map.route(""), map.route("user-1"), map.groups());
                }
            }
        }
        _ => {
            if let Ok(result) = decode::<ClientResult>(bytes) {
                assert_round_trip(&result);
            }
        }
    }
});
