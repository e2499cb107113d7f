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
    /// For `invalid_manifest`: every problem, with its document, object and field path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ProblemView>,
}

/// One problem in an applied manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemView {
    /// The source the document came from (a file name given in [`ApplyRequest`]); absent
    /// for a plain-text request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Document number within its source, from 1.
    pub document: usize,
    /// Kind, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `metadata.namespace`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.name`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Dotted field path (`spec.replicas.min`); empty for the document as a whole.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// `POST /api/v1/apply` or `POST /api/v1/delete` with `Content-Type: application/json`.
/// (Any other content type: the body is the manifest text itself, one source.) Every
/// source is parsed and checked; the request is applied as a whole or not at all.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// Manifest texts, each one or more YAML (or JSON) documents.
    pub sources: Vec<ManifestSource>,
    /// Check everything and report what would happen, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// One manifest text and where it came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSource {
    /// A name for error messages (the file path; `-` for stdin).
    pub name: String,
    /// The text.
    pub text: String,
}

/// `POST /api/v1/apply` and `POST /api/v1/delete`: what happened to each object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// One per object of the request, in request order.
    pub items: Vec<AppliedObject>,
    /// Things that are accepted but will not work yet (a class no node has, ...).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One object of an apply or delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedObject {
    /// `Tenant`, `HardwareClass` or `ModelDeployment`.
    pub kind: String,
    /// The tenant, for namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// `created`, `configured`, `unchanged`, `deleted` or `not-found`.
    pub action: String,
    /// The object's generation after the request (bumped on every spec change); 0 once deleted.
    pub generation: u64,
}

/// A condition, Kubernetes style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// Condition type (`Available`, `Placed`, `QuotaEnforced`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Short CamelCase reason.
    pub reason: String,
    /// Human message.
    pub message: String,
    /// RFC 3339 time the status last changed.
    #[serde(rename = "lastTransitionTime")]
    pub last_transition_time: String,
}

/// `metadata` of a stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMetaView {
    /// Name.
    pub name: String,
    /// Tenant, for namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Bumped on every spec change, from 1.
    pub generation: u64,
    /// RFC 3339 creation time.
    #[serde(rename = "creationTimestamp")]
    pub creation_timestamp: String,
}

/// A stored manifest with its status (`get tenants|hardwareclasses|deployments -o json`
/// items). `spec` is the applied spec, in manifest spelling (camelCase), with defaults filled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectView<S> {
    /// `pyxis.dev/v1alpha1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMetaView,
    /// The applied spec.
    pub spec: serde_json::Value,
    /// What the coordinator observes.
    pub status: S,
}

/// `GET /api/v1/{tenants,hardwareclasses,deployments}/{name}`: the object and its events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectDetail<S> {
    /// The object.
    #[serde(flatten)]
    pub object: ObjectView<S>,
    /// Recent events, oldest first.
    pub events: Vec<EventView>,
}

/// A tenant as the API shows it.
pub type TenantView = ObjectView<TenantStatus>;
/// A hardware class as the API shows it.
pub type HardwareClassView = ObjectView<HardwareClassStatus>;
/// A model deployment as the API shows it.
pub type DeploymentView = ObjectView<DeploymentStatus>;

/// `Tenant` status. GPU amounts are normalised GPUs (see `HardwareClass.relativeCapacity`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// `enforce` or `dry-run`, stated explicitly.
    pub quota_mode: String,
    /// Whether the limit is enforced (false in dry-run).
    pub quota_enforced: bool,
    /// Guarantee, normalised (per-class guarantees converted with relative capacities).
    pub guarantee_gpus: f64,
    /// Borrowing limit, normalised; null: none.
    pub limit_gpus: Option<f64>,
    /// Normalised GPUs held by its placed replicas.
    pub allocated_gpus: f64,
    /// Devices (and MIG instances) held.
    pub allocated_devices: u32,
    /// Weighted max-min fair share of the fleet given everyone's demand.
    pub fair_share_gpus: f64,
    /// Placed plus pending, at the smallest size pending replicas could take.
    pub demand_gpus: f64,
    /// The fleet's normalised capacity.
    pub capacity_gpus: f64,
    /// Holds more than its limit (dry-run only).
    pub over_limit: bool,
    /// Its deployments.
    pub deployments: u32,
    /// Replicas placed.
    pub replicas_placed: u32,
    /// Replicas wanted but not placed.
    pub replicas_pending: u32,
    /// `QuotaEnforced`, `GuaranteeMet`, `WithinLimit`.
    pub conditions: Vec<Condition>,
}

/// `HardwareClass` status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareClassStatus {
    /// Devices (and MIG instances) in the fleet of this class, by the match rules.
    pub devices: u32,
    /// Nodes with at least one.
    pub nodes: u32,
    /// Of those devices, held by replicas.
    pub allocated: u32,
    /// `Matched`: some device has this class.
    pub conditions: Vec<Condition>,
}

/// `ModelDeployment` status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// The generation this status was computed for.
    pub observed_generation: u64,
    /// Replica counts.
    pub replicas: ReplicaCounts,
    /// Every placed replica.
    pub placements: Vec<PlacedReplica>,
    /// `Available` (ready >= min), `Placed` (nothing pending), `Progressing`.
    pub conditions: Vec<Condition>,
}

/// Replica counts of a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaCounts {
    /// `spec.replicas.min`.
    pub min: u32,
    /// `spec.replicas.max`.
    pub max: u32,
    /// Placed on a ready or cordoned node.
    pub placed: u32,
    /// Reported `Ready` by their agents.
    pub ready: u32,
    /// Wanted but not placed (up to `max`).
    pub pending: u32,
    /// On a draining or lost node, kept until replaced.
    pub displaced: u32,
}

/// A replica placement decided by the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacedReplica {
    /// Replica name (`{deployment}-{sequence}`).
    pub name: String,
    /// Node.
    pub node: String,
    /// Runtime kind chosen (the first of the deployment's list the node supports).
    pub runtime: String,
    /// Hardware class of its devices (`cpu` for none).
    pub hardware_class: String,
    /// Device UUIDs.
    pub gpus: Vec<String>,
    /// Phase its agent last reported; `Pending` until it reports one.
    pub phase: String,
}

/// `pyxis explain deployment NAME`: the last placement decision for a deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainView {
    /// Tenant.
    pub tenant: String,
    /// Deployment.
    pub deployment: String,
    /// RFC 3339 time of the placement pass.
    pub evaluated_at: String,
    /// One line: placed, pending, and the main reason.
    pub summary: String,
    /// Replica counts.
    pub replicas: ReplicaCounts,
    /// Where its replicas are.
    pub placements: Vec<PlacedReplica>,
    /// The tenant's share against its guarantee.
    pub share: TenantShareView,
    /// When replicas are pending: every node, by name, and why it was not chosen. Empty
    /// when nothing is pending.
    pub nodes: Vec<NodeVerdictView>,
}

/// A tenant's share (normalised GPUs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantShareView {
    /// Tenant.
    pub tenant: String,
    /// Weight.
    pub weight: f64,
    /// Held now.
    pub usage: f64,
    /// Wanted.
    pub demand: f64,
    /// Guarantee.
    pub guarantee: f64,
    /// Limit; null: none.
    pub limit: Option<f64>,
    /// Fair share.
    pub fair_share: f64,
    /// Fleet capacity.
    pub capacity: f64,
    /// `enforce` or `dry-run`.
    pub quota_mode: String,
    /// Over its limit (dry-run).
    pub over_limit: bool,
}

/// Why one node was not chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeVerdictView {
    /// Node.
    pub node: String,
    /// Every reason that applies.
    pub reasons: Vec<ReasonView>,
}

/// One reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReasonView {
    /// Stable code: `node-unschedulable`, `runtime-unsupported`, `class-not-allowed`,
    /// `insufficient-memory`, `unhealthy`, `mig-instances`, `insufficient-gpus`,
    /// `mixed-classes`, `no-linked-gpus`, `quota`, `fair-share`, `deferred`.
    pub code: String,
    /// In words.
    pub message: String,
}

/// `pyxis usage`: GPU time and cost per tenant and hardware class.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageView {
    /// RFC 3339 start of the window (rounded down to the hour usage is kept in).
    pub since: String,
    /// RFC 3339 end of the window (now).
    pub until: String,
    /// One row per tenant and class with usage in the window, sorted.
    pub items: Vec<UsageRow>,
    /// One row per tenant: gateway calls and tokens (from the audit log) joined with GPU
    /// time and cost, sorted by tenant.
    #[serde(default)]
    pub tenants: Vec<TenantUsageRow>,
}

/// A tenant's calls, tokens, GPU time and cost over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantUsageRow {
    /// Tenant.
    pub tenant: String,
    /// Gateway calls.
    pub calls: u64,
    /// Calls answered with an error.
    pub errors: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// GPU-hours of its replicas (all classes).
    pub gpu_hours: f64,
    /// Cost of those GPU-hours.
    pub cost: f64,
    /// `cost` per million tokens (prompt plus completion); null with no tokens.
    pub cost_per_million_tokens: Option<f64>,
}

/// `GET /api/v1/audit`: records, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditList {
    /// Records.
    pub items: Vec<crate::audit::StoredRecord>,
}

/// `POST /api/v1/audit/verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditVerifyView {
    /// No problem found.
    pub ok: bool,
    /// Records checked.
    pub records: u64,
    /// Last seq present.
    pub last_seq: u64,
    /// The anchor (last seq and hash) the coordinator stored apart from the audit file, if any.
    pub anchor_seq: Option<u64>,
    /// Problems found, in order.
    pub problems: Vec<AuditProblemView>,
}

/// One problem `audit verify` found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditProblemView {
    /// Where.
    pub seq: u64,
    /// `altered`, `removed` or `reordered`.
    pub kind: String,
    /// Explanation.
    pub detail: String,
}

/// GPU time of one tenant on one hardware class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// Tenant.
    pub tenant: String,
    /// Hardware class.
    pub hardware_class: String,
    /// Device-seconds held by running replicas (a replica on 2 GPUs for 10 s: 20).
    pub gpu_seconds: f64,
    /// The same in hours.
    pub gpu_hours: f64,
    /// The class's `pricePerGpuHour` (0 when no HardwareClass prices it).
    pub price_per_gpu_hour: f64,
    /// `gpu_hours * price_per_gpu_hour`.
    pub cost: f64,
}

/// `POST /api/v1/apikeys` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRequest {
    /// The tenant the key's calls belong to (must exist).
    pub tenant: String,
    /// A label for people; default `default`.
    #[serde(default)]
    pub name: Option<String>,
}

/// A created API key (`pyxis apikey create -o json`): the key is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    /// `pyxis-<id>-<secret>`, for `Authorization: Bearer` on the gateway.
    pub key: String,
    /// The key as listed.
    #[serde(flatten)]
    pub info: ApiKeyInfo,
}

/// An API key as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    /// Public id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Label.
    pub name: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 revocation time; null while the key works.
    pub revoked_at: Option<String>,
}
