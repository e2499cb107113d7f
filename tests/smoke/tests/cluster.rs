//! Whole-binary smoke tests: the README's operator flow with real `pyxis-coordinator`,
//! `pyxis-agent` and `pyxis` processes on loopback, and dev mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use pyxis_smoke::{bin, http, log_field, Daemon, Reaper};
use serde_json::Value;

const START: Duration = Duration::from_secs(30);

struct Cli {
    server: String,
    token: String,
}

impl Cli {
    /// Runs `pyxis ARGS`; returns (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(bin("pyxis"))
            .args(["--server", &self.server, "--token", &self.token])
            .args(args)
            .env_remove("PYXIS_SERVER")
            .env_remove("PYXIS_TOKEN")
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "pyxis {args:?} failed: {err}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn node(&self, name: &str) -> Value {
        let nodes = self.json(&["get", "nodes", "-o", "json"]);
        nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Polls `get nodes` until `name` has `status`, or panics after `timeout`.
    fn wait_status(&self, name: &str, status: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let node = self.node(name);
            if node["status"] == status {
                return node;
            }
            assert!(
                start.elapsed() < timeout,
                "{name} never became {status} in {timeout:?}: {node}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn coordinator(data_dir: &Path, quic: &str, api: &str) -> (Daemon, String, String) {
    let mut cmd = Command::new(bin("pyxis-coordinator"));
    cmd.arg("--data-dir").arg(data_dir).args([
        "--quic-addr",
        quic,
        "--api-addr",
        api,
        "--gateway-addr",
        "127.0.0.1:0",
        "--liveness-timeout",
        "2s",
        "--report-interval",
        "200ms",
    ]);
    let daemon = Daemon::spawn("coordinator", cmd);
    let quic = log_field(&daemon.wait_for_line("agent link listening", START), "addr")
        .unwrap()
        .to_string();
    let api = log_field(&daemon.wait_for_line("admin API listening", START), "addr")
        .unwrap()
        .to_string();
    (daemon, quic, api)
}

fn agent(name: &str, data_dir: &Path, args: &[&str]) -> Daemon {
    let mut cmd = Command::new(bin("pyxis-agent"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["--name", name, "--metrics-addr", "127.0.0.1:0"])
        .args(args);
    Daemon::spawn(name, cmd)
}

#[test]
fn operator_flow_with_real_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let coord_dir = dir.path().join("coordinator");
    let (mut coord, quic, api) = coordinator(&coord_dir, "127.0.0.1:0", "127.0.0.1:0");
    let admin = std::fs::read_to_string(coord_dir.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let cli = Cli {
        server: format!("http://{api}"),
        token: admin,
    };

    // Health endpoints are open; the API is not.
    assert_eq!(http("GET", &format!("http://{api}/healthz"), None, None).0, 200);
    assert_eq!(http("GET", &format!("http://{api}/readyz"), None, None).0, 200);
    let (status, body) = http("GET", &format!("http://{api}/api/v1/nodes"), None, None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("admin-token"), "{body}");

    // Join tokens, as the README shows.
    let token = cli.json(&["token", "create", "--ttl", "10m", "--uses", "3", "-o", "json"]);
    let join = token["token"].as_str().unwrap().to_string();
    let ca_hash = token["ca_hash"].as_str().unwrap().to_string();
    assert!(ca_hash.starts_with("sha256:") && ca_hash.len() == 7 + 64, "{token}");
    assert!(token["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        token["coordinator"],
        quic.as_str(),
        "the printed address is the one to dial"
    );
    let human = cli.ok(&["token", "create"]);
    // Tokens can be listed (never their secrets) and withdrawn.
    let listed = cli.json(&["token", "list", "-o", "json"]);
    let ids: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{listed}");
    assert!(ids.contains(&join[..6].to_string()), "{listed}");
    assert!(
        !listed.to_string().contains(&join[7..]),
        "a secret leaked into the list"
    );
    let withdrawn = human
        .lines()
        .find_map(|l| l.strip_prefix("token:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(cli.ok(&["token", "delete", &withdrawn]).contains("deleted"));
    assert_eq!(
        cli.json(&["token", "list", "-o", "json"])["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        cli.run(&["token", "delete", &withdrawn]).0,
        1,
        "deleting twice is an error"
    );
    assert!(
        human.contains(&format!("pyxis-agent --coordinator {quic} --join-token")),
        "{human}"
    );

    let joining = ["--coordinator", &quic, "--join-token", &join, "--ca-hash", &ca_hash];
    let mut one: Vec<&str> = joining.to_vec();
    one.extend(["--simulate", "2xH100-80GB,1xMI300X-192GB"]);
    let a1 = agent("smoke-1", &dir.path().join("a1"), &one);
    let mut two: Vec<&str> = joining.to_vec();
    two.extend(["--simulate", "4xTPU-v5e"]);
    let mut a2 = agent("smoke-2", &dir.path().join("a2"), &two);
    a1.wait_for_line("registered", START);
    a2.wait_for_line("registered", START);

    // The SPEC's node JSON shape.
    let node = cli.wait_status("smoke-1", "Ready", START);
    assert_eq!(node["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(node["last_seen"].as_str().unwrap().ends_with('Z'));
    let accelerators = node["accelerators"].as_array().unwrap();
    assert_eq!(accelerators.len(), 3);
    for (i, a) in accelerators.iter().enumerate() {
        assert_eq!(a["index"], i);
        for key in ["vendor", "model", "uuid", "hardware_class", "health"] {
            assert!(a[key].is_string(), "{key} in {a}");
        }
        assert!(a["memory_bytes"].as_u64().unwrap() > 0);
        assert_eq!(a["simulated"], true);
        assert_eq!(a["health"], "healthy");
    }
    assert_eq!(accelerators[0]["hardware_class"], "H100-80GB");
    assert_eq!(accelerators[2]["vendor"], "amd");
    // Device details (docs/api.md): the simulated H100s share an NVLink fabric.
    assert_eq!(accelerators[0]["architecture"], "9.0");
    assert_eq!(accelerators[0]["links"][0]["kind"], "nvlink", "{node}");
    assert!(accelerators[2]["mig"].is_null() && accelerators[2]["ecc"].is_null());
    cli.wait_status("smoke-2", "Ready", START);
    let table = cli.ok(&["get", "nodes"]);
    assert!(
        table.starts_with("NAME") && table.contains("smoke-1") && table.contains("2xH100-80GB(sim)"),
        "{table}"
    );
    let wide = cli.ok(&["get", "nodes", "-o", "wide"]);
    assert!(wide.contains("ADDRESS") && wide.contains("KERNEL"), "{wide}");
    assert!(wide.contains("HEALTH") && wide.contains("INTERCONNECT"), "{wide}");
    assert!(wide.contains("3 healthy") && wide.contains("nvlink 2/3"), "{wide}");
    assert!(wide.contains("4 healthy"), "{wide}");
    let yaml = cli.ok(&["get", "nodes", "smoke-2", "-o", "yaml"]);
    assert!(yaml.starts_with("items:") && yaml.contains("name: smoke-2"), "{yaml}");
    let described = cli.ok(&["describe", "node", "smoke-1"]);
    assert!(
        described.contains("Accelerators:") && described.contains("Joined"),
        "{described}"
    );
    assert!(described.contains("  GPU2: AMD Instinct MI300X"), "{described}");
    assert!(
        described.contains("Topology:\n        GPU0  GPU1  GPU2  NUMA\n  GPU0  X     NV18"),
        "{described}"
    );

    // Agent metrics and health.
    let agent_metrics = log_field(&a1.wait_for_line("serving /metrics", START), "addr")
        .unwrap()
        .to_string();
    let (status, text) = http("GET", &format!("http://{agent_metrics}/metrics"), None, None);
    assert_eq!(status, 200);
    assert!(
        text.contains("pyxis_gpu_memory_total_bytes{node=\"smoke-1\",gpu=\"0\""),
        "{text}"
    );
    assert_eq!(
        http("GET", &format!("http://{agent_metrics}/healthz"), None, None).0,
        200
    );
    let (_, text) = http("GET", &format!("http://{api}/metrics"), None, None);
    assert!(text.contains("pyxis_nodes{status=\"Ready\"} 2"), "{text}");

    // kill -9 an agent: NotReady within the liveness timeout; back with its stored identity.
    a2.kill();
    let killed = Instant::now();
    let node = cli.wait_status("smoke-2", "NotReady", Duration::from_secs(10));
    assert!(killed.elapsed() < Duration::from_secs(5), "took {:?}", killed.elapsed());
    assert!(
        node["reason"].as_str().unwrap().contains("no capacity report"),
        "{node}"
    );
    // Later starts need only --coordinator and --data-dir: the name comes from the identity.
    let mut cmd = Command::new(bin("pyxis-agent"));
    cmd.arg("--data-dir")
        .arg(dir.path().join("a2"))
        .args(["--coordinator", &quic, "--metrics-addr", "off"]);
    let a2 = Daemon::spawn("smoke-2-again", cmd);
    a2.wait_for_line("using the stored node identity", START);
    cli.wait_status("smoke-2", "Ready", START);

    // Operator actions.
    assert!(cli.ok(&["node", "cordon", "smoke-1"]).contains("Cordoned"));
    cli.wait_status("smoke-1", "Cordoned", START);
    cli.ok(&["node", "drain", "smoke-1"]);
    cli.wait_status("smoke-1", "Draining", START);
    cli.ok(&["node", "uncordon", "smoke-1"]);
    cli.wait_status("smoke-1", "Ready", START);
    let revoked: Value = serde_json::from_str(&cli.ok(&["node", "revoke", "smoke-2", "-o", "json"])).unwrap();
    assert_eq!(revoked["revoked"], true);
    a2.wait_for_line("revoked", Duration::from_secs(5));
    coord.wait_for_line("refused connection: node is revoked", START);
    assert_eq!(cli.node("smoke-2")["status"], "NotReady");

    // A wrong join token is refused with a clear line on both sides.
    let bogus = agent(
        "smoke-bogus",
        &dir.path().join("bogus"),
        &[
            "--coordinator",
            &quic,
            "--join-token",
            "abcdef.0123456789abcdef",
            "--ca-hash",
            &ca_hash,
        ],
    );
    bogus.wait_for_line("join token abcdef is unknown", START);
    coord.wait_for_line("refused agent", START);

    // Coordinator restart on the same ports: the registry survives, agents come back alone.
    let (quic_port, api_port) = (quic.clone(), api.clone());
    assert!(coord.terminate(START).success());
    let (coord2, _, _) = coordinator(&coord_dir, &quic_port, &api_port);
    let before = cli.node("smoke-2");
    assert_eq!(before["revoked"], true, "revocation persisted");
    cli.wait_status("smoke-1", "Ready", START);
    let registrations = a1.lines().iter().filter(|l| l.contains("registered")).count();
    assert!(registrations >= 2, "agent re-registered by itself");

    // A crash (kill -9) of the coordinator: agents notice within seconds (missing
    // acknowledgements), not after the QUIC idle timeout, and come back by themselves.
    let mut coord2 = coord2;
    coord2.kill();
    let (coord3, _, _) = coordinator(&coord_dir, &quic_port, &api_port);
    let restarted = Instant::now();
    while a1.lines().iter().filter(|l| l.contains("registered")).count() <= registrations {
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "agent did not come back after a coordinator crash"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "took {:?}",
        restarted.elapsed()
    );
    cli.wait_status("smoke-1", "Ready", START);

    // The stored identity wins over contradicting flags: a clear exit 64, not a retry loop.
    let refused = |extra: &[&str]| {
        let out = Command::new(bin("pyxis-agent"))
            .arg("--data-dir")
            .arg(dir.path().join("a1"))
            .args(["--coordinator", &quic, "--metrics-addr", "off"])
            .args(extra)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(64), "{err}");
        err
    };
    let err = refused(&["--name", "someone-else"]);
    assert!(err.contains("holds the identity of node \"smoke-1\""), "{err}");
    let err = refused(&["--ca-hash", &format!("sha256:{}", "ab".repeat(32))]);
    assert!(err.contains("belongs to another cluster"), "{err}");

    // Deleting the revoked node lets its name join again.
    cli.ok(&["delete", "node", "smoke-2"]);
    assert_eq!(cli.node("smoke-2"), Value::Null);
    drop(coord3);
    drop(a1);
}

#[test]
fn cli_and_daemon_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, _quic, api) = coordinator(&dir.path().join("c"), "127.0.0.1:0", "127.0.0.1:0");
    let wrong = Cli {
        server: format!("http://{api}"),
        token: "nope".into(),
    };
    let (code, _, err) = wrong.run(&["get", "nodes"]);
    assert_eq!(code, 1);
    assert!(err.contains("rejected the admin token"), "{err}");
    let nowhere = Cli {
        server: "http://127.0.0.1:1".into(),
        token: "x".into(),
    };
    let (code, _, err) = nowhere.run(&["get", "nodes"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the coordinator"), "{err}");
    let (code, _, err) = wrong.run(&["get", "widgets"]);
    assert_eq!(code, 2, "{err}");

    let exit = |cmd: &mut Command| {
        let out = cmd.env("NO_COLOR", "1").output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = exit(
        Command::new(bin("pyxis-agent"))
            .args(["--data-dir"])
            .arg(dir.path().join("x")),
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--coordinator"), "{err}");
    let (code, err) = exit(
        Command::new(bin("pyxis-agent"))
            .args(["--coordinator", "127.0.0.1:7443", "--data-dir"])
            .arg(dir.path().join("y")),
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--join-token"), "{err}");
    let (code, err) = exit(Command::new(bin("pyxis-agent")).args([
        "--coordinator",
        "127.0.0.1:7443",
        "--data-dir",
        "/tmp/z",
        "--simulate",
        "3xGTX-1080",
    ]));
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("simulate"), "{err}");
    let (code, err) = exit(Command::new(bin("pyxis-coordinator")).args(["--api-addr", "nonsense"]));
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("api_addr"), "{err}");
    // Unsupported methods get the documented JSON error body.
    let (status, body) = http("DELETE", &format!("http://{api}/api/v1/tokens"), Some("x"), None);
    assert!(status == 405 || status == 401, "{status} {body}");
    let parsed: Value = serde_json::from_str(&body).unwrap();
    assert!(parsed["error"]["message"].is_string(), "{body}");

    // A CA key that does not belong to the CA certificate is a configuration error.
    let (_other, _, _) = coordinator(&dir.path().join("other"), "127.0.0.1:0", "127.0.0.1:0");
    let mut mixed = Command::new(bin("pyxis-coordinator"));
    mixed
        .arg("--data-dir")
        .arg(dir.path().join("mixed"))
        .arg("--ca-cert")
        .arg(dir.path().join("c/ca.pem"))
        .arg("--ca-key")
        .arg(dir.path().join("other/ca.key"))
        .args(["--quic-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"]);
    let (code, err) = exit(&mut mixed);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("does not match the CA certificate"), "{err}");

    // SIGTERM stops an agent promptly even while its coordinator is unreachable.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let zero_pin = format!("sha256:{}", "00".repeat(32));
    let mut lonely = agent(
        "lonely",
        &dir.path().join("lonely"),
        &[
            "--coordinator",
            &dead,
            "--join-token",
            "abcdef.0123456789abcdef",
            "--ca-hash",
            &zero_pin,
        ],
    );
    lonely.wait_for_line("joining the cluster", START);
    let asked = Instant::now();
    assert!(lonely.terminate(START).success());
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        asked.elapsed()
    );

    let bad_config = dir.path().join("bad.toml");
    std::fs::write(&bad_config, "liveness = \"10s\"\n").unwrap();
    let (code, err) = exit(Command::new(bin("pyxis-coordinator")).arg("--config").arg(&bad_config));
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("unknown field `liveness`"), "{err}");
}

#[test]
fn dev_mode_prints_commands_that_work() {
    let mut cmd = Command::new(bin("pyxis-coordinator"));
    cmd.args([
        "--dev",
        "--quic-addr",
        "127.0.0.1:0",
        "--api-addr",
        "127.0.0.1:0",
        "--gateway-addr",
        "127.0.0.1:0",
    ]);
    let dir = tempfile::tempdir().unwrap();
    cmd.arg("--data-dir").arg(dir.path());
    // A failing assertion kills dev mode without its graceful stop: its runtimes (running in
    // replica directories under the data dir) are reaped then too.
    let _reaper = Reaper(dir.path().display().to_string());
    let mut dev = Daemon::spawn("dev", cmd);
    let export = dev.wait_for_line("export PYXIS_SERVER=", START);
    let mut server = String::new();
    let mut token = String::new();
    for part in export.split_whitespace() {
        if let Some(v) = part.strip_prefix("PYXIS_SERVER=") {
            server = v.to_string();
        }
        if let Some(v) = part.strip_prefix("PYXIS_TOKEN=") {
            token = v.to_string();
        }
    }
    dev.wait_for_line("pyxis get nodes", START);
    let cli = Cli { server, token };
    let start = Instant::now();
    loop {
        let nodes = cli.json(&["get", "nodes", "-o", "json"]);
        let items = nodes["items"].as_array().unwrap().clone();
        let ready = items.iter().filter(|n| n["status"] == "Ready").count();
        if items.len() >= 5 && ready == items.len() {
            let classes: Vec<String> = items
                .iter()
                .flat_map(|n| n["accelerators"].as_array().unwrap().clone())
                .filter(|a| a["simulated"] == true)
                .map(|a| a["hardware_class"].as_str().unwrap().to_string())
                .collect();
            for class in ["H100-80GB", "A100-40GB", "MI300X-192GB", "TPU-v5e"] {
                assert!(classes.iter().any(|c| c == class), "{class} missing from {classes:?}");
            }
            break;
        }
        assert!(start.elapsed() < START, "dev fleet not Ready: {nodes}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The built-in manifests are applied and their replicas run on the mock runtime: one
    // deployment on two runtimes (vLLM on NVIDIA, SGLang on the AMD node, which has no vLLM).
    let start = Instant::now();
    loop {
        let deployments = cli.json(&["get", "deployments", "-A", "-o", "json"]);
        let ready = |name: &str| {
            deployments["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["metadata"]["name"] == name)
                .map_or(0, |d| d["status"]["replicas"]["ready"].as_u64().unwrap())
        };
        if ready("qwen-7b") == 3 && ready("smollm2-135m") == 1 {
            let replicas = cli.json(&["get", "replicas", "-o", "json"]);
            let runtimes: std::collections::BTreeSet<&str> = replicas["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["deployment"] == "qwen-7b")
                .map(|r| r["runtime"].as_str().unwrap())
                .collect();
            assert_eq!(runtimes, ["sglang", "vllm"].into(), "{replicas}");
            break;
        }
        assert!(start.elapsed() < START, "dev deployments not ready: {deployments}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The printed curl works as printed: an answer with its lineage headers.
    let curl = dev.wait_for_line("curl -si", START);
    let out = Command::new("sh").arg("-c").arg(curl.trim()).output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.starts_with("HTTP/1.1 200"), "{curl}\n{answer}");
    for header in [
        "x-pyxis-tenant: research",
        "x-pyxis-deployment: qwen-7b",
        "x-pyxis-runtime: ",
        "x-pyxis-node: dev-",
    ] {
        assert!(answer.contains(header), "{header} missing:\n{answer}");
    }
    assert!(answer.contains("\"choices\""), "{answer}");
    // The CPU chat model, shared with every tenant, runs on the real llama-server where
    // it is installed (.ci/run caches it), the mock otherwise: either way through the gateway.
    let key = curl.split("Bearer ").nth(1).unwrap().split('\'').next().unwrap();
    let gateway = curl.split_whitespace().find(|w| w.starts_with("http://")).unwrap();
    let base_url = gateway.split("/v1/").next().unwrap();
    let auth = format!("Bearer {key}");
    let small = pyxis_smoke::request(
        "POST",
        gateway,
        &[("Authorization", &auth)],
        Some(r#"{"model": "smollm2-135m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}"#),
    );
    assert_eq!(small.status, 200, "{}", small.body);
    assert_eq!(small.header("x-pyxis-deployment"), Some("product/smollm2-135m"));
    assert!(
        small.header("x-pyxis-runtime").unwrap().starts_with("llama-cpp/"),
        "{:?}",
        small.headers
    );
    // `pyxis bench` through the gateway: figures broken down by what served the calls.
    let benched = cli.json(&[
        "bench",
        "--base-url",
        &format!("{base_url}/v1"),
        "--model",
        "qwen-7b",
        "--api-key",
        key,
        "--requests",
        "12",
        "--concurrency",
        "3",
        "--max-tokens",
        "4",
        "-o",
        "json",
    ]);
    assert_eq!(benched["succeeded"], 12, "{benched}");
    assert!(benched["ttft_ms"]["p50"].as_f64().unwrap() > 0.0, "{benched}");
    let served: Vec<&str> = benched["served_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["runtime"].as_str().unwrap())
        .collect();
    assert!(
        !served.is_empty()
            && served
                .iter()
                .all(|r| r.starts_with("vllm/") || r.starts_with("sglang/")),
        "{benched}"
    );
    // A call for a deployment placement cannot start (llama-70b) is answered at once with
    // why, not after the scale-from-zero wait (5 minutes).
    let asked = Instant::now();
    let unplaceable = pyxis_smoke::request(
        "POST",
        gateway,
        &[("Authorization", &auth)],
        Some(r#"{"model": "llama-70b", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}"#),
    );
    assert_eq!(unplaceable.status, 503, "{}", unplaceable.body);
    assert!(
        unplaceable.body.contains("placement cannot start one now") && unplaceable.body.contains("pyxis explain"),
        "{}",
        unplaceable.body
    );
    assert!(asked.elapsed() < Duration::from_secs(30), "{:?}", asked.elapsed());
    // The admin API refuses an oversized body in its own error shape, before reading it.
    let host = cli.server.trim_start_matches("http://").to_string();
    let mut declared = std::net::TcpStream::connect(&host).unwrap();
    declared.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        declared,
        "POST /api/v1/apply HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: application/yaml\r\nContent-Length: 99999999\r\n\r\n",
        cli.token
    )
    .unwrap();
    let mut answer = String::new();
    let _ = declared.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.contains("\"bad_request\""),
        "{answer}"
    );
    assert!(answer.contains("16 MiB"), "{answer}");

    // Embeddings are served in dev mode (bge-embeddings, on vLLM), with a product key.
    let created = cli.json(&["apikey", "create", "--tenant", "product", "-o", "json"]);
    let product = format!("Bearer {}", created["key"].as_str().unwrap());
    let embedded = pyxis_smoke::request(
        "POST",
        &gateway.replace("/chat/completions", "/embeddings"),
        &[("Authorization", &product)],
        Some(r#"{"model": "bge-embeddings", "input": "hello"}"#),
    );
    assert_eq!(embedded.status, 200, "{}", embedded.body);
    assert!(embedded.body.contains("\"embedding\""), "{}", embedded.body);
    // Dev mode's runtimes listen on loopback only: the gateway is the way in.
    let replicas = cli.json(&["get", "replicas", "-A", "-o", "json"]);
    let mut checked = 0;
    for replica in replicas["items"].as_array().unwrap() {
        let Some(endpoint) = replica["endpoint"].as_str() else {
            continue;
        };
        let port: u16 = endpoint
            .trim_start_matches("http://")
            .split(['/', ':'])
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {endpoint}"));
        let bound = pyxis_smoke::listening_on(port);
        assert!(
            !bound.is_empty() && bound.iter().all(|a| a.is_loopback()),
            "{} listens on {bound:?}",
            replica["name"]
        );
        checked += 1;
    }
    assert!(checked >= 5, "{replicas}");
    let audited = cli.ok(&["audit", "--since", "1h"]);
    assert!(audited.contains("qwen-7b"), "{audited}");
    let explain = cli.ok(&["explain", "deployment", "llama-70b", "-n", "research"]);
    // Four linked H100s on one node: no dev node has them, so it is pending on every start.
    assert!(explain.contains("WHY NOT CHOSEN"), "{explain}");
    assert!(explain.contains("0 placed, 0 ready, 1 pending"), "{explain}");
    // Gateway API keys: shown once, stored hashed, listed without the secret, revoked.
    let created = cli.json(&["apikey", "create", "--tenant", "research", "--name", "ci", "-o", "json"]);
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(key.starts_with("pyxis-") && key.contains(id), "{created}");
    let listed = cli.ok(&["apikey", "list", "-o", "json"]);
    assert!(
        listed.contains(id) && !listed.contains(key),
        "the secret is never listed: {listed}"
    );
    let first = cli.ok(&["apikey", "revoke", id]);
    assert!(first.contains("revoked at 20"), "{first}");
    // Revoking again says when it was revoked, not a new time.
    assert_eq!(cli.ok(&["apikey", "revoke", id]), first);
    let listed = cli.json(&["apikey", "list", "--tenant", "research", "-o", "json"]);
    let revoked = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap();
    assert!(revoked["revoked_at"].is_string(), "{listed}");
    let (code, _, err) = cli.run(&["apikey", "create", "--tenant", "nobody"]);
    assert_eq!(code, 1);
    assert!(err.contains("tenant nobody not found"), "{err}");
    // Deleting a tenant revokes its keys: the tenant created again under the same name
    // does not inherit them.
    let tenant = dir.path().join("qa.yaml");
    std::fs::write(
        &tenant,
        "apiVersion: pyxis.dev/v1alpha1\nkind: Tenant\nmetadata: {name: qa}\nspec: {}\n",
    )
    .unwrap();
    cli.ok(&["apply", "-f", tenant.to_str().unwrap()]);
    let created = cli.json(&["apikey", "create", "--tenant", "qa", "-o", "json"]);
    let qa_auth = format!("Bearer {}", created["key"].as_str().unwrap());
    let base = gateway.split("/v1/").next().unwrap();
    let models =
        |auth: &str| pyxis_smoke::request("GET", &format!("{base}/v1/models"), &[("Authorization", auth)], None);
    assert_eq!(models(&qa_auth).status, 200);
    cli.ok(&["delete", "tenant", "qa"]);
    cli.ok(&["apply", "-f", tenant.to_str().unwrap()]);
    let again = models(&qa_auth);
    assert_eq!(again.status, 401, "a deleted tenant's key works again: {}", again.body);
    let listed = cli.json(&["apikey", "list", "--tenant", "qa", "-o", "json"]);
    assert!(listed["items"][0]["revoked_at"].is_string(), "{listed}");
    assert!(dev.terminate(START).success());
    // Nothing dev mode started outlives it: no process works in its data dir.
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_link(e.path().join("cwd")).ok())
        .filter(|cwd| cwd.starts_with(dir.path()))
        .map(|cwd| cwd.display().to_string())
        .collect();
    assert!(
        leftovers.is_empty(),
        "processes left in the dev data dir: {leftovers:?}"
    );
}
