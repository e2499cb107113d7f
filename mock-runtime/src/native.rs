//! Each flavour's own endpoints: health, version/info, metrics, `/v1/models`, and Ollama's
//! native API (`/api/*`), with the bodies the real runtimes answer (`docs/runtimes.md`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use crate::flavor::Flavor;
use crate::generation::{Plan, Running};
use crate::metrics::{self, MetricsContext};
use crate::openai::{self, Endpoint, ModelCard, ModelList};
use crate::server::{unix_now, App, Phase};

type AppRouter = Router<Arc<App>>;

/// The flavour's routes besides the OpenAI ones.
pub fn routes(flavor: Flavor) -> AppRouter {
    let router = Router::new();
    match flavor {
        Flavor::Vllm => router
            .route("/health", get(empty_ok))
            .route("/ping", get(empty_ok).post(empty_ok))
            .route("/version", get(version))
            .route("/metrics", get(prometheus)),
        Flavor::Tgi => router
            .route("/health", get(empty_ok))
            .route("/info", get(tgi_info))
            .route("/metrics", get(prometheus)),
        Flavor::Sglang => router
            .route("/health", get(empty_ok))
            .route("/health_generate", get(empty_ok))
            .route("/get_server_info", get(sglang_server_info))
            .route("/server_info", get(sglang_server_info))
            .route("/get_model_info", get(sglang_model_info))
            .route("/model_info", get(sglang_model_info))
            .route("/metrics", get(prometheus)),
        Flavor::Triton => router
            .route("/v2", get(triton_server_metadata))
            .route("/v2/health/live", get(empty_ok))
            .route("/v2/health/ready", get(empty_ok))
            .route("/v2/models/{name}", get(triton_model_metadata))
            .route("/v2/models/{name}/ready", get(triton_model_ready))
            .route("/v2/models/{name}/generate", post(triton_generate))
            .route("/v2/models/{name}/generate_stream", post(triton_generate_stream)),
        Flavor::Trtllm => router
            .route("/health", get(empty_ok))
            .route("/health_generate", get(empty_ok))
            .route("/version", get(version))
            .route("/metrics", get(trtllm_json_metrics))
            .route("/prometheus/metrics", get(prometheus)),
        Flavor::Ollama => router
            .route("/", get(ollama_root))
            .route("/api/version", get(version))
            .route("/api/tags", get(ollama_tags))
            .route("/api/ps", get(ollama_ps))
            .route("/api/pull", post(ollama_pull))
            .route("/api/generate", post(ollama_generate))
            .route("/api/chat", post(ollama_chat)),
        Flavor::LlamaCpp => router
            .route("/health", get(llama_cpp_health))
            .route("/v1/health", get(llama_cpp_health))
            .route("/props", get(llama_cpp_props))
            .route("/models", get(models))
            .route("/metrics", get(prometheus)),
        Flavor::Openai => router
            .route("/health", get(json_ok))
            .route("/version", get(version))
            .route("/metrics", get(prometheus)),
    }
}

async fn empty_ok() -> StatusCode {
    StatusCode::OK
}

async fn json_ok() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `{"version": "..."}`: vLLM and trtllm `/version`, Ollama `/api/version`, mock `/version`.
async fn version(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"version": app.config.version}))
}

fn context(app: &App) -> (String, usize) {
    (app.primary_model(), app.config.max_concurrency)
}

fn text(body: String) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The flavour's Prometheus endpoint (`/metrics`, trtllm `/prometheus/metrics`).
async fn prometheus(State(app): State<Arc<App>>) -> Response {
    if !app.config.launch.metrics_enabled {
        return match app.flavor() {
            Flavor::LlamaCpp => (
                StatusCode::NOT_IMPLEMENTED,
                Json(json!({"error": {"code": 501, "message": "This server does not support metrics endpoint. Start it with `--metrics`", "type": "not_supported_error"}})),
            )
                .into_response(),
            // SGLang mounts /metrics only with --enable-metrics.
            _ => (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response(),
        };
    }
    let (model, max_concurrency) = context(&app);
    let stats = app.engine().stats();
    text(metrics::prometheus(
        app.flavor(),
        &stats,
        MetricsContext {
            model: &model,
            max_concurrency,
        },
    ))
}

/// Triton's `/metrics` on the metrics port.
pub async fn triton_metrics(State(app): State<Arc<App>>) -> Response {
    let (model, max_concurrency) = context(&app);
    let stats = app.engine().stats();
    text(metrics::triton_prometheus(
        &stats,
        MetricsContext {
            model: &model,
            max_concurrency,
        },
        app.config.launch.latency_histograms,
    ))
}

/// trtllm's JSON `/metrics`.
async fn trtllm_json_metrics(State(app): State<Arc<App>>) -> Json<Value> {
    let (model, max_concurrency) = context(&app);
    let stats = app.engine().stats();
    Json(metrics::trtllm_json(
        &stats,
        MetricsContext {
            model: &model,
            max_concurrency,
        },
        unix_now(),
    ))
}

/// `GET /v1/models`.
pub async fn models(State(app): State<Arc<App>>) -> Json<ModelList> {
    let launch = &app.config.launch;
    let owned_by = match app.flavor() {
        Flavor::Vllm => "vllm",
        Flavor::Sglang => "sglang",
        Flavor::LlamaCpp => "llamacpp",
        Flavor::Ollama => "library",
        Flavor::Tgi => "tgi",
        Flavor::Triton => "triton",
        Flavor::Trtllm => "tensorrt_llm",
        Flavor::Openai => "pyxis-mock",
    };
    let data = app
        .models()
        .into_iter()
        .map(|id| ModelCard {
            id,
            object: "model",
            created: app.started_unix,
            owned_by,
            root: (app.flavor() == Flavor::Vllm).then(|| launch.model.clone()),
            max_model_len: (app.flavor() == Flavor::Vllm).then_some(app.config.context_tokens),
            meta: (app.flavor() == Flavor::LlamaCpp).then(|| match app.phase() {
                Phase::Loading => Value::Null,
                Phase::Ready => json!({"n_ctx_train": app.config.context_tokens, "n_params": 0, "size": 0}),
            }),
        })
        .collect();
    Json(ModelList { object: "list", data })
}

/// TGI `/info`.
async fn tgi_info(State(app): State<Arc<App>>) -> Json<Value> {
    let context = app.config.context_tokens;
    Json(json!({
        "model_id": app.config.launch.model,
        "model_sha": null,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": 128,
        "max_best_of": 2,
        "max_stop_sequences": 4,
        "max_input_tokens": context.saturating_sub(1),
        "max_total_tokens": context,
        "validation_workers": 2,
        "max_client_batch_size": 4,
        "router": "text-generation-router",
        "version": app.config.version,
        "sha": null,
        "docker_label": null,
    }))
}

/// SGLang `/get_server_info` and `/server_info`: the server arguments, then `version`.
async fn sglang_server_info(State(app): State<Arc<App>>) -> Json<Value> {
    let launch = &app.config.launch;
    let mut info: serde_json::Map<String, Value> = launch
        .settings
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    info.insert("model_path".into(), json!(launch.model));
    info.insert("served_model_name".into(), json!(app.primary_model()));
    info.insert("host".into(), json!(launch.host));
    info.insert("port".into(), json!(launch.port));
    info.insert("tp_size".into(), json!(launch.tensor_parallel));
    info.insert("context_length".into(), json!(app.config.context_tokens));
    info.insert("max_running_requests".into(), json!(app.config.max_concurrency));
    info.insert("enable_metrics".into(), json!(launch.metrics_enabled));
    info.insert(
        "internal_states".into(),
        json!([{"last_gen_throughput": 0.0, "max_total_num_tokens": app.config.engine.kv_capacity_tokens}]),
    );
    info.insert("version".into(), json!(app.config.version));
    Json(Value::Object(info))
}

/// SGLang `/get_model_info`.
async fn sglang_model_info(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "model_path": app.config.launch.model,
        "tokenizer_path": app.config.launch.model,
        "is_generation": true,
        "weight_version": "default",
    }))
}

/// Triton `/v2` server metadata.
async fn triton_server_metadata(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "name": "triton",
        "version": app.config.version,
        "extensions": ["classification", "sequence", "model_repository", "model_repository(unload_dependents)",
                       "schedule_policy", "model_configuration", "system_shared_memory", "cuda_shared_memory",
                       "binary_tensor_data", "parameters", "statistics", "trace", "logging"],
    }))
}

fn triton_unknown(name: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": format!("Request for unknown model: '{name}' is not found")})),
    )
        .into_response()
}

/// Triton `/v2/models/NAME/ready`: 200 when ready (the loading gate answers 400 before).
async fn triton_model_ready(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    if app.models().contains(&name) {
        StatusCode::OK.into_response()
    } else {
        StatusCode::BAD_REQUEST.into_response()
    }
}

/// Triton `/v2/models/NAME` metadata.
async fn triton_model_metadata(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    if !app.models().contains(&name) {
        return triton_unknown(&name);
    }
    Json(json!({
        "name": name,
        "versions": ["1"],
        "platform": "vllm",
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
    }))
    .into_response()
}

/// Triton's answer to inference while its models load.
pub fn triton_not_ready(path: &str) -> Response {
    let name = path.trim_start_matches("/v2/models/").split('/').next().unwrap_or("");
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": format!("Request for unknown model: '{name}' is not ready")})),
    )
        .into_response()
}

/// A Triton generate body (`{"text_input": ..., "max_tokens": N}`, the vLLM and TRT-LLM
/// backends' generate extension) as a completions request.
fn triton_request(name: &str, body: &[u8], stream: bool) -> Result<openai::GenerationRequest, String> {
    let map = body_object(body).ok_or("failed to parse the request JSON buffer")?;
    let text = map
        .get("text_input")
        .and_then(Value::as_str)
        .ok_or("missing input 'text_input'")?;
    let max_tokens = map
        .get("max_tokens")
        .or_else(|| map.get("parameters").and_then(|p| p.get("max_tokens")))
        .map(|v| {
            v.as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| "'max_tokens' must be a positive integer".to_string())
        })
        .transpose()?;
    Ok(openai::GenerationRequest {
        endpoint: Endpoint::Completions,
        model: Some(name.to_string()),
        prompts: vec![text.to_string()],
        n: 1,
        max_tokens,
        stream,
        include_usage: false,
    })
}

/// Why a Triton generate request is refused (both are 400 in Triton).
#[derive(Debug)]
enum TritonRefusal {
    /// No such model.
    UnknownModel(String),
    /// A malformed body or bad parameter.
    BadRequest(String),
}

impl IntoResponse for TritonRefusal {
    fn into_response(self) -> Response {
        match self {
            TritonRefusal::UnknownModel(name) => triton_unknown(&name),
            TritonRefusal::BadRequest(message) => triton_error(&message),
        }
    }
}

fn triton_plan(app: &App, name: &str, body: &[u8], stream: bool) -> Result<Plan, TritonRefusal> {
    if !app.models().iter().any(|m| m == name) {
        return Err(TritonRefusal::UnknownModel(name.to_string()));
    }
    let request = triton_request(name, body, stream).map_err(TritonRefusal::BadRequest)?;
    Plan::new(app, request).map_err(|e| TritonRefusal::BadRequest(e.message))
}

fn triton_error(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

fn triton_output(plan: &Plan, text: String) -> Value {
    json!({"model_name": plan.model, "model_version": "1", "text_output": text})
}

/// Triton `POST /v2/models/NAME/generate`.
async fn triton_generate(State(app): State<Arc<App>>, Path(name): Path<String>, body: Bytes) -> Response {
    let plan = match triton_plan(&app, &name, &body, false) {
        Ok(plan) => plan,
        Err(refusal) => return refusal.into_response(),
    };
    let mut running = match Running::admit(app, &plan).await {
        Ok(running) => running,
        Err(e) => return triton_error(&e.message),
    };
    while running.next().await.is_some() {}
    running.finish(plan.finish);
    Json(triton_output(&plan, plan.text(0))).into_response()
}

/// Triton `POST /v2/models/NAME/generate_stream`: one SSE event per token.
async fn triton_generate_stream(State(app): State<Arc<App>>, Path(name): Path<String>, body: Bytes) -> Response {
    let plan = match triton_plan(&app, &name, &body, true) {
        Ok(plan) => plan,
        Err(refusal) => return refusal.into_response(),
    };
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let Ok(mut running) = Running::admit(app, &plan).await else {
            return;
        };
        while let Some(position) = running.next().await {
            let delta = plan.tokens.first().map(|c| c.delta(position)).unwrap_or_default();
            let event = format!("data: {}\n\n", triton_output(&plan, delta));
            if writer.write_all(event.as_bytes()).await.is_err() {
                return;
            }
        }
        running.finish(plan.finish);
        let _ = writer.shutdown().await;
    });
    let mut response = Body::from_stream(ReaderStream::new(reader)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

/// llama.cpp `/health` once loaded.
async fn llama_cpp_health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// llama.cpp's answer to every route while the model loads.
pub fn llama_cpp_loading() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})),
    )
        .into_response()
}

/// llama.cpp `/props`: build info, model path, slots.
async fn llama_cpp_props(State(app): State<Arc<App>>) -> Json<Value> {
    // `b<build>-<commit>` (a real build says e.g. `b0-0c1e570`): the mock version is the
    // commit part unless it already has that shape.
    let version = &app.config.version;
    let build_info = if version.starts_with('b') && version.contains('-') {
        version.clone()
    } else {
        format!("b0-{version}")
    };
    Json(json!({
        "default_generation_settings": {
            "n_ctx": app.config.context_tokens,
            "params": {"n_predict": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.95},
        },
        "total_slots": app.config.max_concurrency,
        "model_alias": app.primary_model(),
        "model_path": app.config.launch.model,
        "modalities": {"vision": false, "audio": false},
        "chat_template": "",
        "build_info": build_info,
    }))
}

async fn ollama_root() -> &'static str {
    "Ollama is running"
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (civil-from-days, proleptic Gregorian).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn ollama_card(app: &App, name: &str) -> Value {
    json!({
        "name": name,
        "model": name,
        "modified_at": rfc3339(app.started_unix),
        "size": 0,
        "digest": format!("{:064x}", crate::generate::fnv1a(name.as_bytes())),
        "details": {"format": "gguf", "family": "mock", "parameter_size": "0B", "quantization_level": "none"},
    })
}

/// Ollama `/api/tags`: pulled models.
async fn ollama_tags(State(app): State<Arc<App>>) -> Json<Value> {
    let models: Vec<Value> = app.models().iter().map(|m| ollama_card(&app, m)).collect();
    Json(json!({"models": models}))
}

/// Ollama `/api/ps`: models in memory.
async fn ollama_ps(State(app): State<Arc<App>>) -> Json<Value> {
    let expires = rfc3339(unix_now() + 300);
    let models: Vec<Value> = app
        .loaded_models()
        .iter()
        .map(|m| {
            let mut card = ollama_card(&app, m);
            card["expires_at"] = json!(expires);
            card["size_vram"] = json!(0);
            card
        })
        .collect();
    Json(json!({"models": models}))
}

fn ollama_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn ndjson(lines: &[Value]) -> Response {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}

fn body_object(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// Ollama `POST /api/pull`: the model becomes servable.
async fn ollama_pull(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let Some(map) = body_object(&body) else {
        return ollama_error(StatusCode::BAD_REQUEST, "invalid request body");
    };
    let Some(name) = map.get("model").or_else(|| map.get("name")).and_then(Value::as_str) else {
        return ollama_error(StatusCode::BAD_REQUEST, "model is required");
    };
    app.add_model(name);
    if let Some(root) = &app.config.launch.ollama_models {
        if let Err(e) = write_ollama_manifest(root, name) {
            tracing::warn!(model = name, root = %root, "cannot record the pulled model in OLLAMA_MODELS: {e}");
        }
    }
    if map.get("stream").and_then(Value::as_bool) == Some(false) {
        return Json(json!({"status": "success"})).into_response();
    }
    ndjson(&[
        json!({"status": "pulling manifest"}),
        json!({"status": "verifying sha256 digest"}),
        json!({"status": "writing manifest"}),
        json!({"status": "success"}),
    ])
}

/// Records a pulled model where Ollama keeps manifests
/// (`OLLAMA_MODELS/manifests/registry.ollama.ai/library/NAME/TAG`), so a restarted replica
/// still has it.
fn write_ollama_manifest(root: &str, name: &str) -> std::io::Result<()> {
    let path = crate::flavor::ollama_manifest_path(root, name)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a model name"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                          "config": {}, "layers": [], "pyxis_mock": true});
    std::fs::write(path, manifest.to_string())
}

async fn ollama_generate(State(app): State<Arc<App>>, body: Bytes) -> Response {
    ollama_native(app, Endpoint::Completions, &body).await
}

async fn ollama_chat(State(app): State<Arc<App>>, body: Bytes) -> Response {
    ollama_native(app, Endpoint::Chat, &body).await
}

/// Ollama `/api/generate` and `/api/chat`: no prompt (or no messages) loads the model;
/// otherwise a generation, streamed as NDJSON unless `"stream": false`.
async fn ollama_native(app: Arc<App>, endpoint: Endpoint, body: &[u8]) -> Response {
    let Some(map) = body_object(body) else {
        return ollama_error(StatusCode::BAD_REQUEST, "invalid request body");
    };
    let Some(model) = map.get("model").and_then(Value::as_str).map(str::to_string) else {
        return ollama_error(StatusCode::BAD_REQUEST, "model is required");
    };
    if app.resolve_model(Some(&model)).is_err() {
        return ollama_error(
            StatusCode::NOT_FOUND,
            format!("model \"{model}\" not found, try pulling it first"),
        );
    }
    let chat = endpoint == Endpoint::Chat;
    let load_only = if chat {
        map.get("messages").and_then(Value::as_array).is_none_or(Vec::is_empty)
    } else {
        map.get("prompt").and_then(Value::as_str).is_none_or(str::is_empty)
    };
    if load_only {
        app.wait_ready().await;
        app.mark_loaded(&model);
        let mut done = json!({"model": model, "created_at": rfc3339(unix_now()), "done": true, "done_reason": "load"});
        if chat {
            done["message"] = json!({"role": "assistant", "content": ""});
        } else {
            done["response"] = json!("");
        }
        return Json(done).into_response();
    }
    let stream = map.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let num_predict = map
        .get("options")
        .and_then(|o| o.get("num_predict"))
        .and_then(Value::as_u64)
        .filter(|n| *n > 0);
    let request = match openai::parse_generation(endpoint, body) {
        Ok(mut request) => {
            request.stream = stream;
            request.include_usage = false;
            request.max_tokens = num_predict;
            request
        }
        Err(e) => return ollama_error(StatusCode::BAD_REQUEST, e.message),
    };
    let plan = match Plan::new(&app, request) {
        Ok(plan) => plan,
        Err(e) => return ollama_error(StatusCode::BAD_REQUEST, e.message),
    };
    let line = move |content: String, done: Option<&Running>, plan: &Plan| -> Value {
        let mut value = json!({"model": plan.model, "created_at": rfc3339(unix_now()), "done": done.is_some()});
        if chat {
            value["message"] = json!({"role": "assistant", "content": content});
        } else {
            value["response"] = json!(content);
        }
        if let Some(running) = done {
            let ttft = running.first_token_after.unwrap_or_default().as_nanos() as u64;
            let total = running.elapsed().as_nanos() as u64;
            value["done_reason"] = json!(plan.finish.as_str());
            value["total_duration"] = json!(total);
            value["load_duration"] = json!(0);
            value["prompt_eval_count"] = json!(plan.prompt_tokens);
            value["prompt_eval_duration"] = json!(ttft);
            value["eval_count"] = json!(plan.usage().completion_tokens);
            value["eval_duration"] = json!(total.saturating_sub(ttft));
        }
        value
    };
    if !stream {
        let mut running = match Running::admit(app, &plan).await {
            Ok(running) => running,
            Err(e) => return ollama_error(StatusCode::SERVICE_UNAVAILABLE, e.message),
        };
        while running.next().await.is_some() {}
        let value = line(plan.text(0), Some(&running), &plan);
        running.finish(plan.finish);
        return Json(value).into_response();
    }
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let Ok(mut running) = Running::admit(app, &plan).await else {
            return;
        };
        while let Some(position) = running.next().await {
            let delta = plan.tokens.first().map(|c| c.delta(position)).unwrap_or_default();
            let text = format!("{}\n", line(delta, None, &plan));
            if writer.write_all(text.as_bytes()).await.is_err() {
                return;
            }
        }
        let text = format!("{}\n", line(String::new(), Some(&running), &plan));
        if writer.write_all(text.as_bytes()).await.is_err() {
            return;
        }
        running.finish(plan.finish);
        let _ = writer.shutdown().await;
    });
    let mut response = Body::from_stream(ReaderStream::new(reader)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
