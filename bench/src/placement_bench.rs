//! `placement-bench`: the placement engine (`pyxis_coordinator::placement::place`) on a
//! simulated fleet of thousands of mixed nodes shared by 100 tenants under contention.
//!
//! For each fleet size it builds one deterministic input (seeded; the same seed gives the
//! same fleet, tenants and deployments) and measures, on one thread:
//!
//! - **full pass**: one `place()` from an empty fleet, which places everything it can;
//!   placements per second are the replicas placed divided by the wall time of that call;
//! - **steady pass**: `place()` over its own output (nothing changed; the reconciler runs a
//!   pass on every change, so this is the floor of every decision), which must act on
//!   nothing;
//! - **decisions**: `--samples` single changes to the loaded fleet, each timed as one
//!   `place()` with `current` = the full pass's output, the changes in turn: one
//!   deployment scaled up by one replica, a new one-replica deployment of a random shape
//!   for a random tenant, a node joining, a deployment removed. Every sample starts from
//!   the same loaded fleet (the changes do not accumulate); the time is the call alone
//!   (not building its input or dropping its output);
//! - **fairness** of the full pass's output under contention (see [`Fairness`]);
//! - **baseline**: a naive first-fit placer written here (no fairness, no scoring, no
//!   explanations) over the same input, in the same run.
//!
//! The engine is single-threaded and so is this bench; run it under `taskset -c 0` to pin
//! it to one core.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use pyxis_coordinator::placement::{
    place, place_timed, place_with, Action, Deployment, Device, DeviceHealth, DeviceLink, HardwareClass, MigInstance,
    Node, NodeState, Placement, PlacementInput, QuotaMode, StopReason, Tenant, TenantShare, Verdicts,
};
use serde_json::json;

const GIB: u64 = 1 << 30;

/// Targets from the issue, at 10,000 nodes.
const TARGET_PLACEMENTS_PER_S: f64 = 5_000.0;
const TARGET_P99_MS: f64 = 10.0;
const TARGET_JAIN: f64 = 0.95;

/// Total demand (at each deployment's smallest size) over the fleet's capacity.
const OVERSUBSCRIPTION: f64 = 1.6;
/// Share of the fleet's capacity sold as guarantees.
const GUARANTEED_FRACTION: f64 = 0.35;

/// Placement engine benchmark on a simulated fleet.
///
/// Prints progress on stderr and a markdown table on stdout. Single-threaded: run under
/// `taskset -c 0` to pin it to one core.
#[derive(Debug, Parser)]
#[command(name = "placement-bench", verbatim_doc_comment)]
struct Args {
    /// Fleet sizes (nodes), one input each.
    #[arg(long, value_delimiter = ',', default_value = "5000,10000")]
    nodes: Vec<usize>,
    /// Tenants.
    #[arg(long, default_value_t = 100)]
    tenants: usize,
    /// Decision samples per fleet size.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Seed of the simulated fleet and of the decision samples.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Small smoke run: 500 nodes, 20 tenants, 20 samples (overrides the three).
    #[arg(long)]
    quick: bool,
    /// Skip the first-fit baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------
// The simulated fleet
// ---------------------------------------------------------------------------------------

/// A hardware class: name, relative capacity (H100 = 1), price per hour, memory per unit.
struct ClassSpec {
    name: &'static str,
    capacity: f64,
    price: f64,
    memory_gib: u64,
    mig: bool,
}

const H100: &str = "H100-80GB";
const H100_MIG_1G: &str = "H100-80GB-MIG-1g.10gb";
const H100_MIG_3G: &str = "H100-80GB-MIG-3g.40gb";
const A100: &str = "A100-40GB";
const L4: &str = "L4-24GB";
const MI300X: &str = "MI300X-192GB";
const TPU: &str = "TPU-v5e-16GB";

const CLASSES: [ClassSpec; 7] = [
    ClassSpec {
        name: H100,
        capacity: 1.0,
        price: 4.0,
        memory_gib: 80,
        mig: false,
    },
    ClassSpec {
        name: H100_MIG_1G,
        capacity: 0.14,
        price: 0.6,
        memory_gib: 10,
        mig: true,
    },
    ClassSpec {
        name: H100_MIG_3G,
        capacity: 0.43,
        price: 1.8,
        memory_gib: 40,
        mig: true,
    },
    ClassSpec {
        name: A100,
        capacity: 0.5,
        price: 1.8,
        memory_gib: 40,
        mig: false,
    },
    ClassSpec {
        name: L4,
        capacity: 0.2,
        price: 0.7,
        memory_gib: 24,
        mig: false,
    },
    ClassSpec {
        name: MI300X,
        capacity: 1.3,
        price: 3.5,
        memory_gib: 192,
        mig: false,
    },
    ClassSpec {
        name: TPU,
        capacity: 0.3,
        price: 1.2,
        memory_gib: 16,
        mig: false,
    },
];

fn class_spec(name: &str) -> &'static ClassSpec {
    CLASSES.iter().find(|class| class.name == name).unwrap_or(&CLASSES[0])
}

/// How the devices of a node are linked.
#[derive(Clone, Copy)]
enum Fabric {
    /// Every pair linked (NVSwitch, xGMI, ICI).
    All,
    /// NVLink bridges between pairs 0-1, 2-3, ...
    Pairs,
    /// PCIe only.
    None,
}

/// A node kind: share of the fleet (percent), devices, fabric, runtimes (with the chance
/// of each, percent; the first is always there).
struct NodeKind {
    percent: u32,
    class: &'static str,
    devices: u32,
    fabric: Fabric,
    /// Devices (from index 0) with MIG on, and their instances.
    mig: &'static [&'static [&'static str]],
    runtimes: &'static [(&'static str, u32)],
}

const NODE_KINDS: [NodeKind; 6] = [
    NodeKind {
        percent: 28,
        class: H100,
        devices: 8,
        fabric: Fabric::All,
        mig: &[],
        runtimes: &[("vllm", 100), ("sglang", 50), ("tgi", 30), ("llama-cpp", 20)],
    },
    NodeKind {
        percent: 4,
        class: H100,
        devices: 8,
        fabric: Fabric::All,
        mig: &[
            &[H100_MIG_1G; 7],
            &[H100_MIG_1G; 7],
            &[H100_MIG_3G, H100_MIG_3G],
            &[H100_MIG_3G, H100_MIG_3G],
        ],
        runtimes: &[("vllm", 100), ("tgi", 60), ("llama-cpp", 40)],
    },
    NodeKind {
        percent: 22,
        class: A100,
        devices: 8,
        fabric: Fabric::Pairs,
        mig: &[],
        runtimes: &[("vllm", 100), ("sglang", 40), ("tgi", 40)],
    },
    NodeKind {
        percent: 20,
        class: L4,
        devices: 4,
        fabric: Fabric::None,
        mig: &[],
        runtimes: &[("llama-cpp", 100), ("vllm", 80), ("tgi", 40)],
    },
    NodeKind {
        percent: 14,
        class: MI300X,
        devices: 8,
        fabric: Fabric::All,
        mig: &[],
        runtimes: &[("vllm", 100), ("sglang", 40)],
    },
    NodeKind {
        percent: 12,
        class: TPU,
        devices: 4,
        fabric: Fabric::All,
        mig: &[],
        runtimes: &[("jetstream", 100), ("vllm", 60)],
    },
];

/// A deployment shape: devices per replica, memory per device, allowed and preferred
/// classes, runtimes, linked devices required, and its weight among shapes.
struct Shape {
    gpus: u32,
    memory_gib: u64,
    allowed: &'static [&'static str],
    preferred: &'static [&'static str],
    runtimes: &'static [&'static str],
    linked: bool,
    weight: u32,
}

/// About half the replicas want one device, a fifth two, the rest four or eight.
const SHAPES: [Shape; 11] = [
    Shape {
        gpus: 1,
        memory_gib: 14,
        allowed: &[],
        preferred: &[L4, H100_MIG_3G],
        runtimes: &["vllm", "llama-cpp"],
        linked: false,
        weight: 14,
    },
    Shape {
        gpus: 1,
        memory_gib: 8,
        allowed: &[L4, H100_MIG_1G, A100],
        preferred: &[H100_MIG_1G],
        runtimes: &["tgi", "vllm"],
        linked: false,
        weight: 8,
    },
    Shape {
        gpus: 1,
        memory_gib: 36,
        allowed: &[H100, A100, MI300X, H100_MIG_3G],
        preferred: &[A100],
        runtimes: &["vllm", "sglang"],
        linked: false,
        weight: 12,
    },
    Shape {
        gpus: 1,
        memory_gib: 70,
        allowed: &[H100, MI300X],
        preferred: &[H100],
        runtimes: &["vllm"],
        linked: false,
        weight: 10,
    },
    Shape {
        gpus: 1,
        memory_gib: 150,
        allowed: &[MI300X],
        preferred: &[],
        runtimes: &["vllm"],
        linked: false,
        weight: 6,
    },
    Shape {
        gpus: 2,
        memory_gib: 36,
        allowed: &[A100, H100, MI300X],
        preferred: &[A100],
        runtimes: &["vllm", "sglang"],
        linked: false,
        weight: 12,
    },
    Shape {
        gpus: 2,
        memory_gib: 20,
        allowed: &[L4],
        preferred: &[],
        runtimes: &["llama-cpp", "vllm"],
        linked: false,
        weight: 8,
    },
    Shape {
        gpus: 4,
        memory_gib: 60,
        allowed: &[H100, MI300X],
        preferred: &[H100],
        runtimes: &["sglang", "vllm"],
        linked: false,
        weight: 8,
    },
    Shape {
        gpus: 4,
        memory_gib: 14,
        allowed: &[TPU],
        preferred: &[],
        runtimes: &["jetstream", "vllm"],
        linked: true,
        weight: 7,
    },
    Shape {
        gpus: 8,
        memory_gib: 70,
        allowed: &[H100],
        preferred: &[],
        runtimes: &["vllm"],
        linked: true,
        weight: 7,
    },
    Shape {
        gpus: 8,
        memory_gib: 60,
        allowed: &[H100, MI300X],
        preferred: &[MI300X],
        runtimes: &["vllm"],
        linked: false,
        weight: 8,
    },
];

impl Shape {
    /// The smallest size a replica can take: devices times the smallest class that can
    /// hold it (what the engine counts pending replicas at).
    fn nominal_size(&self) -> f64 {
        nominal_size(self.gpus, self.memory_gib * GIB, |class| {
            self.allowed.is_empty() || self.allowed.contains(&class)
        })
    }
}

/// Devices times the smallest class of [`CLASSES`] that is allowed, has the memory and, for
/// a multi-device replica, is no MIG instance (1.0 when none is).
fn nominal_size(gpus: u32, memory_bytes: u64, allowed: impl Fn(&str) -> bool) -> f64 {
    let smallest = CLASSES
        .iter()
        .filter(|class| allowed(class.name))
        .filter(|class| class.memory_gib * GIB >= memory_bytes && !(gpus > 1 && class.mig))
        .map(|class| class.capacity)
        .fold(f64::INFINITY, f64::min);
    f64::from(gpus) * if smallest.is_finite() { smallest } else { 1.0 }
}

fn deployment_size(deployment: &Deployment) -> f64 {
    nominal_size(deployment.gpus_per_replica, deployment.gpu_memory_bytes, |class| {
        deployment.allowed_classes.is_empty() || deployment.allowed_classes.iter().any(|name| name == class)
    })
}

fn pick_weighted<T>(rng: &mut fastrand::Rng, items: &[T], weight: impl Fn(&T) -> u32) -> usize {
    let total: u32 = items.iter().map(&weight).sum();
    let mut ticket = rng.u32(0..total.max(1));
    for (index, item) in items.iter().enumerate() {
        let w = weight(item);
        if ticket < w {
            return index;
        }
        ticket -= w;
    }
    items.len() - 1
}

fn percent(rng: &mut fastrand::Rng, chance: u32) -> bool {
    rng.u32(0..100) < chance
}

fn build_node(rng: &mut fastrand::Rng, index: usize) -> Node {
    let kind = &NODE_KINDS[pick_weighted(rng, &NODE_KINDS, |kind| kind.percent)];
    let name = format!("n{index:05}");
    let devices = (0..kind.devices)
        .map(|device| {
            let links = (0..kind.devices)
                .filter(|&peer| peer != device)
                .map(|peer| DeviceLink {
                    peer,
                    fabric: match kind.fabric {
                        Fabric::All => true,
                        Fabric::Pairs => peer / 2 == device / 2,
                        Fabric::None => false,
                    },
                })
                .collect();
            let spec = class_spec(kind.class);
            let mig = kind.mig.get(device as usize).map(|instances| {
                instances
                    .iter()
                    .enumerate()
                    .map(|(k, class)| MigInstance {
                        uuid: format!("{name}-g{device}-m{k}"),
                        hardware_class: (*class).into(),
                        memory_bytes: class_spec(class).memory_gib * GIB,
                    })
                    .collect()
            });
            let health = match rng.u32(0..1000) {
                0..5 => DeviceHealth::Unhealthy,
                5..10 => DeviceHealth::Degraded,
                _ => DeviceHealth::Healthy,
            };
            // A few devices carry memory used by something other than Pyxis.
            let other = if percent(rng, 5) { rng.u64(1..=10) * GIB } else { 0 };
            Device {
                uuid: format!("{name}-g{device}"),
                index: device,
                hardware_class: kind.class.into(),
                memory_bytes: spec.memory_gib * GIB,
                other_memory_used_bytes: Some(other),
                health,
                links,
                mig,
            }
        })
        .collect();
    let runtimes = kind
        .runtimes
        .iter()
        .filter(|(_, chance)| percent(rng, *chance))
        .map(|(runtime, _)| (*runtime).to_owned())
        .collect();
    let state = match rng.u32(0..1000) {
        0..10 => NodeState::Cordoned,
        10..13 => NodeState::Draining,
        13..15 => NodeState::NotReady,
        _ => NodeState::Ready,
    };
    Node {
        name,
        state,
        runtimes,
        devices,
    }
}

/// Normalised capacity of the units a replica could ever use: not unhealthy, on ready nodes
/// (MIG instances instead of their parents).
fn fleet_capacity(input: &PlacementInput) -> f64 {
    let capacity = |class: &str| input.classes.get(class).map_or(1.0, |class| class.relative_capacity);
    input
        .nodes
        .iter()
        .filter(|node| node.state == NodeState::Ready)
        .flat_map(|node| &node.devices)
        .filter(|device| device.health != DeviceHealth::Unhealthy)
        .map(|device| match &device.mig {
            Some(instances) => instances
                .iter()
                .map(|instance| capacity(&instance.hardware_class))
                .sum(),
            None => capacity(&device.hardware_class),
        })
        .sum()
}

fn deployment_from_shape(shape: &Shape, tenant: &str, name: String, created: u64, min: u32, max: u32) -> Deployment {
    let strings = |list: &[&str]| list.iter().map(|item| (*item).to_owned()).collect::<Vec<_>>();
    Deployment {
        tenant: tenant.to_owned(),
        name,
        created,
        gpus_per_replica: shape.gpus,
        gpu_memory_bytes: shape.memory_gib * GIB,
        allowed_classes: strings(shape.allowed),
        preferred_classes: strings(shape.preferred),
        runtimes: strings(shape.runtimes),
        min_replicas: min,
        max_replicas: max,
        require_linked_gpus: shape.linked,
    }
}

/// The simulated fleet: `nodes` nodes of mixed kinds, `tenants` tenants with weights,
/// guarantees and limits, and their deployments, with demand `OVERSUBSCRIPTION` times the
/// capacity.
fn build_input(nodes: usize, tenants: usize, seed: u64) -> PlacementInput {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut input = PlacementInput::default();
    for class in &CLASSES {
        input.classes.insert(
            class.name.to_owned(),
            HardwareClass {
                relative_capacity: class.capacity,
                price_per_gpu_hour: class.price,
            },
        );
    }
    input.nodes = (0..nodes).map(|index| build_node(&mut rng, index)).collect();
    let capacity = fleet_capacity(&input);

    // A quarter of the tenants are light (they want little and never contend); the others
    // want a lot, in proportion to their weight.
    struct Plan {
        weight: f64,
        appetite: f64,
        guaranteed: bool,
    }
    let plans: Vec<Plan> = (0..tenants)
        .map(|_| {
            let weight = match rng.u32(0..100) {
                0..60 => 1.0,
                60..85 => 2.0,
                _ => 4.0,
            };
            let light = percent(&mut rng, 25);
            let appetite = if light {
                0.05 + rng.f64() * 0.1
            } else {
                weight * (0.5 + rng.f64() * 1.5)
            };
            Plan {
                weight,
                appetite,
                guaranteed: !light && percent(&mut rng, 45),
            }
        })
        .collect();
    let total_appetite: f64 = plans.iter().map(|plan| plan.appetite).sum();
    let guarantee_shares: f64 = plans
        .iter()
        .filter(|plan| plan.guaranteed)
        .map(|plan| plan.weight)
        .sum();
    let mut created = 0u64;
    for (index, plan) in plans.iter().enumerate() {
        let name = format!("t{index:03}");
        let budget = capacity * OVERSUBSCRIPTION * plan.appetite / total_appetite;
        let guarantee = if plan.guaranteed {
            (capacity * GUARANTEED_FRACTION * plan.weight / guarantee_shares)
                .min(budget * 0.8)
                .round()
        } else {
            0.0
        };
        // A third of the tenants have a limit: mostly below what they want (it binds),
        // and a third of those only report it (dry-run).
        let (limit, quota_mode) = if percent(&mut rng, 33) {
            let limit = (budget * (0.3 + rng.f64() * 0.6)).max(guarantee).round();
            let mode = if percent(&mut rng, 33) {
                QuotaMode::DryRun
            } else {
                QuotaMode::Enforce
            };
            (Some(limit.max(guarantee)), mode)
        } else {
            (None, QuotaMode::Enforce)
        };
        input.tenants.push(Tenant {
            name: name.clone(),
            weight: plan.weight,
            guarantee,
            limit,
            quota_mode,
        });
        let count = rng.usize(1..=6);
        let splits: Vec<f64> = (0..count).map(|_| 0.2 + rng.f64()).collect();
        let split_total: f64 = splits.iter().sum();
        for (k, split) in splits.iter().enumerate() {
            let shape = &SHAPES[pick_weighted(&mut rng, &SHAPES, |shape| shape.weight)];
            let wanted = budget * split / split_total;
            let max = ((wanted / shape.nominal_size()).round() as u32).max(1);
            let min = (f64::from(max) * rng.f64() * 0.3).floor() as u32;
            input.deployments.push(deployment_from_shape(
                shape,
                &name,
                format!("{name}-d{k}"),
                created,
                min,
                max,
            ));
            created += 1;
        }
    }
    input
}

// ---------------------------------------------------------------------------------------
// Fairness
// ---------------------------------------------------------------------------------------

/// Fairness of one placement under contention.
///
/// - `jain_weighted`: Jain's index `(Σx)² / (n·Σx²)` of the weighted dominant shares
///   `x = usage / weight` (one resource, normalised capacity, so a tenant's dominant share
///   is its usage over the fleet's capacity; the capacity cancels out) over the tenants
///   whose fair share is set by their weight alone: with unmet demand, and a weighted
///   max-min share strictly between their floor `min(guarantee, demand)` and ceiling
///   `min(demand, enforced limit)`. An ideal allocation gives them all the same weighted
///   share (the water level), so the ideal index is 1.
/// - `jain_normalised`: Jain's index over every tenant with a positive fair share of
///   `x = usage / fair share` (Jain's normalised allocations); 1 when each tenant holds
///   exactly its weighted max-min fair share.
/// - `guarantee_violations`: tenants holding less than `min(guarantee, demand)`, and of
///   those, how many fall short by less than their smallest pending replica (reclaim
///   fills a guarantee without overshooting it, so such a shortfall is by design).
///
/// Fair shares are computed here by water-filling (independently of the engine) from
/// each tenant's weight, guarantee, limit and demand; demand is placed replicas plus
/// pending ones at their smallest size.
#[derive(Debug, Clone, Default)]
struct Fairness {
    jain_weighted: f64,
    weighted_tenants: usize,
    jain_normalised: f64,
    normalised_tenants: usize,
    contending_tenants: usize,
    /// Each tenant below `min(guarantee, demand)`, and whether by less than its smallest
    /// pending replica.
    guarantee_violations: Vec<(String, bool)>,
    /// Largest difference between the engine's reported fair share and this one.
    fair_share_mismatch: f64,
}

struct TenantState {
    name: String,
    weight: f64,
    guarantee: f64,
    limit: Option<f64>,
    enforce: bool,
    usage: f64,
    demand: f64,
    /// The engine's fair share, when known.
    engine_fair: Option<f64>,
    /// The smallest nominal size of its deployments with pending replicas.
    smallest_pending: Option<f64>,
}

fn jain(values: &[f64]) -> f64 {
    let sum: f64 = values.iter().sum();
    let squares: f64 = values.iter().map(|value| value * value).sum();
    if values.is_empty() || squares == 0.0 {
        return 1.0;
    }
    sum * sum / (values.len() as f64 * squares)
}

/// Weighted max-min shares of `capacity` with floors and ceilings: `clamp(level·w, floor,
/// ceiling)` at the level where they add up to the capacity. Returns the shares and level.
fn water_fill(capacity: f64, claims: &[(f64, f64, f64)]) -> (Vec<f64>, f64) {
    let share = |level: f64| -> Vec<f64> {
        claims
            .iter()
            .map(|&(weight, floor, ceiling)| (level * weight).clamp(floor, ceiling))
            .collect()
    };
    let total_ceiling: f64 = claims.iter().map(|claim| claim.2).sum();
    if total_ceiling <= capacity {
        return (share(f64::INFINITY), f64::INFINITY);
    }
    let (mut low, mut high) = (0.0f64, 1.0f64);
    while share(high).iter().sum::<f64>() < capacity {
        high *= 2.0;
    }
    for _ in 0..200 {
        let middle = (low + high) / 2.0;
        if share(middle).iter().sum::<f64>() < capacity {
            low = middle;
        } else {
            high = middle;
        }
    }
    (share(high), high)
}

fn fairness(capacity: f64, tenants: &[TenantState]) -> Fairness {
    let claims: Vec<(f64, f64, f64)> = tenants
        .iter()
        .map(|tenant| {
            let floor = tenant.guarantee.min(tenant.demand);
            let ceiling = match (tenant.enforce, tenant.limit) {
                (true, Some(limit)) => tenant.demand.min(limit),
                _ => tenant.demand,
            };
            (tenant.weight, floor, ceiling.max(floor))
        })
        .collect();
    let (fair, level) = water_fill(capacity, &claims);
    let mut result = Fairness::default();
    let mut weighted = Vec::new();
    let mut normalised = Vec::new();
    for ((tenant, &(weight, floor, ceiling)), &fair) in tenants.iter().zip(&claims).zip(&fair) {
        if let Some(engine_fair) = tenant.engine_fair {
            result.fair_share_mismatch = result.fair_share_mismatch.max((engine_fair - fair).abs());
        }
        let unmet = tenant.demand > tenant.usage + 1e-6;
        if unmet {
            result.contending_tenants += 1;
        }
        let level_share = level * weight;
        if unmet && level_share > floor + 1e-6 && level_share < ceiling - 1e-6 {
            weighted.push(tenant.usage / tenant.weight);
        }
        if fair > 1e-9 {
            normalised.push(tenant.usage / fair);
        }
        if tenant.usage < floor - 1e-6 {
            let shortfall = floor - tenant.usage;
            let within_one = tenant.smallest_pending.is_some_and(|size| shortfall < size - 1e-6);
            result.guarantee_violations.push((
                format!(
                    "{}: holds {:.2} < min(guarantee {:.2}, demand {:.2}); smallest pending replica {}",
                    tenant.name,
                    tenant.usage,
                    tenant.guarantee,
                    tenant.demand,
                    tenant
                        .smallest_pending
                        .map_or_else(|| "-".to_owned(), |size| format!("{size:.2}"))
                ),
                within_one,
            ));
        }
    }
    result.jain_weighted = jain(&weighted);
    result.weighted_tenants = weighted.len();
    result.jain_normalised = jain(&normalised);
    result.normalised_tenants = normalised.len();
    result
}

/// Per tenant, the smallest nominal size of its deployments named in `pending`.
fn smallest_pending<'a>(
    input: &PlacementInput,
    pending: impl Iterator<Item = (&'a str, &'a str)>,
) -> HashMap<String, f64> {
    let mut smallest: HashMap<String, f64> = HashMap::new();
    for (tenant, name) in pending {
        let Some(deployment) = input
            .deployments
            .iter()
            .find(|deployment| deployment.tenant == tenant && deployment.name == name)
        else {
            continue;
        };
        let size = deployment_size(deployment);
        let entry = smallest.entry(tenant.to_owned()).or_insert(size);
        *entry = entry.min(size);
    }
    smallest
}

fn engine_fairness(input: &PlacementInput, placement: &Placement) -> Fairness {
    let capacity = placement.tenants.first().map_or(0.0, |share| share.capacity);
    let pending = smallest_pending(
        input,
        placement
            .explanations
            .iter()
            .filter(|explanation| explanation.pending > 0)
            .map(|explanation| (explanation.tenant.as_str(), explanation.deployment.as_str())),
    );
    let tenants: Vec<TenantState> = placement
        .tenants
        .iter()
        .map(|share: &TenantShare| TenantState {
            name: share.tenant.clone(),
            weight: share.weight,
            guarantee: share.guarantee,
            limit: share.limit,
            enforce: share.quota_mode == QuotaMode::Enforce,
            usage: share.usage,
            demand: share.demand,
            engine_fair: Some(share.fair_share),
            smallest_pending: pending.get(&share.tenant).copied(),
        })
        .collect();
    fairness(capacity, &tenants)
}

// ---------------------------------------------------------------------------------------
// Baseline: naive first fit
// ---------------------------------------------------------------------------------------

struct FfUnit {
    class: usize,
    free_memory: u64,
    usable: bool,
    mig: bool,
    held: bool,
}

struct FfNode {
    ready: bool,
    runtimes: Vec<String>,
    units: Vec<FfUnit>,
    /// By unit position: the units linked to it by a fabric.
    adjacency: Vec<u128>,
    free: usize,
}

/// What the first-fit baseline placed: replicas, and each tenant's usage and demand.
struct FirstFit {
    placed: usize,
    usage: Vec<f64>,
    demand: Vec<f64>,
    /// (tenant, deployment) of every deployment left with pending replicas.
    pending: Vec<(String, String)>,
    elapsed: Duration,
}

/// `size` pairwise-linked members of `candidates` (a plain depth-first search).
fn ff_linked(candidates: u128, size: usize, adjacency: &[u128]) -> Option<u128> {
    fn extend(chosen: u128, missing: usize, mut candidates: u128, adjacency: &[u128]) -> Option<u128> {
        if missing == 0 {
            return Some(chosen);
        }
        while candidates.count_ones() as usize >= missing {
            let next = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            let linked = candidates & adjacency.get(next).copied().unwrap_or(0);
            if let Some(set) = extend(chosen | 1 << next, missing - 1, linked, adjacency) {
                return Some(set);
            }
        }
        None
    }
    extend(0, size, candidates, adjacency)
}

/// A naive placer over the same input: deployments in creation order, each placed up to
/// its `max` on the first node by name that fits, one replica at a time (its first
/// supported runtime, enough free healthy-or-degraded units of one allowed class with the
/// memory, no MIG instance in a multi-device replica, a linked set when required, the
/// tenant's enforced limit). No fairness, no scoring, no reclaim, no explanations.
fn first_fit(input: &PlacementInput) -> FirstFit {
    let started = Instant::now();
    let mut class_index: HashMap<String, usize> = HashMap::new();
    let mut class_capacity: Vec<f64> = Vec::new();
    let mut intern = |name: &str, classes: &BTreeMap<String, HardwareClass>| -> usize {
        if let Some(&index) = class_index.get(name) {
            return index;
        }
        let index = class_capacity.len();
        class_capacity.push(classes.get(name).map_or(1.0, |class| class.relative_capacity));
        class_index.insert(name.to_owned(), index);
        index
    };
    let mut sorted: Vec<&Node> = input.nodes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut nodes: Vec<FfNode> = Vec::with_capacity(sorted.len());
    for node in sorted {
        let mut units = Vec::new();
        let mut position_of_index = HashMap::new();
        let mut devices: Vec<&Device> = node.devices.iter().collect();
        devices.sort_by_key(|device| device.index);
        for device in &devices {
            let usable = device.health != DeviceHealth::Unhealthy;
            match &device.mig {
                Some(instances) => {
                    for instance in instances {
                        units.push(FfUnit {
                            class: intern(&instance.hardware_class, &input.classes),
                            free_memory: instance.memory_bytes,
                            usable,
                            mig: true,
                            held: false,
                        });
                    }
                }
                None => {
                    position_of_index.insert(device.index, units.len());
                    units.push(FfUnit {
                        class: intern(&device.hardware_class, &input.classes),
                        free_memory: device
                            .memory_bytes
                            .saturating_sub(device.other_memory_used_bytes.unwrap_or(0)),
                        usable,
                        mig: false,
                        held: false,
                    });
                }
            }
        }
        let mut adjacency = vec![0u128; units.len()];
        for device in devices.iter().filter(|device| device.mig.is_none()) {
            let Some(&from) = position_of_index.get(&device.index) else {
                continue;
            };
            for link in device.links.iter().filter(|link| link.fabric) {
                if let Some(&to) = position_of_index.get(&link.peer) {
                    adjacency[from] |= 1 << to;
                    adjacency[to] |= 1 << from;
                }
            }
        }
        let free = units.iter().filter(|unit| unit.usable).count();
        nodes.push(FfNode {
            ready: node.state == NodeState::Ready,
            runtimes: node.runtimes.clone(),
            units,
            adjacency,
            free,
        });
    }
    let tenant_index: HashMap<&str, usize> = input
        .tenants
        .iter()
        .enumerate()
        .map(|(index, tenant)| (tenant.name.as_str(), index))
        .collect();
    let mut usage = vec![0.0; input.tenants.len()];
    let mut deployments: Vec<&Deployment> = input.deployments.iter().collect();
    deployments.sort_by(|a, b| (a.created, &a.tenant, &a.name).cmp(&(b.created, &b.tenant, &b.name)));
    let mut placed = 0;
    // Per deployment: its tenant, allowed classes and replicas placed.
    let mut outcome: Vec<(&Deployment, usize, Vec<bool>, u32)> = Vec::with_capacity(deployments.len());
    for deployment in deployments {
        let Some(&tenant) = tenant_index.get(deployment.tenant.as_str()) else {
            continue;
        };
        let spec = &input.tenants[tenant];
        let limit = match spec.quota_mode {
            QuotaMode::Enforce => spec.limit,
            QuotaMode::DryRun => None,
        };
        let allowed: Vec<bool> = (0..class_capacity.len())
            .map(|class| {
                deployment.allowed_classes.is_empty()
                    || deployment
                        .allowed_classes
                        .iter()
                        .any(|name| class_index.get(name.as_str()) == Some(&class))
            })
            .collect();
        let gpus = deployment.gpus_per_replica as usize;
        let mut count = 0;
        'replicas: while count < deployment.max_replicas {
            for node in nodes.iter_mut() {
                if !node.ready || node.free < gpus {
                    continue;
                }
                if !deployment
                    .runtimes
                    .iter()
                    .any(|runtime| node.runtimes.contains(runtime))
                {
                    continue;
                }
                let mut by_class: Vec<(usize, u128)> = Vec::new();
                for (position, unit) in node.units.iter().enumerate() {
                    let fits = unit.usable
                        && !unit.held
                        && allowed[unit.class]
                        && unit.free_memory >= deployment.gpu_memory_bytes
                        && !(gpus > 1 && unit.mig);
                    if fits {
                        match by_class.iter_mut().find(|(class, _)| *class == unit.class) {
                            Some((_, mask)) => *mask |= 1 << position,
                            None => by_class.push((unit.class, 1 << position)),
                        }
                    }
                }
                let set = by_class.iter().find_map(|&(_, mask)| {
                    if (mask.count_ones() as usize) < gpus {
                        None
                    } else if deployment.require_linked_gpus && gpus > 1 {
                        ff_linked(mask, gpus, &node.adjacency)
                    } else {
                        let mut set = 0u128;
                        let mut rest = mask;
                        for _ in 0..gpus {
                            set |= rest & rest.wrapping_neg();
                            rest &= rest - 1;
                        }
                        Some(set)
                    }
                });
                let Some(set) = set else { continue };
                let cost: f64 = (0..node.units.len())
                    .filter(|&position| set & 1 << position != 0)
                    .map(|position| class_capacity[node.units[position].class])
                    .sum();
                if limit.is_some_and(|limit| usage[tenant] + cost > limit + 1e-9) {
                    break 'replicas;
                }
                for position in 0..node.units.len() {
                    if set & 1 << position != 0 {
                        node.units[position].held = true;
                    }
                }
                node.free -= gpus;
                usage[tenant] += cost;
                placed += 1;
                count += 1;
                continue 'replicas;
            }
            break;
        }
        outcome.push((deployment, tenant, allowed, count));
    }
    let elapsed = started.elapsed();
    // Demand as the engine counts it (outside the timing): what is placed, plus pending
    // replicas at the smallest size any unit could give them.
    let mut demand = usage.clone();
    let mut pending = Vec::new();
    for (deployment, tenant, allowed, count) in outcome {
        let gpus = deployment.gpus_per_replica as usize;
        let smallest = nodes
            .iter()
            .flat_map(|node| &node.units)
            .filter(|unit| {
                unit.usable
                    && allowed[unit.class]
                    && unit.free_memory >= deployment.gpu_memory_bytes
                    && !(gpus > 1 && unit.mig)
            })
            .map(|unit| class_capacity[unit.class])
            .fold(f64::INFINITY, f64::min);
        let nominal = gpus as f64 * if smallest.is_finite() { smallest } else { 1.0 };
        demand[tenant] += f64::from(deployment.max_replicas - count) * nominal;
        if count < deployment.max_replicas {
            pending.push((deployment.tenant.clone(), deployment.name.clone()));
        }
    }
    FirstFit {
        placed,
        usage,
        demand,
        pending,
        elapsed,
    }
}

fn first_fit_fairness(input: &PlacementInput, baseline: &FirstFit, capacity: f64) -> Fairness {
    let pending = smallest_pending(
        input,
        baseline
            .pending
            .iter()
            .map(|(tenant, deployment)| (tenant.as_str(), deployment.as_str())),
    );
    let tenants: Vec<TenantState> = input
        .tenants
        .iter()
        .enumerate()
        .map(|(index, tenant)| TenantState {
            name: tenant.name.clone(),
            weight: tenant.weight,
            guarantee: tenant.guarantee,
            limit: tenant.limit,
            enforce: tenant.quota_mode == QuotaMode::Enforce,
            usage: baseline.usage[index],
            demand: baseline.demand[index],
            engine_fair: None,
            smallest_pending: pending.get(&tenant.name).copied(),
        })
        .collect();
    fairness(capacity, &tenants)
}

// ---------------------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

/// Nearest-rank percentiles of `values` (ms).
fn percentiles(values: &[f64]) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Percentiles {
        p50: rank(0.50),
        p99: rank(0.99),
        max: sorted[sorted.len() - 1],
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
    }
}

/// One decision sample.
#[derive(Debug, Clone)]
struct Sample {
    kind: &'static str,
    ms: f64,
    /// The same decision as the reconciler takes it on a large fleet: without per-node
    /// verdicts (`place_with(.., Verdicts::None)`; `explain` computes them on demand).
    lean_ms: f64,
    /// Replicas the pass placed.
    placed: usize,
    /// For a scale-up or a new deployment: the changed deployment got its replica.
    target_placed: bool,
    /// The pass reclaimed capacity (a `Reclaimed` stop).
    reclaimed: bool,
}

/// Which samples a row of the report covers.
type SampleFilter = fn(&Sample) -> bool;

/// The changes a decision sample makes to the loaded fleet, in turn.
const SAMPLE_KINDS: [&str; 4] = ["scale-up", "new-deployment", "node-joins", "deployment-removed"];

struct SizeResult {
    /// Each replica decision inside the full pass from empty (ms).
    replica_decisions: Percentiles,
    replica_decision_count: usize,
    nodes: usize,
    units: usize,
    ready_nodes: usize,
    capacity: f64,
    tenants: usize,
    deployments: usize,
    full_pass: Duration,
    placed: usize,
    pending_deployments: usize,
    node_verdicts: usize,
    steady_pass: Duration,
    steady_actions: usize,
    samples: Vec<Sample>,
    fairness: Fairness,
    used_fraction: f64,
    baseline: Option<(FirstFit, Fairness)>,
    peak_rss_mib: Option<f64>,
}

impl SizeResult {
    fn placements_per_s(&self) -> f64 {
        self.placed as f64 / self.full_pass.as_secs_f64()
    }

    /// Decision times without per-node verdicts.
    fn lean_decisions(&self) -> Percentiles {
        percentiles(&self.samples.iter().map(|sample| sample.lean_ms).collect::<Vec<_>>())
    }

    fn decisions(&self, filter: impl Fn(&Sample) -> bool) -> (Percentiles, usize) {
        let times: Vec<f64> = self
            .samples
            .iter()
            .filter(|sample| filter(sample))
            .map(|sample| sample.ms)
            .collect();
        (percentiles(&times), times.len())
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn peak_rss_reset() {
    // Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn count_places(placement: &Placement) -> usize {
    placement
        .actions
        .iter()
        .filter(|action| matches!(action, Action::Place { .. }))
        .count()
}

fn run_size(args: &Args, nodes: usize, started: Instant) -> Result<SizeResult> {
    let progress = |text: String| eprintln!("[{:>7.1}s] {nodes} nodes: {text}", started.elapsed().as_secs_f64());
    let input = build_input(nodes, args.tenants, args.seed);
    let units: usize = input
        .nodes
        .iter()
        .flat_map(|node| &node.devices)
        .map(|device| device.mig.as_ref().map_or(1, Vec::len))
        .sum();
    let ready_nodes = input.nodes.iter().filter(|node| node.state == NodeState::Ready).count();
    progress(format!(
        "{units} units, {} tenants, {} deployments; full pass from empty",
        input.tenants.len(),
        input.deployments.len()
    ));
    peak_rss_reset();

    let clock = Instant::now();
    let first = place(&input).context("the simulated input is refused")?;
    let full_pass = clock.elapsed();
    // The same pass again, timing each replica decision inside it (choosing the next
    // deployment and a node for one replica, or finding that none fits).
    let (timed, decision_times) = place_timed(&input, &Verdicts::All).context("the simulated input is refused")?;
    ensure!(timed.replicas == first.replicas, "the timed pass decided differently");
    drop(timed);
    let replica_decisions = percentiles(&decision_times.iter().map(|d| ms(*d)).collect::<Vec<_>>());
    let replica_decision_count = decision_times.len();
    let placed = count_places(&first);
    ensure!(
        placed == first.replicas.len(),
        "a pass from empty placed {placed} but returned {} replicas",
        first.replicas.len()
    );
    let pending_deployments = first
        .explanations
        .iter()
        .filter(|explanation| explanation.pending > 0)
        .count();
    let node_verdicts = first
        .explanations
        .iter()
        .map(|explanation| explanation.nodes.len())
        .sum();
    progress(format!(
        "placed {placed} replicas in {:.3} s; {pending_deployments} deployments pending ({node_verdicts} node verdicts)",
        full_pass.as_secs_f64()
    ));

    let mut loaded = input.clone();
    loaded.current = first.replicas.clone();
    loaded.next_sequence = first.next_sequence;
    let clock = Instant::now();
    let steady = place(&loaded).context("the loaded input is refused")?;
    let steady_pass = clock.elapsed();
    let steady_actions = steady.actions.len();
    if steady_actions != 0 || steady.replicas != first.replicas {
        bail!("a second pass over the output changed it ({steady_actions} actions)");
    }
    drop(steady);
    progress(format!("steady pass {:.1} ms", ms(steady_pass)));

    let mut rng = fastrand::Rng::with_seed(args.seed ^ 0x5eed);
    let mut samples = Vec::with_capacity(args.samples);
    for sample in 0..args.samples {
        let mut changed = loaded.clone();
        let kind = SAMPLE_KINDS[sample % SAMPLE_KINDS.len()];
        // The deployment that should get one more replica, for the first two kinds.
        let mut target: Option<(String, String)> = None;
        match kind {
            "scale-up" => {
                let index = rng.usize(0..changed.deployments.len());
                let deployment = &mut changed.deployments[index];
                deployment.max_replicas += 1;
                target = Some((deployment.tenant.clone(), deployment.name.clone()));
            }
            "new-deployment" => {
                let shape = &SHAPES[pick_weighted(&mut rng, &SHAPES, |shape| shape.weight)];
                let tenant = changed.tenants[rng.usize(0..changed.tenants.len())].name.clone();
                let name = format!("{tenant}-probe{sample}");
                let created = (changed.deployments.len() + sample) as u64;
                changed
                    .deployments
                    .push(deployment_from_shape(shape, &tenant, name.clone(), created, 1, 1));
                target = Some((tenant, name));
            }
            "node-joins" => {
                let mut node = build_node(&mut rng, nodes + sample);
                node.state = NodeState::Ready;
                changed.nodes.push(node);
            }
            _ => {
                let index = rng.usize(0..changed.deployments.len());
                changed.deployments.remove(index);
            }
        }
        let clock = Instant::now();
        let decided = place(&changed).context("a changed input is refused")?;
        let elapsed = clock.elapsed();
        let clock = Instant::now();
        let lean = place_with(&changed, &Verdicts::None).context("a changed input is refused")?;
        let lean_elapsed = clock.elapsed();
        debug_assert_eq!(lean.replicas, decided.replicas);
        let target_placed = target.is_some_and(|(tenant, deployment)| {
            decided.actions.iter().any(|action| {
                matches!(action, Action::Place { replica, .. }
                    if replica.tenant == tenant && replica.deployment == deployment)
            })
        });
        let reclaimed = decided.actions.iter().any(|action| {
            matches!(
                action,
                Action::Stop {
                    reason: StopReason::Reclaimed { .. },
                    ..
                }
            )
        });
        samples.push(Sample {
            kind,
            ms: ms(elapsed),
            lean_ms: ms(lean_elapsed),
            placed: count_places(&decided),
            target_placed,
            reclaimed,
        });
        drop(decided);
        if (sample + 1) % 50 == 0 {
            progress(format!("{} decision samples", sample + 1));
        }
    }
    let peak_rss_mib = peak_rss_mib();

    let fairness = engine_fairness(&input, &first);
    let capacity = first.tenants.first().map_or(0.0, |share| share.capacity);
    let used: f64 = first.tenants.iter().map(|share| share.usage).sum();
    let baseline = if args.no_baseline {
        None
    } else {
        let baseline = first_fit(&input);
        progress(format!(
            "first fit placed {} in {:.3} s",
            baseline.placed,
            baseline.elapsed.as_secs_f64()
        ));
        let fairness = first_fit_fairness(&input, &baseline, capacity);
        Some((baseline, fairness))
    };
    Ok(SizeResult {
        replica_decisions,
        replica_decision_count,
        nodes,
        units,
        ready_nodes,
        capacity,
        tenants: input.tenants.len(),
        deployments: input.deployments.len(),
        full_pass,
        placed,
        pending_deployments,
        node_verdicts,
        steady_pass,
        steady_actions,
        samples,
        fairness,
        used_fraction: if capacity > 0.0 { used / capacity } else { 0.0 },
        baseline,
        peak_rss_mib,
    })
}

// ---------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------

/// The machine: its cores (processors in `/proc/cpuinfo`), the cores this process may run
/// on (fewer under `taskset`), and the CPU model.
fn machine() -> (usize, usize, String) {
    let available = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo.lines().filter(|line| line.starts_with("processor")).count();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, model)| model.trim().to_owned());
    (cores, available, model)
}

fn print_markdown(args: &Args, results: &[SizeResult]) {
    let (cores, available, model) = machine();
    println!("## placement-bench results\n");
    println!(
        "Machine: {cores} cores ({model}), {available} available to this process; one thread. Seed {}, {} tenants, {} decision samples per size.\n",
        args.seed, args.tenants, args.samples
    );
    println!("| nodes | units | capacity | deployments | placed | full pass s | placements/s | steady pass ms | decision p50 ms | p99 ms | max ms | samples | Jain (weighted) | Jain (normalised) | guarantee violations (< 1 replica) | peak RSS MiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let (all, count) = r.decisions(|_| true);
        let violations = &r.fairness.guarantee_violations;
        println!(
            "| {} | {} | {:.0} | {} | {} | {:.3} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.3} ({}) | {:.3} ({}) | {} ({}) | {} |",
            r.nodes,
            r.units,
            r.capacity,
            r.deployments,
            r.placed,
            r.full_pass.as_secs_f64(),
            r.placements_per_s(),
            ms(r.steady_pass),
            all.p50,
            all.p99,
            all.max,
            count,
            r.fairness.jain_weighted,
            r.fairness.weighted_tenants,
            r.fairness.jain_normalised,
            r.fairness.normalised_tenants,
            violations.len(),
            violations.iter().filter(|(_, within_one)| *within_one).count(),
            r.peak_rss_mib.map_or_else(|| "-".into(), |mib| format!("{mib:.0}")),
        );
    }
    println!("\nReplica decisions inside the full pass from empty (ms; each: choose the next deployment and a node for one replica, or find that none fits):\n");
    println!("| nodes | decisions | p50 | p99 | max | mean |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let p = r.replica_decisions;
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            r.nodes, r.replica_decision_count, p.p50, p.p99, p.max, p.mean
        );
    }
    println!("\nDecision time as the reconciler takes it on a large fleet (ms; `place_with(.., Verdicts::None)`: per-node verdicts left out, computed on demand by `explain`):\n");
    println!("| nodes | samples | p50 | p99 | max | mean | p99 with verdicts / without |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let (all, count) = r.decisions(|_| true);
        let lean = r.lean_decisions();
        println!(
            "| {} | {count} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.nodes,
            lean.p50,
            lean.p99,
            lean.max,
            lean.mean,
            all.p99 / lean.p99.max(f64::EPSILON)
        );
    }
    println!("\nDecision time by kind of change (ms; one `place()` after one change to the loaded fleet):\n");
    println!("| nodes | change | samples | passes that placed | replicas placed | changed deployment placed | p50 | p99 | max | mean |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let rows: [(&str, SampleFilter); 7] = [
            ("scale-up", |s| s.kind == "scale-up"),
            ("new-deployment", |s| s.kind == "new-deployment"),
            ("node-joins", |s| s.kind == "node-joins"),
            ("deployment-removed", |s| s.kind == "deployment-removed"),
            ("any that placed", |s| s.placed > 0),
            ("any that reclaimed", |s| s.reclaimed),
            ("any that placed nothing", |s| s.placed == 0),
        ];
        for (label, filter) in rows {
            let (p, count) = r.decisions(filter);
            let chosen: Vec<&Sample> = r.samples.iter().filter(|s| filter(s)).collect();
            println!(
                "| {} | {label} | {count} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                r.nodes,
                chosen.iter().filter(|s| s.placed > 0).count(),
                chosen.iter().map(|s| s.placed).sum::<usize>(),
                chosen.iter().filter(|s| s.target_placed).count(),
                p.p50,
                p.p99,
                p.max,
                p.mean
            );
        }
    }
    println!("\nContext:\n");
    println!("| nodes | ready nodes | used / capacity | pending deployments | node verdicts in explanations | contending tenants | fair-share check (max diff vs engine) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {} | {:.3} | {} | {} | {} | {:.2e} |",
            r.nodes,
            r.ready_nodes,
            r.used_fraction,
            r.pending_deployments,
            r.node_verdicts,
            r.fairness.contending_tenants,
            r.fairness.fair_share_mismatch
        );
    }
    if results.iter().any(|r| r.baseline.is_some()) {
        println!("\nBaseline (same run, same input): naive first fit, no fairness, scoring or explanations.\n");
        println!("| nodes | first-fit placed | first-fit s | first-fit placements/s | engine / first-fit placements/s | first-fit Jain (weighted) | first-fit Jain (normalised) | first-fit guarantee violations |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in results {
            let Some((baseline, fairness)) = &r.baseline else {
                continue;
            };
            let rate = baseline.placed as f64 / baseline.elapsed.as_secs_f64();
            println!(
                "| {} | {} | {:.3} | {:.0} | {:.3} | {:.3} ({}) | {:.3} ({}) | {} |",
                r.nodes,
                baseline.placed,
                baseline.elapsed.as_secs_f64(),
                rate,
                r.placements_per_s() / rate,
                fairness.jain_weighted,
                fairness.weighted_tenants,
                fairness.jain_normalised,
                fairness.normalised_tenants,
                fairness.guarantee_violations.len()
            );
        }
    }
    if results.len() >= 2 {
        println!("\nScaling (largest over smallest fleet):\n");
        let (small, large) = (&results[0], &results[results.len() - 1]);
        let nodes = large.nodes as f64 / small.nodes as f64;
        let (small_decisions, _) = small.decisions(|_| true);
        let (large_decisions, _) = large.decisions(|_| true);
        println!(
            "- nodes ×{nodes:.2}: full pass ×{:.2}, placements/s ×{:.2}, steady pass ×{:.2}, decision p50 ×{:.2}, p99 ×{:.2}",
            large.full_pass.as_secs_f64() / small.full_pass.as_secs_f64(),
            large.placements_per_s() / small.placements_per_s(),
            large.steady_pass.as_secs_f64() / small.steady_pass.as_secs_f64(),
            large_decisions.p50 / small_decisions.p50,
            large_decisions.p99 / small_decisions.p99,
        );
    }
    if let Some(target) = results.iter().find(|r| r.nodes == 10_000) {
        let (decisions, _) = target.decisions(|_| true);
        println!("\nTargets at 10,000 nodes (ratio below 1 meets a time target; above 1 a rate or index target):\n");
        println!(
            "- placements/s {:.0} / {TARGET_PLACEMENTS_PER_S:.0} = {:.2}",
            target.placements_per_s(),
            target.placements_per_s() / TARGET_PLACEMENTS_PER_S
        );
        println!(
            "- decision p99 {:.1} ms / {TARGET_P99_MS:.0} ms = {:.2}",
            decisions.p99,
            decisions.p99 / TARGET_P99_MS
        );
        println!(
            "- Jain (weighted) {:.3} / {TARGET_JAIN} = {:.2}",
            target.fairness.jain_weighted,
            target.fairness.jain_weighted / TARGET_JAIN
        );
    }
    for r in results {
        for (violation, within_one) in &r.fairness.guarantee_violations {
            let by = if *within_one {
                "by less than one replica"
            } else {
                "by a replica or more"
            };
            println!("\n{} nodes: guarantee not met ({by}): {violation}", r.nodes);
        }
    }
}

fn to_json(args: &Args, results: &[SizeResult]) -> serde_json::Value {
    let (cores, available, model) = machine();
    let percentiles = |p: Percentiles| json!({ "p50_ms": p.p50, "p99_ms": p.p99, "max_ms": p.max, "mean_ms": p.mean });
    let fairness = |f: &Fairness| {
        json!({
            "jain_weighted": f.jain_weighted,
            "jain_weighted_tenants": f.weighted_tenants,
            "jain_normalised": f.jain_normalised,
            "jain_normalised_tenants": f.normalised_tenants,
            "contending_tenants": f.contending_tenants,
            "guarantee_violations": f.guarantee_violations.iter().map(|(text, _)| text).collect::<Vec<_>>(),
            "guarantee_violations_within_one_replica": f.guarantee_violations.iter().filter(|(_, within)| *within).count(),
            "fair_share_max_diff_vs_engine": f.fair_share_mismatch,
        })
    };
    json!({
        "machine": { "cores": cores, "available_cores": available, "model": model },
        "seed": args.seed,
        "tenants": args.tenants,
        "samples": args.samples,
        "sizes": results.iter().map(|r| json!({
            "decision_without_verdicts": percentiles(r.lean_decisions()),
            "replica_decisions_in_full_pass": percentiles(r.replica_decisions),
            "replica_decision_count": r.replica_decision_count,
            "nodes": r.nodes,
            "ready_nodes": r.ready_nodes,
            "units": r.units,
            "capacity": r.capacity,
            "deployments": r.deployments,
            "tenants": r.tenants,
            "placed": r.placed,
            "full_pass_s": r.full_pass.as_secs_f64(),
            "placements_per_s": r.placements_per_s(),
            "pending_deployments": r.pending_deployments,
            "node_verdicts": r.node_verdicts,
            "steady_pass_ms": ms(r.steady_pass),
            "steady_actions": r.steady_actions,
            "used_fraction": r.used_fraction,
            "decisions": percentiles(r.decisions(|_| true).0),
            "decisions_that_placed": percentiles(r.decisions(|s| s.placed > 0).0),
            "decisions_by_kind": {
                "scale_up": percentiles(r.decisions(|s| s.kind == "scale-up").0),
                "new_deployment": percentiles(r.decisions(|s| s.kind == "new-deployment").0),
                "node_joins": percentiles(r.decisions(|s| s.kind == "node-joins").0),
                "deployment_removed": percentiles(r.decisions(|s| s.kind == "deployment-removed").0),
            },
            "samples_that_placed": r.samples.iter().filter(|s| s.placed > 0).count(),
            "samples_that_reclaimed": r.samples.iter().filter(|s| s.reclaimed).count(),
            "samples_target_placed": r.samples.iter().filter(|s| s.target_placed).count(),
            "fairness": fairness(&r.fairness),
            "peak_rss_mib": r.peak_rss_mib,
            "baseline_first_fit": r.baseline.as_ref().map(|(b, f)| json!({
                "placed": b.placed,
                "seconds": b.elapsed.as_secs_f64(),
                "placements_per_s": b.placed as f64 / b.elapsed.as_secs_f64(),
                "fairness": fairness(f),
            })),
        })).collect::<Vec<_>>(),
    })
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.nodes = vec![500];
        args.tenants = 20;
        args.samples = 20;
    }
    ensure!(args.tenants > 0, "--tenants must be at least 1");
    ensure!(args.nodes.iter().all(|&n| n > 0), "--nodes must be positive");
    let started = Instant::now();
    let (cores, available, model) = machine();
    eprintln!(
        "placement-bench: nodes {:?}, {} tenants, {} samples, seed {}; {cores} cores ({model}), {available} available, one thread",
        args.nodes, args.tenants, args.samples, args.seed
    );
    let mut results = Vec::new();
    for &nodes in &args.nodes {
        results.push(run_size(&args, nodes, started)?);
    }
    print_markdown(&args, &results);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&to_json(&args, &results))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
