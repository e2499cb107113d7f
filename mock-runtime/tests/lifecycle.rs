//! Process behaviour: slow start and hang per flavour, crash knobs and exit codes, signals,
//! and the child process in the same process group.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{alive, eventually, free_port, get, post, proc_stat, try_get, Mock, PATIENCE};
use serde_json::json;

fn chat(mock: &Mock) -> u16 {
    post(
        &mock.url("/v1/chat/completions"),
        &json!({"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}),
    )
    .0
}

/// Polls `url` until it answers 200, recording every distinct outcome on the way:
/// `"refused"` for a transport error, else the status code.
fn outcomes_until_ready(url: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    eventually(&format!("{url} answers 200"), PATIENCE, || {
        let outcome = match try_get(url, Duration::from_secs(2)) {
            Ok((status, _)) => status.to_string(),
            Err(_) => "refused".to_string(),
        };
        if seen.last() != Some(&outcome) {
            seen.push(outcome.clone());
        }
        outcome == "200"
    });
    seen
}

#[test]
fn vllm_tgi_and_trtllm_keep_the_port_closed_while_loading() {
    for (flavor, args) in [
        ("vllm", vec!["serve", "m", "--host", "127.0.0.1", "--port"]),
        ("tgi", vec!["--model-id", "m", "--hostname", "127.0.0.1", "--port"]),
        ("trtllm", vec!["m", "--host", "127.0.0.1", "--port"]),
    ] {
        let port = free_port().to_string();
        let mut line = vec!["--flavor", flavor, "--startup-ms", "1500"];
        line.extend(args);
        line.push(&port);
        let mut mock = Mock::spawn(&line);
        mock.wait_for_line("port closed until it is loaded", PATIENCE);
        let seen = outcomes_until_ready(&format!("http://127.0.0.1:{port}/health"));
        assert_eq!(seen, ["refused", "200"], "{flavor}");
        assert_eq!(mock.wait_listening(), format!("127.0.0.1:{port}"));
    }
}

#[test]
fn sglang_is_closed_then_503_then_ready() {
    let port = free_port().to_string();
    let mut mock = Mock::spawn(&[
        "--flavor",
        "sglang",
        "--startup-ms",
        "2000",
        "--model-path",
        "m",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
    ]);
    mock.wait_for_line("port closed until it is loaded", PATIENCE);
    let seen = outcomes_until_ready(&format!("http://127.0.0.1:{port}/health"));
    assert_eq!(seen, ["refused", "503", "200"]);
    mock.wait_listening();
    assert_eq!(chat(&mock), 200);
}

#[test]
fn llama_cpp_answers_503_loading_while_the_port_is_open() {
    let mock = Mock::start(&[
        "--flavor",
        "llama-cpp",
        "--startup-ms",
        "1500",
        "-m",
        "m.gguf",
        "--port",
        "0",
    ]);
    let (status, body) = get(&mock.url("/health"));
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
    );
    assert_eq!(chat(&mock), 503);
    // The model list answers, with null metadata.
    let (status, models) = get(&mock.url("/v1/models"));
    assert_eq!(status, 200);
    assert!(models.contains(r#""meta":null"#), "{models}");
    let seen = outcomes_until_ready(&mock.url("/health"));
    assert_eq!(seen, ["503", "200"]);
    assert_eq!(chat(&mock), 200);
}

#[test]
fn triton_is_live_but_not_ready_while_loading() {
    let mock = Mock::start(&[
        "--flavor",
        "triton",
        "--startup-ms",
        "1500",
        "--model-repository",
        "/r",
        "--load-model",
        "m",
        "--http-port",
        "0",
        "--http-address",
        "127.0.0.1",
        "--allow-metrics",
        "false",
        "--allow-grpc",
        "false",
    ]);
    assert_eq!(get(&mock.url("/v2/health/live")).0, 200);
    assert_eq!(get(&mock.url("/v2/health/ready")).0, 400);
    assert_eq!(get(&mock.url("/v2/models/m/ready")).0, 400);
    assert_eq!(get(&mock.url("/v2")).0, 200, "metadata answers while loading");
    assert_eq!(outcomes_until_ready(&mock.url("/v2/health/ready")), ["400", "200"]);
    assert_eq!(get(&mock.url("/v2/models/m/ready")).0, 200);
}

#[test]
fn ollama_is_up_at_once_and_requests_wait_for_the_model() {
    let mock = Mock::start_with_env(
        &["--flavor", "ollama", "--startup-ms", "1000", "--ttft-ms", "0", "serve"],
        &[("OLLAMA_HOST", "127.0.0.1:0"), ("PYXIS_MOCK_MODEL", "m")],
    );
    assert_eq!(get(&mock.url("/")).0, 200);
    assert_eq!(common::get_json(&mock.url("/api/ps")), json!({"models": []}));
    // Sent while loading: waits, then succeeds.
    assert_eq!(chat(&mock), 200);
    mock.wait_for_line("model loaded: ready", PATIENCE);
    assert_eq!(common::get_json(&mock.url("/api/ps"))["models"][0]["name"], "m");
}

#[test]
fn hang_never_becomes_ready() {
    // vLLM: the port is bound but nothing answers; a prober must time out.
    let mock = Mock::start(&[
        "--flavor",
        "vllm",
        "--hang",
        "serve",
        "m",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]);
    mock.wait_for_line("--hang: port bound but never served", PATIENCE);
    let error = try_get(&mock.url("/health"), Duration::from_millis(500)).unwrap_err();
    assert!(
        error.to_lowercase().contains("timeout") || error.to_lowercase().contains("timed out"),
        "{error}"
    );

    // llama.cpp, SGLang, the plain mock: "loading" forever.
    let mock = Mock::start(&["--flavor", "llama-cpp", "--hang", "-m", "m", "--port", "0"]);
    mock.wait_for_line("--hang: loading forever", PATIENCE);
    assert_eq!(get(&mock.url("/health")).0, 503);
    let mock = Mock::start(&["--flavor", "openai", "--hang", "--port", "0"]);
    mock.wait_for_line("--hang: loading forever", PATIENCE);
    assert_eq!(get(&mock.url("/health")), (503, r#"{"status":"loading"}"#.to_string()));

    // TGI: the port never opens.
    let port = free_port().to_string();
    let mock = Mock::spawn(&[
        "--flavor",
        "tgi",
        "--hang",
        "--model-id",
        "m",
        "--hostname",
        "127.0.0.1",
        "--port",
        &port,
    ]);
    mock.wait_for_line("port closed until it is loaded", PATIENCE);
    assert!(try_get(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(1)).is_err());
    assert!(mock.stdout().iter().all(|l| !l.starts_with("listening on")));
}

#[test]
fn crash_after_n_requests_exits_3() {
    let mut mock = Mock::start(&[
        "--flavor",
        "vllm",
        "--ttft-ms",
        "0",
        "--crash-after",
        "2",
        "serve",
        "m",
        "--port",
        "0",
    ]);
    assert_eq!(chat(&mock), 200);
    assert_eq!(chat(&mock), 200, "the Nth request is answered before the crash");
    assert_eq!(mock.exit_code(PATIENCE), 3);
    mock.wait_for_line("--crash-after reached", PATIENCE);

    // Set through the environment, as a test would through a replica's env.
    let mut mock = Mock::start_with_env(
        &["--flavor", "openai", "--ttft-ms", "0", "--model", "m", "--port", "0"],
        &[("PYXIS_MOCK_CRASH_AFTER", "1")],
    );
    assert_eq!(chat(&mock), 200);
    assert_eq!(mock.exit_code(PATIENCE), 3);
}

#[test]
fn exit_after_ms_exits_3() {
    let mut mock = Mock::start(&["--flavor", "openai", "--exit-after-ms", "300", "--port", "0"]);
    assert_eq!(mock.exit_code(PATIENCE), 3);
    mock.wait_for_line("--exit-after-ms reached", PATIENCE);
}

#[test]
fn sigterm_exits_0_and_stops_the_child() {
    let mut mock = Mock::start(&["--flavor", "vllm", "--spawn-child", "serve", "m", "--port", "0"]);
    let line = mock.wait_for_line("spawned child pid ", PATIENCE);
    let child: u32 = line.trim_start_matches("spawned child pid ").parse().unwrap();
    mock.wait_for_line(&format!("mock child {child} started"), PATIENCE);
    let (_, ppid, pgrp) = proc_stat(child).unwrap();
    assert_eq!(
        (ppid, pgrp),
        (mock.pid(), mock.pid()),
        "a child of the mock, in its process group"
    );
    mock.signal_group("TERM");
    assert_eq!(mock.exit_code(PATIENCE), 0);
    eventually("the child is gone", PATIENCE, || !alive(child));
}

#[test]
fn ignore_sigterm_needs_sigkill_for_the_whole_group() {
    let mut mock = Mock::start(&[
        "--flavor",
        "vllm",
        "--ttft-ms",
        "0",
        "--spawn-child",
        "--ignore-sigterm",
        "serve",
        "m",
        "--port",
        "0",
    ]);
    let line = mock.wait_for_line("spawned child pid ", PATIENCE);
    let child: u32 = line.trim_start_matches("spawned child pid ").parse().unwrap();
    mock.wait_for_line(&format!("mock child {child} started"), PATIENCE);
    mock.signal_group("TERM");
    mock.wait_for_line("received SIGTERM: ignoring it", PATIENCE);
    mock.wait_for_line(&format!("mock child {child}: ignoring SIGTERM"), PATIENCE);
    assert_eq!(chat(&mock), 200, "still serving after SIGTERM");
    assert!(alive(child));
    mock.signal_group("KILL");
    let status = mock.wait_exit(PATIENCE);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    eventually("the child is gone", PATIENCE, || !alive(child));
}

#[test]
fn a_crash_leaves_the_child_behind_in_the_group() {
    let mut mock = Mock::start(&[
        "--flavor",
        "vllm",
        "--spawn-child",
        "--exit-after-ms",
        "500",
        "serve",
        "m",
        "--port",
        "0",
    ]);
    let line = mock.wait_for_line("spawned child pid ", PATIENCE);
    let child: u32 = line.trim_start_matches("spawned child pid ").parse().unwrap();
    assert_eq!(mock.exit_code(PATIENCE), 3);
    // Orphaned, like vLLM's workers when its API server dies: still alive, still in the
    // group, so only a group kill stops it.
    assert!(alive(child));
    let (_, _, pgrp) = proc_stat(child).unwrap();
    assert_eq!(pgrp, mock.pid());
    common::signal_group(pgrp, "KILL");
    eventually("the child is gone", PATIENCE, || !alive(child));
}
