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

/// In [`Engine::runtime_by_node`]: the node runs none of the list's runtimes, or is not
/// ready.
const NO_RUNTIME: u32 = u32::MAX;

/// In [`Engine::node_group`]: the node is not ready, so in no group.
const NO_GROUP: usize = usize::MAX;

/// The fill/reclaim rounds of one pass stop after this many, converged or not. A pass
/// converges in two or three rounds (a round that places or reclaims nothing ends it); the
/// bound only guards against a cycle the rules are meant to exclude.
const MAX_ROUNDS: usize = 64;

/// Runs one placement pass.
pub(super) fn run(input: &PlacementInput, verdicts: &super::Verdicts) -> Result<Placement, PlacementError> {
    run_with(input, verdicts, None)
}

/// [`run`], timing every replica decision of the fill (benchmarks only: the one place the
/// engine reads a clock).
pub(super) fn run_timed(
    input: &PlacementInput,
    verdicts: &super::Verdicts,
) -> Result<(Placement, Vec<std::time::Duration>), PlacementError> {
    let mut times = Vec::new();
    let placement = run_with(input, verdicts, Some(&mut times))?;
    Ok((placement, times))
}

fn run_with(
    input: &PlacementInput,
    verdicts: &super::Verdicts,
    times: Option<&mut Vec<std::time::Duration>>,
) -> Result<Placement, PlacementError> {
    let mut engine = Engine::new(input)?;
    if times.is_some() {
        engine.decision_times = Some(Vec::new());
    }
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
    let decided = engine.decision_times.take();
    let placement = engine.finish(verdicts);
    if let (Some(out), Some(decided)) = (times, decided) {
        *out = decided;
    }
    Ok(placement)
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
    /// MIG instances, by offset.
    mig: u128,
    /// Units that are neither held nor unhealthy, by offset (`free_units` of them).
    free_mask: u128,
    /// Units that are not unhealthy, by offset.
    usable: u128,
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
    /// Its deployment's tenant.
    tenant: usize,
    node: usize,
    units: Vec<usize>,
    runtime: String,
    created: u64,
    cost: f64,
    /// Placed in this pass (its `Place` action can still be withdrawn).
    new: bool,
    /// When `new`: the position of its `Place` action in [`Engine::actions`].
    place_action: usize,
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

/// A deployment's view of one node's units, for its explanation.
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
    /// The node is not ready.
    Unschedulable,
    /// The node runs none of the deployment's runtimes.
    Runtime,
    /// Fewer eligible free units than a replica needs.
    TooFewUnits,
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

/// How strictly [`Engine::evaluate_on`] checks a node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// Every rule.
    Exact,
    /// Device memory and the tenant's limit ignored. On an empty node this gives a lower
    /// bound of the exact score of every node of its group (which differ in memory only):
    /// fewer eligible units never give a better choice.
    Relaxed,
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
    unit_by_uuid: HashMap<&'a str, Option<usize>>,
    nodes: Vec<NodeInfo<'a>>,
    node_by_name: HashMap<&'a str, usize>,
    tenants: Vec<TenantInfo<'a>>,
    deployments: Vec<DeploymentInfo<'a>>,
    deployment_by_key: HashMap<(&'a str, &'a str), usize>,
    replicas: Vec<LiveReplica>,
    /// By deployment: its replicas (indices into `replicas`, removed ones included), in
    /// index order.
    by_deployment: Vec<Vec<usize>>,
    /// For each distinct runtime list: the ready nodes that support one of its runtimes,
    /// with the index of the first supported.
    runtime_nodes: Vec<Vec<(usize, usize)>>,
    /// The same by node: `runtime_by_node[list][node]` is the index of the first runtime of
    /// the list that the node runs, or [`NO_RUNTIME`] (also when the node is not ready).
    runtime_by_node: Vec<Vec<u32>>,
    /// Ready nodes that hold no replica, in groups of nodes that differ in device memory
    /// only (same runtimes, and per unit: class, health, MIG, links), each group by node
    /// index. Ignoring memory, a replica fits every node of a group alike.
    groups: Vec<BTreeSet<usize>>,
    /// By node: its group, or [`NO_GROUP`] when it is not ready.
    node_group: Vec<usize>,
    /// Ready nodes that hold a replica, by free units: `occupied[k]` holds the nodes with
    /// `k` free units, in no particular order. Placement skips the nodes with too few.
    occupied: Vec<Vec<usize>>,
    /// By node: its position in its `occupied` list while it is there.
    occupied_slot: Vec<usize>,
    /// Names of the input's current replicas; a new replica's name is never one of them
    /// (new names end in their unique sequence number, so they never repeat each other).
    names: HashSet<&'a str>,
    actions: Vec<Action>,
    /// Positions in `actions` of withdrawn placements, dropped at the end of the pass.
    withdrawn: Vec<usize>,
    next_sequence: u64,
    capacity: f64,
    /// Benchmarks only ([`run_timed`]): the wall time of each replica decision of the fills
    /// and reclaims.
    decision_times: Option<Vec<std::time::Duration>>,
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
    /// Every UUID: units map to their index, MIG parents (never placed whole) to `None`.
    unit_by_uuid: HashMap<&'a str, Option<usize>>,
}

impl<'a> Fleet<'a> {
    fn new(input: &'a PlacementInput, classes: &mut ClassTable<'a>) -> Result<Self, PlacementError> {
        let mut sorted: Vec<&'a Node> = input.nodes.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let uuids: usize = input
            .nodes
            .iter()
            .flat_map(|node| &node.devices)
            .map(|device| 1 + device.mig.as_ref().map_or(0, Vec::len))
            .sum();
        let mut fleet = Fleet {
            nodes: Vec::with_capacity(sorted.len()),
            node_by_name: HashMap::with_capacity(sorted.len()),
            units: Vec::with_capacity(uuids),
            unit_by_uuid: HashMap::with_capacity(uuids),
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
        // Whole devices by index, with their unit offset, in index order (a repeated index
        // stands for the last device listed with it).
        let mut offset_by_index: Vec<(u32, usize)> = Vec::with_capacity(devices.len());
        for device in &devices {
            let unit = device.mig.is_none().then_some(self.units.len());
            if self.unit_by_uuid.insert(&device.uuid, unit).is_some() {
                return Err(PlacementError::DuplicateDevice {
                    uuid: device.uuid.clone(),
                });
            }
            match &device.mig {
                Some(instances) => {
                    for instance in instances {
                        if self
                            .unit_by_uuid
                            .insert(&instance.uuid, Some(self.units.len()))
                            .is_some()
                        {
                            return Err(PlacementError::DuplicateDevice {
                                uuid: instance.uuid.clone(),
                            });
                        }
                        let class = classes.intern(&instance.hardware_class);
                        let info = &classes.classes[class];
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
                    offset_by_index.push((device.index, self.units.len() - first_unit));
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
        let offset_of = |index: u32| {
            let after = offset_by_index.partition_point(|&(other, _)| other <= index);
            after
                .checked_sub(1)
                .map(|last| offset_by_index[last])
                .filter(|&(other, _)| other == index)
                .map(|(_, offset)| offset)
        };
        let mut adjacency = vec![0u128; range.len()];
        for device in devices.iter().filter(|device| device.mig.is_none()) {
            let Some(offset) = offset_of(device.index) else {
                continue;
            };
            for link in device.links.iter().filter(|link| link.fabric) {
                if let Some(peer) = offset_of(link.peer).filter(|&peer| peer != offset) {
                    adjacency[offset] |= 1 << peer;
                    adjacency[peer] |= 1 << offset;
                }
            }
        }
        let mut healthy = 0u128;
        let mut mig = 0u128;
        let mut free_mask = 0u128;
        let mut node_classes: Vec<(usize, u128)> = Vec::new();
        for (offset, unit) in self.units[range.clone()].iter().enumerate() {
            if unit.health == DeviceHealth::Healthy {
                healthy |= 1 << offset;
            }
            if unit.health != DeviceHealth::Unhealthy {
                free_mask |= 1 << offset;
            }
            if unit.mig {
                mig |= 1 << offset;
            }
            match node_classes.iter_mut().find(|(class, _)| *class == unit.class) {
                Some((_, mask)) => *mask |= 1 << offset,
                None => node_classes.push((unit.class, 1 << offset)),
            }
        }
        let free_units = free_mask.count_ones() as usize;
        self.nodes.push(NodeInfo {
            spec: node,
            units: range,
            adjacency,
            healthy,
            mig,
            free_mask,
            usable: free_mask,
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
        let runtime_by_node = runtime_nodes
            .iter()
            .map(|supporting| {
                let mut by_node = vec![NO_RUNTIME; fleet.nodes.len()];
                for &(node, runtime) in supporting {
                    by_node[node] = runtime as u32;
                }
                by_node
            })
            .collect();
        let deployments_len = deployments.len();
        let nodes_len = fleet.nodes.len();
        let mut names = HashSet::with_capacity(input.current.len());
        for replica in &input.current {
            if !names.insert(replica.name.as_str()) {
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
            by_deployment: vec![Vec::new(); deployments_len],
            runtime_nodes,
            runtime_by_node,
            groups: Vec::new(),
            node_group: vec![NO_GROUP; nodes_len],
            occupied: vec![Vec::new(); MAX_UNITS_PER_NODE + 1],
            occupied_slot: vec![0; nodes_len],
            names,
            actions: Vec::new(),
            withdrawn: Vec::new(),
            next_sequence: input.next_sequence,
            capacity: 0.0,
            decision_times: None,
        };
        // The most free memory of any unit that is not unhealthy, per class: for any unit,
        // and for whole devices only (MIG instances never join a multi-device replica).
        let mut largest_free: Vec<(Option<u64>, Option<u64>)> = vec![(None, None); engine.classes.len()];
        for unit in engine
            .units
            .iter()
            .filter(|unit| unit.health != DeviceHealth::Unhealthy)
        {
            let (any, whole) = &mut largest_free[unit.class];
            *any = (*any).max(Some(unit.free_memory));
            if !unit.mig {
                *whole = (*whole).max(Some(unit.free_memory));
            }
        }
        for index in 0..engine.deployments.len() {
            engine.deployments[index].nominal_cost = engine.nominal_cost(index, &largest_free);
        }
        engine.index_node_groups();
        Ok(engine)
    }

    /// A replica's size on the smallest unit that could ever take it (ignoring who holds
    /// what), or on a relative-capacity-1 device when none could. `largest_free` is, per
    /// class, the most free memory of a unit that is not unhealthy (any unit, whole devices).
    fn nominal_cost(&self, deployment: usize, largest_free: &[(Option<u64>, Option<u64>)]) -> f64 {
        let info = &self.deployments[deployment];
        let spec = info.spec;
        let gpus = spec.gpus_per_replica as f64;
        if spec.gpus_per_replica == 0 {
            return 0.0;
        }
        // Units of a class share its capacity, so the smallest unit that could take the
        // replica is the smallest class with one unit that has the memory.
        let smallest = largest_free
            .iter()
            .enumerate()
            .filter(|&(class, &(any, whole))| {
                let largest = if spec.gpus_per_replica > 1 { whole } else { any };
                info.allowed[class] && largest.is_some_and(|free| free >= spec.gpu_memory_bytes)
            })
            .map(|(class, _)| self.classes[class].capacity)
            .fold(f64::INFINITY, f64::min);
        if smallest.is_finite() {
            gpus * smallest
        } else {
            gpus
        }
    }

    /// Puts every ready node in its group of identical nodes (all hold no replica yet).
    fn index_node_groups(&mut self) {
        let mut runtime_ids: HashMap<&str, u64> = HashMap::new();
        let mut group_by_signature: HashMap<Vec<u64>, usize> = HashMap::new();
        for node in 0..self.nodes.len() {
            let node_info = &self.nodes[node];
            if node_info.spec.state != NodeState::Ready {
                continue;
            }
            let mut runtimes: Vec<u64> = node_info
                .spec
                .runtimes
                .iter()
                .map(|runtime| {
                    let next = runtime_ids.len() as u64;
                    *runtime_ids.entry(runtime.as_str()).or_insert(next)
                })
                .collect();
            runtimes.sort_unstable();
            runtimes.dedup();
            let mut signature = Vec::with_capacity(2 + runtimes.len() + node_info.units.len() * 4);
            signature.push(runtimes.len() as u64);
            signature.extend(runtimes);
            signature.push(node_info.units.len() as u64);
            for (offset, unit) in self.units[node_info.units.clone()].iter().enumerate() {
                let health = match unit.health {
                    DeviceHealth::Healthy => 0,
                    DeviceHealth::Degraded => 1,
                    DeviceHealth::Unhealthy => 2,
                };
                signature.push(unit.class as u64);
                signature.push(health | u64::from(unit.mig) << 2);
                signature.push(node_info.adjacency[offset] as u64);
                signature.push((node_info.adjacency[offset] >> 64) as u64);
            }
            let next = self.groups.len();
            let group = *group_by_signature.entry(signature).or_insert(next);
            if group == next {
                self.groups.push(BTreeSet::new());
            }
            self.groups[group].insert(node);
            self.node_group[node] = group;
        }
    }

    /// Takes a ready node out of its group or `occupied` list, before its replicas change.
    fn untrack(&mut self, node: usize) {
        let group = self.node_group[node];
        if group == NO_GROUP {
            return;
        }
        let node_info = &self.nodes[node];
        if node_info.replicas.is_empty() {
            self.groups[group].remove(&node);
        } else {
            let list = &mut self.occupied[node_info.free_units];
            let slot = self.occupied_slot[node];
            list.swap_remove(slot);
            if let Some(&moved) = list.get(slot) {
                self.occupied_slot[moved] = slot;
            }
        }
    }

    /// Puts a ready node back in its group or `occupied` list, after its replicas changed.
    fn track(&mut self, node: usize) {
        let group = self.node_group[node];
        if group == NO_GROUP {
            return;
        }
        let node_info = &self.nodes[node];
        if node_info.replicas.is_empty() {
            self.groups[group].insert(node);
        } else {
            let list = &mut self.occupied[node_info.free_units];
            self.occupied_slot[node] = list.len();
            list.push(node);
        }
    }

    /// What `unit` is to `deployment`, with the replicas in `freed` counted as gone.
    #[inline]
    fn unit_fit(&self, deployment: usize, unit: usize, freed: &[usize]) -> UnitFit {
        let memory = self.deployments[deployment].spec.gpu_memory_bytes;
        self.unit_fit_with_memory(deployment, unit, freed, memory)
    }

    /// [`Self::unit_fit`] for a replica that needs `memory` free on each device.
    #[inline]
    fn unit_fit_with_memory(&self, deployment: usize, unit: usize, freed: &[usize], memory: u64) -> UnitFit {
        let info = &self.deployments[deployment];
        let unit_info = &self.units[unit];
        if unit_info.health == DeviceHealth::Unhealthy {
            return UnitFit::Unhealthy;
        }
        if !info.allowed[unit_info.class] {
            return UnitFit::ClassNotAllowed;
        }
        if unit_info.free_memory < memory {
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
                        tenant: self.deployments[deployment].tenant,
                        node,
                        units,
                        runtime: replica.runtime.clone(),
                        created: replica.created,
                        cost,
                        new: false,
                        place_action: usize::MAX,
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
                .flatten()
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
            let mut displaced = self.live_of_deployment(deployment, |replica| replica.displaced);
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
                    .live_of_deployment(deployment, |replica| !replica.displaced)
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
                // Keys are unique (replica names are), so the order replicas are visited in
                // does not matter.
                let victim = (0..self.deployments.len())
                    .filter(|&deployment| self.deployments[deployment].tenant == tenant)
                    .flat_map(|deployment| {
                        self.live_of_deployment(deployment, |replica| replica.cost > 0.0 && !replica.displaced)
                    })
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
        self.by_deployment[deployment]
            .iter()
            .filter(|&&index| !self.replicas[index].removed && self.replicas[index].displaced)
            .count() as u32
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

    /// [`Self::live_of`] for the replicas of one deployment.
    fn live_of_deployment(&self, deployment: usize, predicate: impl Fn(&LiveReplica) -> bool) -> Vec<usize> {
        self.by_deployment[deployment]
            .iter()
            .copied()
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
            let started = self.decision_times.as_ref().map(|_| std::time::Instant::now());
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
            if let (Some(times), Some(started)) = (self.decision_times.as_mut(), started) {
                times.push(started.elapsed());
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

    /// The best-scoring node for one replica of `deployment` among the ready nodes that run
    /// its runtime. Looks at the nodes that hold replicas and have enough free units, and at
    /// the empty nodes group by group, in node order, until a group's relaxed score (a
    /// lower bound for all of its nodes) loses to the best so far; skips a node when a lower
    /// bound of its score already loses. Scores end with the node, so the best is the same
    /// whatever order nodes are looked at in.
    fn best_candidate(&self, deployment: usize) -> Option<Candidate> {
        let info = &self.deployments[deployment];
        let runtimes = &self.runtime_by_node[info.runtime_nodes];
        let gpus = info.spec.gpus_per_replica as usize;
        // No replica is smaller than the deployment's nominal size: when even that would
        // take the tenant past its enforced limit, no node passes (the margin covers
        // rounding).
        let tenant = &self.tenants[info.tenant];
        if let Some(limit) = tenant.enforced_limit() {
            if gpus > 0 && tenant.usage + info.nominal_cost > limit + EPSILON + 1e-6 * (1.0 + limit.abs()) {
                return None;
            }
        }
        let loses = |best: &Option<Candidate>, bound: &Score| best.as_ref().is_some_and(|best| *bound >= best.score);
        let mut best: Option<Candidate> = None;
        let consider = |best: &mut Option<Candidate>, node: usize, runtime: u32| {
            if let Ok(candidate) = self.evaluate_on(deployment, node, runtime as usize, &[], Strictness::Exact) {
                if best.as_ref().is_none_or(|best| candidate.score < best.score) {
                    *best = Some(candidate);
                }
            }
        };
        for nodes in self.occupied.iter().skip(gpus) {
            for &node in nodes {
                let runtime = runtimes[node];
                if runtime == NO_RUNTIME {
                    continue;
                }
                match self.score_bound(deployment, node) {
                    Some(bound) if !loses(&best, &bound) => consider(&mut best, node, runtime),
                    _ => {}
                }
            }
        }
        for group in &self.groups {
            let Some(&first) = group.first() else { continue };
            let runtime = runtimes[first];
            if runtime == NO_RUNTIME {
                continue;
            }
            match self.score_bound(deployment, first) {
                Some(bound) if !loses(&best, &bound) => {}
                _ => continue,
            }
            let Ok(relaxed) = self.evaluate_on(deployment, first, runtime as usize, &[], Strictness::Relaxed) else {
                continue;
            };
            for &node in group {
                let bound = Score { node, ..relaxed.score };
                if loses(&best, &bound) {
                    break;
                }
                consider(&mut best, node, runtime);
            }
        }
        best
    }

    /// A lower bound of the score [`Self::evaluate_on`] gives `deployment` on `node` with
    /// nothing freed (each field at most the real one, so the bound is too), or `None`
    /// when no replica fits there: no allowed class has enough free units.
    fn score_bound(&self, deployment: usize, node: usize) -> Option<Score> {
        let info = &self.deployments[deployment];
        let node_info = &self.nodes[node];
        let gpus = info.spec.gpus_per_replica;
        let mut bound = Score {
            degraded: false,
            pcie: false,
            preferred_rank: 0,
            cost_micro: 0,
            price_micro: 0,
            empty_node: node_info.replicas.is_empty(),
            same_deployment_here: node_info
                .deployment_counts
                .iter()
                .find(|(other, _)| *other == deployment)
                .map_or(0, |(_, count)| *count),
            free_units_left: node_info.free_units.saturating_sub(gpus as usize),
            node,
        };
        if gpus == 0 {
            return Some(bound);
        }
        let usable = if gpus > 1 {
            node_info.free_mask & !node_info.mig
        } else {
            node_info.free_mask
        };
        let mut fits = false;
        bound.degraded = true;
        bound.preferred_rank = u32::MAX;
        bound.cost_micro = u64::MAX;
        bound.price_micro = u64::MAX;
        for &(class, mask) in &node_info.classes {
            let free = mask & usable;
            if !info.allowed[class] || free.count_ones() < gpus {
                continue;
            }
            fits = true;
            // A replica's devices are of one class; it is degraded when that class has too
            // few healthy free units.
            bound.degraded &= (free & node_info.healthy).count_ones() < gpus;
            bound.preferred_rank = bound.preferred_rank.min(info.preferred[class]);
            let class_info = &self.classes[class];
            bound.cost_micro = bound
                .cost_micro
                .min(class_info.capacity_micro.saturating_mul(u64::from(gpus)));
            bound.price_micro = bound
                .price_micro
                .min(class_info.price_micro.saturating_mul(u64::from(gpus)));
        }
        fits.then_some(bound)
    }

    /// Whether `deployment` can place one replica on `node` (with the replicas in `freed`
    /// counted as gone), and how well.
    fn evaluate(&self, deployment: usize, node: usize, freed: &[usize]) -> Result<Candidate, Rejection> {
        let node_spec = self.nodes[node].spec;
        if node_spec.state != NodeState::Ready {
            return Err(Rejection::Unschedulable);
        }
        let runtime = self.deployments[deployment]
            .spec
            .runtimes
            .iter()
            .position(|runtime| node_spec.runtimes.contains(runtime))
            .ok_or(Rejection::Runtime)?;
        self.evaluate_on(deployment, node, runtime, freed, Strictness::Exact)
    }

    /// [`Self::evaluate`] on a ready node that runs the deployment's runtime `runtime`.
    fn evaluate_on(
        &self,
        deployment: usize,
        node: usize,
        runtime: usize,
        freed: &[usize],
        strictness: Strictness,
    ) -> Result<Candidate, Rejection> {
        let info = &self.deployments[deployment];
        let node_info = &self.nodes[node];
        let gpus = info.spec.gpus_per_replica as usize;
        let memory = match strictness {
            Strictness::Exact => info.spec.gpu_memory_bytes,
            Strictness::Relaxed => 0,
        };
        if freed.is_empty() && node_info.free_units < gpus {
            return Err(Rejection::TooFewUnits);
        }

        let mut eligible_free = 0usize;
        let base = node_info.units.start;
        let mut eligible = 0u128;
        let mut best_single: Option<((bool, u32, u64), usize)> = None;
        let mut free_units = 0usize;
        for unit in node_info.units.clone() {
            let fit = self.unit_fit_with_memory(deployment, unit, freed, memory);
            let free = self.units[unit].holder.is_none_or(|holder| freed.contains(&holder));
            if free && !matches!(fit, UnitFit::Unhealthy) {
                free_units += 1;
            }
            if let UnitFit::Free = fit {
                eligible_free += 1;
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
        if eligible_free < gpus {
            return Err(Rejection::TooFewUnits);
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
        if let Some(limit) = tenant.enforced_limit().filter(|_| strictness == Strictness::Exact) {
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
        self.untrack(replica.node);
        let node = &mut self.nodes[replica.node];
        for &unit in &replica.units {
            self.units[unit].holder = Some(index);
            if self.units[unit].health != DeviceHealth::Unhealthy {
                node.free_units -= 1;
                node.free_mask &= !(1 << (unit - node.units.start));
            }
        }
        node.replicas.push(index);
        self.track(replica.node);
        self.by_deployment[replica.deployment].push(index);
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
        let (node, deployment, cost, new, displaced) = {
            let replica = &mut self.replicas[index];
            replica.removed = true;
            (
                replica.node,
                replica.deployment,
                replica.cost,
                replica.new,
                replica.displaced,
            )
        };
        self.untrack(node);
        let replica = &self.replicas[index];
        let node_info = &mut self.nodes[node];
        for &unit in &replica.units {
            self.units[unit].holder = None;
            if self.units[unit].health != DeviceHealth::Unhealthy {
                node_info.free_units += 1;
                node_info.free_mask |= 1 << (unit - node_info.units.start);
            }
        }
        node_info.replicas.retain(|&other| other != index);
        self.track(node);
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
            // Placed in this pass: withdraw the placement instead of stopping it (the
            // action is dropped when the pass ends).
            self.withdrawn.push(self.replicas[index].place_action);
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
            if !self.names.contains(name.as_str()) {
                break (name, created);
            }
        };
        let index = self.add_replica(LiveReplica {
            name,
            deployment,
            tenant: self.deployments[deployment].tenant,
            node: candidate.node,
            units: bits(candidate.units)
                .map(|offset| self.nodes[candidate.node].units.start + offset)
                .collect(),
            runtime: spec.runtimes[candidate.runtime].clone(),
            created,
            cost: candidate.cost,
            new: true,
            place_action: self.actions.len(),
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
            let started = self.decision_times.as_ref().map(|_| std::time::Instant::now());
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
            if let (Some(times), Some(started)) = (self.decision_times.as_mut(), started) {
                times.push(started.elapsed());
            }
        }
        progress
    }

    /// Frees room for one replica of `deployment` on the node where that takes the least,
    /// and places it there.
    fn reclaim_for(&mut self, deployment: usize) -> bool {
        let tenant = self.deployments[deployment].tenant;
        let (usage, guarantee) = (self.tenants[tenant].usage, self.tenants[tenant].spec.guarantee);
        // No replica is smaller than the deployment's nominal size, so when even that would
        // take the tenant past its guarantee, no plan would do (the margin covers rounding).
        let nominal = self.deployments[deployment].nominal_cost;
        if usage + nominal > guarantee + EPSILON + 1e-6 * (1.0 + guarantee.abs()) {
            return false;
        }
        // Only replicas of tenants above their fair share are victims, and reclaiming only
        // lowers a tenant's usage, so the others never become victims during the plan.
        let victim_tenants: Vec<bool> = self
            .tenants
            .iter()
            .enumerate()
            .map(|(index, other)| index != tenant && other.usage > other.fair + EPSILON)
            .collect();
        if !victim_tenants.contains(&true) {
            return false;
        }
        type PlanKey = (u8, usize, u64, Reverse<u64>, Score);
        let mut best: Option<(PlanKey, Vec<usize>, Candidate)> = None;
        for &(node, _) in &self.runtime_nodes[self.deployments[deployment].runtime_nodes] {
            if !self.could_fit(deployment, node) {
                continue;
            }
            let Some((victims, stage, candidate)) = self.plan_on(deployment, node, &victim_tenants) else {
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

    /// Whether one allowed class of `node` has enough units that are not unhealthy (and not
    /// MIG instances, for a multi-device replica) for a replica of `deployment`, held or
    /// not: if not, no reclaim makes room there.
    fn could_fit(&self, deployment: usize, node: usize) -> bool {
        let info = &self.deployments[deployment];
        let node_info = &self.nodes[node];
        let gpus = info.spec.gpus_per_replica;
        let usable = if gpus > 1 {
            node_info.usable & !node_info.mig
        } else {
            node_info.usable
        };
        node_info
            .classes
            .iter()
            .any(|&(class, mask)| info.allowed[class] && (mask & usable).count_ones() >= gpus)
    }

    /// The fewest victims on `node` (elastic replicas first, newest first) after which a
    /// replica of `deployment` fits there, the latest victim stage used (0: elastic only),
    /// and the resulting candidate. Victims are replicas of the `victim_tenants` (by
    /// tenant: other tenants above their fair share).
    fn plan_on(&self, deployment: usize, node: usize, victim_tenants: &[bool]) -> Option<(Vec<usize>, u8, Candidate)> {
        let useful: Vec<usize> = self.nodes[node]
            .replicas
            .iter()
            .copied()
            .filter(|&replica| {
                let replica_info = &self.replicas[replica];
                victim_tenants[replica_info.tenant]
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
            if let Ok(candidate) = self.evaluate(deployment, node, &freed) {
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
                let candidate = self.evaluate(deployment, node, &taken).ok()?;
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
        if !self.withdrawn.is_empty() {
            let mut withdrawn = vec![false; self.actions.len()];
            for &position in &self.withdrawn {
                withdrawn[position] = true;
            }
            let mut position = 0;
            self.actions.retain(|_| {
                position += 1;
                !withdrawn[position - 1]
            });
        }
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
            let new = by_age(self, self.live_of_deployment(deployment, |replica| replica.new));
            let displaced = by_age(self, self.live_of_deployment(deployment, |replica| replica.displaced));
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

    fn finish(mut self, verdicts: &super::Verdicts) -> Placement {
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
            let wanted = match verdicts {
                super::Verdicts::All => true,
                super::Verdicts::None => false,
                super::Verdicts::Only(keys) => keys.contains(&(info.spec.tenant.clone(), info.spec.name.clone())),
            };
            let nodes = if pending == 0 || !wanted {
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
        if node_info.spec.state != NodeState::Ready {
            return vec![Reason::NodeUnschedulable {
                state: node_info.spec.state,
            }];
        }
        let runtime = self.runtime_by_node[info.runtime_nodes][node];
        if runtime == NO_RUNTIME {
            return vec![Reason::RuntimeUnsupported {
                wanted: spec.runtimes.clone(),
                available: node_info.spec.runtimes.clone(),
            }];
        }
        // One look at every unit gives the device counts and the tenants holding eligible
        // units; only a node with enough eligible free units needs the full evaluation.
        let mut counts = DeviceCounts::default();
        let mut holders: Vec<usize> = Vec::new();
        for unit in node_info.units.clone() {
            match self.unit_fit(deployment, unit, &[]) {
                UnitFit::Unhealthy => counts.unhealthy += 1,
                UnitFit::ClassNotAllowed => counts.class += 1,
                UnitFit::TooLittleMemory(free_memory) => {
                    counts.memory += 1;
                    counts.largest_free_memory = counts.largest_free_memory.max(free_memory);
                }
                UnitFit::MigInGang => counts.mig += 1,
                UnitFit::Held(holder) => {
                    counts.held += 1;
                    holders.push(self.replicas[holder].tenant);
                }
                UnitFit::Free => counts.eligible_free += 1,
            }
        }
        if counts.eligible_free >= needed {
            match self.evaluate_on(deployment, node, runtime as usize, &[], Strictness::Exact) {
                Ok(_) => return vec![Reason::Deferred],
                Err(Rejection::NoLinkedSet) => return vec![Reason::NoLinkedGpus { needed }],
                Err(Rejection::NoSingleClassSet) => return vec![Reason::MixedClasses { needed }],
                Err(Rejection::Quota { usage, cost, limit }) => {
                    return vec![Reason::Quota {
                        tenant: spec.tenant.clone(),
                        usage,
                        cost,
                        limit,
                    }]
                }
                // Not with enough eligible free units; the counts below say the same.
                Err(_) => {}
            }
        }
        // Tenant names in name order, each once (tenant indices are in name order).
        holders.sort_unstable();
        holders.dedup();
        let holder_names: Vec<String> = holders
            .into_iter()
            .map(|tenant| self.tenants[tenant].spec.name.clone())
            .collect();
        let mut reasons = Vec::new();
        if counts.class > 0 {
            // The classes of the units that are not unhealthy and not allowed, by name.
            let mut classes: Vec<&str> = node_info
                .classes
                .iter()
                .filter(|&&(class, mask)| !info.allowed[class] && mask & node_info.usable != 0)
                .map(|&(class, _)| self.classes[class].name)
                .collect();
            classes.sort_unstable();
            classes.dedup();
            reasons.push(Reason::ClassNotAllowed {
                devices: counts.class,
                classes: classes.into_iter().map(str::to_owned).collect(),
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
            held_by: holder_names,
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
