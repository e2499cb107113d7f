//! Security and framing of the agent <-> coordinator link.
//!
//! - [`pki`]: the cluster CA, node certificates from CSRs, the CA hash agents pin.
//! - [`tls`]: QUIC client and server configurations (rustls with the ring provider only):
//!   the pinned-CA bootstrap client, the mutual-TLS client, the server that accepts both
//!   bootstrap and mTLS connections.
//! - [`framed`]: reading and writing protocol frames on QUIC streams.
//!
//! This crate knows nothing of registries, tokens or nodes' state: it proves identities
//! and moves frames.

pub mod framed;
pub mod pki;
pub mod tls;
