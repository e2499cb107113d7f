//! JSON shapes of the admin API, shared by the server and the `pyxis` CLI. These are a
//! public, documented contract (`docs/api.md`): add fields, never rename or remove them.

use serde::{Deserialize, Serialize};

/// `{"items": [...]}` list wrapper.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct List<T> {
    /// Items.
    pub items: Vec<T>,
}

/// A node as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// `Ready`, `NotReady`, `Cordoned` or `Draining`.
    pub status: String,
    /// Why the node has that status.
    pub reason: String,
    /// Whether new replicas may be placed here.
    pub schedulable: bool,
    /// Cordoned by an operator.
    pub cordoned: bool,
    /// Being drained.
    pub draining: bool,
    /// Revoked: its certificate is refused.
    pub revoked: bool,
    /// An agent connection is open now.
    pub connected: bool,
    /// Agent's address as seen by the coordinator.
    pub address: Option<String>,
    /// Agent version.
    pub agent_version: String,
    /// Host name.
    pub hostname: String,
    /// OS.
    pub os: String,
    /// Kernel.
    pub kernel: String,
    /// CPU model.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpu_cores: u32,
    /// Host memory.
    pub memory_bytes: u64,
    /// Host memory available at the last report.
    pub memory_available_bytes: u64,
    /// Runtime kinds the node can launch.
    pub runtimes: Vec<String>,
    /// Last report (RFC 3339), or null if never.
    pub last_seen: Option<String>,
    /// When the node joined (RFC 3339).
    pub joined_at: String,
    /// Accelerators.
    pub accelerators: Vec<AcceleratorView>,
    /// Replicas the node reports running (or starting, stopping, failing).
    #[serde(default)]
    pub replicas: Vec<ReplicaView>,
}

/// An accelerator as the API shows it. A nullable field is `null` when the device does not
/// report that fact (a TPU's utilization, an AMD GPU's XID count, a lost GPU's usage), never
/// a made-up zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceleratorView {
    /// Index on the node.
    pub index: u32,
    /// `nvidia`, `amd`, `google`, `other`.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// UUID or serial.
    pub uuid: String,
    /// Total memory.
    pub memory_bytes: u64,
    /// Memory in use at the last report; null when not reported.
    #[serde(default)]
    pub memory_used_bytes: Option<u64>,
    /// Utilization at the last report, 0-100; null when not reported.
    #[serde(default)]
    pub utilization_percent: Option<u8>,
    /// Hardware class.
    pub hardware_class: String,
    /// `healthy`, `degraded`, `unhealthy`.
    pub health: String,
    /// Why (empty when healthy).
    pub health_reason: String,
    /// Temperature at the last report, when the device reports one.
    #[serde(default)]
    pub temperature_celsius: Option<u16>,
    /// Power draw at the last report, when the device reports one.
    #[serde(default)]
    pub power_watts: Option<u32>,
    /// Simulated device.
    pub simulated: bool,
    // Everything below was added after the first release. `#[serde(default)]` on each lets
    // a newer CLI read the answer of an older coordinator.
    /// PCI bus id, `DDDD:BB:DD.F` (lower case).
    #[serde(default)]
    pub pci_bus_id: Option<String>,
    /// NUMA node the device is attached to.
    #[serde(default)]
    pub numa_node: Option<u32>,
    /// Kernel driver version.
    #[serde(default)]
    pub driver_version: Option<String>,
    /// CUDA driver API version (NVIDIA) or ROCm version (AMD).
    #[serde(default)]
    pub compute_api_version: Option<String>,
    /// Compute capability (`9.0`), gfx target (`gfx942`) or TPU generation.
    #[serde(default)]
    pub architecture: Option<String>,
    /// Maximum SM / graphics clock.
    #[serde(default)]
    pub max_sm_clock_mhz: Option<u32>,
    /// Maximum memory clock.
    #[serde(default)]
    pub max_memory_clock_mhz: Option<u32>,
    /// Whether ECC is enabled, when the device can tell.
    #[serde(default)]
    pub ecc_enabled: Option<bool>,
    /// MIG mode and instances; null when the device does not report MIG.
    #[serde(default)]
    pub mig: Option<MigView>,
    /// How this device reaches each other device on the node.
    #[serde(default)]
    pub links: Vec<PeerLinkView>,
    /// Power limit at the last report, when the device reports one.
    #[serde(default)]
    pub power_limit_watts: Option<u32>,
    /// SM / graphics clock at the last report.
    #[serde(default)]
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock at the last report.
    #[serde(default)]
    pub memory_clock_mhz: Option<u32>,
    /// Active clock throttle reasons (`hw_slowdown`, `sw_power_cap`, ...); `[]` when none is
    /// active, null when the device does not report throttle reasons.
    #[serde(default)]
    pub throttle_reasons: Option<Vec<String>>,
    /// ECC / RAS error counts; null when the device has no ECC or does not say.
    #[serde(default)]
    pub ecc: Option<EccCountsView>,
    /// XID errors seen since the agent started; null for devices without XIDs (all but
    /// NVIDIA GPUs).
    #[serde(default)]
    pub xid_count: Option<u64>,
    /// The most recent XID.
    #[serde(default)]
    pub last_xid: Option<u64>,
}

/// MIG (multi-instance GPU) state of a device. Also the form the registry persists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigView {
    /// MIG mode in effect now.
    pub enabled: bool,
    /// MIG mode after the next GPU reset (differs from `enabled` until then).
    pub pending_enabled: bool,
    /// MIG instances.
    pub instances: Vec<MigInstanceView>,
}

/// One MIG instance. Also the form the registry persists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigInstanceView {
    /// MIG device UUID (`MIG-...`).
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

/// The path from a device to a peer device on the same node. Also the form the registry
/// persists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerLinkView {
    /// The peer's device index on the node.
    pub peer: u32,
    /// `nvlink`, `xgmi`, `pcie-switch`, `pcie-host-bridge`, `numa-node` or `system`
    /// (best first).
    pub kind: String,
    /// Active NVLink / xGMI links to the peer (0 for PCIe paths).
    pub lanes: u32,
}

/// ECC and memory-repair counters. Also the form the registry keeps. The volatile counts are
/// always present; every other field is null when the device does not report it (AMD GPUs
/// report only the volatile counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EccCountsView {
    /// Corrected errors since the last driver load (NVIDIA) or since boot (AMD).
    pub volatile_corrected: u64,
    /// Uncorrected errors since the last driver load (NVIDIA) or since boot (AMD).
    pub volatile_uncorrected: u64,
    /// Corrected errors over the device's life.
    pub aggregate_corrected: Option<u64>,
    /// Uncorrected errors over the device's life.
    pub aggregate_uncorrected: Option<u64>,
    /// Pages retired (pre-Ampere NVIDIA).
    pub retired_pages: Option<u64>,
    /// A page retirement waits for a reset.
    pub retired_pages_pending: Option<bool>,
    /// Rows remapped (Ampere and later).
    pub remapped_rows: Option<u64>,
    /// A row remapping waits for a reset.
    pub remap_pending: Option<bool>,
    /// A row remapping failed: the device needs service.
    pub remap_failed: Option<bool>,
}

/// A replica as the API shows it (`GET /api/v1/replicas`, and in a node's view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// Replica name.
    pub name: String,
    /// Owning deployment.
    pub deployment: String,
    /// Owning tenant.
    pub tenant: String,
    /// Node it runs on.
    pub node: String,
    /// `Pending`, `Starting`, `Ready`, `Unhealthy`, `CrashLoop`, `Stopping`, `Failed`, or
    /// `Unknown` while its node is NotReady (the reason then gives the last reported phase).
    pub phase: String,
    /// Why it is in that phase.
    pub reason: String,
    /// Runtime kind.
    pub runtime: String,
    /// Version the runtime reports; null until known.
    #[serde(default)]
    pub runtime_version: Option<String>,
    /// Hardware class of its devices (`cpu` without any; classes joined by `+` if mixed).
    pub hardware_class: String,
    /// Device UUIDs.
    pub gpus: Vec<String>,
    /// OpenAI-compatible base URL; null until serving.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Main process id while it runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Restarts on its node.
    #[serde(default)]
    pub restarts: u32,
    /// How the last run ended; null if it has not.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// Last output lines of the last failed run.
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// Milliseconds from start to ready of the current run.
    #[serde(default)]
    pub ready_after_ms: Option<u64>,
    /// Normalised runtime metrics from the last scrape; null if none.
    #[serde(default)]
    pub metrics: Option<RuntimeMetricsView>,
}

/// `describe replica`: the replica plus its recent events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaDetail {
    /// The replica.
    #[serde(flatten)]
    pub replica: ReplicaView,
    /// Recent events, oldest first.
    #[serde(default)]
    pub events: Vec<EventView>,
}

/// Normalised runtime metrics (each null when the runtime does not export it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeMetricsView {
    /// Requests being processed.
    pub requests_running: Option<f64>,
    /// Requests queued.
    pub requests_waiting: Option<f64>,
    /// KV-cache use, 0 to 1.
    pub kv_cache_usage_ratio: Option<f64>,
    /// Prompt tokens since the runtime started.
    pub prompt_tokens_total: Option<f64>,
    /// Generated tokens since the runtime started.
    pub generation_tokens_total: Option<f64>,
    /// Prefix-cache hit ratio, 0 to 1.
    pub prefix_cache_hit_ratio: Option<f64>,
}

/// `describe node`: the node plus its recent events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeDetail {
    /// The node.
    #[serde(flatten)]
    pub node: NodeView,
    /// Recent events, oldest first.
    pub events: Vec<EventView>,
}

/// An event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// RFC 3339 time.
    pub time: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short reason.
    pub reason: String,
    /// Message.
    pub message: String,
}

/// `POST /api/v1/tokens` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Time to live, for example `1h` (default `1h`, at most `720h`).
    #[serde(default)]
    pub ttl: Option<String>,
    /// Enrollments allowed (default 1).
    #[serde(default)]
    pub uses: Option<u32>,
}

/// A created join token (`pyxis token create -o json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// `ID.SECRET`, shown once.
    pub token: String,
    /// CA hash to pin, `sha256:HEX`.
    pub ca_hash: String,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// Enrollments allowed.
    pub uses: u32,
    /// The agent-link address agents should dial, as best the coordinator can tell
    /// (its QUIC port on the host name the API was reached by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
}

/// A join token as `pyxis token list` shows it (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Public token id (the part before the dot).
    pub id: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// Enrollments left.
    pub uses_left: i64,
    /// Past its expiry.
    pub expired: bool,
}

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Error detail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`unauthorized`, `not_found`, `bad_request`, ...).
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}
