//! What the bench measures against: a `pyxis-mock-runtime` process called directly, nginx
//! in front of it, and a Pyxis coordinator (gateway included) with one in-process agent
//! whose replicas are mock runtimes.

use std::{
    collections::{BTreeMap, VecDeque},
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use pyxis_agent::{config::AgentConfig, Agent};
use pyxis_coordinator::{api_types::ReplicaView, config::CoordinatorConfig, server::Coordinator};

/// Lines of a child's output kept for error messages.
const TAIL_LINES: usize = 40;

/// A child process, its output drained into a short tail; killed on drop.
pub struct Process {
    name: String,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
    lines: mpsc::Receiver<String>,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{name}: starting {cmd:?}"))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        for pipe in [stdout, stderr].into_iter().flatten() {
            let tail = tail.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut t) = tail.lock() {
                        if t.len() >= TAIL_LINES {
                            t.pop_front();
                        }
                        t.push_back(line.clone());
                    }
                    // Nobody listens once the process is up; that is fine.
                    let _ = tx.send(line);
                }
            });
        }
        Ok(Self {
            name: name.to_string(),
            child,
            tail,
            lines,
        })
    }

    /// The last lines of output.
    pub fn tail(&self) -> String {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("waitpid")? {
            bail!("{} exited ({status}); last output:\n{}", self.name, self.tail());
        }
        Ok(())
    }

    /// Waits for an output line starting with `prefix`; returns it.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.check_running()?;
                    bail!("{}: closed its output before printing {prefix:?}", self.name)
                }
            }
            self.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{}: no line starting with {prefix:?} within {timeout:?}; last output:\n{}",
                    self.name,
                    self.tail()
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace` (nginx's master stops its
    /// workers on SIGTERM; on SIGKILL they would be left running).
    pub fn terminate(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A workspace binary: beside this executable, else on `PATH`.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(name))
        .filter(|p| p.is_file());
    beside
        .or_else(|| find_on_path(name, &[]))
        .ok_or_else(|| anyhow!("{name} is neither beside this executable nor on PATH: cargo build --release -p {name}"))
}

/// `name` on `PATH` or in one of `extra` directories.
pub fn find_on_path(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Polls `GET url` until it answers 200.
pub fn wait_http_ok(what: &str, url: &str, timeout: Duration, process: &mut Process) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    loop {
        process.check_running()?;
        let last = match agent.get(url).call() {
            Ok(response) if response.status() == 200 => return Ok(()),
            Ok(response) => format!("HTTP {}", response.status()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!(
                "{what}: GET {url} did not answer 200 within {timeout:?} (last: {last}); last output:\n{}",
                process.tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The mock's knobs for the overhead runs: no simulated latency, quiet logs.
pub const OVERHEAD_MOCK_ENV: &[(&str, &str)] = &[
    ("PYXIS_MOCK_TTFT_MS", "0"),
    ("PYXIS_MOCK_TPOT_MS", "0"),
    // One log line per request would cost the mock more than the gateway costs.
    ("PYXIS_MOCK_LOG", "warn"),
];

/// Starts `pyxis-mock-runtime --flavor vllm serve MODEL` on a free loopback port and waits
/// until `/health` answers 200.
pub fn start_mock(mock: &Path, model: &str, env: &[(&str, &str)]) -> Result<(Process, SocketAddr)> {
    let mut cmd = Command::new(mock);
    cmd.args(["--flavor", "vllm", "serve", model, "--host", "127.0.0.1", "--port", "0"]);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut process = Process::spawn("pyxis-mock-runtime", cmd)?;
    let line = process.wait_for_line("listening on ", Duration::from_secs(30))?;
    let addr: SocketAddr = line
        .trim_start_matches("listening on ")
        .trim()
        .parse()
        .with_context(|| format!("pyxis-mock-runtime: no address in {line:?}"))?;
    wait_http_ok(
        "pyxis-mock-runtime",
        &format!("http://{addr}/health"),
        Duration::from_secs(30),
        &mut process,
    )?;
    Ok((process, addr))
}

/// A free loopback port (bound and released; nginx binds it right after).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// nginx as a reverse proxy in front of `upstream`; stopped gracefully on drop.
pub struct Nginx {
    pub process: Process,
    pub addr: SocketAddr,
    pub version: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.process.terminate(Duration::from_secs(5));
    }
}

/// The nginx config: one upstream with a keep-alive pool, unbuffered proxying, no access
/// log, every temp path inside `dir`.
fn nginx_config(dir: &Path, listen: SocketAddr, upstream: SocketAddr, workers: usize) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes {workers};
daemon off;
master_process on;
error_log stderr warn;
pid {d}/nginx.pid;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream mock {{
        server {upstream};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
    )
}

/// Starts nginx in front of `upstream` if it is installed (`None`, with the reason, if not).
pub fn start_nginx(upstream: SocketAddr, workers: usize) -> Result<std::result::Result<Nginx, String>> {
    let Some(nginx) = find_on_path("nginx", &["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"]) else {
        return Ok(Err(
            "nginx is not installed (not on PATH nor in /usr/sbin): the nginx row is skipped \
             (Debian: apt-get install nginx-light)"
                .into(),
        ));
    };
    let version = Command::new(&nginx)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    let dir = tempfile::Builder::new()
        .prefix("gateway-bench-nginx-")
        .tempdir()
        .context("creating nginx's directory")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = dir.path().join("nginx.conf");
    std::fs::write(&config, nginx_config(dir.path(), addr, upstream, workers))
        .with_context(|| format!("writing {}", config.display()))?;
    let mut cmd = Command::new(&nginx);
    cmd.arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&config);
    let mut process = Process::spawn("nginx", cmd)?;
    wait_http_ok(
        "nginx",
        &format!("http://{addr}/health"),
        Duration::from_secs(15),
        &mut process,
    )?;
    Ok(Ok(Nginx {
        process,
        addr,
        version,
        _dir: dir,
    }))
}

/// One deployment the fleet serves.
#[derive(Debug, Clone)]
pub struct DeploymentSpec {
    pub name: &'static str,
    pub replicas: u32,
    /// `routing:` value.
    pub routing: &'static str,
    /// The mock's knobs, through the manifest's runtime `env`.
    pub env: Vec<(&'static str, String)>,
}

impl DeploymentSpec {
    /// The manifest; the model source lies under `models`, so this run's runtime processes
    /// carry it on their command line.
    fn manifest(&self, tenant: &str, models: &Path) -> String {
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}: {}", serde_json::Value::String(v.clone())))
            .collect();
        format!(
            r#"apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}, namespace: {tenant}}}
spec:
  model: {{name: {name}, version: "1", source: {source}}}
  runtimes:
    - {{kind: vllm, env: {{{env}}}}}
  resources: {{gpusPerReplica: 1}}
  replicas: {{min: {n}, max: {n}}}
  routing: {routing}
  readinessTimeout: 60s
"#,
            name = self.name,
            source = serde_json::Value::String(models.join(self.name).display().to_string()),
            env = env.join(", "),
            n = self.replicas,
            routing = self.routing,
        )
    }
}

/// The tenant every deployment of the bench belongs to.
pub const TENANT: &str = "bench";

/// A coordinator (with its gateway) and one agent with simulated GPUs, in this process.
pub struct Fleet {
    pub coordinator: Coordinator,
    agent: Option<Agent>,
    /// An API key of [`TENANT`].
    pub api_key: String,
    /// Where the models "are": on every runtime command line of this run.
    models: PathBuf,
    _reaper: Reaper,
    _dir: tempfile::TempDir,
}

/// Kills, when dropped, every process whose command line contains the marker.
///
/// Agents leave runtimes running when they stop (by design); a bench that failed half way
/// must not leave its replicas behind.
struct Reaper(String);

impl Drop for Reaper {
    fn drop(&mut self) {
        let marker = &self.0;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Ok(pid) = name.to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if pid != std::process::id() && String::from_utf8_lossy(&raw).contains(marker.as_str()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

impl Fleet {
    /// Starts the coordinator, creates the tenant and an API key, starts one agent with
    /// `gpus` simulated H100s whose `vllm` is the mock, and applies `deployments`.
    pub async fn start(mock: &Path, gpus: u32, deployments: &[DeploymentSpec]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("gateway-bench-")
            .tempdir()
            .context("creating the coordinator's data dir")?;
        let mut config = CoordinatorConfig::local(dir.path().join("coordinator"));
        config.report_interval = Duration::from_millis(250);
        // The issue measures the gateway with audit on, in required mode: a call whose
        // record cannot be queued is refused.
        config.gateway.audit_mode = pyxis_coordinator::audit::AuditMode::Required;
        let coordinator = Coordinator::start(config)
            .await
            .map_err(|e| anyhow!("starting the coordinator: {e}"))?;
        if let Some(e) = &coordinator.gateway.audit_open_error {
            bail!("the gateway's audit log did not open (required mode refuses every call): {e}");
        }
        let shared = coordinator.shared.clone();
        let token = tokio::task::spawn_blocking(move || shared.create_join_token(Duration::from_secs(3600), 4))
            .await
            .context("join token task")?
            .map_err(|e| anyhow!("creating a join token: {e}"))?;
        let mut runtimes = BTreeMap::new();
        runtimes.insert("vllm".to_string(), format!("{} --flavor vllm", mock.display()));
        let agent_config = AgentConfig {
            coordinators: vec![coordinator.quic_addr.to_string()],
            join_token: Some(token.token.clone()),
            ca_hash: pyxis_transport::pki::parse_ca_hash(&coordinator.shared.ca.hash()).ok(),
            data_dir: dir.path().join("agent"),
            name: "bench-node".into(),
            metrics_addr: None,
            simulate: Some(format!("{gpus}xH100-80GB")),
            report_interval: Duration::from_millis(250),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            runtimes,
            hardware_classes: Default::default(),
            nvml_library: Some(dir.path().join("no-such-libnvidia-ml.so")),
            gce_metadata_url: "http://127.0.0.1:9/".into(),
            rocm_library: Some(dir.path().join("no-such-librocm.so")),
            host_paths: Default::default(),
            supervisor: pyxis_agent::runtime::supervisor::SupervisorConfig {
                runtime_ports: (23000, 23199),
                runtime_host: std::net::IpAddr::from([127, 0, 0, 1]),
                advertise_host: Some("127.0.0.1".into()),
                ..Default::default()
            },
            health: Default::default(),
        };
        let agent = Agent::start(agent_config)
            .await
            .map_err(|e| anyhow!("starting the in-process agent: {e}"))?;
        let mut fleet = Fleet {
            coordinator,
            agent: Some(agent),
            api_key: String::new(),
            models: dir.path().join("models"),
            _reaper: Reaper(dir.path().join("models").display().to_string()),
            _dir: dir,
        };
        fleet.wait_node(gpus).await?;

        let mut text = format!(
            "apiVersion: pyxis.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {TENANT}}}\nspec: {{weight: 1}}\n"
        );
        for d in deployments {
            text.push_str("---\n");
            text.push_str(&d.manifest(TENANT, &fleet.models));
        }
        let sources = vec![(Some("gateway-bench.yaml".to_string()), text.clone())];
        pyxis_coordinator::api_objects::apply_sources(&fleet.coordinator.shared, &sources, false)
            .await
            .map_err(|e| anyhow!("applying the bench's manifests: {e} ({e:?}); manifests:\n{text}"))?;

        let key = pyxis_coordinator::apikeys::create(TENANT, "gateway-bench", pyxis_coordinator::time::now_ms())
            .map_err(|e| anyhow!("creating an API key: {e}"))?;
        fleet
            .coordinator
            .shared
            .store
            .insert_api_key(&key.row)
            .map_err(|e| anyhow!("storing the API key: {e}"))?;
        fleet.api_key = key.key;
        Ok(fleet)
    }

    /// Waits until the agent's node is connected with its GPUs.
    async fn wait_node(&self, gpus: u32) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .coordinator
                .shared
                .registry()
                .view("bench-node", Instant::now(), Duration::from_secs(10))
                .is_some_and(|v| v.connected && v.accelerators.len() == gpus as usize);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the in-process agent did not register with {gpus} simulated GPUs within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The deployment's replicas.
    pub fn replicas(&self, deployment: &str) -> Vec<ReplicaView> {
        self.coordinator
            .shared
            .registry()
            .replica_views()
            .into_iter()
            .filter(|r| r.deployment == deployment)
            .collect()
    }

    /// Waits until `deployment` has `n` Ready replicas with an endpoint; returns them.
    pub async fn wait_ready(&self, deployment: &str, n: usize, timeout: Duration) -> Result<Vec<ReplicaView>> {
        let deadline = Instant::now() + timeout;
        loop {
            let replicas = self.replicas(deployment);
            let ready: Vec<ReplicaView> = replicas
                .iter()
                .filter(|r| r.phase == "Ready" && r.endpoint.is_some())
                .cloned()
                .collect();
            if ready.len() >= n {
                return Ok(ready);
            }
            if Instant::now() > deadline {
                let states: Vec<String> = replicas
                    .iter()
                    .map(|r| format!("{} {} ({}) {}", r.name, r.phase, r.reason, r.log_tail.join(" | ")))
                    .collect();
                let explain = self.explain(deployment).await;
                bail!(
                    "{deployment}: {} of {n} replicas Ready after {timeout:?}; replicas: {states:?}\n{explain}",
                    ready.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The admin API's explanation of a deployment's placement, for error messages.
    async fn explain(&self, deployment: &str) -> String {
        let url = format!(
            "{}/api/v1/deployments/{deployment}/explain?namespace={TENANT}",
            self.coordinator.api_url()
        );
        let token = self.coordinator.admin_token.clone().unwrap_or_default();
        let fetched = tokio::task::spawn_blocking(move || -> Result<String> {
            let body = ureq::get(&url)
                .header("Authorization", &format!("Bearer {token}"))
                .call()?
                .body_mut()
                .read_to_string()?;
            Ok(body)
        })
        .await;
        match fetched {
            Ok(Ok(body)) => format!("explain: {body}"),
            Ok(Err(e)) => format!("(explain failed: {e:#})"),
            Err(e) => format!("(explain failed: {e})"),
        }
    }

    /// The gateway's audit log counters.
    pub fn audit_stats(&self) -> Option<pyxis_coordinator::audit::AuditStats> {
        self.coordinator.gateway.audit.as_ref().map(|a| a.stats())
    }

    /// The gateway's address.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.coordinator.gateway_addr
    }

    /// Stops the replicas, the agent and the coordinator.
    pub async fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop_replicas().await;
            agent.stop().await;
        }
        self.coordinator.stop().await;
    }
}

/// `http://HOST:PORT/v1` (a replica's endpoint) as a socket address.
pub fn endpoint_addr(endpoint: &str) -> Result<SocketAddr> {
    let rest = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("replica endpoint {endpoint:?} is not http://"))?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host_port = host_port.replace("0.0.0.0", "127.0.0.1");
    host_port
        .parse()
        .with_context(|| format!("replica endpoint {endpoint:?}: no HOST:PORT"))
}
