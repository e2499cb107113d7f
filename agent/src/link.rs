//! The agent's link to the coordinator: enrollment, then mTLS sessions with reconnects.
//!
//! The agent always dials out. Each session: `Hello` (version negotiation), `Register`,
//! then capacity reports every interval and whenever devices change, and runtime status
//! reports right after registration, at once when a replica's phase (or anything but its
//! metrics) changes, and with the next capacity tick when only metrics changed. The
//! coordinator pushes desired state, which goes to the supervisor and is acknowledged. On
//! any failure the agent waits an exponential, jittered backoff and tries the next
//! coordinator address; the supervisor and its runtimes never wait for the link.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use pyxis_protocol::{
    AckOf, AgentMessage, CoordinatorMessage, EnrollRequest, ErrorCode, Hello, Registration, ReplicaStatus,
    RuntimeStatusReport, MAX_FRAME_BYTES, SUPPORTED_VERSIONS,
};
use pyxis_transport::{
    framed::{FrameReader, FrameWriter, LinkError},
    pki,
    tls::TlsConfigError,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{identity::Identity, AgentShared};

/// Application close codes on the link (QUIC `CONNECTION_CLOSE` error codes).
pub mod close_code {
    /// Normal shutdown of either side.
    pub const SHUTDOWN: u32 = 0;
    /// The node was revoked.
    pub const REVOKED: u32 = 1;
    /// A protocol violation or refusal; the reason says which.
    pub const REFUSED: u32 = 2;
    /// Replaced by a newer connection of the same node.
    pub const REPLACED: u32 = 3;
    /// Enrollment finished; the agent reconnects with its certificate.
    pub const ENROLLED: u32 = 4;
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The address could not be resolved.
    #[error("cannot resolve coordinator address {addr}: {reason}")]
    Resolve {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The connection could not be started.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Cause.
        source: quinn::ConnectError,
    },
    /// The connection failed or was closed by the peer.
    #[error("connection to {addr} lost: {source}")]
    Connection {
        /// Where.
        addr: SocketAddr,
        /// Cause (includes the coordinator's close reason).
        source: quinn::ConnectionError,
    },
    /// No answer in time.
    #[error("timed out after {after:?} waiting for {what} from {addr}")]
    Timeout {
        /// Where.
        addr: SocketAddr,
        /// What was awaited.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// A frame could not be read or written.
    #[error("link error with {addr}: {source}")]
    Link {
        /// Where.
        addr: SocketAddr,
        /// Cause.
        source: LinkError,
    },
    /// The coordinator refused us with a reason.
    #[error("coordinator {addr} refused: {message} ({code:?})")]
    Refused {
        /// Where.
        addr: SocketAddr,
        /// Machine-readable reason.
        code: ErrorCode,
        /// Operator-facing reason.
        message: String,
    },
    /// The coordinator sent something out of order.
    #[error("coordinator {addr} sent {got} while {expected} was expected")]
    Unexpected {
        /// Where.
        addr: SocketAddr,
        /// What was expected.
        expected: &'static str,
        /// What arrived.
        got: String,
    },
    /// Enrollment returned a CA that does not match the pinned hash.
    #[error("the CA returned by {addr} does not match --ca-hash; refusing to store it")]
    CaMismatch {
        /// Where.
        addr: SocketAddr,
    },
    /// The stored identity is unusable.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// A TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// Key generation failed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The agent has no identity and no join token / CA hash to get one.
    #[error("this node has not joined yet and has no join token: pass --join-token and --ca-hash (from `pyxis token create`)")]
    NotJoined,
}

impl SessionError {
    /// Whether retrying cannot help without operator action (logged at error level).
    pub fn needs_operator(&self) -> bool {
        match self {
            SessionError::Refused { code, .. } => {
                matches!(
                    code,
                    ErrorCode::InvalidToken
                        | ErrorCode::Revoked
                        | ErrorCode::IncompatibleVersion
                        | ErrorCode::Unauthorized
                        | ErrorCode::BadRequest
                        | ErrorCode::Conflict
                )
            }
            SessionError::Connection {
                source: quinn::ConnectionError::ApplicationClosed(close),
                ..
            } => close.error_code == quinn::VarInt::from_u32(close_code::REVOKED),
            SessionError::CaMismatch { .. } | SessionError::NotJoined | SessionError::Identity(_) => true,
            SessionError::Connection {
                source: quinn::ConnectionError::TransportError(_),
                ..
            } => true,
            _ => false,
        }
    }
}

/// How long each step of opening a session may take (a dead address costs this much
/// before the next coordinator address is tried).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The shortest time without an acknowledgement after which a session is given up.
const ACK_DEADLINE_MIN: Duration = Duration::from_secs(3);

/// Resolves `addr` and picks its `turn`-th address (modulo their number), so that a name
/// with several addresses (say `localhost`: `::1` and `127.0.0.1`) is tried on each in turn.
async fn resolve(addr: &str, turn: usize) -> Result<SocketAddr, SessionError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| SessionError::Resolve {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(SessionError::Resolve {
            addr: addr.to_string(),
            reason: "no addresses".into(),
        });
    }
    Ok(addrs[turn % addrs.len()])
}

async fn timed<T>(
    addr: SocketAddr,
    what: &'static str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, SessionError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| SessionError::Timeout {
            addr,
            what,
            after: HANDSHAKE_TIMEOUT,
        })
}

/// An open, version-negotiated stream.
struct Opened {
    connection: quinn::Connection,
    writer: FrameWriter,
    reader: FrameReader,
}

async fn open(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    node_name: &str,
) -> Result<Opened, SessionError> {
    let connecting = endpoint
        .connect_with(config, addr, pki::COORDINATOR_SERVER_NAME)
        .map_err(|source| SessionError::Connect { addr, source })?;
    let connection = timed(addr, "the QUIC handshake", connecting)
        .await?
        .map_err(|source| SessionError::Connection { addr, source })?;
    let (send, recv) = timed(addr, "a stream", connection.open_bi())
        .await?
        .map_err(|source| SessionError::Connection { addr, source })?;
    let mut writer = FrameWriter::new(send, SUPPORTED_VERSIONS.max, MAX_FRAME_BYTES);
    let mut reader = FrameReader::new(recv, MAX_FRAME_BYTES);
    let hello = AgentMessage::Hello(Hello {
        versions: SUPPORTED_VERSIONS,
        agent_version: crate::AGENT_VERSION.to_string(),
        node_name: node_name.to_string(),
    });
    writer
        .send(&hello)
        .await
        .map_err(|source| link_error(&connection, addr, source))?;
    let ack = expect(&mut reader, &connection, addr, "HelloAck", |m| match m {
        CoordinatorMessage::HelloAck(ack) => Ok(ack),
        other => Err(other),
    })
    .await?;
    writer.version = ack.version;
    reader.version = Some(ack.version);
    Ok(Opened {
        connection,
        writer,
        reader,
    })
}

/// Reads the one reply a step waits for: `pick` takes the expected message (handing back
/// anything else), an `Error` is the coordinator's refusal, and a closed stream reports the
/// connection's close reason.
async fn expect<T>(
    reader: &mut FrameReader,
    connection: &quinn::Connection,
    addr: SocketAddr,
    expected: &'static str,
    pick: impl FnOnce(CoordinatorMessage) -> Result<T, CoordinatorMessage>,
) -> Result<T, SessionError> {
    match timed(addr, expected, reader.recv::<CoordinatorMessage>()).await? {
        Ok(Some((_, CoordinatorMessage::Error(e)))) => Err(SessionError::Refused {
            addr,
            code: e.code,
            message: e.message,
        }),
        Ok(Some((_, message))) => pick(message).map_err(|other| SessionError::Unexpected {
            addr,
            expected,
            got: message_name(&other),
        }),
        Ok(None) => Err(closed(connection, addr)),
        Err(source) => Err(link_error(connection, addr, source)),
    }
}

/// Prefer the connection's close reason over a bare stream error.
fn link_error(connection: &quinn::Connection, addr: SocketAddr, source: LinkError) -> SessionError {
    match connection.close_reason() {
        Some(reason) => SessionError::Connection { addr, source: reason },
        None => SessionError::Link { addr, source },
    }
}

fn closed(connection: &quinn::Connection, addr: SocketAddr) -> SessionError {
    match connection.close_reason() {
        Some(reason) => SessionError::Connection { addr, source: reason },
        None => SessionError::Link {
            addr,
            source: LinkError::ClosedMidFrame,
        },
    }
}

fn message_name(message: &CoordinatorMessage) -> String {
    match message {
        CoordinatorMessage::HelloAck(_) => "HelloAck",
        CoordinatorMessage::Enrolled(_) => "Enrolled",
        CoordinatorMessage::Registered(_) => "Registered",
        CoordinatorMessage::DesiredState(_) => "DesiredState",
        CoordinatorMessage::Ack(_) => "Ack",
        CoordinatorMessage::Error(_) => "Error",
    }
    .to_string()
}

/// Joins the cluster: generates a key locally, sends a CSR with the join token over a
/// connection that trusts only the pinned CA, and returns the signed identity.
pub async fn enroll(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    token: &str,
    pinned_ca: [u8; 32],
    node_name: &str,
) -> Result<Identity, SessionError> {
    let key = pki::generate_node_key(node_name)?;
    let config = pyxis_transport::tls::bootstrap_client_config(pinned_ca)?;
    let mut opened = open(endpoint, config, addr, node_name).await?;
    let request = AgentMessage::Enroll(EnrollRequest {
        token: token.to_string(),
        node_name: node_name.to_string(),
        csr_pem: key.csr_pem,
    });
    opened
        .writer
        .send(&request)
        .await
        .map_err(|source| link_error(&opened.connection, addr, source))?;
    let answer = expect(&mut opened.reader, &opened.connection, addr, "Enrolled", |m| match m {
        CoordinatorMessage::Enrolled(response) => Ok(response),
        other => Err(other),
    })
    .await;
    let result = answer.and_then(|response| {
        let ca_der = rustls_pki_types::CertificateDer::from_pem_slice(response.ca_pem.as_bytes()).ok();
        let matches =
            ca_der.is_some_and(|der| ring::digest::digest(&ring::digest::SHA256, der.as_ref()).as_ref() == pinned_ca);
        if matches {
            Ok(Identity {
                ca_pem: response.ca_pem,
                cert_pem: response.certificate_pem,
                key_pem: key.key_pem,
                node_name: node_name.to_string(),
            })
        } else {
            Err(SessionError::CaMismatch { addr })
        }
    });
    opened
        .connection
        .close(quinn::VarInt::from_u32(close_code::ENROLLED), b"enrolled");
    result
}

use rustls_pki_types::pem::PemObject;

/// Runs sessions until `shutdown`, reconnecting with backoff across `coordinators`.
pub async fn run(shared: Arc<AgentShared>, shutdown: CancellationToken) {
    let config = &shared.config;
    let mut backoff = crate::backoff::Backoff::new(config.min_backoff, config.max_backoff);
    let mut next = 0usize;
    let mut endpoints: std::collections::HashMap<bool, quinn::Endpoint> = std::collections::HashMap::new();
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let target = &config.coordinators[next % config.coordinators.len()];
        let turn = next / config.coordinators.len();
        next = next.wrapping_add(1);
        let attempt = async {
            let addr = resolve(target, turn).await?;
            let endpoint = match endpoints.get(&addr.is_ipv6()) {
                Some(e) => e.clone(),
                None => {
                    let bind: SocketAddr =
                        if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
                            .parse()
                            .map_err(|_| SessionError::Resolve {
                                addr: target.clone(),
                                reason: "bad bind address".into(),
                            })?;
                    let e = quinn::Endpoint::client(bind).map_err(|e| SessionError::Resolve {
                        addr: target.clone(),
                        reason: format!("cannot bind UDP socket: {e}"),
                    })?;
                    endpoints.insert(addr.is_ipv6(), e.clone());
                    e
                }
            };
            let identity = match Identity::load(&config.data_dir)? {
                Some(identity) => identity,
                None => {
                    let (Some(token), Some(pin)) = (&config.join_token, config.ca_hash) else {
                        return Err(SessionError::NotJoined);
                    };
                    tracing::info!(coordinator = %addr, node = %config.name, "joining the cluster with the join token (key generated locally)");
                    let identity = enroll(&endpoint, addr, token, pin, &config.name).await?;
                    // Check that certificate and key work together before anything is stored.
                    identity.client_config()?;
                    identity.save(&config.data_dir)?;
                    tracing::info!(dir = %Identity::dir(&config.data_dir).display(), "joined: node certificate stored (mode 0600); the join token is no longer needed");
                    identity
                }
            };
            session(&shared, &endpoint, addr, &identity, &mut backoff, &shutdown).await
        };
        // Shutdown must not wait for a connection attempt to a dead address.
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => Ok(()),
            outcome = attempt => outcome,
        };
        shared.set_connected(false, None);
        match outcome {
            Ok(()) => break,
            Err(e) => {
                shared.record_error(&e);
                if e.needs_operator() {
                    tracing::error!(coordinator = %target, error = %e, "link refused; retrying with backoff, but this needs operator action");
                } else {
                    tracing::warn!(coordinator = %target, error = %e, "link down; reconnecting with backoff");
                }
            }
        }
        let delay = backoff.next_delay(fastrand::f64());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    for endpoint in endpoints.values() {
        endpoint.close(quinn::VarInt::from_u32(close_code::SHUTDOWN), b"agent shutting down");
        // Give the close a moment to reach the coordinator, without holding up shutdown.
        let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
    }
}

async fn session(
    shared: &Arc<AgentShared>,
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    identity: &Identity,
    backoff: &mut crate::backoff::Backoff,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let client = identity.client_config()?;
    let Opened {
        connection,
        mut writer,
        mut reader,
    } = open(endpoint, client, addr, &shared.config.name).await?;
    let registration = AgentMessage::Register(Registration {
        node: shared.node_info(),
        capacity: shared.capacity(0),
    });
    writer
        .send(&registration)
        .await
        .map_err(|source| link_error(&connection, addr, source))?;
    let ack = expect(&mut reader, &connection, addr, "Registered", |m| match m {
        CoordinatorMessage::Registered(ack) => Ok(ack),
        other => Err(other),
    })
    .await?;
    tracing::info!(coordinator = %addr, node = %ack.node_name, version = writer.version, "registered");
    let interval =
        Duration::from_millis(ack.report_interval_ms).clamp(Duration::from_millis(50), Duration::from_secs(60));
    let interval = interval.min(shared.config.report_interval);
    backoff.reset();
    shared.set_connected(true, Some(addr));

    // The coordinator learns what runs here at once, then of every change.
    let mut statuses = shared.supervisor.subscribe();
    let mut statuses_open = true;
    let mut status_seq = 0u64;
    let mut sent = statuses.borrow_and_update().clone();
    if let Err(source) = send_status(&mut writer, &mut status_seq, &sent.replicas).await {
        return Err(link_error(&connection, addr, source));
    }

    // Reading is not cancel-safe, so a dedicated task owns the receive stream.
    let (incoming_tx, mut incoming) = mpsc::channel::<Result<Option<CoordinatorMessage>, LinkError>>(16);
    let reader_task = tokio::spawn(async move {
        loop {
            let item = reader.recv::<CoordinatorMessage>().await.map(|m| m.map(|(_, m)| m));
            let stop = !matches!(item, Ok(Some(_)));
            if incoming_tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    // A coordinator that stops acknowledging (crashed, partitioned) is detected after a few
    // missed acknowledgements instead of the much longer QUIC idle timeout.
    let ack_deadline = (interval * 5).max(ACK_DEADLINE_MIN);
    let mut last_ack = tokio::time::Instant::now();
    let mut acked_seq = 0u64;
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                connection.close(quinn::VarInt::from_u32(close_code::SHUTDOWN), b"agent shutting down");
                break Ok(());
            }
            _ = ticker.tick() => {
                if seq > acked_seq && last_ack.elapsed() > ack_deadline {
                    break Err(SessionError::Timeout { addr, what: "acknowledgements of capacity reports", after: ack_deadline });
                }
                seq += 1;
                let report = AgentMessage::Capacity(shared.capacity(seq));
                if let Err(source) = writer.send(&report).await {
                    break Err(link_error(&connection, addr, source));
                }
                shared.reports_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Metrics-only changes travel with the capacity tick.
                let board = statuses.borrow_and_update().clone();
                if board.replicas != sent.replicas {
                    if let Err(source) = send_status(&mut writer, &mut status_seq, &board.replicas).await {
                        break Err(link_error(&connection, addr, source));
                    }
                    sent = board;
                }
            }
            changed = statuses.changed(), if statuses_open => {
                if changed.is_err() {
                    statuses_open = false;
                    continue;
                }
                let board = statuses.borrow_and_update().clone();
                if board.revision != sent.revision {
                    if let Err(source) = send_status(&mut writer, &mut status_seq, &board.replicas).await {
                        break Err(link_error(&connection, addr, source));
                    }
                    sent = board;
                }
            }
            _ = shared.devices_changed.notified() => {
                if seq > acked_seq && last_ack.elapsed() > ack_deadline {
                    break Err(SessionError::Timeout { addr, what: "acknowledgements of capacity reports", after: ack_deadline });
                }
                seq += 1;
                let report = AgentMessage::Capacity(shared.capacity(seq));
                if let Err(source) = writer.send(&report).await {
                    break Err(link_error(&connection, addr, source));
                }
                shared.reports_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ticker.reset();
            }
            item = incoming.recv() => match item {
                Some(Ok(Some(CoordinatorMessage::DesiredState(desired)))) => {
                    let generation = desired.generation;
                    if shared.apply_desired(desired) {
                        tracing::info!(generation, "applied desired state");
                    }
                    let ack = AgentMessage::Ack(pyxis_protocol::Ack { of: AckOf::DesiredState(generation) });
                    if let Err(source) = writer.send(&ack).await {
                        break Err(link_error(&connection, addr, source));
                    }
                }
                Some(Ok(Some(CoordinatorMessage::Ack(ack)))) => {
                    if let AckOf::Capacity(n) = ack.of {
                        acked_seq = acked_seq.max(n);
                        last_ack = tokio::time::Instant::now();
                    }
                    shared.record_ack(ack.of);
                }
                Some(Ok(Some(CoordinatorMessage::Error(e)))) => {
                    break Err(SessionError::Refused { addr, code: e.code, message: e.message });
                }
                Some(Ok(Some(other))) => {
                    break Err(SessionError::Unexpected { addr, expected: "DesiredState or Ack", got: message_name(&other) });
                }
                Some(Ok(None)) | None => break Err(closed(&connection, addr)),
                Some(Err(source)) => break Err(link_error(&connection, addr, source)),
            }
        }
    };
    reader_task.abort();
    result
}

/// Sends every replica's status with the next sequence number. A report too large for one
/// frame (many replicas with long log tails) goes without the log tails rather than
/// breaking the session over and over.
async fn send_status(writer: &mut FrameWriter, seq: &mut u64, replicas: &[ReplicaStatus]) -> Result<(), LinkError> {
    *seq += 1;
    let report = AgentMessage::RuntimeStatus(RuntimeStatusReport {
        seq: *seq,
        replicas: replicas.to_vec(),
    });
    match writer.send(&report).await {
        Err(LinkError::Frame(pyxis_protocol::FrameError::Oversized { len, max })) => {
            tracing::warn!(
                len,
                max,
                "runtime status report too large for one frame; sending it without log tails"
            );
            let trimmed = replicas
                .iter()
                .map(|r| ReplicaStatus {
                    log_tail: Vec::new(),
                    ..r.clone()
                })
                .collect();
            writer
                .send(&AgentMessage::RuntimeStatus(RuntimeStatusReport {
                    seq: *seq,
                    replicas: trimmed,
                }))
                .await
        }
        other => other,
    }
}
