//! Inference runtimes: how each kind is launched and probed ([`adapters`]), and the
//! supervisor that runs replicas as process groups, restarts them, and never leaves an
//! orphan ([`supervisor`], [`ledger`]).
//!
//! The contract between the two halves is [`Adapter`]: an adapter is pure (it builds a
//! launch line and reads probe answers, it does no I/O), so every runtime's interface is
//! checked by unit tests against its documentation (`docs/runtimes.md`), and the
//! supervisor runs every kind the same way.

pub mod adapters;
pub mod ledger;
pub mod probe;
pub mod process;
pub mod promtext;
pub mod replica;
pub mod supervisor;

use std::path::Path;

use pyxis_protocol::{ReplicaSpec, RuntimeMetrics, Vendor};

/// A device assigned to a replica, as an adapter needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedDevice {
    /// UUID as the driver names it (`GPU-...`, `MIG-...`, AMD or TPU ids).
    pub uuid: String,
    /// Index on the node (what `HIP_VISIBLE_DEVICES` and TPU chip variables take).
    pub index: u32,
    /// Vendor: decides the visibility variable.
    pub vendor: Vendor,
}

/// Everything an adapter needs to build a launch.
#[derive(Debug, Clone)]
pub struct LaunchContext<'a> {
    /// The replica.
    pub spec: &'a ReplicaSpec,
    /// The configured command for this kind (`--runtime KIND=COMMAND` or found on `PATH`),
    /// split into program and fixed leading arguments.
    pub command: &'a [String],
    /// Address the runtime binds to.
    pub host: &'a str,
    /// Ports reserved for this replica: the first is the OpenAI-compatible API; a kind
    /// that needs more (see [`Adapter::ports_needed`]) gets them after it.
    pub ports: &'a [u16],
    /// Assigned devices, in the order of `spec.gpus`. Empty: CPU.
    pub devices: &'a [AssignedDevice],
    /// The replica's own directory under the agent's data dir (scratch, caches).
    pub replica_dir: &'a Path,
}

/// A process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Program (path or name looked up on `PATH`).
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment added to the agent's (minus systemd's notify/watchdog variables).
    pub env: Vec<(String, String)>,
}

/// An HTTP GET the supervisor makes against the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Index into [`LaunchContext::ports`] of the port to call.
    pub port_index: usize,
    /// Path, starting with `/`.
    pub path: String,
}

/// Where a runtime answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Readiness: answered (see [`Adapter::is_ready`]) once the model is loaded.
    pub readiness: Probe,
    /// Liveness while ready (often the same as readiness).
    pub liveness: Probe,
    /// Version query, if the runtime has one.
    pub version: Option<Probe>,
    /// Prometheus metrics, if the runtime exports them.
    pub metrics: Option<Probe>,
    /// Path of the OpenAI-compatible API on the first port (`/v1`).
    pub openai_path: String,
}

/// Why a launch cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// The spec asks for something this runtime cannot do.
    #[error("{kind} cannot run this replica: {reason}")]
    Unsupported {
        /// Runtime kind.
        kind: &'static str,
        /// What and why.
        reason: String,
    },
    /// The spec is incomplete or malformed for this kind.
    #[error("invalid replica spec for {kind}: {reason}")]
    Invalid {
        /// Runtime kind.
        kind: &'static str,
        /// What and why.
        reason: String,
    },
}

/// One runtime kind. Pure: no I/O, so every method is unit-tested against the runtime's
/// documented interface.
pub trait Adapter: Send + Sync + std::fmt::Debug {
    /// The kind (`vllm`, `tgi`, `sglang`, `triton`, `trtllm`, `ollama`, `llama-cpp`, `custom`).
    fn kind(&self) -> &'static str;
    /// Ports this kind needs (1 unless it serves metrics or gRPC on their own ports).
    fn ports_needed(&self, spec: &ReplicaSpec) -> usize {
        let _ = spec;
        1
    }
    /// The launch: program, arguments (the configured command's, then the adapter's, then
    /// `spec.runtime_args`) and environment (device visibility, tensor parallelism).
    fn launch(&self, ctx: &LaunchContext<'_>) -> Result<LaunchPlan, AdapterError>;
    /// Where the runtime answers.
    fn endpoints(&self, spec: &ReplicaSpec) -> Endpoints;
    /// Whether a readiness answer means ready (default: HTTP 200).
    fn is_ready(&self, status: u16, body: &str) -> bool {
        let _ = body;
        status == 200
    }
    /// The runtime version from the version probe's answer.
    fn version(&self, body: &str) -> Option<String>;
    /// Normalised metrics from the metrics probe's answer (Prometheus text for most).
    fn metrics(&self, body: &str) -> RuntimeMetrics;
}
