//! The placement pass itself. See the module documentation of [`super`] for the rules.

use std::{
    cmp::{Ordering, Reverse},
    collections::{BTreeSet, HashMap, HashSet},
    ops::Range,
};

use super::{
    fairness::{fair_shares, Claim},
    gang::{bits, linked_set, lowest, MAX_UNITS_PER_NODE},
    model::{Deployment, DeviceHealth, Node, NodeState, PlacementInput, QuotaMode, Replica, Tenant},
    outcome::{
        Action, DeploymentExplanation, FairShareDetail, Mismatch, NodeVerdict, Placement, Reason, StopReason,
        TenantShare,
    },
    PlacementError,
};

/// Slack for comparisons of sums of normalised capacities.
const EPSILON: f64 = 1e-9;

/// The fill/reclaim rounds of one pass stop after this many, converged or not. A pass
/// converges in two or three rounds (a round that places or reclaims nothing ends it); the
/// bound only guards against a cycle the rules are meant to exclude.
const MAX_ROUNDS: usize = 64;

/// Runs one placement pass.
pub(super) fn run(input: &PlacementInput) -> Result<Placement, PlacementError> {
    let mut engine = Engine::new(input)?;
    engine.keep_current();
    engine.trim_above_max();
    engine.enforce_limits();
    for _ in 0..MAX_ROUNDS {
        engine.refresh_shares();
        let mut progress = engine.fill(Phase::Min);
        progress |= engine.fill(Phase::Elastic);
        progress |= engine.reclaim();
        if !progress {
            break;
        }
    }
    engine.refresh_shares();
    Ok(engine.finish())
}

struct ClassInfo<'a> {
    name: &'a str,
    capacity: f64,
    /// `capacity` and the price per hour in millionths, for exact comparisons.
    capacity_micro: u64,
    price_micro: u64,
}

impl<'a> ClassInfo<'a> {
    fn new(name: &'a str, capacity: f64, price: f64) -> Self {
        ClassInfo {
            name,
            capacity,
            capacity_micro: micro(capacity),
            price_micro: micro(price),
        }
    }
}

/// One schedulable unit: a whole device, or a MIG instance.
struct Unit<'a> {
    node: usize,
    uuid: &'a str,
    class: usize,
    capacity: f64,
    /// Memory a replica gets on the unit: its total less what others use.
    free_memory: u64,
    health: DeviceHealth,
    /// A MIG instance (never part of a multi-device replica).
    mig: bool,
    holder: Option<usize>,
}

struct NodeInfo<'a> {
    spec: &'a Node,
    units: Range<usize>,
    /// By unit offset on the node: the units linked to it by a fabric (NVLink, xGMI).
    adjacency: Vec<u128>,
    /// Healthy units, by offset.
    healthy: u128,
    /// Each class present on the node, with its units by offset.
    classes: Vec<(usize, u128)>,
    /// Live replicas per deployment on the node.
    deployment_counts: Vec<(usize, u32)>,
    /// Units that are neither held nor unhealthy.
    free_units: usize,
    /// Live replicas on the node (GPU and CPU).
    replicas: Vec<usize>,
}

struct TenantInfo<'a> {
    spec: &'a Tenant,
    usage: f64,
    demand: f64,
    fair: f64,
}

impl TenantInfo<'_> {
    fn below_guarantee(&self) -> bool {
        self.usage < self.spec.guarantee - EPSILON
    }

    fn enforced_limit(&self) -> Option<f64> {
        match self.spec.quota_mode {
            QuotaMode::Enforce => self.spec.limit,
            QuotaMode::DryRun => None,
        }
    }
}

struct DeploymentInfo<'a> {
    spec: &'a Deployment,
    tenant: usize,
    /// By class index.
    allowed: Vec<bool>,
    /// By class index: position in the preferred list, `u32::MAX` when not preferred.
    preferred: Vec<u32>,
    /// By class index: the class's place in the order units are tried in (preferred, then
    /// smallest, then cheapest, then by index).
    class_rank: Vec<u32>,
    /// Index into [`Engine::runtime_nodes`].
    runtime_nodes: usize,
    /// Size of one replica at its smallest eligible size anywhere (for demand).
    nominal_cost: f64,
    live: u32,
    /// Names of replicas stopped for a reason that wants a replacement, in stop order.
    replaced: Vec<String>,
    blocked: bool,
}

struct LiveReplica {
    name: String,
    deployment: usize,
    node: usize,
    units: Vec<usize>,
    runtime: String,
    created: u64,
    cost: f64,
    /// Placed in this pass (its `Place` action can still be withdrawn).
    new: bool,
    /// On a draining or lost node: kept until a replacement is placed, and counted in no
    /// replica count, usage or capacity meanwhile.
    displaced: bool,
    removed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Replicas up to `min`.
    Min,
    /// Replicas up to `max`.
    Elastic,
}

/// A candidate's rank among nodes; smaller is better, compared field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Score {
    degraded: bool,
    pcie: bool,
    preferred_rank: u32,
    cost_micro: u64,
    price_micro: u64,
    empty_node: bool,
    same_deployment_here: u32,
    free_units_left: usize,
    node: usize,
}

#[derive(Debug)]
struct Candidate {
    node: usize,
    /// By offset on the node.
    units: u128,
    runtime: usize,
    cost: f64,
    score: Score,
}

#[derive(Debug, Default)]
struct DeviceCounts {
    unhealthy: u32,
    class: u32,
    memory: u32,
    largest_free_memory: u64,
    mig: u32,
    held: u32,
    eligible_free: u32,
}

#[derive(Debug)]
enum Rejection {
    Unschedulable(NodeState),
    Runtime,
    /// Fewer free units than needed (fast path, no detail).
    Full,
    Devices(DeviceCounts),
    /// Enough eligible devices, but not of one class.
    NoSingleClassSet,
    /// Enough eligible devices of one class, but no linked set, and one is required.
    NoLinkedSet,
    Quota {
        usage: f64,
        cost: f64,
        limit: f64,
    },
}

/// What a unit is to a deployment.
enum UnitFit {
    Unhealthy,
    ClassNotAllowed,
    TooLittleMemory(u64),
    MigInGang,
    Held(usize),
    Free,
}

fn micro(value: f64) -> u64 {
    (value * 1e6).round().max(0.0) as u64
}

fn milli(value: f64) -> u64 {
    (value * 1e3).round().max(0.0) as u64
}

struct Engine<'a> {
    input: &'a PlacementInput,
    classes: Vec<ClassInfo<'a>>,
    units: Vec<Unit<'a>>,
    unit_by_uuid: HashMap<&'a str, usize>,
    nodes: Vec<NodeInfo<'a>>,
    node_by_name: HashMap<&'a str, usize>,
    tenants: Vec<TenantInfo<'a>>,
    deployments: Vec<DeploymentInfo<'a>>,
    deployment_by_key: HashMap<(&'a str, &'a str), usize>,
    replicas: Vec<LiveReplica>,
    /// For each distinct runtime list: the ready nodes that support one of its runtimes,
    /// with the index of the first supported.
    runtime_nodes: Vec<Vec<(usize, usize)>>,
    names: HashSet<String>,
    actions: Vec<Action>,
    next_sequence: u64,
    capacity: f64,
}

/// Class names to indices; a class not in the input's table counts as relative capacity
/// 1.0 and price 0.
struct ClassTable<'a> {
    classes: Vec<ClassInfo<'a>>,
    index: HashMap<&'a str, usize>,
}

impl<'a> ClassTable<'a> {
    fn new(input: &'a PlacementInput) -> Result<Self, PlacementError> {
        let mut table = ClassTable {
            classes: Vec::new(),
            index: HashMap::new(),
        };
        for (name, class) in &input.classes {
            if !(class.relative_capacity.is_finite() && class.relative_capacity > 0.0) {
                return Err(PlacementError::InvalidRelativeCapacity {
                    class: name.clone(),
                    value: class.relative_capacity,
                });
            }
            table.index.insert(name, table.classes.len());
            table
                .classes
                .push(ClassInfo::new(name, class.relative_capacity, class.price_per_gpu_hour));
        }
        Ok(table)
    }

    fn intern(&mut self, name: &'a str) -> usize {
        let classes = &mut self.classes;
        *self.index.entry(name).or_insert_with(|| {
            classes.push(ClassInfo::new(name, 1.0, 0.0));
            classes.len() - 1
        })
    }
}

/// The fleet, indexed: nodes by name order, and their units.
struct Fleet<'a> {
    nodes: Vec<NodeInfo<'a>>,
    node_by_name: HashMap<&'a str, usize>,
    units: Vec<Unit<'a>>,
    unit_by_uuid: HashMap<&'a str, usize>,
    /// Every UUID, MIG parents included.
    seen_uuids: HashSet<&'a str>,
}

impl<'a> Fleet<'a> {
    fn new(input: &'a PlacementInput, classes: &mut ClassTable<'a>) -> Result<Self, PlacementError> {
        let mut sorted: Vec<&'a Node> = input.nodes.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut fleet = Fleet {
            nodes: Vec::with_capacity(sorted.len()),
            node_by_name: HashMap::new(),
            units: Vec::new(),
            unit_by_uuid: HashMap::new(),
            seen_uuids: HashSet::new(),
        };
        for node in sorted {
            if fleet.node_by_name.insert(&node.name, fleet.nodes.len()).is_some() {
                return Err(PlacementError::DuplicateNode {
                    node: node.name.clone(),
                });
            }
            fleet.add_node(node, classes)?;
        }
        Ok(fleet)
    }

    fn add_node(&mut self, node: &'a Node, classes: &mut ClassTable<'a>) -> Result<(), PlacementError> {
        let node_index = self.nodes.len();
        let first_unit = self.units.len();
        let mut devices: Vec<_> = node.devices.iter().collect();
        devices.sort_by_key(|device| device.index);
        let mut offset_by_index: HashMap<u32, usize> = HashMap::new();
        for device in &devices {
            if !self.seen_uuids.insert(&device.uuid) {
                return Err(PlacementError::DuplicateDevice {
                    uuid: device.uuid.clone(),
                });
            }
            match &device.mig {
                Some(instances) => {
                    for instance in instances {
                        if !self.seen_uuids.insert(&instance.uuid) {
                            return Err(PlacementError::DuplicateDevice {
                                uuid: instance.uuid.clone(),
                            });
                        }
                        let class = classes.intern(&instance.hardware_class);
                        let info = &classes.classes[class];
                        self.unit_by_uuid.insert(&instance.uuid, self.units.len());
                        self.units.push(Unit {
                            node: node_index,
                            uuid: &instance.uuid,
                            class,
                            capacity: info.capacity,
                            free_memory: instance.memory_bytes,
                            health: device.health,
                            mig: true,
                            holder: None,
                        });
                    }
                }
                None => {
                    let class = classes.intern(&device.hardware_class);
                    let info = &classes.classes[class];
                    offset_by_index.insert(device.index, self.units.len() - first_unit);
                    self.unit_by_uuid.insert(&device.uuid, self.units.len());
                    self.units.push(Unit {
                        node: node_index,
                        uuid: &device.uuid,
                        class,
                        capacity: info.capacity,
                        free_memory: device
                            .memory_bytes
                            .saturating_sub(device.other_memory_used_bytes.unwrap_or(0)),
                        health: device.health,
                        mig: false,
                        holder: None,
                    });
                }
            }
        }
        let range = first_unit..self.units.len();
        if range.len() > MAX_UNITS_PER_NODE {
            return Err(PlacementError::TooManyUnits {
                node: node.name.clone(),
                units: range.len(),
            });
        }
        let mut adjacency = vec![0u128; range.len()];
        for device in devices.iter().filter(|device| device.mig.is_none()) {
            let offset = offset_by_index[&device.index];
            for link in device.links.iter().filter(|link| link.fabric) {
                if let Some(&peer) = offset_by_index.get(&link.peer).filter(|&&peer| peer != offset) {
                    adjacency[offset] |= 1 << peer;
                    adjacency[peer] |= 1 << offset;
                }
            }
        }
        let mut healthy = 0u128;
        let mut node_classes: Vec<(usize, u128)> = Vec::new();
        for (offset, unit) in self.units[range.clone()].iter().enumerate() {
            if unit.health == DeviceHealth::Healthy {
                healthy |= 1 << offset;
            }
            match node_classes.iter_mut().find(|(class, _)| *class == unit.class) {
                Some((_, mask)) => *mask |= 1 << offset,
                None => node_classes.push((unit.class, 1 << offset)),
            }
        }
        let free_units = self.units[range.clone()]
            .iter()
            .filter(|unit| unit.health != DeviceHealth::Unhealthy)
            .count();
        self.nodes.push(NodeInfo {
            spec: node,
            units: range,
            adjacency,
            healthy,
            classes: node_classes,
            deployment_counts: Vec::new(),
            free_units,
            replicas: Vec::new(),
        });
        Ok(())
    }
}

fn index_tenants(input: &PlacementInput) -> Result<Vec<TenantInfo<'_>>, PlacementError> {
    let mut sorted: Vec<&Tenant> = input.tenants.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut tenants: Vec<TenantInfo<'_>> = Vec::with_capacity(sorted.len());
    for tenant in sorted {
        if tenants.last().is_some_and(|last| last.spec.name == tenant.name) {
            return Err(PlacementError::DuplicateTenant {
                tenant: tenant.name.clone(),
            });
        }
        if !(tenant.weight.is_finite() && tenant.weight > 0.0) {
            return Err(PlacementError::InvalidWeight {
                tenant: tenant.name.clone(),
                weight: tenant.weight,
            });
        }
        let guarantee_ok = tenant.guarantee.is_finite() && tenant.guarantee >= 0.0;
        let limit_ok = tenant
            .limit
            .is_none_or(|limit| limit.is_finite() && limit >= tenant.guarantee);
        if !(guarantee_ok && limit_ok) {
            return Err(PlacementError::InvalidQuota {
                tenant: tenant.name.clone(),
                guarantee: tenant.guarantee,
                limit: tenant.limit,
            });
        }
        tenants.push(TenantInfo {
            spec: tenant,
            usage: 0.0,
            demand: 0.0,
            fair: 0.0,
        });
    }
    Ok(tenants)
}

type DeploymentIndex<'a> = (Vec<DeploymentInfo<'a>>, HashMap<(&'a str, &'a str), usize>);

/// Deployments in creation order, with their class tables filled in (so every class
/// must be interned before).
fn index_deployments<'a>(
    input: &'a PlacementInput,
    tenants: &[TenantInfo<'a>],
    classes: &mut ClassTable<'a>,
) -> Result<DeploymentIndex<'a>, PlacementError> {
    let tenant_index: HashMap<&str, usize> = tenants
        .iter()
        .enumerate()
        .map(|(index, tenant)| (tenant.spec.name.as_str(), index))
        .collect();
    let mut sorted: Vec<&'a Deployment> = input.deployments.iter().collect();
    sorted.sort_by(|a, b| (a.created, &a.tenant, &a.name).cmp(&(b.created, &b.tenant, &b.name)));
    let mut deployments: Vec<DeploymentInfo<'a>> = Vec::with_capacity(sorted.len());
    let mut by_key: HashMap<(&'a str, &'a str), usize> = HashMap::new();
    for deployment in sorted {
        let Some(&tenant) = tenant_index.get(deployment.tenant.as_str()) else {
            return Err(PlacementError::UnknownTenant {
                tenant: deployment.tenant.clone(),
                deployment: deployment.name.clone(),
            });
        };
        if deployment.min_replicas > deployment.max_replicas {
            return Err(PlacementError::InvalidReplicaRange {
                tenant: deployment.tenant.clone(),
                deployment: deployment.name.clone(),
                min: deployment.min_replicas,
                max: deployment.max_replicas,
            });
        }
        if by_key
            .insert((&deployment.tenant, &deployment.name), deployments.len())
            .is_some()
        {
            return Err(PlacementError::DuplicateDeployment {
                tenant: deployment.tenant.clone(),
                deployment: deployment.name.clone(),
            });
        }
        for name in deployment.allowed_classes.iter().chain(&deployment.preferred_classes) {
            classes.intern(name);
        }
        deployments.push(DeploymentInfo {
            spec: deployment,
            tenant,
            allowed: Vec::new(),
            preferred: Vec::new(),
            class_rank: Vec::new(),
            runtime_nodes: 0,
            nominal_cost: 0.0,
            live: 0,
            replaced: Vec::new(),
            blocked: false,
        });
    }
    let classes = &*classes;
    for deployment in &mut deployments {
        let spec = deployment.spec;
        let count = classes.classes.len();
        deployment.allowed = vec![spec.allowed_classes.is_empty(); count];
        for name in &spec.allowed_classes {
            deployment.allowed[classes.index[name.as_str()]] = true;
        }
        deployment.preferred = vec![u32::MAX; count];
        for (rank, name) in spec.preferred_classes.iter().enumerate().rev() {
            deployment.preferred[classes.index[name.as_str()]] = rank as u32;
        }
        let mut order: Vec<usize> = (0..count).collect();
        order.sort_by_key(|&class| {
            let info = &classes.classes[class];
            (
                deployment.preferred[class],
                info.capacity_micro,
                info.price_micro,
                class,
            )
        });
        deployment.class_rank = vec![0; count];
        for (rank, class) in order.into_iter().enumerate() {
            deployment.class_rank[class] = rank as u32;
        }
    }
    Ok((deployments, by_key))
}

/// For each distinct runtime list of the deployments, the ready nodes that run one of its
/// runtimes with the first they run; sets each deployment's index into it.
fn index_runtime_nodes(deployments: &mut [DeploymentInfo<'_>], nodes: &[NodeInfo<'_>]) -> Vec<Vec<(usize, usize)>> {
    let mut lists: HashMap<&[String], usize> = HashMap::new();
    let mut runtime_nodes: Vec<Vec<(usize, usize)>> = Vec::new();
    for deployment in deployments {
        let runtimes = deployment.spec.runtimes.as_slice();
        deployment.runtime_nodes = *lists.entry(runtimes).or_insert_with(|| {
            let supporting = nodes
                .iter()
                .enumerate()
                .filter(|(_, node)| node.spec.state == NodeState::Ready)
                .filter_map(|(index, node)| {
                    let first = runtimes.iter().position(|runtime| node.spec.runtimes.contains(runtime));
                    first.map(|runtime| (index, runtime))
                })
                .collect();
            runtime_nodes.push(supporting);
            runtime_nodes.len() - 1
        });
    }
    runtime_nodes
}

impl<'a> Engine<'a> {
    fn new(input: &'a PlacementInput) -> Result<Self, PlacementError> {
        let mut classes = ClassTable::new(input)?;
        let tenants = index_tenants(input)?;
        let fleet = Fleet::new(input, &mut classes)?;
        let (mut deployments, deployment_by_key) = index_deployments(input, &tenants, &mut classes)?;
        let runtime_nodes = index_runtime_nodes(&mut deployments, &fleet.nodes);
        let mut names = HashSet::new();
        for replica in &input.current {
            if !names.insert(replica.name.clone()) {
                return Err(PlacementError::DuplicateReplica {
                    replica: replica.name.clone(),
                });
            }
        }
        let mut engine = Engine {
            input,
            classes: classes.classes,
            units: fleet.units,
            unit_by_uuid: fleet.unit_by_uuid,
            nodes: fleet.nodes,
            node_by_name: fleet.node_by_name,
            tenants,
            deployments,
            deployment_by_key,
            replicas: Vec::new(),
            runtime_nodes,
            names,
            actions: Vec::new(),
            next_sequence: input.next_sequence,
            capacity: 0.0,
        };
        for index in 0..engine.deployments.len() {
            engine.deployments[index].nominal_cost = engine.nominal_cost(index);
        }
        Ok(engine)
    }

    /// A replica's size on the smallest unit that could ever take it (ignoring who holds
    /// what), or on a relative-capacity-1 device when none could.
    fn nominal_cost(&self, deployment: usize) -> f64 {
        let spec = self.deployments[deployment].spec;
        let gpus = spec.gpus_per_replica as f64;
        if spec.gpus_per_replica == 0 {
            return 0.0;
        }
        let smallest = (0..self.units.len())
            .filter(|&unit| matches!(self.unit_fit(deployment, unit, &[]), UnitFit::Free | UnitFit::Held(_)))
            .map(|unit| self.units[unit].capacity)
            .fold(f64::INFINITY, f64::min);
        if smallest.is_finite() {
            gpus * smallest
        } else {
            gpus
        }
    }

    /// What `unit` is to `deployment`, with the replicas in `freed` counted as gone.
    #[inline]
    fn unit_fit(&self, deployment: usize, unit: usize, freed: &[usize]) -> UnitFit {
        let info = &self.deployments[deployment];
        let unit_info = &self.units[unit];
        if unit_info.health == DeviceHealth::Unhealthy {
            return UnitFit::Unhealthy;
        }
        if !info.allowed[unit_info.class] {
            return UnitFit::ClassNotAllowed;
        }
        if unit_info.free_memory < info.spec.gpu_memory_bytes {
            return UnitFit::TooLittleMemory(unit_info.free_memory);
        }
        if info.spec.gpus_per_replica > 1 && unit_info.mig {
            return UnitFit::MigInGang;
        }
        match unit_info.holder.filter(|holder| !freed.contains(holder)) {
            Some(holder) => UnitFit::Held(holder),
            None => UnitFit::Free,
        }
    }

    // ----- Current replicas -----

    /// Keeps every current replica that is still valid where it is; stops the others.
    fn keep_current(&mut self) {
        let mut current: Vec<&'a Replica> = self.input.current.iter().collect();
        current.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        for replica in current {
            let deployment = self
                .deployment_by_key
                .get(&(replica.tenant.as_str(), replica.deployment.as_str()));
            let Some(&deployment) = deployment else {
                self.stop_unkept(replica, None, StopReason::DeploymentRemoved);
                continue;
            };
            match self.check_current(replica, deployment) {
                Ok((node, units)) => {
                    let cost = units.iter().map(|&unit| self.units[unit].capacity).sum();
                    let displaced = matches!(self.nodes[node].spec.state, NodeState::Draining | NodeState::NotReady);
                    self.add_replica(LiveReplica {
                        name: replica.name.clone(),
                        deployment,
                        node,
                        units,
                        runtime: replica.runtime.clone(),
                        created: replica.created,
                        cost,
                        new: false,
                        displaced,
                        removed: false,
                    });
                }
                Err(reason) => self.stop_unkept(replica, Some(deployment), reason),
            }
        }
    }

    fn check_current(&self, replica: &Replica, deployment: usize) -> Result<(usize, Vec<usize>), StopReason> {
        let spec = self.deployments[deployment].spec;
        let Some(&node) = self.node_by_name.get(replica.node.as_str()) else {
            return Err(StopReason::NodeMissing);
        };
        let node_spec = self.nodes[node].spec;
        let mut units = Vec::with_capacity(replica.devices.len());
        for uuid in &replica.devices {
            let unit = self
                .unit_by_uuid
                .get(uuid.as_str())
                .copied()
                .filter(|&unit| self.units[unit].node == node);
            let Some(unit) = unit else {
                return Err(StopReason::DeviceMissing { uuid: uuid.clone() });
            };
            let unit_info = &self.units[unit];
            if unit_info.health == DeviceHealth::Unhealthy {
                return Err(StopReason::DeviceUnhealthy { uuid: uuid.clone() });
            }
            if let Some(holder) = unit_info.holder {
                return Err(StopReason::DeviceConflict {
                    uuid: uuid.clone(),
                    holder: self.replicas[holder].name.clone(),
                });
            }
            if units.contains(&unit) {
                return Err(StopReason::DeviceConflict {
                    uuid: uuid.clone(),
                    holder: replica.name.clone(),
                });
            }
            units.push(unit);
        }
        if units.len() != spec.gpus_per_replica as usize {
            let mismatch = Mismatch::DeviceCount {
                has: units.len() as u32,
                wants: spec.gpus_per_replica,
            };
            return Err(StopReason::NoLongerEligible { mismatch });
        }
        let info = &self.deployments[deployment];
        if let Some(&unit) = units.iter().find(|&&unit| !info.allowed[self.units[unit].class]) {
            let class = self.classes[self.units[unit].class].name.to_owned();
            return Err(StopReason::NoLongerEligible {
                mismatch: Mismatch::ClassNotAllowed { class },
            });
        }
        if units.len() > 1 && units.iter().any(|&unit| self.units[unit].mig) {
            return Err(StopReason::NoLongerEligible {
                mismatch: Mismatch::MigInGang,
            });
        }
        if !spec.runtimes.contains(&replica.runtime) || !node_spec.runtimes.contains(&replica.runtime) {
            let mismatch = Mismatch::Runtime {
                runtime: replica.runtime.clone(),
            };
            return Err(StopReason::NoLongerEligible { mismatch });
        }
        Ok((node, units))
    }

    /// Stops a current replica that was never taken in.
    fn stop_unkept(&mut self, replica: &Replica, deployment: Option<usize>, reason: StopReason) {
        if let Some(deployment) = deployment.filter(|_| reason.is_replaced()) {
            self.deployments[deployment].replaced.push(replica.name.clone());
        }
        self.actions.push(Action::Stop {
            replica: replica.clone(),
            reason,
        });
    }

    /// Stops the replicas of deployments above their maximum: displaced ones first (they
    /// need no replacement then), then the newest.
    fn trim_above_max(&mut self) {
        for deployment in 0..self.deployments.len() {
            let max = self.deployments[deployment].spec.max_replicas;
            let mut displaced = self.live_of(|replica| replica.deployment == deployment && replica.displaced);
            displaced.sort_by_key(|&index| (Reverse(self.replicas[index].created), self.replicas[index].name.clone()));
            for index in displaced {
                if self.deployments[deployment].live + self.displaced_count(deployment) <= max {
                    break;
                }
                let reason = self.displacement_reason(index);
                self.remove_replica(index, reason);
            }
            while self.deployments[deployment].live > max {
                let newest = self
                    .live_of(|replica| replica.deployment == deployment && !replica.displaced)
                    .into_iter()
                    .max_by_key(|&index| {
                        let replica = &self.replicas[index];
                        (replica.created, replica.name.clone())
                    });
                let Some(newest) = newest else { break };
                self.remove_replica(newest, StopReason::AboveMaxReplicas { max });
            }
        }
    }

    /// Stops replicas of `enforce` tenants above their limit: newest elastic ones first.
    fn enforce_limits(&mut self) {
        for tenant in 0..self.tenants.len() {
            let Some(limit) = self.tenants[tenant].enforced_limit() else {
                continue;
            };
            while self.tenants[tenant].usage > limit + EPSILON {
                let victim = self
                    .live_of(|replica| {
                        self.deployments[replica.deployment].tenant == tenant
                            && replica.cost > 0.0
                            && !replica.displaced
                    })
                    .into_iter()
                    .max_by_key(|&index| {
                        let replica = &self.replicas[index];
                        let deployment = &self.deployments[replica.deployment];
                        let elastic = deployment.live > deployment.spec.min_replicas;
                        (elastic, replica.created, replica.name.clone())
                    });
                let Some(victim) = victim else { break };
                let reason = StopReason::OverLimit {
                    usage_milli: milli(self.tenants[tenant].usage),
                    limit_milli: milli(limit),
                };
                self.remove_replica(victim, reason);
            }
        }
    }

    fn displaced_count(&self, deployment: usize) -> u32 {
        self.live_of(|replica| replica.deployment == deployment && replica.displaced)
            .len() as u32
    }

    fn displacement_reason(&self, index: usize) -> StopReason {
        match self.nodes[self.replicas[index].node].spec.state {
            NodeState::NotReady => StopReason::NodeNotReady,
            _ => StopReason::NodeDraining,
        }
    }

    fn live_of(&self, predicate: impl Fn(&LiveReplica) -> bool) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|&index| !self.replicas[index].removed && predicate(&self.replicas[index]))
            .collect()
    }

    // ----- Shares -----

    /// Recomputes capacity, usage, demand and fair shares from the current state.
    fn refresh_shares(&mut self) {
        self.capacity = self
            .units
            .iter()
            .filter(|unit| {
                unit.holder.is_some_and(|holder| !self.replicas[holder].displaced)
                    || (unit.health != DeviceHealth::Unhealthy && self.nodes[unit.node].spec.state == NodeState::Ready)
            })
            .map(|unit| unit.capacity)
            .sum();
        for tenant in &mut self.tenants {
            tenant.usage = 0.0;
            tenant.demand = 0.0;
        }
        for replica in self
            .replicas
            .iter()
            .filter(|replica| !replica.removed && !replica.displaced)
        {
            let tenant = self.deployments[replica.deployment].tenant;
            self.tenants[tenant].usage += replica.cost;
            self.tenants[tenant].demand += replica.cost;
        }
        for deployment in &self.deployments {
            let pending = deployment.spec.max_replicas.saturating_sub(deployment.live);
            self.tenants[deployment.tenant].demand += f64::from(pending) * deployment.nominal_cost;
        }
        let claims: Vec<Claim> = self
            .tenants
            .iter()
            .map(|tenant| {
                let floor = tenant.spec.guarantee.min(tenant.demand);
                let reachable = tenant
                    .enforced_limit()
                    .map_or(tenant.demand, |limit| tenant.demand.min(limit));
                Claim {
                    weight: tenant.spec.weight,
                    floor,
                    ceiling: reachable.max(floor),
                }
            })
            .collect();
        let shares = fair_shares(self.capacity, &claims);
        for (tenant, share) in self.tenants.iter_mut().zip(shares) {
            tenant.fair = share;
        }
    }

    // ----- Filling -----

    /// Places replicas of `phase` one at a time, always for the tenant furthest behind:
    /// below its guarantee first, then by usage over weight (progressive filling, the
    /// usual way to compute weighted dominant-resource fairness). Returns whether
    /// anything was placed.
    fn fill(&mut self, phase: Phase) -> bool {
        for deployment in &mut self.deployments {
            deployment.blocked = false;
        }
        let mut progress = false;
        loop {
            let next = (0..self.deployments.len())
                .filter(|&index| {
                    let deployment = &self.deployments[index];
                    !deployment.blocked && Self::pending(deployment, phase) > 0
                })
                .min_by(|&a, &b| self.fill_order(a, b));
            let Some(deployment) = next else { break };
            match self.best_candidate(deployment) {
                Some(candidate) => {
                    self.commit(deployment, candidate);
                    progress = true;
                }
                None => self.deployments[deployment].blocked = true,
            }
        }
        progress
    }

    fn pending(deployment: &DeploymentInfo<'_>, phase: Phase) -> u32 {
        let target = match phase {
            Phase::Min => deployment.spec.min_replicas,
            Phase::Elastic => deployment.spec.max_replicas,
        };
        target.saturating_sub(deployment.live)
    }

    fn fill_order(&self, a: usize, b: usize) -> Ordering {
        let (first, second) = (&self.deployments[a], &self.deployments[b]);
        let (first_tenant, second_tenant) = (&self.tenants[first.tenant], &self.tenants[second.tenant]);
        (!first_tenant.below_guarantee())
            .cmp(&!second_tenant.below_guarantee())
            .then_with(|| {
                (first_tenant.usage / first_tenant.spec.weight)
                    .total_cmp(&(second_tenant.usage / second_tenant.spec.weight))
            })
            .then_with(|| first.tenant.cmp(&second.tenant))
            .then_with(|| first.live.cmp(&second.live))
            .then_with(|| a.cmp(&b))
    }

    fn best_candidate(&self, deployment: usize) -> Option<Candidate> {
        let mut best: Option<Candidate> = None;
        for &(node, runtime) in &self.runtime_nodes[self.deployments[deployment].runtime_nodes] {
            if let Ok(candidate) = self.evaluate_on(deployment, node, runtime, &[], false) {
                if best.as_ref().is_none_or(|best| candidate.score < best.score) {
                    best = Some(candidate);
                }
            }
        }
        best
    }

    /// Whether `deployment` can place one replica on `node` (with the replicas in `freed`
    /// counted as gone), and how well. With `detail`, skips the fast path so that a
    /// rejection carries its device counts.
    fn evaluate(&self, deployment: usize, node: usize, freed: &[usize], detail: bool) -> Result<Candidate, Rejection> {
        let node_spec = self.nodes[node].spec;
        if node_spec.state != NodeState::Ready {
            return Err(Rejection::Unschedulable(node_spec.state));
        }
        let runtime = self.deployments[deployment]
            .spec
            .runtimes
            .iter()
            .position(|runtime| node_spec.runtimes.contains(runtime))
            .ok_or(Rejection::Runtime)?;
        self.evaluate_on(deployment, node, runtime, freed, detail)
    }

    /// [`Self::evaluate`] on a ready node that runs the deployment's runtime `runtime`.
    fn evaluate_on(
        &self,
        deployment: usize,
        node: usize,
        runtime: usize,
        freed: &[usize],
        detail: bool,
    ) -> Result<Candidate, Rejection> {
        let info = &self.deployments[deployment];
        let node_info = &self.nodes[node];
        let gpus = info.spec.gpus_per_replica as usize;
        if !detail && freed.is_empty() && node_info.free_units < gpus {
            return Err(Rejection::Full);
        }

        let mut counts = DeviceCounts::default();
        let base = node_info.units.start;
        let mut eligible = 0u128;
        let mut best_single: Option<((bool, u32, u64), usize)> = None;
        let mut free_units = 0usize;
        for unit in node_info.units.clone() {
            let fit = self.unit_fit(deployment, unit, freed);
            let free = self.units[unit].holder.is_none_or(|holder| freed.contains(&holder));
            if free && !matches!(fit, UnitFit::Unhealthy) {
                free_units += 1;
            }
            match fit {
                UnitFit::Unhealthy => counts.unhealthy += 1,
                UnitFit::ClassNotAllowed => counts.class += 1,
                UnitFit::TooLittleMemory(free_memory) => {
                    counts.memory += 1;
                    counts.largest_free_memory = counts.largest_free_memory.max(free_memory);
                }
                UnitFit::MigInGang => counts.mig += 1,
                UnitFit::Held(_) => counts.held += 1,
                UnitFit::Free => {
                    counts.eligible_free += 1;
                    eligible |= 1 << (unit - base);
                    if gpus == 1 {
                        // Healthy, then preferred/smallest/cheapest class, then the least
                        // free memory (best fit), then device order.
                        let unit_info = &self.units[unit];
                        let key = (
                            unit_info.health == DeviceHealth::Degraded,
                            info.class_rank[unit_info.class],
                            unit_info.free_memory,
                        );
                        if best_single.is_none_or(|(best, _)| key < best) {
                            best_single = Some((key, unit));
                        }
                    }
                }
            }
        }
        if (counts.eligible_free as usize) < gpus {
            return Err(Rejection::Devices(counts));
        }

        let (units, pcie) = match (gpus, best_single) {
            (0, _) => (0, false),
            (1, Some((_, unit))) => (1 << (unit - base), false),
            _ => self.gang(deployment, node, eligible)?,
        };
        let mut cost = 0.0;
        let (mut cost_micro, mut price_micro) = (0u64, 0u64);
        let mut degraded = false;
        let mut preferred_rank = if gpus == 0 { 0 } else { u32::MAX };
        for offset in bits(units) {
            let unit_info = &self.units[base + offset];
            let class = &self.classes[unit_info.class];
            cost += class.capacity;
            cost_micro += class.capacity_micro;
            price_micro += class.price_micro;
            degraded |= unit_info.health == DeviceHealth::Degraded;
            preferred_rank = preferred_rank.min(info.preferred[unit_info.class]);
        }

        let tenant = &self.tenants[info.tenant];
        if let Some(limit) = tenant.enforced_limit() {
            if cost > 0.0 && tenant.usage + cost > limit + EPSILON {
                return Err(Rejection::Quota {
                    usage: tenant.usage,
                    cost,
                    limit,
                });
            }
        }
        let replicas_here = node_info
            .replicas
            .iter()
            .filter(|replica| !freed.contains(replica))
            .count();
        let score = Score {
            degraded,
            pcie,
            preferred_rank,
            cost_micro,
            price_micro,
            empty_node: replicas_here == 0,
            same_deployment_here: node_info
                .deployment_counts
                .iter()
                .find(|(other, _)| *other == deployment)
                .map_or(0, |(_, count)| *count),
            free_units_left: free_units.saturating_sub(gpus),
            node,
        };
        Ok(Candidate {
            node,
            units,
            runtime,
            cost,
            score,
        })
    }

    /// A device set for a multi-device replica among the `eligible` units of `node` (by
    /// offset), and whether it is PCIe-only. All devices of one class; healthy sets before
    /// sets with a degraded device, linked sets before PCIe sets, classes in the
    /// deployment's order (preferred, smallest, cheapest).
    fn gang(&self, deployment: usize, node: usize, eligible: u128) -> Result<(u128, bool), Rejection> {
        let info = &self.deployments[deployment];
        let gpus = info.spec.gpus_per_replica as usize;
        let node_info = &self.nodes[node];
        let mut groups: Vec<(u32, u128)> = node_info
            .classes
            .iter()
            .map(|&(class, mask)| (info.class_rank[class], mask & eligible))
            .filter(|&(_, mask)| mask.count_ones() as usize >= gpus)
            .collect();
        if groups.is_empty() {
            return Err(Rejection::NoSingleClassSet);
        }
        groups.sort_unstable();
        for filter in [node_info.healthy, u128::MAX] {
            for &(_, group) in &groups {
                if let Some(set) = linked_set(group & filter, gpus, &node_info.adjacency) {
                    return Ok((set, false));
                }
            }
            if !info.spec.require_linked_gpus {
                for &(_, group) in &groups {
                    if (group & filter).count_ones() as usize >= gpus {
                        return Ok((lowest(group & filter, gpus), true));
                    }
                }
            }
        }
        Err(Rejection::NoLinkedSet)
    }

    // ----- Changes -----

    fn add_replica(&mut self, replica: LiveReplica) -> usize {
        let index = self.replicas.len();
        for &unit in &replica.units {
            self.units[unit].holder = Some(index);
            if self.units[unit].health != DeviceHealth::Unhealthy {
                self.nodes[replica.node].free_units -= 1;
            }
        }
        self.nodes[replica.node].replicas.push(index);
        if replica.displaced {
            self.replicas.push(replica);
            return index;
        }
        let counts = &mut self.nodes[replica.node].deployment_counts;
        match counts
            .iter_mut()
            .find(|(deployment, _)| *deployment == replica.deployment)
        {
            Some((_, count)) => *count += 1,
            None => counts.push((replica.deployment, 1)),
        }
        let deployment = &mut self.deployments[replica.deployment];
        deployment.live += 1;
        self.tenants[deployment.tenant].usage += replica.cost;
        self.replicas.push(replica);
        index
    }

    fn remove_replica(&mut self, index: usize, reason: StopReason) {
        let replica = &mut self.replicas[index];
        replica.removed = true;
        let (node, deployment, cost, new, displaced) = (
            replica.node,
            replica.deployment,
            replica.cost,
            replica.new,
            replica.displaced,
        );
        for &unit in &replica.units {
            self.units[unit].holder = None;
            if self.units[unit].health != DeviceHealth::Unhealthy {
                self.nodes[node].free_units += 1;
            }
        }
        self.nodes[node].replicas.retain(|&other| other != index);
        if !displaced {
            let counts = &mut self.nodes[node].deployment_counts;
            if let Some((_, count)) = counts.iter_mut().find(|(other, _)| *other == deployment) {
                *count -= 1;
            }
            let info = &mut self.deployments[deployment];
            info.live -= 1;
            self.tenants[info.tenant].usage -= cost;
        }
        if new {
            // Placed in this pass: withdraw the placement instead of stopping it.
            let name = &self.replicas[index].name;
            self.actions
                .retain(|action| !matches!(action, Action::Place { replica, .. } if &replica.name == name));
        } else {
            if reason.is_replaced() && !displaced {
                let name = self.replicas[index].name.clone();
                self.deployments[deployment].replaced.push(name);
            }
            let replica = self.replica_view(index);
            self.actions.push(Action::Stop { replica, reason });
        }
    }

    fn commit(&mut self, deployment: usize, candidate: Candidate) {
        let spec = self.deployments[deployment].spec;
        let (name, created) = loop {
            let created = self.next_sequence;
            self.next_sequence += 1;
            let name = format!("{}-{}", spec.name, created);
            if self.names.insert(name.clone()) {
                break (name, created);
            }
        };
        let index = self.add_replica(LiveReplica {
            name,
            deployment,
            node: candidate.node,
            units: bits(candidate.units)
                .map(|offset| self.nodes[candidate.node].units.start + offset)
                .collect(),
            runtime: spec.runtimes[candidate.runtime].clone(),
            created,
            cost: candidate.cost,
            new: true,
            displaced: false,
            removed: false,
        });
        let replica = self.replica_view(index);
        self.actions.push(Action::Place {
            replica,
            replaces: None,
        });
    }

    fn replica_view(&self, index: usize) -> Replica {
        let replica = &self.replicas[index];
        let deployment = self.deployments[replica.deployment].spec;
        Replica {
            name: replica.name.clone(),
            tenant: deployment.tenant.clone(),
            deployment: deployment.name.clone(),
            node: self.nodes[replica.node].spec.name.clone(),
            devices: replica
                .units
                .iter()
                .map(|&unit| self.units[unit].uuid.to_owned())
                .collect(),
            runtime: replica.runtime.clone(),
            created: replica.created,
        }
    }

    // ----- Reclaim -----

    /// For tenants below their guarantee with pending replicas, takes capacity back from
    /// tenants above their fair share. Returns whether anything was reclaimed.
    fn reclaim(&mut self) -> bool {
        for deployment in &mut self.deployments {
            deployment.blocked = false;
        }
        let mut progress = false;
        loop {
            let next = (0..self.deployments.len())
                .filter(|&index| {
                    let deployment = &self.deployments[index];
                    !deployment.blocked
                        && Self::pending(deployment, Phase::Elastic) > 0
                        && deployment.spec.gpus_per_replica > 0
                        && self.tenants[deployment.tenant].below_guarantee()
                })
                .min_by(|&a, &b| {
                    let below_min = |index: usize| Self::pending(&self.deployments[index], Phase::Min) == 0;
                    below_min(a).cmp(&below_min(b)).then_with(|| self.fill_order(a, b))
                });
            let Some(deployment) = next else { break };
            if self.reclaim_for(deployment) {
                progress = true;
            } else {
                self.deployments[deployment].blocked = true;
            }
        }
        progress
    }

    /// Frees room for one replica of `deployment` on the node where that takes the least,
    /// and places it there.
    fn reclaim_for(&mut self, deployment: usize) -> bool {
        let tenant = self.deployments[deployment].tenant;
        let (usage, guarantee) = (self.tenants[tenant].usage, self.tenants[tenant].spec.guarantee);
        type PlanKey = (u8, usize, u64, Reverse<u64>, Score);
        let mut best: Option<(PlanKey, Vec<usize>, Candidate)> = None;
        for &(node, _) in &self.runtime_nodes[self.deployments[deployment].runtime_nodes] {
            let Some((victims, stage, candidate)) = self.plan_on(deployment, node) else {
                continue;
            };
            if usage + candidate.cost > guarantee + EPSILON {
                continue;
            }
            let freed_cost: f64 = victims.iter().map(|&victim| self.replicas[victim].cost).sum();
            let oldest = victims
                .iter()
                .map(|&victim| self.replicas[victim].created)
                .min()
                .unwrap_or(0);
            let key = (
                stage,
                victims.len(),
                micro(freed_cost),
                Reverse(oldest),
                candidate.score,
            );
            if best.as_ref().is_none_or(|(best_key, _, _)| key < *best_key) {
                best = Some((key, victims, candidate));
            }
        }
        let Some((_, victims, candidate)) = best else {
            return false;
        };
        let claimant = self.deployments[deployment].spec;
        for victim in victims {
            let reason = StopReason::Reclaimed {
                by_tenant: claimant.tenant.clone(),
                by_deployment: claimant.name.clone(),
            };
            self.remove_replica(victim, reason);
        }
        self.commit(deployment, candidate);
        true
    }

    /// The fewest victims on `node` (elastic replicas first, newest first) after which a
    /// replica of `deployment` fits there, the latest victim stage used (0: elastic only),
    /// and the resulting candidate.
    fn plan_on(&self, deployment: usize, node: usize) -> Option<(Vec<usize>, u8, Candidate)> {
        let claimant_tenant = self.deployments[deployment].tenant;
        let useful: Vec<usize> = self.nodes[node]
            .replicas
            .iter()
            .copied()
            .filter(|&replica| {
                let replica_info = &self.replicas[replica];
                self.deployments[replica_info.deployment].tenant != claimant_tenant
                    && replica_info
                        .units
                        .iter()
                        .any(|&unit| matches!(self.unit_fit(deployment, unit, &[replica]), UnitFit::Free))
            })
            .collect();
        if useful.is_empty() {
            return None;
        }
        let mut usage: HashMap<usize, f64> = HashMap::new();
        let mut live: HashMap<usize, u32> = HashMap::new();
        let mut freed: Vec<usize> = Vec::new();
        let mut stage = 0u8;
        loop {
            let next = useful
                .iter()
                .copied()
                .filter(|replica| !freed.contains(replica))
                .filter_map(|replica| {
                    let replica_info = &self.replicas[replica];
                    let owner = &self.deployments[replica_info.deployment];
                    let tenant = &self.tenants[owner.tenant];
                    let tenant_usage = usage.get(&owner.tenant).copied().unwrap_or(tenant.usage);
                    let above_fair_share = tenant_usage > tenant.fair + EPSILON;
                    let keeps_guarantee = tenant_usage - replica_info.cost >= tenant.spec.guarantee - EPSILON;
                    if !(above_fair_share && keeps_guarantee) {
                        return None;
                    }
                    let owner_live = live.get(&replica_info.deployment).copied().unwrap_or(owner.live);
                    let replica_stage = u8::from(owner_live <= owner.spec.min_replicas);
                    Some((
                        replica_stage,
                        Reverse(replica_info.created),
                        Reverse(replica_info.name.as_str()),
                        replica,
                    ))
                })
                .min()?;
            let (replica_stage, _, _, victim) = next;
            let victim_info = &self.replicas[victim];
            let owner = &self.deployments[victim_info.deployment];
            let owner_usage = usage.entry(owner.tenant).or_insert(self.tenants[owner.tenant].usage);
            *owner_usage -= victim_info.cost;
            *live.entry(victim_info.deployment).or_insert(owner.live) -= 1;
            stage = stage.max(replica_stage);
            freed.push(victim);
            if let Ok(candidate) = self.evaluate(deployment, node, &freed, true) {
                // Keep only the victims whose devices the replica actually takes.
                let taken: Vec<usize> = freed
                    .iter()
                    .copied()
                    .filter(|&victim| {
                        self.replicas[victim]
                            .units
                            .iter()
                            .any(|&unit| candidate.units & 1 << (unit - self.nodes[node].units.start) != 0)
                    })
                    .collect();
                if taken.len() == freed.len() {
                    return Some((freed, stage, candidate));
                }
                let candidate = self.evaluate(deployment, node, &taken, true).ok()?;
                return Some((taken, stage, candidate));
            }
        }
    }

    // ----- Output -----

    /// Names what each new replica replaces: first the replicas stopped for a reason that
    /// wants a replacement, then displaced replicas, which are stopped now (the driver
    /// keeps each until its replacement is ready). Each displaced replica's stop follows
    /// its replacement's placement in the actions.
    fn pair_replacements(&mut self) {
        let mut pairs: HashMap<String, (String, Option<Action>)> = HashMap::new();
        let mut leftover_stops = Vec::new();
        for deployment in 0..self.deployments.len() {
            let by_age = |engine: &Self, mut replicas: Vec<usize>| {
                replicas.sort_by(|&a, &b| {
                    let (a, b) = (&engine.replicas[a], &engine.replicas[b]);
                    (a.created, &a.name).cmp(&(b.created, &b.name))
                });
                replicas
            };
            let new = by_age(
                self,
                self.live_of(|replica| replica.deployment == deployment && replica.new),
            );
            let displaced = by_age(
                self,
                self.live_of(|replica| replica.deployment == deployment && replica.displaced),
            );
            let mut stopped = std::mem::take(&mut self.deployments[deployment].replaced).into_iter();
            let mut displaced = displaced.into_iter();
            for index in new {
                let pair = if let Some(name) = stopped.next() {
                    (name, None)
                } else if let Some(old) = displaced.next() {
                    self.replicas[old].removed = true;
                    let stop = Action::Stop {
                        replica: self.replica_view(old),
                        reason: self.displacement_reason(old),
                    };
                    (self.replicas[old].name.clone(), Some(stop))
                } else {
                    break;
                };
                pairs.insert(self.replicas[index].name.clone(), pair);
            }
            // Displaced replicas the placed ones already make up for: stop, with no
            // replacement of their own.
            let mut extra: Vec<usize> = displaced.collect();
            while self.deployments[deployment].live + extra.len() as u32
                > self.deployments[deployment].spec.max_replicas
            {
                let Some(old) = extra.pop() else { break };
                self.replicas[old].removed = true;
                let stop = Action::Stop {
                    replica: self.replica_view(old),
                    reason: self.displacement_reason(old),
                };
                leftover_stops.push(stop);
            }
        }
        let mut actions = Vec::with_capacity(self.actions.len() + pairs.len());
        for action in std::mem::take(&mut self.actions) {
            match action {
                Action::Place { replica, .. } => {
                    let (replaces, stop) = match pairs.remove(&replica.name) {
                        Some((replaces, stop)) => (Some(replaces), stop),
                        None => (None, None),
                    };
                    actions.push(Action::Place { replica, replaces });
                    actions.extend(stop);
                }
                stop => actions.push(stop),
            }
        }
        actions.extend(leftover_stops);
        self.actions = actions;
    }

    fn finish(mut self) -> Placement {
        self.pair_replacements();
        let mut explanations = Vec::new();
        let mut order: Vec<usize> = (0..self.deployments.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (self.deployments[a].spec, self.deployments[b].spec);
            (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name))
        });
        for deployment in order {
            let info = &self.deployments[deployment];
            let share = self.share(info.tenant);
            let pending = Self::pending(info, Phase::Elastic);
            let over_limit_here = share.over_limit && info.live > 0;
            if pending == 0 && !over_limit_here {
                continue;
            }
            let nodes = if pending == 0 {
                Vec::new()
            } else {
                (0..self.nodes.len())
                    .map(|node| NodeVerdict {
                        node: self.nodes[node].spec.name.clone(),
                        reasons: self.verdict(deployment, node),
                    })
                    .collect()
            };
            explanations.push(DeploymentExplanation {
                tenant: info.spec.tenant.clone(),
                deployment: info.spec.name.clone(),
                placed: info.live,
                displaced: self.displaced_count(deployment),
                pending,
                pending_min: Self::pending(info, Phase::Min),
                share,
                nodes,
            });
        }
        let tenants = (0..self.tenants.len()).map(|tenant| self.share(tenant)).collect();
        let mut replicas: Vec<Replica> = self
            .live_of(|_| true)
            .into_iter()
            .map(|index| self.replica_view(index))
            .collect();
        replicas.sort_by(|a, b| a.name.cmp(&b.name));
        Placement {
            replicas,
            actions: self.actions,
            explanations,
            tenants,
            next_sequence: self.next_sequence,
        }
    }

    fn share(&self, tenant: usize) -> TenantShare {
        let info = &self.tenants[tenant];
        let over_limit = info.spec.quota_mode == QuotaMode::DryRun
            && info.spec.limit.is_some_and(|limit| info.usage > limit + EPSILON);
        TenantShare {
            tenant: info.spec.name.clone(),
            weight: info.spec.weight,
            usage: info.usage,
            demand: info.demand,
            guarantee: info.spec.guarantee,
            limit: info.spec.limit,
            fair_share: info.fair,
            capacity: self.capacity,
            quota_mode: info.spec.quota_mode,
            over_limit,
        }
    }

    /// Why `node` takes no replica of `deployment` now.
    fn verdict(&self, deployment: usize, node: usize) -> Vec<Reason> {
        let info = &self.deployments[deployment];
        let spec = info.spec;
        let node_info = &self.nodes[node];
        let tenant = &self.tenants[info.tenant];
        let needed = spec.gpus_per_replica;
        let rejection = match self.evaluate(deployment, node, &[], true) {
            Ok(_) => return vec![Reason::Deferred],
            Err(rejection) => rejection,
        };
        match rejection {
            Rejection::Unschedulable(state) => vec![Reason::NodeUnschedulable { state }],
            Rejection::Runtime => vec![Reason::RuntimeUnsupported {
                wanted: spec.runtimes.clone(),
                available: node_info.spec.runtimes.clone(),
            }],
            Rejection::NoLinkedSet => vec![Reason::NoLinkedGpus { needed }],
            Rejection::NoSingleClassSet => vec![Reason::MixedClasses { needed }],
            Rejection::Quota { usage, cost, limit } => {
                vec![Reason::Quota {
                    tenant: spec.tenant.clone(),
                    usage,
                    cost,
                    limit,
                }]
            }
            Rejection::Full | Rejection::Devices(_) => {
                let counts = match rejection {
                    Rejection::Devices(counts) => counts,
                    _ => DeviceCounts::default(),
                };
                let mut classes = BTreeSet::new();
                let mut holders = BTreeSet::new();
                for unit in node_info.units.clone() {
                    match self.unit_fit(deployment, unit, &[]) {
                        UnitFit::ClassNotAllowed => {
                            classes.insert(self.classes[self.units[unit].class].name.to_owned());
                        }
                        UnitFit::Held(holder) => {
                            let owner = self.deployments[self.replicas[holder].deployment].spec;
                            holders.insert(owner.tenant.clone());
                        }
                        _ => {}
                    }
                }
                let mut reasons = Vec::new();
                if counts.class > 0 {
                    reasons.push(Reason::ClassNotAllowed {
                        devices: counts.class,
                        classes: classes.into_iter().collect(),
                    });
                }
                if counts.memory > 0 {
                    reasons.push(Reason::InsufficientMemory {
                        devices: counts.memory,
                        largest_free_bytes: counts.largest_free_memory,
                        needed_bytes: spec.gpu_memory_bytes,
                    });
                }
                if counts.unhealthy > 0 {
                    reasons.push(Reason::Unhealthy {
                        devices: counts.unhealthy,
                    });
                }
                if counts.mig > 0 {
                    reasons.push(Reason::MigInstances { instances: counts.mig });
                }
                reasons.push(Reason::InsufficientGpus {
                    free: counts.eligible_free,
                    needed,
                    held_by: holders.into_iter().collect(),
                });
                if counts.held > 0 && counts.eligible_free + counts.held >= needed {
                    let detail = if !tenant.below_guarantee() {
                        FairShareDetail::AtGuarantee
                    } else if tenant.usage + info.nominal_cost > tenant.spec.guarantee + EPSILON {
                        FairShareDetail::WouldExceedGuarantee
                    } else {
                        FairShareDetail::HoldersProtected
                    };
                    reasons.push(Reason::FairShare {
                        tenant: spec.tenant.clone(),
                        usage: tenant.usage,
                        guarantee: tenant.spec.guarantee,
                        detail,
                    });
                }
                reasons
            }
        }
    }
}
