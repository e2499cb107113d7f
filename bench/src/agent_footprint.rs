//! `agent-footprint`: RSS and CPU of a real `pyxis-agent` reporting simulated GPUs to a real
//! coordinator at a 1 s interval, over a measurement window, against a baseline agent with
//! no GPU measured in the same run.
//!
//! Needs `cargo build --release -p pyxis-bench -p pyxis-coordinator -p pyxis-agent`.

mod procfs;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use procfs::{clk_tck, Proc};

/// Agent footprint benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Simulated GPUs on the measured agent.
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// Capacity report interval.
    #[arg(long, default_value = "1s")]
    interval: String,
    /// Measurement window.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Wait after registration before measuring.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
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
            if let Some(line) = self
                .lines
                .lock()
                .ok()
                .and_then(|l| l.iter().find(|l| l.contains(pattern)).cloned())
            {
                return Ok(line);
            }
            if Instant::now() > deadline {
                bail!("no line containing {pattern:?} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn proc(&self) -> Proc {
        Proc {
            dir: self.child.id().to_string(),
            clk_tck: clk_tck(),
        }
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

/// What one agent cost over the window.
struct Footprint {
    cpu_percent: f64,
    rss_mib_peak: f64,
    rss_mib_mean: f64,
    reports: u64,
}

fn measure(agent: &Daemon, window: Duration) -> Result<Footprint> {
    let proc = agent.proc();
    let cpu0 = proc.cpu_seconds()?;
    let start = Instant::now();
    let mut rss = Vec::new();
    let (_tx, rx) = mpsc::channel::<()>();
    while start.elapsed() < window {
        rss.push(proc.status_mib("VmRSS")?);
        // Sample once a second; the channel never sends, it only provides the wait.
        let _ = rx.recv_timeout(Duration::from_secs(1));
    }
    let cpu = proc.cpu_seconds()? - cpu0;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Footprint {
        cpu_percent: 100.0 * cpu / elapsed,
        rss_mib_peak: rss.iter().copied().fold(0.0, f64::max),
        rss_mib_mean: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
        reports: 0,
    })
}

fn reports_sent(metrics_addr: &str) -> Result<u64> {
    let text = ureq::get(&format!("http://{metrics_addr}/metrics"))
        .call()?
        .body_mut()
        .read_to_string()?;
    text.lines()
        .find(|l| l.starts_with("pyxis_agent_capacity_reports_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| anyhow!("no pyxis_agent_capacity_reports_total in the agent's metrics"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
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
    let token: serde_json::Value = ureq::post(&format!("http://{api}/api/v1/tokens"))
        .header("Authorization", &format!("Bearer {}", admin.trim()))
        .send_json(serde_json::json!({"ttl": "1h", "uses": 2}))?
        .body_mut()
        .read_json()?;
    let join = token["token"].as_str().ok_or_else(|| anyhow!("no token"))?.to_string();
    let pin = token["ca_hash"]
        .as_str()
        .ok_or_else(|| anyhow!("no ca_hash"))?
        .to_string();

    let start_agent = |name: &str, simulate: Option<String>| -> Result<(Daemon, String)> {
        let mut cmd = Command::new(bin("pyxis-agent")?);
        cmd.arg("--data-dir").arg(dir.path().join(name)).args([
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
        if let Some(spec) = simulate {
            cmd.args(["--simulate", &spec]);
        }
        let agent = Daemon::spawn(cmd)?;
        let metrics = field(&agent.wait_for("serving /metrics", Duration::from_secs(30))?, "addr")
            .ok_or_else(|| anyhow!("no metrics address"))?
            .to_string();
        agent.wait_for("registered", Duration::from_secs(30))?;
        Ok((agent, metrics))
    };

    eprintln!(
        "baseline: an agent with no GPU, {:?} window after {:?} warm-up",
        args.window, args.warmup
    );
    let (baseline_agent, baseline_metrics) = start_agent("baseline", None)?;
    std::thread::sleep(args.warmup);
    let before = reports_sent(&baseline_metrics)?;
    let mut baseline = measure(&baseline_agent, args.window)?;
    baseline.reports = reports_sent(&baseline_metrics)? - before;
    drop(baseline_agent);

    eprintln!("measured: an agent with {} simulated H100s", args.gpus);
    let (agent, metrics) = start_agent("measured", Some(format!("{}xH100-80GB", args.gpus)))?;
    std::thread::sleep(args.warmup);
    let before = reports_sent(&metrics)?;
    let mut measured = measure(&agent, args.window)?;
    measured.reports = reports_sent(&metrics)? - before;

    println!("| agent | window | reports sent | CPU % of one core | RSS MiB (mean) | RSS MiB (peak) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, f) in [
        ("no GPU (baseline)", &baseline),
        (&*format!("{} simulated GPUs", args.gpus), &measured),
    ] {
        println!(
            "| {name} | {:.0} s | {} | {:.3} | {:.1} | {:.1} |",
            args.window.as_secs_f64(),
            f.reports,
            f.cpu_percent,
            f.rss_mib_mean,
            f.rss_mib_peak
        );
    }
    println!();
    println!(
        "Ratios: RSS peak / 20 MiB target = {:.2}; CPU / 0.5% target = {:.2}; RSS vs baseline = {:.2}x; CPU vs baseline = {:+.3} pp.",
        measured.rss_mib_peak / 20.0,
        measured.cpu_percent / 0.5,
        measured.rss_mib_peak / baseline.rss_mib_peak.max(0.001),
        measured.cpu_percent - baseline.cpu_percent
    );
    Ok(())
}
