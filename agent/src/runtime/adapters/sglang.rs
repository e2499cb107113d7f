//! SGLang: `python -m sglang.launch_server --model-path MODEL` (docs/runtimes.md, "SGLang").

use pyxis_protocol::{ReplicaSpec, RuntimeMetrics};

use super::{finish, json_version, port, single_port, start, strings, AmdMask, DeviceSupport};
use crate::runtime::{promtext::Exposition, Adapter, AdapterError, Endpoints, LaunchContext, LaunchPlan};

const KIND: &str = "sglang";

/// CUDA and ROCm (PyTorch-ROCm honours HIP); the CPU backend runs with every GPU hidden.
/// SGLang-on-TPU is a separate project (`sglang-jax`).
const DEVICES: DeviceSupport = DeviceSupport {
    amd: Some(AmdMask::RocrAndHip),
    tpu: false,
    cpu_hide: Some(""),
};

/// The `sglang` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sglang;

impl Adapter for Sglang {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn launch(&self, ctx: &LaunchContext<'_>) -> Result<LaunchPlan, AdapterError> {
        let (program, mut args, model, placement) = start(KIND, DEVICES, ctx)?;
        args.extend(strings(["--model-path", model]));
        if !ctx.spec.model_name.is_empty() {
            args.extend(strings(["--served-model-name", &ctx.spec.model_name]));
        }
        // `--host` is always given: SGLang's default is 127.0.0.1.
        args.extend(strings(["--host", ctx.host, "--port", &port(KIND, ctx, 0)?]));
        if let Some(tp) = placement.tensor_parallel() {
            args.extend(strings(["--tp-size", &tp]));
        }
        // Metrics are off unless asked for.
        args.push("--enable-metrics".to_string());
        Ok(finish(program, args, placement.env, ctx.spec))
    }

    fn endpoints(&self, _spec: &ReplicaSpec) -> Endpoints {
        // `/health`: 503 while warming up and while shutting down; 200 once a 1-token
        // generation (when idle) answers in time. `/get_server_info` is the name in the
        // source read; newer docs call it `/server_info`, which older servers lack.
        single_port("/health", Some("/get_server_info"), Some("/metrics"))
    }

    fn version(&self, body: &str) -> Option<String> {
        json_version(body, "version")
    }

    fn metrics(&self, body: &str) -> RuntimeMetrics {
        normalise(&Exposition::parse(body))
    }
}

/// SGLang's metric names, normalised.
pub(super) fn normalise(e: &Exposition<'_>) -> RuntimeMetrics {
    RuntimeMetrics {
        requests_running: e.sum("sglang:num_running_reqs"),
        requests_waiting: e.sum("sglang:num_queue_reqs"),
        // A 0-1 ratio of the KV token pool; averaged over ranks or engines.
        kv_cache_usage_ratio: e.mean("sglang:token_usage"),
        prompt_tokens_total: e.sum("sglang:prompt_tokens_total"),
        generation_tokens_total: e.sum("sglang:generation_tokens_total"),
        // Exported as a ratio gauge, not as hits and queries.
        prefix_cache_hit_ratio: e.mean("sglang:cache_hit_rate"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    /// `python3 -m sglang.launch_server --model-path MODEL` with the spec's served name.
    const LAUNCH_SERVER: [&str; 6] = [
        "-m",
        "sglang.launch_server",
        "--model-path",
        "/models/qwen2.5-7b",
        "--served-model-name",
        "Qwen/Qwen2.5-7B-Instruct",
    ];

    /// The arguments on two GPUs of either vendor: TP over both.
    fn on_two_gpus() -> Vec<&'static str> {
        with_extra_args(&[
            &LAUNCH_SERVER,
            &host_and_port("8000"),
            &["--tp-size", "2", "--enable-metrics"],
        ])
    }

    // docs/runtimes.md, SGLang rows "Launch" (`--model-path`), "Served name"
    // (`--served-model-name`), "Host / port", "Parallelism" (`--tp-size`), "Metrics switch"
    // (`--enable-metrics`), "Devices" (CUDA_VISIBLE_DEVICES).
    #[test]
    fn launch_on_two_nvidia_gpus() {
        assert_eq!(
            launch_on(&Sglang, &spec(KIND), &two_nvidia(), &[8000]).unwrap(),
            plan(
                "python3",
                &on_two_gpus(),
                &with_hf_home(&[("CUDA_VISIBLE_DEVICES", TWO_GPUS)]),
            )
        );
    }

    // Device selection: PyTorch-ROCm runtimes (SGLang named) honour HIP, inside ROCR.
    #[test]
    fn launch_on_amd() {
        assert_eq!(
            launch_on(&Sglang, &spec(KIND), &two_amd(), &[8000]).unwrap(),
            plan("python3", &on_two_gpus(), &with_hf_home(&TWO_AMD_ENV))
        );
    }

    #[test]
    fn launch_on_cpu_and_not_on_tpu() {
        assert_eq!(
            launch_on(&Sglang, &spec(KIND), &[], &[30000]).unwrap(),
            plan(
                "python3",
                &with_extra_args(&[&LAUNCH_SERVER, &host_and_port("30000"), &["--enable-metrics"]]),
                &with_hf_home(&[("CUDA_VISIBLE_DEVICES", "")])
            )
        );
        assert!(matches!(
            launch_on(&Sglang, &spec(KIND), &four_tpu(), &[8000, 8476]),
            Err(AdapterError::Unsupported { .. })
        ));
    }

    // "Health" (503 during warm-up, 200 after), "Version" (`/get_server_info` `.version`),
    // "Metrics" (`/metrics`, same port).
    #[test]
    fn endpoints_readiness_and_version() {
        let e = Sglang.endpoints(&spec(KIND));
        assert_eq!(e.readiness.path, "/health");
        assert_eq!(e.version.map(|p| p.path).as_deref(), Some("/get_server_info"));
        assert_eq!(
            e.metrics.map(|p| (p.path, p.port_index)),
            Some(("/metrics".to_string(), 0))
        );
        assert_eq!(e.openai_path, "/v1");
        assert!(!Sglang.is_ready(503, ""), "warming up");
        assert!(Sglang.is_ready(200, ""));
        let info = r#"{"model_path":"/models/qwen2.5-7b","tokenizer_path":"/models/qwen2.5-7b","host":"127.0.0.1",
            "port":8000,"tp_size":2,"served_model_name":"Qwen/Qwen2.5-7B-Instruct","enable_metrics":true,
            "internal_states":[{"last_gen_throughput":0.0}],"version":"0.4.6.post1"}"#;
        assert_eq!(Sglang.version(info).as_deref(), Some("0.4.6.post1"));
        assert_eq!(Sglang.version(r#"{"detail":"Not Found"}"#), None);
    }

    /// As `docs/references/production_metrics.md` shows them, with the newer rank labels.
    const EXPOSITION: &str = r#"# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{engine_type="unified",model_name="Qwen/Qwen2.5-7B-Instruct",pp_rank="0",tp_rank="0"} 28.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{engine_type="unified",model_name="Qwen/Qwen2.5-7B-Instruct",pp_rank="0",tp_rank="0"} 3.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{engine_type="unified",model_name="Qwen/Qwen2.5-7B-Instruct",pp_rank="0",tp_rank="0"} 0.28
# HELP sglang:num_used_tokens The number of used tokens.
# TYPE sglang:num_used_tokens gauge
sglang:num_used_tokens{engine_type="unified",model_name="Qwen/Qwen2.5-7B-Instruct",pp_rank="0",tp_rank="0"} 123859.0
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{engine_type="unified",model_name="Qwen/Qwen2.5-7B-Instruct",pp_rank="0",tp_rank="0"} 0.0075
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 8.128902e+06
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 7.557572e+06
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_sum{model_name="Qwen/Qwen2.5-7B-Instruct"} 2.3518979474117756e+06
sglang:time_to_first_token_seconds_bucket{le="0.001",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.0
sglang:time_to_first_token_seconds_count{model_name="Qwen/Qwen2.5-7B-Instruct"} 541.0
"#;

    #[test]
    fn metrics() {
        assert_eq!(
            Sglang.metrics(EXPOSITION),
            RuntimeMetrics {
                requests_running: Some(28.0),
                requests_waiting: Some(3.0),
                kv_cache_usage_ratio: Some(0.28),
                prompt_tokens_total: Some(8_128_902.0),
                generation_tokens_total: Some(7_557_572.0),
                prefix_cache_hit_ratio: Some(0.0075),
            }
        );
    }
}
