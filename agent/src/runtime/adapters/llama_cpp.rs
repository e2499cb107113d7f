//! llama.cpp: `llama-server -m FILE.gguf` (docs/runtimes.md, "llama.cpp").
//!
//! `spec.model_source` is a GGUF file (a path, or a name ending in `.gguf`) or a Hugging
//! Face repository `user/repo[:quant]`, which `-hf` downloads into llama.cpp's cache.
//! llama.cpp has no tensor parallelism: with GPUs it offloads every layer
//! (`--n-gpu-layers 999`, more than any model has) and splits them over the visible GPUs
//! by layer, its default.

use pyxis_protocol::{ReplicaSpec, RuntimeMetrics};

use super::{finish, hit_ratio, port, single_port, start, strings, AmdMask, DeviceSupport};
use crate::runtime::{promtext::Exposition, Adapter, AdapterError, Endpoints, LaunchContext, LaunchPlan};

const KIND: &str = "llama-cpp";

/// CUDA and HIP builds, and the CPU build with every GPU hidden.
const DEVICES: DeviceSupport = DeviceSupport {
    amd: Some(AmdMask::RocrAndHip),
    tpu: false,
    cpu_hide: Some(""),
};

/// Offload every layer: larger than the layer count of any model.
const ALL_LAYERS: &str = "999";

/// The `llama-cpp` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct LlamaCpp;

/// Whether `source` names a local GGUF file rather than a Hugging Face repository.
fn is_local_file(source: &str) -> bool {
    source.starts_with('/') || source.starts_with('.') || source.starts_with('~') || source.ends_with(".gguf")
}

impl Adapter for LlamaCpp {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn launch(&self, ctx: &LaunchContext<'_>) -> Result<LaunchPlan, AdapterError> {
        let (program, mut args, model, placement) = start(KIND, DEVICES, ctx)?;
        let model_flag = if is_local_file(model) { "-m" } else { "-hf" };
        args.extend(strings([model_flag, model]));
        if !ctx.spec.model_name.is_empty() {
            args.extend(strings(["--alias", &ctx.spec.model_name]));
        }
        // `--host` is always given: llama-server's default is 127.0.0.1.
        args.extend(strings(["--host", ctx.host, "--port", &port(KIND, ctx, 0)?]));
        if placement.accelerators > 0 {
            args.extend(strings(["--n-gpu-layers", ALL_LAYERS]));
        }
        // `/metrics` answers only with `--metrics`.
        args.push("--metrics".to_string());
        Ok(finish(program, args, placement.env, ctx.spec))
    }

    fn endpoints(&self, _spec: &ReplicaSpec) -> Endpoints {
        single_port("/health", Some("/props"), Some("/metrics"))
    }

    /// 503 `Loading model` while loading, 200 `{"status":"ok"}` when ready; a 200 whose
    /// JSON `status` is anything but `ok` is not ready either.
    fn is_ready(&self, status: u16, body: &str) -> bool {
        if status != 200 {
            return false;
        }
        match serde_json::from_str::<serde_json::Value>(body) {
            Ok(value) => match value.get("status") {
                Some(serde_json::Value::String(s)) => s == "ok",
                _ => true,
            },
            Err(_) => true,
        }
    }

    /// `/props` carries `build_info`, `b<build>-<commit>`; older builds lack it.
    fn version(&self, body: &str) -> Option<String> {
        super::json_version(body, "build_info")
    }

    fn metrics(&self, body: &str) -> RuntimeMetrics {
        normalise(&Exposition::parse(body))
    }
}

/// llama.cpp's names, without labels.
pub(super) fn normalise(e: &Exposition<'_>) -> RuntimeMetrics {
    let prompt = e.sum("llamacpp:prompt_tokens_total");
    // Builds that export `prompt_tokens_cached_total` count `prompt_tokens_total`
    // "excluding cached tokens" (seen on a real llama-server, commit 0c1e570), so the
    // queries are both together.
    let cached = e.sum("llamacpp:prompt_tokens_cached_total");
    let queries = cached.zip(prompt).map(|(cached, prompt)| cached + prompt);
    RuntimeMetrics {
        requests_running: e.sum("llamacpp:requests_processing"),
        requests_waiting: e.sum("llamacpp:requests_deferred"),
        // Removed by PR #13660; older builds still export it, as a 0-1 ratio.
        kv_cache_usage_ratio: e.mean("llamacpp:kv_cache_usage_ratio"),
        prompt_tokens_total: prompt,
        generation_tokens_total: e.sum("llamacpp:tokens_predicted_total"),
        prefix_cache_hit_ratio: hit_ratio(cached, queries),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const GGUF: &str = "/models/qwen2.5-7b-instruct-q4_k_m.gguf";

    fn gguf_spec() -> ReplicaSpec {
        let mut spec = spec(KIND);
        spec.model_source = GGUF.to_string();
        spec
    }

    /// The plan's arguments for [`gguf_spec`] on GPUs: every layer offloaded.
    fn gguf_on_gpus() -> Vec<&'static str> {
        with_extra_args(&[
            &["-m", GGUF, "--alias", "Qwen/Qwen2.5-7B-Instruct"],
            &host_and_port("8000"),
            &["--n-gpu-layers", "999", "--metrics"],
        ])
    }

    // docs/runtimes.md, llama.cpp rows "Launch" (`-m FILE.gguf`), "Served name" (`--alias`),
    // "Host / port", "Parallelism" (no TP; `-ngl/--n-gpu-layers`), "Metrics" (`--metrics`),
    // "Devices" (CUDA build: CUDA_VISIBLE_DEVICES).
    #[test]
    fn launch_on_two_nvidia_gpus() {
        assert_eq!(
            launch_on(&LlamaCpp, &gguf_spec(), &two_nvidia(), &[8000]).unwrap(),
            plan(
                "llama-server",
                &gguf_on_gpus(),
                &with_hf_home(&[("CUDA_VISIBLE_DEVICES", TWO_GPUS)]),
            )
        );
    }

    // "Devices": HIP build honours HIP_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES.
    #[test]
    fn launch_on_amd() {
        assert_eq!(
            launch_on(&LlamaCpp, &gguf_spec(), &two_amd(), &[8000]).unwrap(),
            plan("llama-server", &gguf_on_gpus(), &with_hf_home(&TWO_AMD_ENV))
        );
    }

    // "Launch": `-hf user/repo[:quant]` downloads; on CPU nothing is offloaded.
    #[test]
    fn launch_on_cpu_from_hugging_face() {
        let mut spec = spec(KIND);
        spec.model_source = "Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M".to_string();
        spec.model_name = String::new();
        assert_eq!(
            launch_on(&LlamaCpp, &spec, &[], &[8080]).unwrap(),
            plan(
                "llama-server",
                &with_extra_args(&[
                    &["-hf", "Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M"],
                    &host_and_port("8080"),
                    &["--metrics"],
                ]),
                &with_hf_home(&[("CUDA_VISIBLE_DEVICES", "")]),
            )
        );
        assert!(matches!(
            launch_on(&LlamaCpp, &spec, &four_tpu(), &[8000, 8476]),
            Err(AdapterError::Unsupported { .. })
        ));
        assert!(is_local_file("./model.gguf") && is_local_file("model.gguf") && is_local_file("/m/x"));
        assert!(!is_local_file("ggml-org/gemma-3-1b-it-GGUF"));
    }

    // "Health" (503 `Loading model`, then 200 `{"status":"ok"}`), "Version" (`/props`
    // `.build_info`), "Metrics" (`/metrics`).
    #[test]
    fn endpoints_readiness_and_version() {
        let e = LlamaCpp.endpoints(&spec(KIND));
        assert_eq!(e.readiness.path, "/health");
        assert_eq!(e.version.map(|p| p.path).as_deref(), Some("/props"));
        assert_eq!(
            e.metrics.map(|p| (p.port_index, p.path)),
            Some((0, "/metrics".to_string()))
        );
        assert_eq!(e.openai_path, "/v1");
        // As a real llama-server answered while loading, then once loaded.
        let loading = r#"{"error":{"message":"Loading model","type":"unavailable_error","code":503}}"#;
        assert!(!LlamaCpp.is_ready(503, loading));
        assert!(!LlamaCpp.is_ready(200, r#"{"status":"loading model"}"#));
        assert!(LlamaCpp.is_ready(200, r#"{"status":"ok"}"#));
        assert!(LlamaCpp.is_ready(200, ""));
        let props = r#"{"default_generation_settings":{"n_ctx":4096,"params":{"temperature":0.8}},
            "total_slots":4,"model_path":"/models/qwen2.5-7b-instruct-q4_k_m.gguf",
            "chat_template":"{% for message in messages %}...{% endfor %}","modalities":{"vision":false},
            "build_info":"b6527-1d660d2f"}"#;
        assert_eq!(LlamaCpp.version(props).as_deref(), Some("b6527-1d660d2f"));
        assert_eq!(LlamaCpp.version(r#"{"total_slots":4}"#), None);
        // A build made outside a git checkout numbers itself b0.
        assert_eq!(
            LlamaCpp.version(r#"{"build_info":"b0-0c1e570"}"#).as_deref(),
            Some("b0-0c1e570")
        );
    }

    /// A scrape of a real llama-server (llama.cpp commit 0c1e570, as vendored by
    /// llama-cpp-python 0.3.36) after a few requests.
    const CURRENT: &str = r#"# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 750
# HELP llamacpp:prompt_tokens_cached_total Number of prompt tokens reused from the cache
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total 250
# HELP llamacpp:prompt_seconds_total Total time spent processing prompts
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 0.113875
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 256
# HELP llamacpp:tokens_predicted_seconds_total Total time spent generating tokens
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 0.030859
# HELP llamacpp:n_decode_total Total number of llama_decode() calls, excluding speculative decoding and multimodal decoding
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 260
# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max 35
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 272.228
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 129.622
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode gauge
llamacpp:n_busy_slots_per_decode 1
"#;

    /// The README's list (LLMKube#1373): no cached-token counter.
    const README: &str = "llamacpp:prompt_tokens_total 1024\nllamacpp:tokens_predicted_total 256\n\
                          llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\n";

    #[test]
    fn metrics_current_and_old_builds() {
        assert_eq!(
            LlamaCpp.metrics(CURRENT),
            RuntimeMetrics {
                requests_running: Some(1.0),
                requests_waiting: Some(0.0),
                kv_cache_usage_ratio: None,
                prompt_tokens_total: Some(750.0),
                generation_tokens_total: Some(256.0),
                prefix_cache_hit_ratio: Some(0.25),
            }
        );
        assert_eq!(
            LlamaCpp.metrics(README),
            RuntimeMetrics {
                requests_running: Some(2.0),
                requests_waiting: Some(1.0),
                kv_cache_usage_ratio: None,
                prompt_tokens_total: Some(1024.0),
                generation_tokens_total: Some(256.0),
                prefix_cache_hit_ratio: None,
            }
        );
        let old = format!(
            "{CURRENT}# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.\n\
             # TYPE llamacpp:kv_cache_usage_ratio gauge\nllamacpp:kv_cache_usage_ratio 0.125\n\
             llamacpp:kv_cache_tokens 64\n"
        );
        assert_eq!(LlamaCpp.metrics(&old).kv_cache_usage_ratio, Some(0.125));
    }
}
