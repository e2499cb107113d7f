//! TensorRT-LLM: `trtllm-serve MODEL` (docs/runtimes.md, "TensorRT-LLM").
//!
//! The served model name is the `MODEL` argument: a `--served_model_name` flag is not
//! confirmed, so none is passed. Its `/metrics` is JSON iteration stats; the Prometheus
//! exposition is `/prometheus/metrics`. Request-latency metrics there need
//! `return_perf_metrics: true` in an `--extra_llm_api_options` YAML file, which the
//! deployment passes through `runtime_args` (the adapter writes no files).

use pyxis_protocol::{ReplicaSpec, RuntimeMetrics};

use super::{clean_version, finish, hit_ratio, json_version, port, single_port, start, strings, DeviceSupport};
use crate::runtime::{promtext::Exposition, Adapter, AdapterError, Endpoints, LaunchContext, LaunchPlan};

const KIND: &str = "trtllm";

/// NVIDIA GPUs only.
const DEVICES: DeviceSupport = DeviceSupport {
    amd: None,
    tpu: false,
    cpu_hide: None,
};

/// The `trtllm` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trtllm;

impl Adapter for Trtllm {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn launch(&self, ctx: &LaunchContext<'_>) -> Result<LaunchPlan, AdapterError> {
        let (program, mut args, model, placement) = start(KIND, DEVICES, ctx)?;
        // `--host` is always given: trtllm-serve's default is localhost.
        args.extend(strings([model, "--host", ctx.host, "--port", &port(KIND, ctx, 0)?]));
        if let Some(tp) = placement.tensor_parallel() {
            args.extend(strings(["--tp_size", &tp]));
        }
        Ok(finish(program, args, placement.env, ctx.spec))
    }

    fn endpoints(&self, _spec: &ReplicaSpec) -> Endpoints {
        single_port("/health", Some("/version"), Some("/prometheus/metrics"))
    }

    /// The `/version` body is not documented: a JSON `version` field, a JSON string, or a
    /// bare version in plain text are all taken.
    fn version(&self, body: &str) -> Option<String> {
        if let Some(version) = json_version(body, "version") {
            return Some(version);
        }
        if let Ok(serde_json::Value::String(s)) = serde_json::from_str(body) {
            return clean_version(&s);
        }
        let text = body.trim();
        let looks_like_version = text.trim_start_matches('v').starts_with(|c: char| c.is_ascii_digit())
            && !text.contains(char::is_whitespace);
        looks_like_version.then(|| clean_version(text)).flatten()
    }

    fn metrics(&self, body: &str) -> RuntimeMetrics {
        normalise(&Exposition::parse(body))
    }
}

/// TensorRT-LLM's metric names, normalised.
pub(super) fn normalise(e: &Exposition<'_>) -> RuntimeMetrics {
    let prompt = e.sum("trtllm_prompt_tokens_total");
    RuntimeMetrics {
        requests_running: e.sum("trtllm_num_requests_running"),
        requests_waiting: e.sum("trtllm_num_requests_waiting"),
        // PR #11243 added KV-cache gauges whose names are unconfirmed.
        kv_cache_usage_ratio: None,
        prompt_tokens_total: prompt,
        generation_tokens_total: e.sum("trtllm_generation_tokens_total"),
        // Prompt tokens served from the prefix cache over prompt tokens: hits over
        // queries, in tokens, as vLLM counts them.
        prefix_cache_hit_ratio: hit_ratio(e.sum("trtllm_prompt_cached_tokens_total"), prompt),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    // docs/runtimes.md, TensorRT-LLM rows "Launch" (`trtllm-serve MODEL`), "Served name"
    // (the MODEL argument), "Host / port" (`--host`, `--port`), "Parallelism"
    // (`--tp_size`), "Devices" (CUDA_VISIBLE_DEVICES, NVIDIA only).
    #[test]
    fn launch_on_two_nvidia_gpus() {
        assert_eq!(
            launch_on(&Trtllm, &spec(KIND), &two_nvidia(), &[8000]).unwrap(),
            plan(
                "trtllm-serve",
                &with_extra_args(&[&["/models/qwen2.5-7b"], &host_and_port("8000"), &["--tp_size", "2"]]),
                &with_hf_home(&[("CUDA_VISIBLE_DEVICES", TWO_GPUS)]),
            )
        );
    }

    #[test]
    fn nvidia_only() {
        for devices in [vec![], two_amd(), four_tpu()] {
            assert!(matches!(
                launch_on(&Trtllm, &spec(KIND), &devices, &[8000, 8476]),
                Err(AdapterError::Unsupported { kind: "trtllm", .. })
            ));
        }
    }

    // "Health" (`/health` 200, 503 after a fatal executor error), "Version" (`/version`,
    // body unconfirmed), "Prometheus" (`/prometheus/metrics`; `/metrics` is JSON).
    #[test]
    fn endpoints_readiness_and_version() {
        let e = Trtllm.endpoints(&spec(KIND));
        assert_eq!(e.readiness.path, "/health");
        assert_eq!(e.version.map(|p| p.path).as_deref(), Some("/version"));
        assert_eq!(
            e.metrics.map(|p| (p.port_index, p.path)),
            Some((0, "/prometheus/metrics".to_string()))
        );
        assert_eq!(e.openai_path, "/v1");
        assert!(Trtllm.is_ready(200, ""));
        assert!(!Trtllm.is_ready(503, "LLM is unavailable"));
        assert_eq!(Trtllm.version(r#"{"version":"1.1.0rc5"}"#).as_deref(), Some("1.1.0rc5"));
        assert_eq!(Trtllm.version(r#""1.0.0""#).as_deref(), Some("1.0.0"));
        assert_eq!(Trtllm.version("1.0.0\n").as_deref(), Some("1.0.0"));
        assert_eq!(Trtllm.version("Not Found"), None);
        assert_eq!(Trtllm.version(r#"{"detail":"Not Found"}"#), None);
    }

    /// `/prometheus/metrics` with the PR #5785 request metrics and the PR #12545/#12636
    /// `trtllm_` gauges and counters.
    const EXPOSITION: &str = r#"# HELP request_success_total Count of successfully processed requests.
# TYPE request_success_total counter
request_success_total{engine_type="trtllm",finished_reason="stop",model_name="/models/qwen2.5-7b"} 7.0
# HELP time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE time_to_first_token_seconds histogram
time_to_first_token_seconds_bucket{engine_type="trtllm",le="0.1",model_name="/models/qwen2.5-7b"} 5.0
time_to_first_token_seconds_sum{engine_type="trtllm",model_name="/models/qwen2.5-7b"} 0.42
# HELP trtllm_num_requests_running Number of requests currently running.
# TYPE trtllm_num_requests_running gauge
trtllm_num_requests_running{engine_type="trtllm",model_name="/models/qwen2.5-7b"} 6.0
# HELP trtllm_num_requests_waiting Number of requests waiting.
# TYPE trtllm_num_requests_waiting gauge
trtllm_num_requests_waiting{engine_type="trtllm",model_name="/models/qwen2.5-7b"} 2.0
# HELP trtllm_prompt_tokens_total Number of prefill tokens processed.
# TYPE trtllm_prompt_tokens_total counter
trtllm_prompt_tokens_total{engine_type="trtllm",model_name="/models/qwen2.5-7b"} 5000.0
# HELP trtllm_generation_tokens_total Number of generation tokens processed.
# TYPE trtllm_generation_tokens_total counter
trtllm_generation_tokens_total{engine_type="trtllm",model_name="/models/qwen2.5-7b"} 900.0
# HELP trtllm_prompt_cached_tokens_total Number of prompt tokens served from the cache.
# TYPE trtllm_prompt_cached_tokens_total counter
trtllm_prompt_cached_tokens_total{engine_type="trtllm",model_name="/models/qwen2.5-7b"} 1250.0
"#;

    #[test]
    fn metrics() {
        assert_eq!(
            Trtllm.metrics(EXPOSITION),
            RuntimeMetrics {
                requests_running: Some(6.0),
                requests_waiting: Some(2.0),
                kv_cache_usage_ratio: None,
                prompt_tokens_total: Some(5000.0),
                generation_tokens_total: Some(900.0),
                prefix_cache_hit_ratio: Some(0.25),
            }
        );
        // Before PR #12545 only the request histograms exist.
        let old = "request_success_total{finished_reason=\"stop\",model_name=\"m\"} 7.0\n";
        assert_eq!(Trtllm.metrics(old), RuntimeMetrics::default());
    }
}
