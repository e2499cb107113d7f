//! API views of applied objects: the manifest plus the status the coordinator observes
//! (from the last placement pass and the agents' reports), explanations and usage.
//!
//! Pure functions of the catalog and the [`PlacementState`]; the API handlers lock both
//! and call these. Conditions keep the time their status last changed in the state.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    api_types::{
        Condition, DeploymentStatus, DeploymentView, ExplainView, HardwareClassStatus, HardwareClassView,
        NodeVerdictView, ObjectMetaView, ObjectView, PlacedReplica, ReasonView, ReplicaCounts, TenantShareView,
        TenantStatus, TenantView, UsageRow,
    },
    manifest::{Kind, ModelDeployment, QuotaMode, API_VERSION},
    objects::{object_ref, Catalog, Stored},
    placement::{DeploymentExplanation, Reason, TenantShare},
    reconciler::{summary, PlacementState},
    registry::NodeStatus,
    time::rfc3339_ms,
};

fn meta<T>(
    stored: &Stored<T>,
    name: &str,
    namespace: Option<&str>,
    labels: &BTreeMap<String, String>,
) -> ObjectMetaView {
    ObjectMetaView {
        name: name.to_string(),
        namespace: namespace.map(str::to_string),
        labels: labels.clone(),
        generation: stored.generation,
        creation_timestamp: rfc3339_ms(stored.created_ms),
    }
}

fn spec_of(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(mut map) => map.remove("spec").unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

fn condition(
    state: &mut PlacementState,
    object: &str,
    kind: &str,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let now = if state.evaluated_ms > 0 {
        state.evaluated_ms
    } else {
        crate::time::now_ms()
    };
    let key = (object.to_string(), kind.to_string());
    let since = match state.transitions.get(&key) {
        Some((previous, since)) if *previous == status => *since,
        _ => {
            state.transitions.insert(key, (status.clone(), now));
            now
        }
    };
    Condition {
        kind: kind.to_string(),
        status,
        reason: reason.to_string(),
        message,
        last_transition_time: rfc3339_ms(since),
    }
}

fn share_of<'a>(state: &'a PlacementState, tenant: &str) -> Option<&'a TenantShare> {
    state
        .placement
        .as_ref()
        .and_then(|p| p.tenants.iter().find(|t| t.tenant == tenant))
}

/// A tenant's view.
pub fn tenant(catalog: &Catalog, state: &mut PlacementState, name: &str) -> Option<TenantView> {
    let stored = catalog.tenants.get(name)?;
    let t = &stored.object;
    let guarantee = t.spec.guarantee.as_ref().map_or(0.0, |q| catalog.normalised(q));
    let limit = t.spec.limit.as_ref().map(|q| catalog.normalised(q).max(guarantee));
    let share = share_of(state, name).cloned();
    let placed: Vec<_> = state
        .placement
        .iter()
        .flat_map(|p| p.replicas.iter())
        .filter(|r| r.tenant == name)
        .cloned()
        .collect();
    let pending: u32 = state
        .placement
        .iter()
        .flat_map(|p| p.explanations.iter())
        .filter(|e| e.tenant == name)
        .map(|e| e.pending)
        .sum();
    let enforced = t.spec.quota_mode == QuotaMode::Enforce;
    let usage = share.as_ref().map_or(0.0, |s| s.usage);
    let demand = share.as_ref().map_or(0.0, |s| s.demand);
    let over_limit = share.as_ref().is_some_and(|s| s.over_limit);
    let object = object_ref(Kind::Tenant, None, name);
    let limit_text = limit.map_or("no limit".to_string(), |l| format!("limit {l:.2} normalised GPUs"));
    let conditions = vec![
        if enforced {
            condition(
                state,
                &object,
                "QuotaEnforced",
                true,
                "Enforce",
                format!("{limit_text} is enforced: nothing is placed beyond it"),
            )
        } else {
            condition(
                state,
                &object,
                "QuotaEnforced",
                false,
                "DryRun",
                format!("dry-run: {limit_text} is reported, not enforced"),
            )
        },
        {
            let wanted = guarantee.min(demand);
            let met = usage + 1e-9 >= wanted;
            let message =
                format!("holds {usage:.2} of min(guarantee {guarantee:.2}, demand {demand:.2}) = {wanted:.2}");
            condition(
                state,
                &object,
                "GuaranteeMet",
                met,
                if met { "Met" } else { "BelowGuarantee" },
                message,
            )
        },
        condition(
            state,
            &object,
            "WithinLimit",
            !over_limit,
            if over_limit { "OverLimit" } else { "WithinLimit" },
            format!("holds {usage:.2}; {limit_text}"),
        ),
    ];
    let spec = spec_of(serde_json::to_value(crate::manifest::Manifest::Tenant(t.clone())).unwrap_or_default());
    Some(ObjectView {
        api_version: API_VERSION.to_string(),
        kind: Kind::Tenant.as_str().to_string(),
        metadata: meta(stored, name, None, &t.metadata.labels),
        spec,
        status: TenantStatus {
            quota_mode: t.spec.quota_mode.as_str().to_string(),
            quota_enforced: enforced,
            guarantee_gpus: guarantee,
            limit_gpus: limit,
            allocated_gpus: usage,
            allocated_devices: placed.iter().map(|r| r.devices.len() as u32).sum(),
            fair_share_gpus: share.as_ref().map_or(0.0, |s| s.fair_share),
            demand_gpus: demand,
            capacity_gpus: share.as_ref().map_or(0.0, |s| s.capacity),
            over_limit,
            deployments: catalog.deployments.keys().filter(|(tenant, _)| tenant == name).count() as u32,
            replicas_placed: placed.len() as u32,
            replicas_pending: pending,
            conditions,
        },
    })
}

/// A hardware class's view.
pub fn hardware_class(catalog: &Catalog, state: &mut PlacementState, name: &str) -> Option<HardwareClassView> {
    let stored = catalog.classes.get(name)?;
    let c = &stored.object;
    let units: Vec<&String> = state
        .unit_class
        .iter()
        .filter(|(_, class)| *class == name)
        .map(|(uuid, _)| uuid)
        .collect();
    let nodes: BTreeSet<&str> = units
        .iter()
        .filter_map(|uuid| state.unit_node.get(*uuid).map(String::as_str))
        .collect();
    let held: BTreeSet<&str> = state
        .placement
        .iter()
        .flat_map(|p| p.replicas.iter().flat_map(|r| r.devices.iter().map(String::as_str)))
        .collect();
    let allocated = units.iter().filter(|uuid| held.contains(uuid.as_str())).count() as u32;
    let devices = units.len() as u32;
    let node_count = nodes.len() as u32;
    let object = object_ref(Kind::HardwareClass, None, name);
    let conditions = vec![condition(
        state,
        &object,
        "Matched",
        devices > 0,
        if devices > 0 { "DevicesMatched" } else { "NoDevices" },
        if devices > 0 {
            format!("{devices} device(s) on {node_count} node(s) match")
        } else {
            "no device in the fleet matches these rules".to_string()
        },
    )];
    let spec = spec_of(serde_json::to_value(crate::manifest::Manifest::HardwareClass(c.clone())).unwrap_or_default());
    Some(ObjectView {
        api_version: API_VERSION.to_string(),
        kind: Kind::HardwareClass.as_str().to_string(),
        metadata: meta(stored, name, None, &c.metadata.labels),
        spec,
        status: HardwareClassStatus {
            devices,
            nodes: node_count,
            allocated,
            conditions,
        },
    })
}

fn placements(state: &PlacementState, tenant: &str, deployment: &str) -> Vec<PlacedReplica> {
    state
        .replicas_of(tenant, deployment)
        .map(|r| PlacedReplica {
            name: r.name.clone(),
            node: r.node.clone(),
            runtime: r.runtime.clone(),
            hardware_class: state.class_of(r),
            gpus: r.devices.clone(),
            phase: state.phases.get(&r.name).map_or("Pending", |p| p.as_str()).to_string(),
        })
        .collect()
}

fn counts(state: &PlacementState, d: &ModelDeployment) -> ReplicaCounts {
    let tenant = d.tenant();
    let name = d.metadata.name.as_str();
    let mut counts = ReplicaCounts {
        min: d.spec.replicas.min,
        max: d.spec.replicas.max,
        ..ReplicaCounts::default()
    };
    for r in state.replicas_of(tenant, name) {
        match state.node_status.get(&r.node) {
            Some(NodeStatus::Draining) | Some(NodeStatus::NotReady) | None => counts.displaced += 1,
            _ => counts.placed += 1,
        }
        if state.phases.get(&r.name) == Some(&pyxis_protocol::ReplicaPhase::Ready) {
            counts.ready += 1;
        }
    }
    counts.pending = state.explanation(tenant, name).map_or(0, |e| e.pending);
    counts
}

/// A deployment's view.
pub fn deployment(catalog: &Catalog, state: &mut PlacementState, tenant: &str, name: &str) -> Option<DeploymentView> {
    let stored = catalog.deployments.get(&(tenant.to_string(), name.to_string()))?;
    let d = &stored.object;
    let counts = counts(state, d);
    let placements = placements(state, tenant, name);
    let object = object_ref(Kind::ModelDeployment, Some(tenant), name);
    let explanation = state.explanation(tenant, name).map(summary);
    let available = counts.ready >= counts.min;
    let starting: Vec<&str> = placements
        .iter()
        .filter(|p| p.phase != "Ready")
        .map(|p| p.name.as_str())
        .collect();
    let failing: Vec<&str> = placements
        .iter()
        .filter(|p| matches!(p.phase.as_str(), "Failed" | "CrashLoop" | "Unhealthy"))
        .map(|p| p.name.as_str())
        .collect();
    let (progressing, progressing_reason, progressing_message) = if !failing.is_empty() {
        (
            false,
            "ReplicaFailure",
            format!(
                "failing: {}; `pyxis describe replica NAME` shows the exit and the log tail",
                failing.join(", ")
            ),
        )
    } else if !starting.is_empty() {
        (
            true,
            "ReplicasStarting",
            format!("not ready yet: {}", starting.join(", ")),
        )
    } else {
        (false, "Stable", "every placed replica is ready".to_string())
    };
    let placed_message = explanation
        .clone()
        .unwrap_or_else(|| format!("{} of max {} placed; nothing pending", counts.placed, counts.max));
    let conditions = vec![
        condition(
            state,
            &object,
            "Available",
            available,
            if available {
                "MinimumReplicasReady"
            } else {
                "MinimumReplicasUnavailable"
            },
            format!("{} ready of min {}", counts.ready, counts.min),
        ),
        condition(
            state,
            &object,
            "Placed",
            counts.pending == 0,
            if counts.pending == 0 { "AllPlaced" } else { "Pending" },
            placed_message,
        ),
        condition(
            state,
            &object,
            "Progressing",
            progressing,
            progressing_reason,
            progressing_message,
        ),
    ];
    let observed_generation = if state.evaluated_ms >= stored.updated_ms {
        stored.generation
    } else {
        stored.generation.saturating_sub(1)
    };
    let spec = spec_of(serde_json::to_value(crate::manifest::Manifest::ModelDeployment(d.clone())).unwrap_or_default());
    Some(ObjectView {
        api_version: API_VERSION.to_string(),
        kind: Kind::ModelDeployment.as_str().to_string(),
        metadata: meta(stored, name, Some(tenant), &d.metadata.labels),
        spec,
        status: DeploymentStatus {
            observed_generation,
            replicas: counts,
            placements,
            conditions,
        },
    })
}

fn reason_code(reason: &Reason) -> &'static str {
    match reason {
        Reason::NodeUnschedulable { .. } => "node-unschedulable",
        Reason::RuntimeUnsupported { .. } => "runtime-unsupported",
        Reason::ClassNotAllowed { .. } => "class-not-allowed",
        Reason::InsufficientMemory { .. } => "insufficient-memory",
        Reason::Unhealthy { .. } => "unhealthy",
        Reason::MigInstances { .. } => "mig-instances",
        Reason::InsufficientGpus { .. } => "insufficient-gpus",
        Reason::MixedClasses { .. } => "mixed-classes",
        Reason::NoLinkedGpus { .. } => "no-linked-gpus",
        Reason::Quota { .. } => "quota",
        Reason::FairShare { .. } => "fair-share",
        Reason::Deferred => "deferred",
    }
}

fn share_view(share: &TenantShare) -> TenantShareView {
    TenantShareView {
        tenant: share.tenant.clone(),
        weight: share.weight,
        usage: share.usage,
        demand: share.demand,
        guarantee: share.guarantee,
        limit: share.limit,
        fair_share: share.fair_share,
        capacity: share.capacity,
        quota_mode: share.quota_mode.as_str().to_string(),
        over_limit: share.over_limit,
    }
}

/// `explain deployment`: the last decision for a deployment. `computed` is its
/// explanation with per-node verdicts when the pass left them out (computed on demand).
pub fn explain(
    catalog: &Catalog,
    state: &PlacementState,
    tenant: &str,
    name: &str,
    computed: Option<&DeploymentExplanation>,
) -> Option<ExplainView> {
    let stored = catalog.deployments.get(&(tenant.to_string(), name.to_string()))?;
    let counts = counts(state, &stored.object);
    let explanation = computed.or_else(|| state.explanation(tenant, name));
    let summary = match (explanation, &state.error) {
        (_, Some(error)) => format!("placement is failing: {error}"),
        (Some(e), None) => summary(e),
        (None, None) if state.placement.is_none() => "not evaluated yet: the first placement pass has not run".into(),
        (None, None) => format!(
            "{} placed of max {}; nothing pending: every wanted replica is placed",
            counts.placed, counts.max
        ),
    };
    let share = explanation
        .map(|e| share_view(&e.share))
        .or_else(|| share_of(state, tenant).map(share_view))
        .unwrap_or_default();
    let nodes = explanation
        .map(|e| {
            e.nodes
                .iter()
                .map(|n| NodeVerdictView {
                    node: n.node.clone(),
                    reasons: n
                        .reasons
                        .iter()
                        .map(|r| ReasonView {
                            code: reason_code(r).to_string(),
                            message: r.to_string(),
                        })
                        .collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(ExplainView {
        tenant: tenant.to_string(),
        deployment: name.to_string(),
        evaluated_at: rfc3339_ms(state.evaluated_ms),
        summary,
        replicas: counts,
        placements: placements(state, tenant, name),
        share,
        nodes,
    })
}

/// Usage rows from stored and not yet stored GPU-seconds, priced by class.
pub fn usage_rows(
    stored: Vec<(String, String, f64)>,
    state: &PlacementState,
    catalog: &Catalog,
    since_hour_ms: i64,
    tenant: Option<&str>,
) -> Vec<UsageRow> {
    let mut seconds: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (t, class, s) in stored {
        *seconds.entry((t, class)).or_default() += s;
    }
    for ((t, class, hour), s) in &state.unflushed_usage {
        if *hour >= since_hour_ms && tenant.is_none_or(|wanted| wanted == t) {
            *seconds.entry((t.clone(), class.clone())).or_default() += s;
        }
    }
    seconds
        .into_iter()
        .map(|((tenant, hardware_class), gpu_seconds)| {
            let price = catalog
                .class_terms(&hardware_class)
                .map(|(_, price)| price)
                .or_else(|| state.class_terms.get(&hardware_class).map(|c| c.price_per_gpu_hour))
                .unwrap_or(0.0);
            let gpu_hours = gpu_seconds / 3600.0;
            UsageRow {
                tenant,
                hardware_class,
                gpu_seconds,
                gpu_hours,
                price_per_gpu_hour: price,
                cost: gpu_hours * price,
            }
        })
        .collect()
}

/// One row per tenant: its calls and tokens joined with its GPU-hours and cost.
pub fn tenant_usage(
    items: &[crate::api_types::UsageRow],
    tokens: &[crate::audit::TokenUsage],
) -> Vec<crate::api_types::TenantUsageRow> {
    let mut names: Vec<&str> = items
        .iter()
        .map(|r| r.tenant.as_str())
        .chain(tokens.iter().map(|t| t.tenant.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|tenant| {
            let own = items.iter().filter(|r| r.tenant == tenant);
            let (gpu_hours, cost) = own.fold((0.0, 0.0), |(h, c), r| (h + r.gpu_hours, c + r.cost));
            let t = tokens.iter().find(|t| t.tenant == tenant);
            let prompt_tokens = t.map_or(0, |t| t.prompt_tokens);
            let completion_tokens = t.map_or(0, |t| t.completion_tokens);
            let total = prompt_tokens + completion_tokens;
            crate::api_types::TenantUsageRow {
                tenant: tenant.to_string(),
                calls: t.map_or(0, |t| t.calls),
                errors: t.map_or(0, |t| t.errors),
                prompt_tokens,
                completion_tokens,
                gpu_hours,
                cost,
                cost_per_million_tokens: (total > 0).then(|| cost / total as f64 * 1e6),
            }
        })
        .collect()
}
