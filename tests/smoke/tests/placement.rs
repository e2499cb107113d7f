//! Placement end to end: manifests applied through the admin API become replicas that
//! real `pyxis-agent` processes (simulated GPUs) run as real `pyxis-mock-runtime`
//! processes, and the coordinator's reconciler (running in this test, through the
//! library) keeps them placed through an agent killed with SIGKILL, a coordinator restart
//! and a drain. The process table, scanned for a marker unique to each test (the model
//! path, inside its tempdir), shows that replicas are never duplicated, never orphaned and
//! never restarted needlessly.
//!
//! Each test walks several steps on one fleet: node-a and node-b with one simulated
//! H100-80GB each, node-c with two. Placement fills the smallest nodes first
//! (bin-packing), so a deployment's first two replicas land on node-a and node-b and
//! node-c is the spare.
//!
//! - `a_killed_agents_replica_moves_within_15s_and_its_stale_copy_stops_when_it_returns`:
//!   apply; `max` replicas Ready, one GPU each; SIGKILL an agent holding one: a
//!   replacement is Ready elsewhere within 15 s (the acceptance bound; the measured time is
//!   printed); the agent restarted on its data dir stops the replica it still runs.
//! - `a_coordinator_restart_moves_nothing_and_a_drain_surges`: apply and scale down (so a
//!   used sequence is no longer placed); restart the coordinator on the same data dir and
//!   address: the same replicas run on the same nodes with the same pids and nothing is
//!   placed; then drain a node: the replacement (with a new name) is Ready before the
//!   drained replica stops, and the deployment never has fewer than `min` Ready replicas.
//!
//! The coordinator runs in the test process: `PYXIS_SMOKE_LOG=1` shows its log on stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use pyxis_coordinator::{
    api_types::{DeploymentStatus, DeploymentView, List, NodeDetail, NodeView, ObjectDetail, ReplicaView},
    config::CoordinatorConfig,
    server::Coordinator,
};
use pyxis_smoke::{bin, eventually, http, processes_with, Daemon, Reaper};

/// The acceptance bound: a replica lost with its node is Ready elsewhere within this.
const REPLACEMENT_BOUND: Duration = Duration::from_secs(15);
/// Generous deadline for things that take a second or two on an idle machine.
const SLOW: Duration = Duration::from_secs(60);
const TENANT: &str = "research";
const DEPLOYMENT: &str = "chat";
const MIN: usize = 2;
/// The fleet: node name and simulated H100-80GB count.
const NODES: [(&str, u32); 3] = [("node-a", 1), ("node-b", 1), ("node-c", 2)];

/// The pids of a test's runtimes.
fn runtime_pids(marker: &str) -> BTreeSet<u32> {
    processes_with(marker).into_keys().collect()
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

/// The admin API of the coordinator running now.
struct Api {
    base: String,
    token: String,
}

impl Api {
    fn of(coordinator: &Coordinator) -> Self {
        Self {
            base: coordinator.api_url(),
            token: coordinator
                .admin_token
                .clone()
                .expect("the coordinator knows its admin token (DATA_DIR/admin-token)"),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        let (status, text) = http(method, &format!("{}{path}", self.base), Some(&self.token), body);
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
    }

    fn get(&self, path: &str) -> serde_json::Value {
        self.call("GET", path, None)
    }

    fn nodes(&self) -> BTreeMap<String, NodeView> {
        let value = self.get("/api/v1/nodes");
        serde_json::from_value::<List<NodeView>>(value.clone())
            .unwrap_or_else(|e| panic!("nodes: unexpected shape ({e}): {value}"))
            .items
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect()
    }

    fn node(&self, name: &str) -> NodeDetail {
        let value = self.get(&format!("/api/v1/nodes/{name}"));
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("node {name}: unexpected shape ({e}): {value}"))
    }

    /// The deployment's replicas as the agents report them, by name.
    fn replicas(&self) -> BTreeMap<String, ReplicaView> {
        let value = self.get(&format!("/api/v1/replicas?namespace={TENANT}"));
        serde_json::from_value::<List<ReplicaView>>(value.clone())
            .unwrap_or_else(|e| panic!("replicas: unexpected shape ({e}): {value}"))
            .items
            .into_iter()
            .filter(|r| r.deployment == DEPLOYMENT)
            .map(|r| (r.name.clone(), r))
            .collect()
    }

    fn deployment(&self) -> ObjectDetail<DeploymentStatus> {
        let value = self.get(&format!("/api/v1/deployments/{DEPLOYMENT}?namespace={TENANT}"));
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("deployment: unexpected shape ({e}): {value}"))
    }

    fn deployments(&self) -> List<DeploymentView> {
        let value = self.get(&format!("/api/v1/deployments?namespace={TENANT}"));
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("deployments: unexpected shape ({e}): {value}"))
    }
}

fn ready(replicas: &BTreeMap<String, ReplicaView>) -> BTreeMap<String, ReplicaView> {
    replicas
        .iter()
        .filter(|(_, r)| r.phase == "Ready" && r.pid.is_some())
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect()
}

/// The replica sequence in a `{deployment}-{sequence}` name.
fn sequence(name: &str) -> u64 {
    name.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("replica name {name:?} does not end in a sequence number"))
}

/// What runs, for comparisons: replica name -> (node, pid, gpus).
type Running = BTreeMap<String, (String, Option<u32>, Vec<String>)>;

fn running(replicas: &BTreeMap<String, ReplicaView>) -> Running {
    replicas
        .iter()
        .map(|(n, r)| (n.clone(), (r.node.clone(), r.pid, r.gpus.clone())))
        .collect()
}

fn pids_of(replicas: &BTreeMap<String, ReplicaView>) -> BTreeSet<u32> {
    replicas.values().map(|r| r.pid.unwrap()).collect()
}

/// Messages of the deployment's `ReplicaPlaced` events.
fn placed_events(detail: &ObjectDetail<DeploymentStatus>) -> Vec<String> {
    detail
        .events
        .iter()
        .filter(|e| e.reason == "ReplicaPlaced")
        .map(|e| e.message.clone())
        .collect()
}

fn condition(status: &DeploymentStatus, kind: &str) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.kind == kind)
        .map_or_else(|| "missing".to_string(), |c| c.status.clone())
}

fn manifests(marker: &str, max: usize) -> String {
    format!(
        r#"apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {{name: {TENANT}}}
spec:
  weight: 1
  guarantee: {{gpus: 2}}
  limit: {{gpus: 4}}
---
apiVersion: pyxis.dev/v1alpha1
kind: HardwareClass
metadata: {{name: h100-sxm}}
spec:
  match: {{vendor: nvidia, model: "H100.*80GB"}}
  pricePerGpuHour: 4.10
  relativeCapacity: 1.0
---
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: {DEPLOYMENT}, namespace: {TENANT}}}
spec:
  model: {{name: smol, version: "1", source: "{marker}"}}
  runtimes:
    # A second to load, so a drain's surge is visible: the old replica must outlive it.
    - {{kind: vllm, env: {{PYXIS_MOCK_STARTUP_MS: "1000"}}}}
  resources: {{gpusPerReplica: 1, hardwareClasses: [h100-sxm]}}
  replicas: {{min: {MIN}, max: {max}}}
  readinessTimeout: 60s
"#
    )
}

/// A coordinator started in the test and three real agents with simulated GPUs.
struct Fleet {
    // Fields drop in this order: agents first (SIGKILL), then the reaper, then the dir.
    agents: BTreeMap<&'static str, Daemon>,
    coordinator: Option<Coordinator>,
    api: Api,
    config: CoordinatorConfig,
    /// The model path: on every runtime's command line, unique to the test.
    marker: String,
    /// GPU uuid -> (node, simulated, hardware class).
    gpus: BTreeMap<String, (String, bool, String)>,
    _reaper: Reaper,
    dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts the coordinator and the agents (runtime ports from `first_port`, 100 per
    /// agent), and waits until every agent has registered with its GPUs. This file's tests
    /// use 22300-22899: runtimes.rs uses 21000-21299, dev mode (cluster.rs, metrics.rs)
    /// 21000-21999, and agents default to 20000-20999.
    async fn start(first_port: u16) -> Self {
        if std::env::var_os("PYXIS_SMOKE_LOG").is_some() {
            pyxis_agent::daemon::init_tracing();
        }
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("models/placement-smol").display().to_string();
        let reaper = Reaper(marker.clone());
        let mut config = CoordinatorConfig::local(dir.path().join("coordinator"));
        config.report_interval = Duration::from_millis(200);
        config.liveness_timeout = Duration::from_secs(3);
        assert!(config.reconcile, "the reconciler places replicas from the manifests");
        let coordinator = start_coordinator(&config).await;
        // A restarted coordinator listens where the agents dial.
        config.quic_addr = coordinator.quic_addr;
        let token = coordinator
            .shared
            .create_join_token(Duration::from_secs(600), NODES.len() as u32)
            .unwrap();
        let mut agents = BTreeMap::new();
        for (i, (name, gpus)) in NODES.iter().enumerate() {
            let ports = first_port + 100 * i as u16;
            std::fs::write(
                dir.path().join(format!("{name}.toml")),
                format!(
                    r#"coordinators = ["{quic}"]
join_token = "{token}"
ca_hash = "{ca}"
data_dir = "{data}"
name = "{name}"
# Each agent has its own ports: tests and agents run in parallel.
runtime_ports = "{ports}-{last}"
runtime_host = "127.0.0.1"
metrics_addr = "127.0.0.1:0"
report_interval = "200ms"
simulate = "{gpus}xH100-80GB"
advertise_host = "127.0.0.1"
[runtimes]
vllm = "{mock} --flavor vllm"
"#,
                    quic = coordinator.quic_addr,
                    token = token.token,
                    ca = token.ca_hash,
                    data = dir.path().join(name).display(),
                    last = ports + 99,
                    mock = bin("pyxis-mock-runtime").display(),
                ),
            )
            .unwrap();
            agents.insert(*name, agent(dir.path(), name));
        }
        let api = Api::of(&coordinator);
        let nodes = eventually("three agents registered with their GPUs", SLOW, || {
            let nodes = api.nodes();
            NODES
                .iter()
                .all(|(name, gpus)| {
                    nodes.get(*name).is_some_and(|n| {
                        n.status == "Ready"
                            && n.connected
                            && n.accelerators.len() == *gpus as usize
                            && n.runtimes.iter().any(|r| r == "vllm")
                    })
                })
                .then(|| nodes.clone())
                .ok_or_else(|| format!("{nodes:#?}"))
        })
        .await;
        let gpus: BTreeMap<String, (String, bool, String)> = nodes
            .values()
            .flat_map(|n| {
                n.accelerators
                    .iter()
                    .map(|a| (a.uuid.clone(), (n.name.clone(), a.simulated, a.hardware_class.clone())))
            })
            .collect();
        assert_eq!(gpus.len(), 4, "four distinct GPU uuids in the fleet: {gpus:?}");
        Self {
            agents,
            coordinator: Some(coordinator),
            api,
            config,
            marker,
            gpus,
            _reaper: reaper,
            dir,
        }
    }

    fn coordinator(&self) -> &Coordinator {
        self.coordinator.as_ref().unwrap()
    }

    fn passes(&self) -> u64 {
        self.coordinator().shared.placement_state().passes
    }

    fn runtime_pids(&self) -> BTreeSet<u32> {
        runtime_pids(&self.marker)
    }

    /// What the fleet looks like now, for failure messages.
    fn snapshot(&self) -> String {
        let mut text = String::new();
        for n in self.api.nodes().values() {
            text.push_str(&format!(
                "node {} {} connected={} reason={:?}\n",
                n.name, n.status, n.connected, n.reason
            ));
        }
        for r in self.api.replicas().values() {
            text.push_str(&format!(
                "replica {} on {} {} pid={:?} gpus={:?} reason={:?}\n",
                r.name, r.node, r.phase, r.pid, r.gpus, r.reason
            ));
        }
        let (status, body) = http(
            "GET",
            &format!("{}/api/v1/deployments/{DEPLOYMENT}?namespace={TENANT}", self.api.base),
            Some(&self.api.token),
            None,
        );
        match serde_json::from_str::<ObjectDetail<DeploymentStatus>>(&body) {
            Ok(detail) => {
                let status = &detail.object.status;
                text.push_str(&format!(
                    "status {:?}\nplacements {:?}\nconditions {:?}\n",
                    status.replicas, status.placements, status.conditions
                ));
                for e in &detail.events {
                    text.push_str(&format!("event {} {}: {}\n", e.time, e.reason, e.message));
                }
            }
            Err(_) => text.push_str(&format!("deployment: {status} {body}\n")),
        }
        text.push_str(&format!("runtime processes {:?}\n", processes_with(&self.marker)));
        text
    }

    /// Applies the tenant, the class and the deployment with `max` replicas; returns
    /// (kind, action) of each object.
    fn apply(&self, max: usize) -> Vec<(String, String)> {
        let body = serde_json::json!({"sources": [{"name": "placement.yaml", "text": manifests(&self.marker, max)}]});
        let applied = self.api.call("POST", "/api/v1/apply", Some(&body.to_string()));
        applied["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{applied}"))
            .iter()
            .map(|i| (i["kind"].as_str().unwrap().into(), i["action"].as_str().unwrap().into()))
            .collect()
    }

    /// Waits until the deployment has exactly `count` replicas, all Ready, and its status
    /// agrees (placed = ready = `count`, nothing pending); returns them.
    async fn settled(&self, count: usize, what: &str) -> BTreeMap<String, ReplicaView> {
        eventually(what, SLOW, || {
            let replicas = self.api.replicas();
            let ready = ready(&replicas);
            if ready.len() != count || replicas.len() != count {
                return Err(self.snapshot());
            }
            let status = self.api.deployment().object.status;
            let counts = &status.replicas;
            let placed: BTreeSet<&str> = status.placements.iter().map(|p| p.name.as_str()).collect();
            let same = placed == ready.keys().map(String::as_str).collect();
            (same && counts.placed as usize == count && counts.ready as usize == count && counts.pending == 0)
                .then_some(replicas)
                .ok_or_else(|| self.snapshot())
        })
        .await
    }

    /// Checks what `settled` returned: one simulated H100-80GB each, never one GPU twice,
    /// on the replica's own node, and exactly these runtimes in the process table.
    fn check_placed(&self, replicas: &BTreeMap<String, ReplicaView>) {
        let mut held = BTreeSet::new();
        for r in replicas.values() {
            assert_eq!(r.gpus.len(), 1, "gpusPerReplica is 1: {r:?}");
            let gpu = &r.gpus[0];
            assert!(held.insert(gpu.clone()), "GPU {gpu} given twice: {replicas:?}");
            let (node, simulated, class) = self
                .gpus
                .get(gpu)
                .unwrap_or_else(|| panic!("{r:?} holds an unknown GPU"));
            assert_eq!(node, &r.node, "{r:?} holds a GPU of another node");
            assert!(simulated, "{r:?} is on a GPU not reported as simulated");
            assert_eq!(class, "H100-80GB", "the class its agent derived");
            // A device takes the first HardwareClass whose rules fit it.
            assert_eq!(r.hardware_class, "h100-sxm", "{r:?}");
            assert_eq!(r.runtime, "vllm", "{r:?}");
        }
        assert_eq!(
            self.runtime_pids(),
            pids_of(replicas),
            "the process table holds exactly the reported runtimes: {:?}",
            processes_with(&self.marker)
        );
    }

    /// Waits until every agent is connected and its node Ready; returns the placement
    /// passes run by then.
    async fn all_connected(&self, what: &str) -> u64 {
        eventually(what, SLOW, || {
            let nodes = self.api.nodes();
            NODES
                .iter()
                .all(|(name, _)| nodes.get(*name).is_some_and(|n| n.connected && n.status == "Ready"))
                .then(|| self.passes())
                .ok_or_else(|| self.snapshot())
        })
        .await
    }

    /// Deleting the deployment stops every runtime; then the agents and the coordinator
    /// stop.
    async fn shut_down(mut self) {
        self.api.call(
            "DELETE",
            &format!("/api/v1/deployments/{DEPLOYMENT}?namespace={TENANT}"),
            None,
        );
        eventually("every runtime stopped after the delete", SLOW, || {
            self.runtime_pids()
                .is_empty()
                .then_some(())
                .ok_or_else(|| self.snapshot())
        })
        .await;
        for agent in self.agents.values_mut() {
            assert!(agent.terminate(Duration::from_secs(20)).success());
        }
        self.coordinator.take().unwrap().stop().await;
        assert!(self.dir.path().exists());
    }
}

fn agent(dir: &Path, name: &str) -> Daemon {
    let mut cmd = Command::new(bin("pyxis-agent"));
    cmd.arg("--config").arg(dir.join(format!("{name}.toml")));
    Daemon::spawn(name, cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_killed_agents_replica_moves_within_15s_and_its_stale_copy_stops_when_it_returns() {
    const MAX: usize = 2;
    let started = Instant::now();
    let mut fleet = Fleet::start(22300).await;

    // 1. Apply: the deployment's replicas run, one simulated GPU each.
    assert_eq!(
        fleet.apply(MAX),
        [
            ("Tenant", "created"),
            ("HardwareClass", "created"),
            ("ModelDeployment", "created")
        ]
        .map(|(k, a)| (k.to_string(), a.to_string()))
    );
    let first = fleet.settled(MAX, "the applied deployment's replicas Ready").await;
    fleet.check_placed(&first);
    assert!(first.values().all(|r| r.restarts == 0), "{first:?}");
    let on: BTreeSet<&str> = first.values().map(|r| r.node.as_str()).collect();
    assert_eq!(
        on,
        BTreeSet::from(["node-a", "node-b"]),
        "bin-packing fills the one-GPU nodes first: {first:?}"
    );
    let classes: BTreeSet<String> = fleet
        .api
        .nodes()
        .values()
        .flat_map(|n| n.accelerators.iter().map(|a| a.hardware_class.clone()))
        .collect();
    assert_eq!(
        classes,
        BTreeSet::from(["h100-sxm".to_string()]),
        "nodes show the effective class"
    );
    let detail = fleet.api.deployment();
    let status = &detail.object.status;
    assert_eq!((status.replicas.placed, status.replicas.ready), (2, 2), "{status:?}");
    assert_eq!(condition(status, "Available"), "True", "{status:?}");
    assert_eq!(condition(status, "Placed"), "True", "{status:?}");
    assert_eq!(placed_events(&detail).len(), MAX, "{:?}", detail.events);
    assert_eq!(fleet.runtime_pids().len(), MAX, "{:?}", processes_with(&fleet.marker));

    // 2. SIGKILL the agent holding the first replica: the replica moves within the bound.
    let lost = first.values().next().unwrap().clone();
    let survivor = first.values().find(|r| r.name != lost.name).unwrap().clone();
    let killed = lost.node.clone();
    let killed_at = Instant::now();
    fleet.agents.get_mut(killed.as_str()).unwrap().kill();
    let replacement = eventually(
        &format!("a replacement for {} Ready on another node", lost.name),
        SLOW,
        || {
            ready(&fleet.api.replicas())
                .into_values()
                .find(|r| !first.contains_key(&r.name) && r.node != killed)
                .ok_or_else(|| fleet.snapshot())
        },
    )
    .await;
    let moved_in = killed_at.elapsed();
    println!(
        "replacement {} Ready on {} {:.2} s after the agent of {killed} was killed (bound {} s, liveness timeout {:?})",
        replacement.name,
        replacement.node,
        moved_in.as_secs_f64(),
        REPLACEMENT_BOUND.as_secs(),
        fleet.config.liveness_timeout
    );
    assert!(
        moved_in <= REPLACEMENT_BOUND,
        "the replacement for {} took {moved_in:?} after the kill, more than {REPLACEMENT_BOUND:?}",
        lost.name
    );
    assert_ne!(
        replacement.gpus, survivor.gpus,
        "the replacement took a GPU already held"
    );
    assert_eq!(fleet.gpus[&replacement.gpus[0]].0, replacement.node);
    assert!(
        sequence(&replacement.name) > first.keys().map(|n| sequence(n)).max().unwrap(),
        "{} reuses a sequence",
        replacement.name
    );
    let detail = fleet.api.deployment();
    assert!(
        detail.events.iter().any(|e| e.reason == "ReplicaPlaced"
            && e.message.contains(&replacement.name)
            && e.message.contains(&format!("replacing {}", lost.name))),
        "no ReplicaPlaced event says {} replaces {}: {:#?}",
        replacement.name,
        lost.name,
        detail.events
    );
    // The lost replica keeps running without its agent (agents leave runtimes running).
    let kept: BTreeSet<u32> = [survivor.pid.unwrap(), replacement.pid.unwrap()].into();
    let now = fleet.runtime_pids();
    assert!(
        now.contains(&lost.pid.unwrap()) && kept.is_subset(&now),
        "{}",
        fleet.snapshot()
    );

    // The agent comes back on its data dir: once it has the desired state that no longer
    // names the lost replica, it stops it; the other two keep running untouched.
    let name = NODES.iter().map(|(n, _)| *n).find(|n| *n == killed).unwrap();
    fleet.agents.insert(name, agent(fleet.dir.path(), name));
    eventually(
        &format!(
            "{killed} back and {} stopped, leaving exactly {MAX} runtimes",
            lost.name
        ),
        SLOW,
        || {
            let pids = fleet.runtime_pids();
            assert!(
                kept.is_subset(&pids),
                "when {killed} reconnected, a replica that should have kept running was stopped: \
                 {} (pid {:?}) and {} (pid {:?}) should keep running and only the stale {} on {killed} \
                 should stop. (Seen before: the coordinator adopted the stale {} that the returning agent still \
                 reported, though it had been replaced, and stopped the newest replica as above max; see the \
                 ReplicaAdopted event.)\n{}\n{killed} log:\n{}",
                survivor.name,
                survivor.pid,
                replacement.name,
                replacement.pid,
                lost.name,
                lost.name,
                fleet.snapshot(),
                fleet.agents[name].tail()
            );
            let back = fleet
                .api
                .nodes()
                .get(&killed)
                .is_some_and(|n| n.connected && n.status == "Ready");
            (back && pids == kept && !fleet.api.replicas().contains_key(&lost.name))
                .then_some(())
                .ok_or_else(|| format!("{}\n{killed} log:\n{}", fleet.snapshot(), fleet.agents[name].tail()))
        },
    )
    .await;
    let after = fleet
        .settled(MAX, "the deployment settled after the agent restart")
        .await;
    assert_eq!(
        running(&after),
        running(
            &[survivor.clone(), replacement.clone()]
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect()
        ),
        "replicas moved or restarted after {killed} came back:\n{}",
        fleet.snapshot()
    );
    assert_eq!(fleet.runtime_pids(), kept, "{}", fleet.snapshot());
    let detail = fleet.api.deployment();
    assert!(
        !detail.events.iter().any(|e| e.reason == "ReplicaAdopted"),
        "the coordinator adopted a replica it had replaced: {:#?}",
        detail.events
    );

    // 3. Usage: the GPU time of the replicas that ran, per tenant and effective class,
    // priced by the class (flushed to the store every 10 s; the API adds what is not yet).
    let usage = eventually("GPU time accounted", SLOW, || {
        let usage = fleet.api.get("/api/v1/usage?since=1h");
        let rows = usage["items"].as_array().cloned().unwrap_or_default();
        rows.iter()
            .find(|r| r["tenant"] == TENANT && r["hardware_class"] == "h100-sxm")
            .filter(|r| r["gpu_seconds"].as_f64().unwrap_or(0.0) > 1.0)
            .cloned()
            .ok_or_else(|| usage.to_string())
    })
    .await;
    let seconds = usage["gpu_seconds"].as_f64().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        seconds <= 3.0 * elapsed,
        "at most 3 replicas ran during the test's {elapsed:.1} s: {usage}"
    );
    assert_eq!(usage["price_per_gpu_hour"].as_f64(), Some(4.10), "{usage}");
    let cost = usage["cost"].as_f64().unwrap();
    assert!((cost - seconds / 3600.0 * 4.10).abs() < 1e-9, "{usage}");

    fleet.shut_down().await;
    println!(
        "a_killed_agents_replica_moves...: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_coordinator_restart_moves_nothing_and_a_drain_surges() {
    let started = Instant::now();
    let mut fleet = Fleet::start(22600).await;

    // Three replicas, then two: the newest (highest sequence) is stopped, so the highest
    // sequence used is no longer placed when the coordinator restarts.
    fleet.apply(3);
    let three = fleet.settled(3, "three replicas Ready").await;
    fleet.check_placed(&three);
    let used_max = three.keys().map(|n| sequence(n)).max().unwrap();
    let actions = fleet.apply(2);
    assert!(
        actions.contains(&("ModelDeployment".into(), "configured".into())),
        "{actions:?}"
    );
    let two = fleet.settled(2, "two replicas Ready after scaling down").await;
    fleet.check_placed(&two);
    assert!(
        !two.keys().any(|n| sequence(n) == used_max),
        "scaling down stops the newest replica: {two:?}"
    );
    assert!(
        three.keys().collect::<BTreeSet<_>>().is_superset(&two.keys().collect()),
        "scaling down moved replicas: {three:?} -> {two:?}"
    );

    // 3. Restart the coordinator on the same data dir and address: nothing moves. Agents
    // come back in whatever order their reconnect backoff gives; to make the order
    // deterministic (and the worst case), the agents holding replicas are paused
    // (SIGSTOP) while the coordinator restarts, and resumed once the node with free GPUs
    // has reconnected and a placement pass has seen it: well within the liveness timeout,
    // so the restarted coordinator must not treat the late nodes as lost and re-place
    // their replicas on the free GPUs.
    let before = running(&two);
    let expected = pids_of(&two);
    let placed_before = placed_events(&fleet.api.deployment());
    let holders: BTreeSet<String> = two.values().map(|r| r.node.clone()).collect();
    let spares: Vec<&str> = NODES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !holders.contains(*n))
        .collect();
    assert!(!spares.is_empty(), "a node with free GPUs: {two:?}");
    for node in &holders {
        fleet.agents[node.as_str()].signal("STOP");
    }
    fleet.coordinator.take().unwrap().stop().await;
    // The runtimes keep serving while the coordinator is away.
    assert_eq!(fleet.runtime_pids(), expected);
    let restarted_at = Instant::now();
    let coordinator = start_coordinator(&fleet.config).await;
    fleet.api = Api::of(&coordinator);
    fleet.coordinator = Some(coordinator);
    let spares_back = eventually("the spare nodes reconnected to the new coordinator", SLOW, || {
        let nodes = fleet.api.nodes();
        spares
            .iter()
            .all(|name| nodes.get(*name).is_some_and(|n| n.connected && n.status == "Ready"))
            .then(|| fleet.passes())
            .ok_or_else(|| fleet.snapshot())
    })
    .await;
    // A coordinator may also hold placement back for a while after a start: then half the
    // liveness timeout is as long as the late nodes stay away.
    let half_liveness = fleet.config.liveness_timeout / 2;
    eventually("a placement pass with the spare nodes back", SLOW, || {
        let passes = fleet.passes();
        (passes > spares_back || restarted_at.elapsed() >= half_liveness)
            .then_some(())
            .ok_or_else(|| format!("{passes} passes"))
    })
    .await;
    let paused_for = restarted_at.elapsed();
    for node in &holders {
        fleet.agents[node.as_str()].signal("CONT");
    }
    println!(
        "coordinator restart: {holders:?} resumed {:.2} s after the new coordinator started (liveness timeout {:?})",
        paused_for.as_secs_f64(),
        fleet.config.liveness_timeout
    );
    let passes_with_fleet = fleet
        .all_connected("every agent reconnected to the new coordinator")
        .await;
    let back = fleet.settled(2, "the replicas Ready under the new coordinator").await;
    // A few placement passes with every node back: any re-placement would show by now.
    eventually("three placement passes with the fleet back", SLOW, || {
        let passes = fleet.passes();
        (passes >= passes_with_fleet + 3)
            .then_some(())
            .ok_or_else(|| format!("{passes} passes"))
    })
    .await;
    let still = fleet.settled(2, "the replicas still Ready").await;
    let detail = fleet.api.deployment();
    let new_placements: Vec<String> = placed_events(&detail)
        .into_iter()
        .filter(|m| !placed_before.contains(m))
        .collect();
    assert!(
        new_placements.is_empty(),
        "the restarted coordinator placed replicas although every node came back {:.2} s after it started \
         (liveness timeout {:?}): {new_placements:?}\nbefore the restart: {before:?}\n{}",
        paused_for.as_secs_f64(),
        fleet.config.liveness_timeout,
        fleet.snapshot()
    );
    assert_eq!(
        running(&back),
        before,
        "replicas moved or restarted across the coordinator restart"
    );
    assert_eq!(
        running(&still),
        before,
        "replicas moved or restarted after the coordinator restart"
    );
    assert_eq!(
        fleet.runtime_pids(),
        expected,
        "runtimes duplicated or restarted: {:?}",
        processes_with(&fleet.marker)
    );
    let placed_now: BTreeSet<String> = detail.object.status.placements.iter().map(|p| p.name.clone()).collect();
    assert_eq!(placed_now, before.keys().cloned().collect::<BTreeSet<_>>());
    let listed = fleet.api.deployments();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|d| (d.metadata.name.as_str(), d.metadata.generation))
            .collect::<Vec<_>>(),
        vec![(DEPLOYMENT, 2)],
        "the applied deployment (generation 2 after the scale-down) is not listed after the restart"
    );
    for kind in ["tenants", "hardwareclasses"] {
        let list = fleet.api.get(&format!("/api/v1/{kind}"));
        assert_eq!(
            list["items"].as_array().map(Vec::len),
            Some(1),
            "{kind} after the restart: {list}"
        );
    }

    // 3b. A store restored from a backup taken before these replicas were placed: no
    // desired state names them and the stored sequence is older. The agents report them,
    // the coordinator adopts them (an event says so), and nothing is placed twice.
    fleet.coordinator.take().unwrap().stop().await;
    {
        let store = pyxis_coordinator::store::Store::open(&fleet.config.data_dir.join("pyxis.db")).unwrap();
        for (node, _) in NODES {
            store.put_desired_state(node, 1, "[]").unwrap();
        }
        store.set_meta("placement_next_sequence", "1").unwrap();
    }
    let coordinator = start_coordinator(&fleet.config).await;
    fleet.api = Api::of(&coordinator);
    fleet.coordinator = Some(coordinator);
    let passes_with_fleet = fleet.all_connected("every agent back after the restore").await;
    eventually("three placement passes after the restore", SLOW, || {
        let passes = fleet.passes();
        (passes >= passes_with_fleet + 3)
            .then_some(())
            .ok_or_else(|| format!("{passes} passes"))
    })
    .await;
    let adopted = fleet.settled(2, "the adopted replicas Ready").await;
    assert_eq!(running(&adopted), before, "adoption moved or restarted replicas");
    assert_eq!(fleet.runtime_pids(), expected, "{:?}", processes_with(&fleet.marker));
    let events = fleet.api.deployment().events;
    let adoptions = events.iter().filter(|e| e.reason == "ReplicaAdopted").count();
    assert_eq!(adoptions, 2, "{events:?}");
    let still = adopted;

    // 4. Drain a node holding a replica: the replacement is Ready before the drained
    // replica stops, and at no point are fewer than `min` replicas Ready.
    let drained = still.values().next().unwrap().clone();
    let drained_pid = drained.pid.unwrap();
    assert_eq!(fleet.api.node(&drained.node).node.status, "Ready");
    let response = fleet
        .api
        .call("POST", &format!("/api/v1/nodes/{}/drain", drained.node), None);
    assert_eq!(response["status"], "Draining", "{response}");
    let drain_started = Instant::now();
    let mut fewest_ready = usize::MAX;
    let mut status_fewest_ready = u32::MAX;
    let mut status_unavailable = Vec::new();
    let mut replacement_ready: Option<(ReplicaView, Duration)> = None;
    let mut surged = false;
    let stopped_after = loop {
        assert!(
            drain_started.elapsed() < SLOW,
            "the drain did not finish in {SLOW:?}:\n{}",
            fleet.snapshot()
        );
        // The process table first: if the drained runtime is gone here, its replacement
        // was Ready before, so the API read next must show it Ready.
        let pids = fleet.runtime_pids();
        let replicas = fleet.api.replicas();
        let now_ready = ready(&replicas);
        fewest_ready = fewest_ready.min(now_ready.len());
        assert!(
            now_ready.len() >= MIN,
            "only {} Ready replicas during the drain (min {MIN}):\n{}",
            now_ready.len(),
            fleet.snapshot()
        );
        let status = fleet.api.deployment().object.status;
        status_fewest_ready = status_fewest_ready.min(status.replicas.ready);
        if condition(&status, "Available") != "True" {
            status_unavailable.push(format!("{:?} {:?}", status.replicas, status.conditions));
        }
        let new = replicas
            .values()
            .find(|r| !still.contains_key(&r.name) && r.node != drained.node);
        if let Some(new) = new {
            if pids.contains(&drained_pid) && new.phase != "Ready" {
                // The replacement is starting while the drained replica still runs.
                surged = true;
            }
            if new.phase == "Ready" && replacement_ready.is_none() {
                replacement_ready = Some((new.clone(), drain_started.elapsed()));
            }
        }
        if !pids.contains(&drained_pid) {
            assert!(
                replacement_ready.is_some(),
                "the drained replica {} stopped before its replacement was Ready:\n{}",
                drained.name,
                fleet.snapshot()
            );
            break drain_started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (new, ready_after) = replacement_ready.unwrap();
    println!(
        "drain of {}: replacement {} on {} Ready after {:.2} s, {} stopped after {:.2} s; \
         fewest Ready replicas {fewest_ready}, fewest ready in the deployment status {status_fewest_ready}",
        drained.node,
        new.name,
        new.node,
        ready_after.as_secs_f64(),
        drained.name,
        stopped_after.as_secs_f64()
    );
    assert!(
        surged,
        "never saw the replacement starting while the drained replica ran"
    );
    assert_ne!(new.node, drained.node);
    // After the restore the coordinator knows only the sequences it adopted: a new name
    // comes after those (names used only before the backup cannot be known).
    let adopted_max = still.keys().map(|n| sequence(n)).max().unwrap();
    assert!(
        sequence(&new.name) > adopted_max,
        "the replacement {} reuses a sequence of a running replica (up to {adopted_max})",
        new.name
    );
    let detail = fleet.api.deployment();
    assert!(
        detail.events.iter().any(|e| e.reason == "ReplicaPlaced"
            && e.message.contains(&new.name)
            && e.message.contains(&format!("replacing {}", drained.name))),
        "{:#?}",
        detail.events
    );
    assert!(
        detail.events.iter().any(|e| e.reason == "SurgeComplete"),
        "{:#?}",
        detail.events
    );
    let after = fleet.settled(2, "the deployment settled after the drain").await;
    fleet.check_placed(&after);
    let mut want: BTreeSet<String> = still.keys().filter(|n| **n != drained.name).cloned().collect();
    want.insert(new.name.clone());
    assert_eq!(after.keys().cloned().collect::<BTreeSet<_>>(), want);
    for (name, r) in &still {
        if *name != drained.name {
            assert_eq!(after[name].pid, r.pid, "{name} was restarted by the drain");
        }
    }
    assert!(
        status_unavailable.is_empty(),
        "the deployment status said Available False during a surged drain although at least {fewest_ready} \
         replicas were Ready all along (the status's ready count fell to {status_fewest_ready}): \
         {status_unavailable:#?}"
    );

    fleet.shut_down().await;
    println!(
        "a_coordinator_restart_moves_nothing_and_a_drain_surges: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
