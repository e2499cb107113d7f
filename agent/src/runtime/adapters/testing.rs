//! Fixtures shared by the adapters' tests: one replica, the devices of a 2-GPU NVIDIA
//! node, an AMD node, a TPU VM, MIG slices, and a `check`-style plan builder.

use std::path::PathBuf;

use pyxis_protocol::{CustomRuntime, ReplicaSpec, Vendor};

use crate::runtime::{Adapter, AdapterError, AssignedDevice, LaunchContext, LaunchPlan};

pub const GPU0: &str = "GPU-5a2b6d4e-8f1c-4b3a-9e7d-1c2b3a4d5e6f";
pub const GPU1: &str = "GPU-9c8d7e6f-5a4b-4c3d-8e2f-1a0b9c8d7e6f";
pub const MIG0: &str = "MIG-0f8e2a1c-3b4d-5e6f-7a8b-9c0d1e2f3a4b";
pub const MIG1: &str = "MIG-1e2d3c4b-5a69-4788-96a5-b4c3d2e1f0a9";
pub const MODEL_SOURCE: &str = "/models/qwen2.5-7b";
pub const MODEL_NAME: &str = "Qwen/Qwen2.5-7B-Instruct";
pub const HOST: &str = "127.0.0.1";
pub const REPLICA_DIR: &str = "/var/lib/pyxis/replicas/qwen-7b-0";

/// `spec.runtime_args` of [`spec`], which every plan's arguments end with.
pub const EXTRA_ARGS: [&str; 2] = ["--extra-arg", "x"];
/// `spec.env` of [`spec`], which every plan's environment ends with.
pub const HF_HOME: (&str, &str) = ("HF_HOME", "/cache/hf");

/// The replica every test launches: `spec.runtime_args` and `spec.env` are recognisable so
/// the tests can check they come last.
pub fn spec(kind: &str) -> ReplicaSpec {
    ReplicaSpec {
        name: "qwen-7b-0".to_string(),
        deployment: "qwen-7b".to_string(),
        tenant: "research".to_string(),
        model_name: MODEL_NAME.to_string(),
        model_version: "2024-09-19".to_string(),
        model_source: MODEL_SOURCE.to_string(),
        runtime_kind: kind.to_string(),
        runtime_args: EXTRA_ARGS.map(str::to_string).to_vec(),
        gpus: Vec::new(),
        env: vec![(HF_HOME.0.to_string(), HF_HOME.1.to_string())],
        readiness_timeout_ms: 0,
        custom: (kind == "custom").then(|| CustomRuntime {
            command: ["/opt/engine/serve", "--model", "{model}", "--port", "{port}"]
                .map(str::to_string)
                .to_vec(),
            health_path: "/healthz".to_string(),
            metrics_path: None,
            version_path: None,
            openai_path: String::new(),
        }),
    }
}

/// The command the agent would find on `PATH` (or be configured with) for `kind`.
pub fn default_command(kind: &str) -> Vec<String> {
    let command: &[&str] = match kind {
        "vllm" => &["vllm"],
        "tgi" => &["text-generation-launcher"],
        "sglang" => &["python3", "-m", "sglang.launch_server"],
        "triton" => &["tritonserver"],
        "trtllm" => &["trtllm-serve"],
        "ollama" => &["ollama"],
        "llama-cpp" => &["llama-server"],
        _ => &[],
    };
    command.iter().map(|s| s.to_string()).collect()
}

pub fn nvidia(index: u32, uuid: &str) -> AssignedDevice {
    AssignedDevice {
        uuid: uuid.to_string(),
        index,
        vendor: Vendor::Nvidia,
    }
}

pub fn amd(index: u32, uuid: &str) -> AssignedDevice {
    AssignedDevice {
        uuid: uuid.to_string(),
        index,
        vendor: Vendor::Amd,
    }
}

pub fn tpu(index: u32) -> AssignedDevice {
    AssignedDevice {
        uuid: format!("TPU-tpu-vm-1-{index}"),
        index,
        vendor: Vendor::Google,
    }
}

/// Two H100s.
pub fn two_nvidia() -> Vec<AssignedDevice> {
    vec![nvidia(0, GPU0), nvidia(1, GPU1)]
}

/// Two MI300X, the node's third and fourth GPUs.
pub fn two_amd() -> Vec<AssignedDevice> {
    vec![amd(2, "0x3a1f6c2b9e4d7a10"), amd(3, "0x8b2e5d1c4f7a9e36")]
}

/// Four TPU v5e chips.
pub fn four_tpu() -> Vec<AssignedDevice> {
    (0..4).map(tpu).collect()
}

/// Owns what a [`LaunchContext`] borrows.
pub struct Ctx<'a> {
    pub spec: &'a ReplicaSpec,
    pub command: Vec<String>,
    pub devices: &'a [AssignedDevice],
    pub ports: Vec<u16>,
    pub replica_dir: PathBuf,
}

impl Ctx<'_> {
    pub fn get(&self) -> LaunchContext<'_> {
        LaunchContext {
            spec: self.spec,
            command: &self.command,
            host: HOST,
            ports: &self.ports,
            devices: self.devices,
            replica_dir: &self.replica_dir,
        }
    }
}

pub fn context<'a>(spec: &'a ReplicaSpec, devices: &'a [AssignedDevice], ports: &[u16]) -> Ctx<'a> {
    Ctx {
        spec,
        command: default_command(&spec.runtime_kind),
        devices,
        ports: ports.to_vec(),
        replica_dir: PathBuf::from(REPLICA_DIR),
    }
}

/// Launches `spec` on the NVIDIA devices named by `uuids` (indices in order).
pub fn launch(
    adapter: &dyn Adapter,
    spec: &ReplicaSpec,
    uuids: &[&str],
    ports: &[u16],
) -> Result<LaunchPlan, AdapterError> {
    let devices: Vec<AssignedDevice> = uuids.iter().zip(0..).map(|(u, i)| nvidia(i, u)).collect();
    adapter.launch(&context(spec, &devices, ports).get())
}

/// Launches `spec` on `devices` with the kind's default command.
pub fn launch_on(
    adapter: &dyn Adapter,
    spec: &ReplicaSpec,
    devices: &[AssignedDevice],
    ports: &[u16],
) -> Result<LaunchPlan, AdapterError> {
    adapter.launch(&context(spec, devices, ports).get())
}

/// The expected plan, written as string slices.
pub fn plan(program: &str, args: &[&str], env: &[(&str, &str)]) -> LaunchPlan {
    LaunchPlan {
        program: program.to_string(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// `CUDA_VISIBLE_DEVICES` for [`two_nvidia`].
pub const TWO_GPUS: &str = "GPU-5a2b6d4e-8f1c-4b3a-9e7d-1c2b3a4d5e6f,GPU-9c8d7e6f-5a4b-4c3d-8e2f-1a0b9c8d7e6f";

/// Device visibility for [`two_amd`] where HIP renumbers inside the ROCr mask.
pub const TWO_AMD_ENV: [(&str, &str); 2] = [("ROCR_VISIBLE_DEVICES", "2,3"), ("HIP_VISIBLE_DEVICES", "0,1")];

/// libtpu's variables for [`four_tpu`] with the process port 8476.
pub const FOUR_TPU_ENV: [(&str, &str); 6] = [
    ("TPU_VISIBLE_CHIPS", "0,1,2,3"),
    ("TPU_VISIBLE_DEVICES", "0,1,2,3"),
    ("TPU_CHIPS_PER_PROCESS_BOUNDS", "2,2,1"),
    ("TPU_PROCESS_BOUNDS", "1,1,1"),
    ("TPU_PROCESS_PORT", "8476"),
    ("TPU_MESH_CONTROLLER_PORT", "8476"),
];

/// `parts` one after the other, then [`EXTRA_ARGS`]: the expected arguments of a plan for
/// [`spec`].
pub fn with_extra_args<'a>(parts: &[&[&'a str]]) -> Vec<&'a str> {
    parts
        .iter()
        .flat_map(|part| part.iter().copied())
        .chain(EXTRA_ARGS)
        .collect()
}

/// `--host` with the spec's host and `--port` with `port`, as most kinds take them.
pub fn host_and_port(port: &str) -> [&str; 4] {
    ["--host", HOST, "--port", port]
}

/// `devices` then [`HF_HOME`]: the expected environment of a plan for [`spec`].
pub fn with_hf_home<'a>(devices: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    devices.iter().copied().chain([HF_HOME]).collect()
}
