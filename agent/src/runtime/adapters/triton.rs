//! NVIDIA Triton: `tritonserver --model-repository=DIR` (docs/runtimes.md, "NVIDIA Triton").
//!
//! `spec.model_source` is the model repository; the served model name is the model's
//! directory name in it, which Pyxis cannot set. Tensor parallelism, memory and context
//! live in the backend's model config, not on the command line, so a multi-GPU replica
//! only gets the GPUs made visible.
//!
//! `tritonserver` alone serves KServe v2 over HTTP and gRPC and Prometheus metrics on a
//! third port; it has no OpenAI API. Triton's OpenAI frontend is a separate Python program
//! (`openai_frontend/main.py`) that runs Triton in-process: run it as a `custom` runtime
//! (docs/runtimes.md, "Adapters"). `openai_path` is `/v1`, where that frontend serves it; a
//! plain `tritonserver` answers there with 404.

use pyxis_protocol::{ReplicaSpec, RuntimeMetrics};

use super::{finish, json_version, port, probe_at, start, DeviceSupport, OPENAI_PATH};
use crate::runtime::{promtext::Exposition, Adapter, AdapterError, Endpoints, LaunchContext, LaunchPlan};

const KIND: &str = "triton";

/// Port indices: HTTP (KServe v2) first, then gRPC, then metrics.
const HTTP: usize = 0;
const GRPC: usize = 1;
const METRICS: usize = 2;

/// NVIDIA GPUs, or CPU models (ONNX, Python) with every GPU hidden. No ROCm or TPU build.
const DEVICES: DeviceSupport = DeviceSupport {
    amd: None,
    tpu: false,
    cpu_hide: Some(""),
};

/// The `triton` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Triton;

impl Adapter for Triton {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn ports_needed(&self, _spec: &ReplicaSpec) -> usize {
        METRICS + 1
    }

    fn launch(&self, ctx: &LaunchContext<'_>) -> Result<LaunchPlan, AdapterError> {
        let (program, mut args, repository, placement) = start(KIND, DEVICES, ctx)?;
        let host = ctx.host;
        args.extend([
            format!("--model-repository={repository}"),
            format!("--http-address={host}"),
            format!("--http-port={}", port(KIND, ctx, HTTP)?),
            format!("--grpc-address={host}"),
            format!("--grpc-port={}", port(KIND, ctx, GRPC)?),
            format!("--metrics-address={host}"),
            format!("--metrics-port={}", port(KIND, ctx, METRICS)?),
        ]);
        Ok(finish(program, args, placement.env, ctx.spec))
    }

    fn endpoints(&self, _spec: &ReplicaSpec) -> Endpoints {
        Endpoints {
            // KServe v2: 200 = true, 4xx = false, empty body.
            readiness: probe_at(HTTP, "/v2/health/ready"),
            liveness: probe_at(HTTP, "/v2/health/live"),
            version: Some(probe_at(HTTP, "/v2")),
            metrics: Some(probe_at(METRICS, "/metrics")),
            openai_path: OPENAI_PATH.to_string(),
        }
    }

    fn version(&self, body: &str) -> Option<String> {
        json_version(body, "version")
    }

    fn metrics(&self, body: &str) -> RuntimeMetrics {
        normalise(&Exposition::parse(body))
    }
}

/// Triton's metric names, normalised.
pub(super) fn normalise(e: &Exposition<'_>) -> RuntimeMetrics {
    RuntimeMetrics {
        // Core Triton has no "running" gauge, no KV-cache and no token metrics; those
        // are backend-specific and unconfirmed.
        requests_running: None,
        requests_waiting: e.sum("nv_inference_pending_request_count"),
        kv_cache_usage_ratio: None,
        prompt_tokens_total: None,
        generation_tokens_total: None,
        prefix_cache_hit_ratio: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const TRITON_ARGS: [&str; 7] = [
        "--model-repository=/models/qwen2.5-7b",
        "--http-address=127.0.0.1",
        "--http-port=8000",
        "--grpc-address=127.0.0.1",
        "--grpc-port=8001",
        "--metrics-address=127.0.0.1",
        "--metrics-port=8002",
    ];

    fn args() -> Vec<&'static str> {
        with_extra_args(&[&TRITON_ARGS])
    }

    // docs/runtimes.md, Triton rows "Launch" (`--model-repository=DIR`), "Ports"
    // (`--http-port`, `--grpc-port`, `--metrics-port`, `--http-address`,
    // `--metrics-address`; `--grpc-address` is in `src/command_line_parser.cc`),
    // "TP / memory / context" (not tritonserver flags).
    #[test]
    fn launch_on_two_nvidia_gpus() {
        assert_eq!(Triton.ports_needed(&spec(KIND)), 3);
        assert_eq!(
            launch_on(&Triton, &spec(KIND), &two_nvidia(), &[8000, 8001, 8002]).unwrap(),
            plan(
                "tritonserver",
                &args(),
                &with_hf_home(&[("CUDA_VISIBLE_DEVICES", TWO_GPUS)]),
            )
        );
        assert!(matches!(
            launch_on(&Triton, &spec(KIND), &two_nvidia(), &[8000]),
            Err(AdapterError::Invalid { .. })
        ));
    }

    #[test]
    fn launch_on_cpu_not_on_amd_or_tpu() {
        assert_eq!(
            launch_on(&Triton, &spec(KIND), &[], &[8000, 8001, 8002]).unwrap(),
            plan("tritonserver", &args(), &with_hf_home(&[("CUDA_VISIBLE_DEVICES", "")]),)
        );
        for devices in [two_amd(), four_tpu()] {
            assert!(matches!(
                launch_on(&Triton, &spec(KIND), &devices, &[8000, 8001, 8002]),
                Err(AdapterError::Unsupported { kind: "triton", .. })
            ));
        }
    }

    // "Health (KServe v2)", "Version" (`/v2` `.version`), "Metrics" (`:8002/metrics`, the
    // separate metrics port), "OpenAI frontend" (`/v1`, a separate program).
    #[test]
    fn endpoints_readiness_and_version() {
        let e = Triton.endpoints(&spec(KIND));
        assert_eq!(
            (e.readiness.port_index, e.readiness.path.as_str()),
            (0, "/v2/health/ready")
        );
        assert_eq!(
            (e.liveness.port_index, e.liveness.path.as_str()),
            (0, "/v2/health/live")
        );
        assert_eq!(e.version.map(|p| (p.port_index, p.path)), Some((0, "/v2".to_string())));
        assert_eq!(
            e.metrics.map(|p| (p.port_index, p.path)),
            Some((2, "/metrics".to_string()))
        );
        assert_eq!(e.openai_path, "/v1");
        assert!(Triton.is_ready(200, ""));
        assert!(!Triton.is_ready(400, ""));
        let v2 = r#"{"name":"triton","version":"2.55.0","extensions":["classification","sequence",
            "model_repository","schedule_policy","model_configuration","system_shared_memory",
            "cuda_shared_memory","binary_tensor_data","parameters","statistics","trace","logging"]}"#;
        assert_eq!(Triton.version(v2).as_deref(), Some("2.55.0"));
        assert_eq!(Triton.version(""), None);
    }

    /// As `docs/user_guide/metrics.md` shows them: per model and version, GPU by UUID.
    const EXPOSITION: &str = r#"# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="qwen",version="1"} 42
nv_inference_request_success{model="preprocess",version="1"} 42
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="qwen",version="1"} 3
nv_inference_pending_request_count{model="preprocess",version="1"} 1
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="qwen",version="1"} 125873
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-5a2b6d4e-8f1c-4b3a-9e7d-1c2b3a4d5e6f"} 0.81
"#;

    #[test]
    fn metrics() {
        assert_eq!(
            Triton.metrics(EXPOSITION),
            RuntimeMetrics {
                requests_waiting: Some(4.0),
                ..RuntimeMetrics::default()
            }
        );
    }
}
