//! Wiring: opens the store and the CA, binds the QUIC link and the admin API, and runs
//! the liveness sweeper. [`Coordinator::start`] is the library entry point used by the
//! binary, dev mode and the tests.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use pyxis_agent::identity::write_private;
use pyxis_transport::pki::{self, CertificateAuthority};
use tokio_util::sync::CancellationToken;

use crate::{
    api_types::TokenResponse,
    config::CoordinatorConfig,
    metrics::Metrics,
    registry::Registry,
    store::{EventRow, Store},
    time::{now_ms, rfc3339_ms},
    tokens,
};

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Stored node facts are unreadable.
    #[error("stored node facts are corrupt: {0}")]
    Registry(#[from] serde_json::Error),
    /// CA files unreadable or invalid.
    #[error("CA {path}: {reason}")]
    Ca {
        /// Which file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] pyxis_transport::tls::TlsConfigError),
    /// Certificate generation failed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// A listener could not bind.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Writing a secret file failed.
    #[error(transparent)]
    Secret(#[from] pyxis_agent::identity::IdentityError),
}

/// Why a join token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TokenCreateError {
    /// No randomness.
    #[error(transparent)]
    Random(#[from] tokens::RandomError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// State shared by the coordinator's tasks.
#[derive(Debug)]
pub struct Shared {
    /// Configuration.
    pub config: CoordinatorConfig,
    /// Durable store.
    pub store: Arc<Store>,
    events: Mutex<Option<std::sync::mpsc::SyncSender<EventRow>>>,
    event_writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    registry: Mutex<Registry>,
    /// Cluster CA.
    pub ca: CertificateAuthority,
    admin_token_sha256: String,
    /// Counters and histograms.
    pub metrics: Metrics,
    next_connection_id: AtomicU64,
    /// False while starting and once shutting down (`/readyz`).
    pub ready: AtomicBool,
    /// The bound QUIC port (for join hints).
    pub quic_port: u16,
    catalog: Mutex<crate::objects::Catalog>,
    /// Serialises applies and deletes: each is planned and written as a whole.
    pub apply_lock: tokio::sync::Mutex<()>,
    placement: Mutex<crate::reconciler::PlacementState>,
    reconcile: tokio::sync::Notify,
    gateway: std::sync::OnceLock<std::sync::Weak<crate::gateway::Gateway>>,
}

/// Why a desired state could not be set.
#[derive(Debug, thiserror::Error)]
pub enum SetDesiredError {
    /// No such node.
    #[error("node {0} not found")]
    NotFound(String),
    /// The store refused the write.
    #[error("cannot store the desired state: {0}")]
    Store(String),
}

impl StartError {
    /// Whether this is a configuration problem (exit code 64) rather than a runtime one.
    pub fn is_config(&self) -> bool {
        matches!(self, StartError::Ca { .. })
    }
}

impl Shared {
    /// Locks the registry (recovering from a poisoned lock: the registry's invariants
    /// hold between method calls).
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks the catalog of applied manifests.
    pub fn catalog(&self) -> MutexGuard<'_, crate::objects::Catalog> {
        self.catalog.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks the outcome of the last placement pass.
    pub fn placement_state(&self) -> MutexGuard<'_, crate::reconciler::PlacementState> {
        self.placement.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the reconciler for a pass now (something placement depends on changed).
    pub fn wake_reconciler(&self) {
        self.reconcile.notify_one();
    }

    /// Resolves when [`Shared::wake_reconciler`] was called.
    pub async fn reconcile_wakeup(&self) {
        self.reconcile.notified().await;
    }

    /// The gateway, while the coordinator runs.
    pub fn gateway(&self) -> Option<Arc<crate::gateway::Gateway>> {
        self.gateway.get().and_then(std::sync::Weak::upgrade)
    }

    /// A fresh connection id.
    pub fn connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether `token` is the admin token.
    pub fn check_admin_token(&self, token: &str) -> bool {
        tokens::sha256_hex(token.trim()) == self.admin_token_sha256
    }

    /// Records an event (best effort: a failing store is logged, not fatal).
    pub fn event(&self, object: &str, kind: &str, reason: &str, message: &str) {
        let row = EventRow {
            at_ms: now_ms(),
            object: object.to_string(),
            kind: kind.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
        };
        // Events are written by a background thread in batches: a burst (thousands of
        // nodes changing status at once) never blocks the async workers on SQLite.
        let sent = match self.events.lock() {
            Ok(guard) => guard.as_ref().is_some_and(|events| events.try_send(row).is_ok()),
            Err(_) => false,
        };
        if !sent {
            self.metrics.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Creates a join token.
    pub fn create_join_token(&self, ttl: Duration, uses: u32) -> Result<TokenResponse, TokenCreateError> {
        let now = now_ms();
        let expires_at_ms = now.saturating_add(ttl.as_millis() as i64);
        let new = tokens::create(expires_at_ms, uses)?;
        self.store.insert_token(&new.row, now)?;
        let _ = self.store.prune_tokens(now);
        tracing::info!(token_id = %new.row.id, uses, expires_at = %rfc3339_ms(expires_at_ms), "join token created");
        Ok(TokenResponse {
            token: new.token,
            ca_hash: self.ca.hash(),
            expires_at: rfc3339_ms(expires_at_ms),
            uses,
            coordinator: None,
        })
    }
}

/// A running coordinator.
#[derive(Debug)]
pub struct Coordinator {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Bound QUIC address.
    pub quic_addr: SocketAddr,
    /// Bound admin API address.
    pub api_addr: SocketAddr,
    /// Bound gateway address.
    pub gateway_addr: SocketAddr,
    /// The gateway (its audit log, tracer and live state).
    pub gateway: Arc<crate::gateway::Gateway>,
    /// The admin token, when it is known to this process (created now or read from the
    /// data dir).
    pub admin_token: Option<String>,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn load_or_create_ca(config: &CoordinatorConfig, has_nodes: bool) -> Result<CertificateAuthority, StartError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| StartError::Ca {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let (cert_path, key_path) = match &config.ca_files {
        Some((cert, key)) => (cert.clone(), key.clone()),
        None => (config.data_dir.join("ca.pem"), config.data_dir.join("ca.key")),
    };
    if config.ca_files.is_none() && !cert_path.exists() {
        // A new CA would silently cut off every joined node: only on a truly fresh start.
        if key_path.exists() || has_nodes {
            return Err(StartError::Ca {
                path: cert_path.clone(),
                reason: "is missing, but this data dir already has a CA key or joined nodes; restore ca.pem from a backup (generating a new CA would cut off every node)".into(),
            });
        }
        let material = pki::generate_ca(&config.cluster_name)?;
        write_private(&key_path, &material.key_pem)?;
        write_private(&cert_path, &material.cert_pem)?;
        tracing::info!(cert = %cert_path.display(), "created the cluster CA (key stored 0600 beside it)");
    }
    let ca = CertificateAuthority::from_pem(&read(&cert_path)?, &read(&key_path)?).map_err(|e| {
        let path = match &e {
            pki::PkiError::Pem { what, .. } if what.contains("key") => key_path.clone(),
            _ => cert_path.clone(),
        };
        StartError::Ca {
            path,
            reason: e.to_string(),
        }
    })?;
    warn_if_exposed(&key_path);
    Ok(ca)
}

/// UDP buffer size asked of the kernel for the agent link. The default (about 208 KiB)
/// holds only ~90 full datagrams: thousands of agents reconnecting at once overflow it,
/// and every dropped handshake packet costs a QUIC retransmission timeout.
const UDP_BUFFER_BYTES: usize = 4 << 20;

/// Binds the agent-link socket with large buffers and starts the QUIC endpoint on it.
fn bind_quic(server_config: quinn::ServerConfig, addr: SocketAddr) -> Result<quinn::Endpoint, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_error = |source: std::io::Error| StartError::Bind {
        what: "the QUIC agent link",
        addr,
        source,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind_error)?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped peers too when bound to [::].
        let _ = socket.set_only_v6(false);
    }
    for (what, set, get) in [
        (
            "receive",
            Socket::set_recv_buffer_size as fn(&Socket, usize) -> std::io::Result<()>,
            Socket::recv_buffer_size as fn(&Socket) -> std::io::Result<usize>,
        ),
        ("send", Socket::set_send_buffer_size, Socket::send_buffer_size),
    ] {
        let _ = set(&socket, UDP_BUFFER_BYTES);
        match get(&socket) {
            // Linux reports twice the usable size it granted.
            Ok(granted) if granted >= UDP_BUFFER_BYTES => {}
            Ok(granted) => tracing::warn!(
                buffer = what,
                granted,
                wanted = UDP_BUFFER_BYTES,
                "the kernel capped the agent-link UDP buffer; large fleets may see dropped packets and slow reconnects (raise net.core.rmem_max / wmem_max)"
            ),
            Err(e) => tracing::warn!(buffer = what, error = %e, "cannot read the agent-link UDP buffer size"),
        }
    }
    socket.bind(&addr.into()).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    let socket: std::net::UdpSocket = socket.into();
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_error)
}

/// Events queued for the writer before new ones are dropped (and counted).
const EVENT_QUEUE: usize = 8_192;

/// Starts the thread that writes events in batches, one transaction per batch. It ends
/// when the coordinator's shared state is dropped.
fn spawn_event_writer(
    store: Arc<Store>,
) -> (
    std::sync::mpsc::SyncSender<EventRow>,
    Option<std::thread::JoinHandle<()>>,
) {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<EventRow>(EVENT_QUEUE);
    let spawned = std::thread::Builder::new().name("event-writer".into()).spawn(move || {
        while let Ok(first) = receiver.recv() {
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match receiver.try_recv() {
                    Ok(row) => batch.push(row),
                    Err(_) => break,
                }
            }
            if let Err(e) = store.add_events(&batch) {
                tracing::warn!(error = %e, events = batch.len(), "cannot record events");
            }
        }
    });
    match spawned {
        Ok(handle) => (sender, Some(handle)),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the event writer; events will not be recorded");
            (sender, None)
        }
    }
}

/// Warns when a secret file is readable by group or others.
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "secret file is readable by other users; fix with chmod 600");
        }
    }
}

/// Loads the admin-token hash, creating the token on first start. Returns the hash and the
/// token text if this process knows it.
fn admin_token(store: &Store, data_dir: &Path) -> Result<(String, Option<String>), StartError> {
    let path = data_dir.join("admin-token");
    if let Some(hash) = store.meta("admin_token_sha256")? {
        let known = std::fs::read_to_string(&path)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| tokens::sha256_hex(t) == hash);
        match &known {
            Some(_) => {
                tracing::info!(path = %path.display(), "the admin token is in this file");
                warn_if_exposed(&path);
            }
            None => {
                tracing::warn!(path = %path.display(), "admin token file is missing or changed; the token created on first start still applies")
            }
        }
        return Ok((hash, known));
    }
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| StartError::Ca {
        path: path.clone(),
        reason: "system random generator failed".into(),
    })?;
    let token = format!("pyxis-admin-{}", hex::encode(bytes));
    write_private(&path, &format!("{token}\n"))?;
    let hash = tokens::sha256_hex(&token);
    store.set_meta("admin_token_sha256", &hash)?;
    tracing::info!(path = %path.display(), "created the admin token (stored hashed; the file is mode 0600); use it with `pyxis --token` or PYXIS_TOKEN");
    Ok((hash, Some(token)))
}

impl Coordinator {
    /// Opens state, binds listeners and spawns the tasks.
    pub async fn start(config: CoordinatorConfig) -> Result<Self, StartError> {
        let data_dir = config.data_dir.clone();
        let existed = data_dir.exists();
        std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            if !existed {
                // Only a directory we created: an existing one (say /srv) keeps its mode.
                let _ = std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700));
            } else if let Ok(meta) = std::fs::metadata(&data_dir) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(dir = %data_dir.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "the data dir is accessible to other users; it holds the CA key and the store (chmod 700 recommended)");
                }
            }
        }
        let store = Arc::new(Store::open(&data_dir.join("pyxis.db"))?);
        let mut registry = Registry::load(store.nodes()?)?;
        for (node, generation, replicas) in store.desired_states()? {
            match serde_json::from_str(&replicas) {
                Ok(replicas) => registry.restore_desired(&node, pyxis_protocol::DesiredState { generation, replicas }),
                // One unreadable row must not keep the coordinator down: the node keeps
                // what it runs (agents never stop replicas on their own) until it is set again.
                Err(e) => tracing::error!(node = %node, error = %e, "stored desired state is unreadable; ignoring it"),
            }
        }
        let (catalog, problems) = crate::objects::Catalog::load(store.objects()?);
        for problem in &problems {
            tracing::error!(problem = %problem, "an applied manifest could not be loaded; apply it again");
        }
        let ca = load_or_create_ca(&config, !registry.is_empty())?;
        let (admin_token_sha256, admin_token) = admin_token(&store, &data_dir)?;
        tracing::info!(ca_hash = %ca.hash(), nodes = registry.len(), "state loaded");

        let (server_cert, server_key) = ca.issue_server_cert()?;
        let server_config = pyxis_transport::tls::server_config(ca.cert_der().clone(), server_cert, server_key)?;
        let endpoint = bind_quic(server_config, config.quic_addr)?;
        let quic_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            what: "the QUIC agent link",
            addr: config.quic_addr,
            source,
        })?;
        let api_listener = tokio::net::TcpListener::bind(config.api_addr)
            .await
            .map_err(|source| StartError::Bind {
                what: "the admin API",
                addr: config.api_addr,
                source,
            })?;
        let api_addr = api_listener.local_addr().map_err(|source| StartError::Bind {
            what: "the admin API",
            addr: config.api_addr,
            source,
        })?;

        let gateway_listener = tokio::net::TcpListener::bind(config.gateway_addr)
            .await
            .map_err(|source| StartError::Bind {
                what: "the gateway",
                addr: config.gateway_addr,
                source,
            })?;
        let gateway_addr = gateway_listener.local_addr().map_err(|source| StartError::Bind {
            what: "the gateway",
            addr: config.gateway_addr,
            source,
        })?;
        let audit = open_audit(&config, &store);
        let tracer = match &config.gateway.otlp_endpoint {
            None => crate::otel::Tracer::disabled(),
            Some(endpoint) => match crate::otel::Tracer::start(
                endpoint,
                "pyxis-coordinator",
                vec![("pyxis.cluster", config.cluster_name.clone().into())],
            ) {
                Ok(tracer) => {
                    tracing::info!(endpoint = %endpoint, "exporting traces over OTLP/HTTP");
                    tracer
                }
                Err(e) => {
                    tracing::error!(endpoint = %endpoint, error = %e, "cannot export traces; continuing without");
                    crate::otel::Tracer::disabled()
                }
            },
        };

        let (events, event_writer) = spawn_event_writer(store.clone());
        let shared = Arc::new(Shared {
            config,
            events: Mutex::new(Some(events)),
            event_writer: Mutex::new(event_writer),
            store,
            registry: Mutex::new(registry),
            ca,
            admin_token_sha256,
            metrics: Metrics::default(),
            next_connection_id: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            quic_port: quic_addr.port(),
            catalog: Mutex::new(catalog),
            apply_lock: tokio::sync::Mutex::new(()),
            placement: Mutex::new(crate::reconciler::PlacementState::default()),
            reconcile: tokio::sync::Notify::new(),
            gateway: std::sync::OnceLock::new(),
        });
        let gateway = Arc::new(crate::gateway::Gateway::new(shared.clone(), audit, tracer));
        let _ = shared.gateway.set(Arc::downgrade(&gateway));
        gateway.refresh();
        let shutdown = CancellationToken::new();
        let mut tasks = vec![
            tokio::spawn(crate::link::accept_loop(
                endpoint.clone(),
                shared.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(crate::api::serve(api_listener, shared.clone(), shutdown.clone())),
            tokio::spawn(sweeper(shared.clone(), shutdown.clone())),
            tokio::spawn(crate::gateway::http::serve(
                gateway_listener,
                gateway.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(anchor_audit(gateway.clone(), shutdown.clone())),
        ];
        if shared.config.reconcile {
            tasks.push(tokio::spawn(crate::reconciler::run(shared.clone(), shutdown.clone())));
        } else {
            tracing::info!("the reconciler is off: desired states are set by the library user");
        }
        shared.ready.store(true, Ordering::Relaxed);
        tracing::info!(addr = %quic_addr, "agent link listening (QUIC, mutual TLS)");
        tracing::info!(addr = %api_addr, "admin API listening (/api/v1, /metrics, /healthz, /readyz)");
        tracing::info!(addr = %gateway_addr, audit_mode = ?shared.config.gateway.audit_mode, "gateway listening (OpenAI-compatible /v1)");
        Ok(Self {
            shared,
            quic_addr,
            api_addr,
            gateway_addr,
            gateway,
            admin_token,
            endpoint,
            shutdown,
            tasks,
        })
    }

    /// Sets the replicas `node` should run: persisted first, then sent to its agent if it
    /// is connected (and at every later registration). Returns the new generation. The
    /// reconciler is the caller in a running coordinator; tests that turn it off
    /// ([`CoordinatorConfig::reconcile`]) call this directly.
    pub async fn set_desired(
        &self,
        node: &str,
        replicas: Vec<pyxis_protocol::ReplicaSpec>,
    ) -> Result<u64, SetDesiredError> {
        set_desired(&self.shared, node, replicas).await
    }

    /// Graceful stop: closes agent connections, flushes last-seen times, waits for tasks.
    pub async fn stop(self) {
        self.shared.ready.store(false, Ordering::Relaxed);
        self.shutdown.cancel();
        self.endpoint.close(
            quinn::VarInt::from_u32(pyxis_agent::link::close_code::SHUTDOWN),
            b"coordinator shutting down",
        );
        for task in self.tasks {
            let _ = task.await;
        }
        self.shared.registry().drop_connections();
        // Close the event queue and let the writer store what is queued.
        if let Ok(mut events) = self.shared.events.lock() {
            events.take();
        }
        let writer = self.shared.event_writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            let joined = tokio::task::spawn_blocking(move || writer.join());
            if tokio::time::timeout(Duration::from_secs(5), joined).await.is_err() {
                tracing::warn!("the event writer did not finish in 5s; some events may be lost");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        flush(&self.shared);
        let gateway = self.gateway.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(audit) = &gateway.audit {
                if let Err(e) = audit.flush(Duration::from_secs(5)) {
                    tracing::warn!(error = %e, "audit records may be lost at shutdown");
                }
            }
            store_anchor(&gateway);
        })
        .await;
        self.gateway.tracer.shutdown(Duration::from_secs(2)).await;
    }

    /// The base URL of the gateway.
    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.gateway_addr)
    }

    /// The base URL of the admin API.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }
}

/// [`Coordinator::set_desired`] for the coordinator's own tasks.
pub async fn set_desired(
    shared: &Arc<Shared>,
    node: &str,
    replicas: Vec<pyxis_protocol::ReplicaSpec>,
) -> Result<u64, SetDesiredError> {
    let json = serde_json::to_string(&replicas).map_err(|e| SetDesiredError::Store(e.to_string()))?;
    // Hold the registry only to compute the generation; the write happens before the
    // agent is told, so a coordinator restart never sends an older state.
    let generation = {
        let registry = shared.registry();
        let current = registry
            .desired(node)
            .ok_or_else(|| SetDesiredError::NotFound(node.to_string()))?;
        (current.generation + 1).max(crate::time::now_ms().max(0) as u64)
    };
    let writer = shared.clone();
    let name = node.to_string();
    tokio::task::spawn_blocking(move || writer.store.put_desired_state(&name, generation, &json))
        .await
        .map_err(|e| SetDesiredError::Store(e.to_string()))?
        .map_err(|e| SetDesiredError::Store(e.to_string()))?;
    let state = shared
        .registry()
        .set_desired_generation(node, generation, replicas)
        .map_err(|_| SetDesiredError::NotFound(node.to_string()))?;
    tracing::info!(
        node,
        generation = state.generation,
        replicas = state.replicas.len(),
        "desired state set"
    );
    Ok(state.generation)
}

/// Store meta key of the audit chain's latest (seq, hash), kept apart from the audit file
/// so that cutting records off its end is detected.
pub const AUDIT_ANCHOR_META: &str = "audit_anchor";

/// Opens the audit log beside the store; on failure says why (in `required` mode the
/// gateway then refuses calls).
fn open_audit(config: &CoordinatorConfig, store: &Store) -> Result<crate::audit::AuditLog, String> {
    let path = config.data_dir.join("audit.db");
    let options = crate::audit::AuditOptions::new(config.gateway.audit_mode, config.gateway.audit_queue);
    let log = crate::audit::AuditLog::open_with(&path, options).map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, mode = ?config.gateway.audit_mode, "cannot open the audit log");
        e.to_string()
    })?;
    if let Ok(Some(text)) = store.meta(AUDIT_ANCHOR_META) {
        if let Ok(anchor) = serde_json::from_str::<crate::audit::Anchor>(&text) {
            let head = log.head();
            if head.seq < anchor.seq {
                tracing::error!(path = %path.display(), stored = anchor.seq, found = head.seq, "the audit log ends before the last record this coordinator wrote: records were removed; `pyxis audit verify` reports it");
            }
        }
    }
    Ok(log)
}

/// Stores the audit chain's head in the main store.
fn store_anchor(gateway: &crate::gateway::Gateway) {
    let Some(audit) = &gateway.audit else { return };
    let head = audit.head();
    if head.seq == 0 {
        return;
    }
    match serde_json::to_string(&head) {
        Ok(text) => {
            if let Err(e) = gateway.shared.store.set_meta(AUDIT_ANCHOR_META, &text) {
                tracing::warn!(error = %e, "cannot store the audit anchor");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode the audit anchor"),
    }
}

/// Stores the audit head every few seconds.
async fn anchor_audit(gateway: Arc<crate::gateway::Gateway>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    let mut last = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let seq = gateway.audit.as_ref().map_or(0, |a| a.head().seq);
        if seq != last {
            last = seq;
            let gateway = gateway.clone();
            let _ = tokio::task::spawn_blocking(move || store_anchor(&gateway)).await;
        }
    }
}

fn flush(shared: &Shared) {
    let dirty = shared.registry().take_dirty_last_seen();
    if let Err(e) = shared.store.flush_last_seen(&dirty) {
        tracing::warn!(error = %e, "cannot persist last-seen times");
    }
}

/// How often last-seen times go to the store. They are for display after a restart only
/// (liveness lives in memory), so rarely is enough: each flush rewrites every node's row.
const LAST_SEEN_FLUSH: Duration = Duration::from_secs(30);

/// Recomputes node statuses every 200 ms, logging and recording each change, and flushes
/// last-seen times to the store every 30 s.
async fn sweeper(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let mut last_flush = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let sweep = shared.registry().sweep(now, shared.config.liveness_timeout);
        for connection in sweep.close {
            connection.close(
                quinn::VarInt::from_u32(pyxis_agent::link::close_code::REFUSED),
                b"no capacity report within the liveness timeout",
            );
        }
        if !sweep.transitions.is_empty() {
            shared.wake_reconciler();
        }
        for change in sweep.transitions {
            let message = format!("{} -> {}: {}", change.from.as_str(), change.to.as_str(), change.reason);
            if change.to == crate::registry::NodeStatus::NotReady {
                tracing::warn!(node = %change.node, reason = %change.reason, "node is NotReady");
                shared.event(&format!("node/{}", change.node), "Warning", "NodeNotReady", &message);
            } else {
                tracing::info!(node = %change.node, status = change.to.as_str(), "node status changed");
                shared.event(
                    &format!("node/{}", change.node),
                    "Normal",
                    &format!("Node{}", change.to.as_str()),
                    &message,
                );
            }
        }
        if now.duration_since(last_flush) >= LAST_SEEN_FLUSH {
            last_flush = now;
            let shared = shared.clone();
            let _ = tokio::task::spawn_blocking(move || flush(&shared)).await;
        }
    }
}
