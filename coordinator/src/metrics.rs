//! Coordinator metrics, rendered at scrape time from counters and the registry.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use pyxis_agent::prom::{Exposition, Histogram, Kind};

use crate::{registry::NodeStatus, server::Shared};

/// Why a link connection or message was refused (metric label).
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// TLS handshake failed (certificate from another CA, garbage, ...).
    Handshake,
    /// Bad, expired or used-up join token.
    Token,
    /// Revoked node.
    Revoked,
    /// Certificate of no known node.
    UnknownCertificate,
    /// No common protocol version.
    Version,
    /// Malformed frames or out-of-order messages.
    Protocol,
    /// A second agent with the identity of a connected node.
    Duplicate,
    /// The peer gave up or went silent during the handshake.
    Aborted,
}

impl Refusal {
    const ALL: [Refusal; 8] = [
        Refusal::Handshake,
        Refusal::Token,
        Refusal::Revoked,
        Refusal::UnknownCertificate,
        Refusal::Version,
        Refusal::Protocol,
        Refusal::Duplicate,
        Refusal::Aborted,
    ];

    fn as_str(&self) -> &'static str {
        match self {
            Refusal::Handshake => "handshake",
            Refusal::Token => "token",
            Refusal::Revoked => "revoked",
            Refusal::UnknownCertificate => "unknown_certificate",
            Refusal::Version => "version",
            Refusal::Protocol => "protocol",
            Refusal::Duplicate => "duplicate",
            Refusal::Aborted => "aborted",
        }
    }
}

/// Counters.
#[derive(Debug)]
pub struct Metrics {
    /// Capacity reports accepted.
    pub capacity_reports: AtomicU64,
    /// Successful enrollments.
    pub enrollments: AtomicU64,
    refusals: [AtomicU64; 8],
    /// Events dropped because the writer fell behind.
    pub events_dropped: AtomicU64,
    /// Agent clock to registry update, per report.
    pub report_lag: Histogram,
    /// Wall time of each placement pass.
    pub placement_duration: Histogram,
}

const LAG_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const PLACEMENT_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl Default for Metrics {
    fn default() -> Self {
        Self {
            capacity_reports: AtomicU64::new(0),
            enrollments: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            refusals: Default::default(),
            report_lag: Histogram::new(LAG_BOUNDS),
            placement_duration: Histogram::new(PLACEMENT_BOUNDS),
        }
    }
}

impl Metrics {
    /// Counts a refusal.
    pub fn refused(&self, why: Refusal) {
        self.refusals[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Renders the exposition.
pub fn render(shared: &Shared) -> String {
    let m = &shared.metrics;
    let (counts, connected) = {
        let registry = shared.registry();
        (
            registry.status_counts(Instant::now(), shared.config.liveness_timeout),
            registry.connected(),
        )
    };
    let mut out = Exposition::default();
    out.family(
        "pyxis_coordinator_info",
        Kind::Gauge,
        "Coordinator build information (always 1).",
    );
    out.sample("pyxis_coordinator_info", &[("version", crate::VERSION)], 1.0);
    out.family("pyxis_nodes", Kind::Gauge, "Nodes by status.");
    for status in NodeStatus::ALL {
        out.sample(
            "pyxis_nodes",
            &[("status", status.as_str())],
            counts.get(&status).copied().unwrap_or(0) as f64,
        );
    }
    out.family(
        "pyxis_agent_connections",
        Kind::Gauge,
        "Open, registered agent connections.",
    );
    out.sample("pyxis_agent_connections", &[], connected as f64);
    out.family(
        "pyxis_capacity_reports_total",
        Kind::Counter,
        "Capacity reports accepted into the registry.",
    );
    out.sample(
        "pyxis_capacity_reports_total",
        &[],
        m.capacity_reports.load(Ordering::Relaxed) as f64,
    );
    out.family(
        "pyxis_enrollments_total",
        Kind::Counter,
        "Nodes that joined with a token.",
    );
    out.sample(
        "pyxis_enrollments_total",
        &[],
        m.enrollments.load(Ordering::Relaxed) as f64,
    );
    out.family(
        "pyxis_link_refusals_total",
        Kind::Counter,
        "Agent connections or messages refused, by reason.",
    );
    for why in Refusal::ALL {
        out.sample(
            "pyxis_link_refusals_total",
            &[("reason", why.as_str())],
            m.refusals[why as usize].load(Ordering::Relaxed) as f64,
        );
    }
    out.family(
        "pyxis_events_dropped_total",
        Kind::Counter,
        "Events not recorded because the writer fell behind.",
    );
    out.sample(
        "pyxis_events_dropped_total",
        &[],
        m.events_dropped.load(Ordering::Relaxed) as f64,
    );
    out.family(
        "pyxis_capacity_report_lag_seconds",
        Kind::Histogram,
        "Time from an agent sending a capacity report (its clock) to the registry holding it.",
    );
    m.report_lag.render(&mut out, "pyxis_capacity_report_lag_seconds", &[]);
    render_placement(shared, &mut out);
    if let Some(gateway) = shared.gateway() {
        let mut queues: Vec<(String, String, usize)> = gateway
            .table()
            .routes
            .values()
            .map(|r| (r.tenant.clone(), r.deployment.clone(), r.live().queued()))
            .collect();
        queues.sort();
        gateway.metrics.render(
            &mut out,
            &queues,
            gateway.audit.as_ref().map(|a| a.stats()),
            gateway.tracer.stats(),
        );
    }
    out.finish()
}

/// Placement, fair share and usage, from the last placement pass.
fn render_placement(shared: &Shared, out: &mut Exposition) {
    out.family(
        "pyxis_placement_duration_seconds",
        Kind::Histogram,
        "Wall time of one placement pass (every deployment, every node).",
    );
    shared
        .metrics
        .placement_duration
        .render(out, "pyxis_placement_duration_seconds", &[]);
    let state = shared.placement_state();
    out.family(
        "pyxis_placement_passes_total",
        Kind::Counter,
        "Placement passes run by the reconciler.",
    );
    out.sample("pyxis_placement_passes_total", &[], state.passes as f64);
    out.family(
        "pyxis_placement_failing",
        Kind::Gauge,
        "1 while placement refuses its input (the previous placement stays in force; the log says why).",
    );
    out.sample(
        "pyxis_placement_failing",
        &[],
        if state.error.is_some() { 1.0 } else { 0.0 },
    );
    let Some(placement) = &state.placement else {
        return;
    };
    // Replicas per deployment: placed (on a ready or cordoned node), displaced (on a
    // draining or lost node, kept until replaced), pending (wanted, not placed).
    let mut per_deployment: std::collections::BTreeMap<(&str, &str), [u32; 3]> = std::collections::BTreeMap::new();
    for r in placement.replicas.iter().chain(state.surging.iter()) {
        let displaced = matches!(
            state.node_status.get(&r.node),
            Some(NodeStatus::Draining) | Some(NodeStatus::NotReady) | None
        );
        per_deployment.entry((&r.tenant, &r.deployment)).or_default()[usize::from(displaced)] += 1;
    }
    for e in &placement.explanations {
        per_deployment.entry((&e.tenant, &e.deployment)).or_default()[2] += e.pending;
    }
    for (name, help, index) in [
        (
            "pyxis_replicas_placed",
            "Replicas placed on a ready or cordoned node, by deployment.",
            0,
        ),
        (
            "pyxis_replicas_displaced",
            "Replicas on a draining or lost node, kept until a replacement is placed.",
            1,
        ),
        (
            "pyxis_replicas_pending",
            "Replicas wanted (up to max) but not placed; `pyxis explain deployment` says why.",
            2,
        ),
    ] {
        out.family(name, Kind::Gauge, help);
        for ((tenant, deployment), counts) in &per_deployment {
            out.sample(
                name,
                &[("tenant", tenant), ("deployment", deployment)],
                f64::from(counts[index]),
            );
        }
    }
    let capacity = placement.tenants.first().map_or(0.0, |t| t.capacity);
    out.family(
        "pyxis_fleet_capacity_gpus",
        Kind::Gauge,
        "Schedulable fleet capacity in normalised GPUs (HardwareClass relativeCapacity).",
    );
    out.sample("pyxis_fleet_capacity_gpus", &[], capacity);
    type ShareValue = fn(&crate::placement::TenantShare) -> Option<f64>;
    let families: [(&str, &str, ShareValue); 6] = [
        (
            "pyxis_tenant_allocated_gpus",
            "Normalised GPUs held by the tenant's placed replicas.",
            |t| Some(t.usage),
        ),
        (
            "pyxis_tenant_guarantee_gpus",
            "The tenant's guaranteed quota, normalised GPUs.",
            |t| Some(t.guarantee),
        ),
        (
            "pyxis_tenant_limit_gpus",
            "The tenant's borrowing limit, normalised GPUs (absent: no limit).",
            |t| t.limit,
        ),
        (
            "pyxis_tenant_fair_share_gpus",
            "The tenant's weighted max-min fair share of the fleet given everyone's demand.",
            |t| Some(t.fair_share),
        ),
        (
            "pyxis_tenant_demand_gpus",
            "Normalised GPUs the tenant's deployments want (placed plus pending).",
            |t| Some(t.demand),
        ),
        (
            "pyxis_tenant_quota_used_ratio",
            "Allocated over limit (above 1 only in dry-run quota mode; absent: no limit).",
            |t| t.limit.filter(|l| *l > 0.0).map(|l| t.usage / l),
        ),
    ];
    for (name, help, value) in families {
        out.family(name, Kind::Gauge, help);
        for t in &placement.tenants {
            if let Some(v) = value(t) {
                out.sample(name, &[("tenant", &t.tenant), ("quota_mode", t.quota_mode.as_str())], v);
            }
        }
    }
    out.family(
        "pyxis_tenant_gpu_seconds_total",
        Kind::Counter,
        "Device-seconds held by the tenant's running replicas since this coordinator started, by hardware class (`pyxis usage` has the stored history).",
    );
    for ((tenant, class), seconds) in &state.usage_totals {
        out.sample(
            "pyxis_tenant_gpu_seconds_total",
            &[("tenant", tenant), ("hardware_class", class)],
            *seconds,
        );
    }
}
