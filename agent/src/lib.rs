//! The Pyxis node agent.
//!
//! Entry point: [`Agent::start`] with a validated [`config::AgentConfig`]. The agent dials
//! out to the coordinator ([`link`]), joins once with a token ([`identity`]), reports its
//! host ([`host`]) and accelerators ([`devices`]), and serves `/metrics` and `/healthz`
//! ([`http`]). The coordinator's desired state goes to the runtime supervisor
//! ([`runtime::supervisor`]), which runs the replicas as process groups and reports their
//! phases back over the link.
//!
//! Runtimes outlive the agent by design: [`Agent::stop`] (what `systemctl stop
//! pyxis-agent` does) and a crash both leave them running, and the next agent adopts them
//! from `DATA_DIR/replicas.json`, so an agent upgrade or restart never reloads a model.
//! [`Agent::stop_replicas`] stops them (dev mode, tests).

pub mod amd;
pub mod backoff;
pub mod config;
pub mod daemon;
pub mod devices;
pub mod health;
pub mod host;
pub mod http;
pub mod hwclass;
pub mod identity;
pub mod link;
pub mod nvml;
pub mod prober;
pub mod prom;
pub mod rocm;
pub mod runtime;
pub mod runtimes;
pub mod tpu;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use pyxis_protocol::{AckOf, CapacityReport, DesiredState, Health, NodeInfo};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// This agent's software version.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runtime kinds an agent can be configured to launch.
pub const RUNTIME_KINDS: &[&str] = &[
    "vllm",
    "tgi",
    "sglang",
    "triton",
    "trtllm",
    "ollama",
    "llama-cpp",
    "custom",
];

/// What the agent's link looks like now (watched by tests, dev mode and `/healthz`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Registered with a coordinator right now.
    pub connected: bool,
    /// Which coordinator.
    pub coordinator: Option<SocketAddr>,
    /// Highest capacity-report sequence acknowledged in this session.
    pub acked_capacity_seq: u64,
    /// Generation of the last desired state applied.
    pub desired_generation: u64,
    /// Highest runtime-status sequence acknowledged in this session.
    pub acked_status_seq: u64,
    /// Last link error, for operators.
    pub last_error: Option<String>,
    /// Completed registrations since start.
    pub sessions: u64,
}

/// State shared by the agent's tasks.
#[derive(Debug)]
pub struct AgentShared {
    /// Validated configuration.
    pub config: config::AgentConfig,
    host: host::HostFacts,
    pub(crate) devices: Mutex<Vec<devices::Device>>,
    /// Signalled when a device changes, to send a report at once.
    pub devices_changed: Notify,
    system: Mutex<Option<sysinfo::System>>,
    state: watch::Sender<LinkState>,
    /// Capacity reports sent.
    pub reports_sent: AtomicU64,
    /// Runtime kinds this node advertises, with how they are launched (configured or found
    /// on `PATH`, and only when the program exists; `custom` always).
    pub runtimes: std::collections::BTreeMap<String, String>,
    /// The runtime supervisor: runs the replicas of the desired state.
    pub supervisor: runtime::supervisor::Supervisor,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AgentShared {
    /// Static node facts for registration.
    pub fn node_info(&self) -> NodeInfo {
        let devices = self
            .devices
            .lock()
            .map(|d| d.iter().map(|d| d.to_wire()).collect())
            .unwrap_or_default();
        NodeInfo {
            name: self.config.name.clone(),
            hostname: self.host.hostname.clone(),
            os: self.host.os.clone(),
            kernel: self.host.kernel.clone(),
            cpu_model: self.host.cpu_model.clone(),
            cpu_cores: self.host.cpu_cores,
            memory_bytes: self.host.memory_bytes,
            agent_version: AGENT_VERSION.to_string(),
            accelerators: devices,
            runtimes: self.runtimes.keys().cloned().collect(),
        }
    }

    /// A capacity report now.
    pub fn capacity(&self, seq: u64) -> CapacityReport {
        let devices = self
            .devices
            .lock()
            .map(|d| d.iter().map(|d| d.usage()).collect())
            .unwrap_or_default();
        let memory_available_bytes = self
            .system
            .lock()
            .map(|mut s| host::memory_available_bytes(&mut s))
            .unwrap_or(0);
        CapacityReport {
            seq,
            sent_at_unix_ms: unix_ms(),
            memory_available_bytes,
            devices,
        }
    }

    /// Devices as reported now.
    pub fn devices(&self) -> Vec<devices::Device> {
        self.devices.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Changes one device's health (simulated devices; real probes later) and reports at once.
    pub fn set_device_health(&self, index: u32, health: Health, reason: &str) {
        if let Ok(mut devices) = self.devices.lock() {
            if let Some(device) = devices.iter_mut().find(|d| d.index == index) {
                device.health = health;
                device.health_reason = reason.to_string();
            }
        }
        self.devices_changed.notify_one();
    }

    /// Hands a desired state to the supervisor; returns whether it was newer than the one
    /// applied (an older or the same generation changes nothing).
    pub fn apply_desired(&self, desired: DesiredState) -> bool {
        let generation = desired.generation;
        let applied = self.supervisor.apply(desired);
        if applied {
            self.state.send_modify(|s| s.desired_generation = generation);
        }
        applied
    }

    fn record_ack(&self, of: AckOf) {
        match of {
            AckOf::Capacity(seq) => self
                .state
                .send_modify(|s| s.acked_capacity_seq = s.acked_capacity_seq.max(seq)),
            AckOf::RuntimeStatus(seq) => self
                .state
                .send_modify(|s| s.acked_status_seq = s.acked_status_seq.max(seq)),
            AckOf::DesiredState(_) => {}
        }
    }

    fn set_connected(&self, connected: bool, coordinator: Option<SocketAddr>) {
        self.state.send_modify(|s| {
            if connected && !s.connected {
                s.sessions += 1;
                s.last_error = None;
            }
            s.connected = connected;
            s.coordinator = coordinator;
            if !connected {
                s.acked_capacity_seq = 0;
                s.acked_status_seq = 0;
            }
        });
    }

    fn record_error(&self, error: &link::SessionError) {
        let text = error.to_string();
        self.state.send_modify(|s| s.last_error = Some(text));
    }

    /// Current link state.
    pub fn link_state(&self) -> LinkState {
        self.state.borrow().clone()
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `--simulate` was invalid.
    #[error(transparent)]
    Simulate(#[from] devices::SimulateError),
    /// The metrics listener could not bind.
    #[error("cannot bind the metrics listener on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The data directory is unusable.
    #[error("data directory {path} is unusable: {source}")]
    DataDir {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The probe thread could not be started.
    #[error("cannot start the hardware probe thread: {0}")]
    ProbeThread(std::io::Error),
    /// The stored identity is unusable.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The runtime supervisor could not start (its ledger or directory is unusable).
    #[error(transparent)]
    Supervisor(#[from] runtime::supervisor::SupervisorError),
    /// Another agent holds the data directory.
    #[error("another pyxis-agent is running with data directory {path} (it holds {path}/agent.lock); one agent per data dir, or both would supervise the same runtimes: stop the other, or give this one its own --data-dir")]
    Locked {
        /// Path.
        path: std::path::PathBuf,
    },
}

/// Takes `DATA_DIR/agent.lock` exclusively, without waiting.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, AgentError> {
    let path = dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| AgentError::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AgentError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(AgentError::DataDir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    /// Shared state (devices, link state).
    pub shared: Arc<AgentShared>,
    /// Bound metrics address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Stops the probe thread when dropped.
    _probe_thread: Option<prober::ProbeThread>,
    /// `DATA_DIR/agent.lock`, held (an exclusive lock) for the agent's life: one agent per
    /// data dir, or two supervisors would restart the same runtimes.
    _lock: std::fs::File,
}

impl Agent {
    /// Starts the agent's tasks. Returns once the metrics listener is bound.
    pub async fn start(config: config::AgentConfig) -> Result<Self, AgentError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| AgentError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        // Before anything reads the ledger or touches a runtime.
        let lock = lock_data_dir(&config.data_dir)?;
        let stored = identity::Identity::load(&config.data_dir)?;
        // Simulated devices replace probing entirely, so the two are never mixed up.
        let (devices, backends) = match &config.simulate {
            Some(spec) => {
                let overrides = hwclass::ClassOverrides::new(config.hardware_classes.clone());
                let mut devices = devices::parse_simulate(spec, &config.name)?;
                for device in &mut devices {
                    device.hardware_class =
                        hwclass::derive(device.vendor, &device.model, device.memory_bytes, &overrides);
                }
                tracing::info!(count = devices.len(), "reporting simulated accelerators");
                (devices, None)
            }
            None => {
                let (devices, backends) = prober::discover(&config, config.host_paths.clone());
                (devices, Some(backends).filter(|b| !b.is_empty()))
            }
        };
        if stored.is_some() {
            tracing::info!(dir = %identity::Identity::dir(&config.data_dir).display(), "using the stored node identity");
        }
        let path = std::env::var_os("PATH");
        let commands = runtimes::discover(&config.runtimes, path.as_deref());
        let (runtimes, unusable) = runtimes::usable(&commands, path.as_deref());
        for u in &unusable {
            tracing::warn!(runtime = %u.kind, command = %u.command, why = %u.why, "a configured runtime command cannot be run, so this node does not offer the kind; fix --runtime KIND=COMMAND ([runtimes] in the config file)");
        }
        if runtimes.len() <= 1 {
            tracing::info!("no runtime configured or found on PATH; custom runtimes can still run here");
        } else {
            tracing::info!(runtimes = ?runtimes, "runtimes this node can launch");
        }
        let host = host::probe_host();
        let mut supervision = config.supervisor.clone();
        supervision.timing.metrics_interval = config.report_interval;
        let advertise_host = supervision
            .advertise_host
            .clone()
            .unwrap_or_else(|| host.hostname.to_lowercase());
        let context = runtime::supervisor::SupervisorContext::new(
            config.data_dir.clone(),
            commands,
            runtime::supervisor::assignable_devices(&devices),
            advertise_host,
        );
        // Adopts the runtimes an earlier agent left running before the link reports anything.
        let supervisor = runtime::supervisor::Supervisor::start(supervision, context)?;
        let (state, _) = watch::channel(LinkState {
            desired_generation: supervisor.generation().unwrap_or(0),
            ..LinkState::default()
        });
        let shared = Arc::new(AgentShared {
            host,
            config,
            devices: Mutex::new(devices),
            devices_changed: Notify::new(),
            system: Mutex::new(sysinfo::System::new().ok()),
            state,
            reports_sent: AtomicU64::new(0),
            runtimes,
            supervisor,
        });
        let probe_thread = match backends {
            Some(backends) => Some(prober::spawn(shared.clone(), backends).map_err(AgentError::ProbeThread)?),
            None => None,
        };
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut metrics_addr = None;
        if let Some(addr) = shared.config.metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Bind { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| AgentError::Bind { addr, source })?;
            tracing::info!(addr = %bound, "serving /metrics and /healthz");
            metrics_addr = Some(bound);
            tasks.push(tokio::spawn(http::serve(listener, shared.clone(), shutdown.clone())));
        }
        tasks.push(tokio::spawn(link::run(shared.clone(), shutdown.clone())));
        Ok(Self {
            shared,
            metrics_addr,
            shutdown,
            tasks,
            _probe_thread: probe_thread,
            _lock: lock,
        })
    }

    /// Watches the link state.
    pub fn watch(&self) -> watch::Receiver<LinkState> {
        self.shared.state.subscribe()
    }

    /// Graceful stop: closes the link, stops supervising and waits for the tasks. The
    /// runtimes keep running, by design (`systemctl stop pyxis-agent` does this): the next
    /// agent on this data directory adopts them. [`stop_replicas`](Self::stop_replicas)
    /// first to stop them too.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.shared.supervisor.detach().await;
    }

    /// Abrupt stop, as a crash would: tasks are aborted, nothing is sent, the runtimes are
    /// left running.
    pub fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.supervisor.shutdown();
    }

    /// Stops every replica (SIGTERM to each whole process group, the grace period, then
    /// SIGKILL) and forgets the desired state, so the next one from the coordinator is
    /// applied afresh. For dev mode and tests; a production agent stops runtimes only when
    /// the desired state drops them.
    pub async fn stop_replicas(&self) {
        self.shared.supervisor.stop_all().await;
    }

    /// The replicas' statuses now.
    pub fn replicas(&self) -> Vec<pyxis_protocol::ReplicaStatus> {
        self.shared.supervisor.statuses()
    }

    /// Capacity reports sent so far.
    pub fn reports_sent(&self) -> u64 {
        self.shared.reports_sent.load(Ordering::Relaxed)
    }
}
