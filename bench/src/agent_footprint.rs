//! `agent-footprint`: RSS and CPU of real `pyxis-agent` processes reporting to a real
//! coordinator at a 1 s interval, all measured concurrently over the same window:
//!
//! - a baseline agent with no GPU;
//! - an agent reporting N simulated H100s (no probe thread: simulated devices are not read);
//! - an agent reading N H100s through the real NVML code path (nvml-wrapper, the probe
//!   thread, the XID event set) against the stub `libnvidia-ml` of the agent's tests
//!   (`agent/tests/support/nvml_stub.c`, compiled here with gcc and `-DGPU_COUNT=N`).
//!
//! Every agent gets the same isolated host view (a config file naming no real driver library
//! and empty sysfs and devfs roots), so the rows differ only in their accelerators. Before
//! measuring, the bench checks that each agent reports what its row claims, through the
//! agent's `/metrics` and the coordinator's API, and fails otherwise.
//!
//! Needs `cargo build --release -p pyxis-bench -p pyxis-coordinator -p pyxis-agent` and gcc.

mod procfs;

use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use procfs::{clk_tck, Proc};

/// The stub NVML library of the agent's tests, built by this bench.
const NVML_STUB_SOURCE: &str = include_str!("../../agent/tests/support/nvml_stub.c");
/// Most GPUs the stub can report (`-DGPU_COUNT`).
const NVML_STUB_MAX_GPUS: u32 = 16;
/// Active NVLinks per GPU in the stub's `GPU_COUNT` mode, all to NVSwitches.
const NVML_STUB_NVLINKS: u64 = 18;
/// Model name the stub reports for every GPU in its `GPU_COUNT` mode.
const NVML_STUB_MODEL: &str = "NVIDIA H100 80GB HBM3";
/// The agent's probe thread, which reads the hardware and waits on XID events.
const PROBE_THREAD: &str = "pyxis-probe";
/// An XID the agent's health policy ignores (set in the agents' config), used to check that
/// the probe thread is waiting on the event set.
const IGNORED_XID: u64 = 43;

/// Agent footprint benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// GPUs on each measured agent: simulated H100s, and H100s through the NVML stub (1-16).
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// Capacity report interval (and the probe thread's reading interval).
    #[arg(long, default_value = "1s")]
    interval: String,
    /// Measurement window.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Wait after the checks before measuring.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// How often the stub's XID event wait wakes up to look for events, in ms (its
    /// -DEVENT_POLL_MS). 0, the default, sleeps the whole timeout the agent asks for, as
    /// the driver's blocking wait does; the agent's tests build the stub with 20.
    #[arg(long, default_value_t = 0)]
    stub_event_poll_ms: u32,
}

/// A child whose stderr lines are collected.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn spawn(mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// Waits for a line containing `pattern`; returns it.
    fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.find(pattern) {
                return Ok(line);
            }
            if Instant::now() > deadline {
                bail!(
                    "no line containing {pattern:?} within {timeout:?}; last lines:\n{}",
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first line so far containing `pattern`.
    fn find(&self, pattern: &str) -> Option<String> {
        self.lines
            .lock()
            .ok()
            .and_then(|l| l.iter().find(|l| l.contains(pattern)).cloned())
    }

    /// The last lines, for error messages.
    fn tail(&self) -> String {
        self.lines
            .lock()
            .map(|l| l[l.len().saturating_sub(20)..].join("\n"))
            .unwrap_or_default()
    }

    fn proc(&self) -> Proc {
        Proc {
            dir: self.child.id().to_string(),
            clk_tck: clk_tck(),
        }
    }

    /// The process's thread with this name (`/proc/PID/task/*/comm`), if any.
    fn thread(&self, name: &str) -> Result<Option<Proc>> {
        let tasks = format!("/proc/{}/task", self.child.id());
        for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
            let task = task?;
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == name {
                return Ok(Some(Proc {
                    dir: format!("{}/task/{}", self.child.id(), task.file_name().to_string_lossy()),
                    clk_tck: clk_tck(),
                }));
            }
        }
        Ok(None)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}=")))
}

fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().ok_or_else(|| anyhow!("no parent of {exe:?}"))?.join(name);
    if !path.exists() {
        bail!("{path:?} is missing: cargo build --release -p pyxis-coordinator -p pyxis-agent");
    }
    Ok(path)
}

/// What each row's agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accelerators {
    /// No GPU at all.
    None,
    /// `--simulate NxH100-80GB`: devices that are never read.
    Simulated(u32),
    /// H100s read through NVML, here the stub library.
    NvmlStub(u32),
}

impl Accelerators {
    fn label(self) -> String {
        match self {
            Self::None => "no GPU (baseline)".into(),
            Self::Simulated(n) => format!("{n} simulated GPUs"),
            Self::NvmlStub(n) => format!("{n} GPUs through the NVML stub"),
        }
    }

    fn count(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Simulated(n) | Self::NvmlStub(n) => n,
        }
    }
}

/// One measured agent.
struct Row {
    name: &'static str,
    accelerators: Accelerators,
    agent: Daemon,
    metrics_addr: String,
}

/// What one agent cost over the window.
struct Footprint {
    cpu_percent: f64,
    /// CPU of the probe thread alone, when the agent has one.
    probe_cpu_percent: Option<f64>,
    rss_mib_peak: f64,
    rss_mib_mean: f64,
    reports: u64,
}

/// Measures every row over the same window: RSS sampled once a second, CPU and reports sent
/// read at both ends.
fn measure(rows: &[Row], window: Duration) -> Result<Vec<Footprint>> {
    let procs: Vec<Proc> = rows.iter().map(|r| r.agent.proc()).collect();
    let probes = rows
        .iter()
        .map(|r| r.agent.thread(PROBE_THREAD))
        .collect::<Result<Vec<_>>>()?;
    let probe_cpu = |probes: &[Option<Proc>]| -> Result<Vec<Option<f64>>> {
        probes
            .iter()
            .map(|p| p.as_ref().map(Proc::cpu_seconds).transpose())
            .collect()
    };
    let probe0 = probe_cpu(&probes)?;
    let reports0 = rows
        .iter()
        .map(|r| reports_sent(&r.metrics_addr))
        .collect::<Result<Vec<_>>>()?;
    let cpu0 = procs.iter().map(Proc::cpu_seconds).collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let mut rss: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let (_tx, rx) = mpsc::channel::<()>();
    while start.elapsed() < window {
        for (samples, proc) in rss.iter_mut().zip(&procs) {
            samples.push(proc.status_mib("VmRSS")?);
        }
        // Sample once a second; the channel never sends, it only provides the wait.
        let _ = rx.recv_timeout(Duration::from_secs(1));
    }
    let cpu1 = procs.iter().map(Proc::cpu_seconds).collect::<Result<Vec<_>>>()?;
    let probe1 = probe_cpu(&probes)?;
    let elapsed = start.elapsed().as_secs_f64();
    let mut footprints = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let samples = &rss[i];
        footprints.push(Footprint {
            cpu_percent: 100.0 * (cpu1[i] - cpu0[i]) / elapsed,
            probe_cpu_percent: probe0[i].zip(probe1[i]).map(|(a, b)| 100.0 * (b - a) / elapsed),
            rss_mib_peak: samples.iter().copied().fold(0.0, f64::max),
            rss_mib_mean: samples.iter().sum::<f64>() / samples.len().max(1) as f64,
            reports: reports_sent(&row.metrics_addr)?.saturating_sub(reports0[i]),
        });
    }
    Ok(footprints)
}

fn metrics_text(metrics_addr: &str) -> Result<String> {
    Ok(ureq::get(&format!("http://{metrics_addr}/metrics"))
        .call()?
        .body_mut()
        .read_to_string()?)
}

/// The value of the first sample of `family` in an exposition.
fn sample(text: &str, family: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.strip_prefix(family).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
}

fn reports_sent(metrics_addr: &str) -> Result<u64> {
    sample(&metrics_text(metrics_addr)?, "pyxis_agent_capacity_reports_total")
        .map(|v| v as u64)
        .ok_or_else(|| anyhow!("no pyxis_agent_capacity_reports_total in the agent's metrics"))
}

/// Compiles the stub NVML library into `dir` for `gpus` identical H100s.
fn build_nvml_stub(dir: &Path, gpus: u32, event_poll_ms: u32) -> Result<PathBuf> {
    let source = dir.join("nvml_stub.c");
    std::fs::write(&source, NVML_STUB_SOURCE)?;
    let library = dir.join("libnvidia-ml.so.1");
    let output = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror"])
        .arg(format!("-DGPU_COUNT={gpus}"))
        .arg(format!("-DEVENT_POLL_MS={event_poll_ms}"))
        .arg("-o")
        .arg(&library)
        .arg(&source)
        .output()
        .context("gcc is needed to build the NVML stub (apt-get install gcc)")?;
    ensure!(
        output.status.success(),
        "gcc failed on the NVML stub: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(library)
}

/// An agent config file that shows the agent an empty host: no real driver library, empty
/// sysfs and devfs. `nvml_library` is the stub for the NVML row.
fn write_agent_config(dir: &Path, name: &str, nvml_library: &Path, empty_root: &Path) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    let missing = dir.join("no-such-library.so");
    // A JSON string is a valid TOML basic string.
    let quoted = |p: &Path| serde_json::to_string(&p.to_string_lossy());
    let text = format!(
        "nvml_library = {}\nrocm_library = {}\nsysfs_root = {}\ndevfs_root = {}\n\n[health]\nignored_xids = [{IGNORED_XID}]\n",
        quoted(nvml_library)?,
        quoted(&missing)?,
        quoted(empty_root)?,
        quoted(empty_root)?,
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Fails unless the agent's `/metrics` shows exactly the row's accelerators.
fn check_metrics(row: &Row) -> Result<()> {
    let text = metrics_text(&row.metrics_addr)?;
    let reported = sample(&text, "pyxis_agent_accelerators")
        .ok_or_else(|| anyhow!("{}: no pyxis_agent_accelerators in the agent's metrics", row.name))?;
    let expected = row.accelerators.count();
    ensure!(
        reported == f64::from(expected),
        "{}: the agent reports {reported} accelerators, not {expected}",
        row.name
    );
    let devices = |simulated: bool| {
        text.lines()
            .filter(|l| l.starts_with("pyxis_gpu_memory_total_bytes{"))
            .filter(|l| l.contains(&format!("simulated=\"{simulated}\"")))
            .count()
    };
    let (want_simulated, want_real) = match row.accelerators {
        Accelerators::None => (0, 0),
        Accelerators::Simulated(n) => (n as usize, 0),
        Accelerators::NvmlStub(n) => (0, n as usize),
    };
    ensure!(
        (devices(true), devices(false)) == (want_simulated, want_real),
        "{}: the agent's metrics show {} simulated and {} real devices, not {want_simulated} and {want_real}",
        row.name,
        devices(true),
        devices(false)
    );
    Ok(())
}

/// Fails unless the coordinator holds `gpus` real, healthy H100s for the node, with distinct
/// UUIDs and PCI bus ids, each joined to every other by NVLink through NVSwitches.
fn check_coordinator_view(api: &str, admin_token: &str, node: &str, gpus: u32) -> Result<()> {
    let detail: serde_json::Value = ureq::get(&format!("http://{api}/api/v1/nodes/{node}"))
        .header("Authorization", &format!("Bearer {admin_token}"))
        .call()?
        .body_mut()
        .read_json()?;
    let accelerators = detail["accelerators"]
        .as_array()
        .ok_or_else(|| anyhow!("{node}: no accelerators in the coordinator's answer: {detail}"))?;
    ensure!(
        accelerators.len() == gpus as usize,
        "{node}: the coordinator holds {} accelerators, not {gpus}",
        accelerators.len()
    );
    let mut uuids = HashSet::new();
    let mut buses = HashSet::new();
    for device in accelerators {
        let index = &device["index"];
        ensure!(
            device["simulated"] == false
                && device["vendor"] == "nvidia"
                && device["model"] == NVML_STUB_MODEL
                && device["health"] == "healthy",
            "{node}: device {index} is not a real, healthy {NVML_STUB_MODEL}: {device}"
        );
        uuids.insert(device["uuid"].to_string());
        buses.insert(device["pci_bus_id"].to_string());
        let links = device["links"].as_array().map(Vec::as_slice).unwrap_or_default();
        ensure!(
            links.len() == gpus as usize - 1
                && links
                    .iter()
                    .all(|l| l["kind"] == "nvlink" && l["lanes"].as_u64() == Some(NVML_STUB_NVLINKS)),
            "{node}: device {index} is not joined to every other GPU by {NVML_STUB_NVLINKS} NVLinks: {links:?}"
        );
    }
    ensure!(
        uuids.len() == gpus as usize && buses.len() == gpus as usize,
        "{node}: UUIDs or PCI bus ids repeat"
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        (1..=NVML_STUB_MAX_GPUS).contains(&args.gpus),
        "--gpus must be 1 to {NVML_STUB_MAX_GPUS} (what the NVML stub can report)"
    );
    let dir = tempfile::tempdir()?;
    let empty_root = dir.path().join("empty-host");
    std::fs::create_dir(&empty_root)?;
    let stub = build_nvml_stub(dir.path(), args.gpus, args.stub_event_poll_ms)?;

    let mut cmd = Command::new(bin("pyxis-coordinator")?);
    cmd.arg("--data-dir").arg(dir.path().join("coordinator")).args([
        "--quic-addr",
        "127.0.0.1:0",
        "--api-addr",
        "127.0.0.1:0",
        "--gateway-addr",
        "127.0.0.1:0",
        "--report-interval",
        &args.interval,
    ]);
    let coordinator = Daemon::spawn(cmd)?;
    let quic = field(
        &coordinator.wait_for("agent link listening", Duration::from_secs(30))?,
        "addr",
    )
    .ok_or_else(|| anyhow!("no QUIC address"))?
    .to_string();
    let api = field(
        &coordinator.wait_for("admin API listening", Duration::from_secs(30))?,
        "addr",
    )
    .ok_or_else(|| anyhow!("no API address"))?
    .to_string();
    let admin = std::fs::read_to_string(dir.path().join("coordinator/admin-token"))?;
    let admin = admin.trim();
    let token: serde_json::Value = ureq::post(&format!("http://{api}/api/v1/tokens"))
        .header("Authorization", &format!("Bearer {admin}"))
        .send_json(serde_json::json!({"ttl": "1h", "uses": 3}))?
        .body_mut()
        .read_json()?;
    let join = token["token"].as_str().ok_or_else(|| anyhow!("no token"))?.to_string();
    let pin = token["ca_hash"]
        .as_str()
        .ok_or_else(|| anyhow!("no ca_hash"))?
        .to_string();

    let start_agent = |name: &'static str, accelerators: Accelerators| -> Result<Row> {
        let nvml_library = match accelerators {
            Accelerators::NvmlStub(_) => stub.clone(),
            Accelerators::None | Accelerators::Simulated(_) => dir.path().join("no-such-library.so"),
        };
        let config = write_agent_config(dir.path(), name, &nvml_library, &empty_root)?;
        let mut cmd = Command::new(bin("pyxis-agent")?);
        cmd.arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(dir.path().join(name))
            .args([
                "--coordinator",
                &quic,
                "--join-token",
                &join,
                "--ca-hash",
                &pin,
                "--name",
                name,
                "--metrics-addr",
                "127.0.0.1:0",
                "--report-interval",
                &args.interval,
            ]);
        if let Accelerators::Simulated(n) = accelerators {
            cmd.args(["--simulate", &format!("{n}xH100-80GB")]);
        }
        let agent = Daemon::spawn(cmd)?;
        let metrics_addr = field(&agent.wait_for("serving /metrics", Duration::from_secs(30))?, "addr")
            .ok_or_else(|| anyhow!("no metrics address"))?
            .to_string();
        agent.wait_for("registered", Duration::from_secs(30))?;
        Ok(Row {
            name,
            accelerators,
            agent,
            metrics_addr,
        })
    };

    eprintln!(
        "three agents, measured together: no GPU, {n} simulated H100s, {n} H100s through the NVML stub \
         ({stub:?}, -DGPU_COUNT={n} -DEVENT_POLL_MS={poll}); {window:?} window after {warmup:?} warm-up",
        n = args.gpus,
        poll = args.stub_event_poll_ms,
        window = args.window,
        warmup = args.warmup,
    );
    let rows = vec![
        start_agent("baseline", Accelerators::None)?,
        start_agent("simulated", Accelerators::Simulated(args.gpus))?,
        start_agent("nvml-stub", Accelerators::NvmlStub(args.gpus))?,
    ];

    // Each agent must report what its row claims before anything is measured.
    for row in &rows {
        check_metrics(row)?;
        let probe_thread = row.agent.thread(PROBE_THREAD)?.is_some();
        let wants_probe_thread = matches!(row.accelerators, Accelerators::NvmlStub(_));
        ensure!(
            probe_thread == wants_probe_thread,
            "{}: probe thread running: {probe_thread}, expected {wants_probe_thread}",
            row.name
        );
    }
    let nvml_row = rows
        .iter()
        .find(|r| matches!(r.accelerators, Accelerators::NvmlStub(_)))
        .ok_or_else(|| anyhow!("no NVML row"))?;
    let found = nvml_row
        .agent
        .wait_for("NVIDIA GPUs found through NVML", Duration::from_secs(5))?;
    ensure!(
        field(&found, "count") == Some(&*args.gpus.to_string()),
        "nvml-stub: the agent did not find {} GPUs through NVML: {found}",
        args.gpus
    );
    if let Some(line) = nvml_row.agent.find("XID events unavailable") {
        bail!("nvml-stub: the probe thread does not wait on XID events: {line}");
    }
    check_coordinator_view(&api, admin, nvml_row.name, args.gpus)?;
    // One XID through the stub's events file proves the probe thread waits on the event set.
    // The health policy ignores this XID, so the GPU stays healthy.
    let mut events = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{}.events", stub.display()))?;
    writeln!(events, "0 {IGNORED_XID}")?;
    nvml_row
        .agent
        .wait_for("XID (ignored by the health policy)", Duration::from_secs(5))?;
    eprintln!(
        "checked: each agent reports its accelerators; the NVML agent's probe thread reads {} GPUs \
         through the stub and waits on their XID events",
        args.gpus
    );

    std::thread::sleep(args.warmup);
    let footprints = measure(&rows, args.window)?;
    for row in &rows {
        check_metrics(row)?;
    }

    println!(
        "| agent | window | reports sent | CPU % of one core | of which probe thread | RSS MiB (mean) | RSS MiB (peak) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (row, f) in rows.iter().zip(&footprints) {
        println!(
            "| {} | {:.0} s | {} | {:.3} | {} | {:.1} | {:.1} |",
            row.accelerators.label(),
            args.window.as_secs_f64(),
            f.reports,
            f.cpu_percent,
            f.probe_cpu_percent.map_or("–".to_string(), |p| format!("{p:.3}")),
            f.rss_mib_mean,
            f.rss_mib_peak
        );
    }
    println!();
    let baseline = &footprints[0];
    for (row, f) in rows.iter().zip(&footprints).skip(1) {
        println!(
            "{}: RSS peak / 20 MiB target = {:.2}; CPU / 0.5% target = {:.2}; RSS vs baseline = {:.2}x; CPU vs baseline = {:+.3} pp.",
            row.accelerators.label(),
            f.rss_mib_peak / 20.0,
            f.cpu_percent / 0.5,
            f.rss_mib_peak / baseline.rss_mib_peak.max(0.001),
            f.cpu_percent - baseline.cpu_percent
        );
    }
    Ok(())
}
