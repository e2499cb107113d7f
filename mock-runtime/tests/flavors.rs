//! Each flavour: its real launch line is accepted, an unknown flag exits 2 naming it, and
//! its health, version and metrics endpoints answer as the real runtime's do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{get, get_json, post, post_stream, sample, Mock, PATIENCE};
use serde_json::{json, Value};

/// A launch line per flavour as an adapter would write it (port 0: any free port).
const LAUNCHES: &[(&str, &[&str])] = &[
    (
        "vllm",
        &[
            "serve",
            "Qwen/Qwen2.5-7B-Instruct",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--served-model-name",
            "qwen",
            "--tensor-parallel-size",
            "1",
            "--gpu-memory-utilization",
            "0.9",
            "--max-model-len",
            "8192",
        ],
    ),
    (
        "tgi",
        &[
            "--model-id",
            "/models/qwen",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--num-shard",
            "1",
            "--max-total-tokens",
            "8192",
        ],
    ),
    (
        "sglang",
        &[
            "--model-path",
            "/models/qwen",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--tp",
            "1",
            "--enable-metrics",
            "--mem-fraction-static",
            "0.8",
        ],
    ),
    (
        "triton",
        &[
            "--model-repository=/nonexistent/models",
            "--load-model",
            "qwen",
            "--http-address",
            "127.0.0.1",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--metrics-address",
            "127.0.0.1",
            "--grpc-address",
            "127.0.0.1",
        ],
    ),
    (
        "trtllm",
        &[
            "/models/qwen",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--tp_size",
            "1",
            "--max_seq_len",
            "8192",
        ],
    ),
    ("ollama", &["serve"]),
    (
        "llama-cpp",
        &[
            "-m",
            "/models/qwen.gguf",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "-c",
            "8192",
            "--metrics",
            "-t",
            "4",
            "-ngl",
            "99",
        ],
    ),
    ("openai", &["--model", "qwen", "--host", "127.0.0.1", "--port", "0"]),
];

fn launch(flavor: &str) -> Vec<&'static str> {
    LAUNCHES
        .iter()
        .find(|(f, _)| *f == flavor)
        .map(|(_, a)| a.to_vec())
        .unwrap()
}

fn start(flavor: &str, knobs: &[&str], extra: &[&str]) -> Mock {
    let mut args = vec!["--flavor", flavor, "--ttft-ms", "0", "--tpot-ms", "0"];
    args.extend_from_slice(knobs);
    args.extend(launch(flavor));
    args.extend_from_slice(extra);
    Mock::start_with_env(&args, &[("OLLAMA_HOST", "127.0.0.1:0"), ("PYXIS_MOCK_MODEL", "qwen")])
}

fn chat(mock: &Mock, model: &str) -> (u16, Value) {
    post(
        &mock.url("/v1/chat/completions"),
        &json!({"model": model, "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 2}),
    )
}

#[test]
fn unknown_flags_exit_2_naming_the_flag() {
    for (flavor, args) in LAUNCHES {
        let mut line = vec!["--flavor", flavor];
        line.extend_from_slice(args);
        line.extend_from_slice(&["--bogus-flag", "1"]);
        let mut mock = Mock::spawn(&line);
        assert_eq!(mock.exit_code(PATIENCE), 2, "{flavor}");
        let stderr = mock.stderr().join("\n");
        assert!(stderr.contains("--bogus-flag"), "{flavor}: {stderr}");
    }
    // Another runtime's spelling is unknown too: that is how a wrong adapter line shows.
    for (flavor, line) in [
        ("vllm", &["serve", "m", "--tp_size", "2"][..]),
        (
            "sglang",
            &["--model-path", "m", "--tensor-parallel-size", "2", "--num-shard", "2"][..],
        ),
        (
            "tgi",
            &["--model-id", "m", "--port", "1", "--tensor-parallel-size", "2"][..],
        ),
        ("trtllm", &["m", "--tensor-parallel-size", "2"][..]),
        ("llama-cpp", &["-m", "m", "--served-model-name", "x"][..]),
        ("triton", &["--model-repository", "/r", "--port", "8000"][..]),
        ("ollama", &["serve", "--host", "0.0.0.0"][..]),
    ] {
        let mut args = vec!["--flavor", flavor];
        args.extend_from_slice(line);
        let mut mock = Mock::spawn(&args);
        assert_eq!(mock.exit_code(PATIENCE), 2, "{flavor} {line:?}");
    }
    // A missing value and a missing model are usage errors as well.
    let mut mock = Mock::spawn(&["--flavor", "vllm", "serve", "m", "--port"]);
    assert_eq!(mock.exit_code(PATIENCE), 2);
    assert!(mock.stderr().join("\n").contains("--port"));
    let mut mock = Mock::spawn(&["--flavor", "sglang", "--port", "1"]);
    assert_eq!(mock.exit_code(PATIENCE), 2);
    // So are the mock's own knobs.
    let mut mock = Mock::spawn(&["--flavor", "nope"]);
    assert_eq!(mock.exit_code(PATIENCE), 2);
}

#[test]
fn help_says_it_is_a_mock() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pyxis-mock-runtime"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("MOCK inference runtime for Pyxis tests and dev mode"),
        "{help}"
    );
    assert!(help.contains("Not a runtime"), "{help}");
}

#[test]
fn vllm_endpoints() {
    let mock = start("vllm", &[], &[]);
    let (status, body) = get(&mock.url("/health"));
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(get_json(&mock.url("/version")), json!({"version": "0.0.0-mock"}));
    assert_eq!(chat(&mock, "qwen").0, 200);
    assert_eq!(chat(&mock, "Qwen/Qwen2.5-7B-Instruct").0, 404, "only the served name");
    let metrics = get(&mock.url("/metrics")).1;
    let labels = r#"{engine="0",model_name="qwen"}"#;
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
    ] {
        sample(&metrics, &format!("{name}{labels}"));
    }
    assert_eq!(sample(&metrics, &format!("vllm:prompt_tokens_total{labels}")), 3.0);
    assert_eq!(sample(&metrics, &format!("vllm:generation_tokens_total{labels}")), 2.0);
    assert!(metrics.contains("# TYPE vllm:time_to_first_token_seconds histogram"));
    let (status, body) = get(&mock.url("/does-not-exist"));
    assert_eq!((status, body.as_str()), (404, r#"{"detail":"Not Found"}"#));
}

#[test]
fn tgi_endpoints() {
    let mock = start("tgi", &["--mock-version", "3.3.6"], &[]);
    assert_eq!(get(&mock.url("/health")).0, 200);
    let info = get_json(&mock.url("/info"));
    assert_eq!(info["version"], "3.3.6");
    assert_eq!(info["model_id"], "/models/qwen");
    assert_eq!(info["max_total_tokens"], 8192);
    // TGI serves one model and ignores the request's name ("tgi" in its docs).
    assert_eq!(chat(&mock, "tgi").0, 200);
    let metrics = get(&mock.url("/metrics")).1;
    assert_eq!(sample(&metrics, "tgi_batch_current_size "), 0.0);
    assert_eq!(sample(&metrics, "tgi_queue_size "), 0.0);
    assert_eq!(sample(&metrics, "tgi_request_input_length_sum "), 3.0);
    assert_eq!(sample(&metrics, "tgi_request_generated_tokens_sum "), 2.0);
    // No embeddings route (that is TEI), and no usage chunk when streaming (TGI#2531).
    let (status, _) = post(&mock.url("/v1/embeddings"), &json!({"input": "x"}));
    assert_eq!(status, 404);
    let (events, _) = post_stream(
        &mock.url("/v1/chat/completions"),
        &json!({"model": "tgi", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": true,
                "stream_options": {"include_usage": true}}),
    );
    assert!(events.iter().all(|e| !e.contains("usage")), "{events:#?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn sglang_endpoints() {
    let mock = start("sglang", &[], &["--served-model-name", "qwen"]);
    let (status, body) = get(&mock.url("/health"));
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(get(&mock.url("/health_generate")).0, 200);
    for path in ["/get_server_info", "/server_info"] {
        let info = get_json(&mock.url(path));
        assert_eq!(info["version"], "0.0.0-mock");
        assert_eq!(info["model_path"], "/models/qwen");
        assert_eq!(info["served_model_name"], "qwen");
        assert_eq!(info["tp_size"], 1);
        assert_eq!(info["mem_fraction_static"], "0.8");
    }
    assert_eq!(get_json(&mock.url("/get_model_info"))["model_path"], "/models/qwen");
    assert_eq!(chat(&mock, "qwen").0, 200);
    let metrics = get(&mock.url("/metrics")).1;
    let labels = r#"{model_name="qwen"}"#;
    assert_eq!(sample(&metrics, &format!("sglang:num_running_reqs{labels}")), 0.0);
    assert_eq!(sample(&metrics, &format!("sglang:num_queue_reqs{labels}")), 0.0);
    assert_eq!(sample(&metrics, &format!("sglang:token_usage{labels}")), 0.0);
    assert_eq!(sample(&metrics, &format!("sglang:prompt_tokens_total{labels}")), 3.0);
    assert_eq!(
        sample(&metrics, &format!("sglang:generation_tokens_total{labels}")),
        2.0
    );
    sample(&metrics, &format!("sglang:cache_hit_rate{labels}"));

    // Without --enable-metrics there is no /metrics.
    let mock = Mock::start(&["--flavor", "sglang", "--model-path", "m", "--port", "0"]);
    assert_eq!(get(&mock.url("/metrics")).0, 404);
}

#[test]
fn triton_endpoints_and_metrics_port() {
    let mock = start("triton", &[], &["--metrics-config", "histogram_latencies=true"]);
    let metrics_address = mock.wait_for_line("metrics listening on ", PATIENCE);
    let metrics_address = metrics_address.trim_start_matches("metrics listening on ").to_string();
    mock.wait_for_line("grpc listening on ", PATIENCE);
    let server = get_json(&mock.url("/v2"));
    assert_eq!(server["name"], "triton");
    assert_eq!(server["version"], "0.0.0-mock");
    assert!(server["extensions"].is_array());
    assert_eq!(get(&mock.url("/v2/health/live")).0, 200);
    assert_eq!(get(&mock.url("/v2/health/ready")), (200, String::new()));
    assert_eq!(get(&mock.url("/v2/models/qwen/ready")).0, 200);
    assert_eq!(get(&mock.url("/v2/models/other/ready")).0, 400);
    assert_eq!(get_json(&mock.url("/v2/models/qwen"))["name"], "qwen");
    // tritonserver has no OpenAI API (that is its separate frontend).
    assert_eq!(chat(&mock, "qwen").0, 404);
    assert_eq!(get(&mock.url("/v1/models")).0, 404);
    // The generate extension of its LLM backends.
    let (status, output) = post(
        &mock.url("/v2/models/qwen/generate"),
        &json!({"text_input": "one two three", "max_tokens": 3}),
    );
    assert_eq!(status, 200, "{output}");
    assert_eq!(output["model_name"], "qwen");
    assert_eq!(output["text_output"].as_str().unwrap().split_whitespace().count(), 3);
    let (events, _) = post_stream(
        &mock.url("/v2/models/qwen/generate_stream"),
        &json!({"text_input": "one two three", "max_tokens": 2}),
    );
    assert_eq!(events.len(), 2, "{events:#?}");
    let (status, error) = post(&mock.url("/v2/models/other/generate"), &json!({"text_input": "x"}));
    assert_eq!(status, 400);
    assert!(error["error"].as_str().unwrap().contains("unknown model"), "{error}");
    assert_eq!(
        post(&mock.url("/v2/models/qwen/generate"), &json!({"max_tokens": 1})).0,
        400
    );
    let metrics = get(&format!("http://{metrics_address}/metrics")).1;
    let labels = r#"{model="qwen",version="1"}"#;
    assert_eq!(sample(&metrics, &format!("nv_inference_request_success{labels}")), 2.0);
    assert_eq!(
        sample(&metrics, &format!("nv_inference_pending_request_count{labels}")),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("nv_inference_first_response_histogram_ms_count{labels}")
        ),
        2.0
    );
    assert_eq!(get(&mock.url("/metrics")).0, 404, "metrics live on the metrics port");
}

#[test]
fn trtllm_endpoints() {
    let mock = start("trtllm", &[], &[]);
    assert_eq!(get(&mock.url("/health")).0, 200);
    assert_eq!(get_json(&mock.url("/version")), json!({"version": "0.0.0-mock"}));
    assert_eq!(
        get_json(&mock.url("/metrics")),
        json!([]),
        "JSON stats, empty before a request"
    );
    assert_eq!(chat(&mock, "/models/qwen").0, 200);
    let stats = get_json(&mock.url("/metrics"));
    assert!(
        stats[0]["kvCacheStats"]["maxNumBlocks"].as_u64().unwrap() > 0,
        "{stats}"
    );
    let metrics = get(&mock.url("/prometheus/metrics")).1;
    let labels = r#"{model_name="/models/qwen",engine_type="trtllm"}"#;
    assert_eq!(sample(&metrics, &format!("trtllm_num_requests_running{labels}")), 0.0);
    assert_eq!(sample(&metrics, &format!("trtllm_num_requests_waiting{labels}")), 0.0);
    assert_eq!(sample(&metrics, &format!("trtllm_prompt_tokens_total{labels}")), 3.0);
    assert_eq!(
        sample(&metrics, &format!("trtllm_generation_tokens_total{labels}")),
        2.0
    );
    assert_eq!(
        sample(&metrics, &format!("time_to_first_token_seconds_count{labels}")),
        1.0
    );
    assert_eq!(post(&mock.url("/v1/embeddings"), &json!({"input": "x"})).0, 404);
}

#[test]
fn ollama_endpoints_and_pull() {
    // OLLAMA_HOST gives the address; no model until one is pulled (PYXIS_MOCK_MODEL unset).
    let mock = Mock::start_with_env(
        &["--flavor", "ollama", "--ttft-ms", "0", "serve"],
        &[("OLLAMA_HOST", "127.0.0.1:0")],
    );
    assert_eq!(get(&mock.url("/")), (200, "Ollama is running".to_string()));
    assert_eq!(get_json(&mock.url("/api/version")), json!({"version": "0.0.0-mock"}));
    assert_eq!(get(&mock.url("/metrics")).0, 404, "Ollama has no metrics endpoint");
    assert_eq!(get_json(&mock.url("/api/tags")), json!({"models": []}));
    assert_eq!(chat(&mock, "llama3.2").0, 404);
    let (status, _) = post(&mock.url("/api/pull"), &json!({"model": "llama3.2", "stream": false}));
    assert_eq!(status, 200);
    assert_eq!(get_json(&mock.url("/api/tags"))["models"][0]["name"], "llama3.2:latest");
    assert_eq!(chat(&mock, "llama3.2").0, 200);
    assert_eq!(chat(&mock, "llama3.2:latest").0, 200);
    assert_eq!(get_json(&mock.url("/api/ps"))["models"][0]["name"], "llama3.2");
    let (status, body) = post(
        &mock.url("/api/chat"),
        &json!({"model": "llama3.2", "messages": [{"role": "user", "content": "a b"}], "stream": false, "options": {"num_predict": 3}}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["done"], true);
    assert_eq!(body["eval_count"], 3);
    assert_eq!(body["prompt_eval_count"], 2);
    assert_eq!(
        body["message"]["content"].as_str().unwrap().split_whitespace().count(),
        3
    );
    let (_, loaded) = post(&mock.url("/api/generate"), &json!({"model": "llama3.2"}));
    assert_eq!(loaded["done_reason"], "load");
}

#[test]
fn ollama_keeps_pulled_models_in_its_store() {
    let store = tempfile::tempdir().unwrap();
    let root = store.path().to_str().unwrap();
    let env = [("OLLAMA_HOST", "127.0.0.1:0"), ("OLLAMA_MODELS", root)];
    let mock = Mock::start_with_env(&["--flavor", "ollama", "--ttft-ms", "0", "serve"], &env);
    assert_eq!(chat(&mock, "qwen2.5:0.5b").0, 404, "not pulled: not served");
    let (status, _) = post(
        &mock.url("/api/pull"),
        &json!({"model": "qwen2.5:0.5b", "stream": false}),
    );
    assert_eq!(status, 200);
    assert!(store
        .path()
        .join("manifests/registry.ollama.ai/library/qwen2.5/0.5b")
        .is_file());
    let (status, _) = post(
        &mock.url("/api/pull"),
        &json!({"model": "../../escape", "stream": false}),
    );
    assert_eq!(status, 200, "pulled in memory, never written outside the store");
    drop(mock);
    // A restarted replica finds it in OLLAMA_MODELS.
    let mock = Mock::start_with_env(&["--flavor", "ollama", "--ttft-ms", "0", "serve"], &env);
    assert_eq!(get_json(&mock.url("/api/tags"))["models"][0]["name"], "qwen2.5:0.5b");
    assert_eq!(chat(&mock, "qwen2.5:0.5b").0, 200);
}

#[test]
fn llama_cpp_endpoints() {
    let mock = start("llama-cpp", &["--mock-version", "b4567-abc1234"], &["-a", "qwen"]);
    assert_eq!(get_json(&mock.url("/health")), json!({"status": "ok"}));
    assert_eq!(get_json(&mock.url("/v1/health")), json!({"status": "ok"}));
    let props = get_json(&mock.url("/props"));
    assert_eq!(props["build_info"], "b4567-abc1234");
    assert_eq!(props["model_path"], "/models/qwen.gguf");
    assert_eq!(props["total_slots"], 4);
    assert_eq!(props["default_generation_settings"]["n_ctx"], 8192);
    assert_eq!(get_json(&mock.url("/v1/models"))["data"][0]["id"], "qwen");
    // llama.cpp answers whatever model name is asked.
    assert_eq!(chat(&mock, "anything").0, 200);
    let metrics = get(&mock.url("/metrics")).1;
    assert_eq!(sample(&metrics, "llamacpp:requests_processing "), 0.0);
    assert_eq!(sample(&metrics, "llamacpp:requests_deferred "), 0.0);
    assert_eq!(sample(&metrics, "llamacpp:prompt_tokens_total "), 3.0);
    assert_eq!(sample(&metrics, "llamacpp:prompt_tokens_cached_total "), 0.0);
    assert_eq!(sample(&metrics, "llamacpp:tokens_predicted_total "), 2.0);
    assert!(!metrics.contains("kv_cache"), "llama.cpp removed its KV metrics");

    // Without --metrics: 501, as llama-server answers.
    let mock = Mock::start(&["--flavor", "llama-cpp", "-m", "m.gguf", "--port", "0"]);
    let (status, body) = get(&mock.url("/metrics"));
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("--metrics"));
    let props = get_json(&mock.url("/props"));
    assert_eq!(
        props["build_info"], "b0-0.0.0-mock",
        "b<build>-<commit>, as a real build says b0-0c1e570"
    );
}

#[test]
fn openai_flavour_endpoints() {
    let mock = start("openai", &[], &[]);
    assert_eq!(get_json(&mock.url("/health")), json!({"status": "ok"}));
    assert_eq!(get_json(&mock.url("/version")), json!({"version": "0.0.0-mock"}));
    assert_eq!(chat(&mock, "qwen").0, 200);
    let (status, body) = post(
        &mock.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(status, 400, "the plain flavour requires `model`: {body}");
    let metrics = get(&mock.url("/metrics")).1;
    assert_eq!(sample(&metrics, r#"mock_prompt_tokens_total{model_name="qwen"}"#), 3.0);
    sample(&metrics, r#"mock_num_requests_running{model_name="qwen"}"#);
}
