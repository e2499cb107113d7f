//! Runtime supervision with real processes: a real `pyxis-agent` binary supervises
//! `pyxis-mock-runtime` replicas (launched through the vLLM adapter's real launch line)
//! for a coordinator running in this test. The agent is killed with SIGKILL and restarted,
//! and the coordinator is stopped and restarted; the process table is scanned to show
//! that replicas were never duplicated, never orphaned, and never restarted needlessly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use pyxis_coordinator::{api_types::ReplicaView, config::CoordinatorConfig, server::Coordinator};
use pyxis_protocol::ReplicaSpec;
use pyxis_smoke::{bin, http, llama_server, processes_with, Daemon, Reaper};

async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn replicas(coordinator: &Coordinator) -> BTreeMap<String, ReplicaView> {
    coordinator
        .shared
        .registry()
        .replica_views()
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect()
}

/// Waits until the named replicas are all Ready with their version read (the version is
/// asked once a replica is ready, so it can arrive one report later); returns their views.
async fn all_ready(coordinator: &Coordinator, names: &[&str]) -> BTreeMap<String, ReplicaView> {
    eventually(&format!("{names:?} Ready"), Duration::from_secs(60), || {
        let now = replicas(coordinator);
        let ready = names.iter().all(|n| {
            now.get(*n).is_some_and(|r| {
                r.phase == "Ready" && r.endpoint.is_some() && r.pid.is_some() && r.runtime_version.is_some()
            })
        });
        ready.then_some(now)
    })
    .await
}

fn chat(endpoint: &str) -> (u16, String) {
    let endpoint = endpoint.replace("0.0.0.0", "127.0.0.1");
    http(
        "POST",
        &format!("{endpoint}/chat/completions"),
        None,
        Some(r#"{"model": "smol", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}"#),
    )
}

async fn start_coordinator(config: &CoordinatorConfig) -> Coordinator {
    // After a stop, the UDP port is released once the old endpoint's tasks have ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Coordinator::start(config.clone()).await {
            Ok(coordinator) => return coordinator,
            Err(e) if Instant::now() < deadline => {
                eprintln!("coordinator not started yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot start the coordinator: {e}"),
        }
    }
}

fn agent(config: &Path) -> Daemon {
    let mut cmd = Command::new(bin("pyxis-agent"));
    cmd.arg("--config").arg(config);
    Daemon::spawn("agent", cmd)
}

fn spec(name: &str, gpu: &str, model: &str) -> ReplicaSpec {
    ReplicaSpec {
        name: name.into(),
        deployment: "chat".into(),
        tenant: "research".into(),
        model_name: "smol".into(),
        model_version: "1".into(),
        model_source: model.into(),
        runtime_kind: "vllm".into(),
        gpus: vec![gpu.into()],
        readiness_timeout_ms: 30_000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_agent_kill_and_coordinator_outage_without_duplicates_or_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::local(dir.path().join("coordinator"));
    // These tests set desired states by hand; placement from manifests is placement.rs's.
    config.reconcile = false;
    config.report_interval = Duration::from_millis(200);
    config.liveness_timeout = Duration::from_secs(3);
    let coordinator = start_coordinator(&config).await;
    config.quic_addr = coordinator.quic_addr;
    let token = coordinator
        .shared
        .create_join_token(Duration::from_secs(600), 1)
        .unwrap();
    // The model path is unique to this test: it marks this test's runtime processes.
    let model = dir.path().join("models/smol-135m");
    let marker = model.display().to_string();
    let _reaper = Reaper(marker.clone());
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            r#"coordinators = ["{quic}"]
join_token = "{token}"
ca_hash = "{ca}"
data_dir = "{data}"
name = "rt-1"
# Each test's agent has its own ports: tests run in parallel.
runtime_ports = "21000-21099"
metrics_addr = "127.0.0.1:0"
report_interval = "200ms"
simulate = "2xH100-80GB"
advertise_host = "127.0.0.1"
[runtimes]
vllm = "{mock} --flavor vllm"
"#,
            quic = coordinator.quic_addr,
            token = token.token,
            ca = token.ca_hash,
            data = dir.path().join("agent").display(),
            mock = bin("pyxis-mock-runtime").display(),
        ),
    )
    .unwrap();
    let mut first = agent(&agent_toml);
    let gpus: Vec<String> = eventually("rt-1 registered", Duration::from_secs(20), || {
        let view = coordinator
            .shared
            .registry()
            .view("rt-1", Instant::now(), Duration::from_secs(3))?;
        (view.connected && view.accelerators.len() == 2)
            .then(|| view.accelerators.iter().map(|a| a.uuid.clone()).collect())
    })
    .await;
    let both = vec![spec("chat-0", &gpus[0], &marker), spec("chat-1", &gpus[1], &marker)];
    coordinator.set_desired("rt-1", both.clone()).await.unwrap();
    let ready = all_ready(&coordinator, &["chat-0", "chat-1"]).await;
    let pids: BTreeMap<String, u32> = ready.iter().map(|(n, r)| (n.clone(), r.pid.unwrap())).collect();
    assert_eq!(ready["chat-0"].runtime, "vllm");
    assert_eq!(ready["chat-0"].hardware_class, "H100-80GB");
    assert!(ready["chat-0"].runtime_version.is_some(), "{:?}", ready["chat-0"]);
    let (status, body) = chat(ready["chat-0"].endpoint.as_ref().unwrap());
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("chat.completion"), "{body}");
    assert_eq!(processes_with(&marker).len(), 2, "{:?}", processes_with(&marker));

    // SIGKILL the agent: the runtimes keep serving.
    first.kill();
    let (status, _) = chat(ready["chat-1"].endpoint.as_ref().unwrap());
    assert_eq!(status, 200, "a replica stopped serving when its agent died");
    // Once the node is NotReady, its replicas' phases are Unknown (the last report is only
    // a hint), while the runtimes themselves keep serving.
    let lost = eventually("replicas Unknown on a NotReady node", Duration::from_secs(20), || {
        let now = replicas(&coordinator);
        (now.get("chat-0")?.phase == "Unknown").then_some(now)
    })
    .await;
    assert!(
        lost["chat-0"].reason.contains("last reported Ready"),
        "{:?}",
        lost["chat-0"]
    );
    let (status, _) = chat(ready["chat-0"].endpoint.as_ref().unwrap());
    assert_eq!(status, 200);
    // A new agent adopts them: same processes, no duplicates.
    let _second = agent(&agent_toml);
    let adopted = eventually("replicas re-adopted", Duration::from_secs(30), || {
        let now = replicas(&coordinator);
        let same = pids
            .iter()
            .all(|(n, pid)| now.get(n).is_some_and(|r| r.phase == "Ready" && r.pid == Some(*pid)));
        same.then_some(now)
    })
    .await;
    assert_eq!(adopted["chat-0"].restarts, 0);
    // Phase changes are the replica's events.
    let detail = coordinator.shared.store.events("replica/chat-0", 20).unwrap();
    assert!(detail.iter().any(|e| e.reason == "Ready"), "{detail:?}");
    assert_eq!(processes_with(&marker).len(), 2, "{:?}", processes_with(&marker));

    // The coordinator goes away: replicas keep serving; it comes back: nothing restarts.
    coordinator.stop().await;
    let (status, _) = chat(adopted["chat-0"].endpoint.as_ref().unwrap());
    assert_eq!(status, 200, "a replica stopped serving while the coordinator was down");
    let coordinator = start_coordinator(&config).await;
    let back = all_ready(&coordinator, &["chat-0", "chat-1"]).await;
    for (name, pid) in &pids {
        assert_eq!(back[name].pid, Some(*pid), "{name} was restarted");
    }
    assert_eq!(processes_with(&marker).len(), 2);

    // A replica no longer desired is stopped with its whole process group.
    coordinator.set_desired("rt-1", vec![both[0].clone()]).await.unwrap();
    eventually("chat-1 gone", Duration::from_secs(30), || {
        let left = processes_with(&marker);
        (!left.contains_key(&pids["chat-1"]) && !replicas(&coordinator).contains_key("chat-1")).then_some(())
    })
    .await;
    assert_eq!(
        processes_with(&marker).keys().copied().collect::<Vec<_>>(),
        vec![pids["chat-0"]]
    );
    coordinator.set_desired("rt-1", vec![]).await.unwrap();
    eventually("every runtime stopped", Duration::from_secs(30), || {
        processes_with(&marker).is_empty().then_some(())
    })
    .await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_llama_server_serves_a_chat_completion_under_the_agent() {
    let (server, model) = llama_server();
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::local(dir.path().join("coordinator"));
    // These tests set desired states by hand; placement from manifests is placement.rs's.
    config.reconcile = false;
    config.report_interval = Duration::from_millis(200);
    let coordinator = start_coordinator(&config).await;
    let token = coordinator
        .shared
        .create_join_token(Duration::from_secs(600), 1)
        .unwrap();
    // A per-test copy of the model path marks this test's runtime process.
    let model_link = dir.path().join("smollm2-135m.gguf");
    std::os::unix::fs::symlink(&model, &model_link).unwrap();
    let marker = model_link.display().to_string();
    let _reaper = Reaper(marker.clone());
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            r#"coordinators = ["{quic}"]
join_token = "{token}"
ca_hash = "{ca}"
data_dir = "{data}"
name = "cpu-1"
# Each test's agent has its own ports: tests run in parallel.
runtime_ports = "21100-21199"
metrics_addr = "127.0.0.1:0"
report_interval = "200ms"
simulate = "1xL4-24GB"
advertise_host = "127.0.0.1"
[runtimes]
llama-cpp = "{server}"
"#,
            quic = coordinator.quic_addr,
            token = token.token,
            ca = token.ca_hash,
            data = dir.path().join("agent").display(),
            server = server.display(),
        ),
    )
    .unwrap();
    let agent = agent(&agent_toml);
    eventually("cpu-1 registered", Duration::from_secs(20), || {
        let view = coordinator
            .shared
            .registry()
            .view("cpu-1", Instant::now(), Duration::from_secs(10))?;
        view.connected.then_some(())
    })
    .await;
    let spec = ReplicaSpec {
        name: "smol-0".into(),
        deployment: "smol".into(),
        tenant: "research".into(),
        model_name: "smollm2-135m".into(),
        model_version: "Q4_1".into(),
        model_source: marker.clone(),
        runtime_kind: "llama-cpp".into(),
        runtime_args: vec!["-c".into(), "512".into(), "-t".into(), "2".into()],
        gpus: vec![],
        readiness_timeout_ms: 120_000,
        ..Default::default()
    };
    coordinator.set_desired("cpu-1", vec![spec]).await.unwrap();
    let ready = all_ready(&coordinator, &["smol-0"]).await;
    let replica = &ready["smol-0"];
    assert_eq!(replica.hardware_class, "cpu");
    let version = replica.runtime_version.clone().unwrap_or_default();
    assert!(!version.is_empty(), "no version read from /props: {replica:?}");
    let endpoint = replica.endpoint.clone().unwrap();
    let (status, body) = http(
        "POST",
        &format!("{endpoint}/chat/completions"),
        None,
        Some(r#"{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}"#),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(answer["choices"][0]["message"]["content"].is_string(), "{body}");
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0, "{body}");
    // Its metrics are scraped and normalised: the completion shows in the token counters.
    let metrics = eventually("token metrics", Duration::from_secs(20), || {
        let m = replicas(&coordinator).get("smol-0")?.metrics?;
        (m.generation_tokens_total.unwrap_or(0.0) > 0.0).then_some(m)
    })
    .await;
    assert!(metrics.requests_running.is_some(), "{metrics:?}");
    assert_eq!(processes_with(&marker).len(), 1, "{:?}", processes_with(&marker));
    // Stopping leaves no process behind.
    coordinator.set_desired("cpu-1", vec![]).await.unwrap();
    eventually("llama-server stopped", Duration::from_secs(30), || {
        processes_with(&marker).is_empty().then_some(())
    })
    .await;
    drop(agent);
    coordinator.stop().await;
}

/// Every adapter's real launch line, run by a real agent against the mock runtime's flavour
/// of that runtime: the mock rejects any flag the real CLI does not know (exit 2), answers
/// the runtime's own health, version and metrics endpoints, and the agent must see each
/// replica Ready with its version and (where the runtime exports them) normalised metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_adapter_launches_its_runtime_flavour_and_reads_its_probes() {
    const KINDS: [&str; 7] = ["vllm", "tgi", "sglang", "triton", "trtllm", "ollama", "llama-cpp"];
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::local(dir.path().join("coordinator"));
    // These tests set desired states by hand; placement from manifests is placement.rs's.
    config.reconcile = false;
    config.report_interval = Duration::from_millis(200);
    let coordinator = start_coordinator(&config).await;
    let token = coordinator
        .shared
        .create_join_token(Duration::from_secs(600), 1)
        .unwrap();
    let model = dir.path().join("models/every-kind");
    std::fs::create_dir_all(&model).unwrap();
    let marker = model.display().to_string();
    let _reaper = Reaper(marker.clone());
    let mock = bin("pyxis-mock-runtime");
    let runtimes: String = KINDS
        .iter()
        .map(|kind| format!("{kind} = \"{} --flavor {kind}\"\n", mock.display()))
        .collect();
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            r#"coordinators = ["{quic}"]
join_token = "{token}"
ca_hash = "{ca}"
data_dir = "{data}"
name = "kinds-1"
# Each test's agent has its own ports: tests run in parallel.
runtime_ports = "21200-21299"
metrics_addr = "127.0.0.1:0"
report_interval = "200ms"
simulate = "8xH100-80GB"
advertise_host = "127.0.0.1"
[runtimes]
{runtimes}"#,
            quic = coordinator.quic_addr,
            token = token.token,
            ca = token.ca_hash,
            data = dir.path().join("agent").display(),
        ),
    )
    .unwrap();
    let agent = agent(&agent_toml);
    let gpus: Vec<String> = eventually("kinds-1 registered", Duration::from_secs(20), || {
        let view = coordinator
            .shared
            .registry()
            .view("kinds-1", Instant::now(), Duration::from_secs(10))?;
        (view.connected && view.accelerators.len() == 8)
            .then(|| view.accelerators.iter().map(|a| a.uuid.clone()).collect())
    })
    .await;
    let specs: Vec<ReplicaSpec> = KINDS
        .iter()
        .zip(&gpus)
        .map(|(kind, gpu)| ReplicaSpec {
            runtime_kind: (*kind).into(),
            // Ollama serves models by name; the mock serves the one PYXIS_MOCK_MODEL names.
            env: vec![("PYXIS_MOCK_MODEL".into(), "smol".into())],
            ..spec(&format!("{kind}-0"), gpu, &marker)
        })
        .collect();
    coordinator.set_desired("kinds-1", specs).await.unwrap();
    let names: Vec<String> = KINDS.iter().map(|k| format!("{k}-0")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let ready = all_ready(&coordinator, &name_refs).await;
    for kind in KINDS {
        let replica = &ready[&format!("{kind}-0")];
        assert_eq!(replica.runtime, kind);
        assert_eq!(replica.restarts, 0, "{replica:?}");
        assert!(
            replica.runtime_version.as_deref().is_some_and(|v| !v.is_empty()),
            "{kind}: no version read: {replica:?}"
        );
    }
    // Metrics are scraped every report interval; Ollama exports none.
    eventually(
        "normalised metrics from every runtime that exports them",
        Duration::from_secs(20),
        || {
            let now = replicas(&coordinator);
            KINDS
                .iter()
                .filter(|k| **k != "ollama")
                .all(|k| {
                    now.get(&format!("{k}-0")).is_some_and(|r| {
                        r.metrics
                            .is_some_and(|m| m.requests_running.is_some() || m.requests_waiting.is_some())
                    })
                })
                .then_some(())
        },
    )
    .await;
    // The agent's own metrics about its runtimes pass promtool.
    let metrics_addr = pyxis_smoke::log_field(&agent.wait_for_line("serving /metrics", Duration::from_secs(5)), "addr")
        .unwrap()
        .to_string();
    let (_, exposition) = http("GET", &format!("http://{metrics_addr}/metrics"), None, None);
    for family in [
        "pyxis_runtime_up",
        "pyxis_runtime_restarts_total",
        "pyxis_runtime_phase",
    ] {
        assert!(
            exposition.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{exposition}"
        );
    }
    promtool(&exposition);
    coordinator.set_desired("kinds-1", vec![]).await.unwrap();
    eventually("every runtime stopped", Duration::from_secs(30), || {
        processes_with(&marker).is_empty().then_some(())
    })
    .await;
    coordinator.stop().await;
}

fn promtool(exposition: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
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
