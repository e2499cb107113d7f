//! One adapter per runtime kind, each a translation of that runtime's row in
//! `docs/runtimes.md` (the "Adapters" section there maps every choice below to its fact).
//!
//! What is shared lives here: the configured command, device visibility (which variable
//! each vendor and runtime honours), the replica's ports, and the helpers that read
//! version answers. Every adapter is a unit struct with no state and does no I/O.

mod custom;
mod llama_cpp;
mod ollama;
mod sglang;
#[cfg(test)]
mod testing;
mod tgi;
mod triton;
mod trtllm;
mod vllm;

use pyxis_protocol::{ReplicaSpec, Vendor};

use super::{Adapter, AdapterError, AssignedDevice, Endpoints, LaunchContext, LaunchPlan, Probe};

pub use self::{
    custom::Custom, llama_cpp::LlamaCpp, ollama::Ollama, sglang::Sglang, tgi::Tgi, triton::Triton, trtllm::Trtllm,
    vllm::Vllm,
};

/// The adapter for `kind`, if Pyxis knows it.
pub fn adapter_for(kind: &str) -> Option<Box<dyn Adapter>> {
    let adapter: Box<dyn Adapter> = match kind {
        "vllm" => Box::new(Vllm),
        "tgi" => Box::new(Tgi),
        "sglang" => Box::new(Sglang),
        "triton" => Box::new(Triton),
        "trtllm" => Box::new(Trtllm),
        "ollama" => Box::new(Ollama),
        "llama-cpp" => Box::new(LlamaCpp),
        "custom" => Box::new(Custom),
        _ => return None,
    };
    Some(adapter)
}

/// How a runtime is told which AMD GPUs to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AmdMask {
    /// `ROCR_VISIBLE_DEVICES` only (Ollama documents only this one).
    Rocr,
    /// `ROCR_VISIBLE_DEVICES` with the node's indices, and `HIP_VISIBLE_DEVICES` counting
    /// `0..n` inside that mask: HIP renumbers inside the ROCr mask, so the same indices in
    /// both would hide every GPU (`docs/runtimes.md`, "Combining ROCR + HIP").
    RocrAndHip,
}

/// Which devices a runtime can run on and how it is told.
#[derive(Debug, Clone, Copy)]
struct DeviceSupport {
    /// AMD GPUs; `None`: the runtime has no ROCm build.
    amd: Option<AmdMask>,
    /// TPU chips through libtpu's per-process variables.
    tpu: bool,
    /// On CPU, the `CUDA_VISIBLE_DEVICES` value that hides every GPU; `None`: the runtime
    /// cannot run without an accelerator.
    cpu_hide: Option<&'static str>,
}

/// Index into [`LaunchContext::ports`] of the libtpu process port, for kinds that run on
/// TPU (see [`ports_for`]).
const TPU_PORT_INDEX: usize = 1;

/// Where the devices of one launch are and how the runtime sees them.
#[derive(Debug)]
struct Placement {
    /// Device visibility variables.
    env: Vec<(String, String)>,
    /// Accelerators the runtime sees (0 on CPU; a MIG slice counts as one).
    accelerators: usize,
}

impl Placement {
    /// The tensor-parallel size to pass, when more than one accelerator is visible.
    fn tensor_parallel(&self) -> Option<String> {
        (self.accelerators > 1).then(|| self.accelerators.to_string())
    }
}

/// Whether the replica runs on TPU chips, from their UUIDs (`agent/src/tpu.rs` names
/// them `TPU-...`). [`Adapter::ports_needed`] sees only the spec, not the devices.
fn runs_on_tpu(spec: &ReplicaSpec) -> bool {
    spec.gpus.iter().any(|uuid| uuid.starts_with("TPU-"))
}

/// Ports for kinds that can run on TPU: one more for libtpu's process port there.
fn ports_for(spec: &ReplicaSpec) -> usize {
    if runs_on_tpu(spec) {
        TPU_PORT_INDEX + 1
    } else {
        1
    }
}

/// The device visibility environment for `ctx.devices`.
fn placement(kind: &'static str, support: DeviceSupport, ctx: &LaunchContext<'_>) -> Result<Placement, AdapterError> {
    let unsupported = |reason: String| AdapterError::Unsupported { kind, reason };
    let devices = ctx.devices;
    let Some(first) = devices.first() else {
        let hide = support
            .cpu_hide
            .ok_or_else(|| unsupported("it needs an accelerator and the replica has none (CPU)".to_string()))?;
        return Ok(Placement {
            env: vec![("CUDA_VISIBLE_DEVICES".to_string(), hide.to_string())],
            accelerators: 0,
        });
    };
    if let Some(other) = devices.iter().find(|d| d.vendor != first.vendor) {
        return Err(unsupported(format!(
            "devices of different vendors ({} and {}) in one replica",
            first.vendor.as_str(),
            other.vendor.as_str()
        )));
    }
    let uuids = || join(devices.iter().map(|d| d.uuid.as_str()));
    let indices = || join(devices.iter().map(|d| d.index.to_string()));
    let env = match first.vendor {
        Vendor::Nvidia => {
            if devices.len() > 1 && devices.iter().any(is_mig) {
                return Err(unsupported(format!(
                    "a CUDA process uses one MIG device and no tensor parallelism across MIG slices; \
                     {} devices were assigned",
                    devices.len()
                )));
            }
            vec![("CUDA_VISIBLE_DEVICES".to_string(), uuids())]
        }
        Vendor::Amd => match support.amd {
            None => return Err(unsupported("it has no AMD (ROCm) build".to_string())),
            Some(AmdMask::Rocr) => vec![("ROCR_VISIBLE_DEVICES".to_string(), indices())],
            Some(AmdMask::RocrAndHip) => vec![
                ("ROCR_VISIBLE_DEVICES".to_string(), indices()),
                (
                    "HIP_VISIBLE_DEVICES".to_string(),
                    join((0..devices.len()).map(|i| i.to_string())),
                ),
            ],
        },
        Vendor::Google => {
            if !support.tpu {
                return Err(unsupported("it does not run on TPU".to_string()));
            }
            tpu_env(kind, devices, ctx.ports)?
        }
        Vendor::Other => return Err(unsupported("the device vendor is unknown".to_string())),
    };
    Ok(Placement {
        env,
        accelerators: devices.len(),
    })
}

fn is_mig(device: &AssignedDevice) -> bool {
    device.uuid.starts_with("MIG-")
}

/// libtpu's variables for one process on a sub-slice of a TPU VM.
fn tpu_env(kind: &'static str, chips: &[AssignedDevice], ports: &[u16]) -> Result<Vec<(String, String)>, AdapterError> {
    // Chip grid of the sub-slice (x,y,z), as libtpu expects for 1, 2, 4 and 8 chips of
    // one host; other counts are not a sub-slice a single process can own.
    let bounds = match chips.len() {
        1 => "1,1,1",
        2 => "1,2,1",
        4 => "2,2,1",
        8 => "2,4,1",
        n => {
            return Err(AdapterError::Unsupported {
                kind,
                reason: format!("{n} TPU chips do not form a sub-slice one process can own (1, 2, 4 or 8)"),
            })
        }
    };
    let chips = join(chips.iter().map(|d| d.index.to_string()));
    let mut env = vec![
        ("TPU_VISIBLE_CHIPS".to_string(), chips.clone()),
        // The older libtpu name of the same variable.
        ("TPU_VISIBLE_DEVICES".to_string(), chips),
        ("TPU_CHIPS_PER_PROCESS_BOUNDS".to_string(), bounds.to_string()),
        ("TPU_PROCESS_BOUNDS".to_string(), "1,1,1".to_string()),
    ];
    // Each process on a TPU VM needs its own port. Real chips (`TPU-...`) always get the
    // second port (see `ports_for`); simulated ones (`SIM-...`) may not, and then libtpu's
    // default port is left, which is enough for one TPU replica per VM.
    if let Some(port) = ports.get(TPU_PORT_INDEX) {
        env.push(("TPU_PROCESS_PORT".to_string(), port.to_string()));
        env.push(("TPU_MESH_CONTROLLER_PORT".to_string(), port.to_string()));
    }
    Ok(env)
}

fn join<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item.as_ref());
    }
    out
}

/// The configured command: program and fixed leading arguments.
fn base_command(kind: &'static str, command: &[String]) -> Result<(String, Vec<String>), AdapterError> {
    match command.split_first() {
        Some((program, args)) if !program.is_empty() => Ok((program.clone(), args.to_vec())),
        _ => Err(AdapterError::Invalid {
            kind,
            reason: "no command is configured for this kind".to_string(),
        }),
    }
}

/// What a kind that takes a model on its command line starts its plan from: the configured
/// program and leading arguments, the model source and the placement, checked in that order.
fn start<'a>(
    kind: &'static str,
    devices: DeviceSupport,
    ctx: &LaunchContext<'a>,
) -> Result<(String, Vec<String>, &'a str, Placement), AdapterError> {
    let (program, args) = base_command(kind, ctx.command)?;
    let model = model_source(kind, ctx.spec)?;
    let placement = placement(kind, devices, ctx)?;
    Ok((program, args, model, placement))
}

/// Appends the runtime's subcommand (`vllm serve`, `ollama serve`) unless the configured
/// command already ends with it (`--runtime vllm="/opt/vllm/bin/vllm serve"`).
fn push_subcommand(args: &mut Vec<String>, subcommand: &str) {
    if args.last().map(String::as_str) != Some(subcommand) {
        args.push(subcommand.to_string());
    }
}

/// The port at `index` of the replica's reserved ports.
fn port(kind: &'static str, ctx: &LaunchContext<'_>, index: usize) -> Result<String, AdapterError> {
    ctx.ports
        .get(index)
        .map(u16::to_string)
        .ok_or_else(|| AdapterError::Invalid {
            kind,
            reason: format!("{} port(s) reserved, port #{} needed", ctx.ports.len(), index + 1),
        })
}

/// `spec.model_source`, which every kind but `ollama` and `custom` puts on its command line.
fn model_source<'a>(kind: &'static str, spec: &'a ReplicaSpec) -> Result<&'a str, AdapterError> {
    if spec.model_source.is_empty() {
        return Err(AdapterError::Invalid {
            kind,
            reason: "the model source is empty".to_string(),
        });
    }
    Ok(&spec.model_source)
}

/// `host:port` as an address variable takes it (IPv6 literals in brackets).
fn host_port(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The plan: the adapter's arguments then `spec.runtime_args` verbatim; the adapter's
/// environment then `spec.env`, last so that it wins.
fn finish(program: String, mut args: Vec<String>, mut env: Vec<(String, String)>, spec: &ReplicaSpec) -> LaunchPlan {
    args.extend(spec.runtime_args.iter().cloned());
    env.extend(spec.env.iter().cloned());
    LaunchPlan { program, args, env }
}

/// Owned strings from string slices, for argument lists.
fn strings<const N: usize>(items: [&str; N]) -> impl Iterator<Item = String> + '_ {
    items.into_iter().map(str::to_string)
}

/// Where every built-in kind serves the OpenAI-compatible API.
const OPENAI_PATH: &str = "/v1";

/// A probe of `path` on the port at `port_index` of the replica's ports.
fn probe_at(port_index: usize, path: &str) -> Probe {
    Probe {
        port_index,
        path: path.to_string(),
    }
}

/// The endpoints of a runtime that answers everything on its first port: readiness and
/// liveness both on `health`, the optional version and metrics paths, and the OpenAI API
/// at `/v1`.
fn single_port(health: &str, version: Option<&str>, metrics: Option<&str>) -> Endpoints {
    let probe = |path: &str| probe_at(0, path);
    Endpoints {
        readiness: probe(health),
        liveness: probe(health),
        version: version.map(probe),
        metrics: metrics.map(probe),
        openai_path: OPENAI_PATH.to_string(),
    }
}

/// The longest version string Pyxis keeps; anything longer is not a version.
const MAX_VERSION_LEN: usize = 128;

/// A version string if `value` looks like one: non-empty, short, no control characters.
fn clean_version(value: &str) -> Option<String> {
    let value = value.trim();
    let ok = !value.is_empty() && value.len() <= MAX_VERSION_LEN && !value.chars().any(char::is_control);
    ok.then(|| value.to_string())
}

/// `field` of a JSON object answer, as a version string.
fn json_version(body: &str, field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    match value.get(field)? {
        serde_json::Value::String(s) => clean_version(s),
        serde_json::Value::Number(n) => clean_version(&n.to_string()),
        _ => None,
    }
}

/// Prefix-cache hits over queries, when the runtime has answered at least one query.
fn hit_ratio(hits: Option<f64>, queries: Option<f64>) -> Option<f64> {
    match (hits, queries) {
        (Some(hits), Some(queries)) if queries > 0.0 => Some((hits / queries).clamp(0.0, 1.0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn every_kind_has_an_adapter() {
        for kind in crate::RUNTIME_KINDS {
            let adapter = adapter_for(kind).unwrap_or_else(|| panic!("no adapter for {kind}"));
            assert_eq!(adapter.kind(), *kind);
        }
        assert!(adapter_for("tensorflow-serving").is_none());
        assert!(adapter_for("").is_none());
    }

    #[test]
    fn one_mig_device_is_fine_two_are_not() {
        // docs/runtimes.md, Device selection: "MIG in CUDA_VISIBLE_DEVICES" and "MIG limits"
        // (one MIG device per CUDA process, no TP across slices).
        for kind in crate::RUNTIME_KINDS {
            let adapter = adapter_for(kind).unwrap();
            let mut spec = spec(kind);
            let plan = launch(adapter.as_ref(), &spec, &[MIG0], &[8000, 8001, 8002]).unwrap();
            assert!(
                plan.env
                    .contains(&("CUDA_VISIBLE_DEVICES".to_string(), MIG0.to_string())),
                "{kind}: {:?}",
                plan.env
            );
            assert!(
                !plan
                    .args
                    .iter()
                    .any(|a| a.contains("tensor-parallel") || a.starts_with("--tp") || a == "--num-shard"),
                "{kind}: a MIG slice is TP=1: {:?}",
                plan.args
            );
            spec.gpus = vec![MIG0.to_string(), MIG1.to_string()];
            let err = launch(adapter.as_ref(), &spec, &[MIG0, MIG1], &[8000, 8001, 8002]).unwrap_err();
            assert!(matches!(err, AdapterError::Unsupported { .. }), "{kind}: {err}");
            let err = launch(adapter.as_ref(), &spec, &[MIG0, GPU1], &[8000, 8001, 8002]).unwrap_err();
            assert!(matches!(err, AdapterError::Unsupported { .. }), "{kind}: {err}");
        }
    }

    #[test]
    fn mixed_vendors_and_unknown_vendors_are_refused() {
        let spec = spec("vllm");
        let mixed = [nvidia(0, GPU0), amd(1, "0x1")];
        let ctx = context(&spec, &mixed, &[8000]);
        assert!(matches!(
            Vllm.launch(&ctx.get()),
            Err(AdapterError::Unsupported { kind: "vllm", .. })
        ));
        let other = [AssignedDevice {
            uuid: "X-1".to_string(),
            index: 0,
            vendor: Vendor::Other,
        }];
        let ctx = context(&spec, &other, &[8000]);
        assert!(matches!(Vllm.launch(&ctx.get()), Err(AdapterError::Unsupported { .. })));
    }

    #[test]
    fn a_missing_command_or_port_is_invalid() {
        let spec = spec("vllm");
        let devices = [];
        let mut ctx = context(&spec, &devices, &[]);
        ctx.command = vec![];
        assert!(matches!(Vllm.launch(&ctx.get()), Err(AdapterError::Invalid { .. })));
        ctx.command = vec!["vllm".to_string()];
        assert!(matches!(Vllm.launch(&ctx.get()), Err(AdapterError::Invalid { .. })));
    }

    #[test]
    fn the_subcommand_is_added_once() {
        let mut args = vec![];
        push_subcommand(&mut args, "serve");
        assert_eq!(args, ["serve"]);
        push_subcommand(&mut args, "serve");
        assert_eq!(args, ["serve"]);
        let mut args = vec!["--flavor".to_string(), "vllm".to_string()];
        push_subcommand(&mut args, "serve");
        assert_eq!(args, ["--flavor", "vllm", "serve"]);
    }

    #[test]
    fn tpu_sub_slices() {
        let chips = |n: u32| (0..n).map(tpu).collect::<Vec<_>>();
        for (n, bounds) in [(1, "1,1,1"), (2, "1,2,1"), (4, "2,2,1"), (8, "2,4,1")] {
            let env = tpu_env("vllm", &chips(n), &[8000, 8476]).unwrap();
            assert!(env.contains(&("TPU_CHIPS_PER_PROCESS_BOUNDS".to_string(), bounds.to_string())));
        }
        assert!(matches!(
            tpu_env("vllm", &chips(3), &[8000, 8476]),
            Err(AdapterError::Unsupported { .. })
        ));
        let env = tpu_env("vllm", &chips(1), &[8000]).unwrap();
        assert!(!env.iter().any(|(k, _)| k == "TPU_PROCESS_PORT"), "{env:?}");
    }

    #[test]
    fn versions_and_addresses() {
        assert_eq!(
            json_version(r#"{"version":"0.11.0"}"#, "version").as_deref(),
            Some("0.11.0")
        );
        assert_eq!(json_version(r#"{"version":2}"#, "version").as_deref(), Some("2"));
        assert_eq!(json_version(r#"{"version":""}"#, "version"), None);
        assert_eq!(json_version(r#"{"version":null}"#, "version"), None);
        assert_eq!(json_version("[]", "version"), None);
        assert_eq!(json_version("not json", "version"), None);
        assert_eq!(
            json_version(&format!(r#"{{"version":"{}"}}"#, "9".repeat(200)), "version"),
            None
        );
        assert_eq!(host_port("127.0.0.1", "11434"), "127.0.0.1:11434");
        assert_eq!(host_port("::1", "11434"), "[::1]:11434");
        assert_eq!(host_port("[::]", "11434"), "[::]:11434");
        assert_eq!(hit_ratio(Some(3.0), Some(4.0)), Some(0.75));
        assert_eq!(hit_ratio(Some(0.0), Some(0.0)), None);
        assert_eq!(hit_ratio(None, Some(4.0)), None);
    }
}
