//! Hugging Face TGI: `text-generation-launcher --model-id MODEL` (docs/runtimes.md, "TGI").
//!
//! TGI also opens a Prometheus listener hard-wired to port 9000, so a second TGI on the
//! same host fails with `failed to build prometheus recorder` (TGI#3062). A
//! `--prometheus-port` flag is not confirmed in the launcher reference, so the adapter
//! does not pass one; the supervisor sees the second replica exit and reports why.
//! Pyxis scrapes `/metrics` on the main port, which TGI also serves.

use pyxis_protocol::{ReplicaSpec, RuntimeMetrics};

use super::{finish, json_version, port, single_port, start, strings, AmdMask, DeviceSupport};
use crate::runtime::{promtext::Exposition, Adapter, AdapterError, Endpoints, LaunchContext, LaunchPlan};

const KIND: &str = "tgi";

/// CUDA and ROCm images (the ROCm variable is not documented; PyTorch-ROCm honours HIP);
/// the CPU image runs with every GPU hidden. TGI-on-TPU is a separate project.
const DEVICES: DeviceSupport = DeviceSupport {
    amd: Some(AmdMask::RocrAndHip),
    tpu: false,
    cpu_hide: Some(""),
};

/// The `tgi` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tgi;

impl Adapter for Tgi {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn launch(&self, ctx: &LaunchContext<'_>) -> Result<LaunchPlan, AdapterError> {
        let (program, mut args, model, placement) = start(KIND, DEVICES, ctx)?;
        // TGI serves one model and has no served-name flag. `--hostname` is always given:
        // the launcher also reads `HOSTNAME`, which a container sets to its id.
        args.extend(strings([
            "--model-id",
            model,
            "--hostname",
            ctx.host,
            "--port",
            &port(KIND, ctx, 0)?,
        ]));
        if let Some(shards) = placement.tensor_parallel() {
            args.extend(strings(["--num-shard", &shards]));
        }
        Ok(finish(program, args, placement.env, ctx.spec))
    }

    fn endpoints(&self, _spec: &ReplicaSpec) -> Endpoints {
        single_port("/health", Some("/info"), Some("/metrics"))
    }

    fn version(&self, body: &str) -> Option<String> {
        json_version(body, "version")
    }

    fn metrics(&self, body: &str) -> RuntimeMetrics {
        normalise(&Exposition::parse(body))
    }
}

/// TGI's metric names, normalised.
pub(super) fn normalise(e: &Exposition<'_>) -> RuntimeMetrics {
    RuntimeMetrics {
        requests_running: e.sum("tgi_batch_current_size"),
        requests_waiting: e.sum("tgi_queue_size"),
        // No KV-cache usage metric: `tgi_batch_current_max_tokens` is a budget.
        kv_cache_usage_ratio: None,
        // Token counts exist only as histograms; their sums are the totals.
        prompt_tokens_total: e.sum("tgi_request_input_length_sum"),
        generation_tokens_total: e.sum("tgi_request_generated_tokens_sum"),
        prefix_cache_hit_ratio: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    /// `--model-id MODEL` with the spec's host and port.
    const MODEL_HOST_PORT: [&str; 6] = [
        "--model-id",
        "/models/qwen2.5-7b",
        "--hostname",
        "127.0.0.1",
        "--port",
        "8000",
    ];

    // docs/runtimes.md, TGI rows "Launch" (`--model-id`), "Served name" (none),
    // "Host / port" (`--hostname`, `-p/--port`), "Parallelism" (`--num-shard`),
    // "Devices" (CUDA_VISIBLE_DEVICES, named under `--num-shard`).
    #[test]
    fn launch_on_two_nvidia_gpus() {
        assert_eq!(
            launch_on(&Tgi, &spec(KIND), &two_nvidia(), &[8000]).unwrap(),
            plan(
                "text-generation-launcher",
                &with_extra_args(&[&MODEL_HOST_PORT, &["--num-shard", "2"]]),
                &with_hf_home(&[("CUDA_VISIBLE_DEVICES", TWO_GPUS)]),
            )
        );
    }

    // Device selection: TGI-ROCm honours HIP (PyTorch-ROCm), renumbered inside ROCR.
    #[test]
    fn launch_on_amd() {
        assert_eq!(
            launch_on(&Tgi, &spec(KIND), &two_amd(), &[8000]).unwrap(),
            plan(
                "text-generation-launcher",
                &with_extra_args(&[&MODEL_HOST_PORT, &["--num-shard", "2"]]),
                &with_hf_home(&TWO_AMD_ENV)
            )
        );
    }

    #[test]
    fn launch_on_cpu_and_not_on_tpu() {
        assert_eq!(
            launch_on(&Tgi, &spec(KIND), &[], &[8000]).unwrap(),
            plan(
                "text-generation-launcher",
                &with_extra_args(&[&MODEL_HOST_PORT]),
                &with_hf_home(&[("CUDA_VISIBLE_DEVICES", "")])
            )
        );
        assert!(matches!(
            launch_on(&Tgi, &spec(KIND), &four_tpu(), &[8000, 8476]),
            Err(AdapterError::Unsupported { kind: "tgi", .. })
        ));
    }

    // "Health" (`/health` 200 or 503), "Version" (`/info` `.version`), "Metrics"
    // (`/metrics` on the main port), "OpenAI routes" (`/v1/...`).
    #[test]
    fn endpoints_readiness_and_version() {
        let e = Tgi.endpoints(&spec(KIND));
        assert_eq!(e.readiness.path, "/health");
        assert_eq!(e.liveness.path, "/health");
        assert_eq!(e.version.map(|p| p.path).as_deref(), Some("/info"));
        assert_eq!(
            e.metrics.map(|p| (p.path, p.port_index)),
            Some(("/metrics".to_string(), 0))
        );
        assert_eq!(e.openai_path, "/v1");
        assert!(Tgi.is_ready(200, ""));
        assert!(!Tgi.is_ready(503, r#"{"error":"unhealthy","error_type":"healthcheck"}"#));
        let info = r#"{"model_id":"Qwen/Qwen2.5-7B-Instruct","model_sha":null,"model_pipeline_tag":"text-generation",
            "max_concurrent_requests":128,"max_best_of":2,"max_stop_sequences":4,"max_input_tokens":4095,
            "max_total_tokens":4096,"validation_workers":2,"max_client_batch_size":4,"router":"text-generation-router",
            "version":"3.3.4","sha":"9f38d9305","docker_label":"sha-9f38d93"}"#;
        assert_eq!(Tgi.version(info).as_deref(), Some("3.3.4"));
        assert_eq!(Tgi.version(r#"{"model_id":"x"}"#), None);
    }

    /// As `docs/source/reference/metrics.md` lists them (no model label).
    const EXPOSITION: &str = r#"# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 4
# TYPE tgi_queue_size gauge
tgi_queue_size 2
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 16000
# TYPE tgi_request_input_length histogram
tgi_request_input_length_bucket{le="128"} 20
tgi_request_input_length_bucket{le="+Inf"} 57
tgi_request_input_length_sum 18342
tgi_request_input_length_count 57
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="+Inf"} 57
tgi_request_generated_tokens_sum 6120
tgi_request_generated_tokens_count 57
# TYPE tgi_batch_inference_duration histogram
tgi_batch_inference_duration_sum{method="prefill"} 1.25
tgi_batch_inference_duration_sum{method="decode"} 30.5
# TYPE tgi_request_success counter
tgi_request_success 57
"#;

    #[test]
    fn metrics() {
        assert_eq!(
            Tgi.metrics(EXPOSITION),
            RuntimeMetrics {
                requests_running: Some(4.0),
                requests_waiting: Some(2.0),
                kv_cache_usage_ratio: None,
                prompt_tokens_total: Some(18342.0),
                generation_tokens_total: Some(6120.0),
                prefix_cache_hit_ratio: None,
            }
        );
    }
}
