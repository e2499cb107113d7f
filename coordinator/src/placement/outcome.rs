//! What a placement pass decides: the new placement, the actions that get there, and the
//! explanations for whatever could not be placed.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::model::{NodeState, QuotaMode, Replica};

/// The result of one placement pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// Every replica that should run, kept and new, sorted by name.
    pub replicas: Vec<Replica>,
    /// What changed against the input's `current`, in decision order.
    pub actions: Vec<Action>,
    /// One per deployment with unplaced replicas, and one per deployment of a `dry-run`
    /// tenant that exceeds its limit; sorted by tenant, then deployment.
    pub explanations: Vec<DeploymentExplanation>,
    /// Every tenant's share after the pass, sorted by name.
    pub tenants: Vec<TenantShare>,
    /// The creation sequence to pass as the next input's `next_sequence`.
    pub next_sequence: u64,
}

/// One change to the running set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Start a new replica.
    Place {
        /// The replica.
        replica: Replica,
        /// The stopped replica this one replaces (node lost or draining, device
        /// unhealthy...), so the driver can keep the old one until the new one is ready.
        replaces: Option<String>,
    },
    /// Stop a replica of the input's `current`.
    Stop {
        /// The replica.
        replica: Replica,
        /// Why.
        reason: StopReason,
    },
}

/// Why a replica is stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum StopReason {
    /// Its deployment no longer exists.
    DeploymentRemoved,
    /// Its deployment has more replicas than its maximum; the newest go.
    AboveMaxReplicas {
        /// The deployment's maximum.
        max: u32,
    },
    /// Its node is not in the fleet any more.
    NodeMissing,
    /// Its node is `NotReady`.
    NodeNotReady,
    /// Its node is draining.
    NodeDraining,
    /// One of its devices is gone from the node (or is a MIG parent now).
    DeviceMissing {
        /// The device.
        uuid: String,
    },
    /// One of its devices is unhealthy.
    DeviceUnhealthy {
        /// The device.
        uuid: String,
    },
    /// One of its devices is held by an older replica (the older one stays).
    DeviceConflict {
        /// The device.
        uuid: String,
        /// The older replica holding it.
        holder: String,
    },
    /// The deployment's spec changed so that this replica no longer matches it.
    NoLongerEligible {
        /// What does not match.
        mismatch: Mismatch,
    },
    /// Its tenant is above its enforced limit; the newest elastic replicas go first.
    OverLimit {
        /// What the tenant held before this stop, in thousandths of a normalised GPU.
        usage_milli: u64,
        /// The limit, in thousandths of a normalised GPU.
        limit_milli: u64,
    },
    /// Taken back for a tenant below its guarantee.
    Reclaimed {
        /// The tenant the capacity went to.
        by_tenant: String,
        /// Its deployment.
        by_deployment: String,
    },
}

impl StopReason {
    /// Whether the deployment wants a replacement placed elsewhere (as opposed to a stop
    /// that lowers its replica count on purpose).
    pub fn is_replaced(&self) -> bool {
        matches!(
            self,
            StopReason::NodeMissing
                | StopReason::NodeNotReady
                | StopReason::NodeDraining
                | StopReason::DeviceMissing { .. }
                | StopReason::DeviceUnhealthy { .. }
                | StopReason::DeviceConflict { .. }
                | StopReason::NoLongerEligible { .. }
        )
    }
}

/// How a running replica no longer matches its deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mismatch", rename_all = "kebab-case")]
pub enum Mismatch {
    /// It holds a different number of devices than `gpusPerReplica`.
    DeviceCount {
        /// Devices it holds.
        has: u32,
        /// Devices per replica now.
        wants: u32,
    },
    /// One of its devices is of a class the deployment no longer allows.
    ClassNotAllowed {
        /// The class.
        class: String,
    },
    /// Its runtime is not in the deployment's list, or the node no longer supports it.
    Runtime {
        /// The runtime it runs.
        runtime: String,
    },
    /// It is a multi-device replica holding a MIG instance.
    MigInGang,
}

/// Why one node was not chosen for a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Reason {
    /// The node takes no new replicas.
    NodeUnschedulable {
        /// Its state.
        state: NodeState,
    },
    /// The node supports none of the deployment's runtimes.
    RuntimeUnsupported {
        /// The deployment's runtimes.
        wanted: Vec<String>,
        /// The node's runtimes.
        available: Vec<String>,
    },
    /// Devices of a class the deployment does not allow.
    ClassNotAllowed {
        /// How many.
        devices: u32,
        /// Their classes.
        classes: Vec<String>,
    },
    /// Devices with too little free memory.
    InsufficientMemory {
        /// How many.
        devices: u32,
        /// The most free memory among them.
        largest_free_bytes: u64,
        /// What each device of a replica needs.
        needed_bytes: u64,
    },
    /// Unhealthy devices.
    Unhealthy {
        /// How many.
        devices: u32,
    },
    /// MIG instances, which are never part of a multi-device replica.
    MigInstances {
        /// How many.
        instances: u32,
    },
    /// Too few eligible devices are free.
    InsufficientGpus {
        /// Eligible devices free.
        free: u32,
        /// Devices a replica needs.
        needed: u32,
        /// Tenants holding the eligible devices that are not free.
        held_by: Vec<String>,
    },
    /// Enough free eligible devices, but fewer than a replica needs of any one class (a
    /// replica's devices are all of one class).
    MixedClasses {
        /// Devices a replica needs.
        needed: u32,
    },
    /// Enough free devices, but no set of them is linked by a fabric, and the deployment
    /// requires one.
    NoLinkedGpus {
        /// Devices a replica needs.
        needed: u32,
    },
    /// A replica here would take the tenant over its enforced limit.
    Quota {
        /// The tenant.
        tenant: String,
        /// Its usage now, in normalised GPUs.
        usage: f64,
        /// The replica's size here, in normalised GPUs.
        cost: f64,
        /// Its limit.
        limit: f64,
    },
    /// Eligible devices are held by others, and fair share does not let this tenant
    /// reclaim them.
    FairShare {
        /// The tenant.
        tenant: String,
        /// Its usage, in normalised GPUs.
        usage: f64,
        /// Its guarantee.
        guarantee: f64,
        /// Why nothing is reclaimed.
        detail: FairShareDetail,
    },
    /// The node fits now; the pass stopped at its iteration bound before using it.
    Deferred,
}

/// Why fair share reclaims nothing for a tenant on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FairShareDetail {
    /// The tenant is at or above its guarantee: borrowed capacity is reclaimed only for
    /// tenants below theirs.
    AtGuarantee,
    /// A replica would take the tenant above its guarantee; reclaim stops at it.
    WouldExceedGuarantee,
    /// The holders are within their fair share, or would drop below their guarantee.
    HoldersProtected,
}

/// Why one node was not chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeVerdict {
    /// The node.
    pub node: String,
    /// Every reason that applies (at least one).
    pub reasons: Vec<Reason>,
}

/// Why a deployment has fewer replicas than it wants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentExplanation {
    /// Owning tenant.
    pub tenant: String,
    /// Deployment.
    pub deployment: String,
    /// Replicas placed (on ready or cordoned nodes).
    pub placed: u32,
    /// Replicas on a draining or lost node, kept until a replacement is placed; not
    /// counted in `placed`.
    pub displaced: u32,
    /// Replicas wanted but not placed (up to `max`).
    pub pending: u32,
    /// Of those, replicas below `min`.
    pub pending_min: u32,
    /// The tenant's share.
    pub share: TenantShare,
    /// Every node, by name, when something is pending; empty otherwise.
    pub nodes: Vec<NodeVerdict>,
}

/// A tenant's share of the fleet, in normalised GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantShare {
    /// Tenant.
    pub tenant: String,
    /// Weight.
    pub weight: f64,
    /// Held now.
    pub usage: f64,
    /// Wanted: placed replicas plus pending ones at their smallest eligible size.
    pub demand: f64,
    /// Guarantee.
    pub guarantee: f64,
    /// Limit (`None`: none).
    pub limit: Option<f64>,
    /// Weighted max-min fair share of the fleet, given everyone's demand.
    pub fair_share: f64,
    /// The fleet's normalised capacity the shares are computed over.
    pub capacity: f64,
    /// Whether the limit is enforced.
    pub quota_mode: QuotaMode,
    /// Usage exceeds the limit (possible only in `dry-run`).
    pub over_limit: bool,
}

impl fmt::Display for TenantShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenant {}: {:.2} normalised GPUs held, fair share {:.2} of {:.2}, guarantee {:.2}, limit ",
            self.tenant, self.usage, self.fair_share, self.capacity, self.guarantee
        )?;
        match self.limit {
            Some(limit) => write!(f, "{limit:.2}")?,
            None => f.write_str("none")?,
        }
        write!(
            f,
            " ({}), weight {}, demand {:.2}",
            self.quota_mode.as_str(),
            self.weight,
            self.demand
        )?;
        if self.over_limit {
            f.write_str("; over its limit (dry-run: reported, not enforced)")?;
        }
        Ok(())
    }
}

impl fmt::Display for DeploymentExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}: {} placed, {} pending ({} below min)",
            self.tenant, self.deployment, self.placed, self.pending, self.pending_min
        )?;
        if self.displaced > 0 {
            write!(f, "; {} kept on a draining or lost node until replaced", self.displaced)?;
        }
        writeln!(f)?;
        writeln!(f, "  {}", self.share)?;
        for node in &self.nodes {
            writeln!(f, "  {node}")?;
        }
        Ok(())
    }
}

impl fmt::Display for NodeVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.node)?;
        for (position, reason) in self.reasons.iter().enumerate() {
            if position > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{reason}")?;
        }
        Ok(())
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NodeUnschedulable { state } => write!(f, "not schedulable: node is {}", state.as_str()),
            Reason::RuntimeUnsupported { wanted, available } => write!(
                f,
                "runtime: supports none of [{}] (has [{}])",
                wanted.join(", "),
                available.join(", ")
            ),
            Reason::ClassNotAllowed { devices, classes } => {
                write!(f, "class: {devices} device(s) of class {} not allowed", classes.join(", "))
            }
            Reason::InsufficientMemory { devices, largest_free_bytes, needed_bytes } => write!(
                f,
                "memory: {devices} device(s) with too little free memory ({:.1} GiB free at most, {:.1} GiB needed)",
                gib(*largest_free_bytes),
                gib(*needed_bytes)
            ),
            Reason::Unhealthy { devices } => write!(f, "health: {devices} unhealthy device(s)"),
            Reason::MigInstances { instances } => {
                write!(f, "mig: {instances} MIG instance(s) cannot be part of a multi-GPU replica")
            }
            Reason::InsufficientGpus { free, needed, held_by } => {
                write!(f, "gpus: {free} eligible free, {needed} needed")?;
                if !held_by.is_empty() {
                    write!(f, " (others in use by {})", held_by.join(", "))?;
                }
                Ok(())
            }
            Reason::MixedClasses { needed } => {
                write!(f, "gpus: no {needed} free eligible devices of a single class")
            }
            Reason::NoLinkedGpus { needed } => {
                write!(f, "no linked GPUs: no {needed} free devices of one class linked by NVLink/xGMI")
            }
            Reason::Quota { tenant, usage, cost, limit } => write!(
                f,
                "quota: {tenant} would hold {:.2} of its limit {limit:.2} normalised GPUs (holds {usage:.2}, replica {cost:.2})",
                usage + cost
            ),
            Reason::FairShare { tenant, usage, guarantee, detail } => match detail {
                FairShareDetail::AtGuarantee => write!(
                    f,
                    "fair share: {tenant} holds {usage:.2}, at or above its guarantee {guarantee:.2}; \
                     capacity lent to others is reclaimed only for tenants below their guarantee"
                ),
                FairShareDetail::WouldExceedGuarantee => write!(
                    f,
                    "fair share: a replica here would take {tenant} from {usage:.2} past its guarantee \
                     {guarantee:.2}; reclaim stops at the guarantee"
                ),
                FairShareDetail::HoldersProtected => write!(
                    f,
                    "fair share: the holders are within their fair share or at their guarantee; \
                     nothing here is reclaimed for {tenant} ({usage:.2} of guarantee {guarantee:.2})"
                ),
            },
            Reason::Deferred => f.write_str("fits now; placed on the next pass"),
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::DeploymentRemoved => f.write_str("deployment removed"),
            StopReason::AboveMaxReplicas { max } => write!(f, "above max replicas ({max})"),
            StopReason::NodeMissing => f.write_str("node gone"),
            StopReason::NodeNotReady => f.write_str("node not ready"),
            StopReason::NodeDraining => f.write_str("node draining"),
            StopReason::DeviceMissing { uuid } => write!(f, "device {uuid} gone"),
            StopReason::DeviceUnhealthy { uuid } => write!(f, "device {uuid} unhealthy"),
            StopReason::DeviceConflict { uuid, holder } => write!(f, "device {uuid} already held by {holder}"),
            StopReason::NoLongerEligible { mismatch } => match mismatch {
                Mismatch::DeviceCount { has, wants } => write!(f, "holds {has} devices, deployment wants {wants}"),
                Mismatch::ClassNotAllowed { class } => write!(f, "class {class} no longer allowed"),
                Mismatch::Runtime { runtime } => write!(f, "runtime {runtime} no longer eligible"),
                Mismatch::MigInGang => f.write_str("MIG instance in a multi-GPU replica"),
            },
            StopReason::OverLimit {
                usage_milli,
                limit_milli,
            } => write!(
                f,
                "tenant over its limit ({:.2} of {:.2})",
                *usage_milli as f64 / 1000.0,
                *limit_milli as f64 / 1000.0
            ),
            StopReason::Reclaimed {
                by_tenant,
                by_deployment,
            } => {
                write!(f, "reclaimed for {by_tenant}/{by_deployment} (below its guarantee)")
            }
        }
    }
}
