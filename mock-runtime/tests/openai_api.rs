//! The OpenAI API of the mock, against the real binary over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{get, get_json, post, post_raw, post_stream, sample, Mock, PATIENCE};
use serde_json::{json, Value};

fn fast_vllm(extra: &[&str]) -> Mock {
    let mut args = vec!["--flavor", "vllm", "--ttft-ms", "0", "--tpot-ms", "0"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["serve", "org/model", "--host", "127.0.0.1", "--port", "0"]);
    Mock::start(&args)
}

fn chat_body(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": "org/model", "messages": [{"role": "user", "content": content}]});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

#[test]
fn chat_completion_without_streaming_has_usage_and_deterministic_text() {
    let mock = fast_vllm(&[]);
    let body = chat_body("The quick brown fox jumps", json!({"max_tokens": 5}));
    let (status, first) = post(&mock.url("/v1/chat/completions"), &body);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["object"], "chat.completion");
    assert!(first["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(first["model"], "org/model");
    let choice = &first["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "length");
    let text = choice["message"]["content"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 5, "{text}");
    assert!(text
        .split_whitespace()
        .all(|w| ["the", "quick", "brown", "fox", "jumps"].contains(&w)));
    assert_eq!(
        first["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10})
    );
    let (_, second) = post(&mock.url("/v1/chat/completions"), &body);
    assert_eq!(
        second["choices"][0]["message"]["content"], text,
        "same prompt, same answer"
    );
    assert_ne!(second["id"], first["id"]);

    // No max_tokens: 16 tokens and a natural stop.
    let (_, default) = post(&mock.url("/v1/chat/completions"), &chat_body("hello", json!({})));
    assert_eq!(default["usage"]["completion_tokens"], 16);
    assert_eq!(default["choices"][0]["finish_reason"], "stop");

    // n choices.
    let (_, many) = post(
        &mock.url("/v1/chat/completions"),
        &chat_body("a b c d", json!({"n": 3, "max_tokens": 2})),
    );
    assert_eq!(many["choices"].as_array().unwrap().len(), 3);
    assert_eq!(many["usage"]["completion_tokens"], 6);

    // One log line per request, with the token counts.
    let line = mock.wait_for_line("path=/v1/chat/completions status=200", PATIENCE);
    assert!(
        line.contains("prompt_tokens=5") && line.contains("completion_tokens=5"),
        "{line}"
    );
}

#[test]
fn chat_streaming_sends_role_content_finish_usage_and_done() {
    let mock = fast_vllm(&[]);
    let body = chat_body(
        "one two three",
        json!({"max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let (events, _) = post_stream(&mock.url("/v1/chat/completions"), &body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // Role chunk, 4 content chunks, finish chunk, usage chunk.
    assert_eq!(chunks.len(), 7, "{chunks:#?}");
    let id = &chunks[0]["id"];
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(&chunk["id"], id);
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let content: String = chunks[1..5]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(content.split_whitespace().count(), 4, "{content:?}");
    for chunk in &chunks[..6] {
        assert_eq!(chunk["usage"], Value::Null, "usage is null until the last chunk");
    }
    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(
        chunks[6]["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    );

    // The same request without streaming gives the same text.
    let (_, full) = post(
        &mock.url("/v1/chat/completions"),
        &chat_body("one two three", json!({"max_tokens": 4})),
    );
    assert_eq!(full["choices"][0]["message"]["content"], content.as_str());

    // Without include_usage there is no usage chunk and no usage field.
    let (events, _) = post_stream(
        &mock.url("/v1/chat/completions"),
        &chat_body("one two three", json!({"max_tokens": 2, "stream": true})),
    );
    assert_eq!(events.len(), 5, "role, 2 tokens, finish, [DONE]: {events:#?}");
    assert!(events.iter().all(|e| !e.contains("usage")));
}

#[test]
fn completions_streamed_and_not() {
    let mock = fast_vllm(&[]);
    let (status, full) = post(
        &mock.url("/v1/completions"),
        &json!({"model": "org/model", "prompt": "alpha beta gamma", "max_tokens": 3}),
    );
    assert_eq!(status, 200);
    assert_eq!(full["object"], "text_completion");
    assert!(full["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(
        full["choices"][0]["text"].as_str().unwrap().split_whitespace().count(),
        3
    );
    assert_eq!(
        full["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
    );

    let (events, _) = post_stream(
        &mock.url("/v1/completions"),
        &json!({"model": "org/model", "prompt": "alpha beta gamma", "max_tokens": 3, "stream": true,
                "stream_options": {"include_usage": true}}),
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, full["choices"][0]["text"].as_str().unwrap());
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["total_tokens"], 6);

    // Two prompts: one choice each.
    let (_, batch) = post(
        &mock.url("/v1/completions"),
        &json!({"model": "org/model", "prompt": ["a b", "c d e"], "max_tokens": 2}),
    );
    assert_eq!(batch["choices"].as_array().unwrap().len(), 2);
    assert_eq!(
        batch["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9})
    );
}

#[test]
fn embeddings_are_fixed_size_unit_vectors() {
    let mock = fast_vllm(&["--embedding-dim", "8"]);
    let (status, body) = post(
        &mock.url("/v1/embeddings"),
        &json!({"model": "org/model", "input": ["hello world", "bye"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        let vector: Vec<f64> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(vector.len(), 8);
        let norm = vector.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    assert_eq!(body["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let (_, again) = post(
        &mock.url("/v1/embeddings"),
        &json!({"model": "org/model", "input": "hello world"}),
    );
    assert_eq!(again["data"][0]["embedding"], data[0]["embedding"]);
    let (_, small) = post(
        &mock.url("/v1/embeddings"),
        &json!({"model": "org/model", "input": "x", "dimensions": 3, "encoding_format": "base64"}),
    );
    assert_eq!(
        small["data"][0]["embedding"].as_str().unwrap().len(),
        16,
        "3 f32 = 12 bytes = 16 base64 chars"
    );
}

#[test]
fn models_lists_the_served_names() {
    let mock = Mock::start(&[
        "--flavor",
        "vllm",
        "serve",
        "/models/qwen",
        "--served-model-name",
        "qwen",
        "qwen-alias",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--max-model-len",
        "4096",
    ]);
    let models = get_json(&mock.url("/v1/models"));
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["qwen", "qwen-alias"]);
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(models["data"][0]["owned_by"], "vllm");
    assert_eq!(models["data"][0]["root"], "/models/qwen");
    assert_eq!(models["data"][0]["max_model_len"], 4096);
    let (status, _) = post(
        &mock.url("/v1/chat/completions"),
        &json!({"model": "qwen-alias", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    );
    assert_eq!(status, 200);
}

#[test]
fn errors_are_openai_error_json() {
    let mock = fast_vllm(&["--embedding-dim", "4"]);
    let chat = mock.url("/v1/chat/completions");
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        ("{not json", "/v1/chat/completions", 400, None),
        (
            r#"{"model":"org/model"}"#,
            "/v1/chat/completions",
            400,
            Some("messages"),
        ),
        (
            r#"{"model":"org/model","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
            "/v1/chat/completions",
            400,
            Some("max_tokens"),
        ),
        (
            r#"{"model":"other","messages":[{"role":"user","content":"x"}]}"#,
            "/v1/chat/completions",
            404,
            Some("model"),
        ),
        (
            r#"{"model":"org/model","prompt":7}"#,
            "/v1/completions",
            400,
            Some("prompt"),
        ),
        (
            r#"{"model":"nope","prompt":"x"}"#,
            "/v1/completions",
            404,
            Some("model"),
        ),
        (r#"{"model":"org/model"}"#, "/v1/embeddings", 400, Some("input")),
        (r#"{"model":"nope","input":"x"}"#, "/v1/embeddings", 404, Some("model")),
    ];
    for (body, path, expected_status, param) in cases {
        let (status, text) = post_raw(&mock.url(path), body);
        assert_eq!(status, *expected_status, "{path} {body}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        let detail = &error["error"];
        assert!(detail["message"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
        assert!(detail["type"].is_string(), "{text}");
        assert_eq!(detail["param"].as_str(), *param, "{text}");
        assert!(detail.as_object().unwrap().contains_key("code"), "{text}");
    }
    let (_, text) = post_raw(&chat, r#"{"model":"other","messages":[{"role":"user","content":"x"}]}"#);
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["code"], "model_not_found");
    // Prompt + max_tokens beyond the context length.
    let mock = Mock::start(&[
        "--flavor",
        "vllm",
        "--ttft-ms",
        "0",
        "serve",
        "m",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--max-model-len",
        "10",
    ]);
    let (status, body) = post(
        &mock.url("/v1/chat/completions"),
        &json!({"model": "m", "messages": [{"role": "user", "content": "a b c d e f"}], "max_tokens": 5}),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 10 tokens"),
        "{body}"
    );
}

#[test]
fn api_key_guards_the_openai_routes_only() {
    let mock = Mock::start(&[
        "--flavor",
        "vllm",
        "--ttft-ms",
        "0",
        "serve",
        "m",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--api-key",
        "sekrit",
    ]);
    let (status, body) = post(
        &mock.url("/v1/chat/completions"),
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let mut response = common::client(PATIENCE)
        .post(&mock.url("/v1/chat/completions"))
        .header("authorization", "Bearer sekrit")
        .send_json(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}))
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "{}",
        response.body_mut().read_to_string().unwrap()
    );
    assert_eq!(get(&mock.url("/health")).0, 200);
    assert_eq!(get(&mock.url("/metrics")).0, 200);
}

#[test]
fn prefix_cache_lowers_ttft_and_counts_hits() {
    // 800 ms TTFT, a hit takes 20% of it; prompts share their first 64 characters.
    let mock = Mock::start(&[
        "--flavor",
        "vllm",
        "--ttft-ms",
        "800",
        "--tpot-ms",
        "0",
        "serve",
        "m",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
    ]);
    let shared = "You are a helpful assistant. Answer in one word, please, and be concise about it.";
    assert!(shared.len() > 64);
    let ask = |question: &str| {
        let body = json!({"model": "m", "max_tokens": 1, "stream": true,
                          "messages": [{"role": "system", "content": shared}, {"role": "user", "content": question}]});
        post_stream(&mock.url("/v1/chat/completions"), &body).1
    };
    let miss = ask("What is the capital of France?");
    assert!(
        miss >= Duration::from_millis(800),
        "a miss waits the full TTFT: {miss:?}"
    );
    let started = Instant::now();
    let hit = ask("And of Spain?");
    assert!(hit >= Duration::from_millis(160), "a hit still waits 20%: {hit:?}");
    assert!(hit < Duration::from_millis(600), "a hit is faster than a miss: {hit:?}");
    assert!(
        started.elapsed() < miss,
        "the hit request finished faster than the miss"
    );

    let metrics = get(&mock.url("/metrics")).1;
    let labels = r#"{engine="0",model_name="m"}"#;
    let queries = sample(&metrics, &format!("vllm:prefix_cache_queries_total{labels}"));
    let hits = sample(&metrics, &format!("vllm:prefix_cache_hits_total{labels}"));
    let words = shared.split_whitespace().count() as f64;
    assert!(
        hits > 0.0 && hits <= words,
        "hits {hits} in tokens of the shared prefix"
    );
    assert!(queries > hits, "queries {queries} > hits {hits}");
    assert_eq!(
        sample(&metrics, &format!("vllm:time_to_first_token_seconds_count{labels}")),
        2.0
    );
    // The hit's TTFT landed in a bucket the miss did not.
    assert_eq!(
        sample(
            &metrics,
            r#"vllm:time_to_first_token_seconds_bucket{engine="0",model_name="m",le="0.5"}"#
        ),
        1.0
    );

    // With the cache off, the same prompts never hit.
    let mock = Mock::start(&[
        "--flavor",
        "vllm",
        "--ttft-ms",
        "0",
        "--prefix-cache=false",
        "serve",
        "m",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
    ]);
    for _ in 0..2 {
        post(
            &mock.url("/v1/chat/completions"),
            &json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": shared}]}),
        );
    }
    let metrics = get(&mock.url("/metrics")).1;
    assert_eq!(sample(&metrics, "vllm:prefix_cache_hits_total{"), 0.0);
    assert_eq!(sample(&metrics, "vllm:prefix_cache_queries_total{"), 0.0);
}

#[test]
fn metrics_are_live_running_waiting_kv_and_tokens() {
    // One request at a time; the second waits. KV capacity 10 tokens.
    let mock = Mock::start(&[
        "--flavor",
        "vllm",
        "--ttft-ms",
        "60000",
        "--max-concurrency",
        "1",
        "--kv-capacity-tokens",
        "10",
        "serve",
        "m",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
    ]);
    let url = mock.url("/v1/chat/completions");
    let body =
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "one two three four five"}]});
    // The requests never finish (60 s TTFT); they are cut when the mock is killed.
    for _ in 0..2 {
        let (url, body) = (url.clone(), body.clone());
        std::thread::spawn(move || {
            let _ = common::client(Duration::from_secs(120)).post(&url).send_json(body);
        });
    }
    let metrics_url = mock.url("/metrics");
    let labels = r#"{engine="0",model_name="m"}"#;
    common::eventually("one running, one waiting", PATIENCE, || {
        let metrics = get(&metrics_url).1;
        sample(&metrics, &format!("vllm:num_requests_running{labels}")) == 1.0
            && sample(&metrics, &format!("vllm:num_requests_waiting{labels}")) == 1.0
    });
    let metrics = get(&metrics_url).1;
    assert_eq!(sample(&metrics, &format!("vllm:kv_cache_usage_perc{labels}")), 0.5);
    assert_eq!(sample(&metrics, &format!("vllm:prompt_tokens_total{labels}")), 5.0);
    assert_eq!(sample(&metrics, &format!("vllm:generation_tokens_total{labels}")), 0.0);
}
