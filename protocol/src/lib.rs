//! The Pyxis agent <-> coordinator wire protocol.
//!
//! This crate is the compatibility contract between agents and coordinators of different
//! versions. It holds the typed messages ([`messages`]), protocol-version negotiation
//! ([`version`]) and the frame codec ([`codec`]). It deliberately has no async runtime, no
//! sockets and no clock: it turns bytes into typed messages and back, and nothing else.
//!
//! Internal agent and coordinator state is not made of these types; each side converts at
//! its edge, so that changing the wire format is always a deliberate decision.

pub mod codec;
pub mod messages;
pub mod version;

pub use codec::{
    decode_frame, decode_payload, encode_frame, FrameError, FrameHeader, FRAME_HEADER_BYTES, MAX_FRAME_BYTES,
};
pub use messages::*;
pub use version::{negotiate, VersionError, VersionRange, SUPPORTED_VERSIONS};
