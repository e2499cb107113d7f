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
}

const LAG_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

impl Default for Metrics {
    fn default() -> Self {
        Self {
            capacity_reports: AtomicU64::new(0),
            enrollments: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            refusals: Default::default(),
            report_lag: Histogram::new(LAG_BOUNDS),
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
    out.finish()
}
