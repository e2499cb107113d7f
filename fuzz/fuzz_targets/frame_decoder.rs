//! Feeds arbitrary bytes to the frame decoder: it must return a typed error, never panic,
//! and never allocate beyond the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyxis_protocol::{decode_frame, decode_payload, AgentMessage, CoordinatorMessage, MAX_FRAME_BYTES};

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame::<AgentMessage>(data, Some(1), MAX_FRAME_BYTES);
    let _ = decode_frame::<CoordinatorMessage>(data, None, MAX_FRAME_BYTES);
    let _ = decode_payload::<AgentMessage>(data);
    let _ = decode_payload::<CoordinatorMessage>(data);
});
