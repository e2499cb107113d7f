//! Both daemons' `/metrics` pass `promtool check metrics` (the real Prometheus tool).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use pyxis_smoke::{bin, http, log_field, Daemon};

const START: Duration = Duration::from_secs(30);

fn promtool(what: &str, exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}); install it with `apt-get install prometheus` (.ci/run does)")
        });
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool on {what}: {report}\n{exposition}"
    );
}

#[test]
fn coordinator_and_agent_metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("pyxis-coordinator"));
    cmd.args([
        "--dev",
        "--quic-addr",
        "127.0.0.1:0",
        "--api-addr",
        "127.0.0.1:0",
        "--gateway-addr",
        "127.0.0.1:0",
    ])
    .arg("--data-dir")
    .arg(dir.path().join("c"));
    let coordinator = Daemon::spawn("coordinator", cmd);
    let api = log_field(&coordinator.wait_for_line("admin API listening", START), "addr")
        .unwrap()
        .to_string();
    let quic = log_field(&coordinator.wait_for_line("agent link listening", START), "addr")
        .unwrap()
        .to_string();
    let admin = std::fs::read_to_string(dir.path().join("c/admin-token")).unwrap();
    let (status, body) = http(
        "POST",
        &format!("http://{api}/api/v1/tokens"),
        Some(admin.trim()),
        Some("{}"),
    );
    assert_eq!(status, 201, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut cmd = Command::new(bin("pyxis-agent"));
    cmd.args([
        "--coordinator",
        &quic,
        "--name",
        "metrics-node",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .args(["--simulate", "2xH100-80GB,1xMI300X-192GB,4xTPU-v5e"])
    .args([
        "--join-token",
        token["token"].as_str().unwrap(),
        "--ca-hash",
        token["ca_hash"].as_str().unwrap(),
    ])
    .arg("--data-dir")
    .arg(dir.path().join("a"));
    let agent = Daemon::spawn("agent", cmd);
    let agent_addr = log_field(&agent.wait_for_line("serving /metrics", START), "addr")
        .unwrap()
        .to_string();
    agent.wait_for_line("registered", START);
    // Let a few reports land so that counters and histograms have samples.
    coordinator.wait_for_line("node status changed", START);

    let (status, text) = http("GET", &format!("http://{agent_addr}/metrics"), None, None);
    assert_eq!(status, 200);
    for family in [
        "pyxis_gpu_utilization_ratio",
        "pyxis_gpu_memory_used_bytes",
        "pyxis_gpu_memory_total_bytes",
        "pyxis_gpu_temperature_celsius",
        "pyxis_gpu_power_watts",
        "pyxis_gpu_health",
    ] {
        assert!(
            text.contains(&format!("{family}{{node=\"metrics-node\"")),
            "{family} missing:\n{text}"
        );
    }
    assert!(text.contains("simulated=\"true\""));
    // Only NVIDIA GPUs have XIDs and (in the simulator, as with NVML) throttle reasons: the
    // MI300X and the TPUs have no sample rather than a made-up 0.
    for family in ["pyxis_gpu_xid_errors_total", "pyxis_gpu_throttled"] {
        let vendors: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .filter_map(|l| l.split("vendor=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(vendors, ["nvidia", "nvidia"], "{family}:\n{text}");
    }
    promtool("agent", &text);

    // Dev mode applies examples/dev: wait for a placement pass that placed something.
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, text) = http("GET", &format!("http://{api}/metrics"), None, None);
        assert_eq!(status, 200);
        if text.contains("pyxis_replicas_placed{tenant=\"research\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no placement in the metrics:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A gateway call, so that the gateway's families have labelled samples too.
    let key_line = coordinator.wait_for_line("demo API key", START);
    let key = key_line.split_whitespace().last().unwrap().to_string();
    let gateway_line = coordinator.wait_for_line("gateway:", START);
    let gateway = gateway_line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_end_matches("/v1")
        .to_string();
    let auth = format!("Bearer {key}");
    let deadline = std::time::Instant::now() + START;
    loop {
        let r = pyxis_smoke::request(
            "POST",
            &format!("{gateway}/v1/chat/completions"),
            &[("Authorization", &auth)],
            Some(
                r#"{"model": "qwen-7b", "stream": true, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}"#,
            ),
        );
        if r.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway never served: {}",
            r.body
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, text) = http("GET", &format!("http://{api}/metrics"), None, None);
    for family in [
        "pyxis_gateway_requests_total{tenant=\"research\",model=\"Qwen/Qwen2.5-7B-Instruct\"",
        "pyxis_gateway_request_duration_seconds_bucket{tenant=\"research\"",
        "pyxis_gateway_time_to_first_token_seconds_bucket{tenant=\"research\"",
        "pyxis_gateway_tokens_total{tenant=\"research\"",
        "pyxis_gateway_queue_depth{tenant=\"research\",deployment=\"qwen-7b\"}",
        "pyxis_audit_records_written_total",
        "pyxis_nodes{status=\"Ready\"}",
        "pyxis_capacity_reports_total",
        "pyxis_capacity_report_lag_seconds_bucket",
        "pyxis_placement_duration_seconds_bucket",
        "pyxis_placement_passes_total",
        "pyxis_replicas_pending{tenant=",
        "pyxis_tenant_allocated_gpus{tenant=\"research\",quota_mode=\"enforce\"}",
        "pyxis_tenant_guarantee_gpus{tenant=\"product\",quota_mode=\"dry-run\"}",
        "pyxis_tenant_fair_share_gpus{tenant=",
        "pyxis_tenant_quota_used_ratio{tenant=",
        "pyxis_fleet_capacity_gpus",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    promtool("coordinator", &text);
    // A graceful stop: dev mode stops the mock runtimes it started.
    let mut coordinator = coordinator;
    assert!(coordinator.terminate(START).success());
}
