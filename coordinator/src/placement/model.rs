//! The placement engine's own input types.
//!
//! These are neither the wire types (`pyxis_protocol`) nor the manifest types: the caller
//! maps the registry and the applied manifests into them, so placement can change without
//! touching either contract.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything one placement pass looks at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementInput {
    /// The fleet. Order does not matter: nodes are considered by name.
    pub nodes: Vec<Node>,
    /// Hardware classes by name. A device whose class is missing here counts as
    /// [`HardwareClass::default`] (relative capacity 1.0).
    pub classes: BTreeMap<String, HardwareClass>,
    /// Every tenant a deployment refers to.
    pub tenants: Vec<Tenant>,
    /// Desired deployments.
    pub deployments: Vec<Deployment>,
    /// Replicas placed before this pass (the previous output, or what agents reported and
    /// the reconciler adopted). Healthy, still-eligible replicas are kept where they are.
    pub current: Vec<Replica>,
    /// Creation sequence for the next new replica. Persist
    /// [`Placement::next_sequence`](crate::placement::Placement::next_sequence) and pass it
    /// back, so that names are never reused.
    pub next_sequence: u64,
}

/// One node as placement sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Node name (unique).
    pub name: String,
    /// Whether the node takes new replicas and keeps the ones it has.
    pub state: NodeState,
    /// Runtime kinds the node can launch (`vllm`, `llama-cpp`, ...).
    pub runtimes: Vec<String>,
    /// Accelerators on the node.
    pub devices: Vec<Device>,
}

/// Schedulability of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Takes new replicas.
    Ready,
    /// Takes no new replicas; the ones it runs stay.
    Cordoned,
    /// Takes no new replicas; the ones it runs are replaced elsewhere.
    Draining,
    /// Lost (no report within the liveness deadline); its replicas are replaced elsewhere.
    NotReady,
}

impl NodeState {
    /// Lower-case name used in explanations.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Cordoned => "cordoned",
            NodeState::Draining => "draining",
            NodeState::NotReady => "not-ready",
        }
    }
}

/// One accelerator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Device UUID (unique across the fleet).
    pub uuid: String,
    /// Index on the node; what [`DeviceLink::peer`] refers to.
    pub index: u32,
    /// Hardware class name.
    pub hardware_class: String,
    /// Total device memory.
    pub memory_bytes: u64,
    /// Memory in use by anything but Pyxis replicas (other processes, a stopped replica
    /// still exiting); `None`: unknown, counted as none. Not the device's total use: a
    /// replica's own memory is freed with it, so a device it holds can be reclaimed for a
    /// bigger model. The caller derives it from the agent's per-process report (or, for a
    /// device no replica holds, takes the device's whole use).
    pub other_memory_used_bytes: Option<u64>,
    /// Health tier.
    pub health: DeviceHealth,
    /// Paths to the other devices of the node.
    pub links: Vec<DeviceLink>,
    /// `Some` when MIG mode is on: the parent is then never placed whole and each instance
    /// is a unit of its own (with the parent's health). `None` when MIG is off.
    pub mig: Option<Vec<MigInstance>>,
}

/// Device health tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceHealth {
    /// Fully usable.
    Healthy,
    /// Usable, but only when no healthy device fits.
    Degraded,
    /// Never used; replicas on it are replaced.
    Unhealthy,
}

/// How a device reaches a peer device on the same node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLink {
    /// The peer's [`Device::index`].
    pub peer: u32,
    /// A direct GPU-to-GPU fabric (NVLink, xGMI) rather than PCIe or the host.
    pub fabric: bool,
}

/// One MIG instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigInstance {
    /// MIG device UUID (unique across the fleet).
    pub uuid: String,
    /// Hardware class of the instance (`H100-80GB-MIG-1g.10gb`).
    pub hardware_class: String,
    /// Memory of the instance.
    pub memory_bytes: u64,
}

/// A hardware class's placement-relevant facts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HardwareClass {
    /// Normalised capacity of one device of this class (H100-equivalents, say).
    pub relative_capacity: f64,
    /// Price per device-hour; only breaks ties between otherwise equal nodes.
    pub price_per_gpu_hour: f64,
}

impl Default for HardwareClass {
    fn default() -> Self {
        HardwareClass {
            relative_capacity: 1.0,
            price_per_gpu_hour: 0.0,
        }
    }
}

/// A tenant's share of the fleet, in normalised GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    /// Tenant name (unique).
    pub name: String,
    /// Fair-share weight (> 0).
    pub weight: f64,
    /// Normalised GPUs the tenant gets whenever it has the demand, reclaimed from
    /// borrowers if need be.
    pub guarantee: f64,
    /// Borrowing ceiling in normalised GPUs (>= guarantee); `None`: no ceiling.
    pub limit: Option<f64>,
    /// Whether the limit is enforced or only reported.
    pub quota_mode: QuotaMode,
}

/// Whether a tenant's limit is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuotaMode {
    /// Nothing is placed beyond the limit, and replicas beyond it are stopped.
    Enforce,
    /// The limit is not enforced; exceeding it is reported.
    DryRun,
}

impl QuotaMode {
    /// Name used in manifests and explanations.
    pub fn as_str(&self) -> &'static str {
        match self {
            QuotaMode::Enforce => "enforce",
            QuotaMode::DryRun => "dry-run",
        }
    }
}

/// A model deployment's placement-relevant facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Owning tenant.
    pub tenant: String,
    /// Name (unique within the tenant).
    pub name: String,
    /// Creation order (smaller is older); older deployments go first among equals.
    pub created: u64,
    /// Devices per replica; 0 runs on CPU.
    pub gpus_per_replica: u32,
    /// Free memory each device of a replica must have.
    pub gpu_memory_bytes: u64,
    /// Hardware classes allowed; empty: any.
    pub allowed_classes: Vec<String>,
    /// Hardware classes preferred, best first.
    pub preferred_classes: Vec<String>,
    /// Runtime kinds in order of preference; a node runs the first it supports.
    pub runtimes: Vec<String>,
    /// Replicas placed before anyone's elastic ones.
    pub min_replicas: u32,
    /// Replicas wanted when the fleet and fair share allow; `max - min` are elastic.
    pub max_replicas: u32,
    /// For a multi-device replica: only fabric-linked device sets (NVLink, xGMI) will do.
    /// When false, a linked set is preferred and PCIe is the fallback.
    pub require_linked_gpus: bool,
}

/// A replica on a node: the engine's input (current) and output (new placement).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Replica {
    /// Unique name.
    pub name: String,
    /// Owning tenant.
    pub tenant: String,
    /// Owning deployment (within the tenant).
    pub deployment: String,
    /// Node it runs on.
    pub node: String,
    /// Device or MIG instance UUIDs; empty for a CPU replica.
    pub devices: Vec<String>,
    /// Runtime kind it runs.
    pub runtime: String,
    /// Creation sequence (larger is newer).
    pub created: u64,
}
