//! In-process integration tests of the agent link: one coordinator and several agents
//! over real QUIC + mutual TLS on loopback, real enrollment, real SQLite store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    future::Future,
    io::Write,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use pyxis_agent::{config::AgentConfig, Agent};
use pyxis_coordinator::{config::CoordinatorConfig, server::Coordinator};
use pyxis_protocol::{
    AgentMessage, CoordinatorMessage, ErrorCode, Hello, VersionRange, MAX_FRAME_BYTES, SUPPORTED_VERSIONS,
};
use pyxis_transport::framed::{FrameReader, FrameWriter};

/// Captured log output of the whole test binary (tests use distinct node names).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,quinn=warn")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines_with(needles: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).to_string();
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// Polls `check` every 20 ms until it holds or `deadline` passes.
async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    coordinator: Option<Coordinator>,
}

impl Cluster {
    async fn start(liveness: Duration) -> Self {
        logs();
        let dir = tempfile::tempdir().unwrap();
        let mut config = CoordinatorConfig::local(dir.path().join("coordinator"));
        config.liveness_timeout = liveness;
        config.report_interval = Duration::from_millis(100);
        // Some tests set desired states by hand; placement from manifests is tested elsewhere.
        config.reconcile = false;
        let coordinator = Coordinator::start(config).await.unwrap();
        Self {
            dir,
            coordinator: Some(coordinator),
        }
    }

    fn c(&self) -> &Coordinator {
        self.coordinator.as_ref().unwrap()
    }

    fn token(&self, ttl: Duration, uses: u32) -> (String, [u8; 32]) {
        let created = self.c().shared.create_join_token(ttl, uses).unwrap();
        (
            created.token,
            pyxis_transport::pki::parse_ca_hash(&created.ca_hash).unwrap(),
        )
    }

    fn agent_config(&self, name: &str, token: Option<(String, [u8; 32])>) -> AgentConfig {
        AgentConfig {
            coordinators: vec![self.c().quic_addr.to_string()],
            join_token: token.as_ref().map(|t| t.0.clone()),
            ca_hash: token.map(|t| t.1),
            data_dir: self.dir.path().join("agents").join(name),
            name: name.to_string(),
            metrics_addr: None,
            simulate: Some("2xH100-80GB".into()),
            report_interval: Duration::from_millis(100),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            runtimes: Default::default(),
            hardware_classes: Default::default(),
            nvml_library: None,
            gce_metadata_url: pyxis_agent::tpu::DEFAULT_METADATA_URL.into(),
            rocm_library: None,
            host_paths: Default::default(),
            supervisor: Default::default(),
            health: Default::default(),
        }
    }

    async fn join(&self, name: &str) -> Agent {
        let agent = Agent::start(self.agent_config(name, Some(self.token(Duration::from_secs(600), 1))))
            .await
            .unwrap();
        wait_connected(&agent).await;
        agent
    }

    fn status(&self, name: &str) -> Option<String> {
        self.c()
            .shared
            .registry()
            .view(name, Instant::now(), self.c().shared.config.liveness_timeout)
            .map(|v| v.status)
    }

    fn view(&self, name: &str) -> pyxis_coordinator::api_types::NodeView {
        self.c()
            .shared
            .registry()
            .view(name, Instant::now(), self.c().shared.config.liveness_timeout)
            .unwrap()
    }

    async fn api(&self, method: &str, path: &str) -> (u16, String) {
        let url = format!("{}{}", self.c().api_url(), path);
        let token = self.c().admin_token.clone().unwrap();
        let method = method.to_string();
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let auth = format!("Bearer {token}");
            let mut response = match method.as_str() {
                "GET" => agent.get(&url).header("Authorization", &auth).call().unwrap(),
                "DELETE" => agent.delete(&url).header("Authorization", &auth).call().unwrap(),
                _ => agent.post(&url).header("Authorization", &auth).send_empty().unwrap(),
            };
            (
                response.status().as_u16(),
                response.body_mut().read_to_string().unwrap(),
            )
        })
        .await
        .unwrap()
    }
}

async fn wait_connected(agent: &Agent) {
    let mut watch = agent.watch();
    tokio::time::timeout(
        Duration::from_secs(15),
        watch.wait_for(|s| s.connected && s.acked_capacity_seq > 0),
    )
    .await
    .unwrap_or_else(|_| panic!("agent never connected: {:?}", agent.shared.link_state()))
    .unwrap();
}

/// Waits until the agent's last link error mentions `needle` (a refusal it was given).
async fn wait_for_error(agent: &Agent, needle: &str, deadline: Duration) {
    eventually(&format!("link error containing {needle:?}"), deadline, || {
        let err = agent.shared.link_state().last_error.unwrap_or_default();
        let found = err.contains(needle);
        async move { found }
    })
    .await;
}

/// Waits until every agent has had at least `n` more capacity reports acknowledged.
async fn all_keep_reporting(agents: &[&Agent], n: u64) {
    let start: Vec<u64> = agents
        .iter()
        .map(|a| a.shared.link_state().acked_capacity_seq)
        .collect();
    eventually("all agents keep reporting", Duration::from_secs(10), || {
        let ok = agents.iter().zip(&start).all(|(a, s)| {
            let state = a.shared.link_state();
            state.connected && state.acked_capacity_seq >= s + n
        });
        async move { ok }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_register_one_dies_goes_not_ready_and_returns() {
    let liveness = Duration::from_millis(1500);
    let cluster = Cluster::start(liveness).await;
    let a = cluster.join("alpha").await;
    let b = cluster.join("beta").await;
    let c = cluster.join("gamma").await;
    for name in ["alpha", "beta", "gamma"] {
        eventually("node Ready", Duration::from_secs(5), || {
            let ok = cluster.status(name).as_deref() == Some("Ready");
            async move { ok }
        })
        .await;
    }
    let view = cluster.view("beta");
    assert_eq!(view.accelerators.len(), 2);
    assert!(view
        .accelerators
        .iter()
        .all(|d| d.simulated && d.hardware_class == "H100-80GB"));

    // Crash beta: its tasks are aborted without a goodbye.
    let beta_config = b.shared.config.clone();
    b.kill();
    let killed_at = Instant::now();
    eventually("beta NotReady", liveness + Duration::from_secs(3), || {
        let ok = cluster.status("beta").as_deref() == Some("NotReady");
        async move { ok }
    })
    .await;
    let detected = killed_at.elapsed();
    assert!(
        detected >= liveness.saturating_sub(Duration::from_millis(200)),
        "NotReady too early: {detected:?}"
    );
    assert!(
        detected <= liveness + Duration::from_millis(1500),
        "NotReady too late: {detected:?}"
    );
    assert_eq!(cluster.status("alpha").as_deref(), Some("Ready"));
    eventually("NotReady logged", Duration::from_secs(2), || {
        let ok = !log_lines_with(&["node is NotReady", "beta"]).is_empty();
        async move { ok }
    })
    .await;

    // It comes back with its stored identity (no token) and is Ready again.
    let mut config = beta_config;
    config.join_token = None;
    config.ca_hash = None;
    let b2 = Agent::start(config).await.unwrap();
    wait_connected(&b2).await;
    eventually("beta Ready again", Duration::from_secs(5), || {
        let ok = cluster.status("beta").as_deref() == Some("Ready");
        async move { ok }
    })
    .await;
    all_keep_reporting(&[&a, &b2, &c], 3).await;
    // The change was recorded as events.
    let (status, body) = cluster.api("GET", "/api/v1/nodes/beta").await;
    assert_eq!(status, 200);
    assert!(body.contains("NodeNotReady") && body.contains("NodeReady"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_expired_tokens_are_refused_without_disturbing_others() {
    let cluster = Cluster::start(Duration::from_secs(10)).await;
    let good = cluster.join("steady-1").await;

    // Wrong secret for a real token id.
    let (token, pin) = cluster.token(Duration::from_secs(600), 1);
    let wrong = format!("{}.{}", &token[..6], "0000000000000000");
    let bad = Agent::start(cluster.agent_config("wrong-token", Some((wrong, pin))))
        .await
        .unwrap();
    wait_for_error(&bad, "wrong secret", Duration::from_secs(10)).await;
    assert!(!bad.shared.link_state().connected);
    assert!(!log_lines_with(&["refused agent", "wrong-token", "wrong secret"]).is_empty());
    bad.stop().await;

    // Expired token.
    let (token, pin) = cluster.token(Duration::from_millis(1), 1);
    tokio::time::sleep(Duration::from_millis(20)).await; // let the 1 ms TTL pass (wall clock)
    let expired = Agent::start(cluster.agent_config("expired-token", Some((token, pin))))
        .await
        .unwrap();
    wait_for_error(&expired, "expired", Duration::from_secs(10)).await;
    assert!(!log_lines_with(&["refused agent", "expired-token", "expired"]).is_empty());
    expired.stop().await;

    // A used-up token.
    let (token, pin) = cluster.token(Duration::from_secs(600), 1);
    let first = Agent::start(cluster.agent_config("uses-1", Some((token.clone(), pin))))
        .await
        .unwrap();
    wait_connected(&first).await;
    let second = Agent::start(cluster.agent_config("uses-2", Some((token, pin))))
        .await
        .unwrap();
    wait_for_error(&second, "no uses left", Duration::from_secs(10)).await;
    second.stop().await;

    // A pinned hash that is not this coordinator's CA: the agent refuses the coordinator.
    let (token, _) = cluster.token(Duration::from_secs(600), 1);
    let mitm = Agent::start(cluster.agent_config("wrong-pin", Some((token, [7u8; 32]))))
        .await
        .unwrap();
    wait_for_error(&mitm, "does not match --ca-hash", Duration::from_secs(10)).await;
    mitm.stop().await;

    all_keep_reporting(&[&good, &first], 3).await;
    assert!(cluster.status("wrong-token").is_none());
    assert!(cluster.status("expired-token").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let cluster = Cluster::start(Duration::from_secs(10)).await;
    let other = Cluster::start(Duration::from_secs(10)).await;
    let good = cluster.join("home-node").await;
    // A node of the other cluster...
    let foreign = other.join("foreign").await;
    let foreign_dir = foreign.shared.config.data_dir.clone();
    foreign.stop().await;
    // ...that trusts our CA (so it gets as far as presenting its certificate) but holds a
    // certificate signed by the other CA.
    let ours = std::fs::read_to_string(cluster.c().shared.config.data_dir.join("ca.pem")).unwrap();
    pyxis_agent::identity::write_private(&foreign_dir.join("identity/ca.pem"), &ours).unwrap();
    let mut config = cluster.agent_config("foreign", None);
    config.data_dir = foreign_dir;
    let before = handshake_refusals(&cluster).await;
    let intruder = Agent::start(config).await.unwrap();
    eventually("foreign certificate refused", Duration::from_secs(10), || {
        let c = &cluster;
        async move { handshake_refusals(c).await > before }
    })
    .await;
    assert!(!intruder.shared.link_state().connected);
    assert!(!log_lines_with(&["TLS handshake failed"]).is_empty());
    assert!(cluster.status("foreign").is_none());
    intruder.stop().await;
    all_keep_reporting(&[&good], 3).await;
}

async fn handshake_refusals(cluster: &Cluster) -> u64 {
    let text = pyxis_coordinator::metrics::render(&cluster.c().shared);
    text.lines()
        .find(|l| l.starts_with("pyxis_link_refusals_total{reason=\"handshake\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_node_is_dropped_at_once_and_refused_afterwards() {
    let cluster = Cluster::start(Duration::from_secs(10)).await;
    let keep = cluster.join("keeper").await;
    let victim = cluster.join("victim").await;
    let mut watch = victim.watch();
    let (status, body) = cluster.api("POST", "/api/v1/nodes/victim/revoke").await;
    assert_eq!(status, 200, "{body}");
    // Dropped at once: well before any liveness timeout.
    tokio::time::timeout(Duration::from_secs(2), watch.wait_for(|s| !s.connected))
        .await
        .unwrap()
        .unwrap();
    // Its reconnects are refused with a clear reason.
    wait_for_error(&victim, "revoked", Duration::from_secs(10)).await;
    eventually("refusal logged", Duration::from_secs(5), || {
        let ok = !log_lines_with(&["refused connection", "victim", "revoked"]).is_empty();
        async move { ok }
    })
    .await;
    let view = cluster.view("victim");
    assert!(view.revoked);
    assert_eq!(view.status, "NotReady");
    assert!(!victim.shared.link_state().connected);
    all_keep_reporting(&[&keep], 3).await;
    // A fresh token cannot bring a revoked name back.
    victim.stop().await;
    let again = Agent::start(cluster.agent_config("victim", Some(cluster.token(Duration::from_secs(600), 1))))
        .await
        .unwrap();
    wait_for_error(&again, "revoked", Duration::from_secs(10)).await;
    again.stop().await;
    // Other actions on a revoked node are conflicts, not silent successes.
    let (status, body) = cluster.api("POST", "/api/v1/nodes/victim/uncordon").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("\"code\":\"conflict\""), "{body}");
    // Deleting the node is the way back: the name may join again with a new token.
    let (status, body) = cluster.api("DELETE", "/api/v1/nodes/victim").await;
    assert_eq!(status, 200, "{body}");
    assert!(cluster.status("victim").is_none());
    let mut config = cluster.agent_config("victim", Some(cluster.token(Duration::from_secs(600), 1)));
    config.data_dir = cluster.dir.path().join("agents/victim-rejoined");
    let rejoined = Agent::start(config).await.unwrap();
    wait_connected(&rejoined).await;
    rejoined.stop().await;
    // Unknown nodes and actions are clean API errors.
    assert_eq!(cluster.api("POST", "/api/v1/nodes/ghost/cordon").await.0, 404);
    assert_eq!(cluster.api("POST", "/api/v1/nodes/keeper/explode").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_and_bad_frames_do_not_disturb_agents() {
    let cluster = Cluster::start(Duration::from_secs(10)).await;
    let a = cluster.join("calm-1").await;
    let b = cluster.join("calm-2").await;
    let target = cluster.c().quic_addr;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..2000 {
        let len = [1, 20, 1200, 1500, rng.usize(1..1400)][i % 5];
        let mut datagram: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if i % 3 == 0 && !datagram.is_empty() {
            // Looks like a QUIC long-header Initial with garbage after it.
            datagram[0] = 0xc0 | (datagram[0] & 0x0f);
            if datagram.len() > 5 {
                datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
        }
        socket.send_to(&datagram, target).await.unwrap();
    }
    all_keep_reporting(&[&a, &b], 5).await;

    // A bootstrap connection that sends a malformed frame gets a typed error.
    let (_, pin) = cluster.token(Duration::from_secs(60), 1);
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = pyxis_transport::tls::bootstrap_client_config(pin).unwrap();
    let connection = endpoint
        .connect_with(config, target, "pyxis-coordinator")
        .unwrap()
        .await
        .unwrap();
    let (mut send, recv) = connection.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 4, 0, 1, 0xff, 0xff]).await.unwrap();
    let mut reader = FrameReader::new(recv, MAX_FRAME_BYTES);
    match reader.recv::<CoordinatorMessage>().await.unwrap() {
        Some((_, CoordinatorMessage::Error(e))) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // An oversized frame header is refused from the header alone.
    let connection2 = endpoint
        .connect_with(
            pyxis_transport::tls::bootstrap_client_config(pin).unwrap(),
            target,
            "pyxis-coordinator",
        )
        .unwrap()
        .await
        .unwrap();
    let (mut send, recv) = connection2.open_bi().await.unwrap();
    send.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 1]).await.unwrap();
    let mut reader = FrameReader::new(recv, MAX_FRAME_BYTES);
    match reader.recv::<CoordinatorMessage>().await.unwrap() {
        Some((_, CoordinatorMessage::Error(e))) => {
            assert!(e.message.contains("exceeds the maximum"), "{e:?}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    all_keep_reporting(&[&a, &b], 3).await;
    // And a new agent can still join.
    let c = cluster.join("calm-3").await;
    all_keep_reporting(&[&a, &b, &c], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_protocol_versions_are_refused_with_both_ranges() {
    let cluster = Cluster::start(Duration::from_secs(10)).await;
    let (_, pin) = cluster.token(Duration::from_secs(60), 1);
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = pyxis_transport::tls::bootstrap_client_config(pin).unwrap();
    let connection = endpoint
        .connect_with(config, cluster.c().quic_addr, "pyxis-coordinator")
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = connection.open_bi().await.unwrap();
    let future = VersionRange {
        min: SUPPORTED_VERSIONS.max + 4,
        max: SUPPORTED_VERSIONS.max + 5,
    };
    let mut writer = FrameWriter::new(send, future.max, MAX_FRAME_BYTES);
    writer
        .send(&AgentMessage::Hello(Hello {
            versions: future,
            agent_version: "9.0.0".into(),
            node_name: "from-the-future".into(),
        }))
        .await
        .unwrap();
    let mut reader = FrameReader::new(recv, MAX_FRAME_BYTES);
    match reader.recv::<CoordinatorMessage>().await.unwrap() {
        Some((_, CoordinatorMessage::Error(e))) => {
            assert_eq!(e.code, ErrorCode::IncompatibleVersion);
            assert!(e.message.contains(&format!("agent speaks {future}")), "{}", e.message);
            assert!(
                e.message.contains(&format!("coordinator speaks {SUPPORTED_VERSIONS}")),
                "{}",
                e.message
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(!log_lines_with(&["refused agent", "from-the-future", "incompatible protocol versions"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_survives_a_coordinator_restart_and_agents_reconnect() {
    let mut cluster = Cluster::start(Duration::from_secs(10)).await;
    let a = cluster.join("survivor-1").await;
    let b = cluster.join("survivor-2").await;
    cluster.api("POST", "/api/v1/nodes/survivor-2/cordon").await;
    // A desired replica set reaches the connected agent at once, and is durable.
    let spec = pyxis_protocol::ReplicaSpec {
        name: "chat-0".into(),
        deployment: "chat".into(),
        tenant: "research".into(),
        model_name: "m".into(),
        runtime_kind: "custom".into(),
        ..Default::default()
    };
    let generation = cluster.c().set_desired("survivor-1", vec![spec.clone()]).await.unwrap();
    eventually("the agent applies the desired state", Duration::from_secs(5), || {
        let applied = a.shared.link_state().desired_generation == generation;
        async move { applied }
    })
    .await;
    assert!(matches!(
        cluster.c().set_desired("nobody", vec![]).await,
        Err(pyxis_coordinator::server::SetDesiredError::NotFound(_))
    ));
    let old = cluster.coordinator.take().unwrap();
    let mut config = old.shared.config.clone();
    config.quic_addr = old.quic_addr;
    old.stop().await;
    eventually("agents notice", Duration::from_secs(5), || {
        let down = !a.shared.link_state().connected && !b.shared.link_state().connected;
        async move { down }
    })
    .await;
    // The old endpoint releases its UDP port once its last connection task has ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    let restarted = loop {
        match Coordinator::start(config.clone()).await {
            Ok(coordinator) => break coordinator,
            Err(e) if Instant::now() < deadline => {
                eprintln!("port not free yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot restart: {e}"),
        }
    };
    // Before they reconnect, the nodes are known (from the store), cordon included.
    {
        let registry = restarted.shared.registry();
        let views = registry.views(Instant::now(), Duration::from_secs(10));
        let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, vec!["survivor-1", "survivor-2"]);
        assert!(views[1].cordoned);
        assert_eq!(views[0].accelerators.len(), 2, "facts persisted");
        let desired = registry.desired("survivor-1").unwrap();
        assert_eq!((desired.generation, desired.replicas), (generation, vec![spec]));
    }
    cluster.coordinator = Some(restarted);
    wait_connected(&a).await;
    wait_connected(&b).await;
    eventually("Ready and Cordoned again", Duration::from_secs(5), || {
        let ok = cluster.status("survivor-1").as_deref() == Some("Ready")
            && cluster.status("survivor-2").as_deref() == Some("Cordoned");
        async move { ok }
    })
    .await;
    assert!(a.shared.link_state().sessions >= 2);
    // The restored state is what the agent is sent again: nothing older.
    assert_eq!(a.shared.link_state().desired_generation, generation);
    let next = cluster.c().set_desired("survivor-1", vec![]).await.unwrap();
    assert!(next > generation);
    eventually("the newer state is applied", Duration::from_secs(5), || {
        let applied = a.shared.link_state().desired_generation == next;
        async move { applied }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_changes_are_reported_at_once_and_keys_stay_private() {
    let cluster = Cluster::start(Duration::from_secs(10)).await;
    let mut config = cluster.agent_config("changer", Some(cluster.token(Duration::from_secs(600), 1)));
    config.report_interval = Duration::from_secs(30); // only on-change reports would be fast
    config
        .hardware_classes
        .insert("NVIDIA H100 80GB HBM3".into(), "H100-SXM-80GB".into());
    let agent = Agent::start(config).await.unwrap();
    let mut watch = agent.watch();
    tokio::time::timeout(Duration::from_secs(15), watch.wait_for(|s| s.connected))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        cluster.view("changer").accelerators[0].hardware_class,
        "H100-SXM-80GB",
        "operator override applied"
    );
    agent
        .shared
        .set_device_health(1, pyxis_protocol::Health::Unhealthy, "simulated fault");
    eventually("health change visible", Duration::from_secs(3), || {
        let view = cluster.view("changer");
        async move {
            view.accelerators[1].health == "unhealthy"
                && view.accelerators[1].health_reason == "simulated fault"
        }
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    let dir = agent.shared.config.data_dir.join("identity");
    for file in ["ca.pem", "node.pem", "node.key"] {
        let mode = std::fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let admin = cluster.c().shared.config.data_dir.join("admin-token");
    assert_eq!(std::fs::metadata(&admin).unwrap().permissions().mode() & 0o777, 0o600);
    let ca_key = cluster.c().shared.config.data_dir.join("ca.key");
    assert_eq!(std::fs::metadata(&ca_key).unwrap().permissions().mode() & 0o777, 0o600);
    // The admin token is stored hashed, never in clear, in the database.
    let db = std::fs::read(cluster.c().shared.config.data_dir.join("pyxis.db")).unwrap();
    let token = cluster.c().admin_token.clone().unwrap();
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_falls_back_to_the_next_coordinator_address() {
    let cluster = Cluster::start(Duration::from_secs(10)).await;
    // A UDP port with nobody behind it, then the real coordinator.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = cluster.agent_config("fallback", Some(cluster.token(Duration::from_secs(600), 1)));
    config.coordinators = vec![dead.to_string(), cluster.c().quic_addr.to_string()];
    let agent = Agent::start(config).await.unwrap();
    wait_connected(&agent).await;
    assert_eq!(agent.shared.link_state().coordinator, Some(cluster.c().quic_addr));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_ca_files_are_used_instead_of_a_generated_ca() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let material = pyxis_transport::pki::generate_ca("site-ca").unwrap();
    let cert = dir.path().join("site-ca.pem");
    let key = dir.path().join("site-ca.key");
    std::fs::write(&cert, &material.cert_pem).unwrap();
    std::fs::write(&key, &material.key_pem).unwrap();
    let mut config = CoordinatorConfig::local(dir.path().join("data"));
    config.ca_files = Some((cert, key));
    let coordinator = Coordinator::start(config).await.unwrap();
    let der = pyxis_transport::pki::CertificateAuthority::from_pem(&material.cert_pem, &material.key_pem).unwrap();
    assert_eq!(coordinator.shared.ca.hash(), der.hash());
    assert!(
        !dir.path().join("data/ca.pem").exists(),
        "no CA generated when one is configured"
    );
    // An agent pinning the site CA joins.
    let created = coordinator
        .shared
        .create_join_token(Duration::from_secs(60), 1)
        .unwrap();
    let agent = Agent::start(AgentConfig {
        coordinators: vec![coordinator.quic_addr.to_string()],
        join_token: Some(created.token),
        ca_hash: Some(pyxis_transport::pki::parse_ca_hash(&der.hash()).unwrap()),
        data_dir: dir.path().join("agent"),
        name: "site-node".into(),
        metrics_addr: None,
        simulate: None,
        report_interval: Duration::from_millis(100),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        runtimes: Default::default(),
        hardware_classes: Default::default(),
        nvml_library: None,
        gce_metadata_url: pyxis_agent::tpu::DEFAULT_METADATA_URL.into(),
        rocm_library: None,
        host_paths: Default::default(),
        supervisor: Default::default(),
        health: Default::default(),
    })
    .await
    .unwrap();
    wait_connected(&agent).await;
    agent.stop().await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_with_the_same_identity_is_refused() {
    let cluster = Cluster::start(Duration::from_secs(10)).await;
    let first = cluster.join("twin").await;
    // A copy of the data dir, run at the same time: the classic cloned-VM mistake.
    let copy = cluster.dir.path().join("agents/twin-copy");
    std::fs::create_dir_all(copy.join("identity")).unwrap();
    for file in ["ca.pem", "node.pem", "node.key", "node-name"] {
        std::fs::copy(
            first.shared.config.data_dir.join("identity").join(file),
            copy.join("identity").join(file),
        )
        .unwrap();
    }
    let mut config = cluster.agent_config("twin", None);
    config.data_dir = copy;
    config.simulate = Some("1xL4-24GB".into());
    let second = Agent::start(config).await.unwrap();
    wait_for_error(&second, "already connected", Duration::from_secs(10)).await;
    // A fresh join token is no way to take over a live node's name either.
    let mut config = cluster.agent_config("twin", Some(cluster.token(Duration::from_secs(600), 1)));
    config.data_dir = cluster.dir.path().join("agents/twin-impostor");
    let impostor = Agent::start(config).await.unwrap();
    wait_for_error(&impostor, "already connected", Duration::from_secs(10)).await;
    impostor.stop().await;
    // The incumbent keeps the node, and its inventory does not flip.
    all_keep_reporting(&[&first], 5).await;
    assert_eq!(cluster.view("twin").accelerators.len(), 2);
    let (_, body) = cluster.api("GET", "/api/v1/nodes/twin").await;
    assert!(body.contains("DuplicateAgent"), "{body}");
    // When the first goes away, the second takes over.
    first.stop().await;
    wait_connected(&second).await;
    eventually("inventory of the second", Duration::from_secs(5), || {
        let n = cluster.view("twin").accelerators.len();
        async move { n == 1 }
    })
    .await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ca_certificate_is_not_silently_replaced() {
    let cluster = Cluster::start(Duration::from_secs(10)).await;
    let agent = cluster.join("orphan-guard").await;
    agent.stop().await;
    let mut cluster = cluster;
    let coordinator = cluster.coordinator.take().unwrap();
    let config = coordinator.shared.config.clone();
    coordinator.stop().await;
    std::fs::remove_file(config.data_dir.join("ca.pem")).unwrap();
    let err = Coordinator::start(config).await.unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("restore ca.pem"), "{err}");
}

/// What the agent knows about a device beyond its identity (PCI address, architecture,
/// NUMA node, NVLink peers, power limit) and why it is not healthy reach the admin API's
/// node JSON under the documented field names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_details_and_health_reason_reach_the_api() {
    let cluster = Cluster::start(Duration::from_secs(10)).await;
    let agent = cluster.join("detailed").await;
    agent
        .shared
        .set_device_health(1, pyxis_protocol::Health::Unhealthy, "XID 79: fell off the bus");
    let node = || async {
        let (status, body) = cluster.api("GET", "/api/v1/nodes/detailed").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    eventually("the health reason in the API", Duration::from_secs(5), || async {
        node().await["accelerators"][1]["health"] == "unhealthy"
    })
    .await;
    let node = node().await;
    let gpus = node["accelerators"].as_array().unwrap();
    assert_eq!(gpus[1]["health_reason"], "XID 79: fell off the bus", "{node}");
    for (index, gpu) in gpus.iter().enumerate() {
        assert!(gpu["pci_bus_id"].as_str().unwrap().starts_with("0000:"), "{gpu}");
        assert_eq!(gpu["architecture"], "9.0", "{gpu}");
        assert!(gpu["numa_node"].is_u64(), "{gpu}");
        assert_eq!(gpu["power_limit_watts"], 700, "{gpu}");
        let peer = 1 - index;
        assert_eq!(
            gpu["links"],
            serde_json::json!([{"peer": peer, "kind": "nvlink", "lanes": 18}]),
            "{gpu}"
        );
        // Not reported by the simulator: present, and empty.
        for key in ["driver_version", "mig", "ecc", "last_xid", "sm_clock_mhz"] {
            assert!(gpu[key].is_null(), "{key} in {gpu}");
        }
        assert_eq!(
            (&gpu["xid_count"], &gpu["throttle_reasons"]),
            (&serde_json::json!(0), &serde_json::json!([]))
        );
    }
    agent.stop().await;
}
