//! Ollama: `ollama serve` (docs/runtimes.md, "Ollama").
//!
//! Ollama takes no model on its command line. It listens on `OLLAMA_HOST` at once and
//! loads a model lazily, on the first request that names it, from `OLLAMA_MODELS`. A
//! model that is not in that directory is not fetched by a chat or completion request: it
//! must be pulled first (`ollama pull NAME` or `POST /api/pull`), or `OLLAMA_MODELS` must
//! point at a store that already holds it. Each replica gets its own store under its
//! directory unless `spec.env` sets `OLLAMA_MODELS` (a shared, pre-pulled store).
//! Readiness therefore means "the server answers", not "the model is loaded"; the first
//! request pays the load. Clients name the model by its Ollama tag (`spec.model_source`);
//! Ollama has no served-name flag.

use pyxis_protocol::{ReplicaSpec, RuntimeMetrics};

use super::{
    base_command, finish, host_port, json_version, placement, port, push_subcommand, single_port, AmdMask,
    DeviceSupport,
};
use crate::runtime::{Adapter, AdapterError, Endpoints, LaunchContext, LaunchPlan};

const KIND: &str = "ollama";

/// The variable that names Ollama's model store.
const MODELS_VAR: &str = "OLLAMA_MODELS";

/// NVIDIA, AMD (only `ROCR_VISIBLE_DEVICES` is documented) and CPU, where Ollama's docs
/// hide the GPUs with an invalid id, `-1`.
const DEVICES: DeviceSupport = DeviceSupport {
    amd: Some(AmdMask::Rocr),
    tpu: false,
    cpu_hide: Some("-1"),
};

/// The `ollama` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ollama;

impl Adapter for Ollama {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn launch(&self, ctx: &LaunchContext<'_>) -> Result<LaunchPlan, AdapterError> {
        let (program, mut args) = base_command(KIND, ctx.command)?;
        let placement = placement(KIND, DEVICES, ctx)?;
        push_subcommand(&mut args, "serve");
        // No tensor-parallel flag: Ollama splits a model over the GPUs it sees.
        let mut env = placement.env;
        env.push(("OLLAMA_HOST".to_string(), host_port(ctx.host, &port(KIND, ctx, 0)?)));
        if !ctx.spec.env.iter().any(|(k, _)| k == MODELS_VAR) {
            let dir = ctx.replica_dir.join("models");
            let dir = dir.to_str().ok_or_else(|| AdapterError::Invalid {
                kind: KIND,
                reason: format!("the replica directory {} is not UTF-8", ctx.replica_dir.display()),
            })?;
            env.push((MODELS_VAR.to_string(), dir.to_string()));
        }
        Ok(finish(program, args, env, ctx.spec))
    }

    fn endpoints(&self, _spec: &ReplicaSpec) -> Endpoints {
        // `/api/version` is documented; the wording of `GET /` is not. Both answer as soon
        // as the server is up, independent of any model.
        // No Prometheus endpoint (ollama#3144).
        single_port("/api/version", Some("/api/version"), None)
    }

    fn version(&self, body: &str) -> Option<String> {
        json_version(body, "version")
    }

    fn metrics(&self, _body: &str) -> RuntimeMetrics {
        RuntimeMetrics::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const MODELS: &str = "/var/lib/pyxis/replicas/qwen-7b-0/models";

    /// `device` visibility, `OLLAMA_HOST` and the replica's own store, then the spec's env.
    fn env(device: (&'static str, &'static str), host: &'static str) -> Vec<(&'static str, &'static str)> {
        with_hf_home(&[device, ("OLLAMA_HOST", host), ("OLLAMA_MODELS", MODELS)])
    }

    // docs/runtimes.md, Ollama rows "Launch" (`ollama serve`, no model), "Host / port"
    // (`OLLAMA_HOST`), "Model storage" (`OLLAMA_MODELS`), "Other knobs" (no TP flag),
    // "Devices" (CUDA_VISIBLE_DEVICES with UUIDs).
    #[test]
    fn launch_on_two_nvidia_gpus() {
        assert_eq!(
            launch_on(&Ollama, &spec(KIND), &two_nvidia(), &[8000]).unwrap(),
            plan(
                "ollama",
                &with_extra_args(&[&["serve"]]),
                &env(("CUDA_VISIBLE_DEVICES", TWO_GPUS), "127.0.0.1:8000"),
            )
        );
    }

    // "Devices": AMD `ROCR_VISIBLE_DEVICES` only.
    #[test]
    fn launch_on_amd() {
        let mut spec = spec(KIND);
        spec.runtime_args.clear();
        assert_eq!(
            launch_on(&Ollama, &spec, &two_amd(), &[11434]).unwrap(),
            plan(
                "ollama",
                &["serve"],
                &env(("ROCR_VISIBLE_DEVICES", "2,3"), "127.0.0.1:11434"),
            )
        );
    }

    // "Devices": `-1` = CPU only. A store in spec.env replaces the replica's own.
    #[test]
    fn launch_on_cpu_with_a_shared_store() {
        let mut spec = spec(KIND);
        spec.runtime_args.clear();
        spec.env = vec![("OLLAMA_MODELS".to_string(), "/srv/ollama/models".to_string())];
        let devices = [];
        let mut ctx = context(&spec, &devices, &[11434]);
        ctx.command = vec!["/usr/local/bin/ollama".to_string(), "serve".to_string()];
        assert_eq!(
            Ollama.launch(&ctx.get()).unwrap(),
            plan(
                "/usr/local/bin/ollama",
                &["serve"],
                &[
                    ("CUDA_VISIBLE_DEVICES", "-1"),
                    ("OLLAMA_HOST", "127.0.0.1:11434"),
                    ("OLLAMA_MODELS", "/srv/ollama/models"),
                ],
            )
        );
        assert!(matches!(
            launch_on(&Ollama, &spec, &four_tpu(), &[8000, 8476]),
            Err(AdapterError::Unsupported { .. })
        ));
    }

    // "Health" (up at once), "Version" (`/api/version` `.version`), "Metrics" (none),
    // "OpenAI routes" (`/v1`).
    #[test]
    fn endpoints_readiness_and_version() {
        let e = Ollama.endpoints(&spec(KIND));
        assert_eq!(e.readiness.path, "/api/version");
        assert_eq!(e.liveness.path, "/api/version");
        assert_eq!(e.version.map(|p| p.path).as_deref(), Some("/api/version"));
        assert_eq!(e.metrics, None);
        assert_eq!(e.openai_path, "/v1");
        assert!(Ollama.is_ready(200, r#"{"version":"0.12.6"}"#));
        assert!(!Ollama.is_ready(502, ""));
        assert_eq!(Ollama.version(r#"{"version":"0.12.6"}"#).as_deref(), Some("0.12.6"));
        assert_eq!(Ollama.version("Ollama is running"), None);
        assert_eq!(Ollama.metrics("whatever"), RuntimeMetrics::default());
    }
}
