//! Protocol frames over QUIC streams.

use pyxis_protocol::{decode_payload, encode_frame, FrameError, FrameHeader, FRAME_HEADER_BYTES};
use serde::{de::DeserializeOwned, Serialize};

/// Why a frame could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The bytes were not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Reading the stream failed.
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Writing the stream failed.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The peer ended the stream in the middle of a frame.
    #[error("peer closed the stream in the middle of a frame")]
    ClosedMidFrame,
}

/// Writes frames of the agreed version.
#[derive(Debug)]
pub struct FrameWriter {
    send: quinn::SendStream,
    /// Version written into each frame header.
    pub version: u16,
    max: u32,
}

impl FrameWriter {
    /// Wraps a send stream.
    pub fn new(send: quinn::SendStream, version: u16, max: u32) -> Self {
        Self { send, version, max }
    }

    /// Encodes and writes one message.
    pub async fn send<M: Serialize>(&mut self, message: &M) -> Result<(), LinkError> {
        let frame = encode_frame(self.version, message, self.max)?;
        self.send.write_all(&frame).await?;
        Ok(())
    }

    /// Finishes the stream (best effort).
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// Reads frames, checking the agreed version once one is set.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    /// Expected frame version; `None` until negotiated (only `Hello` is read then).
    pub version: Option<u16>,
    max: u32,
}

impl FrameReader {
    /// Wraps a receive stream.
    pub fn new(recv: quinn::RecvStream, max: u32) -> Self {
        Self {
            recv,
            version: None,
            max,
        }
    }

    /// Reads one message; `Ok(None)` when the peer finished the stream between frames.
    /// Returns the frame's version alongside the message.
    pub async fn recv<M: DeserializeOwned>(&mut self) -> Result<Option<(u16, M)>, LinkError> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        match self.recv.read_exact(&mut header).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(LinkError::ClosedMidFrame),
            Err(e) => return Err(e.into()),
        }
        let header = FrameHeader::parse(&header, self.max)?;
        if let Some(expected) = self.version {
            if header.version != expected {
                return Err(FrameError::WrongVersion {
                    got: header.version,
                    expected,
                }
                .into());
            }
        }
        let mut payload = vec![0u8; header.payload_len()];
        match self.recv.read_exact(&mut payload).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(LinkError::ClosedMidFrame),
            Err(e) => return Err(e.into()),
        }
        Ok(Some((header.version, decode_payload(&payload)?)))
    }
}
