//! Length-prefixed frames.
//!
//! A frame is `[len: u32 big-endian][version: u16 big-endian][postcard payload]`, where
//! `len` counts the version and the payload. Frames above the maximum size are refused
//! from the header alone, before any payload is read. The decoder never panics.

use serde::{de::DeserializeOwned, Serialize};

/// Default maximum frame size (version + payload).
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Size of the fixed frame header read before the body (`len` + `version`).
pub const FRAME_HEADER_BYTES: usize = 6;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the header or the declared length.
    #[error("truncated frame: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The declared or encoded length exceeds the limit.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversized {
        /// Declared length.
        len: u64,
        /// Limit in force.
        max: u32,
    },
    /// The declared length cannot even hold the version field.
    #[error("frame length {len} is shorter than the 2-byte version field")]
    LengthTooSmall {
        /// Declared length.
        len: u32,
    },
    /// The frame was written for another protocol version than the one agreed.
    #[error("frame is protocol version {got}, but version {expected} was agreed")]
    WrongVersion {
        /// Version in the frame.
        got: u16,
        /// Version expected.
        expected: u16,
    },
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The payload decoded but left bytes over.
    #[error("malformed message: {0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The message could not be serialized.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes after the length field (version + payload).
    pub len: u32,
    /// Protocol version of the payload.
    pub version: u16,
}

impl FrameHeader {
    /// Parses the fixed header and enforces the size limit.
    pub fn parse(header: &[u8; FRAME_HEADER_BYTES], max: u32) -> Result<Self, FrameError> {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let version = u16::from_be_bytes([header[4], header[5]]);
        if len > max {
            return Err(FrameError::Oversized {
                len: u64::from(len),
                max,
            });
        }
        if len < 2 {
            return Err(FrameError::LengthTooSmall { len });
        }
        Ok(Self { len, version })
    }

    /// Payload bytes that follow the header.
    pub fn payload_len(&self) -> usize {
        // len >= 2 is checked in `parse`.
        (self.len as usize).saturating_sub(2)
    }
}

/// Encodes `message` as one frame of `version`.
pub fn encode_frame<M: Serialize>(version: u16, message: &M, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; FRAME_HEADER_BYTES];
    out = postcard::to_extend(message, out).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = (out.len() - 4) as u64;
    if len > u64::from(max) {
        return Err(FrameError::Oversized { len, max });
    }
    let len32 = len as u32;
    out[0..4].copy_from_slice(&len32.to_be_bytes());
    out[4..6].copy_from_slice(&version.to_be_bytes());
    Ok(out)
}

/// Decodes a payload (the bytes after the header) into a message.
pub fn decode_payload<M: DeserializeOwned>(payload: &[u8]) -> Result<M, FrameError> {
    let (message, rest) = postcard::take_from_bytes::<M>(payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(message)
}

/// Decodes one complete frame from `bytes`, which must hold exactly one frame.
/// `expected_version` of `None` accepts any version (used only for the frozen `Hello`).
/// Returns the frame's version with the message.
pub fn decode_frame<M: DeserializeOwned>(
    bytes: &[u8],
    expected_version: Option<u16>,
    max: u32,
) -> Result<(u16, M), FrameError> {
    let Some(header_bytes) = bytes.get(..FRAME_HEADER_BYTES) else {
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_BYTES,
            available: bytes.len(),
        });
    };
    let mut fixed = [0u8; FRAME_HEADER_BYTES];
    fixed.copy_from_slice(header_bytes);
    let header = FrameHeader::parse(&fixed, max)?;
    let body = &bytes[FRAME_HEADER_BYTES..];
    let needed = header.payload_len();
    if body.len() < needed {
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_BYTES + needed,
            available: bytes.len(),
        });
    }
    if body.len() > needed {
        return Err(FrameError::TrailingBytes(body.len() - needed));
    }
    if let Some(expected) = expected_version {
        if header.version != expected {
            return Err(FrameError::WrongVersion {
                got: header.version,
                expected,
            });
        }
    }
    Ok((header.version, decode_payload(body)?))
}
