//! The runtime supervisor against real processes: `sh` scripts and `sleep` stand in for
//! runtimes (through a test adapter, `ScriptAdapter`), readiness is a file the script
//! writes (answered by `FileGet`, an injected probe client) or, in one test, a real HTTP
//! server (`python3 -m http.server`) probed over HTTP. Every test has its own data
//! directory and port range, waits by polling with a deadline, and checks `/proc` for
//! what is left of a process group.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use pyxis_agent::runtime::{
    ledger,
    probe::{HttpAnswer, HttpGet, HyperGet, ProbeError, ProbeFuture},
    process,
    replica::Timing,
    supervisor::{Supervisor, SupervisorConfig, SupervisorContext},
    Adapter, AdapterError, AssignedDevice, Endpoints, LaunchContext, LaunchPlan, Probe,
};
use pyxis_protocol::{DesiredState, ReplicaPhase, ReplicaSpec, ReplicaStatus, RuntimeMetrics, Vendor};

/// Runs `spec.runtime_args[0]` with the configured command (`sh -c`), in the replica's
/// directory. Probes read files under `DATA_DIR/replicas/NAME/`: `ready` (readiness and
/// liveness), `version` and `metrics` (`running N`).
#[derive(Debug)]
struct ScriptAdapter;

impl Adapter for ScriptAdapter {
    fn kind(&self) -> &'static str {
        "script"
    }

    fn launch(&self, ctx: &LaunchContext<'_>) -> Result<LaunchPlan, AdapterError> {
        let script = ctx.spec.runtime_args.first().ok_or_else(|| AdapterError::Invalid {
            kind: "script",
            reason: "no script".into(),
        })?;
        let (program, fixed) = ctx.command.split_first().ok_or_else(|| AdapterError::Invalid {
            kind: "script",
            reason: "no command".into(),
        })?;
        let mut args = fixed.to_vec();
        args.push(script.clone());
        let visible: Vec<&str> = ctx.devices.iter().map(|d| d.uuid.as_str()).collect();
        let mut env = vec![
            ("PORT".to_string(), ctx.ports[0].to_string()),
            ("HOST".to_string(), ctx.host.to_string()),
            ("CUDA_VISIBLE_DEVICES".to_string(), visible.join(",")),
        ];
        // As the real adapters do: the spec's environment is part of the plan.
        env.extend(ctx.spec.env.iter().cloned());
        Ok(LaunchPlan {
            program: program.clone(),
            args,
            env,
        })
    }

    fn endpoints(&self, spec: &ReplicaSpec) -> Endpoints {
        let at = |file: &str| Probe {
            port_index: 0,
            path: format!("/{}/{file}", spec.name),
        };
        Endpoints {
            readiness: at("ready"),
            liveness: at("ready"),
            version: Some(at("version")),
            metrics: Some(at("metrics")),
            openai_path: "/v1".into(),
        }
    }

    fn version(&self, body: &str) -> Option<String> {
        Some(body.trim().to_string()).filter(|v| !v.is_empty())
    }

    fn metrics(&self, body: &str) -> RuntimeMetrics {
        RuntimeMetrics {
            requests_running: body
                .lines()
                .find_map(|l| l.strip_prefix("running "))
                .and_then(|v| v.trim().parse().ok()),
            ..RuntimeMetrics::default()
        }
    }
}

/// Answers a probe from the file its path names under the replicas directory; a missing
/// file is a refused connection, as a runtime that is still loading gives.
#[derive(Debug)]
struct FileGet {
    root: PathBuf,
}

impl HttpGet for FileGet {
    fn get(&self, url: String, _timeout: Duration) -> ProbeFuture {
        let path = url
            .strip_prefix("http://")
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, path)| self.root.join(path));
        Box::pin(async move {
            match path.map(std::fs::read_to_string) {
                Some(Ok(body)) => Ok(HttpAnswer { status: 200, body }),
                _ => Err(ProbeError::Failed("connection refused".into())),
            }
        })
    }
}

struct Harness {
    dir: tempfile::TempDir,
    ports: (u16, u16),
}

impl Harness {
    /// `slot` gives each test its own port range.
    fn new(slot: u16) -> Self {
        let first = 31000 + slot * 100;
        Self {
            dir: tempfile::tempdir().unwrap(),
            ports: (first, first + 99),
        }
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn replica_dir(&self, name: &str) -> PathBuf {
        self.data_dir().join("replicas").join(name)
    }

    fn config(&self) -> SupervisorConfig {
        SupervisorConfig {
            runtime_ports: self.ports,
            runtime_host: "127.0.0.1".parse().unwrap(),
            advertise_host: None,
            stop_grace_period: Duration::from_secs(2),
            log_max_bytes: 64 * 1024,
            log_check_interval: Duration::from_millis(100),
            cgroup_root: Some(PathBuf::from("/sys/fs/cgroup")),
            timing: Timing {
                restart_backoff_min: Duration::from_millis(200),
                restart_backoff_max: Duration::from_secs(2),
                backoff_reset_after: Duration::from_secs(600),
                crash_loop_after: 3,
                readiness_interval: Duration::from_millis(50),
                default_readiness_timeout: Duration::from_secs(10),
                liveness_interval: Duration::from_millis(100),
                liveness_failures: 3,
                metrics_interval: Duration::from_millis(100),
                resource_retry: Duration::from_millis(200),
            },
        }
    }

    fn context(&self, http: Arc<dyn HttpGet>) -> SupervisorContext {
        SupervisorContext {
            data_dir: self.data_dir().to_path_buf(),
            commands: BTreeMap::from([("script".to_string(), "sh -c".to_string())]),
            devices: vec![AssignedDevice {
                uuid: "GPU-test-0".into(),
                index: 0,
                vendor: Vendor::Nvidia,
            }],
            advertise_host: "node-a".into(),
            adapters: Arc::new(|kind: &str| (kind == "script").then(|| Arc::new(ScriptAdapter) as Arc<dyn Adapter>)),
            http,
        }
    }

    fn start_with(&self, config: SupervisorConfig) -> Supervisor {
        let http = Arc::new(FileGet {
            root: self.data_dir().join("replicas"),
        });
        Supervisor::start(config, self.context(http)).unwrap()
    }

    fn start(&self) -> Supervisor {
        self.start_with(self.config())
    }

    fn ledger(&self) -> ledger::Ledger {
        ledger::load(self.data_dir()).unwrap().ledger
    }
}

/// Dropping a supervisor leaves its runtimes running (by design); a test that fails half
/// way must not leave them behind, so whatever the ledger still lists is killed.
impl Drop for Harness {
    fn drop(&mut self) {
        if let Ok(loaded) = ledger::load(self.data_dir()) {
            for record in loaded.ledger.processes.values() {
                if process::is_running(record.pid, record.start_time) {
                    let _ = process::signal_group(record.pgid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

fn spec(name: &str, script: &str) -> ReplicaSpec {
    ReplicaSpec {
        name: name.into(),
        deployment: "chat".into(),
        tenant: "research".into(),
        model_name: "m".into(),
        model_version: "1".into(),
        model_source: "/models/m".into(),
        runtime_kind: "script".into(),
        runtime_args: vec![script.into()],
        gpus: vec!["GPU-test-0".into()],
        env: vec![],
        readiness_timeout_ms: 0,
        custom: None,
    }
}

fn desired(generation: u64, replicas: Vec<ReplicaSpec>) -> DesiredState {
    DesiredState { generation, replicas }
}

/// Polls `check` until it returns something, or fails after `within` with the last statuses.
async fn eventually<T>(
    supervisor: &Supervisor,
    within: Duration,
    what: &str,
    mut check: impl FnMut(&[ReplicaStatus]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let statuses = supervisor.statuses();
        if let Some(found) = check(&statuses) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; statuses: {statuses:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for replica `name` to satisfy `check`, returning its status.
async fn replica(
    supervisor: &Supervisor,
    name: &str,
    what: &str,
    check: impl Fn(&ReplicaStatus) -> bool,
) -> ReplicaStatus {
    eventually(supervisor, Duration::from_secs(10), what, |all| {
        all.iter().find(|r| r.name == name && check(r)).cloned()
    })
    .await
}

async fn ready(supervisor: &Supervisor, name: &str) -> ReplicaStatus {
    replica(supervisor, name, &format!("{name} to be Ready"), |r| {
        r.phase == ReplicaPhase::Ready
    })
    .await
}

/// Processes (not zombies) of process group `pgid`.
fn group(pgid: u32) -> Vec<u32> {
    process::all_processes()
        .into_iter()
        .filter(|p| p.pgid == pgid)
        .map(|p| p.pid)
        .collect()
}

/// Processes whose command line is exactly `args`.
fn with_cmdline(args: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    process::all_processes()
        .into_iter()
        .filter(|p| std::fs::read(format!("/proc/{}/cmdline", p.pid)).is_ok_and(|c| c == wanted))
        .map(|p| p.pid)
        .collect()
}

/// Polls a condition on the host (not on statuses) until it holds.
async fn until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashing_runtime_backs_off_into_crash_loop_with_its_exit_code_and_last_words() {
    let h = Harness::new(0);
    let supervisor = h.start();
    let started = Instant::now();
    let script = "echo 'loading model'; echo 'fatal: no such model' >&2; exit 3";
    assert!(supervisor.apply(desired(1, vec![spec("crashy", script)])));
    let status = replica(&supervisor, "crashy", "CrashLoop", |r| {
        r.phase == ReplicaPhase::CrashLoop
    })
    .await;
    // Three failures: two backoff waits of at least 100 ms and 200 ms (jitter halves at most).
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.restarts, 2, "{status:#?}");
    assert_eq!(status.last_exit.as_deref(), Some("exit code 3"));
    assert_eq!(status.log_tail, ["fatal: no such model"], "the last run's stderr only");
    assert!(
        status.reason.contains("runtime exited (exit code 3); restarting in"),
        "{}",
        status.reason
    );
    assert!(status.reason.contains("3 failures in a row"), "{}", status.reason);
    assert_eq!((status.pid, status.endpoint.as_ref()), (None, None));
    // It keeps trying, further apart each time.
    replica(&supervisor, "crashy", "a fourth failure, still in CrashLoop", |r| {
        r.restarts >= 3 && r.phase == ReplicaPhase::CrashLoop
    })
    .await;
    let stderr = std::fs::read_to_string(h.replica_dir("crashy").join("stderr.log")).unwrap();
    assert!(stderr.matches("fatal: no such model").count() >= 4, "{stderr}");
    supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_that_never_gets_ready_is_killed_with_its_group_at_the_deadline() {
    let h = Harness::new(1);
    let supervisor = h.start();
    let mut hung = spec("hung", "sleep 1000 & sleep 1000 & wait");
    hung.readiness_timeout_ms = 700;
    let started = Instant::now();
    supervisor.apply(desired(1, vec![hung]));
    let starting = replica(&supervisor, "hung", "Starting with a pid", |r| {
        r.phase == ReplicaPhase::Starting && r.pid.is_some()
    })
    .await;
    let pgid = starting.pid.unwrap();
    until(Duration::from_secs(5), "both sleeps", || group(pgid).len() == 3).await;
    let failed = replica(&supervisor, "hung", "the readiness deadline", |r| {
        r.reason.starts_with("not ready within 700ms")
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert!(
        matches!(
            failed.phase,
            ReplicaPhase::Stopping | ReplicaPhase::Pending | ReplicaPhase::Starting
        ),
        "{failed:#?}"
    );
    until(Duration::from_secs(5), "the hung group to be gone", || {
        group(pgid).is_empty()
    })
    .await;
    let after = replica(&supervisor, "hung", "the failed run's end", |r| r.last_exit.is_some()).await;
    assert_eq!(
        after.last_exit.as_deref(),
        Some("stopped by the agent: not ready within 700ms (killed by signal 15)"),
        "the agent's kill is not shown as the runtime's own exit"
    );
    // A failed start counts towards the restart backoff.
    let again = replica(&supervisor, "hung", "a new run", |r| r.restarts == 1 && r.pid.is_some()).await;
    assert_ne!(again.pid, Some(pgid));
    supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_replica_stops_its_whole_process_tree() {
    let h = Harness::new(2);
    let supervisor = h.start();
    supervisor.apply(desired(
        1,
        vec![spec("tree", "touch ready; sleep 1000 & sleep 1000 & wait")],
    ));
    let status = ready(&supervisor, "tree").await;
    let pgid = status.pid.unwrap();
    until(Duration::from_secs(5), "sh and two sleeps", || group(pgid).len() == 3).await;
    assert!(
        status.endpoint.as_deref().unwrap().starts_with("http://node-a:31"),
        "{status:#?}"
    );
    assert!(supervisor.apply(desired(2, vec![])));
    eventually(&supervisor, Duration::from_secs(10), "the replica to be gone", |all| {
        all.is_empty().then_some(())
    })
    .await;
    assert_eq!(group(pgid), Vec::<u32>::new(), "no process of the group is left");
    assert!(h.ledger().processes.is_empty());
    assert_eq!(h.ledger().desired.map(|d| d.generation), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_that_ignores_sigterm_gets_sigkill_after_the_grace_period() {
    let h = Harness::new(3);
    let mut config = h.config();
    config.stop_grace_period = Duration::from_secs(1);
    let supervisor = h.start_with(config);
    // An ignored signal stays ignored across fork and exec: the sleeps ignore it too.
    let stubborn = spec("stubborn", "trap '' TERM; touch ready; while true; do sleep 1; done");
    supervisor.apply(desired(1, vec![stubborn.clone()]));
    let pgid = ready(&supervisor, "stubborn").await.pid.unwrap();
    // A spec change stops the old run (and keeps the replica, so its end shows).
    let mut changed = stubborn;
    changed.env.push(("GENERATION".into(), "2".into()));
    let asked = Instant::now();
    supervisor.apply(desired(2, vec![changed]));
    let status = replica(&supervisor, "stubborn", "the old run's end", |r| r.last_exit.is_some()).await;
    let took = asked.elapsed();
    assert_eq!(
        status.last_exit.as_deref(),
        Some("stopped by the agent: spec changed (killed by signal 9)")
    );
    assert!(
        took >= Duration::from_secs(1),
        "SIGKILL came before the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The new run starts only once no process of the old group is left.
    replica(&supervisor, "stubborn", "the new run", |r| {
        r.pid.is_some_and(|p| p != pgid) && r.phase != ReplicaPhase::Stopping
    })
    .await;
    assert!(group(pgid).is_empty());
    supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_state_again_never_restarts_a_runtime() {
    let h = Harness::new(4);
    let supervisor = h.start();
    let steady = spec("steady", "touch ready; exec sleep 1000");
    assert!(supervisor.apply(desired(5, vec![steady.clone()])));
    let before = ready(&supervisor, "steady").await;
    // The same generation again, and an older one, are ignored.
    assert!(!supervisor.apply(desired(5, vec![steady.clone()])));
    assert!(!supervisor.apply(desired(4, vec![])));
    // A newer generation with the same spec is applied, and changes nothing.
    assert!(supervisor.apply(desired(6, vec![steady])));
    until(Duration::from_secs(5), "generation 6 in the ledger", || {
        h.ledger().desired.map(|d| d.generation) == Some(6)
    })
    .await;
    let after = ready(&supervisor, "steady").await;
    assert_eq!(after.pid, before.pid, "restarted on a re-sent state");
    assert_eq!(after.restarts, 0);
    assert_eq!(supervisor.generation(), Some(6));
    supervisor.stop_all().await;
    assert_eq!(supervisor.generation(), None, "stop_all forgets the desired state");
    assert!(h.ledger().desired.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_spec_restarts_the_runtime() {
    let h = Harness::new(5);
    let supervisor = h.start();
    let first = spec("changing", "touch ready; exec sleep 1000");
    supervisor.apply(desired(1, vec![first.clone()]));
    let old = ready(&supervisor, "changing").await.pid.unwrap();
    let mut second = first;
    second.env.push(("MAX_MODEL_LEN".into(), "8192".into()));
    supervisor.apply(desired(2, vec![second]));
    let new = replica(&supervisor, "changing", "the new run to be ready", |r| {
        r.phase == ReplicaPhase::Ready && r.pid != Some(old)
    })
    .await;
    assert!(group(old).is_empty());
    assert_eq!(new.restarts, 0, "a spec change is not a restart");
    let environ = std::fs::read(format!("/proc/{}/environ", new.pid.unwrap())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.split('\0').any(|v| v == "MAX_MODEL_LEN=8192"));
    assert!(environ.split('\0').any(|v| v == "CUDA_VISIBLE_DEVICES=GPU-test-0"));
    assert!(!environ.split('\0').any(|v| v.starts_with("NOTIFY_SOCKET=")));
    supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_crash_leaves_runtimes_running_and_the_next_agent_adopts_them_once() {
    let h = Harness::new(6);
    let first = h.start();
    // Each runtime is one `sleep` with its own duration, to count copies in /proc.
    let specs = vec![
        spec("keep", "touch ready; exec sleep 7101"),
        spec("drop", "touch ready; exec sleep 7102"),
        spec("dies", "touch ready; exec sleep 7103"),
    ];
    first.apply(desired(1, specs.clone()));
    let mut pids = BTreeMap::new();
    for name in ["keep", "drop", "dies"] {
        pids.insert(name, ready(&first, name).await.pid.unwrap());
    }
    // The agent "crashes": supervision stops, the runtimes do not.
    first.detach().await;
    drop(first);
    for (name, seconds) in [("keep", "7101"), ("drop", "7102"), ("dies", "7103")] {
        assert_eq!(
            with_cmdline(&["sleep", seconds]),
            [pids[name]],
            "{name} still runs once"
        );
    }
    // While it was down, `dies` died, and the desired state (persisted just before the
    // crash) dropped `drop`.
    process::signal_group(pids["dies"], nix::sys::signal::Signal::SIGKILL).unwrap();
    until(Duration::from_secs(5), "dies to die", || {
        with_cmdline(&["sleep", "7103"]).is_empty()
    })
    .await;
    let path = ledger::path(h.data_dir());
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["desired"]["generation"] = 2.into();
    json["desired"]["replicas"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["name"] != "drop");
    std::fs::write(&path, json.to_string()).unwrap();

    let second = h.start();
    assert_eq!(second.generation(), Some(2));
    let keep = ready(&second, "keep").await;
    assert_eq!(keep.pid, Some(pids["keep"]), "adopted, not restarted");
    assert_eq!(keep.restarts, 0);
    let dies = replica(&second, "dies", "dies to run again", |r| {
        r.phase == ReplicaPhase::Ready && r.pid.is_some()
    })
    .await;
    assert_ne!(dies.pid, Some(pids["dies"]));
    assert_eq!(dies.restarts, 1);
    assert_eq!(
        dies.last_exit.as_deref(),
        Some("exited while the agent was not running (status unknown)")
    );
    eventually(
        &second,
        Duration::from_secs(10),
        "drop to be stopped and forgotten",
        |all| (!all.iter().any(|r| r.name == "drop")).then_some(()),
    )
    .await;
    assert!(
        with_cmdline(&["sleep", "7102"]).is_empty(),
        "an undesired runtime was left"
    );
    assert_eq!(with_cmdline(&["sleep", "7101"]), [pids["keep"]], "no duplicate");
    assert_eq!(with_cmdline(&["sleep", "7103"]).len(), 1, "no duplicate");
    // The coordinator comes back and sends the same state: nothing changes.
    assert!(!second.apply(desired(2, specs[..1].to_vec())));

    // An adopted runtime that exits is noticed (it is not our child) and restarted.
    process::signal_group(pids["keep"], nix::sys::signal::Signal::SIGKILL).unwrap();
    let restarted = replica(&second, "keep", "keep to be restarted", |r| {
        r.phase == ReplicaPhase::Ready && r.pid != Some(pids["keep"])
    })
    .await;
    assert_eq!(restarted.restarts, 1);
    second.stop_all().await;
    assert!(with_cmdline(&["sleep", "7101"]).is_empty() && with_cmdline(&["sleep", "7103"]).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_logs_are_rotated_and_stay_bounded() {
    let h = Harness::new(7);
    let supervisor = h.start();
    // About 500 KB/s in bursts of 50 KB; the limit is 64 KiB, checked every 100 ms.
    let chatty = "touch ready; while true; do head -c 50000 /dev/zero | tr '\\000' x; echo; sleep 0.1; done";
    supervisor.apply(desired(1, vec![spec("chatty", chatty)]));
    ready(&supervisor, "chatty").await;
    let dir = h.replica_dir("chatty");
    until(Duration::from_secs(10), "two rotations", || {
        dir.join("stdout.log.2").exists()
    })
    .await;
    let bound = 64 * 1024 + 4 * 50_001;
    for _ in 0..10 {
        for name in ["stdout.log", "stdout.log.1", "stdout.log.2"] {
            let size = std::fs::metadata(dir.join(name)).map(|m| m.len()).unwrap_or(0);
            assert!(size <= bound, "{name} is {size} bytes");
        }
        assert!(!dir.join("stdout.log.3").exists());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The runtime appends: after a truncation it writes at the start, not past a hole.
    let head: Vec<u8> = std::fs::read(dir.join("stdout.log"))
        .unwrap()
        .into_iter()
        .take(64)
        .collect();
    assert!(!head.contains(&0), "the log has a hole of zero bytes: {head:?}");
    supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_version_and_metrics_over_real_http() {
    let h = Harness::new(8);
    let http: Arc<dyn HttpGet> = Arc::new(HyperGet::default());
    let supervisor = Supervisor::start(h.config(), h.context(http)).unwrap();
    // The files exist before the server listens: readiness waits for the listener.
    let server = "printf '1.2.3' > version; printf 'running 4\\n' > metrics; touch ready; \
                  exec python3 -m http.server \"$PORT\" --bind \"$HOST\" --directory ..";
    supervisor.apply(desired(1, vec![spec("web", server)]));
    let status = replica(&supervisor, "web", "version and metrics", |r| {
        r.phase == ReplicaPhase::Ready
            && r.runtime_version.is_some()
            && r.metrics.is_some_and(|m| m.requests_running.is_some())
    })
    .await;
    assert_eq!(status.runtime_version.as_deref(), Some("1.2.3"));
    assert_eq!(status.metrics.and_then(|m| m.requests_running), Some(4.0));
    let port = h.ledger().processes["web"].ports[0];
    assert_eq!(status.endpoint, Some(format!("http://node-a:{port}/v1")));
    assert!(status.ready_after_ms.is_some());
    supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_liveness_makes_a_runtime_unhealthy_then_restarts_it() {
    let h = Harness::new(9);
    let supervisor = h.start();
    supervisor.apply(desired(1, vec![spec("flaky", "touch ready; exec sleep 1000")]));
    let pid = ready(&supervisor, "flaky").await.pid.unwrap();
    std::fs::remove_file(h.replica_dir("flaky").join("ready")).unwrap();
    replica(&supervisor, "flaky", "Unhealthy", |r| {
        r.phase == ReplicaPhase::Unhealthy
    })
    .await;
    let status = replica(&supervisor, "flaky", "a restart", |r| r.restarts == 1).await;
    assert!(status.reason.contains("liveness probe failed 3 times in a row") || status.pid != Some(pid));
    let again = ready(&supervisor, "flaky").await;
    assert_ne!(again.pid, Some(pid));
    assert!(group(pid).is_empty());
    supervisor.stop_all().await;
}

/// Where this host delegates a cgroup v2 subtree to the agent (systemd's `Delegate=yes`,
/// root in a VM, including the `unified` mount of the hybrid layout), each replica gets
/// its own cgroup from its first instruction, and a worker that left the process group
/// (`setsid`) is stopped with it. Elsewhere the other tests cover process groups alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_in_its_own_cgroup_is_stopped_with_the_workers_that_left_its_group() {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let Some(root) = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|root| process::Cgroups::detect(root, &own).is_ok())
    else {
        eprintln!("no delegated cgroup v2 subtree on this host: process groups only, as the other tests check");
        return;
    };
    let h = Harness::new(11);
    let mut config = h.config();
    config.cgroup_root = Some(root);
    let supervisor = h.start_with(config);
    let escaper = spec("escaper", "setsid sleep 7301 & touch ready; exec sleep 7302");
    supervisor.apply(desired(1, vec![escaper]));
    let pid = ready(&supervisor, "escaper").await.pid.unwrap();
    let cgroup = h.ledger().processes["escaper"]
        .cgroup
        .clone()
        .expect("a cgroup is recorded");
    assert!(cgroup.ends_with("pyxis-replicas/escaper"), "{}", cgroup.display());
    let procs = |dir: &Path| -> Vec<u32> { process::cgroup_procs(dir) };
    let escaped = with_cmdline(&["sleep", "7301"]);
    assert_eq!(escaped.len(), 1);
    assert_ne!(
        process::read_stat(escaped[0]).unwrap().pgid,
        pid,
        "left the process group"
    );
    let mut members = procs(&cgroup);
    members.sort_unstable();
    let mut expected = vec![pid, escaped[0]];
    expected.sort_unstable();
    assert_eq!(members, expected, "both are in the replica's cgroup");
    assert!(supervisor.apply(desired(2, vec![])));
    eventually(&supervisor, Duration::from_secs(10), "the replica to be gone", |all| {
        all.is_empty().then_some(())
    })
    .await;
    assert!(
        with_cmdline(&["sleep", "7301"]).is_empty(),
        "the escaped worker was left running"
    );
    assert!(with_cmdline(&["sleep", "7302"]).is_empty());
    assert!(!cgroup.exists(), "the replica's cgroup is removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn launches_that_cannot_be_built_fail_with_the_reason() {
    let h = Harness::new(10);
    let supervisor = h.start();
    let mut unknown_kind = spec("vllm-0", "unused");
    unknown_kind.runtime_kind = "vllm".into();
    let mut unknown_device = spec("gpu-0", "touch ready; exec sleep 1000");
    unknown_device.gpus = vec!["GPU-not-here".into()];
    let bad_name = spec("../escape", "touch ready; exec sleep 1000");
    supervisor.apply(desired(1, vec![unknown_kind, unknown_device, bad_name]));
    let failed = eventually(&supervisor, Duration::from_secs(5), "three failures", |all| {
        (all.len() == 3 && all.iter().all(|r| r.phase == ReplicaPhase::Failed)).then(|| all.to_vec())
    })
    .await;
    let reason = |name: &str| failed.iter().find(|r| r.name == name).unwrap().reason.clone();
    assert!(
        reason("vllm-0").contains("--runtime KIND=COMMAND"),
        "{}",
        reason("vllm-0")
    );
    assert_eq!(reason("gpu-0"), "device GPU-not-here is not on this node");
    assert!(
        reason("../escape").starts_with("invalid replica name"),
        "{}",
        reason("../escape")
    );
    assert!(!h.data_dir().join("escape").exists());
    supervisor.stop_all().await;
}

/// An agent that reaches no coordinator (supervision does not need one), with simulated
/// GPUs and its runtimes on loopback ports of `slot`.
fn agent_config(data_dir: &Path, slot: u16) -> pyxis_agent::config::AgentConfig {
    use pyxis_agent::config::{AgentConfig, FileConfig, FlagConfig};
    let first = 31000 + slot * 100;
    let file = FileConfig {
        runtime_ports: Some(format!("{first}-{}", first + 99)),
        runtime_host: Some("127.0.0.1".into()),
        stop_grace_period: Some("5s".into()),
        ..FileConfig::default()
    };
    let flags = FlagConfig {
        coordinators: vec!["127.0.0.1:9".into()],
        join_token: Some("abcdef.0123456789abcdef".into()),
        ca_hash: Some(format!("sha256:{}", "00".repeat(32))),
        data_dir: Some(data_dir.to_path_buf()),
        metrics_addr: Some("off".into()),
        simulate: Some("1xH100-80GB".into()),
        report_interval: Some("100ms".into()),
        ..FlagConfig::default()
    };
    AgentConfig::resolve(file, flags, "agent-host").unwrap()
}

/// Waits for an agent's replica `name` to satisfy `check`.
async fn agent_replica(
    agent: &pyxis_agent::Agent,
    name: &str,
    what: &str,
    check: impl Fn(&ReplicaStatus) -> bool,
) -> ReplicaStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = agent.replicas().into_iter().find(|r| r.name == name && check(r)) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:#?}",
            agent.replicas()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Through the agent's API and the real `custom` adapter: stopping the agent (what
/// `systemctl stop` does) leaves the runtime running, the next agent adopts it without a
/// restart, and the coordinator's re-sent state changes nothing; `stop_replicas` stops it.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_restart_keeps_its_runtimes_and_stop_replicas_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("agent");
    let agent = pyxis_agent::Agent::start(agent_config(&data_dir, 12)).await.unwrap();
    let mut web = spec("custom-web", "unused");
    web.runtime_kind = "custom".into();
    web.runtime_args = vec![];
    web.gpus = vec![];
    web.custom = Some(pyxis_protocol::CustomRuntime {
        command: ["python3", "-m", "http.server", "{port}", "--bind", "{host}"]
            .map(String::from)
            .to_vec(),
        health_path: "/".into(),
        metrics_path: None,
        version_path: None,
        openai_path: "/v1".into(),
    });
    assert!(agent.shared.apply_desired(desired(1, vec![web.clone()])));
    let first = agent_replica(&agent, "custom-web", "Ready", |r| r.phase == ReplicaPhase::Ready).await;
    let pid = first.pid.unwrap();
    assert!(first.endpoint.as_deref().unwrap().ends_with("/v1"), "{first:#?}");
    // One agent per data dir: a second would supervise (and restart) the same runtimes.
    match pyxis_agent::Agent::start(agent_config(&data_dir, 12)).await {
        Err(e @ pyxis_agent::AgentError::Locked { .. }) => {
            assert!(e.to_string().contains("another pyxis-agent is running"), "{e}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a second agent started on the same data dir"),
    }
    agent.stop().await;
    let alive = process::read_stat(pid).unwrap();
    assert!(!alive.is_zombie(), "the runtime stopped with the agent");

    let again = pyxis_agent::Agent::start(agent_config(&data_dir, 12)).await.unwrap();
    assert_eq!(again.watch().borrow().desired_generation, 1);
    let adopted = agent_replica(&again, "custom-web", "Ready", |r| r.phase == ReplicaPhase::Ready).await;
    assert_eq!((adopted.pid, adopted.restarts), (Some(pid), 0));
    assert_eq!(adopted.endpoint, first.endpoint);
    assert!(
        !again.shared.apply_desired(desired(1, vec![web])),
        "the re-sent state is ignored"
    );
    again.stop_replicas().await;
    assert!(again.replicas().is_empty());
    assert!(group(pid).is_empty());
    again.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_hands_desired_state_to_its_supervisor_and_exports_runtime_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let agent = pyxis_agent::Agent::start(agent_config(&dir.path().join("agent"), 13))
        .await
        .unwrap();
    let mut vllm = spec("vllm-0", "unused");
    vllm.runtime_kind = "vllm".into();
    vllm.gpus = vec![agent.shared.devices()[0].uuid.clone()];
    assert!(agent.shared.apply_desired(desired(3, vec![vllm])));
    assert!(!agent.shared.apply_desired(desired(3, vec![])), "same generation");
    assert_eq!(agent.watch().borrow().desired_generation, 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    let failed = loop {
        if let Some(r) = agent.replicas().into_iter().find(|r| r.phase == ReplicaPhase::Failed) {
            break r;
        }
        assert!(Instant::now() < deadline, "{:#?}", agent.replicas());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // No vllm command is configured on this node: the reason says how to configure one.
    assert!(failed.reason.contains("--runtime "), "{}", failed.reason);
    let text = pyxis_agent::http::render(&agent.shared);
    let line = "pyxis_runtime_phase{node=\"agent-host\",replica=\"vllm-0\",deployment=\"chat\",tenant=\"research\",runtime=\"vllm\",phase=\"Failed\"} 1";
    assert!(text.lines().any(|l| l == line), "{text}");
    agent.stop_replicas().await;
    assert!(agent.replicas().is_empty());
    assert!(
        agent.shared.apply_desired(desired(1, vec![])),
        "stop_replicas forgets the generation"
    );
    agent.stop().await;
}

/// Processes (not zombies) whose working directory is `dir`.
fn in_dir(dir: &Path) -> Vec<u32> {
    let dir = std::fs::canonicalize(dir).unwrap();
    process::all_processes()
        .into_iter()
        .filter(|p| std::fs::read_link(format!("/proc/{}/cwd", p.pid)).is_ok_and(|c| c == dir))
        .map(|p| p.pid)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_whose_ledger_record_is_unreadable_is_stopped_before_it_starts_again() {
    let h = Harness::new(11);
    let first = h.start();
    first.apply(desired(1, vec![spec("chat-0", "touch ready; exec sleep 7201")]));
    let old = ready(&first, "chat-0").await.pid.unwrap();
    first.detach().await;
    drop(first);
    let path = ledger::path(h.data_dir());
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["processes"]["chat-0"]["pid"] = "eleven".into();
    std::fs::write(&path, json.to_string()).unwrap();

    let second = h.start();
    let new = replica(&second, "chat-0", "a new run", |r| {
        r.phase == ReplicaPhase::Ready && r.pid != Some(old)
    })
    .await;
    assert!(
        !process::is_running(old, 0) && group(old).is_empty(),
        "the old runtime was stopped"
    );
    assert_eq!(with_cmdline(&["sleep", "7201"]), [new.pid.unwrap()], "never two copies");
    second.stop_all().await;
    assert!(with_cmdline(&["sleep", "7201"]).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_or_empty_ledger_is_moved_aside_and_the_runtimes_it_listed_are_stopped() {
    for (slot, text) in [(12, "{\"version\":1,\"processes\":{\"chat"), (13, "")] {
        let h = Harness::new(slot);
        let first = h.start();
        first.apply(desired(
            1,
            vec![spec("chat-0", "touch ready; sleep 7300 & exec sleep 7301")],
        ));
        let old = ready(&first, "chat-0").await.pid.unwrap();
        first.detach().await;
        drop(first);
        std::fs::write(ledger::path(h.data_dir()), text).unwrap();

        let second = h.start();
        assert_eq!(second.generation(), None, "the coordinator's state is applied afresh");
        let moved: Vec<_> = std::fs::read_dir(h.data_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("replicas.json.corrupt-"))
            .collect();
        assert_eq!(moved.len(), 1, "{moved:?}");
        until(
            Duration::from_secs(10),
            "the unsupervised runtime to be stopped",
            || group(old).is_empty(),
        )
        .await;
        eventually(&second, Duration::from_secs(10), "nothing left to supervise", |all| {
            all.is_empty().then_some(())
        })
        .await;
        assert!(in_dir(&h.replica_dir("chat-0")).is_empty(), "no orphan");
        // The coordinator sends its state again: exactly one copy runs.
        assert!(second.apply(desired(
            1,
            vec![spec("chat-0", "touch ready; sleep 7300 & exec sleep 7301")]
        )));
        let new = ready(&second, "chat-0").await.pid.unwrap();
        assert_ne!(new, old);
        assert_eq!(with_cmdline(&["sleep", "7301"]), [new], "never two copies");
        second.stop_all().await;
        assert!(in_dir(&h.replica_dir("chat-0")).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_restart_keeps_the_restart_count_and_backoff_of_a_crash_looping_replica() {
    let h = Harness::new(14);
    let mut config = h.config();
    config.timing.restart_backoff_min = Duration::from_secs(4);
    config.timing.restart_backoff_max = Duration::from_secs(60);
    config.timing.crash_loop_after = 2;
    let first = h.start_with(config.clone());
    first.apply(desired(1, vec![spec("crashy", "exit 3")]));
    let before = replica(&first, "crashy", "CrashLoop", |r| r.phase == ReplicaPhase::CrashLoop).await;
    assert_eq!(before.restarts, 1);
    first.detach().await;
    drop(first);
    let saved = h.ledger();
    let record = &saved.restarts["crashy"];
    assert_eq!((record.restarts, record.failures), (1, 2), "{record:?}");
    assert!(record.next_attempt_unix_ms.is_some());

    let restarted = Instant::now();
    let second = h.start_with(config);
    let status = replica(&second, "crashy", "the carried-over state", |_| true).await;
    assert_eq!(
        (status.phase, status.restarts, status.last_exit.as_deref()),
        (ReplicaPhase::CrashLoop, 1, Some("exit code 3"))
    );
    // Not relaunched at once: the second backoff (4s doubled, jittered: 4 to 8s) goes on.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stderr = std::fs::read_to_string(h.replica_dir("crashy").join("stderr.log")).unwrap();
    assert_eq!(
        stderr.matches(process::RUN_MARKER).count(),
        2,
        "relaunched at once: {stderr}"
    );
    let next = replica(&second, "crashy", "the next restart", |r| r.restarts == 2).await;
    assert!(
        restarted.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        restarted.elapsed()
    );
    assert!(next.restarts == 2);
    second.stop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_launch_without_a_free_port_waits_pending_and_starts_soon_after_one_frees() {
    let h = Harness::new(15);
    let mut config = h.config();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    config.runtime_ports = (port, port);
    let supervisor = h.start_with(config);
    supervisor.apply(desired(1, vec![spec("p", "touch ready; exec sleep 1000")]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = replica(&supervisor, "p", "a port wait", |_| true).await;
    assert_eq!(waiting.phase, ReplicaPhase::Pending, "{waiting:#?}");
    assert_eq!(
        waiting.reason,
        format!("waiting for a free port in runtime_ports {port}-{port}")
    );
    assert_eq!(waiting.restarts, 0);
    drop(busy);
    let started = Instant::now();
    ready(&supervisor, "p").await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_specs_and_missing_programs_fail_with_the_real_reason_even_without_ports() {
    let h = Harness::new(16);
    let mut config = h.config();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    config.runtime_ports = (port, port);
    let http = Arc::new(FileGet {
        root: h.data_dir().join("replicas"),
    });
    let mut context = h.context(http);
    context
        .commands
        .insert("script".into(), "/nonexistent/tritonserver".into());
    let supervisor = Supervisor::start(config, context).unwrap();
    let mut refused = spec("refused", "x");
    refused.runtime_args.clear();
    supervisor.apply(desired(1, vec![refused, spec("missing", "x")]));
    let failed = eventually(&supervisor, Duration::from_secs(5), "two failures", |all| {
        (all.len() == 2 && all.iter().all(|r| r.phase == ReplicaPhase::Failed)).then(|| all.to_vec())
    })
    .await;
    let reason = |name: &str| failed.iter().find(|r| r.name == name).unwrap().reason.clone();
    assert!(reason("refused").contains("no script"), "{}", reason("refused"));
    let missing = reason("missing");
    assert!(
        missing.contains("/nonexistent/tritonserver does not exist") && missing.contains("--runtime script=COMMAND"),
        "{missing}"
    );
    assert!(failed.iter().all(|r| r.restarts == 0));
    drop(busy);
    supervisor.stop_all().await;
}
