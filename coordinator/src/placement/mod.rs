//! Placement: which replicas run on which devices, shared fairly between tenants, with a
//! reason for everything that is not placed.
//!
//! Sans-IO and pure: [`place`] takes a [`PlacementInput`] (the fleet, hardware classes,
//! tenants, deployments and the replicas placed so far) and returns a [`Placement`] (the new
//! replica set, the actions that get there, and explanations). It reads no clock (but in
//! `place_timed`, for benchmarks), socket, file or random source, so the same input always gives the same output, and running it
//! on its own output changes nothing. Its input types are its own; the caller maps the
//! registry and the manifests into them.
//!
//! # Units and sizes
//!
//! A *unit* is what one replica device slot takes: a whole device, or a MIG instance (a
//! device with MIG on is never placed whole; its instances have their own class and UUID
//! and inherit its health). A replica's *size* is the sum of its units' relative
//! capacities (normalised GPUs, from [`HardwareClass`]; a class not listed counts as 1.0).
//! Shares, guarantees and limits are all in these normalised GPUs. A unit is given to at
//! most one replica: devices are never shared.
//!
//! # One pass
//!
//! 1. **Keep.** Each current replica stays where it is unless there is a reason to stop
//!    it ([`StopReason`]): its deployment is gone; its node is gone; a device is gone,
//!    unhealthy or already held by an older replica; it no longer matches its deployment
//!    (device count, class, runtime, MIG in a multi-device replica). All but the first get
//!    a replacement. A replica on a draining or `NotReady` node is *displaced*: it stays
//!    in the placement until a replacement is placed, and only then is it stopped, so a
//!    drain with nowhere to go keeps serving and a node that comes back keeps its
//!    replicas. A replacement's [`Action::Place`] names the replica it replaces, so the
//!    driver can keep the old one until the new one is ready (surge). A cordoned node and
//!    a degraded device keep their replicas. Then deployments above `max` lose their
//!    displaced replicas, then their newest; and `enforce` tenants above their limit lose
//!    their newest elastic replicas, then their newest others. Nothing else moves a placed
//!    replica: there is no rebalancing.
//! 2. **Fill, `min` first.** Replicas up to each deployment's `min` are placed before any
//!    elastic replica (those up to `max`). Within each phase replicas are placed one at a
//!    time for the tenant furthest behind: tenants below their guarantee first, then the
//!    lowest usage divided by weight (progressive filling: weighted dominant-resource
//!    fairness where the one resource is normalised GPU capacity), then by name; within a
//!    tenant, the deployment with the fewest replicas, then the oldest. A deployment that
//!    fits nowhere is skipped for the rest of the phase. An `enforce` tenant never goes
//!    above its limit; a `dry-run` tenant may, and its [`TenantShare`] says so. Idle
//!    capacity is thus lent to whoever wants it, up to their limits, in fair-share order.
//! 3. **Reclaim.** A tenant below its guarantee with pending replicas takes capacity from
//!    tenants above their fair share: per node, the fewest replicas whose devices make
//!    room, elastic replicas (of deployments above `min`) first, newest first; a victim's
//!    tenant never drops below its guarantee, and the claimant never rises above its own
//!    (reclaim fills a guarantee, it does not overshoot it). Among nodes, the plan that
//!    uses elastic replicas only, then the fewest victims, then the least freed capacity,
//!    then the newest victims, then the best placement score, wins. Replicas placed
//!    earlier in the same pass and then reclaimed are withdrawn rather than stopped.
//! 4. Steps 2 and 3 repeat until a round changes nothing (two or three rounds in
//!    practice, bounded at 64), so that the output is a fixed point: a second pass over
//!    it changes nothing.
//!
//! Fair shares (reported, and the bar for victims in step 3) are weighted max-min shares of
//! the fleet's capacity: each tenant first gets `min(guarantee, demand)`, the rest is
//! water-filled by weight up to `min(demand, limit)` (the limit only when enforced).
//! Demand is the size of a deployment's placed replicas plus its pending ones at the
//! smallest size they could take anywhere. Capacity is every unit that a placed replica
//! holds, or that is not unhealthy on a ready node. Displaced replicas count in none of
//! these.
//!
//! # Where one replica goes
//!
//! **Filters** (a node passes or gets a [`Reason`]): the node is `Ready` (not cordoned,
//! draining or `NotReady`); it supports one of the deployment's runtimes, and the replica
//! runs the first of them in the deployment's order that the node supports; and it has
//! enough free units that are not unhealthy, of an allowed class, with at least
//! `gpu_memory_bytes` free *each* (total memory less [`Device::other_memory_used_bytes`]),
//! and, for a multi-device replica, not MIG instances. A multi-device replica takes all
//! its devices on one node, all of one class, or does not fit there (all-or-nothing);
//! the tenant's enforced limit must allow its size there.
//!
//! **Scores** (compared in this order, smaller first; the first difference decides):
//! 1. healthy devices only: a degraded device is a last resort, used only when no node
//!    has a healthy fit (an unhealthy one is never used);
//! 2. for a multi-device replica, a fabric-linked set (every pair linked by NVLink or
//!    xGMI) over a PCIe set. PCIe is a fallback, not a failure, unless the deployment
//!    sets [`Deployment::require_linked_gpus`];
//! 3. the deployment's preferred classes, in its order;
//! 4. the smallest size, then the lowest price (use the least capacity that will do: a
//!    replica that fits a MIG instance or a smaller class leaves bigger devices to
//!    replicas that need them);
//! 5. a node that already runs replicas over an empty one (bin-packing: keep whole nodes
//!    whole for big replicas);
//! 6. fewer replicas of the same deployment on the node (spread, among the nodes in use;
//!    an empty node is not opened just to spread);
//! 7. fewer free units left on the node afterwards (bin-packing: fill the fullest node);
//! 8. node name.
//!
//! Within a node, a one-device replica takes the healthy, preferred, smallest, cheapest
//! unit with the least free memory that fits (best fit); a multi-device replica takes the
//! first linked set in device order.
//!
//! Cost: indexing the input and building the output are linear in nodes, units and
//! replicas. Each replica placed looks at the ready nodes that run the deployment's
//! runtime: among the nodes in use, only those with enough free units (their units each,
//! unless a lower bound of the node's score already loses to the best so far); the empty
//! nodes by groups that differ in device memory only, usually one node per group (the
//! first; the next only if the first scores worse than the group could). A deployment that
//! fits nowhere costs one more such look per round, and none when its tenant's enforced
//! limit leaves no room. So placing is about (replicas placed + deployments × rounds) ×
//! (nodes in use with free units + groups of empty nodes) × units per node. The
//! explanations of deployments left pending cost nodes × units each, and are as large: one
//! verdict per node for each; under contention on a large fleet they are most of a pass.
//! Reclaim attempts cost more (every candidate victim on every node with enough units of
//! an allowed class is tried) and only happen for tenants below their guarantee by at
//! least a replica's smallest size.
//!
//! # What it deliberately does not do
//!
//! - Rebalance: a placed, valid replica is never moved to improve packing or spread.
//! - Preempt for anything but guarantees: a tenant at or above its guarantee waits for
//!   capacity even when others borrow beyond their fair share; a tenant with no guarantee
//!   never reclaims.
//! - Share a device between replicas, or span a replica over nodes; nodes have at most 128
//!   units (devices and MIG instances).
//! - Know time: liveness deadlines, surge ordering and retries belong to the reconciler.
//! - Treat each hardware class as its own resource dimension: the one resource is
//!   normalised capacity, so per-class guarantees must be mapped onto it by the caller.

mod engine;
mod fairness;
mod gang;
mod model;
mod outcome;

pub use model::{
    Deployment, Device, DeviceHealth, DeviceLink, HardwareClass, MigInstance, Node, NodeState, PlacementInput,
    QuotaMode, Replica, Tenant,
};
pub use outcome::{
    Action, DeploymentExplanation, FairShareDetail, Mismatch, NodeVerdict, Placement, Reason, StopReason, TenantShare,
};

/// An input the engine refuses, with what is wrong with it. Nothing is placed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementError {
    /// Two nodes have the same name.
    #[error("node {node} is listed twice")]
    DuplicateNode {
        /// The node.
        node: String,
    },
    /// Two devices or MIG instances have the same UUID.
    #[error("device {uuid} is listed twice")]
    DuplicateDevice {
        /// The UUID.
        uuid: String,
    },
    /// Two tenants have the same name.
    #[error("tenant {tenant} is listed twice")]
    DuplicateTenant {
        /// The tenant.
        tenant: String,
    },
    /// Two deployments of one tenant have the same name.
    #[error("deployment {tenant}/{deployment} is listed twice")]
    DuplicateDeployment {
        /// The tenant.
        tenant: String,
        /// The deployment.
        deployment: String,
    },
    /// Two current replicas have the same name.
    #[error("replica {replica} is listed twice")]
    DuplicateReplica {
        /// The replica.
        replica: String,
    },
    /// A deployment names a tenant that is not in the input.
    #[error("deployment {tenant}/{deployment} names an unknown tenant")]
    UnknownTenant {
        /// The tenant named.
        tenant: String,
        /// The deployment.
        deployment: String,
    },
    /// A tenant's weight is not a positive number.
    #[error("tenant {tenant}: weight {weight} is not a positive number")]
    InvalidWeight {
        /// The tenant.
        tenant: String,
        /// The weight given.
        weight: f64,
    },
    /// A tenant's guarantee is negative or its limit is below its guarantee.
    #[error("tenant {tenant}: guarantee {guarantee} and limit {limit:?} must satisfy 0 <= guarantee <= limit")]
    InvalidQuota {
        /// The tenant.
        tenant: String,
        /// The guarantee given.
        guarantee: f64,
        /// The limit given.
        limit: Option<f64>,
    },
    /// A deployment's `min` replicas exceed its `max`.
    #[error("deployment {tenant}/{deployment}: min replicas {min} exceed max {max}")]
    InvalidReplicaRange {
        /// The tenant.
        tenant: String,
        /// The deployment.
        deployment: String,
        /// `min`.
        min: u32,
        /// `max`.
        max: u32,
    },
    /// A node has more devices and MIG instances than placement handles.
    #[error("node {node} has {units} devices and MIG instances; placement handles at most 128")]
    TooManyUnits {
        /// The node.
        node: String,
        /// Its devices and MIG instances.
        units: usize,
    },
    /// A hardware class's relative capacity is not a positive number.
    #[error("hardware class {class}: relative capacity {value} is not a positive number")]
    InvalidRelativeCapacity {
        /// The class.
        class: String,
        /// The value given.
        value: f64,
    },
}

/// Runs one placement pass over `input`. See the module documentation for the rules.
pub fn place(input: &PlacementInput) -> Result<Placement, PlacementError> {
    engine::run(input, &Verdicts::All)
}

/// Which pending deployments get a per-node verdict ([`DeploymentExplanation::nodes`]).
///
/// On a large, contended fleet the verdicts are most of a pass's cost (every node for every
/// pending deployment: 10,000 nodes and 260 pending deployments are 2.6 million). Everything
/// else in the [`Placement`] is the same whichever is asked for, and since a pass is pure,
/// running it again on the same input with [`Verdicts::Only`] gives the verdicts of the
/// same decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Verdicts {
    /// Every pending deployment (what [`place`] does).
    #[default]
    All,
    /// None: explanations keep their counts and shares, with `nodes` empty.
    None,
    /// Only these `(tenant, deployment)`s.
    Only(std::collections::BTreeSet<(String, String)>),
}

/// For benchmarks: [`place_with`], also returning the wall time of every replica decision
/// of the pass's fills and reclaims (choosing the next deployment and a node for one
/// replica, freeing room for it, or finding that none fits). The one entry point that reads a clock; the decision is the
/// same as without it.
#[doc(hidden)]
pub fn place_timed(
    input: &PlacementInput,
    verdicts: &Verdicts,
) -> Result<(Placement, Vec<std::time::Duration>), PlacementError> {
    engine::run_timed(input, verdicts)
}

/// [`place`], choosing which deployments get per-node verdicts.
pub fn place_with(input: &PlacementInput, verdicts: &Verdicts) -> Result<Placement, PlacementError> {
    engine::run(input, verdicts)
}
