//! Hardware truth with real binaries: an agent on a host with no accelerator, and an agent
//! whose NVML is the stub library (`agent/tests/support/nvml_stub.c`, compiled here) so
//! the whole path runs for real: NVML → probe thread → health policy → QUIC report →
//! coordinator → `pyxis` CLI, plus the agent's `/metrics` checked by `promtool`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pyxis_smoke::{bin, http, log_field, Daemon};
use serde_json::Value;

const START: Duration = Duration::from_secs(30);

struct Cluster {
    _coordinator: Daemon,
    quic: String,
    api: String,
    admin: String,
}

impl Cluster {
    fn start(dir: &Path) -> Self {
        let data = dir.join("coordinator");
        let mut cmd = Command::new(bin("pyxis-coordinator"));
        cmd.arg("--data-dir").arg(&data).args([
            "--quic-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--gateway-addr",
            "127.0.0.1:0",
            "--report-interval",
            "200ms",
        ]);
        let coordinator = Daemon::spawn("coordinator", cmd);
        let quic = log_field(&coordinator.wait_for_line("agent link listening", START), "addr")
            .unwrap()
            .to_string();
        let api = log_field(&coordinator.wait_for_line("admin API listening", START), "addr")
            .unwrap()
            .to_string();
        let admin = std::fs::read_to_string(data.join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            _coordinator: coordinator,
            quic,
            api,
            admin,
        }
    }

    fn pyxis(&self, args: &[&str]) -> String {
        let out = Command::new(bin("pyxis"))
            .args(["--server", &format!("http://{}", self.api), "--token", &self.admin])
            .args(args)
            .env_remove("PYXIS_SERVER")
            .env_remove("PYXIS_TOKEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pyxis {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An agent config file joining this cluster, probing only what `extra` points at.
    fn agent_config(&self, dir: &Path, name: &str, extra: &str) -> PathBuf {
        let token: Value = serde_json::from_str(&self.pyxis(&["token", "create", "-o", "json"])).unwrap();
        let empty = dir.join(format!("{name}-empty-host"));
        std::fs::create_dir_all(&empty).unwrap();
        let path = dir.join(format!("{name}.toml"));
        let text = format!(
            "coordinators = [\"{quic}\"]\njoin_token = \"{token}\"\nca_hash = \"{ca}\"\ndata_dir = \"{data}\"\nname = \"{name}\"\nmetrics_addr = \"127.0.0.1:0\"\nreport_interval = \"200ms\"\nnvml_library = \"{dir}/no-libnvidia-ml.so.1\"\nrocm_library = \"{dir}/no-librocm_smi64.so.1\"\nsysfs_root = \"{empty}\"\ndevfs_root = \"{empty}\"\n{extra}",
            quic = self.quic,
            token = token["token"].as_str().unwrap(),
            ca = token["ca_hash"].as_str().unwrap(),
            data = dir.join(name).display(),
            dir = dir.display(),
            empty = empty.display(),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn node(&self, name: &str) -> Value {
        let (status, body) = http(
            "GET",
            &format!("http://{}/api/v1/nodes/{name}", self.api),
            Some(&self.admin),
            None,
        );
        if status != 200 {
            return Value::Null;
        }
        serde_json::from_str(&body).unwrap()
    }

    /// Polls `pyxis describe node` until its output has every pattern, or panics after 20 s.
    fn wait_describe(&self, name: &str, patterns: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let describe = self.pyxis(&["describe", "node", name]);
            let missing: Vec<&&str> = patterns.iter().filter(|p| !describe.contains(**p)).collect();
            if missing.is_empty() {
                return describe;
            }
            assert!(
                Instant::now() < deadline,
                "{missing:?} missing from describe:\n{describe}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls the node until `check` holds, or panics after 20 s.
    fn wait_node(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let node = self.node(name);
            if check(&node) {
                return node;
            }
            assert!(Instant::now() < deadline, "{name} never {what}: {node}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn agent(name: &str, config: &Path) -> (Daemon, String) {
    let mut cmd = Command::new(bin("pyxis-agent"));
    cmd.arg("--config").arg(config);
    let daemon = Daemon::spawn(name, cmd);
    let metrics = log_field(&daemon.wait_for_line("serving /metrics", START), "addr")
        .unwrap()
        .to_string();
    (daemon, metrics)
}

fn reports_sent(metrics_addr: &str) -> u64 {
    let (_, body) = http("GET", &format!("http://{metrics_addr}/metrics"), None, None);
    body.lines()
        .find_map(|l| l.strip_prefix("pyxis_agent_capacity_reports_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_host_without_accelerators_reports_none_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path());
    let config = cluster.agent_config(dir.path(), "cpu-only", "");
    let (agent, metrics) = agent("cpu-only", &config);
    let node = cluster.wait_node("cpu-only", "became Ready", |n| n["status"] == "Ready");
    assert_eq!(node["accelerators"], serde_json::json!([]), "{node}");
    // Several reports later, the agent has said it once, and once only.
    let deadline = Instant::now() + Duration::from_secs(20);
    while reports_sent(&metrics) < 5 {
        assert!(
            Instant::now() < deadline,
            "the agent stopped reporting: {}",
            agent.tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = |pattern: &str| agent.lines().iter().filter(|l| l.contains(pattern)).count();
    assert_eq!(said("this node reports no accelerators"), 1, "{}", agent.tail());
    assert_eq!(said("no NVIDIA GPU probed"), 1, "{}", agent.tail());
    let wide = cluster.pyxis(&["get", "nodes", "-o", "wide"]);
    assert!(wide.contains("cpu-only"), "{wide}");
}

/// Compiles the NVML stub with `defines` into `dir`.
fn nvml_stub(dir: &Path, defines: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../agent/tests/support/nvml_stub.c");
    let out = dir.join("libnvidia-ml.so.1");
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&out)
        .arg(&source)
        .args(defines.iter().map(|d| format!("-D{d}")))
        .status()
        .expect("gcc is needed to build the NVML stub (apt-get install gcc)");
    assert!(status.success());
    out
}

fn promtool(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (apt-get install prometheus)");
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}\n{exposition}"
    );
}

#[test]
fn gpu_health_travels_from_nvml_to_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path());
    let stub = nvml_stub(dir.path(), &["THREE_GPUS"]);
    let config = cluster.agent_config(dir.path(), "gpu-1", "[health]\nrecovery_window = \"1s\"\n");
    // Point the config at the stub instead of the missing library.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("{}/no-libnvidia-ml.so.1", dir.path().display()),
        &stub.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    let (agent, metrics) = agent("gpu-1", &config);
    let node = cluster.wait_node("gpu-1", "became Ready", |n| n["status"] == "Ready");
    let accelerators = node["accelerators"].as_array().unwrap();
    assert_eq!(accelerators.len(), 3, "{node}");
    assert!(accelerators
        .iter()
        .all(|a| a["simulated"] == false && a["health"] == "healthy"));
    assert_eq!(accelerators[0]["hardware_class"], "H100-80GB");
    assert_eq!(accelerators[0]["pci_bus_id"], "0000:17:00.0");
    assert_eq!(accelerators[0]["architecture"], "9.0");
    assert_eq!(accelerators[0]["links"][0]["kind"], "nvlink", "{node}");

    // A fatal XID on GPU 1: unhealthy with its reason, at the coordinator and in the CLI.
    let mut events = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{}.events", stub.display()))
        .unwrap();
    events.write_all(b"1 79\n0 13\n").unwrap();
    let node = cluster.wait_node("gpu-1", "reported the fatal XID", |n| {
        n["accelerators"][1]["health"] == "unhealthy" && n["accelerators"][0]["health"] == "degraded"
    });
    let reason = node["accelerators"][1]["health_reason"].as_str().unwrap();
    assert!(reason.contains("fatal XID 79"), "{reason}");
    assert_eq!(node["accelerators"][1]["xid_count"], 1);
    assert_eq!(node["accelerators"][2]["health"], "healthy");
    agent.wait_for_line("fatal XID: GPU marked unhealthy", START);

    // Health changes are events too (written in the background: poll).
    cluster.wait_describe(
        "gpu-1",
        &[
            "fatal XID 79",
            "XID 13",
            "0000:17:00.0",
            "Topology",
            "NV4",
            "DeviceUnhealthy",
            "DeviceDegraded",
        ],
    );
    let wide = cluster.pyxis(&["get", "nodes", "-o", "wide"]);
    assert!(wide.contains("unhealthy"), "{wide}");

    // The transient XID clears after the recovery window; the fatal one does not.
    let node = cluster.wait_node("gpu-1", "recovered GPU 0", |n| {
        n["accelerators"][0]["health"] == "healthy"
    });
    assert_eq!(node["accelerators"][1]["health"], "unhealthy");
    cluster.wait_describe("gpu-1", &["DeviceHealthy"]);

    // GPU 2 falls off the bus: unhealthy, and what can no longer be read is unknown (null in
    // the API, `-` in the CLI, no sample in the metrics), never an idle device's zeros.
    std::fs::write(format!("{}.lost", stub.display()), "2").unwrap();
    let node = cluster.wait_node("gpu-1", "lost GPU 2", |n| n["accelerators"][2]["health"] == "unhealthy");
    let lost = &node["accelerators"][2];
    for key in ["memory_used_bytes", "utilization_percent", "throttle_reasons"] {
        assert!(lost[key].is_null(), "{key} in {lost}");
    }
    assert_eq!(lost["xid_count"], 0, "an NVIDIA GPU keeps its XID count: {lost}");
    let describe = cluster.pyxis(&["describe", "node", "gpu-1"]);
    let gpu2 = &describe[describe.find("  GPU2:").unwrap()..];
    for expected in ["util -,", "Throttling:     -\n", "XID errors:     0\n"] {
        assert!(
            gpu2.contains(expected),
            "{expected:?} missing from describe:\n{describe}"
        );
    }

    let (status, exposition) = http("GET", &format!("http://{metrics}/metrics"), None, None);
    assert_eq!(status, 200);
    for family in [
        "pyxis_gpu_xid_errors_total",
        "pyxis_gpu_ecc_errors_total",
        "pyxis_gpu_throttle_reason",
        "pyxis_gpu_sm_clock_hertz",
        "pyxis_gpu_info",
    ] {
        assert!(
            exposition.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{exposition}"
        );
    }
    let samples_of_gpu2 = |family: &str| {
        exposition
            .lines()
            .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains("gpu=\"2\""))
            .count()
    };
    assert_eq!(samples_of_gpu2("pyxis_gpu_utilization_ratio"), 0, "{exposition}");
    assert_eq!(samples_of_gpu2("pyxis_gpu_memory_used_bytes"), 0, "{exposition}");
    assert_eq!(samples_of_gpu2("pyxis_gpu_throttled"), 0, "{exposition}");
    assert_eq!(samples_of_gpu2("pyxis_gpu_xid_errors_total"), 1, "{exposition}");
    promtool(&exposition);
}
