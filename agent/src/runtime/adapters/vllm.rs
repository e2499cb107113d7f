//! vLLM: `vllm serve MODEL` (docs/runtimes.md, "vLLM").

use pyxis_protocol::{ReplicaSpec, RuntimeMetrics};

use super::{
    finish, hit_ratio, json_version, port, ports_for, push_subcommand, single_port, start, strings, AmdMask,
    DeviceSupport,
};
use crate::runtime::{promtext::Exposition, Adapter, AdapterError, Endpoints, LaunchContext, LaunchPlan};

const KIND: &str = "vllm";

/// CUDA, ROCm (HIP preferred, inside a ROCr mask) and TPU builds; the CPU build runs with
/// every GPU hidden.
const DEVICES: DeviceSupport = DeviceSupport {
    amd: Some(AmdMask::RocrAndHip),
    tpu: true,
    cpu_hide: Some(""),
};

/// The `vllm` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vllm;

impl Adapter for Vllm {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn ports_needed(&self, spec: &ReplicaSpec) -> usize {
        ports_for(spec)
    }

    fn launch(&self, ctx: &LaunchContext<'_>) -> Result<LaunchPlan, AdapterError> {
        let (program, mut args, model, placement) = start(KIND, DEVICES, ctx)?;
        push_subcommand(&mut args, "serve");
        args.push(model.to_string());
        if !ctx.spec.model_name.is_empty() {
            args.extend(strings(["--served-model-name", &ctx.spec.model_name]));
        }
        args.extend(strings(["--host", ctx.host, "--port", &port(KIND, ctx, 0)?]));
        if let Some(tp) = placement.tensor_parallel() {
            args.extend(strings(["--tensor-parallel-size", &tp]));
        }
        Ok(finish(program, args, placement.env, ctx.spec))
    }

    fn endpoints(&self, _spec: &ReplicaSpec) -> Endpoints {
        single_port("/health", Some("/version"), Some("/metrics"))
    }

    fn version(&self, body: &str) -> Option<String> {
        json_version(body, "version")
    }

    fn metrics(&self, body: &str) -> RuntimeMetrics {
        normalise(&Exposition::parse(body))
    }
}

/// vLLM's metric names, normalised.
pub(super) fn normalise(e: &Exposition<'_>) -> RuntimeMetrics {
    // The prefix-cache counters were renamed (the `gpu_` ones went with PR #29330);
    // hits and queries are always taken from the same generation of names.
    let prefix = [
        ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
        (
            "vllm:gpu_prefix_cache_hits_total",
            "vllm:gpu_prefix_cache_queries_total",
        ),
    ]
    .into_iter()
    .find_map(|(hits, queries)| hit_ratio(e.sum(hits), e.sum(queries)));
    RuntimeMetrics {
        requests_running: e.sum("vllm:num_requests_running"),
        requests_waiting: e.sum("vllm:num_requests_waiting"),
        // Both names are a 0-1 ratio despite `_perc`; one value per engine, averaged.
        kv_cache_usage_ratio: e.first_mean(&["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]),
        prompt_tokens_total: e.sum("vllm:prompt_tokens_total"),
        generation_tokens_total: e.sum("vllm:generation_tokens_total"),
        prefix_cache_hit_ratio: prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::runtime::Adapter;

    /// `vllm serve MODEL` with the spec's served name.
    const SERVE: [&str; 4] = [
        "serve",
        "/models/qwen2.5-7b",
        "--served-model-name",
        "Qwen/Qwen2.5-7B-Instruct",
    ];

    // docs/runtimes.md, vLLM rows "Launch" (`vllm serve MODEL`), "Served name"
    // (`--served-model-name`), "Host / port" (`--host`, `--port`), "Parallelism"
    // (`--tensor-parallel-size`), "Devices" (CUDA_VISIBLE_DEVICES; ROCm prefers HIP).
    #[test]
    fn launch_on_two_nvidia_gpus() {
        let spec = spec(KIND);
        assert_eq!(
            launch_on(&Vllm, &spec, &two_nvidia(), &[8000]).unwrap(),
            plan(
                "vllm",
                &with_extra_args(&[&SERVE, &host_and_port("8000"), &["--tensor-parallel-size", "2"]]),
                &with_hf_home(&[("CUDA_VISIBLE_DEVICES", TWO_GPUS)]),
            )
        );
    }

    // Device selection: ROCR_VISIBLE_DEVICES by node index, HIP_VISIBLE_DEVICES renumbered
    // inside it ("Combining ROCR + HIP").
    #[test]
    fn launch_on_amd() {
        let spec = spec(KIND);
        assert_eq!(
            launch_on(&Vllm, &spec, &two_amd(), &[8000]).unwrap(),
            plan(
                "vllm",
                &with_extra_args(&[&SERVE, &host_and_port("8000"), &["--tensor-parallel-size", "2"]]),
                &with_hf_home(&TWO_AMD_ENV)
            )
        );
    }

    #[test]
    fn launch_on_cpu() {
        let spec = spec(KIND);
        assert_eq!(
            launch_on(&Vllm, &spec, &[], &[8000]).unwrap(),
            plan(
                "vllm",
                &with_extra_args(&[&SERVE, &host_and_port("8000")]),
                &with_hf_home(&[("CUDA_VISIBLE_DEVICES", "")])
            )
        );
    }

    // Device selection, `TPU_VISIBLE_CHIPS` row: one process on a sub-slice of a TPU VM
    // with its own process port (the replica's second port).
    #[test]
    fn launch_on_tpu() {
        let mut spec = spec(KIND);
        let chips = four_tpu();
        spec.gpus = chips.iter().map(|c| c.uuid.clone()).collect();
        assert_eq!(Vllm.ports_needed(&spec), 2);
        assert_eq!(
            launch_on(&Vllm, &spec, &chips, &[8000, 8476]).unwrap(),
            plan(
                "vllm",
                &with_extra_args(&[&SERVE, &host_and_port("8000"), &["--tensor-parallel-size", "4"]]),
                &with_hf_home(&FOUR_TPU_ENV)
            )
        );
        spec.gpus = vec![GPU0.to_string()];
        assert_eq!(Vllm.ports_needed(&spec), 1);
    }

    #[test]
    fn configured_commands_keep_their_leading_arguments() {
        let spec = spec(KIND);
        let devices = [nvidia(0, GPU0)];
        let mut ctx = context(&spec, &devices, &[8000]);
        ctx.command = ["/opt/vllm/bin/vllm", "serve"].map(str::to_string).to_vec();
        let plan = Vllm.launch(&ctx.get()).unwrap();
        assert_eq!(plan.program, "/opt/vllm/bin/vllm");
        assert_eq!(plan.args[..2], ["serve", "/models/qwen2.5-7b"]);
        ctx.command = ["pyxis-mock-runtime", "--flavor", "vllm"].map(str::to_string).to_vec();
        let plan = Vllm.launch(&ctx.get()).unwrap();
        assert_eq!(plan.program, "pyxis-mock-runtime");
        assert_eq!(plan.args[..4], ["--flavor", "vllm", "serve", "/models/qwen2.5-7b"]);
        let mut no_model = spec.clone();
        no_model.model_source.clear();
        assert!(matches!(
            launch_on(&Vllm, &no_model, &devices, &[8000]),
            Err(AdapterError::Invalid { .. })
        ));
    }

    // "Health" (`/health` 200, 503 once the engine is dead), "Version" (`/version`),
    // "Metrics" (`/metrics` on the same port), "OpenAI API" (`/v1`).
    #[test]
    fn endpoints_and_readiness() {
        let e = Vllm.endpoints(&spec(KIND));
        assert_eq!((e.readiness.path.as_str(), e.readiness.port_index), ("/health", 0));
        assert_eq!(e.liveness.path, "/health");
        assert_eq!(e.version.map(|p| p.path).as_deref(), Some("/version"));
        assert_eq!(
            e.metrics.map(|p| (p.path, p.port_index)),
            Some(("/metrics".to_string(), 0))
        );
        assert_eq!(e.openai_path, "/v1");
        assert!(Vllm.is_ready(200, ""));
        assert!(!Vllm.is_ready(503, ""));
        assert_eq!(Vllm.version(r#"{"version":"0.11.0"}"#).as_deref(), Some("0.11.0"));
        assert_eq!(Vllm.version("Internal Server Error"), None);
    }

    /// A data-parallel server with two engines, as `vllm/v1/metrics/loggers.py` writes it.
    const CURRENT: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen2.5-7B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 1.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.25
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 3000.0
vllm:prefix_cache_queries_total{engine="1",model_name="Qwen/Qwen2.5-7B-Instruct"} 1000.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 2000.0
vllm:prefix_cache_hits_total{engine="1",model_name="Qwen/Qwen2.5-7B-Instruct"} 1000.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 3000.0
vllm:prompt_tokens_total{engine="1",model_name="Qwen/Qwen2.5-7B-Instruct"} 1000.0
vllm:prompt_tokens_created{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 1.7269e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 812.0
vllm:generation_tokens_total{engine="1",model_name="Qwen/Qwen2.5-7B-Instruct"} 188.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.04",model_name="Qwen/Qwen2.5-7B-Instruct"} 9.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="Qwen/Qwen2.5-7B-Instruct"} 12.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 12.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.61
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="Qwen/Qwen2.5-7B-Instruct"} 11.0
"#;

    /// vLLM 0.8, before the renames (#18354, #29330).
    const OLD: &str = r#"# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="Qwen/Qwen2.5-7B-Instruct"} 1.0
vllm:num_requests_waiting{model_name="Qwen/Qwen2.5-7B-Instruct"} 4.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="Qwen/Qwen2.5-7B-Instruct"} 0.875
vllm:gpu_prefix_cache_queries_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 800.0
vllm:gpu_prefix_cache_hits_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 200.0
vllm:prompt_tokens_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 800.0
vllm:generation_tokens_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 64.0
"#;

    #[test]
    fn metrics_current_and_old_names() {
        assert_eq!(
            Vllm.metrics(CURRENT),
            RuntimeMetrics {
                requests_running: Some(5.0),
                requests_waiting: Some(1.0),
                kv_cache_usage_ratio: Some(0.375),
                prompt_tokens_total: Some(4000.0),
                generation_tokens_total: Some(1000.0),
                prefix_cache_hit_ratio: Some(0.75),
            }
        );
        assert_eq!(
            Vllm.metrics(OLD),
            RuntimeMetrics {
                requests_running: Some(1.0),
                requests_waiting: Some(4.0),
                kv_cache_usage_ratio: Some(0.875),
                prompt_tokens_total: Some(800.0),
                generation_tokens_total: Some(64.0),
                prefix_cache_hit_ratio: Some(0.25),
            }
        );
        assert_eq!(Vllm.metrics(""), RuntimeMetrics::default());
    }
}
