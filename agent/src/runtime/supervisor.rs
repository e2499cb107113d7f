//! The runtime supervisor: runs the replicas of the desired state as process groups,
//! probes them, restarts them with backoff, and never runs one twice or leaves one behind.
//!
//! [`Supervisor`] is a handle; one driver task owns every replica's state
//! ([`super::replica::ReplicaCore`], sans-IO) and selects over a closed set of inputs:
//! commands from the handle (`Command`), outcomes of the work it started (`Event`:
//! exits, finished stops, probe answers) and its timers. Slow work (stopping a group with
//! its grace period, HTTP probes, waiting for a child) runs in helper tasks owned by the
//! driver, which report back as events, so a hung runtime never stalls the others.
//!
//! Invariants:
//! - The supervisor never depends on the coordinator link: replicas keep running while
//!   it is away, and the same desired state again (same generation) changes nothing.
//! - Stopping the supervisor, dropping it or the agent crashing leaves runtimes running;
//!   the next supervisor adopts them from the ledger ([`super::ledger`]). Only
//!   [`Supervisor::stop_all`] and desired-state changes stop runtimes.
//! - A replica is started only once its previous process group is gone, and the ledger is
//!   written right after each spawn, before anything else happens: a runtime is never
//!   run twice. Runtimes the ledger cannot name (an agent killed between the spawn and
//!   that write, an unreadable record, a corrupt ledger, which is moved aside) are found
//!   at start by their working directory, `DATA_DIR/replicas/NAME`, and stopped before
//!   their replica starts again.
//! - Signals go to whole process groups (and cgroups): workers die with their runtime.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use nix::sys::signal::Signal;
use pyxis_protocol::{DesiredState, ReplicaPhase, ReplicaSpec, ReplicaStatus, RuntimeMetrics};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;

use super::{
    ledger::{self, Ledger, ProcessRecord},
    probe::{HttpAnswer, HttpGet, HyperGet, ProbeError},
    process::{self, Cgroups, ProcessGroup},
    replica::{Decision, Desired, ReplicaCore, RunFacts, Timing},
    Adapter, AssignedDevice, Endpoints, LaunchContext, Probe,
};

/// Lines of output kept in a failed replica's status.
pub const LOG_TAIL_LINES: usize = 20;

/// How long a readiness probe may take.
const READINESS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a liveness, version or metrics probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a stopping group is checked for remaining processes.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How long to wait for a group to vanish after SIGKILL (a process stuck in the kernel,
/// state D, can outlive it) before reporting it and moving on.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// How often processes the agent did not start (adopted ones) are checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(500);
/// The longest the driver sleeps without looking at its timers.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// The supervisor's settings (the agent's config key, where there is one, in parentheses).
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// Ports handed to runtimes, first and last inclusive (`runtime_ports`).
    pub runtime_ports: (u16, u16),
    /// Address runtimes bind to (`runtime_host`).
    pub runtime_host: IpAddr,
    /// Host name or address in replica endpoints (`advertise_host`); `None`: the host name.
    pub advertise_host: Option<String>,
    /// Time between SIGTERM and SIGKILL when stopping a runtime (`stop_grace_period`).
    pub stop_grace_period: Duration,
    /// Size at which a runtime's log file is rotated (`log_max_bytes`).
    pub log_max_bytes: u64,
    /// How often log sizes are checked.
    pub log_check_interval: Duration,
    /// Where the cgroup v2 hierarchy is mounted; each replica gets its own cgroup when the
    /// agent's cgroup there is delegated to it. `None`: process groups only.
    pub cgroup_root: Option<PathBuf>,
    /// Timers and thresholds.
    pub timing: Timing,
}

/// Default port range for runtimes.
pub const DEFAULT_RUNTIME_PORTS: (u16, u16) = (20000, 20999);

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            runtime_ports: DEFAULT_RUNTIME_PORTS,
            runtime_host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            advertise_host: None,
            stop_grace_period: Duration::from_secs(30),
            log_max_bytes: 16 * 1024 * 1024,
            log_check_interval: Duration::from_secs(10),
            cgroup_root: Some(PathBuf::from("/sys/fs/cgroup")),
            timing: Timing::default(),
        }
    }
}

/// Finds the adapter of a runtime kind.
pub type AdapterLookup = Arc<dyn Fn(&str) -> Option<Arc<dyn Adapter>> + Send + Sync>;

/// What the supervisor works with, besides its settings.
pub struct SupervisorContext {
    /// The agent's data directory (`replicas.json`, `replicas/<name>/`).
    pub data_dir: PathBuf,
    /// Launch command by runtime kind (`--runtime KIND=COMMAND` or found on `PATH`).
    pub commands: BTreeMap<String, String>,
    /// Devices replicas can be given, by UUID (GPUs and MIG instances).
    pub devices: Vec<AssignedDevice>,
    /// Host name or address in endpoints.
    pub advertise_host: String,
    /// Adapter by kind.
    pub adapters: AdapterLookup,
    /// The probe client.
    pub http: Arc<dyn HttpGet>,
}

impl std::fmt::Debug for SupervisorContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorContext")
            .field("data_dir", &self.data_dir)
            .field("commands", &self.commands)
            .field("devices", &self.devices)
            .field("advertise_host", &self.advertise_host)
            .finish_non_exhaustive()
    }
}

impl SupervisorContext {
    /// The production context: the built-in adapters and the HTTP probe client.
    pub fn new(
        data_dir: PathBuf,
        commands: BTreeMap<String, String>,
        devices: Vec<AssignedDevice>,
        advertise_host: String,
    ) -> Self {
        Self {
            data_dir,
            commands,
            devices,
            advertise_host,
            adapters: Arc::new(|kind: &str| super::adapters::adapter_for(kind).map(Arc::from)),
            http: Arc::new(HyperGet::default()),
        }
    }
}

/// The devices of this node that replicas can be given: every device, and every MIG
/// instance (with its parent's index and vendor).
pub fn assignable_devices(devices: &[crate::devices::Device]) -> Vec<AssignedDevice> {
    let mut out = Vec::new();
    for device in devices {
        out.push(AssignedDevice {
            uuid: device.uuid.clone(),
            index: device.index,
            vendor: device.vendor,
        });
        for instance in device.details.mig.iter().flat_map(|m| &m.instances) {
            out.push(AssignedDevice {
                uuid: instance.uuid.clone(),
                index: device.index,
                vendor: device.vendor,
            });
        }
    }
    out
}

/// Why the supervisor could not start.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// `DATA_DIR/replicas` cannot be created.
    #[error("cannot create the replicas directory {path}: {source}")]
    ReplicasDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The ledger cannot be read.
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
}

/// Every replica's status, with a revision that changes only when something other than
/// the scraped runtime metrics changed (phases, reasons, pids, restarts...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusBoard {
    /// Bumped on every change other than metrics.
    pub revision: u64,
    /// Replicas by name.
    pub replicas: Vec<ReplicaStatus>,
}

/// What the handle asks of the driver.
#[derive(Debug)]
enum Command {
    /// Reconcile towards this desired state (already checked to be newer).
    Apply(DesiredState),
    /// Stop and forget every replica; answer when all are gone.
    StopAll(oneshot::Sender<()>),
}

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Readiness,
    Liveness,
    Version,
    Metrics,
}

/// Outcomes of the work the driver started.
#[derive(Debug)]
enum Event {
    /// A run's main process ended.
    Exited { name: String, run: u64, exit: String },
    /// A run's whole group is gone (`error`: something was left behind).
    Stopped {
        name: String,
        run: u64,
        error: Option<String>,
    },
    /// A probe finished.
    Probe {
        name: String,
        run: u64,
        kind: ProbeKind,
        result: Result<HttpAnswer, ProbeError>,
    },
}

/// A handle on the supervisor. Dropping it stops supervising but leaves the runtimes
/// running (they are adopted by the next supervisor started on the same data directory).
#[derive(Debug)]
pub struct Supervisor {
    commands: mpsc::UnboundedSender<Command>,
    board: watch::Receiver<StatusBoard>,
    generation: Arc<Mutex<Option<u64>>>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Supervisor {
    /// Loads the ledger, adopts the runtimes an earlier agent left running (stopping those
    /// no longer desired, restarting those that died), and starts the driver task. Must be
    /// called within a tokio runtime.
    pub fn start(config: SupervisorConfig, context: SupervisorContext) -> Result<Self, SupervisorError> {
        let replicas_dir = context.data_dir.join("replicas");
        std::fs::create_dir_all(&replicas_dir).map_err(|source| SupervisorError::ReplicasDir {
            path: replicas_dir.clone(),
            source,
        })?;
        let cgroups = if let Some(root) = &config.cgroup_root {
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            match Cgroups::detect(root, &own) {
                Ok(cgroups) => {
                    tracing::info!(cgroup = %cgroups.base.display(), "each replica runs in its own cgroup v2 and process group (stopped with cgroup.kill)");
                    Some(cgroups)
                }
                Err(why) => {
                    tracing::info!(%why, "replicas are tracked by process group only (no delegated cgroup v2 subtree)");
                    None
                }
            }
        } else {
            tracing::info!("replicas are tracked by process group only (cgroups disabled)");
            None
        };
        let loaded = match ledger::load(&context.data_dir) {
            Ok(loaded) => loaded,
            Err(error @ ledger::LedgerError::Corrupt { .. }) => {
                // Starting anyway beats a restart loop with the runtimes unsupervised: the
                // runtimes are found by their working directories and stopped (the desired
                // state is unknown; the coordinator sends it again, as generation 0 is
                // applied now).
                match ledger::move_aside(&context.data_dir) {
                    Ok(to) => {
                        tracing::error!(%error, moved_to = %to.display(), "the replica ledger is corrupt: moved it aside; the runtimes found running are stopped and the coordinator's desired state is applied afresh");
                    }
                    Err(e) => {
                        tracing::error!(%error, move_error = %e, "the replica ledger is corrupt and cannot be moved aside; the runtimes found running are stopped and the coordinator's desired state is applied afresh");
                    }
                }
                ledger::Loaded::default()
            }
            Err(error) => return Err(error.into()),
        };
        for (name, why) in &loaded.unreadable {
            tracing::error!(replica = %name, %why, "a record of the replica ledger cannot be read: the replica's runtime is found by its working directory and stopped before it starts again");
        }
        if let Some(why) = &loaded.restarts_unreadable {
            tracing::warn!(%why, "the restart counts in the replica ledger cannot be read; they start over");
        }
        if let Some(why) = &loaded.desired_unreadable {
            tracing::warn!(%why, "the desired state in the replica ledger cannot be read (agent upgraded?): the runtimes it lists are stopped, and started again when the coordinator sends its desired state");
        }
        let (board_tx, board) = watch::channel(StatusBoard::default());
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut driver = Driver {
            cgroups,
            replicas: BTreeMap::new(),
            applied: loaded.ledger.desired.clone(),
            events: events_tx,
            helpers: JoinSet::new(),
            board: board_tx,
            saved: None,
            port_cursor: config.runtime_ports.0.saturating_sub(1),
            stop_waiters: Vec::new(),
            next_housekeeping: Instant::now(),
            next_log_check: Instant::now() + config.log_check_interval,
            replicas_dir,
            epoch: (Instant::now(), unix_ms()),
            published: BTreeMap::new(),
            config,
            context,
        };
        let strays = driver.find_strays(&loaded.ledger);
        driver.adopt(loaded.ledger, strays, Instant::now());
        let generation = Arc::new(Mutex::new(driver.applied.as_ref().map(|d| d.generation)));
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(driver.run(commands, events, cancel.clone()));
        Ok(Self {
            commands: commands_tx,
            board,
            generation,
            cancel,
            task: Mutex::new(Some(task)),
        })
    }

    /// Reconciles towards `desired` unless a state of the same or a newer generation was
    /// applied already. Returns whether it was applied. Never blocks: the work happens in
    /// the driver (watch [`subscribe`](Self::subscribe) for the outcome).
    pub fn apply(&self, desired: DesiredState) -> bool {
        let Ok(mut generation) = self.generation.lock() else {
            return false;
        };
        if generation.is_some_and(|g| g >= desired.generation) {
            return false;
        }
        *generation = Some(desired.generation);
        self.commands.send(Command::Apply(desired)).is_ok()
    }

    /// Generation of the desired state applied last.
    pub fn generation(&self) -> Option<u64> {
        self.generation.lock().ok().and_then(|g| *g)
    }

    /// Every replica's status now.
    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        self.board.borrow().replicas.clone()
    }

    /// Watches the statuses.
    pub fn subscribe(&self) -> watch::Receiver<StatusBoard> {
        self.board.clone()
    }

    /// Stops every replica (SIGTERM, grace period, SIGKILL; whole groups) and forgets the
    /// desired state, so the next desired state from the coordinator, whatever its
    /// generation, is applied afresh. Returns when every replica is gone.
    pub async fn stop_all(&self) {
        if let Ok(mut generation) = self.generation.lock() {
            *generation = None;
        }
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::StopAll(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops supervising (probes, restarts) and leaves the runtimes running, as an agent
    /// restart does. Returns once the driver has ended (and will no longer write the
    /// ledger).
    pub async fn detach(&self) {
        self.cancel.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Like [`detach`](Self::detach) without waiting (for a handle that is shared).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

/// The live process of a replica, as the driver tracks it.
struct Live {
    run: u64,
    record: ProcessRecord,
    adopted: bool,
    /// The main process's end was seen (its exit status, for our children).
    exit_seen: bool,
    /// The group is gone but our child's exit status has not arrived yet: the stop is
    /// finished when it does, so the status always shows how the run ended.
    stop_done: bool,
    adapter: Option<Arc<dyn Adapter>>,
    endpoints: Option<Endpoints>,
    /// Other process groups of this replica that the ledger did not name (found by their
    /// working directory): stopped with the run, so the replica never runs twice.
    strays: Vec<ProcessGroup>,
}

struct Entry {
    core: ReplicaCore,
    live: Option<Live>,
}

/// How a launch that could not be made goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaunchErrorKind {
    /// It cannot work for this spec: `Failed`.
    Terminal,
    /// A failure: retried with backoff.
    Retry,
    /// A resource is missing (a free port): retried soon, not a failure.
    Wait,
}

/// Why a launch could not be made.
struct LaunchError {
    reason: String,
    kind: LaunchErrorKind,
}

impl LaunchError {
    fn terminal(reason: String) -> Self {
        Self {
            reason,
            kind: LaunchErrorKind::Terminal,
        }
    }
    fn retry(reason: String) -> Self {
        Self {
            reason,
            kind: LaunchErrorKind::Retry,
        }
    }
    fn wait(reason: String) -> Self {
        Self {
            reason,
            kind: LaunchErrorKind::Wait,
        }
    }
}

struct Driver {
    config: SupervisorConfig,
    context: SupervisorContext,
    cgroups: Option<Cgroups>,
    replicas: BTreeMap<String, Entry>,
    applied: Option<DesiredState>,
    events: mpsc::UnboundedSender<Event>,
    helpers: JoinSet<()>,
    board: watch::Sender<StatusBoard>,
    saved: Option<Ledger>,
    port_cursor: u16,
    stop_waiters: Vec<oneshot::Sender<()>>,
    next_housekeeping: Instant,
    next_log_check: Instant,
    replicas_dir: PathBuf,
    /// An instant and the wall clock then, to write instants to the ledger as wall-clock
    /// times that do not change from one write to the next.
    epoch: (Instant, u64),
    /// The phase each replica was last published with (to log entering CrashLoop once).
    published: BTreeMap<String, ReplicaPhase>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a runtime's program cannot be started, with where its command comes from.
fn cannot_start(kind: &str, program: &str, why: &str) -> String {
    if kind == "custom" {
        format!("cannot start the custom runtime's command {program}: {why} (the command is the spec's custom.command)")
    } else {
        format!("cannot start {program} for runtime kind {kind}: {why}; configure the command with --runtime {kind}=COMMAND (or [runtimes] in the config file)")
    }
}

/// Replica names become directory and cgroup names.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid replica name {name:?}: use letters, digits, '-', '_' and '.', not starting with '.'"
        ))
    }
}

/// `host` as the host part of a URL (IPv6 literals in brackets).
fn url_host(host: &str) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn endpoint(advertise_host: &str, ports: &[u16], endpoints: Option<&Endpoints>) -> String {
    let path = endpoints.map(|e| e.openai_path.as_str()).unwrap_or("/v1");
    match ports.first() {
        Some(port) => format!("http://{}:{port}{path}", url_host(advertise_host)),
        None => String::new(),
    }
}

fn desired(spec: &ReplicaSpec) -> Desired {
    Desired {
        hash: ledger::spec_hash(spec),
        spec: spec.clone(),
    }
}

/// What is known of a process whose spec is no longer known: its name and the labels its
/// ledger record kept (empty for a runtime found by its working directory).
fn unknown_spec(name: &str, record: Option<&ProcessRecord>) -> Desired {
    let label = |f: fn(&ProcessRecord) -> &String| record.map(f).cloned().unwrap_or_default();
    Desired {
        spec: ReplicaSpec {
            name: name.to_string(),
            deployment: label(|r| &r.deployment),
            tenant: label(|r| &r.tenant),
            model_name: String::new(),
            model_version: String::new(),
            model_source: String::new(),
            runtime_kind: label(|r| &r.runtime_kind),
            runtime_args: Vec::new(),
            gpus: Vec::new(),
            env: Vec::new(),
            readiness_timeout_ms: 0,
            custom: None,
        },
        hash: record.map(|r| r.spec_hash.clone()).unwrap_or_default(),
    }
}

/// A failed probe as operators read it: a runtime that is loading refuses connections, so
/// `not answering on PORT yet (connection refused)` rather than the client's error chain.
fn probe_failure(error: &ProbeError, port: Option<u16>) -> String {
    let on = port.map(|p| format!(" on {p}")).unwrap_or_default();
    match error {
        ProbeError::Timeout(after) => format!("no answer{on} within {}", humantime::format_duration(*after)),
        ProbeError::Failed(text) => {
            let lower = text.to_lowercase();
            let what = if lower.contains("refused") {
                "connection refused".to_string()
            } else if lower.contains("reset") {
                "connection reset".to_string()
            } else if lower.contains("closed") || lower.contains("incomplete") {
                "connection closed".to_string()
            } else {
                text.clone()
            };
            format!("not answering{on} yet ({what})")
        }
        ProbeError::Url { .. } => error.to_string(),
    }
}

/// The status without the scraped metrics, to tell a significant change from a scrape.
fn without_metrics(replicas: &[ReplicaStatus]) -> Vec<ReplicaStatus> {
    replicas
        .iter()
        .map(|r| ReplicaStatus {
            metrics: None,
            ..r.clone()
        })
        .collect()
}

impl Driver {
    fn replica_dir(&self, name: &str) -> PathBuf {
        self.replicas_dir.join(name)
    }

    fn tail(&self, name: &str) -> Vec<String> {
        let dir = self.replica_dir(name);
        let lines = process::tail(&dir.join("stderr.log"), LOG_TAIL_LINES);
        if lines.is_empty() {
            process::tail(&dir.join("stdout.log"), LOG_TAIL_LINES)
        } else {
            lines
        }
    }

    /// Runtimes of replicas that the ledger does not name: process groups whose working
    /// directory is under `DATA_DIR/replicas/NAME` and that are not a ledger record's
    /// group (an unreadable record, a corrupt ledger moved aside, an agent killed between
    /// a spawn and the ledger write).
    fn find_strays(&self, ledger: &Ledger) -> BTreeMap<String, Vec<ProcessGroup>> {
        let known: BTreeSet<u32> = ledger.processes.values().map(|r| r.pgid).collect();
        let own: Vec<u32> = process::read_stat(std::process::id())
            .map(|s| s.pgid)
            .into_iter()
            .collect();
        let mut strays = process::groups_by_cwd(&self.replicas_dir, &own);
        for (name, groups) in strays.iter_mut() {
            groups.retain(|g| !known.contains(&g.pgid));
            // The replica's cgroup holds only strays when the ledger has no record for it.
            let cgroup = self
                .cgroups
                .as_ref()
                .map(|c| c.base.join(name))
                .filter(|dir| !ledger.processes.contains_key(name) && dir.is_dir());
            for group in groups.iter_mut() {
                group.cgroup = cgroup.clone();
            }
        }
        strays.retain(|_, groups| !groups.is_empty());
        for (name, groups) in &strays {
            let pgids: Vec<u32> = groups.iter().map(|g| g.pgid).collect();
            tracing::warn!(replica = %name, ?pgids, "found a runtime the replica ledger does not name (by its working directory); stopping it so the replica never runs twice");
        }
        strays
    }

    /// Takes over what the ledger lists: live processes are adopted (and stopped when no
    /// longer desired or replaced when their spec changed); dead ones have their group's
    /// remains stopped and are restarted if still desired; desired replicas without a
    /// process are started, after their persisted backoff. `strays` (runtimes the ledger
    /// does not name) are stopped before their replica starts.
    fn adopt(&mut self, ledger: Ledger, mut strays: BTreeMap<String, Vec<ProcessGroup>>, now: Instant) {
        let wanted: BTreeMap<String, ReplicaSpec> = ledger
            .desired
            .iter()
            .flat_map(|d| &d.replicas)
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let counters = ledger.restarts;
        for (name, record) in ledger.processes {
            let alive = process::read_stat(record.pid)
                .is_some_and(|s| s.start_time == record.start_time && s.pgid == record.pgid && !s.is_zombie());
            let wanted_spec = wanted.get(&name).map(desired);
            let running = match &wanted_spec {
                Some(d) if d.hash == record.spec_hash => d.clone(),
                _ => unknown_spec(&name, Some(&record)),
            };
            let adapter = (self.context.adapters)(&running.spec.runtime_kind);
            let endpoints = adapter.as_ref().map(|a| a.endpoints(&running.spec));
            let facts = RunFacts {
                pid: record.pid,
                endpoint: endpoint(&self.context.advertise_host, &record.ports, endpoints.as_ref()),
                adopted: true,
                ready_after: record.ready_after_ms.map(Duration::from_millis),
            };
            let saved = counters.get(&name);
            let (mut core, run) = ReplicaCore::adopted(
                running,
                facts,
                saved.map_or(record.restarts, |c| c.restarts),
                self.config.timing.clone(),
                fastrand::f64,
                now,
            );
            if let Some(saved) = saved {
                core.restore(saved.restarts, saved.failures, saved.last_exit.clone(), None);
            }
            if !alive {
                tracing::warn!(replica = %name, pid = record.pid, "a runtime exited while the agent was not running");
                let tail = self.tail(&name);
                core.on_exit(
                    run,
                    "exited while the agent was not running (status unknown)".into(),
                    tail,
                    now,
                );
            } else {
                tracing::info!(replica = %name, pid = record.pid, "adopted a runtime started by an earlier agent");
            }
            match wanted_spec {
                None => {
                    if alive {
                        tracing::info!(replica = %name, pid = record.pid, "stopping an adopted runtime that is no longer desired");
                    }
                    core.remove();
                }
                Some(d) => {
                    core.set_desired(d, now);
                }
            }
            let extra = strays.remove(&name).unwrap_or_default();
            if alive && !extra.is_empty() {
                // Duplicates of a runtime that keeps running: stopped now, not with it.
                self.stop_detached(&name, extra.clone());
            }
            let live = Live {
                run,
                record,
                adopted: true,
                exit_seen: !alive,
                stop_done: false,
                adapter,
                endpoints,
                strays: extra,
            };
            self.replicas.insert(name, Entry { core, live: Some(live) });
        }
        for (name, groups) in strays {
            let Some((first, rest)) = groups.split_first() else {
                continue;
            };
            let leader_alive = process::is_running(first.pgid, first.leader_start_time);
            let facts = RunFacts {
                pid: first.pgid,
                endpoint: String::new(),
                adopted: true,
                ready_after: None,
            };
            let saved = counters.get(&name);
            let spec = wanted.get(&name);
            let label = |f: fn(&ReplicaSpec) -> &String| spec.map(f).cloned().unwrap_or_default();
            let record = ProcessRecord {
                pid: first.pgid,
                pgid: first.pgid,
                start_time: first.leader_start_time,
                ports: Vec::new(),
                spec_hash: String::new(),
                started_at_unix_ms: 0,
                cgroup: first.cgroup.clone(),
                restarts: saved.map_or(0, |c| c.restarts),
                ready_after_ms: None,
                deployment: label(|s| &s.deployment),
                tenant: label(|s| &s.tenant),
                runtime_kind: label(|s| &s.runtime_kind),
            };
            let (mut core, run) = ReplicaCore::adopted(
                unknown_spec(&name, Some(&record)),
                facts,
                saved.map_or(0, |c| c.restarts),
                self.config.timing.clone(),
                fastrand::f64,
                now,
            );
            match spec {
                None => core.remove(),
                Some(spec) => {
                    core.set_desired(desired(spec), now);
                }
            }
            core.set_reason(
                "stopping a runtime the replica ledger does not name (found by its working directory)".into(),
            );
            let live = Live {
                run,
                record,
                adopted: true,
                exit_seen: !leader_alive,
                stop_done: false,
                adapter: None,
                endpoints: None,
                strays: rest.to_vec(),
            };
            self.replicas.insert(name, Entry { core, live: Some(live) });
        }
        for (name, spec) in wanted {
            if !self.replicas.contains_key(&name) {
                let mut core = ReplicaCore::new(desired(&spec), self.config.timing.clone(), fastrand::f64, now);
                if let Some(saved) = counters.get(&name) {
                    // The backoff an earlier agent started goes on (never longer than the
                    // longest backoff, whatever the wall clock did meanwhile).
                    let until = saved.next_attempt_unix_ms.map(|at| {
                        let wait = Duration::from_millis(at.saturating_sub(unix_ms()));
                        now + wait.min(self.config.timing.restart_backoff_max)
                    });
                    core.restore(saved.restarts, saved.failures, saved.last_exit.clone(), until);
                }
                self.replicas.insert(name, Entry { core, live: None });
            }
        }
    }

    /// Stops process groups apart from any run (duplicates of an adopted runtime).
    fn stop_detached(&mut self, name: &str, groups: Vec<ProcessGroup>) {
        let grace = self.config.stop_grace_period;
        let name = name.to_string();
        self.helpers.spawn(async move {
            for group in groups {
                if let Err(error) = stop_group(&name, &group, grace).await {
                    tracing::error!(replica = %name, %error, "a duplicate runtime's processes did not all end");
                }
            }
        });
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<Event>,
        cancel: CancellationToken,
    ) {
        loop {
            let now = Instant::now();
            self.drive(now);
            self.housekeeping(now);
            self.publish();
            self.persist();
            if self.replicas.is_empty() {
                for waiter in self.stop_waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
            let wake = self.next_wake(now);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(command) = commands.recv() => self.command(command, Instant::now()),
                Some(event) = events.recv() => self.event(event, Instant::now()),
                Some(_) = self.helpers.join_next(), if !self.helpers.is_empty() => {}
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
        }
        // Helper tasks (probes, stops, child waits) end with the driver; the runtimes do not.
        self.helpers.abort_all();
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + MAX_SLEEP;
        for entry in self.replicas.values() {
            if let Some(at) = entry.core.next_wake() {
                wake = wake.min(at);
            }
        }
        if self
            .replicas
            .values()
            .any(|e| e.live.as_ref().is_some_and(|l| l.adopted))
        {
            wake = wake.min(self.next_housekeeping);
        }
        if self.replicas.values().any(|e| e.live.is_some()) {
            wake = wake.min(self.next_log_check);
        }
        wake.max(now)
    }

    fn command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Apply(desired_state) => self.apply(desired_state, now),
            Command::StopAll(waiter) => {
                tracing::info!(replicas = self.replicas.len(), "stopping every replica");
                for entry in self.replicas.values_mut() {
                    entry.core.remove();
                }
                self.applied = None;
                self.stop_waiters.push(waiter);
            }
        }
    }

    fn apply(&mut self, desired_state: DesiredState, now: Instant) {
        let mut wanted: BTreeMap<String, ReplicaSpec> = BTreeMap::new();
        for spec in &desired_state.replicas {
            if wanted.insert(spec.name.clone(), spec.clone()).is_some() {
                tracing::warn!(replica = %spec.name, generation = desired_state.generation, "the desired state names a replica twice; the last one is used");
            }
        }
        for (name, spec) in &wanted {
            match self.replicas.get_mut(name) {
                Some(entry) => {
                    if entry.core.set_desired(desired(spec), now) {
                        tracing::info!(replica = %name, "replica spec changed");
                    }
                }
                None => {
                    tracing::info!(replica = %name, runtime = %spec.runtime_kind, "replica added");
                    let core = ReplicaCore::new(desired(spec), self.config.timing.clone(), fastrand::f64, now);
                    self.replicas.insert(name.clone(), Entry { core, live: None });
                }
            }
        }
        for (name, entry) in &mut self.replicas {
            if !wanted.contains_key(name) && entry.core.desired().is_some() {
                tracing::info!(replica = %name, "replica removed");
                entry.core.remove();
            }
        }
        self.applied = Some(desired_state);
        self.persist();
    }

    /// Carries out every decision that is due.
    fn drive(&mut self, now: Instant) {
        let names: Vec<String> = self.replicas.keys().cloned().collect();
        for name in names {
            while let Some(decision) = self.replicas.get_mut(&name).and_then(|e| e.core.poll(now)) {
                match decision {
                    Decision::Launch => self.launch(&name, now),
                    Decision::Stop { run } => self.stop(&name, run),
                    Decision::ProbeReadiness { run } => self.probe(&name, run, ProbeKind::Readiness),
                    Decision::ProbeLiveness { run } => self.probe(&name, run, ProbeKind::Liveness),
                    Decision::ProbeVersion { run } => self.probe(&name, run, ProbeKind::Version),
                    Decision::ScrapeMetrics { run } => self.probe(&name, run, ProbeKind::Metrics),
                    Decision::Forget => {
                        tracing::info!(replica = %name, "replica stopped and forgotten");
                        self.replicas.remove(&name);
                        break;
                    }
                }
            }
        }
    }

    fn launch(&mut self, name: &str, now: Instant) {
        let Some(spec) = self.replicas.get(name).map(|e| e.core.spec().clone()) else {
            return;
        };
        let outcome = self.spawn(&spec);
        let Some(entry) = self.replicas.get_mut(name) else {
            return;
        };
        match outcome {
            Ok((facts, mut live, child)) => {
                let pid = facts.pid;
                live.run = entry.core.on_spawned(facts, now);
                let run = live.run;
                entry.live = Some(live);
                // The ledger names the process before anything else happens.
                self.persist();
                tracing::info!(replica = %name, pid, runtime = %spec.runtime_kind, "started runtime");
                let events = self.events.clone();
                let name = name.to_string();
                self.helpers.spawn(async move {
                    let mut child = child;
                    let exit = match child.wait().await {
                        Ok(status) => process::describe_exit(status),
                        Err(e) => format!("ended (cannot read the exit status: {e})"),
                    };
                    let _ = events.send(Event::Exited { name, run, exit });
                });
            }
            Err(error) => match error.kind {
                LaunchErrorKind::Terminal => {
                    tracing::error!(replica = %name, reason = %error.reason, "replica cannot be launched on this node");
                    entry.core.on_launch_failed(error.reason, true, now);
                }
                LaunchErrorKind::Retry => {
                    tracing::warn!(replica = %name, reason = %error.reason, "replica could not be started; retrying with backoff");
                    entry.core.on_launch_failed(error.reason, false, now);
                }
                LaunchErrorKind::Wait => {
                    if entry.core.status().reason != error.reason {
                        tracing::info!(replica = %name, reason = %error.reason, "replica waits for a free port");
                    }
                    entry.core.on_launch_waiting(error.reason, now);
                }
            },
        }
    }

    /// Builds the launch and starts the process.
    fn spawn(&mut self, spec: &ReplicaSpec) -> Result<(RunFacts, Live, tokio::process::Child), LaunchError> {
        check_name(&spec.name).map_err(LaunchError::terminal)?;
        let kind = spec.runtime_kind.as_str();
        let adapter = (self.context.adapters)(kind).ok_or_else(|| {
            LaunchError::terminal(format!(
                "this agent cannot launch runtime kind {kind:?} (known kinds: {}); configure a supported kind with --runtime KIND=COMMAND",
                crate::RUNTIME_KINDS.join(", ")
            ))
        })?;
        let command = match self.context.commands.get(kind) {
            Some(command) => process::split_command(command),
            // A custom runtime carries its whole command in the spec.
            None if kind == "custom" => Vec::new(),
            None => {
                return Err(LaunchError::terminal(format!(
                    "this node has no command for runtime kind {kind}: start the agent with --runtime {kind}=COMMAND (or put the runtime's binary on PATH)"
                )))
            }
        };
        let devices = spec
            .gpus
            .iter()
            .map(|uuid| {
                self.context
                    .devices
                    .iter()
                    .find(|d| &d.uuid == uuid)
                    .cloned()
                    .ok_or_else(|| LaunchError::terminal(format!("device {uuid} is not on this node")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let needed = adapter.ports_needed(spec);
        let dir = self.replica_dir(&spec.name);
        let host = self.config.runtime_host.to_string();
        // The launch is built once before ports are reserved: a spec the adapter refuses or
        // a program that does not exist fails for good, whatever the ports.
        let placeholder: Vec<u16> = (0..needed)
            .map(|i| self.config.runtime_ports.0.saturating_add(i as u16))
            .collect();
        let trial = adapter
            .launch(&LaunchContext {
                spec,
                command: &command,
                host: &host,
                ports: &placeholder,
                devices: &devices,
                replica_dir: &dir,
            })
            .map_err(|e| LaunchError::terminal(e.to_string()))?;
        let path = trial
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| std::ffi::OsString::from(v))
            .or_else(|| std::env::var_os("PATH"));
        process::resolve_program(&trial.program, path.as_deref())
            .map_err(|why| LaunchError::terminal(cannot_start(kind, &trial.program, &why)))?;
        let taken: BTreeSet<u16> = self
            .replicas
            .values()
            .filter_map(|e| e.live.as_ref())
            .flat_map(|l| l.record.ports.iter().copied())
            .collect();
        let ports = process::reserve_ports(
            self.config.runtime_host,
            self.config.runtime_ports,
            needed,
            &taken,
            &mut self.port_cursor,
        )
        .ok_or_else(|| {
            let (first, last) = self.config.runtime_ports;
            LaunchError::wait(match needed {
                1 => format!("waiting for a free port in runtime_ports {first}-{last}"),
                n => format!("waiting for {n} free ports in runtime_ports {first}-{last}"),
            })
        })?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| LaunchError::retry(format!("cannot create {}: {e}", dir.display())))?;
        let context = LaunchContext {
            spec,
            command: &command,
            host: &host,
            ports: &ports,
            devices: &devices,
            replica_dir: &dir,
        };
        let plan = adapter
            .launch(&context)
            .map_err(|e| LaunchError::terminal(e.to_string()))?;
        let endpoints = adapter.endpoints(spec);
        let cgroup = match &self.cgroups {
            Some(cgroups) => match cgroups.prepare(&spec.name) {
                Ok(dir) => Some(dir),
                Err(e) => {
                    tracing::warn!(replica = %spec.name, error = %e, "cannot create the replica's cgroup; tracking it by process group only");
                    None
                }
            },
            None => None,
        };
        let stdout = dir.join("stdout.log");
        let stderr = dir.join("stderr.log");
        let marker = format!(
            "{} at {} ({} {})",
            process::RUN_MARKER,
            humantime::format_rfc3339_seconds(SystemTime::now()),
            plan.program,
            plan.args.join(" ")
        );
        for log in [&stdout, &stderr] {
            process::append_line(log, &marker)
                .map_err(|e| LaunchError::retry(format!("cannot write {}: {e}", log.display())))?;
        }
        // The adapter's environment holds the spec's (`spec.env`) as well as its own.
        let child = process::spawn(&process::SpawnRequest {
            program: &plan.program,
            args: &plan.args,
            env: &plan.env,
            cwd: &dir,
            stdout: &stdout,
            stderr: &stderr,
            cgroup: cgroup.as_deref(),
        })
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                LaunchError::terminal(cannot_start(kind, &plan.program, &e.to_string()))
            }
            _ => LaunchError::retry(format!("cannot start {}: {e}", plan.program)),
        })?;
        let pid = child
            .id()
            .ok_or_else(|| LaunchError::retry(format!("{} exited at once", plan.program)))?;
        if let Some(cgroup) = &cgroup {
            // The child moves itself first; this covers a shell that could not.
            if let Err(e) = process::cgroup_add(cgroup, pid) {
                tracing::warn!(replica = %spec.name, error = %e, "cannot move the runtime into its cgroup; its process group still holds it");
            }
        }
        // Read while we hold the child: even if it exited, it is an unreaped zombie.
        let start_time = process::read_stat(pid).map(|s| s.start_time).unwrap_or(0);
        let facts = RunFacts {
            pid,
            endpoint: endpoint(&self.context.advertise_host, &ports, Some(&endpoints)),
            adopted: false,
            ready_after: None,
        };
        let record = ProcessRecord {
            pid,
            pgid: pid,
            start_time,
            ports,
            spec_hash: ledger::spec_hash(spec),
            started_at_unix_ms: unix_ms(),
            cgroup,
            restarts: 0,
            ready_after_ms: None,
            deployment: spec.deployment.clone(),
            tenant: spec.tenant.clone(),
            runtime_kind: spec.runtime_kind.clone(),
        };
        let live = Live {
            run: 0,
            record,
            adopted: false,
            exit_seen: false,
            stop_done: false,
            adapter: Some(adapter),
            endpoints: Some(endpoints),
            strays: Vec::new(),
        };
        Ok((facts, live, child))
    }

    fn stop(&mut self, name: &str, run: u64) {
        let Some(live) = self.replicas.get(name).and_then(|e| e.live.as_ref()) else {
            return;
        };
        if live.run != run {
            return;
        }
        let group = ProcessGroup {
            pgid: live.record.pgid,
            leader_start_time: live.record.start_time,
            cgroup: live.record.cgroup.clone(),
        };
        let strays = live.strays.clone();
        match self.replicas.get(name).and_then(|e| e.core.stopping()) {
            Some((cause, true)) => {
                tracing::warn!(replica = %name, pgid = group.pgid, %cause, "stopping a failed runtime");
            }
            Some((cause, false)) => tracing::info!(replica = %name, pgid = group.pgid, %cause, "stopping runtime"),
            None => tracing::info!(replica = %name, pgid = group.pgid, "stopping runtime"),
        }
        let grace = self.config.stop_grace_period;
        let events = self.events.clone();
        let name = name.to_string();
        self.helpers.spawn(async move {
            let mut errors: Vec<String> = Vec::new();
            for group in std::iter::once(&group).chain(&strays) {
                if let Err(e) = stop_group(&name, group, grace).await {
                    errors.push(e);
                }
                if let Some(cgroup) = &group.cgroup {
                    process::cgroup_remove(cgroup);
                }
            }
            let error = (!errors.is_empty()).then(|| errors.join("; "));
            let _ = events.send(Event::Stopped { name, run, error });
        });
    }

    fn probe(&mut self, name: &str, run: u64, kind: ProbeKind) {
        let Some(live) = self.replicas.get(name).and_then(|e| e.live.as_ref()) else {
            return;
        };
        let endpoints = live.endpoints.as_ref();
        let probe: Option<&Probe> = match kind {
            ProbeKind::Readiness => endpoints.map(|e| &e.readiness),
            ProbeKind::Liveness => endpoints.map(|e| &e.liveness),
            ProbeKind::Version => endpoints.and_then(|e| e.version.as_ref()),
            ProbeKind::Metrics => endpoints.and_then(|e| e.metrics.as_ref()),
        };
        let url = probe.map(|p| match live.record.ports.get(p.port_index) {
            Some(port) => Ok(format!("http://{}{}", SocketAddr::new(self.probe_ip(), *port), p.path)),
            None => Err(ProbeError::Url {
                url: p.path.clone(),
                reason: format!(
                    "port index {} but {} port(s) reserved",
                    p.port_index,
                    live.record.ports.len()
                ),
            }),
        });
        let events = self.events.clone();
        let name = name.to_string();
        let http = self.context.http.clone();
        let timeout = if kind == ProbeKind::Readiness {
            READINESS_PROBE_TIMEOUT
        } else {
            PROBE_TIMEOUT
        };
        self.helpers.spawn(async move {
            let result = match url {
                Some(Ok(url)) => http.get(url, timeout).await,
                Some(Err(e)) => Err(e),
                None => Err(ProbeError::Failed("this runtime has no such probe".into())),
            };
            let _ = events.send(Event::Probe {
                name,
                run,
                kind,
                result,
            });
        });
    }

    /// Where the agent reaches runtimes: loopback when they bind every address.
    fn probe_ip(&self) -> IpAddr {
        match self.config.runtime_host {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        }
    }

    fn event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Exited { name, run, exit } => {
                let tail = self.tail(&name);
                let Some(entry) = self.replicas.get_mut(&name) else {
                    return;
                };
                let Some(live) = entry.live.as_mut().filter(|l| l.run == run) else {
                    return;
                };
                live.exit_seen = true;
                let stop_done = live.stop_done;
                if entry.core.phase() != ReplicaPhase::Stopping {
                    tracing::warn!(replica = %name, %exit, "runtime exited");
                }
                entry.core.on_exit(run, exit, tail, now);
                if stop_done {
                    self.finish_stop(&name, run, now);
                }
            }
            Event::Stopped { name, run, error } => {
                if let Some(error) = &error {
                    tracing::error!(replica = %name, %error, "a runtime's processes did not all end");
                }
                let Some(entry) = self.replicas.get_mut(&name) else {
                    return;
                };
                if let Some(live) = entry.live.as_mut().filter(|l| l.run == run) {
                    if !live.adopted && !live.exit_seen {
                        // Our child is dead (its group is empty); its exit status is on the way.
                        live.stop_done = true;
                        return;
                    }
                }
                self.finish_stop(&name, run, now);
            }
            Event::Probe {
                name,
                run,
                kind,
                result,
            } => {
                let Some(entry) = self.replicas.get_mut(&name) else {
                    return;
                };
                let Some(live) = entry.live.as_ref().filter(|l| l.run == run) else {
                    return;
                };
                let adapter = live.adapter.clone();
                let answered = |answer: &HttpAnswer| {
                    adapter
                        .as_ref()
                        .is_some_and(|a| a.is_ready(answer.status, &answer.body))
                };
                match kind {
                    ProbeKind::Readiness | ProbeKind::Liveness => {
                        let (ok, detail) = match &result {
                            Ok(answer) => (answered(answer), format!("HTTP {}", answer.status)),
                            Err(e) => (false, probe_failure(e, live.record.ports.first().copied())),
                        };
                        if kind == ProbeKind::Readiness {
                            let before = entry.core.phase();
                            entry.core.on_readiness(run, ok, &detail, now);
                            if before == ReplicaPhase::Starting && entry.core.phase() == ReplicaPhase::Ready {
                                let ready_after_ms = entry.core.ready_after().map_or(0, |d| d.as_millis() as u64);
                                tracing::info!(replica = %name, ready_after_ms, "runtime ready");
                            }
                        } else {
                            if !ok {
                                tracing::warn!(replica = %name, %detail, "liveness probe failed");
                            }
                            entry.core.on_liveness(run, ok, &detail, now);
                        }
                    }
                    ProbeKind::Version => {
                        let version = match (&result, &adapter) {
                            (Ok(answer), Some(adapter)) if (200..300).contains(&answer.status) => {
                                adapter.version(&answer.body)
                            }
                            _ => None,
                        };
                        entry.core.on_version(run, version);
                    }
                    ProbeKind::Metrics => {
                        let metrics: Option<RuntimeMetrics> = match (&result, &adapter) {
                            (Ok(answer), Some(adapter)) if (200..300).contains(&answer.status) => {
                                Some(adapter.metrics(&answer.body))
                            }
                            _ => None,
                        };
                        entry.core.on_metrics(run, metrics, now);
                    }
                }
            }
        }
    }

    /// The run's group is gone: the replica restarts, waits, or is forgotten.
    fn finish_stop(&mut self, name: &str, run: u64, now: Instant) {
        let Some(entry) = self.replicas.get_mut(name) else {
            return;
        };
        if entry.live.as_ref().is_some_and(|l| l.run == run) {
            entry.live = None;
        }
        entry.core.on_stopped(run, now);
        self.persist();
    }

    /// Periodic work: adopted processes are not our children, so their exit is noticed by
    /// looking at `/proc`; log files are rotated.
    fn housekeeping(&mut self, now: Instant) {
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + ADOPTED_POLL;
            let gone: Vec<(String, u64)> = self
                .replicas
                .iter()
                .filter_map(|(name, e)| e.live.as_ref().map(|l| (name, l)))
                .filter(|(_, l)| l.adopted && !l.exit_seen && !process::is_running(l.record.pid, l.record.start_time))
                .map(|(name, l)| (name.clone(), l.run))
                .collect();
            for (name, run) in gone {
                self.event(
                    Event::Exited {
                        name,
                        run,
                        exit: "exited (status unknown: started by an earlier agent)".into(),
                    },
                    now,
                );
            }
        }
        if now >= self.next_log_check {
            self.next_log_check = now + self.config.log_check_interval;
            let max = self.config.log_max_bytes;
            let logs: Vec<PathBuf> = self
                .replicas
                .iter()
                .filter(|(_, e)| e.live.is_some())
                .flat_map(|(name, _)| {
                    let dir = self.replica_dir(name);
                    [dir.join("stdout.log"), dir.join("stderr.log")]
                })
                .collect();
            if !logs.is_empty() {
                tokio::task::spawn_blocking(move || {
                    for log in logs {
                        if let Err(e) = process::rotate(&log, max) {
                            tracing::warn!(log = %log.display(), error = %e, "cannot rotate a runtime log");
                        }
                    }
                });
            }
        }
    }

    fn publish(&mut self) {
        let replicas: Vec<ReplicaStatus> = self.replicas.values().map(|e| e.core.status()).collect();
        for status in &replicas {
            let before = self.published.insert(status.name.clone(), status.phase);
            if status.phase == ReplicaPhase::CrashLoop && before != Some(ReplicaPhase::CrashLoop) {
                tracing::warn!(
                    replica = %status.name,
                    restarts = status.restarts,
                    last_exit = status.last_exit.as_deref().unwrap_or("none"),
                    reason = %status.reason,
                    "replica is in CrashLoop: it keeps failing and restarts with growing backoff"
                );
            }
        }
        self.published.retain(|name, _| self.replicas.contains_key(name));
        self.board.send_if_modified(|board| {
            if board.replicas == replicas {
                return false;
            }
            if without_metrics(&board.replicas) != without_metrics(&replicas) {
                board.revision += 1;
            }
            board.replicas = replicas;
            true
        });
    }

    fn ledger(&self) -> Ledger {
        Ledger {
            version: ledger::FORMAT_VERSION,
            desired: self.applied.clone(),
            processes: self
                .replicas
                .iter()
                .filter_map(|(name, e)| {
                    let live = e.live.as_ref()?;
                    let mut record = live.record.clone();
                    record.restarts = e.core.restarts();
                    if e.core.run_id() == Some(live.run) {
                        if let Some(ready) = e.core.ready_after() {
                            record.ready_after_ms = Some(ready.as_millis() as u64);
                        }
                    }
                    Some((name.clone(), record))
                })
                .collect(),
            restarts: self
                .replicas
                .iter()
                .filter(|(_, e)| e.core.desired().is_some())
                .map(|(name, e)| {
                    let record = ledger::RestartRecord {
                        restarts: e.core.restarts(),
                        failures: e.core.failures(),
                        next_attempt_unix_ms: e.core.retry_at().map(|at| {
                            let (base, base_ms) = self.epoch;
                            let ahead = at.saturating_duration_since(base).as_millis() as u64;
                            let behind = base.saturating_duration_since(at).as_millis() as u64;
                            (base_ms + ahead).saturating_sub(behind)
                        }),
                        last_exit: e.core.last_exit().map(str::to_string),
                    };
                    (name.clone(), record)
                })
                .filter(|(_, r)| *r != ledger::RestartRecord::default())
                .collect(),
        }
    }

    /// Writes the ledger if it changed.
    fn persist(&mut self) {
        let ledger = self.ledger();
        if self.saved.as_ref() == Some(&ledger) {
            return;
        }
        match ledger::save(&self.context.data_dir, &ledger) {
            Ok(()) => self.saved = Some(ledger),
            Err(e) => {
                tracing::error!(error = %e, "cannot write the replica ledger: an agent restart now could not adopt the runtimes");
            }
        }
    }
}

/// SIGTERM to the whole group, up to `grace` for it to go, then SIGKILL (and
/// `cgroup.kill`); returns once no process of the group is left.
async fn stop_group(name: &str, group: &ProcessGroup, grace: Duration) -> Result<(), String> {
    if members(group).await.is_empty() {
        return Ok(());
    }
    if let Err(e) = group.signal(Signal::SIGTERM) {
        tracing::warn!(replica = %name, pgid = group.pgid, error = %e, "cannot send SIGTERM to a runtime's group");
    }
    if wait_empty(group, grace).await {
        return Ok(());
    }
    tracing::warn!(replica = %name, pgid = group.pgid, grace = %humantime::format_duration(grace), "runtime still running after the grace period; sending SIGKILL to its group");
    if let Err(e) = group.signal(Signal::SIGKILL) {
        tracing::warn!(replica = %name, pgid = group.pgid, error = %e, "cannot send SIGKILL to a runtime's group");
    }
    if wait_empty(group, KILL_WAIT).await {
        Ok(())
    } else {
        Err(format!(
            "processes {:?} of group {} are still there {KILL_WAIT:?} after SIGKILL (stuck in the kernel?)",
            members(group).await,
            group.pgid
        ))
    }
}

async fn members(group: &ProcessGroup) -> Vec<u32> {
    let group = group.clone();
    tokio::task::spawn_blocking(move || group.members())
        .await
        .unwrap_or_default()
}

async fn wait_empty(group: &ProcessGroup, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if members(group).await.is_empty() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}
