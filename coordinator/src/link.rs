//! The coordinator's side of the agent link: accepts QUIC connections and runs one
//! session task per connection.
//!
//! A connection with a node certificate may `Register` and report; a connection without
//! one may only `Enroll` with a join token. Every refusal is logged with the peer address
//! and the reason, answered with a typed `Error` where a stream is open, and never
//! affects other connections.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use pyxis_agent::link::close_code;
use pyxis_protocol::{
    negotiate, Ack, AckOf, AgentMessage, CapacityReport, CoordinatorMessage, DesiredState, ErrorCode, ErrorMessage,
    HelloAck, NodeInfo, RegisterAck, ReplicaPhase, MAX_FRAME_BYTES, SUPPORTED_VERSIONS,
};
use pyxis_transport::{
    framed::{FrameReader, FrameWriter, LinkError},
    pki::fingerprint,
    tls::peer_certificates,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{
    api_types::{EccCountsView, MigInstanceView, MigView, PeerLinkView},
    metrics::Refusal,
    registry::{
        Capacity, ConnectionHandle, DeviceDetails, DeviceFacts, DeviceState, DeviceTelemetry, NewSession, NodeFacts,
        RegistryError,
    },
    server::Shared,
    time::now_ms,
    tokens,
};

const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Everything an unauthenticated connection may take, from arrival to `Enrolled`.
const ENROLLMENT_DEADLINE: Duration = Duration::from_secs(30);
/// Frame limit before authentication (a CSR is about 1 KiB).
const MAX_UNAUTHENTICATED_FRAME_BYTES: u32 = 64 * 1024;
/// Connections without a certificate (enrollment) allowed at once; more wait.
const MAX_CONCURRENT_ENROLLMENTS: usize = 256;

/// Accepts connections until `shutdown`.
pub async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, shutdown: CancellationToken) {
    let enrollments = Arc::new(Semaphore::new(MAX_CONCURRENT_ENROLLMENTS));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let shared = shared.clone();
        let enrollments = enrollments.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                // The agent refused *our* certificate (TLS alert): almost always a stale
                // --ca-hash on the agent, which an operator must fix there.
                Err(quinn::ConnectionError::ConnectionClosed(close))
                    if (0x100..0x200).contains(&u64::from(close.error_code)) =>
                {
                    shared.metrics.refused(Refusal::Handshake);
                    tracing::warn!(peer = %remote, error = %close, "an agent rejected the coordinator's certificate: check that its --ca-hash is this cluster's (pyxis token create prints it)");
                    return;
                }
                // A peer that gave up or went silent mid-handshake is not a security event
                // (it is what overload or a restarting agent looks like); a failed TLS check is.
                Err(
                    e @ (quinn::ConnectionError::TimedOut
                    | quinn::ConnectionError::ApplicationClosed(_)
                    | quinn::ConnectionError::ConnectionClosed(_)
                    | quinn::ConnectionError::LocallyClosed
                    | quinn::ConnectionError::Reset),
                ) => {
                    shared.metrics.refused(Refusal::Aborted);
                    tracing::debug!(peer = %remote, error = %e, "agent connection abandoned during the handshake");
                    return;
                }
                Err(e) => {
                    shared.metrics.refused(Refusal::Handshake);
                    tracing::warn!(peer = %remote, error = %e, "refused agent connection: TLS handshake failed (certificate from another CA, or not a Pyxis agent)");
                    return;
                }
            };
            handle_connection(connection, remote, shared, enrollments).await;
        });
    }
}

fn refuse(connection: &quinn::Connection, reason: &str) {
    connection.close(quinn::VarInt::from_u32(close_code::REFUSED), reason.as_bytes());
}

async fn handle_connection(
    connection: quinn::Connection,
    remote: SocketAddr,
    shared: Arc<Shared>,
    enrollments: Arc<Semaphore>,
) {
    let node = match peer_certificates(&connection).and_then(|chain| chain.first().map(|c| fingerprint(c.as_ref()))) {
        Some(fp) => match shared.registry().identify(&fp) {
            Ok(name) => Some((name, fp)),
            Err(RegistryError::Revoked(name)) => {
                shared.metrics.refused(Refusal::Revoked);
                tracing::warn!(peer = %remote, node = %name, "refused connection: node is revoked");
                connection.close(
                    quinn::VarInt::from_u32(close_code::REVOKED),
                    format!("node {name} is revoked").as_bytes(),
                );
                return;
            }
            Err(e) => {
                shared.metrics.refused(Refusal::UnknownCertificate);
                tracing::warn!(peer = %remote, error = %e, "refused connection");
                refuse(&connection, &e.to_string());
                return;
            }
        },
        None => None,
    };
    match node {
        Some((name, fp)) => serve(connection, remote, shared, Some((name, fp))).await,
        None => {
            // Everything an unauthenticated peer does (waiting for a slot included) has one
            // deadline, so stalled or hostile peers cannot hold slots or tasks for long.
            let deadline = tokio::time::timeout(ENROLLMENT_DEADLINE, async {
                let Ok(_permit) = enrollments.acquire_owned().await else {
                    return;
                };
                serve(connection.clone(), remote, shared, None).await;
            });
            if deadline.await.is_err() {
                tracing::warn!(peer = %remote, "dropped an unauthenticated connection that did not finish joining in {ENROLLMENT_DEADLINE:?}");
                refuse(&connection, "did not finish joining in time");
            }
        }
    }
}

/// Runs one session on an identified (or, for `None`, unauthenticated) connection.
async fn serve(connection: quinn::Connection, remote: SocketAddr, shared: Arc<Shared>, node: Option<(String, String)>) {
    let stream = tokio::time::timeout(STEP_TIMEOUT, connection.accept_bi()).await;
    let (send, recv) = match stream {
        Ok(Ok(streams)) => streams,
        Ok(Err(_)) => return,
        Err(_) => {
            refuse(&connection, "no stream opened in time");
            return;
        }
    };
    // Before authentication only small messages (Hello, Enroll with a CSR) make sense.
    let max_frame = if node.is_some() {
        MAX_FRAME_BYTES
    } else {
        MAX_UNAUTHENTICATED_FRAME_BYTES
    };
    let mut session = Session {
        connection: connection.clone(),
        remote,
        shared: shared.clone(),
        writer: FrameWriter::new(send, SUPPORTED_VERSIONS.max, MAX_FRAME_BYTES),
        reader: FrameReader::new(recv, max_frame),
    };
    let result = match node {
        Some((name, fp)) => session.run_node(name, fp).await,
        None => session.run_enrollment().await,
    };
    if let Err(refusal) = result {
        shared.metrics.refused(refusal.metric);
        tracing::warn!(peer = %remote, node = refusal.node.as_deref().unwrap_or("-"), reason = %refusal.message, "refused agent");
        if let Some(code) = refusal.code {
            let error = CoordinatorMessage::Error(ErrorMessage {
                code,
                message: refusal.message.clone(),
            });
            let _ = tokio::time::timeout(Duration::from_secs(2), session.writer.send(&error)).await;
            session.writer.finish();
            // Give the agent a moment to read the error before the close.
            let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
        }
        refuse(&connection, &refusal.message);
    }
}

/// A refusal: what to count, what to tell the agent, what to log.
#[derive(Debug)]
struct Refused {
    metric: Refusal,
    code: Option<ErrorCode>,
    node: Option<String>,
    message: String,
}

impl Refused {
    fn new(metric: Refusal, code: ErrorCode, node: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            metric,
            code: Some(code),
            node: node.map(str::to_string),
            message: message.into(),
        }
    }

    fn link(node: Option<&str>, error: &LinkError) -> Self {
        // A frame we cannot read: tell the agent (it may still read) and close.
        Self {
            metric: Refusal::Protocol,
            code: Some(ErrorCode::BadRequest),
            node: node.map(str::to_string),
            message: error.to_string(),
        }
    }
}

struct Session {
    connection: quinn::Connection,
    remote: SocketAddr,
    shared: Arc<Shared>,
    writer: FrameWriter,
    reader: FrameReader,
}

fn agent_message_name(message: &AgentMessage) -> &'static str {
    match message {
        AgentMessage::Hello(_) => "Hello",
        AgentMessage::Enroll(_) => "Enroll",
        AgentMessage::Register(_) => "Register",
        AgentMessage::Capacity(_) => "Capacity",
        AgentMessage::RuntimeStatus(_) => "RuntimeStatus",
        AgentMessage::Ack(_) => "Ack",
        AgentMessage::Error(_) => "Error",
    }
}

impl Session {
    /// Reads one message within the step timeout. `Ok(None)`: the agent went away.
    async fn next(&mut self, node: Option<&str>) -> Result<Option<AgentMessage>, Refused> {
        match tokio::time::timeout(STEP_TIMEOUT, self.reader.recv::<AgentMessage>()).await {
            Err(_) => Err(Refused {
                metric: Refusal::Protocol,
                code: Some(ErrorCode::UnexpectedMessage),
                node: node.map(str::to_string),
                message: format!("no message within {STEP_TIMEOUT:?}"),
            }),
            Ok(Ok(Some((_, message)))) => Ok(Some(message)),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(LinkError::Read(_))) | Ok(Err(LinkError::ClosedMidFrame)) => Ok(None),
            Ok(Err(e)) => Err(Refused::link(node, &e)),
        }
    }

    async fn send(&mut self, message: &CoordinatorMessage) -> Result<(), Refused> {
        send_on(&mut self.writer, message).await
    }

    /// Reads `Hello`, negotiates, answers `HelloAck`.
    async fn hello(&mut self, node: Option<&str>) -> Result<bool, Refused> {
        let hello = match self.next(node).await? {
            None => return Ok(false),
            Some(AgentMessage::Hello(hello)) => hello,
            Some(other) => {
                return Err(Refused::new(
                    Refusal::Protocol,
                    ErrorCode::UnexpectedMessage,
                    node,
                    format!("expected Hello first, got {}", agent_message_name(&other)),
                ))
            }
        };
        let version = negotiate(hello.versions, SUPPORTED_VERSIONS).map_err(|e| {
            Refused::new(
                Refusal::Version,
                ErrorCode::IncompatibleVersion,
                node.or(Some(&hello.node_name)),
                e.to_string(),
            )
        })?;
        self.writer.version = version;
        self.reader.version = Some(version);
        self.send(&CoordinatorMessage::HelloAck(HelloAck {
            version,
            coordinator_version: crate::VERSION.to_string(),
        }))
        .await?;
        Ok(true)
    }

    async fn run_enrollment(&mut self) -> Result<(), Refused> {
        if !self.hello(None).await? {
            return Ok(());
        }
        let request = match self.next(None).await? {
            None => return Ok(()),
            Some(AgentMessage::Enroll(request)) => request,
            Some(AgentMessage::Register(_)) => {
                return Err(Refused::new(
                    Refusal::UnknownCertificate,
                    ErrorCode::Unauthorized,
                    None,
                    "registration needs a node certificate; join first with --join-token and --ca-hash",
                ))
            }
            Some(other) => {
                return Err(Refused::new(
                    Refusal::Protocol,
                    ErrorCode::UnexpectedMessage,
                    None,
                    format!("expected Enroll, got {}", agent_message_name(&other)),
                ))
            }
        };
        let name = request.node_name.clone();
        let node = Some(name.as_str());
        pyxis_agent::config::validate_node_name(&name)
            .map_err(|e| Refused::new(Refusal::Protocol, ErrorCode::BadRequest, node, e.to_string()))?;
        let (id, secret) = tokens::parse(&request.token)
            .map_err(|e| Refused::new(Refusal::Token, ErrorCode::InvalidToken, node, e.to_string()))?;
        let shared = self.shared.clone();
        let row = blocking(&shared, {
            let id = id.to_string();
            move |s| s.store.token(&id)
        })
        .await
        .map_err(|e| internal(node, &e))?;
        tokens::check(row.as_ref(), id, secret, now_ms())
            .map_err(|e| Refused::new(Refusal::Token, ErrorCode::InvalidToken, node, e.to_string()))?;
        shared
            .registry()
            .can_enroll(&name, Instant::now(), busy_window(&shared))
            .map_err(|e| enroll_refusal(node, e))?;
        let certificate_pem = shared
            .ca
            .sign_node_csr(&request.csr_pem, &name, 365)
            .map_err(|e| Refused::new(Refusal::Protocol, ErrorCode::BadRequest, node, e.to_string()))?;
        let uses_left = blocking(&shared, {
            let id = id.to_string();
            move |s| s.store.consume_token(&id)
        })
        .await
        .map_err(|e| internal(node, &e))?
        .ok_or_else(|| {
            Refused::new(
                Refusal::Token,
                ErrorCode::InvalidToken,
                node,
                tokens::TokenError::UsedUp { id: id.to_string() }.to_string(),
            )
        })?;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(certificate_pem.as_bytes())
            .map_err(|e| internal(node, &e))?;
        let (row, old) = shared
            .registry()
            .enroll(
                &name,
                &fingerprint(der.as_ref()),
                Instant::now(),
                now_ms(),
                busy_window(&shared),
            )
            .map_err(|e| enroll_refusal(node, e))?;
        if let Some(old) = old {
            old.close(
                quinn::VarInt::from_u32(close_code::REPLACED),
                b"node re-joined with a new certificate",
            );
        }
        blocking(&shared, move |s| s.store.enroll_node(&row))
            .await
            .map_err(|e| internal(node, &e))?;
        shared
            .metrics
            .enrollments
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(peer = %self.remote, node = %name, token_id = id, uses_left, "node joined: certificate issued");
        shared.event(
            &format!("node/{name}"),
            "Normal",
            "Joined",
            &format!("joined from {} with token {id}", self.remote),
        );
        self.send(&CoordinatorMessage::Enrolled(pyxis_protocol::EnrollResponse {
            certificate_pem,
            ca_pem: shared.ca.cert_pem().to_string(),
        }))
        .await?;
        self.writer.finish();
        let _ = tokio::time::timeout(STEP_TIMEOUT, self.connection.closed()).await;
        Ok(())
    }

    async fn run_node(&mut self, name: String, fingerprint: String) -> Result<(), Refused> {
        let node = Some(name.as_str());
        if !self.hello(node).await? {
            return Ok(());
        }
        let registration = match self.next(node).await? {
            None => return Ok(()),
            Some(AgentMessage::Register(registration)) => registration,
            Some(other) => {
                return Err(Refused::new(
                    Refusal::Protocol,
                    ErrorCode::UnexpectedMessage,
                    node,
                    format!("expected Register, got {}", agent_message_name(&other)),
                ))
            }
        };
        if registration.node.name != name {
            return Err(Refused::new(
                Refusal::Protocol,
                ErrorCode::BadRequest,
                node,
                format!(
                    "registration names node {:?} but the certificate is for {name:?}",
                    registration.node.name
                ),
            ));
        }
        let connection_id = self.shared.connection_id();
        let (desired_tx, desired_rx) = tokio::sync::watch::channel(DesiredState::default());
        let handle = ConnectionHandle {
            id: connection_id,
            remote: self.remote,
            connection: self.connection.clone(),
            desired: desired_tx,
        };
        let facts = facts_from_wire(&registration.node);
        let devices = facts.devices.len();
        let agent_version = registration.node.agent_version.clone();
        let capacity = capacity_from_wire(registration.capacity);
        let unwell: Vec<String> = capacity
            .devices
            .iter()
            .filter(|d| d.health != "healthy")
            .map(|d| {
                let index = facts.devices.iter().find(|f| f.uuid == d.uuid).map(|f| f.index);
                let device = index.map_or_else(|| d.uuid.clone(), |i| format!("{i} ({})", d.uuid));
                format!("device {device} is {} at registration: {}", d.health, d.health_reason)
            })
            .collect();
        let (row, old) = self
            .shared
            .registry()
            .register(
                &name,
                NewSession {
                    facts,
                    capacity,
                    connection: handle,
                    fingerprint: fingerprint.clone(),
                },
                Instant::now(),
                now_ms(),
                busy_window(&self.shared),
            )
            .map_err(|e| match e {
                RegistryError::AlreadyConnected { .. } => {
                    self.shared.event(
                        &format!("node/{name}"),
                        "Warning",
                        "DuplicateAgent",
                        &format!("refused a second connection from {}: {e}", self.remote),
                    );
                    Refused::new(Refusal::Duplicate, ErrorCode::Conflict, node, e.to_string())
                }
                e @ RegistryError::Revoked(_) => {
                    Refused::new(Refusal::Revoked, ErrorCode::Revoked, node, e.to_string())
                }
                e => Refused::new(
                    Refusal::UnknownCertificate,
                    ErrorCode::Unauthorized,
                    node,
                    e.to_string(),
                ),
            })?;
        if let Some(old) = old {
            old.close(
                quinn::VarInt::from_u32(close_code::REPLACED),
                b"replaced by a newer connection of the same node",
            );
        }
        if let Some(row) = row {
            // Only the facts, and only while the certificate is still the node's: a revoke,
            // cordon or delete that races with this write is never undone by it.
            let persisted = blocking(&self.shared, move |s| s.store.update_facts(&row)).await;
            if let Err(e) = persisted {
                tracing::warn!(node = %name, error = %e, "cannot persist node facts");
            }
        }
        tracing::info!(peer = %self.remote, node = %name, accelerators = devices, agent_version = %agent_version, "node registered");
        self.shared.wake_reconciler();
        for message in &unwell {
            tracing::warn!(node = %name, "{message}");
            self.shared
                .event(&format!("node/{name}"), "Warning", "DeviceNotHealthy", message);
        }
        let interval_ms = self.shared.config.report_interval.as_millis() as u64;
        let result = async {
            self.send(&CoordinatorMessage::Registered(RegisterAck {
                node_name: name.clone(),
                report_interval_ms: interval_ms,
            }))
            .await?;
            // What the node should run (generation 0, nothing, until something is placed
            // there). Later changes arrive through the handle's channel.
            let desired = self.shared.registry().desired(&name).unwrap_or_default();
            self.send(&CoordinatorMessage::DesiredState(desired)).await?;
            self.report_loop(&name, connection_id, desired_rx).await
        }
        .await;
        self.shared.registry().disconnected(&name, connection_id);
        let why = self
            .connection
            .close_reason()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "stream ended".into());
        tracing::info!(peer = %self.remote, node = %name, reason = %why, "agent disconnected");
        match result {
            Err(Refused { code: None, .. }) => Ok(()),
            other => other,
        }
    }

    async fn report_loop(
        &mut self,
        name: &str,
        connection_id: u64,
        mut desired: tokio::sync::watch::Receiver<DesiredState>,
    ) -> Result<(), Refused> {
        let node = Some(name);
        loop {
            // Between reports the agent may be idle for a whole interval: no step timeout
            // here; a silent agent is caught by liveness and the QUIC idle timeout. Reading
            // a frame is not cancel-safe, so the read stays pinned while new desired states
            // are sent (on the writer, a disjoint field).
            let received = {
                let read = self.reader.recv::<AgentMessage>();
                tokio::pin!(read);
                loop {
                    tokio::select! {
                        result = &mut read => break result,
                        changed = desired.changed() => {
                            if changed.is_err() {
                                // The registry dropped the handle: the node was deleted or
                                // replaced; its connection is being closed.
                                return Ok(());
                            }
                            let state = desired.borrow_and_update().clone();
                            tracing::info!(node = %name, generation = state.generation, replicas = state.replicas.len(), "sending desired state");
                            send_on(&mut self.writer, &CoordinatorMessage::DesiredState(state)).await?;
                        }
                    }
                }
            };
            let message = match received {
                Ok(Some((_, message))) => message,
                Ok(None) | Err(LinkError::Read(_)) | Err(LinkError::ClosedMidFrame) => return Ok(()),
                Err(e) => return Err(Refused::link(node, &e)),
            };
            match message {
                AgentMessage::Capacity(report) => {
                    let lag_ms = now_ms().saturating_sub(report.sent_at_unix_ms as i64).max(0);
                    let seq = report.seq;
                    let capacity = capacity_from_wire(report);
                    let outcome =
                        self.shared
                            .registry()
                            .report(name, connection_id, capacity, Instant::now(), now_ms());
                    let Some(changes) = outcome else {
                        // Replaced or revoked meanwhile; the connection is being closed.
                        return Ok(());
                    };
                    if !changes.is_empty() {
                        // A device's health tier changed: placement may move replicas.
                        self.shared.wake_reconciler();
                    }
                    for change in changes {
                        let (reason, kind, message) = change.event();
                        if kind == "Normal" {
                            tracing::info!(node = %name, device = %change.uuid, "{message}");
                        } else {
                            tracing::warn!(node = %name, device = %change.uuid, "{message}");
                        }
                        self.shared.event(&format!("node/{name}"), kind, reason, &message);
                    }
                    self.shared
                        .metrics
                        .capacity_reports
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.shared.metrics.report_lag.observe(lag_ms as f64 / 1000.0);
                    self.send(&CoordinatorMessage::Ack(Ack {
                        of: AckOf::Capacity(seq),
                    }))
                    .await?;
                }
                AgentMessage::RuntimeStatus(status) => {
                    let seq = status.seq;
                    let (changed, removed): (Vec<(String, ReplicaPhase, String)>, Vec<String>) = {
                        let registry = self.shared.registry();
                        let before = registry.node_replica_phases(name);
                        drop(registry);
                        let changed = status
                            .replicas
                            .iter()
                            .filter(|r| before.get(&r.name) != Some(&r.phase))
                            .map(|r| (r.name.clone(), r.phase, r.reason.clone()))
                            .collect();
                        let removed = before
                            .keys()
                            .filter(|n| !status.replicas.iter().any(|r| &r.name == *n))
                            .cloned()
                            .collect();
                        (changed, removed)
                    };
                    if !self
                        .shared
                        .registry()
                        .runtime_status(name, connection_id, status.replicas)
                    {
                        return Ok(());
                    }
                    // Placement waits for this after a restart, and a drain's surge ends
                    // when a replacement turns Ready.
                    self.shared.wake_reconciler();
                    for replica in removed {
                        tracing::info!(node = %name, replica = %replica, "replica stopped and removed");
                        self.shared.event(
                            &format!("replica/{replica}"),
                            "Normal",
                            "Removed",
                            &format!("stopped and removed from node {name}"),
                        );
                    }
                    for (replica, phase, reason) in changed {
                        let message = if reason.is_empty() {
                            format!("{} on node {name}", phase.as_str())
                        } else {
                            format!("{} on node {name}: {reason}", phase.as_str())
                        };
                        let warning = matches!(
                            phase,
                            ReplicaPhase::CrashLoop | ReplicaPhase::Failed | ReplicaPhase::Unhealthy
                        );
                        if warning {
                            tracing::warn!(node = %name, replica = %replica, phase = phase.as_str(), reason = %reason, "replica phase changed");
                            self.shared.event(
                                &format!("node/{name}"),
                                "Warning",
                                &format!("Replica{}", phase.as_str()),
                                &format!("replica {replica}: {message}"),
                            );
                        } else {
                            tracing::info!(node = %name, replica = %replica, phase = phase.as_str(), "replica phase changed");
                        }
                        self.shared.event(
                            &format!("replica/{replica}"),
                            if warning { "Warning" } else { "Normal" },
                            phase.as_str(),
                            &message,
                        );
                    }
                    self.send(&CoordinatorMessage::Ack(Ack {
                        of: AckOf::RuntimeStatus(seq),
                    }))
                    .await?;
                }
                AgentMessage::Ack(ack) => tracing::debug!(node = %name, ?ack, "agent acknowledged"),
                AgentMessage::Error(e) => {
                    tracing::warn!(node = %name, code = ?e.code, message = %e.message, "agent reported an error")
                }
                other => {
                    return Err(Refused::new(
                        Refusal::Protocol,
                        ErrorCode::UnexpectedMessage,
                        node,
                        format!("unexpected {} after registration", agent_message_name(&other)),
                    ))
                }
            }
        }
    }
}

/// Writes one message. A failed or stalled write means the agent is gone or not reading;
/// the caller ends the session quietly.
async fn send_on(writer: &mut FrameWriter, message: &CoordinatorMessage) -> Result<(), Refused> {
    let gone = |why: String| Refused {
        metric: Refusal::Protocol,
        code: None,
        node: None,
        message: why,
    };
    match tokio::time::timeout(STEP_TIMEOUT, writer.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(gone(format!("write failed: {e}"))),
        Err(_) => Err(gone(format!("the agent did not read for {STEP_TIMEOUT:?}"))),
    }
}

/// Runs a store call on the blocking pool (SQLite never runs on an async worker).
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    call: impl FnOnce(&Shared) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, crate::store::StoreError> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || call(&shared))
        .await
        .unwrap_or(Err(crate::store::StoreError::Poisoned))
}

/// Maps a registry refusal of an enrollment to what the agent is told.
fn enroll_refusal(node: Option<&str>, e: RegistryError) -> Refused {
    match e {
        RegistryError::AlreadyConnected { .. } | RegistryError::NameTaken(_) => {
            Refused::new(Refusal::Duplicate, ErrorCode::Conflict, node, e.to_string())
        }
        RegistryError::Revoked(_) => Refused::new(Refusal::Revoked, ErrorCode::Revoked, node, e.to_string()),
        other => Refused::new(Refusal::Protocol, ErrorCode::Unauthorized, node, other.to_string()),
    }
}

/// How recently a node's current connection must have reported for a second
/// connection with the same identity to be refused.
fn busy_window(shared: &Shared) -> Duration {
    (shared.config.report_interval * 3).max(Duration::from_secs(2))
}

fn internal(node: Option<&str>, error: &dyn std::fmt::Display) -> Refused {
    tracing::error!(error = %error, "internal error during enrollment");
    Refused::new(
        Refusal::Protocol,
        ErrorCode::Internal,
        node,
        format!("internal error: {error}; retry later"),
    )
}

use rustls_pki_types::pem::PemObject;

/// Wire -> internal, at the edge.
fn facts_from_wire(info: &NodeInfo) -> NodeFacts {
    NodeFacts {
        hostname: info.hostname.clone(),
        os: info.os.clone(),
        kernel: info.kernel.clone(),
        cpu_model: info.cpu_model.clone(),
        cpu_cores: info.cpu_cores,
        memory_bytes: info.memory_bytes,
        agent_version: info.agent_version.clone(),
        runtimes: info.runtimes.clone(),
        devices: info
            .accelerators
            .iter()
            .map(|a| DeviceFacts {
                index: a.index,
                vendor: a.vendor.as_str().to_string(),
                model: a.model.clone(),
                uuid: a.uuid.clone(),
                memory_bytes: a.memory_bytes,
                hardware_class: a.hardware_class.clone(),
                simulated: a.simulated,
                details: details_from_wire(&a.details),
            })
            .collect(),
    }
}

/// Wire device details -> stored facts: enums become their lower-case names here, so the
/// registry, the store and the API never see wire types.
fn details_from_wire(details: &pyxis_protocol::DeviceDetails) -> DeviceDetails {
    DeviceDetails {
        pci_bus_id: details.pci_bus_id.clone(),
        numa_node: details.numa_node,
        driver_version: details.driver_version.clone(),
        compute_api_version: details.compute_api_version.clone(),
        architecture: details.architecture.clone(),
        max_sm_clock_mhz: details.max_sm_clock_mhz,
        max_memory_clock_mhz: details.max_memory_clock_mhz,
        ecc_enabled: details.ecc_enabled,
        mig: details.mig.as_ref().map(|mig| MigView {
            enabled: mig.enabled,
            pending_enabled: mig.pending_enabled,
            instances: mig
                .instances
                .iter()
                .map(|i| MigInstanceView {
                    uuid: i.uuid.clone(),
                    profile: i.profile.clone(),
                    memory_bytes: i.memory_bytes,
                    gpu_instance_id: i.gpu_instance_id,
                    compute_instance_id: i.compute_instance_id,
                    hardware_class: i.hardware_class.clone(),
                })
                .collect(),
        }),
        links: details
            .links
            .iter()
            .map(|l| PeerLinkView {
                peer: l.peer,
                kind: l.kind.as_str().to_string(),
                lanes: l.lanes,
            })
            .collect(),
    }
}

fn telemetry_from_wire(telemetry: pyxis_protocol::DeviceTelemetry) -> DeviceTelemetry {
    DeviceTelemetry {
        sm_clock_mhz: telemetry.sm_clock_mhz,
        memory_clock_mhz: telemetry.memory_clock_mhz,
        throttle_reasons: telemetry.throttle_reasons,
        ecc: telemetry.ecc.map(|e| EccCountsView {
            volatile_corrected: e.volatile_corrected,
            volatile_uncorrected: e.volatile_uncorrected,
            aggregate_corrected: e.aggregate_corrected,
            aggregate_uncorrected: e.aggregate_uncorrected,
            retired_pages: e.retired_pages,
            retired_pages_pending: e.retired_pages_pending,
            remapped_rows: e.remapped_rows,
            remap_pending: e.remap_pending,
            remap_failed: e.remap_failed,
        }),
        xid_count: telemetry.xid_count,
        last_xid: telemetry.last_xid,
    }
}

fn capacity_from_wire(report: CapacityReport) -> Capacity {
    // By value: the strings move instead of being cloned on every report.
    Capacity {
        memory_available_bytes: report.memory_available_bytes,
        devices: report
            .devices
            .into_iter()
            .map(|d| DeviceState {
                health: d.health.as_str(),
                uuid: d.uuid,
                memory_used_bytes: d.memory_used_bytes,
                utilization_percent: d.utilization_percent,
                health_reason: d.health_reason,
                temperature_celsius: d.temperature_celsius,
                power_watts: d.power_watts,
                power_limit_watts: d.power_limit_watts,
                telemetry: telemetry_from_wire(d.telemetry),
            })
            .collect(),
    }
}
