//! The reconciler: turns the catalog (applied manifests) and the registry (what nodes
//! have and run) into every node's desired replica set, through the placement engine.
//!
//! One task runs a pass whenever something changes (an apply, a node status change, a
//! cordon or drain; [`Shared::wake_reconciler`]) and at least every second. A pass:
//!
//! 1. maps the fleet, the catalog and the replicas placed so far into a
//!    [`PlacementInput`] and runs [`placement::place`] on a blocking thread;
//! 2. records every action as an event on its deployment and replica;
//! 3. keeps a replica displaced by a drain in its node's desired set until its replacement
//!    reports `Ready` (surge), and drops it at once when its node is lost;
//! 4. sends each node whose set changed its new desired state
//!    ([`crate::server::set_desired`]: stored, then pushed), so a restarted coordinator
//!    starts from what it last told every node;
//! 5. accounts GPU time of running replicas per tenant and hardware class, priced by the
//!    class, flushed to the store every 10 s and at shutdown.
//!
//! Restarts and adoption: on start, the replicas placed so far are every node's stored
//! desired set. No pass runs until every known node has registered and reported what it
//! runs (at most one liveness timeout), so a node that is merely slow to reconnect does
//! not have its replicas replaced. A replica an agent reports that no desired set names is
//! adopted when its deployment exists and its name is past the stored sequence (a store
//! restored from an older backup); one with an older name was stopped on purpose and is
//! not taken back. Placement keeps every valid replica where it is, so nothing runs twice.
//!
//! What it deliberately does not do: decide anything itself (placement is the engine's),
//! talk to agents (the link does), or run while [`crate::config::CoordinatorConfig::reconcile`]
//! is off.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use pyxis_protocol::{ReplicaPhase, ReplicaSpec};
use tokio_util::sync::CancellationToken;

use crate::{
    manifest::{Kind, QuotaMode as ManifestQuotaMode},
    objects::{object_ref, Catalog},
    placement::{
        self, Action, DeploymentExplanation, Device, DeviceHealth, DeviceLink, HardwareClass, MigInstance, Node,
        NodeState, Placement, PlacementInput, QuotaMode, Replica, StopReason, Tenant,
    },
    registry::{FleetNode, NodeStatus},
    server::Shared,
    store::UsageRecord,
    time::now_ms,
};

/// How long a drained replica is kept for its replacement to become ready.
const SURGE_TIMEOUT: Duration = Duration::from_secs(600);
/// How often accumulated GPU time goes to the store.
const USAGE_FLUSH: Duration = Duration::from_secs(10);
/// The longest gap between two passes counted as GPU time (a stalled coordinator does not
/// invent usage for the time it was not looking).
const MAX_USAGE_STEP: Duration = Duration::from_secs(5);
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const META_NEXT_SEQUENCE: &str = "placement_next_sequence";

/// The outcome of the last pass, for the API, `explain` and metrics.
#[derive(Debug, Default)]
pub struct PlacementState {
    /// When the last pass ran (ms since the epoch); 0 before the first.
    pub evaluated_ms: i64,
    /// The engine's last output.
    pub placement: Option<Placement>,
    /// Why the last pass failed, if it did (the previous placement stays in force).
    pub error: Option<String>,
    /// Hardware class of every device and MIG instance, by UUID, as placement saw it.
    pub unit_class: HashMap<String, String>,
    /// Node of every device and MIG instance, by UUID.
    pub unit_node: HashMap<String, String>,
    /// Relative capacity and price of every class placement knew (defined classes, and MIG
    /// instance classes derived from their parent's).
    pub class_terms: BTreeMap<String, HardwareClass>,
    /// Node status by name, as placement saw it.
    pub node_status: HashMap<String, NodeStatus>,
    /// Condition status and since when (ms), by (object, condition type).
    pub transitions: HashMap<(String, String), (String, i64)>,
    /// Reported phase of every replica, by name.
    pub phases: HashMap<String, ReplicaPhase>,
    /// GPU-seconds not yet in the store, by (tenant, class, hour).
    pub unflushed_usage: BTreeMap<(String, String, i64), f64>,
    /// Passes run.
    pub passes: u64,
    /// GPU-seconds accounted since this coordinator started, by (tenant, class).
    pub usage_totals: BTreeMap<(String, String), f64>,
    /// Replicas displaced by a drain and kept running until their replacement is ready.
    pub surging: Vec<Replica>,
    /// The last pass's input, to compute per-node verdicts on demand (`explain`) when the
    /// pass left them out (large fleets; see [`VERDICTS_INLINE_LIMIT`]).
    pub last_input: Option<Arc<PlacementInput>>,
}

/// Passes compute per-node verdicts for every pending deployment while nodes × deployments
/// stays under this; above it they are left out and `explain` computes them on demand (a
/// pure pass over the same input gives the same decision), which keeps a pass on a large
/// contended fleet from spending most of its time on explanations nobody reads.
pub const VERDICTS_INLINE_LIMIT: usize = 100_000;

impl PlacementState {
    /// The explanation of one deployment's last decision, if something is pending.
    pub fn explanation(&self, tenant: &str, deployment: &str) -> Option<&DeploymentExplanation> {
        self.placement.as_ref().and_then(|p| {
            p.explanations
                .iter()
                .find(|e| e.tenant == tenant && e.deployment == deployment)
        })
    }

    /// The placed replicas of one deployment, and those a drain keeps running until their
    /// replacement is ready.
    pub fn replicas_of<'a>(&'a self, tenant: &'a str, deployment: &'a str) -> impl Iterator<Item = &'a Replica> + 'a {
        self.placement
            .iter()
            .flat_map(|p| p.replicas.iter())
            .chain(self.surging.iter())
            .filter(move |r| r.tenant == tenant && r.deployment == deployment)
    }

    /// The hardware class of a replica's devices (`cpu` without any; joined by `+` if mixed).
    pub fn class_of(&self, replica: &Replica) -> String {
        if replica.devices.is_empty() {
            return "cpu".to_string();
        }
        self.known_class(&replica.devices).unwrap_or_else(|| {
            let mut classes: Vec<&str> = replica
                .devices
                .iter()
                .map(|uuid| self.unit_class.get(uuid).map_or("unknown", String::as_str))
                .collect();
            classes.dedup();
            classes.join("+")
        })
    }

    /// The class of these devices as placement saw them (joined by `+` if mixed); `None`
    /// when there are none or placement did not see one of them.
    pub fn known_class(&self, devices: &[String]) -> Option<String> {
        let mut classes: Vec<&str> = devices
            .iter()
            .map(|uuid| self.unit_class.get(uuid).map(String::as_str))
            .collect::<Option<_>>()?;
        classes.dedup();
        (!classes.is_empty()).then(|| classes.join("+"))
    }
}

/// A replica kept running on a draining node until its replacement is ready.
#[derive(Debug, Clone)]
struct Surge {
    old: Replica,
    replacement: String,
    since: Instant,
}

/// The reconciler's own memory between passes.
#[derive(Debug)]
struct Reconciler {
    placed: Vec<Replica>,
    next_sequence: u64,
    surging: BTreeMap<String, Surge>,
    last_summary: HashMap<(String, String), String>,
    last_usage_at: Option<Instant>,
    last_flush: Instant,
    adopted_logged: BTreeSet<String>,
    /// Until then, a node not heard from since this coordinator started is assumed to run
    /// what it was told (kept, given nothing new) rather than lost.
    grace_until: Instant,
    waiting_logged: bool,
}

fn created_of(name: &str) -> u64 {
    name.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn replica_of(node: &str, spec: &ReplicaSpec) -> Replica {
    Replica {
        name: spec.name.clone(),
        tenant: spec.tenant.clone(),
        deployment: spec.deployment.clone(),
        node: node.to_string(),
        devices: spec.gpus.clone(),
        runtime: spec.runtime_kind.clone(),
        created: created_of(&spec.name),
    }
}

fn node_state(status: NodeStatus) -> NodeState {
    match status {
        NodeStatus::Ready => NodeState::Ready,
        NodeStatus::Cordoned => NodeState::Cordoned,
        NodeStatus::Draining => NodeState::Draining,
        NodeStatus::NotReady => NodeState::NotReady,
    }
}

fn health(text: &str) -> DeviceHealth {
    match text {
        "unhealthy" => DeviceHealth::Unhealthy,
        "degraded" => DeviceHealth::Degraded,
        _ => DeviceHealth::Healthy,
    }
}

/// Builds the engine's input. Also returns each unit's class (devices and MIG instances).
fn build_input(
    fleet: &[FleetNode],
    catalog: &Catalog,
    current: Vec<Replica>,
    next_sequence: u64,
    idle: &dyn Fn(&str, &str) -> bool,
) -> (PlacementInput, HashMap<String, String>) {
    let held: BTreeSet<&str> = current
        .iter()
        .flat_map(|r| r.devices.iter().map(String::as_str))
        .collect();
    let mut classes: BTreeMap<String, HardwareClass> = catalog
        .classes
        .values()
        .map(|c| {
            (
                c.object.metadata.name.clone(),
                HardwareClass {
                    relative_capacity: c.object.spec.relative_capacity,
                    price_per_gpu_hour: c.object.spec.price_per_gpu_hour,
                },
            )
        })
        .collect();
    let mut unit_class = HashMap::new();
    let mut class_by_kind: HashMap<(&str, &str, u64, &str), String> = HashMap::new();
    let mut nodes = Vec::new();
    for f in fleet.iter().filter(|f| f.registered) {
        let mut devices = Vec::new();
        for d in &f.devices {
            // Fleets hold few distinct device kinds: match each kind's rules once a pass.
            let kind = (
                d.facts.vendor.as_str(),
                d.facts.model.as_str(),
                d.facts.memory_bytes,
                d.facts.hardware_class.as_str(),
            );
            let class = class_by_kind
                .entry(kind)
                .or_insert_with(|| catalog.device_class(kind.0, kind.1, kind.2, kind.3))
                .clone();
            let parent_terms = classes.get(&class).copied().unwrap_or_default();
            let mig = d.facts.details.mig.as_ref().filter(|m| m.enabled).map(|m| {
                m.instances
                    .iter()
                    .map(|i| {
                        // An instance class nobody defined is worth its share of the parent.
                        if !classes.contains_key(&i.hardware_class) && d.facts.memory_bytes > 0 {
                            let fraction = i.memory_bytes as f64 / d.facts.memory_bytes as f64;
                            classes.insert(
                                i.hardware_class.clone(),
                                HardwareClass {
                                    relative_capacity: (parent_terms.relative_capacity * fraction).max(0.001),
                                    price_per_gpu_hour: parent_terms.price_per_gpu_hour * fraction,
                                },
                            );
                        }
                        unit_class.insert(i.uuid.clone(), i.hardware_class.clone());
                        MigInstance {
                            uuid: i.uuid.clone(),
                            hardware_class: i.hardware_class.clone(),
                            memory_bytes: i.memory_bytes,
                        }
                    })
                    .collect()
            });
            unit_class.insert(d.facts.uuid.clone(), class.clone());
            devices.push(Device {
                uuid: d.facts.uuid.clone(),
                index: d.facts.index,
                hardware_class: class,
                memory_bytes: d.facts.memory_bytes,
                // What a replica of ours uses is freed with it; what others use is not.
                other_memory_used_bytes: if held.contains(d.facts.uuid.as_str()) {
                    None
                } else {
                    d.memory_used_bytes
                },
                health: health(d.health),
                links: d
                    .facts
                    .details
                    .links
                    .iter()
                    .map(|l| DeviceLink {
                        peer: l.peer,
                        fabric: matches!(l.kind.as_str(), "nvlink" | "xgmi"),
                    })
                    .collect(),
                mig,
            });
        }
        nodes.push(Node {
            name: f.name.clone(),
            state: node_state(f.status),
            runtimes: f.runtimes.clone(),
            devices,
        });
    }
    let tenants = catalog
        .tenants
        .values()
        .map(|t| {
            let spec = &t.object.spec;
            let guarantee = spec.guarantee.as_ref().map_or(0.0, |q| catalog.normalised(q));
            let limit = spec.limit.as_ref().map(|q| catalog.normalised(q).max(guarantee));
            Tenant {
                name: t.object.metadata.name.clone(),
                weight: spec.weight,
                guarantee,
                limit,
                quota_mode: match spec.quota_mode {
                    ManifestQuotaMode::Enforce => QuotaMode::Enforce,
                    ManifestQuotaMode::DryRun => QuotaMode::DryRun,
                },
            }
        })
        .collect();
    let deployments = catalog
        .deployments
        .values()
        .filter(|d| catalog.tenants.contains_key(d.object.tenant()))
        .map(|d| {
            let spec = &d.object.spec;
            // `min: 0` with warm-zero/hot-zero: no replica while no call came for the idle
            // window (the gateway wakes the reconciler on the next call).
            let scaled_to_zero = spec.replicas.min == 0
                && spec.scale_policy != crate::manifest::ScalePolicy::AlwaysWarm
                && idle(d.object.tenant(), &d.object.metadata.name);
            placement::Deployment {
                tenant: d.object.tenant().to_string(),
                name: d.object.metadata.name.clone(),
                created: d.seq,
                gpus_per_replica: spec.resources.gpus_per_replica,
                gpu_memory_bytes: gpu_memory_bytes(&d.object),
                allowed_classes: spec.resources.hardware_classes.clone(),
                preferred_classes: spec.resources.preferred_hardware_classes.clone(),
                runtimes: spec.runtimes.iter().map(|r| r.kind.as_str().to_string()).collect(),
                min_replicas: spec.replicas.min,
                max_replicas: if scaled_to_zero { 0 } else { spec.replicas.max },
                require_linked_gpus: false,
            }
        })
        .collect();
    let input = PlacementInput {
        nodes,
        classes,
        tenants,
        deployments,
        current,
        next_sequence,
    };
    (input, unit_class)
}

/// Free memory each GPU of a replica needs: `gpuMemoryGiB` when given, else the model's
/// `sizeGiB` split over its GPUs (the weights must fit; the runtime's KV cache is the
/// operator's to size with `gpuMemoryGiB`), else nothing.
fn gpu_memory_bytes(d: &crate::manifest::ModelDeployment) -> u64 {
    let resources = &d.spec.resources;
    let gib = resources.gpu_memory_gib.or_else(|| {
        d.spec
            .model
            .size_gib
            .filter(|_| resources.gpus_per_replica > 0)
            .map(|size| size / f64::from(resources.gpus_per_replica))
    });
    gib.map_or(0, |gib| (gib * GIB) as u64)
}

impl Reconciler {
    fn start(shared: &Shared, fleet: &[FleetNode]) -> Self {
        let mut placed: Vec<Replica> = fleet
            .iter()
            .flat_map(|f| f.desired.replicas.iter().map(|spec| replica_of(&f.name, spec)))
            .collect();
        placed.sort_by(|a, b| a.name.cmp(&b.name));
        placed.dedup_by(|a, b| a.name == b.name);
        let stored = shared
            .store
            .meta(META_NEXT_SEQUENCE)
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let next_sequence = placed
            .iter()
            .map(|r| r.created + 1)
            .max()
            .unwrap_or(1)
            .max(stored)
            .max(1);
        tracing::info!(
            replicas = placed.len(),
            next_sequence,
            "reconciler starting from the stored desired state"
        );
        Reconciler {
            placed,
            next_sequence,
            surging: BTreeMap::new(),
            last_summary: HashMap::new(),
            last_usage_at: None,
            last_flush: Instant::now(),
            adopted_logged: BTreeSet::new(),
            grace_until: Instant::now() + shared.config.liveness_timeout,
            waiting_logged: false,
        }
    }

    /// Replicas agents report that no desired set names, whose deployment exists.
    fn adopt(&mut self, shared: &Shared, fleet: &[FleetNode], catalog: &Catalog) -> Vec<Replica> {
        let known: BTreeSet<&str> = self
            .placed
            .iter()
            .map(|r| r.name.as_str())
            .chain(self.surging.keys().map(String::as_str))
            .collect();
        let mut adopted = Vec::new();
        for f in fleet.iter().filter(|f| f.status != NodeStatus::NotReady) {
            for r in &f.reported {
                if known.contains(r.name.as_str()) || adopted.iter().any(|a: &Replica| a.name == r.name) {
                    continue;
                }
                if !catalog
                    .deployments
                    .contains_key(&(r.tenant.clone(), r.deployment.clone()))
                {
                    continue;
                }
                // Every name this coordinator ever gave is below its stored sequence: such
                // a replica missing from every desired set was stopped on purpose (its
                // node is told so) and is not taken back. Only a replica named after the
                // store's last sequence (a store restored from an older backup) is unknown
                // here, and adopted.
                let created = created_of(&r.name);
                if created < self.next_sequence {
                    continue;
                }
                if self.adopted_logged.insert(r.name.clone()) {
                    tracing::info!(replica = %r.name, node = %f.name, "adopting a replica its agent runs but no desired state names");
                    shared.event(
                        &object_ref(Kind::ModelDeployment, Some(&r.tenant), &r.deployment),
                        "Normal",
                        "ReplicaAdopted",
                        &format!("replica {} found running on node {}; adopted", r.name, f.name),
                    );
                }
                adopted.push(Replica {
                    name: r.name.clone(),
                    tenant: r.tenant.clone(),
                    deployment: r.deployment.clone(),
                    node: f.name.clone(),
                    devices: r.gpus.clone(),
                    runtime: r.runtime_kind.clone(),
                    created: created_of(&r.name),
                });
            }
        }
        adopted
    }

    async fn pass(&mut self, shared: &Arc<Shared>) {
        let now = Instant::now();
        let fleet = shared.registry().fleet(now, shared.config.liveness_timeout);
        let catalog = shared.catalog().clone();
        // Right after a coordinator start every node is NotReady until it reports. Until
        // each known node has (or one liveness timeout has passed), nothing is decided: a
        // restart must not replace the replicas of nodes that are merely slower to
        // reconnect, nor place anew what an agent is about to report and have adopted.
        if now < self.grace_until {
            let waiting: Vec<&str> = fleet
                .iter()
                .filter(|f| f.registered && !f.heard_since_start)
                .map(|f| f.name.as_str())
                .collect();
            if !waiting.is_empty() {
                if !self.waiting_logged {
                    tracing::info!(nodes = ?waiting, "placement waits for every known node to report after the start (at most one liveness timeout)");
                    self.waiting_logged = true;
                }
                return;
            }
        }
        let mut current = self.placed.clone();
        let adopted = self.adopt(shared, &fleet, &catalog);
        if let Some(last) = adopted.iter().map(|r| r.created).max() {
            self.next_sequence = self.next_sequence.max(last + 1);
        }
        current.extend(adopted);
        let gateway = shared.gateway();
        let idle = |tenant: &str, deployment: &str| gateway.as_ref().is_some_and(|g| g.idle(tenant, deployment));
        let (input, unit_class) = build_input(&fleet, &catalog, current, self.next_sequence, &idle);
        let class_terms = input.classes.clone();
        let unit_node: HashMap<String, String> = fleet
            .iter()
            .flat_map(|f| {
                f.devices.iter().flat_map(move |d| {
                    let instances = d
                        .facts
                        .details
                        .mig
                        .iter()
                        .flat_map(|m| m.instances.iter().map(|i| i.uuid.clone()));
                    std::iter::once(d.facts.uuid.clone())
                        .chain(instances)
                        .map(move |uuid| (uuid, f.name.clone()))
                })
            })
            .collect();
        let verdicts = if input.nodes.len().saturating_mul(input.deployments.len()) <= VERDICTS_INLINE_LIMIT {
            placement::Verdicts::All
        } else {
            placement::Verdicts::None
        };
        let input = Arc::new(input);
        let for_pass = input.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || placement::place_with(&for_pass, &verdicts)).await;
        let elapsed = started.elapsed();
        shared.metrics.placement_duration.observe(elapsed.as_secs_f64());
        let placement = match result {
            Ok(Ok(placement)) => placement,
            Ok(Err(e)) => {
                self.fail(shared, e.to_string());
                return;
            }
            Err(e) => {
                self.fail(shared, format!("placement panicked: {e}"));
                return;
            }
        };
        let phases: HashMap<String, ReplicaPhase> = fleet
            .iter()
            .flat_map(|f| f.reported.iter().map(|r| (r.name.clone(), r.phase)))
            .collect();
        let status: HashMap<String, NodeStatus> = fleet.iter().map(|f| (f.name.clone(), f.status)).collect();
        self.record_actions(shared, &placement, &status, now);
        self.end_surges(shared, &placement, &phases, &status, now);
        self.explain(shared, &placement);
        if placement.next_sequence != self.next_sequence {
            self.next_sequence = placement.next_sequence;
            if let Err(e) = shared
                .store
                .set_meta(META_NEXT_SEQUENCE, &self.next_sequence.to_string())
            {
                tracing::warn!(error = %e, "cannot store the next replica sequence");
            }
        }
        self.placed = placement.replicas.clone();
        self.push_desired(shared, &fleet, &catalog).await;
        let usage = self.account(&fleet, &unit_class, &status, now);
        {
            let mut state = shared.placement_state();
            state.evaluated_ms = now_ms();
            state.placement = Some(placement);
            state.error = None;
            state.unit_class = unit_class;
            state.surging = self.surging.values().map(|s| s.old.clone()).collect();
            state.last_input = Some(input);
            state.unit_node = unit_node;
            state.class_terms = class_terms;
            state.node_status = status;
            state.phases = phases;
            state.passes += 1;
            for ((tenant, class, hour), seconds) in usage {
                *state.usage_totals.entry((tenant.clone(), class.clone())).or_default() += seconds;
                *state.unflushed_usage.entry((tenant, class, hour)).or_default() += seconds;
            }
        }
        if self.last_flush.elapsed() >= USAGE_FLUSH {
            self.last_flush = Instant::now();
            flush_usage(shared).await;
        }
    }

    fn fail(&mut self, shared: &Shared, error: String) {
        let mut state = shared.placement_state();
        if state.error.as_deref() != Some(error.as_str()) {
            tracing::error!(error = %error, "placement refused its input; the previous placement stays in force");
        }
        state.error = Some(error);
        state.evaluated_ms = now_ms();
    }

    fn record_actions(
        &mut self,
        shared: &Shared,
        placement: &Placement,
        status: &HashMap<String, NodeStatus>,
        now: Instant,
    ) {
        let replacements: HashMap<&str, &str> = placement
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Place {
                    replica,
                    replaces: Some(old),
                } => Some((old.as_str(), replica.name.as_str())),
                _ => None,
            })
            .collect();
        for action in &placement.actions {
            match action {
                Action::Place { replica, replaces } => {
                    let devices = if replica.devices.is_empty() {
                        "on CPU".to_string()
                    } else {
                        format!("on {}", replica.devices.join(", "))
                    };
                    let mut message = format!(
                        "replica {} placed on node {} {devices}, runtime {}",
                        replica.name, replica.node, replica.runtime
                    );
                    if let Some(old) = replaces {
                        message.push_str(&format!(", replacing {old}"));
                    }
                    tracing::info!(replica = %replica.name, node = %replica.node, runtime = %replica.runtime, replaces = ?replaces, "replica placed");
                    let deployment = object_ref(Kind::ModelDeployment, Some(&replica.tenant), &replica.deployment);
                    shared.event(&deployment, "Normal", "ReplicaPlaced", &message);
                    shared.event(&format!("replica/{}", replica.name), "Normal", "Placed", &message);
                }
                Action::Stop { replica, reason } => {
                    let message = format!("replica {} on node {} stopped: {reason}", replica.name, replica.node);
                    tracing::info!(replica = %replica.name, node = %replica.node, reason = %reason, "replica stopped");
                    let deployment = object_ref(Kind::ModelDeployment, Some(&replica.tenant), &replica.deployment);
                    let kind = if reason.is_replaced() || matches!(reason, StopReason::Reclaimed { .. }) {
                        "Warning"
                    } else {
                        "Normal"
                    };
                    shared.event(&deployment, kind, "ReplicaStopped", &message);
                    shared.event(&format!("replica/{}", replica.name), kind, "Stopped", &message);
                    // Surge: a drained replica whose node still answers keeps serving until
                    // its replacement is ready.
                    let node_alive = status.get(&replica.node).is_some_and(|s| *s != NodeStatus::NotReady);
                    if matches!(reason, StopReason::NodeDraining) && node_alive {
                        if let Some(new) = replacements.get(replica.name.as_str()) {
                            self.surging.insert(
                                replica.name.clone(),
                                Surge {
                                    old: replica.clone(),
                                    replacement: new.to_string(),
                                    since: now,
                                },
                            );
                        }
                    }
                }
            }
        }
    }

    fn end_surges(
        &mut self,
        shared: &Shared,
        placement: &Placement,
        phases: &HashMap<String, ReplicaPhase>,
        status: &HashMap<String, NodeStatus>,
        now: Instant,
    ) {
        let placed: BTreeSet<&str> = placement.replicas.iter().map(|r| r.name.as_str()).collect();
        self.surging.retain(|old, surge| {
            let ready = phases.get(&surge.replacement) == Some(&ReplicaPhase::Ready);
            let gone = !placed.contains(surge.replacement.as_str());
            let lost = status.get(&surge.old.node).is_none_or(|s| *s == NodeStatus::NotReady);
            let late = now.saturating_duration_since(surge.since) >= SURGE_TIMEOUT;
            let why = if ready {
                Some(format!("its replacement {} is ready", surge.replacement))
            } else if gone {
                Some(format!("its replacement {} is no longer placed", surge.replacement))
            } else if lost {
                Some(format!("node {} is lost", surge.old.node))
            } else if late {
                Some(format!(
                    "its replacement {} was not ready within {}s",
                    surge.replacement,
                    SURGE_TIMEOUT.as_secs()
                ))
            } else {
                None
            };
            match why {
                Some(why) => {
                    let message = format!("drained replica {old} on node {} released: {why}", surge.old.node);
                    tracing::info!(replica = %old, "{message}");
                    shared.event(
                        &object_ref(Kind::ModelDeployment, Some(&surge.old.tenant), &surge.old.deployment),
                        "Normal",
                        "SurgeComplete",
                        &message,
                    );
                    false
                }
                None => true,
            }
        });
    }

    fn explain(&mut self, shared: &Shared, placement: &Placement) {
        let mut seen = BTreeSet::new();
        for e in &placement.explanations {
            let key = (e.tenant.clone(), e.deployment.clone());
            seen.insert(key.clone());
            let summary = summary(e);
            if self.last_summary.get(&key) != Some(&summary) {
                let object = object_ref(Kind::ModelDeployment, Some(&e.tenant), &e.deployment);
                let kind = if e.pending > 0 { "Warning" } else { "Normal" };
                let reason = if e.pending > 0 { "FailedPlacement" } else { "OverLimit" };
                tracing::info!(tenant = %e.tenant, deployment = %e.deployment, "{summary}");
                let message = format!(
                    "{summary}; `pyxis explain deployment {} -n {}` lists every node",
                    e.deployment, e.tenant
                );
                shared.event(&object, kind, reason, &message);
                self.last_summary.insert(key, summary);
            }
        }
        let resolved: Vec<(String, String)> = self
            .last_summary
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in resolved {
            self.last_summary.remove(&key);
            let object = object_ref(Kind::ModelDeployment, Some(&key.0), &key.1);
            shared.event(&object, "Normal", "Placed", "every wanted replica is placed");
        }
    }

    async fn push_desired(&mut self, shared: &Arc<Shared>, fleet: &[FleetNode], catalog: &Catalog) {
        let mut wanted: BTreeMap<&str, Vec<ReplicaSpec>> = BTreeMap::new();
        for replica in self.placed.iter().chain(self.surging.values().map(|s| &s.old)) {
            let Some(deployment) = catalog
                .deployments
                .get(&(replica.tenant.clone(), replica.deployment.clone()))
            else {
                continue;
            };
            let d = &deployment.object;
            let index = d
                .spec
                .runtimes
                .iter()
                .position(|r| r.kind.as_str() == replica.runtime)
                .unwrap_or(0);
            if let Some(spec) = d.replica_spec(replica.name.clone(), index, replica.devices.clone()) {
                wanted.entry(replica.node.as_str()).or_default().push(spec);
            }
        }
        for f in fleet {
            let mut specs = wanted.remove(f.name.as_str()).unwrap_or_default();
            specs.sort_by(|a, b| a.name.cmp(&b.name));
            let mut have = f.desired.replicas.clone();
            have.sort_by(|a, b| a.name.cmp(&b.name));
            if specs == have {
                continue;
            }
            if let Err(e) = crate::server::set_desired(shared, &f.name, specs).await {
                tracing::warn!(node = %f.name, error = %e, "cannot set the node's desired state; retrying on the next pass");
            }
        }
    }

    fn account(
        &mut self,
        fleet: &[FleetNode],
        unit_class: &HashMap<String, String>,
        status: &HashMap<String, NodeStatus>,
        now: Instant,
    ) -> BTreeMap<(String, String, i64), f64> {
        let mut usage = BTreeMap::new();
        let step = self
            .last_usage_at
            .map(|at| now.saturating_duration_since(at).min(MAX_USAGE_STEP));
        self.last_usage_at = Some(now);
        let Some(step) = step else {
            return usage;
        };
        let wall = now_ms();
        let hour = wall - wall.rem_euclid(3_600_000);
        for f in fleet {
            if status.get(&f.name) == Some(&NodeStatus::NotReady) {
                continue;
            }
            for r in &f.reported {
                let running = matches!(
                    r.phase,
                    ReplicaPhase::Starting | ReplicaPhase::Ready | ReplicaPhase::Unhealthy | ReplicaPhase::Stopping
                );
                if !running {
                    continue;
                }
                for gpu in &r.gpus {
                    let class = unit_class.get(gpu).cloned().unwrap_or_else(|| "unknown".to_string());
                    *usage.entry((r.tenant.clone(), class, hour)).or_default() += step.as_secs_f64();
                }
            }
        }
        usage
    }
}

/// One line for a deployment's explanation (events, `explain`).
pub fn summary(e: &DeploymentExplanation) -> String {
    let mut text = format!(
        "{} placed, {} pending ({} below min)",
        e.placed, e.pending, e.pending_min
    );
    if e.displaced > 0 {
        text.push_str(&format!(", {} on a draining or lost node until replaced", e.displaced));
    }
    if e.share.over_limit {
        text.push_str(&format!(
            "; tenant {} holds {:.2} normalised GPUs, over its limit (dry-run: reported, not enforced)",
            e.share.tenant, e.share.usage
        ));
    }
    // The most common first reason across nodes says most in one line (a node's first
    // reason is the most basic: state, runtime, class, before free GPUs).
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for node in &e.nodes {
        if let Some(reason) = node.reasons.first() {
            *counts.entry(reason.to_string()).or_default() += 1;
        }
    }
    let most = counts.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)));
    if let Some((reason, count)) = most {
        text.push_str(&format!("; {count} of {} node(s): {reason}", e.nodes.len()));
    }
    text
}

/// Writes accumulated GPU time to the store.
pub async fn flush_usage(shared: &Arc<Shared>) {
    let records: Vec<UsageRecord> = {
        let mut state = shared.placement_state();
        std::mem::take(&mut state.unflushed_usage)
            .into_iter()
            .map(|((tenant, hardware_class, hour_ms), gpu_seconds)| UsageRecord {
                tenant,
                hardware_class,
                hour_ms,
                gpu_seconds,
            })
            .collect()
    };
    if records.is_empty() {
        return;
    }
    let writer = shared.clone();
    let written = tokio::task::spawn_blocking(move || {
        let result = writer.store.add_usage(&records);
        (result, records)
    })
    .await;
    match written {
        Ok((Ok(()), _)) => {}
        Ok((Err(e), records)) => {
            tracing::warn!(error = %e, "cannot store GPU usage; keeping it for the next flush");
            let mut state = shared.placement_state();
            for r in records {
                *state
                    .unflushed_usage
                    .entry((r.tenant, r.hardware_class, r.hour_ms))
                    .or_default() += r.gpu_seconds;
            }
        }
        Err(e) => tracing::warn!(error = %e, "usage flush task failed"),
    }
}

/// Runs passes until `shutdown`, then flushes usage.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let fleet = shared.registry().fleet(Instant::now(), shared.config.liveness_timeout);
    let mut reconciler = Reconciler::start(&shared, &fleet);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = shared.reconcile_wakeup() => {}
            _ = ticker.tick() => {}
        }
        let started = Instant::now();
        reconciler.pass(&shared).await;
        // On a fleet where a pass takes long, leave the core mostly to everything else:
        // the next pass starts no sooner than twice this one's time (changes meanwhile are
        // not lost: the wake-up is kept until then).
        let pause = started.elapsed() * 2;
        if pause > Duration::from_millis(10) {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
    flush_usage(&shared).await;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use pyxis_protocol::{DesiredState, ReplicaStatus};

    use super::*;
    use crate::{
        api_types::{MigInstanceView, MigView, PeerLinkView},
        objects::parse_sources,
        registry::{DeviceDetails, DeviceFacts, FleetDevice},
    };

    const MANIFESTS: &str = "\
apiVersion: pyxis.dev/v1alpha1
kind: HardwareClass
metadata: {name: big-nvidia}
spec: {match: {vendor: nvidia, model: \"H100\"}, pricePerGpuHour: 4.0, relativeCapacity: 2.0}
---
apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {name: research}
spec: {weight: 1, guarantee: {big-nvidia: 1}, limit: {gpus: 8}}
---
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {name: qwen, namespace: research}
spec:
  model: {name: q, version: \"1\", source: /m}
  runtimes: [{kind: vllm}, {kind: sglang}]
  resources: {gpusPerReplica: 1, gpuMemoryGiB: 10}
  replicas: {min: 1, max: 2}
";

    fn catalog() -> Catalog {
        let mut catalog = Catalog::default();
        let located = parse_sources(&[(None, MANIFESTS.to_string())]).unwrap();
        let plan = catalog.plan_apply(located, 1, &BTreeSet::new()).unwrap();
        catalog.commit(plan);
        catalog
    }

    fn device(index: u32, uuid: &str, model: &str, class: &str, used: Option<u64>) -> FleetDevice {
        FleetDevice {
            facts: DeviceFacts {
                index,
                vendor: "nvidia".into(),
                model: model.into(),
                uuid: uuid.into(),
                memory_bytes: 80 << 30,
                hardware_class: class.into(),
                simulated: true,
                details: DeviceDetails {
                    links: vec![PeerLinkView {
                        peer: 1 - index,
                        kind: "nvlink".into(),
                        lanes: 18,
                    }],
                    ..DeviceDetails::default()
                },
            },
            health: if index == 1 { "degraded" } else { "healthy" },
            memory_used_bytes: used,
        }
    }

    fn node(name: &str, status: NodeStatus, devices: Vec<FleetDevice>, runtimes: &[&str]) -> FleetNode {
        FleetNode {
            name: name.into(),
            status,
            registered: true,
            heard_since_start: true,
            runtimes: runtimes.iter().map(|r| r.to_string()).collect(),
            devices,
            reported: Vec::new(),
            desired: DesiredState::default(),
        }
    }

    #[test]
    fn the_fleet_and_catalog_map_into_the_engine_input() {
        let catalog = catalog();
        let mut mig = device(0, "GPU-mig", "NVIDIA A100", "A100-80GB", Some(1 << 30));
        mig.facts.details.mig = Some(MigView {
            enabled: true,
            pending_enabled: true,
            instances: vec![MigInstanceView {
                uuid: "MIG-1".into(),
                profile: "3g.40gb".into(),
                memory_bytes: 40 << 30,
                hardware_class: "A100-80GB-MIG-3g.40gb".into(),
                ..MigInstanceView::default()
            }],
        });
        let fleet = vec![
            node(
                "a",
                NodeStatus::Ready,
                vec![
                    device(0, "GPU-0", "NVIDIA H100 80GB HBM3", "H100-80GB", Some(5 << 30)),
                    device(1, "GPU-1", "NVIDIA H100 80GB HBM3", "H100-80GB", Some(7 << 30)),
                ],
                &["vllm"],
            ),
            node("b", NodeStatus::Draining, vec![mig], &["sglang"]),
            FleetNode {
                registered: false,
                ..node("never-registered", NodeStatus::NotReady, vec![], &[])
            },
        ];
        let held = Replica {
            name: "qwen-1".into(),
            tenant: "research".into(),
            deployment: "qwen".into(),
            node: "a".into(),
            devices: vec!["GPU-0".into()],
            runtime: "vllm".into(),
            created: 1,
        };
        let (input, unit_class) = build_input(&fleet, &catalog, vec![held], 2, &|_, _| false);
        assert_eq!(
            input.nodes.len(),
            2,
            "a node that never registered has nothing to place on"
        );
        let a = &input.nodes[0];
        assert_eq!(a.state, NodeState::Ready);
        assert_eq!(a.devices[0].hardware_class, "big-nvidia", "the HardwareClass rules win");
        assert_eq!(
            a.devices[0].other_memory_used_bytes, None,
            "what our own replica uses is freed with it"
        );
        assert_eq!(a.devices[1].other_memory_used_bytes, Some(7 << 30));
        assert_eq!(a.devices[1].health, DeviceHealth::Degraded);
        assert!(a.devices[0].links[0].fabric);
        let b = &input.nodes[1];
        assert_eq!(b.state, NodeState::Draining);
        assert_eq!(
            b.devices[0].hardware_class, "A100-80GB",
            "no rule fits: the agent's class"
        );
        let instance = &input.classes["A100-80GB-MIG-3g.40gb"];
        assert!(
            (instance.relative_capacity - 0.5).abs() < 1e-9,
            "half the parent's memory, half its worth"
        );
        assert_eq!(unit_class["MIG-1"], "A100-80GB-MIG-3g.40gb");
        let tenant = &input.tenants[0];
        assert_eq!(tenant.guarantee, 2.0, "one big-nvidia GPU is worth 2 normalised GPUs");
        assert_eq!(tenant.limit, Some(8.0));
        let deployment = &input.deployments[0];
        assert_eq!(deployment.runtimes, ["vllm", "sglang"]);
        assert_eq!(deployment.gpu_memory_bytes, 10 << 30);
        let mut sized = catalog.deployments.values().next().unwrap().object.clone();
        sized.spec.resources.gpu_memory_gib = None;
        sized.spec.model.size_gib = Some(30.0);
        sized.spec.resources.gpus_per_replica = 2;
        assert_eq!(
            gpu_memory_bytes(&sized),
            15 << 30,
            "without gpuMemoryGiB the weights must fit"
        );
        assert_eq!(input.next_sequence, 2);

        let placement = placement::place(&input).unwrap();
        let names: Vec<&str> = placement.replicas.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(names, ["a", "a"], "the draining node takes nothing new");
    }

    #[test]
    fn usage_counts_running_replicas_per_gpu_and_class_and_not_on_lost_nodes() {
        let mut reconciler = Reconciler {
            placed: Vec::new(),
            next_sequence: 1,
            surging: BTreeMap::new(),
            last_summary: HashMap::new(),
            last_usage_at: None,
            last_flush: Instant::now(),
            adopted_logged: BTreeSet::new(),
            grace_until: Instant::now(),
            waiting_logged: false,
        };
        let status = |name: &str, phase, gpus: &[&str]| ReplicaStatus {
            name: name.into(),
            tenant: "research".into(),
            deployment: "qwen".into(),
            phase,
            gpus: gpus.iter().map(|g| g.to_string()).collect(),
            ..ReplicaStatus::default()
        };
        let mut ready = node("a", NodeStatus::Ready, vec![], &[]);
        ready.reported = vec![
            status("two-gpus", ReplicaPhase::Ready, &["G0", "G1"]),
            status("crashing", ReplicaPhase::CrashLoop, &["G2"]),
        ];
        let mut lost = node("b", NodeStatus::NotReady, vec![], &[]);
        lost.reported = vec![status("stale", ReplicaPhase::Ready, &["G3"])];
        let fleet = vec![ready, lost];
        let classes: HashMap<String, String> = [("G0", "H100-80GB"), ("G1", "H100-80GB"), ("G2", "H100-80GB")]
            .into_iter()
            .map(|(u, c)| (u.to_string(), c.to_string()))
            .collect();
        let statuses: HashMap<String, NodeStatus> = fleet.iter().map(|f| (f.name.clone(), f.status)).collect();
        let t0 = Instant::now();
        assert!(
            reconciler.account(&fleet, &classes, &statuses, t0).is_empty(),
            "the first pass starts the clock"
        );
        let usage = reconciler.account(&fleet, &classes, &statuses, t0 + Duration::from_secs(2));
        let total: f64 = usage.values().sum();
        assert!(
            (total - 4.0).abs() < 1e-9,
            "2 GPUs for 2 s; crash loops and lost nodes count nothing: {usage:?}"
        );
        assert!(usage
            .keys()
            .all(|(tenant, class, _)| tenant == "research" && class == "H100-80GB"));
        let usage = reconciler.account(&fleet, &classes, &statuses, t0 + Duration::from_secs(60));
        let total: f64 = usage.values().sum();
        assert!(
            (total - 2.0 * MAX_USAGE_STEP.as_secs_f64()).abs() < 1e-9,
            "a stall is not billed: {usage:?}"
        );
    }

    #[test]
    fn replica_sequence_comes_from_the_name() {
        assert_eq!(created_of("qwen-7b-12"), 12);
        assert_eq!(created_of("adopted"), 0);
    }
}
