//! The node registry: the in-memory truth about every node, with durable parts mirrored
//! into the store by the caller.
//!
//! Sans-IO: every method takes `now` (an `Instant` for liveness, ms since the epoch for
//! display and persistence); the registry never reads a clock, a socket or a file. It
//! holds each node's live connection handle only so that revocation and replacement can
//! close it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use pyxis_protocol::{DesiredState, ReplicaSpec, ReplicaStatus};

use crate::{
    api_types::{AcceleratorView, EccCountsView, MigView, NodeView, PeerLinkView, ReplicaView, RuntimeMetricsView},
    store::NodeRow,
    time::rfc3339_ms,
};

/// Static node facts (internal; converted from the wire at the link edge).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeFacts {
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
    /// Agent version.
    pub agent_version: String,
    /// Runtime kinds.
    pub runtimes: Vec<String>,
    /// Devices.
    pub devices: Vec<DeviceFacts>,
}

/// Static device facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// Index.
    pub index: u32,
    /// Vendor name.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// UUID.
    pub uuid: String,
    /// Memory.
    pub memory_bytes: u64,
    /// Hardware class.
    pub hardware_class: String,
    /// Simulated.
    pub simulated: bool,
    /// PCI address, NUMA node, versions, MIG, interconnect. Facts stored before these
    /// existed load with everything unknown.
    #[serde(default)]
    pub details: DeviceDetails,
}

/// Static device facts beyond identity; each is empty when the agent could not tell.
///
/// The nested MIG and link shapes are the API's view types: both they and this stored
/// form only ever gain fields, so one shape serves both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceDetails {
    /// PCI bus id.
    pub pci_bus_id: Option<String>,
    /// NUMA node.
    pub numa_node: Option<u32>,
    /// Kernel driver version.
    pub driver_version: Option<String>,
    /// CUDA or ROCm version.
    pub compute_api_version: Option<String>,
    /// Compute capability, gfx target or TPU generation.
    pub architecture: Option<String>,
    /// Maximum SM clock.
    pub max_sm_clock_mhz: Option<u32>,
    /// Maximum memory clock.
    pub max_memory_clock_mhz: Option<u32>,
    /// ECC mode.
    pub ecc_enabled: Option<bool>,
    /// MIG mode and instances.
    pub mig: Option<MigView>,
    /// Paths to peer devices, by index.
    pub links: Vec<PeerLinkView>,
}

/// Fast-changing device counters from the last report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceTelemetry {
    /// SM clock.
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock.
    pub memory_clock_mhz: Option<u32>,
    /// Active throttle reasons; `None` when the device does not report them.
    pub throttle_reasons: Option<Vec<String>>,
    /// ECC counters.
    pub ecc: Option<EccCountsView>,
    /// XIDs since the agent started; `None` for devices without XIDs.
    pub xid_count: Option<u64>,
    /// Most recent XID.
    pub last_xid: Option<u64>,
}

/// Live device state from the last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// Device UUID.
    pub uuid: String,
    /// Memory in use, when reported.
    pub memory_used_bytes: Option<u64>,
    /// Utilization 0-100, when reported.
    pub utilization_percent: Option<u8>,
    /// `healthy` / `degraded` / `unhealthy`.
    pub health: &'static str,
    /// Reason.
    pub health_reason: String,
    /// Temperature, if reported.
    pub temperature_celsius: Option<u16>,
    /// Power draw, if reported.
    pub power_watts: Option<u32>,
    /// Power limit, if reported.
    pub power_limit_watts: Option<u32>,
    /// Clocks, throttling, ECC, XIDs.
    pub telemetry: DeviceTelemetry,
}

/// A device whose health tier or reason changed between two reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    /// Device index on the node, when the facts know the UUID.
    pub index: Option<u32>,
    /// Device UUID.
    pub uuid: String,
    /// Tier before.
    pub from: &'static str,
    /// Tier now.
    pub to: &'static str,
    /// Reason now (empty when healthy).
    pub reason: String,
}

impl HealthChange {
    /// Event reason (`DeviceHealthy`, `DeviceDegraded`, `DeviceUnhealthy`), type
    /// (`Normal` or `Warning`) and message.
    pub fn event(&self) -> (&'static str, &'static str, String) {
        let device = match self.index {
            Some(index) => format!("device {index} ({})", self.uuid),
            None => format!("device {}", self.uuid),
        };
        match self.to {
            "healthy" => ("DeviceHealthy", "Normal", format!("{device}: {} -> healthy", self.from)),
            "degraded" => (
                "DeviceDegraded",
                "Warning",
                format!("{device}: {} -> degraded: {}", self.from, self.reason),
            ),
            _ => (
                "DeviceUnhealthy",
                "Warning",
                format!("{device}: {} -> unhealthy: {}", self.from, self.reason),
            ),
        }
    }
}

/// Capacity from a report (internal form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Host memory available.
    pub memory_available_bytes: u64,
    /// Device states, in the order of the node's devices (looked up by UUID).
    pub devices: Vec<DeviceState>,
}

/// One node as the reconciler sees it (a copy: the registry lock is not held while it
/// places).
#[derive(Debug, Clone)]
pub struct FleetNode {
    /// Node name.
    pub name: String,
    /// Status now.
    pub status: NodeStatus,
    /// Whether the node has registered at least once (facts known).
    pub registered: bool,
    /// Whether the node has registered and reported what it runs since this coordinator
    /// started (until then its status is `NotReady` for want of news, not because it is
    /// known to be down, and its replicas are not known).
    pub heard_since_start: bool,
    /// Runtime kinds it reports.
    pub runtimes: Vec<String>,
    /// Its devices with their live state.
    pub devices: Vec<FleetDevice>,
    /// Replicas as its agent last reported them.
    pub reported: Vec<ReplicaStatus>,
    /// What it was last told to run.
    pub desired: DesiredState,
}

/// One device as the reconciler sees it.
#[derive(Debug, Clone)]
pub struct FleetDevice {
    /// Static facts.
    pub facts: DeviceFacts,
    /// `healthy`, `degraded` or `unhealthy` (`healthy` before any report).
    pub health: &'static str,
    /// Memory in use, when reported.
    pub memory_used_bytes: Option<u64>,
}

/// Node status as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStatus {
    /// Reporting and schedulable.
    Ready,
    /// Not reporting within the liveness timeout, or revoked.
    NotReady,
    /// Reporting, cordoned by an operator.
    Cordoned,
    /// Reporting, being drained.
    Draining,
}

impl NodeStatus {
    /// The name used in JSON and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeStatus::Ready => "Ready",
            NodeStatus::NotReady => "NotReady",
            NodeStatus::Cordoned => "Cordoned",
            NodeStatus::Draining => "Draining",
        }
    }

    /// Every status, for metrics.
    pub const ALL: [NodeStatus; 4] = [
        NodeStatus::Ready,
        NodeStatus::NotReady,
        NodeStatus::Cordoned,
        NodeStatus::Draining,
    ];
}

/// A live connection of a node.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    /// Unique per connection.
    pub id: u64,
    /// Peer address.
    pub remote: SocketAddr,
    /// The QUIC connection (to close on revoke or replacement).
    pub connection: quinn::Connection,
    /// The connection's task sends every new desired state put here to the agent.
    pub desired: tokio::sync::watch::Sender<DesiredState>,
}

#[derive(Debug, Clone)]
struct Node {
    fingerprint: String,
    facts: Option<NodeFacts>,
    capacity: Option<Capacity>,
    cordoned: bool,
    draining: bool,
    revoked: bool,
    joined_at_ms: i64,
    last_report: Option<Instant>,
    last_seen_ms: Option<i64>,
    last_seen_dirty: bool,
    connection: Option<ConnectionHandle>,
    status: NodeStatus,
    /// Replicas this node should run (generation 0: never set).
    desired: DesiredState,
    /// Replicas as the agent last reported them.
    replicas: Vec<ReplicaStatus>,
    /// Whether the current connection has reported its replicas yet (an agent does so
    /// right after registering).
    replicas_reported: bool,
}

/// What a registering agent brings: its facts, its first capacity, its connection.
#[derive(Debug)]
pub struct NewSession {
    /// Node facts.
    pub facts: NodeFacts,
    /// Capacity at registration.
    pub capacity: Capacity,
    /// The connection it registered on.
    pub connection: ConnectionHandle,
    /// Fingerprint of the certificate the connection presented.
    pub fingerprint: String,
}

/// A status change found by [`Registry::sweep`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Node.
    pub node: String,
    /// Before.
    pub from: NodeStatus,
    /// After.
    pub to: NodeStatus,
    /// Why.
    pub reason: String,
}

/// The outcome of a sweep: status changes, and connections to close because their node
/// went silent.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Status changes, by node name.
    pub transitions: Vec<Transition>,
    /// Connections of nodes that became `NotReady`.
    pub close: Vec<quinn::Connection>,
}

/// Why an operation on the registry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No such node.
    #[error("node {0:?} not found (see `pyxis get nodes`)")]
    NotFound(String),
    /// The node is revoked.
    #[error("node {0:?} is revoked; its certificate is refused")]
    Revoked(String),
    /// Another agent with this identity is connected and reporting.
    #[error("node {node:?} is already connected from {from} and reporting; is a second agent running with the same data dir?")]
    AlreadyConnected {
        /// Node.
        node: String,
        /// Where the current connection comes from.
        from: SocketAddr,
    },
    /// The action makes no sense in the node's state.
    #[error("node {node:?} is revoked; {action} is not possible (delete the node to let it join again)")]
    RevokedNode {
        /// Node.
        node: String,
        /// Action attempted.
        action: &'static str,
    },
    /// The name belongs to an enrolled node that is not connected: a join under it would
    /// take the node over.
    #[error("node name {0:?} is already registered to another certificate (that node is offline, not deleted); if this host replaces it, run `pyxis delete node {0}` and join again")]
    NameTaken(String),
    /// The certificate does not belong to any known node.
    #[error(
        "the client certificate belongs to no registered node (was the node removed?); join again with a new token"
    )]
    UnknownCertificate,
}

/// Operator actions on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    /// Stop placing new replicas.
    Cordon,
    /// Allow placement again (also ends a drain).
    Uncordon,
    /// Cordon and move replicas away.
    Drain,
    /// Refuse the node's certificate from now on and drop its connection.
    Revoke,
}

impl NodeAction {
    /// Parses the action name used in the API path.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cordon" => Some(Self::Cordon),
            "uncordon" => Some(Self::Uncordon),
            "drain" => Some(Self::Drain),
            "revoke" => Some(Self::Revoke),
            _ => None,
        }
    }
}

/// The registry.
#[derive(Debug, Default)]
pub struct Registry {
    nodes: HashMap<String, Node>,
    by_fingerprint: HashMap<String, String>,
}

/// The address of the node's current connection if it is open and has reported within
/// `window`: a live agent holds the node.
fn busy(node: &Node, now: Instant, window: Duration) -> Option<SocketAddr> {
    let current = node.connection.as_ref()?;
    let live = current.connection.close_reason().is_none();
    let recent = node
        .last_report
        .is_some_and(|at| now.saturating_duration_since(at) < window);
    (live && recent).then_some(current.remote)
}

/// The status alone (cheap: used by the sweeper on every node several times a second).
fn status_of(node: &Node, now: Instant, timeout: Duration) -> NodeStatus {
    let fresh = node
        .last_report
        .is_some_and(|at| now.saturating_duration_since(at) <= timeout);
    if node.revoked || !fresh {
        NodeStatus::NotReady
    } else if node.draining {
        NodeStatus::Draining
    } else if node.cordoned {
        NodeStatus::Cordoned
    } else {
        NodeStatus::Ready
    }
}

/// The status with its reason in words.
fn derive_status(node: &Node, now: Instant, timeout: Duration) -> (NodeStatus, String) {
    let status = status_of(node, now, timeout);
    let reason = match status {
        NodeStatus::NotReady if node.revoked => "revoked: the node's certificate is refused".to_string(),
        NodeStatus::NotReady => match node.last_report {
            None if node.facts.is_some() => "no report since the coordinator started".to_string(),
            None => "joined, never registered".to_string(),
            Some(at) => format!(
                "no capacity report for {:.1}s (timeout {:?})",
                now.saturating_duration_since(at).as_secs_f64(),
                timeout
            ),
        },
        NodeStatus::Draining => "draining: no new replicas; existing ones are moved away".to_string(),
        NodeStatus::Cordoned => "cordoned by an operator: no new replicas".to_string(),
        NodeStatus::Ready => "reporting".to_string(),
    };
    (status, reason)
}

impl Registry {
    /// Builds the registry from stored rows. Nodes start `NotReady` until they report.
    pub fn load(rows: Vec<NodeRow>) -> Result<Self, serde_json::Error> {
        let mut registry = Registry::default();
        for row in rows {
            let facts = match &row.facts_json {
                Some(json) => Some(serde_json::from_str::<NodeFacts>(json)?),
                None => None,
            };
            registry
                .by_fingerprint
                .insert(row.cert_fingerprint.clone(), row.name.clone());
            registry.nodes.insert(
                row.name.clone(),
                Node {
                    fingerprint: row.cert_fingerprint,
                    facts,
                    capacity: None,
                    cordoned: row.cordoned,
                    draining: row.draining,
                    revoked: row.revoked,
                    joined_at_ms: row.joined_at_ms,
                    last_report: None,
                    last_seen_ms: row.last_seen_ms,
                    last_seen_dirty: false,
                    connection: None,
                    status: NodeStatus::NotReady,
                    desired: DesiredState::default(),
                    replicas: Vec::new(),
                    replicas_reported: false,
                },
            );
        }
        Ok(registry)
    }

    /// Restores a node's desired replica set from the store.
    pub fn restore_desired(&mut self, name: &str, desired: DesiredState) {
        if let Some(node) = self.nodes.get_mut(name) {
            node.desired = desired;
        }
    }

    /// The replica set `name` should run.
    pub fn desired(&self, name: &str) -> Option<DesiredState> {
        self.nodes.get(name).map(|n| n.desired.clone())
    }

    /// Replaces the replica set `name` should run with `generation` (ignored unless newer
    /// than the current one) and hands it to the node's live connection, if any. The
    /// caller has persisted it.
    pub fn set_desired_generation(
        &mut self,
        name: &str,
        generation: u64,
        replicas: Vec<ReplicaSpec>,
    ) -> Result<DesiredState, RegistryError> {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        if generation > node.desired.generation {
            node.desired = DesiredState { generation, replicas };
            if let Some(connection) = &node.connection {
                connection.desired.send_replace(node.desired.clone());
            }
        }
        Ok(node.desired.clone())
    }

    /// A runtime status report on connection `connection_id`; false if that connection is
    /// no longer the node's current one.
    pub fn runtime_status(&mut self, name: &str, connection_id: u64, replicas: Vec<ReplicaStatus>) -> bool {
        let Some(node) = self.nodes.get_mut(name) else {
            return false;
        };
        if node.connection.as_ref().map(|c| c.id) != Some(connection_id) {
            return false;
        }
        node.replicas = replicas;
        node.replicas_reported = true;
        true
    }

    /// Phase of each replica `name` last reported.
    pub fn node_replica_phases(&self, name: &str) -> HashMap<String, pyxis_protocol::ReplicaPhase> {
        self.nodes
            .get(name)
            .map(|n| n.replicas.iter().map(|r| (r.name.clone(), r.phase)).collect())
            .unwrap_or_default()
    }

    /// Every replica reported by any node, sorted by name.
    pub fn replica_views(&self) -> Vec<ReplicaView> {
        let mut views: Vec<ReplicaView> = self
            .nodes
            .iter()
            .flat_map(|(name, node)| node.replicas.iter().map(move |r| replica_view(name, node, r)))
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.node.cmp(&b.node)));
        views
    }

    fn row(name: &str, node: &Node) -> NodeRow {
        NodeRow {
            name: name.to_string(),
            cert_fingerprint: node.fingerprint.clone(),
            facts_json: node.facts.as_ref().and_then(|f| serde_json::to_string(f).ok()),
            cordoned: node.cordoned,
            draining: node.draining,
            revoked: node.revoked,
            joined_at_ms: node.joined_at_ms,
            last_seen_ms: node.last_seen_ms,
        }
    }

    /// Replicas the gateway may send calls to: phase `Ready` with an endpoint, on a node
    /// that reports within the liveness timeout (cordoned and draining nodes still serve),
    /// and still in the node's desired set (a stale copy being stopped is not). With the
    /// node name.
    pub fn serving_replicas(&self, now: Instant, timeout: Duration) -> Vec<(String, ReplicaStatus)> {
        let mut out = Vec::new();
        for (name, node) in &self.nodes {
            if status_of(node, now, timeout) == NodeStatus::NotReady {
                continue;
            }
            for r in &node.replicas {
                let wanted = node.desired.replicas.iter().any(|d| d.name == r.name);
                if wanted && r.phase == pyxis_protocol::ReplicaPhase::Ready && r.endpoint.is_some() {
                    out.push((name.clone(), r.clone()));
                }
            }
        }
        out
    }

    /// Every node with what placement needs, sorted by name.
    pub fn fleet(&self, now: Instant, timeout: Duration) -> Vec<FleetNode> {
        let mut fleet: Vec<FleetNode> = self
            .nodes
            .iter()
            .map(|(name, node)| {
                let devices = node
                    .facts
                    .as_ref()
                    .map(|facts| {
                        facts
                            .devices
                            .iter()
                            .map(|d| {
                                let state = node
                                    .capacity
                                    .as_ref()
                                    .and_then(|c| c.devices.iter().find(|s| s.uuid == d.uuid));
                                FleetDevice {
                                    facts: d.clone(),
                                    health: state.map_or("healthy", |s| s.health),
                                    memory_used_bytes: state.and_then(|s| s.memory_used_bytes),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                FleetNode {
                    name: name.clone(),
                    status: status_of(node, now, timeout),
                    registered: node.facts.is_some(),
                    heard_since_start: node.last_report.is_some() && node.replicas_reported,
                    runtimes: node.facts.as_ref().map(|f| f.runtimes.clone()).unwrap_or_default(),
                    devices,
                    reported: node.replicas.clone(),
                    desired: node.desired.clone(),
                }
            })
            .collect();
        fleet.sort_by(|a, b| a.name.cmp(&b.name));
        fleet
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether a node may (re-)enroll under `name`: not if it is revoked (delete it first),
    /// and not while a live agent holds the name and reports (a join token must not be a
    /// way to take over a working node).
    pub fn can_enroll(&self, name: &str, now: Instant, busy_window: Duration) -> Result<(), RegistryError> {
        match self.nodes.get(name) {
            Some(node) if node.revoked => Err(RegistryError::Revoked(name.to_string())),
            Some(node) => match busy(node, now, busy_window) {
                Some(from) => Err(RegistryError::AlreadyConnected {
                    node: name.to_string(),
                    from,
                }),
                // Enrolled before and not deleted: the name is not free, connected or not.
                None if !node.fingerprint.is_empty() => Err(RegistryError::NameTaken(name.to_string())),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Records a newly issued certificate for `name`; returns the row to persist and the
    /// connection of a previous identity to close.
    pub fn enroll(
        &mut self,
        name: &str,
        fingerprint: &str,
        now: Instant,
        now_ms: i64,
        busy_window: Duration,
    ) -> Result<(NodeRow, Option<quinn::Connection>), RegistryError> {
        self.can_enroll(name, now, busy_window)?;
        let node = self.nodes.entry(name.to_string()).or_insert_with(|| Node {
            desired: DesiredState::default(),
            replicas: Vec::new(),
            replicas_reported: false,
            fingerprint: String::new(),
            facts: None,
            capacity: None,
            cordoned: false,
            draining: false,
            revoked: false,
            joined_at_ms: now_ms,
            last_report: None,
            last_seen_ms: None,
            last_seen_dirty: false,
            connection: None,
            status: NodeStatus::NotReady,
        });
        if !node.fingerprint.is_empty() {
            self.by_fingerprint.remove(&node.fingerprint);
        }
        node.fingerprint = fingerprint.to_string();
        node.joined_at_ms = now_ms;
        let old = node.connection.take().map(|c| c.connection);
        self.by_fingerprint.insert(fingerprint.to_string(), name.to_string());
        Ok((Self::row(name, node), old))
    }

    /// Which node a certificate fingerprint belongs to; refuses revoked nodes.
    pub fn identify(&self, fingerprint: &str) -> Result<String, RegistryError> {
        let name = self
            .by_fingerprint
            .get(fingerprint)
            .ok_or(RegistryError::UnknownCertificate)?;
        match self.nodes.get(name) {
            Some(node) if node.revoked => Err(RegistryError::Revoked(name.clone())),
            Some(_) => Ok(name.clone()),
            None => Err(RegistryError::UnknownCertificate),
        }
    }

    /// A node registered on `connection`. Returns the row to persist (only when the facts
    /// changed) and a replaced older connection to close.
    pub fn register(
        &mut self,
        name: &str,
        session: NewSession,
        now: Instant,
        now_ms: i64,
        busy_window: Duration,
    ) -> Result<(Option<NodeRow>, Option<quinn::Connection>), RegistryError> {
        let NewSession {
            facts,
            capacity,
            connection,
            fingerprint,
        } = session;
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        if node.revoked {
            return Err(RegistryError::Revoked(name.to_string()));
        }
        // The certificate must still be the node's: it may have been re-enrolled or deleted
        // and re-joined while this session was opening.
        if node.fingerprint != fingerprint {
            return Err(RegistryError::UnknownCertificate);
        }
        // A second agent with the same identity: the current connection is open and has
        // reported within `busy_window`. Refusing the newcomer (rather than replacing the
        // incumbent) keeps the node's inventory stable and makes the duplicate visible; a
        // restarted agent gets in as soon as its old connection falls silent.
        if let Some(from) = busy(node, now, busy_window) {
            return Err(RegistryError::AlreadyConnected {
                node: name.to_string(),
                from,
            });
        }
        // Re-registrations with unchanged facts (the usual case after a network blip or a
        // coordinator restart) need no write to the store.
        let changed = node.facts.as_ref() != Some(&facts);
        node.facts = Some(facts);
        node.capacity = Some(capacity);
        node.last_report = Some(now);
        node.last_seen_ms = Some(now_ms);
        node.last_seen_dirty = !changed;
        node.replicas_reported = false;
        let old = node.connection.replace(connection).map(|c| c.connection);
        Ok((changed.then(|| Self::row(name, node)), old))
    }

    /// A capacity report on connection `connection_id`. Returns `None` if that connection
    /// is no longer the node's current one (the report is then ignored), else the devices
    /// whose health tier or reason changed since the previous report.
    pub fn report(
        &mut self,
        name: &str,
        connection_id: u64,
        capacity: Capacity,
        now: Instant,
        now_ms: i64,
    ) -> Option<Vec<HealthChange>> {
        let node = self.nodes.get_mut(name)?;
        if node.revoked || node.connection.as_ref().map(|c| c.id) != Some(connection_id) {
            return None;
        }
        let mut changes = Vec::new();
        if let Some(previous) = &node.capacity {
            for device in &capacity.devices {
                let Some(before) = previous.devices.iter().find(|d| d.uuid == device.uuid) else {
                    continue;
                };
                if before.health != device.health || before.health_reason != device.health_reason {
                    let index = node
                        .facts
                        .as_ref()
                        .and_then(|f| f.devices.iter().find(|d| d.uuid == device.uuid))
                        .map(|d| d.index);
                    changes.push(HealthChange {
                        index,
                        uuid: device.uuid.clone(),
                        from: before.health,
                        to: device.health,
                        reason: device.health_reason.clone(),
                    });
                }
            }
        }
        node.capacity = Some(capacity);
        node.last_report = Some(now);
        node.last_seen_ms = Some(now_ms);
        node.last_seen_dirty = true;
        Some(changes)
    }

    /// The connection `connection_id` of `name` ended.
    pub fn disconnected(&mut self, name: &str, connection_id: u64) {
        if let Some(node) = self.nodes.get_mut(name) {
            if node.connection.as_ref().map(|c| c.id) == Some(connection_id) {
                node.connection = None;
            }
        }
    }

    /// Applies an operator action. Returns the row to persist and, for revoke, the live
    /// connection to close at once.
    pub fn act(
        &mut self,
        name: &str,
        action: NodeAction,
    ) -> Result<(NodeRow, Option<quinn::Connection>, bool), RegistryError> {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        if node.revoked && action != NodeAction::Revoke {
            let action = match action {
                NodeAction::Cordon => "cordon",
                NodeAction::Uncordon => "uncordon",
                NodeAction::Drain => "drain",
                NodeAction::Revoke => "revoke",
            };
            return Err(RegistryError::RevokedNode {
                node: name.to_string(),
                action,
            });
        }
        let before = (node.cordoned, node.draining, node.revoked);
        let mut close = None;
        match action {
            NodeAction::Cordon => node.cordoned = true,
            NodeAction::Uncordon => {
                node.cordoned = false;
                node.draining = false;
            }
            NodeAction::Drain => {
                node.cordoned = true;
                node.draining = true;
            }
            NodeAction::Revoke => {
                node.revoked = true;
                close = node.connection.take().map(|c| c.connection);
            }
        }
        let changed = before != (node.cordoned, node.draining, node.revoked);
        Ok((Self::row(name, node), close, changed))
    }

    /// Recomputes every status; returns the changes since the last sweep.
    pub fn sweep(&mut self, now: Instant, timeout: Duration) -> Sweep {
        let mut sweep = Sweep::default();
        for (name, node) in &mut self.nodes {
            let status = status_of(node, now, timeout);
            if status == NodeStatus::NotReady && node.connection.is_some() {
                // A connection that carried no report for the whole timeout is dead weight.
                if let Some(handle) = node.connection.take() {
                    sweep.close.push(handle.connection);
                }
            }
            if status == node.status {
                continue;
            }
            let (status, reason) = derive_status(node, now, timeout);
            sweep.transitions.push(Transition {
                node: name.clone(),
                from: node.status,
                to: status,
                reason,
            });
            node.status = status;
        }
        sweep.transitions.sort_by(|a, b| a.node.cmp(&b.node));
        sweep
    }

    /// Forgets every live connection handle (at shutdown, so the endpoint can close).
    pub fn drop_connections(&mut self) {
        for node in self.nodes.values_mut() {
            node.connection = None;
        }
    }

    /// Removes a node entirely (its certificate stops working; its name may join again).
    /// Returns its live connection to close.
    pub fn delete(&mut self, name: &str) -> Result<Option<quinn::Connection>, RegistryError> {
        let node = self
            .nodes
            .remove(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        self.by_fingerprint.remove(&node.fingerprint);
        Ok(node.connection.map(|c| c.connection))
    }

    /// Last-seen times changed since the previous call, to flush to the store.
    pub fn take_dirty_last_seen(&mut self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for (name, node) in &mut self.nodes {
            if node.last_seen_dirty {
                node.last_seen_dirty = false;
                if let Some(at) = node.last_seen_ms {
                    out.push((name.clone(), at));
                }
            }
        }
        out
    }

    /// Count of nodes per status, as of `now`.
    pub fn status_counts(&self, now: Instant, timeout: Duration) -> HashMap<NodeStatus, usize> {
        let mut counts = HashMap::new();
        for node in self.nodes.values() {
            *counts.entry(derive_status(node, now, timeout).0).or_insert(0) += 1;
        }
        counts
    }

    /// Open agent connections.
    pub fn connected(&self) -> usize {
        self.nodes.values().filter(|n| n.connection.is_some()).count()
    }

    /// API views of all nodes, sorted by name.
    pub fn views(&self, now: Instant, timeout: Duration) -> Vec<NodeView> {
        let mut names: Vec<&String> = self.nodes.keys().collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| self.view(name, now, timeout))
            .collect()
    }

    /// API view of one node.
    pub fn view(&self, name: &str, now: Instant, timeout: Duration) -> Option<NodeView> {
        let node = self.nodes.get(name)?;
        let (status, reason) = derive_status(node, now, timeout);
        let facts = node.facts.clone().unwrap_or_default();
        let capacity = node.capacity.as_ref();
        let accelerators = facts
            .devices
            .iter()
            .map(|d| {
                let state = capacity.and_then(|c| c.devices.iter().find(|s| s.uuid == d.uuid));
                let telemetry = state.map(|s| &s.telemetry);
                let details = &d.details;
                AcceleratorView {
                    index: d.index,
                    vendor: d.vendor.clone(),
                    model: d.model.clone(),
                    uuid: d.uuid.clone(),
                    memory_bytes: d.memory_bytes,
                    // Unknown until the first report, and whenever the device does not say.
                    memory_used_bytes: state.and_then(|s| s.memory_used_bytes),
                    utilization_percent: state.and_then(|s| s.utilization_percent),
                    hardware_class: d.hardware_class.clone(),
                    health: state.map(|s| s.health).unwrap_or("healthy").to_string(),
                    health_reason: state.map(|s| s.health_reason.clone()).unwrap_or_default(),
                    temperature_celsius: state.and_then(|s| s.temperature_celsius),
                    power_watts: state.and_then(|s| s.power_watts),
                    simulated: d.simulated,
                    pci_bus_id: details.pci_bus_id.clone(),
                    numa_node: details.numa_node,
                    driver_version: details.driver_version.clone(),
                    compute_api_version: details.compute_api_version.clone(),
                    architecture: details.architecture.clone(),
                    max_sm_clock_mhz: details.max_sm_clock_mhz,
                    max_memory_clock_mhz: details.max_memory_clock_mhz,
                    ecc_enabled: details.ecc_enabled,
                    mig: details.mig.clone(),
                    links: details.links.clone(),
                    power_limit_watts: state.and_then(|s| s.power_limit_watts),
                    sm_clock_mhz: telemetry.and_then(|t| t.sm_clock_mhz),
                    memory_clock_mhz: telemetry.and_then(|t| t.memory_clock_mhz),
                    throttle_reasons: telemetry.and_then(|t| t.throttle_reasons.clone()),
                    ecc: telemetry.and_then(|t| t.ecc),
                    xid_count: telemetry.and_then(|t| t.xid_count),
                    last_xid: telemetry.and_then(|t| t.last_xid),
                }
            })
            .collect();
        Some(NodeView {
            name: name.to_string(),
            status: status.as_str().to_string(),
            reason,
            schedulable: status == NodeStatus::Ready,
            cordoned: node.cordoned,
            draining: node.draining,
            revoked: node.revoked,
            connected: node.connection.is_some(),
            address: node.connection.as_ref().map(|c| c.remote.to_string()),
            agent_version: facts.agent_version,
            hostname: facts.hostname,
            os: facts.os,
            kernel: facts.kernel,
            cpu_model: facts.cpu_model,
            cpu_cores: facts.cpu_cores,
            memory_bytes: facts.memory_bytes,
            memory_available_bytes: capacity.map(|c| c.memory_available_bytes).unwrap_or(0),
            runtimes: facts.runtimes,
            last_seen: node.last_seen_ms.map(rfc3339_ms),
            joined_at: rfc3339_ms(node.joined_at_ms),
            accelerators,
            replicas: node.replicas.iter().map(|r| replica_view(name, node, r)).collect(),
        })
    }
}

/// API view of a replica reported by node `name`.
fn replica_view(name: &str, node: &Node, r: &ReplicaStatus) -> ReplicaView {
    let classes: Vec<String> = node
        .facts
        .as_ref()
        .map(|f| {
            let mut classes: Vec<String> = r
                .gpus
                .iter()
                .filter_map(|uuid| {
                    f.devices.iter().find_map(|d| {
                        if d.uuid == *uuid {
                            return Some(d.hardware_class.clone());
                        }
                        d.details
                            .mig
                            .as_ref()
                            .and_then(|m| m.instances.iter().find(|i| i.uuid == *uuid))
                            .map(|i| i.hardware_class.clone())
                    })
                })
                .collect();
            classes.dedup();
            classes
        })
        .unwrap_or_default();
    // A node that stopped reporting cannot vouch for its replicas: say so rather than show
    // a phase that may no longer be true (as Kubernetes shows pods on a lost node).
    let (phase, reason) = if node.status == NodeStatus::NotReady {
        let last = if r.reason.is_empty() {
            r.phase.as_str().to_string()
        } else {
            format!("{}: {}", r.phase.as_str(), r.reason)
        };
        (
            "Unknown".to_string(),
            format!("node {name} is NotReady; last reported {last}"),
        )
    } else {
        (r.phase.as_str().to_string(), r.reason.clone())
    };
    let hardware_class = if r.gpus.is_empty() {
        "cpu".to_string()
    } else if classes.is_empty() {
        "unknown".to_string()
    } else {
        classes.join("+")
    };
    ReplicaView {
        name: r.name.clone(),
        deployment: r.deployment.clone(),
        tenant: r.tenant.clone(),
        node: name.to_string(),
        phase,
        reason,
        runtime: r.runtime_kind.clone(),
        runtime_version: r.runtime_version.clone(),
        hardware_class,
        gpus: r.gpus.clone(),
        endpoint: r.endpoint.clone(),
        pid: r.pid,
        restarts: r.restarts,
        last_exit: r.last_exit.clone(),
        log_tail: r.log_tail.clone(),
        ready_after_ms: r.ready_after_ms,
        metrics: r.metrics.map(|m| RuntimeMetricsView {
            requests_running: m.requests_running,
            requests_waiting: m.requests_waiting,
            kv_cache_usage_ratio: m.kv_cache_usage_ratio,
            prompt_tokens_total: m.prompt_tokens_total,
            generation_tokens_total: m.generation_tokens_total,
            prefix_cache_hit_ratio: m.prefix_cache_hit_ratio,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity() -> Capacity {
        Capacity {
            memory_available_bytes: 1,
            devices: Vec::new(),
        }
    }

    /// Liveness is a pure function of the last report and `now`.
    #[test]
    fn liveness_transitions_follow_reports() {
        let mut registry = Registry::default();
        registry
            .enroll("n1", "fp1", Instant::now(), 0, Duration::from_secs(3))
            .unwrap();
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        assert_eq!(registry.sweep(t0, timeout).transitions, vec![]); // NotReady from the start
                                                                     // Registration needs a connection handle, which needs a live QUIC connection; the
                                                                     // link tests cover that path. Here we drive reports through a fake-free path:
        let node = registry.nodes.get_mut("n1").unwrap();
        node.last_report = Some(t0);
        node.facts = Some(NodeFacts::default());
        let changes = registry.sweep(t0, timeout).transitions;
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].from, changes[0].to),
            (NodeStatus::NotReady, NodeStatus::Ready)
        );
        assert_eq!(
            registry.sweep(t0 + Duration::from_secs(10), timeout).transitions,
            vec![]
        );
        let changes = registry.sweep(t0 + Duration::from_millis(10_001), timeout).transitions;
        assert_eq!(changes[0].to, NodeStatus::NotReady);
        assert!(
            changes[0].reason.contains("no capacity report"),
            "{}",
            changes[0].reason
        );
        // A report on a connection that is not the current one is ignored.
        assert!(registry.report("n1", 7, capacity(), t0, 0).is_none());
    }

    /// A node row as an older coordinator stored it: device facts without `details`.
    const FACTS_BEFORE_DETAILS: &str = r#"{"hostname":"h1","os":"Linux","kernel":"6.1","cpu_model":"EPYC","cpu_cores":8,
        "memory_bytes":1024,"agent_version":"0.1.0","runtimes":["vllm"],"devices":[{"index":0,"vendor":"nvidia",
        "model":"NVIDIA H100 80GB HBM3","uuid":"GPU-1","memory_bytes":85899345920,"hardware_class":"H100-80GB",
        "simulated":false}]}"#;

    fn row(name: &str, facts_json: &str) -> NodeRow {
        NodeRow {
            name: name.into(),
            cert_fingerprint: format!("fp-{name}"),
            facts_json: Some(facts_json.into()),
            cordoned: false,
            draining: false,
            revoked: false,
            joined_at_ms: 0,
            last_seen_ms: None,
        }
    }

    #[test]
    fn facts_stored_before_device_details_still_load() {
        let registry = Registry::load(vec![row("old", FACTS_BEFORE_DETAILS)]).unwrap();
        let view = registry.view("old", Instant::now(), Duration::from_secs(10)).unwrap();
        let device = &view.accelerators[0];
        assert_eq!(
            (device.uuid.as_str(), device.hardware_class.as_str()),
            ("GPU-1", "H100-80GB")
        );
        assert_eq!(device.pci_bus_id, None);
        assert_eq!(device.mig, None);
        assert!(device.links.is_empty());
        assert_eq!((device.xid_count, device.ecc), (None, None));
        // Before the first report nothing about usage is known.
        assert_eq!((device.memory_used_bytes, device.utilization_percent), (None, None));
        assert_eq!(device.throttle_reasons, None);
        // Stored again, the facts carry the new (empty) details and load the same way.
        let facts = registry.nodes["old"].facts.clone().unwrap();
        assert_eq!(facts.devices[0].details, DeviceDetails::default());
        let again = serde_json::to_string(&facts).unwrap();
        assert!(again.contains("\"details\""), "{again}");
        assert_eq!(serde_json::from_str::<NodeFacts>(&again).unwrap(), facts);
    }

    #[test]
    fn view_carries_device_details_and_telemetry() {
        let mut registry = Registry::load(vec![row("n1", FACTS_BEFORE_DETAILS)]).unwrap();
        let node = registry.nodes.get_mut("n1").unwrap();
        let facts = node.facts.as_mut().unwrap();
        facts.devices[0].details = DeviceDetails {
            pci_bus_id: Some("0000:18:00.0".into()),
            numa_node: Some(0),
            driver_version: Some("550.54.15".into()),
            compute_api_version: Some("12.4".into()),
            architecture: Some("9.0".into()),
            max_sm_clock_mhz: Some(1980),
            max_memory_clock_mhz: Some(2619),
            ecc_enabled: Some(true),
            mig: Some(MigView {
                enabled: true,
                pending_enabled: true,
                instances: vec![crate::api_types::MigInstanceView {
                    uuid: "MIG-1".into(),
                    profile: "1g.10gb".into(),
                    memory_bytes: 10 << 30,
                    gpu_instance_id: 9,
                    compute_instance_id: 0,
                    hardware_class: "H100-80GB-MIG-1g.10gb".into(),
                }],
            }),
            links: vec![PeerLinkView {
                peer: 1,
                kind: "nvlink".into(),
                lanes: 18,
            }],
        };
        let ecc = EccCountsView {
            volatile_corrected: 3,
            ..EccCountsView::default()
        };
        node.capacity = Some(Capacity {
            memory_available_bytes: 1,
            devices: vec![DeviceState {
                uuid: "GPU-1".into(),
                memory_used_bytes: Some(5),
                utilization_percent: Some(40),
                health: "unhealthy",
                health_reason: "XID 79: fell off the bus".into(),
                temperature_celsius: Some(60),
                power_watts: Some(300),
                power_limit_watts: Some(700),
                telemetry: DeviceTelemetry {
                    sm_clock_mhz: Some(1755),
                    memory_clock_mhz: Some(2619),
                    throttle_reasons: Some(vec!["sw_power_cap".into()]),
                    ecc: Some(ecc),
                    xid_count: Some(2),
                    last_xid: Some(79),
                },
            }],
        });
        let view = registry.view("n1", Instant::now(), Duration::from_secs(10)).unwrap();
        let device = &view.accelerators[0];
        assert_eq!(device.pci_bus_id.as_deref(), Some("0000:18:00.0"));
        assert_eq!(device.compute_api_version.as_deref(), Some("12.4"));
        assert_eq!(device.mig.as_ref().unwrap().instances[0].profile, "1g.10gb");
        assert_eq!(device.links[0].kind, "nvlink");
        assert_eq!(
            (device.health.as_str(), device.health_reason.as_str()),
            ("unhealthy", "XID 79: fell off the bus")
        );
        assert_eq!((device.power_limit_watts, device.sm_clock_mhz), (Some(700), Some(1755)));
        assert_eq!(device.throttle_reasons, Some(vec!["sw_power_cap".to_string()]));
        assert_eq!(
            (device.ecc, device.xid_count, device.last_xid),
            (Some(ecc), Some(2), Some(79))
        );
        assert_eq!(
            (device.memory_used_bytes, device.utilization_percent),
            (Some(5), Some(40))
        );
    }

    #[test]
    fn operator_actions_and_revocation() {
        let mut registry = Registry::default();
        registry
            .enroll("n1", "fp1", Instant::now(), 0, Duration::from_secs(3))
            .unwrap();
        let now = Instant::now();
        registry.nodes.get_mut("n1").unwrap().last_report = Some(now);
        let timeout = Duration::from_secs(10);
        registry.act("n1", NodeAction::Cordon).unwrap();
        assert_eq!(registry.view("n1", now, timeout).unwrap().status, "Cordoned");
        registry.act("n1", NodeAction::Drain).unwrap();
        assert_eq!(registry.view("n1", now, timeout).unwrap().status, "Draining");
        registry.act("n1", NodeAction::Uncordon).unwrap();
        assert_eq!(registry.view("n1", now, timeout).unwrap().status, "Ready");
        assert_eq!(registry.identify("fp1"), Ok("n1".into()));
        registry.act("n1", NodeAction::Revoke).unwrap();
        assert_eq!(registry.identify("fp1"), Err(RegistryError::Revoked("n1".into())));
        assert_eq!(registry.view("n1", now, timeout).unwrap().status, "NotReady");
        assert_eq!(
            registry.can_enroll("n1", now, Duration::from_secs(3)),
            Err(RegistryError::Revoked("n1".into()))
        );
        assert_eq!(registry.identify("nope"), Err(RegistryError::UnknownCertificate));
        assert!(matches!(
            registry.act("ghost", NodeAction::Cordon),
            Err(RegistryError::NotFound(_))
        ));
    }

    #[test]
    fn an_enrolled_name_is_not_taken_over_until_deleted() {
        let mut registry = Registry::default();
        let busy = Duration::from_secs(3);
        registry.enroll("n1", "fp1", Instant::now(), 0, busy).unwrap();
        // Offline (it never reported), not deleted: a join under its name is refused.
        let taken = registry.enroll("n1", "fp2", Instant::now(), 0, busy).err();
        assert_eq!(taken, Some(RegistryError::NameTaken("n1".into())));
        assert!(taken.unwrap().to_string().contains("pyxis delete node n1"));
        assert_eq!(registry.identify("fp1"), Ok("n1".into()), "the node keeps its identity");
        // Deleted: the name is free for a new host.
        registry.delete("n1").unwrap();
        registry.enroll("n1", "fp2", Instant::now(), 0, busy).unwrap();
        assert_eq!(registry.identify("fp2"), Ok("n1".into()));
        assert_eq!(registry.identify("fp1"), Err(RegistryError::UnknownCertificate));
    }
}
