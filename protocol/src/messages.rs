//! Typed messages. Each message names its direction and its precondition.
//!
//! Compatibility rules (postcard carries no schema): an enum's existing variants keep their
//! order and shape; new variants are appended; a struct never changes shape within a
//! protocol version. [`Hello`] and the first variant of each envelope are frozen forever,
//! because they are read before a version has been agreed. Version 1 is frozen from the
//! first tagged release on; until then its shapes still move with the product.

use serde::{Deserialize, Serialize};

use crate::version::VersionRange;

/// Everything an agent sends to a coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// First frame on every stream. Frozen: must stay variant 0 with this shape.
    Hello(Hello),
    /// Bootstrap, on a connection without a client certificate: trade a join token and a
    /// CSR for a node certificate. Precondition: `HelloAck` received.
    Enroll(EnrollRequest),
    /// Announce the node. Precondition: `HelloAck` received on an mTLS connection.
    Register(Registration),
    /// Periodic and on-change capacity. Precondition: `Registered` received.
    Capacity(CapacityReport),
    /// Phases of the replicas the agent runs. Precondition: `Registered` received.
    RuntimeStatus(RuntimeStatusReport),
    /// Acknowledges a coordinator message.
    Ack(Ack),
    /// The agent refuses something the coordinator sent.
    Error(ErrorMessage),
}

/// Everything a coordinator sends to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    /// Answer to `Hello`: the agreed version. Frozen: must stay variant 0 with this shape.
    HelloAck(HelloAck),
    /// Answer to `Enroll`: the signed node certificate.
    Enrolled(EnrollResponse),
    /// Answer to `Register`.
    Registered(RegisterAck),
    /// The full, generation-numbered set of replicas this node should run.
    DesiredState(DesiredState),
    /// Acknowledges an agent message.
    Ack(Ack),
    /// The coordinator refuses the session or a message; it usually closes afterwards.
    Error(ErrorMessage),
}

/// Opening message of a session. Frozen shape (read before a version is agreed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the agent speaks.
    pub versions: VersionRange,
    /// The agent's software version, for logs and the registry.
    pub agent_version: String,
    /// The node name the agent runs as.
    pub node_name: String,
}

/// Reply to [`Hello`]. Frozen shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The version both sides speak from now on.
    pub version: u16,
    /// The coordinator's software version.
    pub coordinator_version: String,
}

/// Join request: a token and a certificate signing request. The private key never leaves
/// the node; only the CSR travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The join token as printed by `pyxis token create` (`ID.SECRET`).
    pub token: String,
    /// Node name to be certified.
    pub node_name: String,
    /// PKCS#10 CSR in PEM.
    pub csr_pem: String,
}

/// Signed node identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// Node certificate (PEM), signed by the cluster CA.
    pub certificate_pem: String,
    /// The cluster CA certificate (PEM); its SHA-256 matches the pinned hash.
    pub ca_pem: String,
}

/// Node facts sent on registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// Static node facts.
    pub node: NodeInfo,
    /// Current capacity at registration time.
    pub capacity: CapacityReport,
}

/// Static facts about a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name (matches the certificate).
    pub name: String,
    /// Host name.
    pub hostname: String,
    /// Operating system name and version.
    pub os: String,
    /// Kernel version.
    pub kernel: String,
    /// CPU brand string.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpu_cores: u32,
    /// Total memory.
    pub memory_bytes: u64,
    /// Agent software version.
    pub agent_version: String,
    /// Accelerators found (real or simulated).
    pub accelerators: Vec<Accelerator>,
    /// Runtime kinds this node can launch.
    pub runtimes: Vec<String>,
}

/// Accelerator vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Vendor {
    /// NVIDIA GPU.
    Nvidia,
    /// AMD GPU.
    Amd,
    /// Google TPU.
    Google,
    /// Anything else.
    Other,
}

impl Vendor {
    /// Lower-case name used in JSON and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Vendor::Nvidia => "nvidia",
            Vendor::Amd => "amd",
            Vendor::Google => "google",
            Vendor::Other => "other",
        }
    }
}

/// Device health tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Health {
    /// Fully usable.
    Healthy,
    /// Usable, but with recent errors.
    Degraded,
    /// Not to be used.
    Unhealthy,
}

impl Health {
    /// Lower-case name used in JSON and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// One accelerator device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accelerator {
    /// Index on the node.
    pub index: u32,
    /// Vendor.
    pub vendor: Vendor,
    /// Model name as the driver reports it.
    pub model: String,
    /// UUID or serial.
    pub uuid: String,
    /// Total device memory.
    pub memory_bytes: u64,
    /// Hardware class (for example `H100-80GB`).
    pub hardware_class: String,
    /// Health tier.
    pub health: Health,
    /// Why the health is what it is (empty when healthy).
    pub health_reason: String,
    /// True for `--simulate` devices; never mixed up with real ones.
    pub simulated: bool,
    /// Placement-relevant facts: PCI address, NUMA node, versions, MIG, interconnect.
    pub details: DeviceDetails,
}

/// Static facts about a device beyond its identity. Every field is optional: a backend
/// fills what its driver tells it and leaves the rest empty rather than guessing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceDetails {
    /// PCI bus id, `DDDD:BB:DD.F` (lower case).
    pub pci_bus_id: Option<String>,
    /// NUMA node the device is attached to.
    pub numa_node: Option<u32>,
    /// Kernel driver version.
    pub driver_version: Option<String>,
    /// CUDA driver API version (NVIDIA, for example `12.4`) or ROCm version (AMD).
    pub compute_api_version: Option<String>,
    /// Compute capability (NVIDIA, `9.0`), gfx target (AMD, `gfx942`) or TPU generation.
    pub architecture: Option<String>,
    /// Maximum SM / graphics clock.
    pub max_sm_clock_mhz: Option<u32>,
    /// Maximum memory clock.
    pub max_memory_clock_mhz: Option<u32>,
    /// Whether ECC is enabled, when the device can tell.
    pub ecc_enabled: Option<bool>,
    /// MIG mode and instances (NVIDIA A100/H100 class devices that support it).
    pub mig: Option<MigConfig>,
    /// How this device reaches each other device on the node (by device index).
    pub links: Vec<PeerLink>,
}

/// MIG (multi-instance GPU) state of a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigConfig {
    /// MIG mode in effect now.
    pub enabled: bool,
    /// MIG mode after the next GPU reset (differs from `enabled` until the reset).
    pub pending_enabled: bool,
    /// MIG instances; each is schedulable on its own, the parent GPU then is not.
    pub instances: Vec<MigInstance>,
}

/// One MIG instance (a GPU instance with a compute instance).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigInstance {
    /// MIG device UUID (`MIG-...`), what `CUDA_VISIBLE_DEVICES` takes.
    pub uuid: String,
    /// Profile, for example `1g.10gb`.
    pub profile: String,
    /// Memory of the instance.
    pub memory_bytes: u64,
    /// GPU instance id.
    pub gpu_instance_id: u32,
    /// Compute instance id.
    pub compute_instance_id: u32,
    /// Hardware class of the instance, for example `H100-80GB-MIG-1g.10gb`.
    pub hardware_class: String,
}

/// The path between two devices on a node, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Interconnect {
    /// NVIDIA NVLink (direct or through NVSwitch).
    NvLink,
    /// AMD Infinity Fabric (xGMI).
    XGmi,
    /// PCIe, through one or more PCIe switches (no host bridge).
    PcieSwitch,
    /// PCIe through the CPU's host bridge.
    PcieHostBridge,
    /// PCIe across host bridges within one NUMA node.
    NumaNode,
    /// Across NUMA nodes (SMP interconnect such as QPI/UPI or Infinity Fabric between sockets).
    System,
}

impl Interconnect {
    /// Name used in JSON, metrics and the CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            Interconnect::NvLink => "nvlink",
            Interconnect::XGmi => "xgmi",
            Interconnect::PcieSwitch => "pcie-switch",
            Interconnect::PcieHostBridge => "pcie-host-bridge",
            Interconnect::NumaNode => "numa-node",
            Interconnect::System => "system",
        }
    }

    /// A direct GPU-to-GPU fabric (NVLink or xGMI), what multi-GPU replicas want.
    pub fn is_fabric(&self) -> bool {
        matches!(self, Interconnect::NvLink | Interconnect::XGmi)
    }
}

/// A path from one device to a peer device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLink {
    /// The peer's device index on this node.
    pub peer: u32,
    /// Best path between the two.
    pub kind: Interconnect,
    /// Active NVLink / xGMI links to the peer (0 for PCIe paths).
    pub lanes: u32,
}

/// Capacity at a point in time. Sent periodically and whenever it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityReport {
    /// Monotonic per-connection sequence number, echoed in the [`Ack`].
    pub seq: u64,
    /// Agent wall clock at send time, milliseconds since the Unix epoch.
    pub sent_at_unix_ms: u64,
    /// Host memory available.
    pub memory_available_bytes: u64,
    /// Per-device usage, in the order of [`NodeInfo::accelerators`].
    pub devices: Vec<DeviceUsage>,
}

/// Per-device usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceUsage {
    /// Device UUID.
    pub uuid: String,
    /// Memory in use; `None` when the backend does not read it (TPUs) or the device could
    /// not be read (a lost GPU). Never a made-up zero.
    pub memory_used_bytes: Option<u64>,
    /// Utilization, 0-100; `None` when not read, as for `memory_used_bytes`.
    pub utilization_percent: Option<u8>,
    /// Current health tier.
    pub health: Health,
    /// Reason for the tier (empty when healthy).
    pub health_reason: String,
    /// Temperature, when the device reports one.
    pub temperature_celsius: Option<u16>,
    /// Power draw, when the device reports one.
    pub power_watts: Option<u32>,
    /// Power limit, when the device reports one.
    pub power_limit_watts: Option<u32>,
    /// Clocks, throttling, ECC and XID counters.
    pub telemetry: DeviceTelemetry,
}

/// Fast-changing device counters. Fields a driver does not provide stay empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceTelemetry {
    /// Current SM / graphics clock.
    pub sm_clock_mhz: Option<u32>,
    /// Current memory clock.
    pub memory_clock_mhz: Option<u32>,
    /// Active clock throttle reasons (`hw_slowdown`, `hw_thermal_slowdown`, `sw_power_cap`, ...).
    /// `None` when the backend does not read throttle reasons (AMD, TPUs, a lost GPU);
    /// `Some(vec![])` when they were read and none is active.
    pub throttle_reasons: Option<Vec<String>>,
    /// ECC / RAS error counts, when the device has ECC.
    pub ecc: Option<EccCounts>,
    /// XID errors seen since the agent started. `None` for devices that have no XIDs
    /// (everything but NVIDIA GPUs).
    pub xid_count: Option<u64>,
    /// The most recent XID.
    pub last_xid: Option<u64>,
}

/// ECC and memory-repair counters. The volatile counts are present whenever the device
/// reports ECC at all; every other field is `None` when the backend does not read it or the
/// device does not keep it (page retirement after Volta, row remapping before Ampere, all of
/// them on AMD, whose RAS counters are only the volatile ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EccCounts {
    /// Corrected errors since the last driver load (NVIDIA) or since boot (AMD RAS counts).
    pub volatile_corrected: u64,
    /// Uncorrected errors since the last driver load (NVIDIA) or since boot (AMD RAS counts).
    pub volatile_uncorrected: u64,
    /// Corrected errors over the device's life.
    pub aggregate_corrected: Option<u64>,
    /// Uncorrected errors over the device's life.
    pub aggregate_uncorrected: Option<u64>,
    /// Pages retired (pre-Ampere NVIDIA).
    pub retired_pages: Option<u64>,
    /// A page retirement waits for a reset.
    pub retired_pages_pending: Option<bool>,
    /// Rows remapped, corrected plus uncorrected (Ampere and later).
    pub remapped_rows: Option<u64>,
    /// A row remapping waits for a reset.
    pub remap_pending: Option<bool>,
    /// A row remapping failed: the device needs service.
    pub remap_failed: Option<bool>,
}

/// Phase of a replica on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReplicaPhase {
    /// Accepted, not started.
    #[default]
    Pending,
    /// Process started, not yet ready.
    Starting,
    /// Serving.
    Ready,
    /// Running but failing its liveness checks.
    Unhealthy,
    /// Restarting repeatedly.
    CrashLoop,
    /// Being stopped.
    Stopping,
    /// Gave up.
    Failed,
}

impl ReplicaPhase {
    /// The name used in JSON, metrics and the CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplicaPhase::Pending => "Pending",
            ReplicaPhase::Starting => "Starting",
            ReplicaPhase::Ready => "Ready",
            ReplicaPhase::Unhealthy => "Unhealthy",
            ReplicaPhase::CrashLoop => "CrashLoop",
            ReplicaPhase::Stopping => "Stopping",
            ReplicaPhase::Failed => "Failed",
        }
    }
}

/// Observed state of one replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicaStatus {
    /// Replica name.
    pub name: String,
    /// Owning deployment.
    pub deployment: String,
    /// Owning tenant.
    pub tenant: String,
    /// Runtime kind.
    pub runtime_kind: String,
    /// Current phase.
    pub phase: ReplicaPhase,
    /// Why it is in that phase.
    pub reason: String,
    /// Version the runtime reports, when known.
    pub runtime_version: Option<String>,
    /// OpenAI-compatible base URL (`http://HOST:PORT/v1`), when serving.
    pub endpoint: Option<String>,
    /// Device UUIDs it runs on.
    pub gpus: Vec<String>,
    /// Process id of the runtime's main process, while it runs.
    pub pid: Option<u32>,
    /// Restarts since the replica was first started on this node.
    pub restarts: u32,
    /// How the last run ended (`exit code 1`, `killed by signal 9`, `stopped by the agent:
    /// not ready within 10m (exit code 0)`), when it has ended.
    pub last_exit: Option<String>,
    /// Last lines of the output of the last failed run (stderr, else stdout), kept while the
    /// replica restarts, in `CrashLoop` and in `Failed`; cleared once a run is ready, so a
    /// serving replica never shows an earlier run's output.
    pub log_tail: Vec<String>,
    /// Time from start to ready of the current run, in milliseconds.
    pub ready_after_ms: Option<u64>,
    /// Normalised runtime metrics from the last scrape.
    pub metrics: Option<RuntimeMetrics>,
}

/// Runtime metrics normalised over runtimes (each runtime names them differently; see
/// `docs/runtimes.md`). A metric a runtime does not export is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeMetrics {
    /// Requests being processed now.
    pub requests_running: Option<f64>,
    /// Requests queued, waiting for capacity.
    pub requests_waiting: Option<f64>,
    /// KV-cache use, 0 to 1.
    pub kv_cache_usage_ratio: Option<f64>,
    /// Prompt tokens processed since the runtime started.
    pub prompt_tokens_total: Option<f64>,
    /// Tokens generated since the runtime started.
    pub generation_tokens_total: Option<f64>,
    /// Prefix-cache hits over queries since the runtime started, 0 to 1.
    pub prefix_cache_hit_ratio: Option<f64>,
}

/// Replica phases, reported on change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeStatusReport {
    /// Sequence number, echoed in the [`Ack`].
    pub seq: u64,
    /// Every replica the agent runs or is stopping.
    pub replicas: Vec<ReplicaStatus>,
}

/// The full set of replicas a node should run. Declarative and idempotent: applying the
/// same generation twice changes nothing, and a replica absent from the set is stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Increases with every change; an agent ignores a generation older than one it applied.
    pub generation: u64,
    /// Replicas to run.
    pub replicas: Vec<ReplicaSpec>,
}

/// What to run for one replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSpec {
    /// Unique replica name.
    pub name: String,
    /// Owning deployment.
    pub deployment: String,
    /// Owning tenant.
    pub tenant: String,
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// Model source (path or URI).
    pub model_source: String,
    /// Runtime kind (`vllm`, `llama-cpp`, ...).
    pub runtime_kind: String,
    /// Extra runtime arguments, appended to the adapter's launch line.
    pub runtime_args: Vec<String>,
    /// Assigned device UUIDs (GPU or MIG UUIDs); empty runs on CPU.
    pub gpus: Vec<String>,
    /// Extra environment for the runtime.
    pub env: Vec<(String, String)>,
    /// How long the runtime may take to become ready, in milliseconds (0: the default,
    /// 10 minutes: model loads take minutes).
    pub readiness_timeout_ms: u64,
    /// For `runtime_kind = "custom"`: the whole launch, probes and endpoints.
    pub custom: Option<CustomRuntime>,
}

/// A runtime described entirely by its manifest. `{port}`, `{host}`, `{model}` and
/// `{model_name}` in `command` and `env` values are replaced at launch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CustomRuntime {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Readiness path answering 200 when ready (for example `/health`).
    pub health_path: String,
    /// Prometheus metrics path, if any.
    pub metrics_path: Option<String>,
    /// Version path answering JSON with a `version` field, if any.
    pub version_path: Option<String>,
    /// Path of the OpenAI-compatible API (default `/v1`).
    pub openai_path: String,
}

/// What an [`Ack`] acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckOf {
    /// A capacity report, by sequence number.
    Capacity(u64),
    /// A runtime status report, by sequence number.
    RuntimeStatus(u64),
    /// A desired state, by generation (applied).
    DesiredState(u64),
}

/// Acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The acknowledged message.
    pub of: AckOf,
}

/// Machine-readable reason of an [`ErrorMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// No protocol version in common.
    IncompatibleVersion,
    /// The join token is unknown, expired or used up.
    InvalidToken,
    /// The node has been revoked.
    Revoked,
    /// The connection is not allowed to send this message (for example `Register`
    /// without a client certificate).
    Unauthorized,
    /// A message arrived out of order.
    UnexpectedMessage,
    /// A message was well-formed but its content is invalid.
    BadRequest,
    /// The coordinator failed internally; retry later.
    Internal,
    /// Another agent is connected with the same node identity right now.
    Conflict,
}

/// A refusal with a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// What went wrong and what to do, for the operator.
    pub message: String,
}

/// Answer to [`Registration`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterAck {
    /// The node name the coordinator registered (from the certificate).
    pub node_name: String,
    /// How often the coordinator wants capacity reports, in milliseconds.
    pub report_interval_ms: u64,
}
