//! `custom`: a runtime described by its manifest (`spec.custom`, SPEC.md "Runtime kinds").
//!
//! The manifest's command is the whole launch: the node's configured command for `custom`
//! is not used. `{port}`, `{host}`, `{model}` (the model source) and `{model_name}` are
//! replaced in the command and in `spec.env` values, in one pass (a value that itself
//! contains `{port}` is not replaced again); other braces are left as written. Device
//! visibility is added as for the built-in kinds.
//!
//! Its metrics are read with the built-in kinds' names, in turn: an engine that exports
//! vLLM-, SGLang-, TensorRT-LLM-, TGI-, llama.cpp- or Triton-style metrics gets them
//! normalised; any other gets none.

use pyxis_protocol::{CustomRuntime, ReplicaSpec, RuntimeMetrics};

use super::{json_version, placement, port, ports_for, single_port, AmdMask, DeviceSupport};
use crate::runtime::{promtext::Exposition, Adapter, AdapterError, Endpoints, LaunchContext, LaunchPlan};

const KIND: &str = "custom";

/// Any vendor: the engine is whatever the manifest runs.
const DEVICES: DeviceSupport = DeviceSupport {
    amd: Some(AmdMask::RocrAndHip),
    tpu: true,
    cpu_hide: Some(""),
};

/// The `custom` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Custom;

fn invalid(reason: &str) -> AdapterError {
    AdapterError::Invalid {
        kind: KIND,
        reason: reason.to_string(),
    }
}

/// Replaces each `{name}` of `values` in `template`, left to right, in one pass.
fn substitute(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let hit = values.iter().find(|(name, _)| {
            tail.strip_prefix('{')
                .and_then(|t| t.strip_prefix(name))
                .is_some_and(|t| t.starts_with('}'))
        });
        match hit {
            Some((name, value)) => {
                out.push_str(value);
                rest = &tail[name.len() + 2..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A path from the manifest, if it is one.
fn path(value: &str) -> Option<String> {
    value.starts_with('/').then(|| value.to_string())
}

impl Custom {
    fn manifest(spec: &ReplicaSpec) -> Result<&CustomRuntime, AdapterError> {
        spec.custom
            .as_ref()
            .ok_or_else(|| invalid("a custom runtime needs its manifest (spec.custom)"))
    }
}

impl Adapter for Custom {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn ports_needed(&self, spec: &ReplicaSpec) -> usize {
        ports_for(spec)
    }

    fn launch(&self, ctx: &LaunchContext<'_>) -> Result<LaunchPlan, AdapterError> {
        let manifest = Self::manifest(ctx.spec)?;
        if manifest.command.first().is_none_or(|program| program.is_empty()) {
            return Err(invalid("the custom runtime's command is empty"));
        }
        if path(&manifest.health_path).is_none() {
            return Err(invalid("the custom runtime's health path must start with '/'"));
        }
        let uses_port = |s: &String| s.contains("{port}");
        if !manifest.command.iter().any(uses_port) && !ctx.spec.env.iter().any(|(_, v)| uses_port(v)) {
            return Err(invalid(
                "the custom runtime's command or env must use {port}: the runtime must listen where Pyxis probes",
            ));
        }
        let placement = placement(KIND, DEVICES, ctx)?;
        let port = port(KIND, ctx, 0)?;
        let values = [
            ("port", port.as_str()),
            ("host", ctx.host),
            ("model", ctx.spec.model_source.as_str()),
            ("model_name", ctx.spec.model_name.as_str()),
        ];
        let mut command = manifest.command.iter().map(|part| substitute(part, &values));
        let program = command.next().unwrap_or_default();
        let mut args: Vec<String> = command.collect();
        args.extend(ctx.spec.runtime_args.iter().cloned());
        let mut env = placement.env;
        env.extend(
            ctx.spec
                .env
                .iter()
                .map(|(key, value)| (key.clone(), substitute(value, &values))),
        );
        Ok(LaunchPlan { program, args, env })
    }

    fn endpoints(&self, spec: &ReplicaSpec) -> Endpoints {
        let manifest = spec.custom.clone().unwrap_or_default();
        let health = path(&manifest.health_path).unwrap_or_else(|| "/health".to_string());
        let version = manifest.version_path.as_deref().and_then(path);
        let metrics = manifest.metrics_path.as_deref().and_then(path);
        let endpoints = single_port(&health, version.as_deref(), metrics.as_deref());
        match path(&manifest.openai_path) {
            Some(openai_path) => Endpoints {
                openai_path,
                ..endpoints
            },
            None => endpoints,
        }
    }

    fn version(&self, body: &str) -> Option<String> {
        json_version(body, "version")
    }

    fn metrics(&self, body: &str) -> RuntimeMetrics {
        let e = Exposition::parse(body);
        let readers: [fn(&Exposition<'_>) -> RuntimeMetrics; 6] = [
            super::vllm::normalise,
            super::sglang::normalise,
            super::trtllm::normalise,
            super::tgi::normalise,
            super::llama_cpp::normalise,
            super::triton::normalise,
        ];
        readers
            .iter()
            .map(|read| read(&e))
            .find(|m| *m != RuntimeMetrics::default())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn manifest_spec() -> ReplicaSpec {
        let mut spec = spec(KIND);
        spec.custom = Some(CustomRuntime {
            command: [
                "/opt/engine/bin/serve",
                "--model",
                "{model}",
                "--name={model_name}",
                "--listen",
                "{host}:{port}",
                "--json={\"x\":1}",
                "{unknown}",
            ]
            .map(str::to_string)
            .to_vec(),
            health_path: "/healthz".to_string(),
            metrics_path: Some("/metrics".to_string()),
            version_path: Some("/version".to_string()),
            openai_path: "/openai/v1".to_string(),
        });
        spec.env = vec![
            ("ENGINE_URL".to_string(), "http://{host}:{port}/".to_string()),
            ("ENGINE_LOG".to_string(), "info".to_string()),
        ];
        spec
    }

    /// The arguments of [`manifest_spec`]'s command, substituted for port 8000.
    const ARGS: [&str; 7] = [
        "--model",
        "/models/qwen2.5-7b",
        "--name=Qwen/Qwen2.5-7B-Instruct",
        "--listen",
        "127.0.0.1:8000",
        "--json={\"x\":1}",
        "{unknown}",
    ];

    /// [`manifest_spec`]'s `spec.env`, substituted for port 8000.
    const ENGINE_ENV: [(&str, &str); 2] = [("ENGINE_URL", "http://127.0.0.1:8000/"), ("ENGINE_LOG", "info")];

    #[test]
    fn placeholders_are_substituted_in_args_and_env() {
        assert_eq!(
            launch_on(&Custom, &manifest_spec(), &two_nvidia(), &[8000]).unwrap(),
            plan(
                "/opt/engine/bin/serve",
                &with_extra_args(&[&ARGS]),
                &[("CUDA_VISIBLE_DEVICES", TWO_GPUS), ENGINE_ENV[0], ENGINE_ENV[1]],
            )
        );
    }

    #[test]
    fn devices_on_amd_cpu_and_tpu() {
        let mut spec = manifest_spec();
        spec.runtime_args.clear();
        let expect = |devices: &[(&str, &str)]| {
            let env: Vec<(&str, &str)> = devices.iter().chain(&ENGINE_ENV).copied().collect();
            plan("/opt/engine/bin/serve", &ARGS, &env)
        };
        assert_eq!(
            launch_on(&Custom, &spec, &two_amd(), &[8000]).unwrap(),
            expect(&TWO_AMD_ENV)
        );
        assert_eq!(
            launch_on(&Custom, &spec, &[], &[8000]).unwrap(),
            expect(&[("CUDA_VISIBLE_DEVICES", "")])
        );
        let chips = four_tpu();
        spec.gpus = chips.iter().map(|c| c.uuid.clone()).collect();
        assert_eq!(Custom.ports_needed(&spec), 2);
        assert_eq!(
            launch_on(&Custom, &spec, &chips, &[8000, 8476]).unwrap(),
            expect(&FOUR_TPU_ENV)
        );
    }

    #[test]
    fn substitution_is_one_pass() {
        let values = [("port", "8000"), ("model_name", "{port}"), ("model", "m")];
        assert_eq!(substitute("{model_name}-{port}", &values), "{port}-8000");
        assert_eq!(substitute("{model}{model_name}", &values), "m{port}");
        assert_eq!(substitute("{", &values), "{");
        assert_eq!(substitute("{{port}}", &values), "{8000}");
        assert_eq!(substitute("{port", &values), "{port");
        assert_eq!(substitute("é{port}ü", &values), "é8000ü");
    }

    #[test]
    fn invalid_manifests() {
        let mut spec = manifest_spec();
        spec.custom = None;
        assert!(matches!(
            launch_on(&Custom, &spec, &[], &[8000]),
            Err(AdapterError::Invalid { kind: "custom", .. })
        ));
        for broken in [
            |m: &mut CustomRuntime| m.command.clear(),
            |m: &mut CustomRuntime| m.command[0].clear(),
            |m: &mut CustomRuntime| m.health_path = "healthz".to_string(),
            |m: &mut CustomRuntime| m.command = vec!["/opt/engine/bin/serve".to_string()],
        ] {
            let mut spec = manifest_spec();
            spec.env.clear();
            if let Some(m) = spec.custom.as_mut() {
                broken(m);
            }
            assert!(
                matches!(
                    launch_on(&Custom, &spec, &[], &[8000]),
                    Err(AdapterError::Invalid { .. })
                ),
                "{:?}",
                spec.custom
            );
        }
        // The port may come through the environment instead of the command.
        let mut spec = manifest_spec();
        if let Some(m) = spec.custom.as_mut() {
            m.command = vec!["/opt/engine/bin/serve".to_string()];
        }
        assert!(launch_on(&Custom, &spec, &[], &[8000]).is_ok());
    }

    #[test]
    fn endpoints_from_the_manifest() {
        let e = Custom.endpoints(&manifest_spec());
        assert_eq!(e.readiness.path, "/healthz");
        assert_eq!(e.liveness.path, "/healthz");
        assert_eq!(e.version.map(|p| p.path).as_deref(), Some("/version"));
        assert_eq!(e.metrics.map(|p| p.path).as_deref(), Some("/metrics"));
        assert_eq!(e.openai_path, "/openai/v1");
        let e = Custom.endpoints(&spec(KIND));
        assert_eq!((e.version, e.metrics, e.openai_path.as_str()), (None, None, "/v1"));
        assert!(Custom.is_ready(200, "") && !Custom.is_ready(503, ""));
        assert_eq!(Custom.version(r#"{"version":"2.1"}"#).as_deref(), Some("2.1"));
    }

    #[test]
    fn metrics_in_a_known_dialect() {
        let vllm_like = "vllm:num_requests_running{model_name=\"m\"} 2\nvllm:num_requests_waiting 1\n";
        let m = Custom.metrics(vllm_like);
        assert_eq!((m.requests_running, m.requests_waiting), (Some(2.0), Some(1.0)));
        let llama_like = "llamacpp:requests_processing 3\n";
        assert_eq!(Custom.metrics(llama_like).requests_running, Some(3.0));
        assert_eq!(Custom.metrics("engine_busy 1\n"), RuntimeMetrics::default());
    }
}
