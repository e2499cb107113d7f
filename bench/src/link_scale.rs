//! `link-scale`: how the real coordinator copes with thousands of agents.
//!
//! For each agent count N this bench spawns the release `pyxis-coordinator` binary with a
//! fresh data directory, measures it idle, creates one join token with N uses through the
//! admin API, enrolls N simulated agents (bounded concurrency), connects them all over
//! mutual-TLS QUIC, and lets each send a capacity report every report interval (1 s by
//! default), staggered uniformly over the interval. Over a steady window it samples the
//! coordinator's CPU (utime + stime from `/proc/PID/stat`) and RSS (`VmRSS`), and the time
//! from sending report `seq = k` to receiving `Ack(Capacity(k))`, which the coordinator
//! sends after the registry holds the report. Finally it drops every connection at once
//! (closes the client endpoints) and times the reconnect storm until every agent has its
//! `Registered` again.
//!
//! Simulated agents use `pyxis-transport` and `pyxis-protocol` directly (plus the agent's
//! real enrollment function) and multiplex many connections over a few UDP endpoints, to
//! keep the client light. The client still shares the machine's cores with the coordinator,
//! and the bench reports its own CPU use next to the coordinator's.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

mod procfs;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use procfs::{clk_tck, Proc};
use pyxis_protocol::{
    Accelerator, Ack, AckOf, AgentMessage, CapacityReport, CoordinatorMessage, DeviceUsage, Health, Hello, NodeInfo,
    Registration, Vendor, MAX_FRAME_BYTES, SUPPORTED_VERSIONS,
};
use pyxis_transport::{
    framed::{FrameReader, FrameWriter},
    pki,
};
use serde_json::json;
use tokio::{
    sync::{mpsc, Semaphore},
    task::JoinSet,
};

/// Coordinator CPU target at 10,000 agents, in % of one core.
const TARGET_CPU_PERCENT: f64 = 100.0;
/// Coordinator RSS target at 10,000 agents, in MiB.
const TARGET_RSS_MIB: f64 = 1024.0;
/// Report-to-ack p99 target at 10,000 agents, in ms.
const TARGET_P99_MS: f64 = 100.0;
/// Reconnect-storm target for 10,000 agents, in seconds.
const TARGET_STORM_S: f64 = 10.0;
/// The agent count the targets are stated for.
const TARGET_AGENTS: usize = 10_000;
/// Send times kept per connection to match acks (reports in flight at once).
const TIMING_SLOTS: usize = 16;
/// Time allowed for one handshake step (QUIC handshake, HelloAck, Registered, Enrolled).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Distinct error messages kept for the report.
const MAX_KEPT_ERRORS: usize = 8;

/// Scale benchmark of the agent link against the real `pyxis-coordinator` binary.
///
/// Needs `cargo build --release -p pyxis-bench -p pyxis-coordinator`. Prints progress on
/// stderr and a markdown table on stdout.
#[derive(Debug, Parser)]
#[command(name = "link-scale", verbatim_doc_comment)]
struct Args {
    /// Agent counts to run, one fresh coordinator each.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    agents: Vec<usize>,
    /// Steady-state measurement window.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Wait after every agent is connected, before measuring.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Idle-baseline window (coordinator with no agents).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Window measured after the reconnect storm (0s to skip).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    post_storm: Duration,
    /// The coordinator binary (default: `pyxis-coordinator` beside this executable).
    #[arg(long, value_name = "FILE")]
    coordinator_bin: Option<PathBuf>,
    /// `RUST_LOG` for the coordinator (default: its own default, `info,quinn=warn,...`).
    /// The `listening` lines are always kept at info, since the bench parses them.
    #[arg(long, value_name = "FILTER")]
    coordinator_log: Option<String>,
    /// `--liveness-timeout` passed to the coordinator.
    #[arg(long, default_value = "30s")]
    liveness_timeout: String,
    /// Client connections per UDP endpoint.
    #[arg(long, default_value_t = 500)]
    conns_per_endpoint: usize,
    /// Receive and send buffer asked for each client UDP socket, in bytes (0: the OS
    /// default). One client socket carries many agents, so it needs more than one agent's.
    #[arg(long, default_value_t = 4 << 20)]
    client_udp_buffer: usize,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 64)]
    enroll_concurrency: usize,
    /// mTLS connects in flight at once for the initial connect.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// mTLS connects in flight at once during the reconnect storm (0: all at once).
    #[arg(long, default_value_t = 1000)]
    storm_concurrency: usize,
    /// Simulated GPUs per agent (one `DeviceUsage` each in every report).
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// Skip the reconnect storm.
    #[arg(long)]
    no_storm: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Prints a progress line on stderr, stamped with seconds since the bench started.
macro_rules! progress {
    ($start:expr, $($arg:tt)*) => {
        eprintln!("[{:>7.1}s] {}", $start.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

/// Locks a mutex, recovering the data of a poisoned one (all data here stays valid).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------------------

/// Busy CPU seconds of the whole machine (`/proc/stat`: all but idle and iowait).
fn machine_busy_seconds(clk_tck: f64) -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| *v)
        .sum();
    busy as f64 / clk_tck
}

/// Datagrams dropped because a UDP socket's receive buffer was full, machine-wide
/// (`RcvbufErrors` of `/proc/net/snmp`).
fn udp_rcvbuf_errors() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// Datagrams dropped by the UDP socket bound to local `port` (`drops` of `/proc/net/udp`).
fn udp_socket_drops(port: u16) -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/udp") else {
        return 0;
    };
    let suffix = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            local.ends_with(&suffix).then(|| fields.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// The processes and sockets a stage is charged against.
#[derive(Debug, Clone, Copy)]
struct Probes<'a> {
    coordinator: &'a Proc,
    client: &'a Proc,
    /// The coordinator's QUIC port.
    quic_port: u16,
}

/// CPU seconds of both processes and UDP drop counters at one instant.
#[derive(Debug, Clone, Copy)]
struct CpuMark {
    at: Instant,
    coordinator: f64,
    client: f64,
    machine: f64,
    drops_total: u64,
    drops_coordinator: u64,
}

/// CPU spent by both processes, and datagrams dropped, between two marks.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSpent {
    /// Wall seconds.
    wall_s: f64,
    /// Coordinator CPU seconds.
    coordinator_s: f64,
    /// Bench (client) CPU seconds.
    client_s: f64,
    /// CPU seconds of everything else on the machine (other processes, kernel threads).
    others_s: f64,
    /// Datagrams dropped by the coordinator's full UDP receive buffer.
    udp_drops_coordinator: u64,
    /// Datagrams dropped by full UDP receive buffers on the whole machine (coordinator
    /// and bench endpoints).
    udp_drops_total: u64,
}

impl CpuMark {
    /// Reads both processes now.
    fn now(probes: Probes<'_>) -> Result<Self> {
        Ok(Self {
            at: Instant::now(),
            coordinator: probes.coordinator.cpu_seconds()?,
            client: probes.client.cpu_seconds()?,
            machine: machine_busy_seconds(probes.client.clk_tck),
            drops_total: udp_rcvbuf_errors(),
            drops_coordinator: udp_socket_drops(probes.quic_port),
        })
    }

    /// What was spent since `self`.
    fn spent(&self, probes: Probes<'_>) -> Result<CpuSpent> {
        let end = Self::now(probes)?;
        Ok(CpuSpent {
            wall_s: end.at.duration_since(self.at).as_secs_f64(),
            coordinator_s: end.coordinator - self.coordinator,
            client_s: end.client - self.client,
            others_s: ((end.machine - self.machine)
                - (end.coordinator - self.coordinator)
                - (end.client - self.client))
                .max(0.0),
            udp_drops_coordinator: end.drops_coordinator.saturating_sub(self.drops_coordinator),
            udp_drops_total: end.drops_total.saturating_sub(self.drops_total),
        })
    }
}

/// Resource use over a window.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    /// CPU and drops over the window.
    spent: CpuSpent,
    /// Window length in seconds.
    wall_s: f64,
    /// Coordinator CPU in % of one core.
    cpu_percent: f64,
    /// Coordinator peak RSS over 1 s samples, MiB.
    rss_peak_mib: f64,
    /// Bench CPU in % of one core.
    client_cpu_percent: f64,
    /// Bench peak RSS, MiB.
    client_rss_peak_mib: f64,
}

/// Samples both processes every second for `window`.
async fn observe(probes: Probes<'_>, window: Duration) -> Result<Usage> {
    let (coordinator, client) = (probes.coordinator, probes.client);
    let start = CpuMark::now(probes)?;
    let deadline = start.at + window;
    let mut usage = Usage::default();
    loop {
        usage.rss_peak_mib = usage.rss_peak_mib.max(coordinator.status_mib("VmRSS")?);
        usage.client_rss_peak_mib = usage.client_rss_peak_mib.max(client.status_mib("VmRSS")?);
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_secs(1))).await;
    }
    let spent = start.spent(probes)?;
    usage.spent = spent;
    usage.wall_s = spent.wall_s;
    usage.cpu_percent = 100.0 * spent.coordinator_s / spent.wall_s;
    usage.client_cpu_percent = 100.0 * spent.client_s / spent.wall_s;
    Ok(usage)
}

// ---------------------------------------------------------------------------------------
// The coordinator process
// ---------------------------------------------------------------------------------------

/// Warnings and errors the coordinator logged.
#[derive(Debug, Default)]
struct LogTail {
    /// `node is NotReady` lines (liveness timeouts).
    not_ready: AtomicU64,
    warnings: AtomicU64,
    errors: AtomicU64,
    recent: Mutex<VecDeque<String>>,
}

impl LogTail {
    /// Counts and keeps a line if it is a warning or an error.
    fn observe(&self, line: &str) {
        if line.contains("node is NotReady") {
            self.not_ready.fetch_add(1, Ordering::Relaxed);
        }
        let counter = if line.contains(" WARN ") {
            &self.warnings
        } else if line.contains(" ERROR ") {
            &self.errors
        } else {
            return;
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut recent = lock(&self.recent);
        if recent.len() == 5 {
            recent.pop_front();
        }
        recent.push_back(line.chars().take(300).collect());
    }
}

/// Removes ANSI escape sequences (in case the subscriber colors despite `NO_COLOR`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `addr=` value of a log line.
fn addr_field(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("addr=")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A running `pyxis-coordinator` child with its temporary data directory.
#[derive(Debug)]
struct CoordinatorProcess {
    child: Child,
    proc: Proc,
    quic_addr: SocketAddr,
    api_url: String,
    admin_token: String,
    log: Arc<LogTail>,
    http: ureq::Agent,
    _data_dir: tempfile::TempDir,
}

impl CoordinatorProcess {
    /// Spawns the binary on loopback with OS-chosen ports and waits until it listens.
    fn start(bin: &Path, args: &Args, clk_tck: f64) -> Result<Self> {
        let data_dir = tempfile::Builder::new()
            .prefix("pyxis-link-scale-")
            .tempdir()
            .context("creating the coordinator's data dir")?;
        let mut command = Command::new(bin);
        command
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--quic-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
            .args(["--liveness-timeout", &args.liveness_timeout])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match &args.coordinator_log {
            Some(filter) => {
                command.env("RUST_LOG", format!("{filter},pyxis_coordinator::server=info"));
            }
            None => {
                command.env_remove("RUST_LOG");
            }
        }
        let mut child = command.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr pipe"))?;
        let log = Arc::new(LogTail::default());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<(bool, SocketAddr)>();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                // Drains the pipe for the coordinator's whole life, so it never blocks.
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    log.observe(&line);
                    if let Some(addr) = addr_field(&line) {
                        if line.contains("agent link listening") {
                            let _ = addr_tx.send((true, addr));
                        } else if line.contains("admin API listening") {
                            let _ = addr_tx.send((false, addr));
                        }
                    }
                }
            });
        }
        let proc = Proc {
            dir: child.id().to_string(),
            clk_tck,
        };
        let (mut quic_addr, mut api_addr) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while quic_addr.is_none() || api_addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match addr_rx.recv_timeout(left) {
                Ok((true, addr)) => quic_addr = Some(addr),
                Ok((false, addr)) => api_addr = Some(addr),
                Err(_) => {
                    let _ = child.kill();
                    let recent: Vec<String> = lock(&log.recent).iter().cloned().collect();
                    bail!(
                        "{} did not report its listening addresses within 30 s; last warnings: {recent:?}",
                        bin.display()
                    );
                }
            }
        }
        let (Some(quic_addr), Some(api_addr)) = (quic_addr, api_addr) else {
            bail!("listening addresses missing");
        };
        let token_path = data_dir.path().join("admin-token");
        let admin_token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("reading {}", token_path.display()))?
            .trim()
            .to_string();
        let http: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(Self {
            child,
            proc,
            quic_addr,
            api_url: format!("http://{api_addr}"),
            admin_token,
            log,
            http,
            _data_dir: data_dir,
        })
    }

    /// Creates a join token with `uses` uses; returns the token and the pinned CA hash.
    fn create_token(&self, uses: usize) -> Result<(String, [u8; 32])> {
        let mut response = self
            .http
            .post(format!("{}/api/v1/tokens", self.api_url))
            .header("Authorization", format!("Bearer {}", self.admin_token))
            .send_json(json!({ "ttl": "1h", "uses": uses }))
            .context("POST /api/v1/tokens")?;
        let body: serde_json::Value = response.body_mut().read_json().context("reading the token response")?;
        let token = body["token"]
            .as_str()
            .ok_or_else(|| anyhow!("no token in {body}"))?
            .to_string();
        let hash = body["ca_hash"]
            .as_str()
            .ok_or_else(|| anyhow!("no ca_hash in {body}"))?;
        Ok((token, pki::parse_ca_hash(hash)?))
    }

    /// `pyxis_agent_connections` from `/metrics`: registered connections.
    fn connected_agents(&self) -> Result<u64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.api_url))
            .call()
            .context("GET /metrics")?
            .body_mut()
            .read_to_string()
            .context("reading /metrics")?;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("pyxis_agent_connections "))
            .ok_or_else(|| anyhow!("no pyxis_agent_connections in /metrics"))?;
        Ok(value.trim().parse::<f64>()? as u64)
    }

    /// Asks the coordinator to stop (SIGTERM), killing it after 15 s.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Simulated agents
// ---------------------------------------------------------------------------------------

/// An enrolled simulated agent: its name and mTLS client configuration.
#[derive(Debug)]
struct SimAgent {
    name: String,
    client: quinn::ClientConfig,
}

/// Counters shared by every session task.
#[derive(Debug, Default)]
struct Stats {
    /// Current session generation; sessions of older generations are being dropped.
    generation: AtomicU64,
    /// Whether acks and sends count towards the current window.
    recording: AtomicBool,
    /// Reports sent while recording.
    sent: AtomicU64,
    /// Capacity acks received while recording.
    acked: AtomicU64,
    /// Capacity acks whose report time was not found (too late or unknown seq).
    unmatched_acks: AtomicU64,
    /// When the current window started.
    window_start: Mutex<Option<Instant>>,
    /// Report-to-ack round trips while recording: when the ack came, and microseconds.
    latencies_us: Mutex<Vec<(Instant, u32)>>,
    /// Sessions of the current generation that ended on their own.
    disconnects: AtomicU64,
    /// A few distinct error messages.
    errors: Mutex<Vec<String>>,
}

impl Stats {
    /// Keeps an error message (the first few distinct ones).
    fn keep_error(&self, message: String) {
        let mut errors = lock(&self.errors);
        if errors.len() < MAX_KEPT_ERRORS && !errors.contains(&message) {
            errors.push(message);
        }
    }

    /// A session of `generation` ended unexpectedly.
    fn lost(&self, generation: u64, why: String) {
        if generation == self.generation.load(Ordering::Relaxed) {
            self.disconnects.fetch_add(1, Ordering::Relaxed);
            self.keep_error(format!("session lost: {why}"));
        }
    }

    /// Starts a measurement window.
    fn start_window(&self) {
        self.sent.store(0, Ordering::Relaxed);
        self.acked.store(0, Ordering::Relaxed);
        self.unmatched_acks.store(0, Ordering::Relaxed);
        lock(&self.latencies_us).clear();
        *lock(&self.window_start) = Some(Instant::now());
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Ends the window and returns what it saw.
    fn end_window(&self, wall_s: f64) -> Window {
        self.recording.store(false, Ordering::Relaxed);
        let timed = std::mem::take(&mut *lock(&self.latencies_us));
        let start = lock(&self.window_start).unwrap_or_else(Instant::now);
        // Per-second p99, to tell periodic stalls from a uniformly slow path.
        let mut seconds: Vec<Vec<u32>> = Vec::new();
        for (at, us) in &timed {
            let second = at.saturating_duration_since(start).as_secs() as usize;
            if seconds.len() <= second {
                seconds.resize_with(second + 1, Vec::new);
            }
            seconds[second].push(*us);
        }
        let mut per_second: Vec<(u32, f64)> = seconds
            .iter_mut()
            .enumerate()
            .map(|(second, samples)| {
                samples.sort_unstable();
                (second as u32, percentile_ms(samples, 0.99))
            })
            .collect();
        per_second.sort_by(|a, b| b.1.total_cmp(&a.1));
        per_second.truncate(5);
        per_second.sort_by_key(|(second, _)| *second);
        let mut samples: Vec<u32> = timed.into_iter().map(|(_, us)| us).collect();
        samples.sort_unstable();
        Window {
            worst_seconds: per_second,
            wall_s,
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            unmatched_acks: self.unmatched_acks.load(Ordering::Relaxed),
            p50_ms: percentile_ms(&samples, 0.50),
            p99_ms: percentile_ms(&samples, 0.99),
            max_ms: samples.last().map_or(0.0, |v| f64::from(*v) / 1000.0),
        }
    }
}

/// What the agents saw in a window.
#[derive(Debug, Clone, Default)]
struct Window {
    /// The five seconds of the window with the highest p99: (second, p99 ms).
    worst_seconds: Vec<(u32, f64)>,
    wall_s: f64,
    sent: u64,
    acked: u64,
    unmatched_acks: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Window {
    /// Acks per second.
    fn ack_rate(&self) -> f64 {
        self.acked as f64 / self.wall_s
    }

    /// Reports sent per second.
    fn send_rate(&self) -> f64 {
        self.sent as f64 / self.wall_s
    }
}

/// The nearest-rank percentile of sorted microsecond samples, in ms.
fn percentile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

/// Static facts of a simulated node with `gpus` H100s.
fn node_info(name: &str, gpus: u32) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        hostname: name.to_string(),
        os: "Linux (link-scale simulation)".into(),
        kernel: "6.8.0".into(),
        cpu_model: "simulated".into(),
        cpu_cores: 128,
        memory_bytes: 2 << 40,
        agent_version: "link-scale".into(),
        accelerators: (0..gpus)
            .map(|index| Accelerator {
                index,
                vendor: Vendor::Nvidia,
                model: "NVIDIA H100 80GB HBM3".into(),
                uuid: gpu_uuid(name, index),
                memory_bytes: 80 << 30,
                hardware_class: "H100-80GB".into(),
                health: Health::Healthy,
                health_reason: String::new(),
                simulated: true,
                details: Default::default(),
            })
            .collect(),
        runtimes: vec!["vllm".into()],
    }
}

/// A GPU UUID shaped like NVIDIA's (`GPU-` + 36 characters).
fn gpu_uuid(name: &str, index: u32) -> String {
    let digits: String = name.chars().filter(char::is_ascii_digit).collect();
    format!("GPU-{digits:0>8}-0000-4000-8000-{index:012}")
}

/// A capacity report with fresh usage numbers for every device of `devices`.
fn capacity(seq: u64, devices: &[DeviceUsage]) -> CapacityReport {
    let sent_at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    CapacityReport {
        seq,
        sent_at_unix_ms,
        memory_available_bytes: (1 << 40) + fastrand::u64(0..1 << 30),
        devices: devices
            .iter()
            .map(|d| DeviceUsage {
                memory_used_bytes: Some(fastrand::u64(0..80 << 30)),
                utilization_percent: Some(fastrand::u8(0..=100)),
                ..d.clone()
            })
            .collect(),
    }
}

/// The device list of an agent's reports (usage values are refreshed on every send).
fn device_template(name: &str, gpus: u32) -> Vec<DeviceUsage> {
    (0..gpus)
        .map(|index| DeviceUsage {
            uuid: gpu_uuid(name, index),
            memory_used_bytes: Some(0),
            utilization_percent: Some(0),
            health: Health::Healthy,
            health_reason: String::new(),
            temperature_celsius: Some(34),
            power_watts: Some(70),
            power_limit_watts: Some(700),
            // As NVML reads an NVIDIA GPU: throttle reasons (none active) and an XID count.
            telemetry: pyxis_protocol::DeviceTelemetry {
                throttle_reasons: Some(Vec::new()),
                xid_count: Some(0),
                ..Default::default()
            },
        })
        .collect()
}

/// A registered mTLS session, ready to report.
#[derive(Debug)]
struct Session {
    connection: quinn::Connection,
    writer: FrameWriter,
    reader: FrameReader,
    interval: Duration,
    devices: Vec<DeviceUsage>,
}

/// Applies the step timeout to one handshake step.
async fn step<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("timed out after {STEP_TIMEOUT:?} waiting for {what}"))
}

/// Connects with mTLS and runs `Hello` -> `HelloAck`, `Register` -> `Registered`.
async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, agent: &SimAgent, gpus: u32) -> Result<Session> {
    let connecting = endpoint.connect_with(agent.client.clone(), addr, pki::COORDINATOR_SERVER_NAME)?;
    let connection = step("the QUIC handshake", connecting).await??;
    let (send, recv) = step("a stream", connection.open_bi()).await??;
    let mut writer = FrameWriter::new(send, SUPPORTED_VERSIONS.max, MAX_FRAME_BYTES);
    let mut reader = FrameReader::new(recv, MAX_FRAME_BYTES);
    writer
        .send(&AgentMessage::Hello(Hello {
            versions: SUPPORTED_VERSIONS,
            agent_version: "link-scale".into(),
            node_name: agent.name.clone(),
        }))
        .await?;
    match step("HelloAck", reader.recv::<CoordinatorMessage>()).await?? {
        Some((_, CoordinatorMessage::HelloAck(ack))) => {
            writer.version = ack.version;
            reader.version = Some(ack.version);
        }
        other => bail!("expected HelloAck, got {other:?}"),
    }
    let devices = device_template(&agent.name, gpus);
    writer
        .send(&AgentMessage::Register(Registration {
            node: node_info(&agent.name, gpus),
            capacity: capacity(0, &devices),
        }))
        .await?;
    let interval = match step("Registered", reader.recv::<CoordinatorMessage>()).await?? {
        Some((_, CoordinatorMessage::Registered(ack))) => {
            Duration::from_millis(ack.report_interval_ms).max(Duration::from_millis(50))
        }
        other => bail!("expected Registered, got {other:?}"),
    };
    Ok(Session {
        connection,
        writer,
        reader,
        interval,
        devices,
    })
}

/// When an agent's reports are due: every interval at `epoch + offset + k * interval`, so
/// that N agents spread uniformly over the interval whenever they (re)connect.
#[derive(Debug, Clone, Copy)]
struct Phase {
    epoch: Instant,
    /// The agent's position in the interval, in [0, 1).
    fraction: f64,
}

impl Phase {
    /// The first due time at or after `now`.
    fn first_tick(&self, now: Instant, interval: Duration) -> Instant {
        let base = self.epoch + interval.mul_f64(self.fraction);
        if now <= base {
            return base;
        }
        let behind = now.duration_since(base).as_nanos();
        let periods = behind.div_ceil(interval.as_nanos().max(1));
        base + Duration::from_nanos((periods * interval.as_nanos()).min(u64::MAX as u128) as u64)
    }
}

/// Report send times of one connection, by `seq % TIMING_SLOTS`.
type Timing = Mutex<[(u64, Option<Instant>); TIMING_SLOTS]>;

/// Runs a registered session: reports on schedule, acks desired state, times the acks.
async fn run_session(session: Session, phase: Phase, generation: u64, stats: Arc<Stats>) {
    let Session {
        connection,
        mut writer,
        mut reader,
        interval,
        devices,
    } = session;
    let timing: Arc<Timing> = Arc::new(Mutex::new([(0, None); TIMING_SLOTS]));
    // Reading is not cancel-safe, so a separate task owns the receive stream and hands
    // desired-state generations to the writer for acknowledgement.
    let (desired_tx, mut desired_rx) = mpsc::channel::<u64>(4);
    let reader_task = {
        let stats = stats.clone();
        let timing = timing.clone();
        let connection = connection.clone();
        tokio::spawn(async move {
            loop {
                match reader.recv::<CoordinatorMessage>().await {
                    Ok(Some((
                        _,
                        CoordinatorMessage::Ack(Ack {
                            of: AckOf::Capacity(seq),
                        }),
                    ))) => {
                        let now = Instant::now();
                        let sent = {
                            let slots = lock(&timing);
                            let (slot_seq, at) = slots[seq as usize % TIMING_SLOTS];
                            at.filter(|_| slot_seq == seq)
                        };
                        if !stats.recording.load(Ordering::Relaxed) {
                            continue;
                        }
                        match sent {
                            Some(at) => {
                                stats.acked.fetch_add(1, Ordering::Relaxed);
                                let us = now.duration_since(at).as_micros().min(u32::MAX as u128);
                                lock(&stats.latencies_us).push((now, us as u32));
                            }
                            None => {
                                stats.unmatched_acks.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(Some((_, CoordinatorMessage::Ack(_)))) => {}
                    Ok(Some((_, CoordinatorMessage::DesiredState(desired)))) => {
                        if desired_tx.send(desired.generation).await.is_err() {
                            break;
                        }
                    }
                    Ok(Some((_, other))) => {
                        stats.lost(generation, format!("unexpected message {other:?}"));
                        break;
                    }
                    Ok(None) => {
                        stats.lost(generation, "coordinator finished the stream".into());
                        break;
                    }
                    Err(e) => {
                        let why = connection
                            .close_reason()
                            .map_or_else(|| e.to_string(), |r| r.to_string());
                        stats.lost(generation, why);
                        break;
                    }
                }
            }
        })
    };
    let start = phase.first_tick(Instant::now(), interval);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::from_std(start), interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                seq += 1;
                let report = AgentMessage::Capacity(capacity(seq, &devices));
                lock(&timing)[seq as usize % TIMING_SLOTS] = (seq, Some(Instant::now()));
                if stats.recording.load(Ordering::Relaxed) {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                if let Err(e) = writer.send(&report).await {
                    stats.lost(generation, format!("send failed: {e}"));
                    break;
                }
            }
            desired = desired_rx.recv() => match desired {
                Some(generation) => {
                    let ack = AgentMessage::Ack(Ack { of: AckOf::DesiredState(generation) });
                    if writer.send(&ack).await.is_err() {
                        break;
                    }
                }
                // The reader ended and counted why.
                None => break,
            },
        }
    }
    reader_task.abort();
}

/// Binds `count` client endpoints on loopback, asking for `buffer` bytes of UDP socket
/// buffers each (0: the OS default).
fn client_endpoints(count: usize, buffer: usize) -> Result<Vec<quinn::Endpoint>> {
    (0..count)
        .map(|_| {
            let socket = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .context("binding a client UDP socket")?;
            if buffer > 0 {
                let state = quinn::udp::UdpSocketState::new((&socket).into())?;
                state.set_recv_buffer_size((&socket).into(), buffer)?;
                state.set_send_buffer_size((&socket).into(), buffer)?;
            }
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .context("starting a client QUIC endpoint")
        })
        .collect()
}

/// Closes endpoints: every connection on them gets a `CONNECTION_CLOSE` at once.
fn close_endpoints(endpoints: &[quinn::Endpoint]) {
    for endpoint in endpoints {
        endpoint.close(quinn::VarInt::from_u32(0), b"link-scale: dropping connections");
    }
}

/// Outcome of enrolling every agent.
#[derive(Debug)]
struct Enrolled {
    agents: Vec<Arc<SimAgent>>,
    failures: usize,
    wall_s: f64,
    cpu: CpuSpent,
}

/// Enrolls `n` agents with at most `concurrency` in flight (each tried up to 3 times).
#[allow(clippy::too_many_arguments)]
async fn enroll_all(
    endpoints: &[quinn::Endpoint],
    addr: SocketAddr,
    token: &str,
    pin: [u8; 32],
    n: usize,
    concurrency: usize,
    probes: Probes<'_>,
    stats: &Stats,
) -> Result<Enrolled> {
    let mark = CpuMark::now(probes)?;
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..n {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let token = token.to_string();
        let permits = permits.clone();
        set.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let name = format!("sim-{i:05}");
            let mut last = None;
            for _ in 0..3 {
                match pyxis_agent::link::enroll(&endpoint, addr, &token, pin, &name).await {
                    Ok(identity) => {
                        let client = identity.client_config()?;
                        return Ok(SimAgent { name, client });
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(anyhow!(
                "enrolling {name}: {}",
                last.map_or_else(|| "no attempt".to_string(), |e| e.to_string())
            ))
        });
    }
    let mut agents = Vec::with_capacity(n);
    let mut failures = 0;
    while let Some(joined) = set.join_next().await {
        match joined.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(agent) => agents.push(Arc::new(agent)),
            Err(e) => {
                failures += 1;
                stats.keep_error(format!("{e:#}"));
            }
        }
    }
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Enrolled {
        agents,
        failures,
        wall_s: started.elapsed().as_secs_f64(),
        cpu: mark.spent(probes)?,
    })
}

/// Outcome of connecting every agent.
#[derive(Debug, Default, Clone, Copy)]
struct Connected {
    /// Agents registered.
    registered: usize,
    /// Agents that never registered before the deadline.
    failures: usize,
    /// Failed attempts that were retried.
    retries: u64,
    /// From the first connect to the last `Registered`.
    wall_s: f64,
    /// Median time from an agent's first attempt to its `Registered`, ms.
    p50_ms: f64,
    /// 99th percentile of the same.
    p99_ms: f64,
    /// CPU spent meanwhile.
    cpu: CpuSpent,
}

/// Everything `connect_all` needs besides the agents.
#[derive(Debug, Clone)]
struct ConnectPlan {
    addr: SocketAddr,
    gpus: u32,
    concurrency: usize,
    epoch: Instant,
    generation: u64,
    deadline: Duration,
}

/// Connects and registers every agent (retrying failures until the deadline), and starts
/// each session as soon as it is registered.
async fn connect_all(
    agents: &[Arc<SimAgent>],
    endpoints: &[quinn::Endpoint],
    plan: &ConnectPlan,
    stats: &Arc<Stats>,
    live: &mut JoinSet<()>,
    probes: Probes<'_>,
) -> Result<Connected> {
    let mark = CpuMark::now(probes)?;
    let started = Instant::now();
    let deadline = started + plan.deadline;
    let concurrency = if plan.concurrency == 0 {
        agents.len()
    } else {
        plan.concurrency
    };
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let retries = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for (i, agent) in agents.iter().enumerate() {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let agent = agent.clone();
        let permits = permits.clone();
        let retries = retries.clone();
        let stats = stats.clone();
        let (addr, gpus) = (plan.addr, plan.gpus);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let first = Instant::now();
            loop {
                match connect(&endpoint, addr, &agent, gpus).await {
                    Ok(session) => return Ok((i, session, first.elapsed())),
                    Err(e) => {
                        stats.keep_error(format!("connect: {e:#}"));
                        if Instant::now() >= deadline {
                            return Err(e.context(format!("{} never registered", agent.name)));
                        }
                        retries.fetch_add(1, Ordering::Relaxed);
                        let pause = 50 + fastrand::u64(0..200);
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }
            }
        });
    }
    let mut result = Connected::default();
    let mut times_us = Vec::with_capacity(agents.len());
    let n = agents.len().max(1);
    while let Some(joined) = set.join_next().await {
        match joined.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok((i, session, took)) => {
                result.registered += 1;
                times_us.push(took.as_micros().min(u32::MAX as u128) as u32);
                let phase = Phase {
                    epoch: plan.epoch,
                    fraction: i as f64 / n as f64,
                };
                live.spawn(run_session(session, phase, plan.generation, stats.clone()));
            }
            Err(e) => {
                result.failures += 1;
                stats.keep_error(format!("{e:#}"));
            }
        }
    }
    result.wall_s = started.elapsed().as_secs_f64();
    result.retries = retries.load(Ordering::Relaxed);
    times_us.sort_unstable();
    result.p50_ms = percentile_ms(&times_us, 0.50);
    result.p99_ms = percentile_ms(&times_us, 0.99);
    result.cpu = mark.spent(probes)?;
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// One phase (one agent count)
// ---------------------------------------------------------------------------------------

/// Results for one agent count.
#[derive(Debug, Default)]
struct PhaseResult {
    agents: usize,
    idle: Usage,
    enroll_s: f64,
    enroll_failures: usize,
    enroll_cpu: CpuSpent,
    connect: Connected,
    coordinator_connections: Option<u64>,
    steady: Usage,
    window: Window,
    disconnects: u64,
    storm: Option<Connected>,
    post_storm: Option<(Usage, Window)>,
    coordinator_warnings: u64,
    coordinator_not_ready: u64,
    coordinator_errors: u64,
    coordinator_recent: Vec<String>,
    coordinator_hwm_mib: f64,
    errors: Vec<String>,
}

/// Runs the whole sequence for `n` agents against a fresh coordinator.
async fn run_phase(args: &Args, bin: &Path, n: usize, clk_tck: f64, t0: Instant) -> Result<PhaseResult> {
    let mut coordinator = CoordinatorProcess::start(bin, args, clk_tck)?;
    let coord = coordinator.proc.clone();
    let client = Proc {
        dir: "self".into(),
        clk_tck,
    };
    let probes = Probes {
        coordinator: &coord,
        client: &client,
        quic_port: coordinator.quic_addr.port(),
    };
    progress!(
        t0,
        "N={n}: coordinator pid {} on {} (API {})",
        coordinator.child.id(),
        coordinator.quic_addr,
        coordinator.api_url
    );
    let mut result = PhaseResult {
        agents: n,
        ..PhaseResult::default()
    };

    result.idle = observe(probes, args.idle).await?;
    progress!(
        t0,
        "N={n}: idle baseline {:.2}% CPU, {:.1} MiB RSS",
        result.idle.cpu_percent,
        result.idle.rss_peak_mib
    );

    let (token, pin) = tokio::task::block_in_place(|| coordinator.create_token(n))?;
    let stats = Arc::new(Stats::default());
    let endpoint_count = n.div_ceil(args.conns_per_endpoint.max(1)).max(1);
    let mut endpoints = client_endpoints(endpoint_count, args.client_udp_buffer)?;
    let enrolled = enroll_all(
        &endpoints,
        coordinator.quic_addr,
        &token,
        pin,
        n,
        args.enroll_concurrency,
        probes,
        &stats,
    )
    .await?;
    result.enroll_s = enrolled.wall_s;
    result.enroll_failures = enrolled.failures;
    result.enroll_cpu = enrolled.cpu;
    progress!(
        t0,
        "N={n}: enrolled {} agents in {:.1}s ({} failed; coordinator {:.1} CPU-s, bench {:.1} CPU-s)",
        enrolled.agents.len(),
        enrolled.wall_s,
        enrolled.failures,
        enrolled.cpu.coordinator_s,
        enrolled.cpu.client_s
    );
    let agents = enrolled.agents;
    if agents.is_empty() {
        bail!("no agent enrolled; errors: {:?}", lock(&stats.errors));
    }

    let mut live = JoinSet::new();
    let epoch = Instant::now();
    let mut plan = ConnectPlan {
        addr: coordinator.quic_addr,
        gpus: args.gpus,
        concurrency: args.connect_concurrency,
        epoch,
        generation: 0,
        deadline: Duration::from_secs(120),
    };
    result.connect = connect_all(&agents, &endpoints, &plan, &stats, &mut live, probes).await?;
    progress!(
        t0,
        "N={n}: {} registered in {:.1}s ({} failed, {} retries)",
        result.connect.registered,
        result.connect.wall_s,
        result.connect.failures,
        result.connect.retries
    );

    tokio::time::sleep(args.warmup).await;
    let connected = tokio::task::block_in_place(|| coordinator.connected_agents());
    result.coordinator_connections = connected.ok();
    progress!(
        t0,
        "N={n}: measuring {:?} (coordinator counts {:?} connections)",
        args.duration,
        result.coordinator_connections
    );
    stats.start_window();
    result.steady = observe(probes, args.duration).await?;
    result.window = stats.end_window(result.steady.wall_s);
    progress!(
        t0,
        "N={n}: CPU {:.1}%, RSS {:.1} MiB, p50 {:.2} ms, p99 {:.2} ms, {:.0} acks/s (bench CPU {:.0}%, other processes {:.0}%)",
        result.steady.cpu_percent,
        result.steady.rss_peak_mib,
        result.window.p50_ms,
        result.window.p99_ms,
        result.window.ack_rate(),
        result.steady.client_cpu_percent,
        100.0 * result.steady.spent.others_s / result.steady.wall_s.max(0.001)
    );
    result.disconnects = stats.disconnects.load(Ordering::Relaxed);

    if !args.no_storm {
        // Drop every connection at once, then reconnect everything with the stored
        // identities from fresh UDP ports.
        let storm_started = Instant::now();
        stats.generation.fetch_add(1, Ordering::Relaxed);
        close_endpoints(&endpoints);
        live.abort_all();
        endpoints = client_endpoints(endpoint_count, args.client_udp_buffer)?;
        plan.concurrency = args.storm_concurrency;
        plan.generation = 1;
        plan.epoch = Instant::now();
        let mut storm = connect_all(&agents, &endpoints, &plan, &stats, &mut live, probes).await?;
        storm.wall_s = storm_started.elapsed().as_secs_f64();
        progress!(t0, "N={n}: reconnect storm: {} registered in {:.2}s ({} failed, {} retries, per-agent p50 {:.0} ms p99 {:.0} ms)",
            storm.registered, storm.wall_s, storm.failures, storm.retries, storm.p50_ms, storm.p99_ms);
        result.storm = Some(storm);
        if !args.post_storm.is_zero() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stats.start_window();
            let usage = observe(probes, args.post_storm).await?;
            let window = stats.end_window(usage.wall_s);
            progress!(
                t0,
                "N={n}: after the storm: {:.0} acks/s, p99 {:.2} ms, CPU {:.1}%, RSS {:.1} MiB",
                window.ack_rate(),
                window.p99_ms,
                usage.cpu_percent,
                usage.rss_peak_mib
            );
            result.post_storm = Some((usage, window));
        }
        result.disconnects = stats.disconnects.load(Ordering::Relaxed);
    }

    result.coordinator_hwm_mib = coord.status_mib("VmHWM").unwrap_or(0.0);
    stats.generation.fetch_add(1, Ordering::Relaxed);
    close_endpoints(&endpoints);
    live.abort_all();
    while live.join_next().await.is_some() {}
    tokio::task::block_in_place(|| coordinator.stop());
    result.coordinator_warnings = coordinator.log.warnings.load(Ordering::Relaxed);
    result.coordinator_not_ready = coordinator.log.not_ready.load(Ordering::Relaxed);
    result.coordinator_errors = coordinator.log.errors.load(Ordering::Relaxed);
    result.coordinator_recent = lock(&coordinator.log.recent).iter().cloned().collect();
    result.errors = lock(&stats.errors).clone();
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------

/// The machine, for the report header.
fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    (cores, model)
}

/// Formats an optional number of seconds.
fn opt_s(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// The worst seconds of a window, `second: p99` each.
fn worst(window: &Window) -> String {
    window
        .worst_seconds
        .iter()
        .map(|(second, p99)| format!("{second}: {p99:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the markdown report.
fn print_markdown(args: &Args, results: &[PhaseResult]) {
    let (cores, model) = machine();
    println!("## link-scale results\n");
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "Machine: {cores} cores ({model}); load average at the end: {}. The bench client (simulated agents) runs on the same cores as the coordinator; its CPU use is shown beside the coordinator's.\n",
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "Settings: {} GPUs per agent, steady window {:?} after a {:?} warm-up, idle baseline {:?}, {} connections per client UDP endpoint ({} buffers), enrollment concurrency {}, initial connect concurrency {}, storm concurrency {}, coordinator --liveness-timeout {}.\n",
        args.gpus,
        args.duration,
        args.warmup,
        args.idle,
        args.conns_per_endpoint,
        if args.client_udp_buffer == 0 { "OS default".to_string() } else { format!("{} KiB", args.client_udp_buffer / 1024) },
        args.enroll_concurrency,
        args.connect_concurrency,
        if args.storm_concurrency == 0 { "unbounded".to_string() } else { args.storm_concurrency.to_string() },
        args.liveness_timeout
    );
    println!("| agents | enroll s | connect s | coord CPU % (1 core) | coord RSS MiB | report→ack p50 ms | p99 ms | max ms | acks/s (expected) | storm s | bench CPU % | errors |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let expected = r.connect.registered as f64;
        let errors = r.enroll_failures as u64
            + r.connect.failures as u64
            + r.disconnects
            + r.window.unmatched_acks
            + r.storm.map_or(0, |s| s.failures as u64);
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.2} | {:.2} | {:.1} | {:.0} ({:.0}) | {} | {:.0} | {} |",
            r.agents,
            r.enroll_s,
            r.connect.wall_s,
            r.steady.cpu_percent,
            r.steady.rss_peak_mib,
            r.window.p50_ms,
            r.window.p99_ms,
            r.window.max_ms,
            r.window.ack_rate(),
            expected,
            opt_s(r.storm.map(|s| s.wall_s)),
            r.steady.client_cpu_percent,
            errors
        );
    }
    println!("\n### Idle baseline and ratios\n");
    println!("| agents | idle CPU % | idle RSS MiB | CPU − idle (pp) | RSS / idle | RSS per agent KiB | CPU / target | RSS / target | p99 / target | storm / target |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let per_agent_kib = (r.steady.rss_peak_mib - r.idle.rss_peak_mib) * 1024.0 / r.agents as f64;
        println!(
            "| {} | {:.2} | {:.1} | {:.1} | {:.1}× | {:.1} | {:.2} | {:.2} | {:.2} | {} |",
            r.agents,
            r.idle.cpu_percent,
            r.idle.rss_peak_mib,
            r.steady.cpu_percent - r.idle.cpu_percent,
            r.steady.rss_peak_mib / r.idle.rss_peak_mib.max(0.001),
            per_agent_kib,
            r.steady.cpu_percent / TARGET_CPU_PERCENT,
            r.steady.rss_peak_mib / TARGET_RSS_MIB,
            r.window.p99_ms / TARGET_P99_MS,
            opt_s(r.storm.map(|s| s.wall_s / TARGET_STORM_S)),
        );
    }
    println!(
        "\nTargets (at {TARGET_AGENTS} agents): coordinator CPU < {TARGET_CPU_PERCENT:.0}% of one core, RSS < {TARGET_RSS_MIB:.0} MiB, report→ack p99 < {TARGET_P99_MS:.0} ms, reconnect storm < {TARGET_STORM_S:.0} s. Ratios below 1 meet the target.\n"
    );
    println!("### Details\n");
    for r in results {
        let drops = |c: &CpuSpent| {
            format!(
                "other processes {:.1} CPU-s; UDP receive-buffer drops: {} at the coordinator, {} machine-wide",
                c.others_s, c.udp_drops_coordinator, c.udp_drops_total
            )
        };
        println!("- N={}:", r.agents);
        println!(
            "  - enrollment: {:.1}s, {} failed; coordinator {:.1} CPU-s, bench {:.1} CPU-s; {}",
            r.enroll_s,
            r.enroll_failures,
            r.enroll_cpu.coordinator_s,
            r.enroll_cpu.client_s,
            drops(&r.enroll_cpu)
        );
        println!(
            "  - initial connect: {} registered in {:.1}s, {} failed, {} retries; per-agent p50 {:.0} ms, p99 {:.0} ms; coordinator {:.1} CPU-s, bench {:.1} CPU-s; {}",
            r.connect.registered,
            r.connect.wall_s,
            r.connect.failures,
            r.connect.retries,
            r.connect.p50_ms,
            r.connect.p99_ms,
            r.connect.cpu.coordinator_s,
            r.connect.cpu.client_s,
            drops(&r.connect.cpu)
        );
        println!(
            "  - steady window ({:.0}s): coordinator counted {} connections; {} reports sent ({:.0}/s), {} acked ({:.0}/s), {} unmatched acks; coordinator CPU {:.1}%, peak RSS {:.1} MiB (VmHWM over the run {:.1} MiB); bench CPU {:.0}%, RSS {:.0} MiB; {}",
            r.steady.wall_s,
            r.coordinator_connections.map_or_else(|| "?".into(), |c| c.to_string()),
            r.window.sent,
            r.window.send_rate(),
            r.window.acked,
            r.window.ack_rate(),
            r.window.unmatched_acks,
            r.steady.cpu_percent,
            r.steady.rss_peak_mib,
            r.coordinator_hwm_mib,
            r.steady.client_cpu_percent,
            r.steady.client_rss_peak_mib,
            drops(&r.steady.spent)
        );
        println!(
            "  - steady window, worst seconds by p99 (second: ms): {}",
            worst(&r.window)
        );
        if let Some(storm) = r.storm {
            println!(
                "  - reconnect storm: {} of {} registered again in {:.2}s, {} failed, {} retries; per-agent p50 {:.0} ms, p99 {:.0} ms; coordinator {:.1} CPU-s ({:.0}% of one core), bench {:.1} CPU-s; {}",
                storm.registered,
                r.connect.registered,
                storm.wall_s,
                storm.failures,
                storm.retries,
                storm.p50_ms,
                storm.p99_ms,
                storm.cpu.coordinator_s,
                100.0 * storm.cpu.coordinator_s / storm.cpu.wall_s.max(0.001),
                storm.cpu.client_s,
                drops(&storm.cpu)
            );
        }
        if let Some((usage, window)) = &r.post_storm {
            println!("  - after the storm ({:.0}s): {:.0} acks/s, p50 {:.2} ms, p99 {:.2} ms, coordinator CPU {:.1}%, RSS {:.1} MiB",
                usage.wall_s, window.ack_rate(), window.p50_ms, window.p99_ms, usage.cpu_percent, usage.rss_peak_mib);
            println!(
                "  - after the storm, worst seconds by p99 (second: ms): {}",
                worst(window)
            );
        }
        println!(
            "  - session disconnects: {}; coordinator log: {} warnings ({} `node is NotReady`), {} errors",
            r.disconnects, r.coordinator_warnings, r.coordinator_not_ready, r.coordinator_errors
        );
        for e in &r.errors {
            println!("  - bench saw: {e}");
        }
        for line in &r.coordinator_recent {
            println!("  - coordinator logged: {line}");
        }
    }
}

/// The results as JSON.
fn to_json(args: &Args, results: &[PhaseResult]) -> serde_json::Value {
    let (cores, model) = machine();
    let cpu = |c: &CpuSpent| {
        json!({
            "wall_s": c.wall_s, "coordinator_cpu_s": c.coordinator_s, "bench_cpu_s": c.client_s,
            "others_cpu_s": c.others_s,
            "udp_drops_coordinator": c.udp_drops_coordinator, "udp_drops_total": c.udp_drops_total,
        })
    };
    let connected = |c: &Connected| {
        json!({
            "registered": c.registered, "failures": c.failures, "retries": c.retries,
            "wall_s": c.wall_s, "per_agent_p50_ms": c.p50_ms, "per_agent_p99_ms": c.p99_ms, "cpu": cpu(&c.cpu),
        })
    };
    let usage = |u: &Usage| {
        json!({
            "wall_s": u.wall_s, "others_cpu_s": u.spent.others_s, "udp_drops_coordinator": u.spent.udp_drops_coordinator,
            "udp_drops_total": u.spent.udp_drops_total, "coordinator_cpu_percent": u.cpu_percent, "coordinator_rss_peak_mib": u.rss_peak_mib,
            "bench_cpu_percent": u.client_cpu_percent, "bench_rss_peak_mib": u.client_rss_peak_mib,
        })
    };
    let window = |w: &Window| {
        json!({
            "wall_s": w.wall_s, "reports_sent": w.sent, "acks": w.acked, "unmatched_acks": w.unmatched_acks,
            "acks_per_s": w.ack_rate(), "p50_ms": w.p50_ms, "p99_ms": w.p99_ms, "max_ms": w.max_ms,
            "worst_seconds_p99_ms": w.worst_seconds.iter().map(|(s, p)| json!([s, p])).collect::<Vec<_>>(),
        })
    };
    json!({
        "machine": { "cores": cores, "cpu_model": model },
        "settings": {
            "gpus_per_agent": args.gpus, "duration_s": args.duration.as_secs_f64(), "warmup_s": args.warmup.as_secs_f64(),
            "conns_per_endpoint": args.conns_per_endpoint, "client_udp_buffer": args.client_udp_buffer,
            "enroll_concurrency": args.enroll_concurrency,
            "connect_concurrency": args.connect_concurrency, "storm_concurrency": args.storm_concurrency,
            "liveness_timeout": args.liveness_timeout,
        },
        "targets": { "agents": TARGET_AGENTS, "cpu_percent": TARGET_CPU_PERCENT, "rss_mib": TARGET_RSS_MIB, "p99_ms": TARGET_P99_MS, "storm_s": TARGET_STORM_S },
        "phases": results.iter().map(|r| json!({
            "agents": r.agents,
            "idle": usage(&r.idle),
            "enroll": { "wall_s": r.enroll_s, "failures": r.enroll_failures, "cpu": cpu(&r.enroll_cpu) },
            "connect": connected(&r.connect),
            "coordinator_connections": r.coordinator_connections,
            "steady": usage(&r.steady),
            "window": window(&r.window),
            "disconnects": r.disconnects,
            "storm": r.storm.as_ref().map(connected),
            "post_storm": r.post_storm.as_ref().map(|(u, w)| json!({ "usage": usage(u), "window": window(w) })),
            "coordinator_vm_hwm_mib": r.coordinator_hwm_mib,
            "coordinator_log": { "warnings": r.coordinator_warnings, "not_ready": r.coordinator_not_ready, "errors": r.coordinator_errors, "recent": r.coordinator_recent },
            "errors": r.errors,
        })).collect::<Vec<_>>(),
    })
}

/// The coordinator binary: `--coordinator-bin`, or beside this executable.
fn coordinator_bin(args: &Args) -> Result<PathBuf> {
    if let Some(path) = &args.coordinator_bin {
        return Ok(path.clone());
    }
    let me = std::env::current_exe().context("locating this executable")?;
    let path = me.with_file_name("pyxis-coordinator");
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p pyxis-coordinator` or pass --coordinator-bin",
            path.display()
        );
    }
    Ok(path)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bin = coordinator_bin(&args)?;
    let clk_tck = clk_tck();
    let t0 = Instant::now();
    let (cores, model) = machine();
    progress!(
        t0,
        "coordinator {}; {cores} cores ({model}); agents {:?}",
        bin.display(),
        args.agents
    );
    let mut results = Vec::new();
    for &n in &args.agents {
        results.push(run_phase(&args, &bin, n, clk_tck, t0).await?);
    }
    print_markdown(&args, &results);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&to_json(&args, &results))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        progress!(t0, "wrote {}", path.display());
    }
    Ok(())
}
