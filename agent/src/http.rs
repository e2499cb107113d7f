//! The agent's `/metrics` and `/healthz` listener.

use std::sync::Arc;

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use tokio_util::sync::CancellationToken;

use crate::{
    prom::{Exposition, Kind, CONTENT_TYPE},
    AgentShared,
};

/// Serves until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<AgentShared>, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "metrics listener failed");
    }
}

async fn healthz(State(shared): State<Arc<AgentShared>>) -> impl IntoResponse {
    let state = shared.link_state();
    let body = serde_json::json!({
        "status": "ok",
        "node": shared.config.name,
        "connected": state.connected,
        "coordinator": state.coordinator.map(|a| a.to_string()),
        "last_error": state.last_error,
    });
    axum::Json(body)
}

async fn metrics(State(shared): State<Arc<AgentShared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&shared))
}

/// Renders the agent's metrics.
pub fn render(shared: &AgentShared) -> String {
    let node = shared.config.name.as_str();
    let state = shared.link_state();
    let mut out = Exposition::default();
    out.family("pyxis_agent_info", Kind::Gauge, "Agent build information (always 1).");
    out.sample(
        "pyxis_agent_info",
        &[("node", node), ("version", crate::AGENT_VERSION)],
        1.0,
    );
    out.family(
        "pyxis_agent_connected",
        Kind::Gauge,
        "1 while registered with a coordinator.",
    );
    out.sample(
        "pyxis_agent_connected",
        &[("node", node)],
        if state.connected { 1.0 } else { 0.0 },
    );
    out.family(
        "pyxis_agent_sessions_total",
        Kind::Counter,
        "Registrations completed since start.",
    );
    out.sample("pyxis_agent_sessions_total", &[("node", node)], state.sessions as f64);
    out.family(
        "pyxis_agent_capacity_reports_total",
        Kind::Counter,
        "Capacity reports sent since start.",
    );
    out.sample(
        "pyxis_agent_capacity_reports_total",
        &[("node", node)],
        shared.reports_sent.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    let devices = shared.devices();
    out.family(
        "pyxis_agent_accelerators",
        Kind::Gauge,
        "Accelerators reported by this agent.",
    );
    out.sample("pyxis_agent_accelerators", &[("node", node)], devices.len() as f64);
    render_devices(&mut out, node, &devices);
    out.finish()
}

/// Per-device families. Every sample carries node, gpu (index), uuid, model, vendor,
/// hardware_class and simulated; facts a device does not report have no sample.
fn render_devices(out: &mut Exposition, node: &str, devices: &[crate::devices::Device]) {
    if devices.is_empty() {
        return;
    }
    type Value = fn(&crate::devices::Device) -> Option<f64>;
    let gauges: [(&str, &str, Value); 11] = [
        ("pyxis_gpu_memory_total_bytes", "Device memory in total.", |d| {
            Some(d.memory_bytes as f64)
        }),
        ("pyxis_gpu_memory_used_bytes", "Device memory in use.", |d| {
            Some(d.memory_used_bytes as f64)
        }),
        ("pyxis_gpu_utilization_ratio", "Device utilization, 0 to 1.", |d| {
            Some(f64::from(d.utilization_percent) / 100.0)
        }),
        ("pyxis_gpu_temperature_celsius", "Device temperature.", |d| {
            d.temperature_celsius.map(f64::from)
        }),
        ("pyxis_gpu_power_watts", "Device power draw.", |d| {
            d.power_watts.map(f64::from)
        }),
        ("pyxis_gpu_power_limit_watts", "Device power limit.", |d| {
            d.power_limit_watts.map(f64::from)
        }),
        ("pyxis_gpu_sm_clock_hertz", "Current SM (graphics) clock.", |d| {
            d.telemetry.sm_clock_mhz.map(|m| f64::from(m) * 1e6)
        }),
        ("pyxis_gpu_memory_clock_hertz", "Current memory clock.", |d| {
            d.telemetry.memory_clock_mhz.map(|m| f64::from(m) * 1e6)
        }),
        (
            "pyxis_gpu_throttled",
            "1 while clocks are held down for a reason other than idling (see pyxis_gpu_throttle_reason).",
            |d| {
                Some(if d.telemetry.throttle_reasons.iter().any(|r| r != "gpu_idle") {
                    1.0
                } else {
                    0.0
                })
            },
        ),
        ("pyxis_gpu_retired_pages", "Memory pages retired for ECC errors.", |d| {
            d.telemetry.ecc.map(|e| e.retired_pages as f64)
        }),
        ("pyxis_gpu_remapped_rows", "Memory rows remapped for ECC errors.", |d| {
            d.telemetry.ecc.map(|e| e.remapped_rows as f64)
        }),
    ];
    let labels_of = |d: &crate::devices::Device| -> Vec<(&'static str, String)> {
        vec![
            ("node", node.to_string()),
            ("gpu", d.index.to_string()),
            ("uuid", d.uuid.clone()),
            ("model", d.model.clone()),
            ("vendor", d.vendor.as_str().to_string()),
            ("hardware_class", d.hardware_class.clone()),
            ("simulated", d.simulated.to_string()),
        ]
    };
    let labelled: Vec<Vec<(&'static str, String)>> = devices.iter().map(labels_of).collect();
    let with = |base: &[(&'static str, String)], extra: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        let mut all = base.to_vec();
        all.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        all
    };
    for (name, help, value) in gauges {
        let samples: Vec<(usize, f64)> = devices
            .iter()
            .enumerate()
            .filter_map(|(i, d)| value(d).map(|v| (i, v)))
            .collect();
        if samples.is_empty() {
            continue;
        }
        out.family(name, Kind::Gauge, help);
        for (i, v) in samples {
            out.sample(name, &borrow(&labelled[i]), v);
        }
    }
    out.family(
        "pyxis_gpu_health",
        Kind::Gauge,
        "1 for the device's current health tier (label health), 0 for the others.",
    );
    for (d, labels) in devices.iter().zip(&labelled) {
        for tier in ["healthy", "degraded", "unhealthy"] {
            let v = if d.health.as_str() == tier { 1.0 } else { 0.0 };
            out.sample("pyxis_gpu_health", &borrow(&with(labels, &[("health", tier)])), v);
        }
    }
    let throttled: Vec<(usize, &String)> = devices
        .iter()
        .enumerate()
        .flat_map(|(i, d)| d.telemetry.throttle_reasons.iter().map(move |r| (i, r)))
        .collect();
    if !throttled.is_empty() {
        out.family(
            "pyxis_gpu_throttle_reason",
            Kind::Gauge,
            "1 for each clock throttle reason active now (label reason).",
        );
        for (i, reason) in throttled {
            out.sample(
                "pyxis_gpu_throttle_reason",
                &borrow(&with(&labelled[i], &[("reason", reason)])),
                1.0,
            );
        }
    }
    if devices.iter().any(|d| d.telemetry.ecc.is_some()) {
        out.family(
            "pyxis_gpu_ecc_errors_total",
            Kind::Counter,
            "ECC errors by type (corrected, uncorrected) and scope (volatile: since driver load; aggregate: lifetime).",
        );
        for (d, labels) in devices.iter().zip(&labelled) {
            let Some(ecc) = d.telemetry.ecc else { continue };
            for (kind, scope, count) in [
                ("corrected", "volatile", ecc.volatile_corrected),
                ("uncorrected", "volatile", ecc.volatile_uncorrected),
                ("corrected", "aggregate", ecc.aggregate_corrected),
                ("uncorrected", "aggregate", ecc.aggregate_uncorrected),
            ] {
                out.sample(
                    "pyxis_gpu_ecc_errors_total",
                    &borrow(&with(labels, &[("type", kind), ("scope", scope)])),
                    count as f64,
                );
            }
        }
    }
    out.family(
        "pyxis_gpu_xid_errors_total",
        Kind::Counter,
        "XID errors seen since the agent started (NVIDIA).",
    );
    for (d, labels) in devices.iter().zip(&labelled) {
        out.sample(
            "pyxis_gpu_xid_errors_total",
            &borrow(labels),
            d.telemetry.xid_count as f64,
        );
    }
    let mig: Vec<(usize, usize)> = devices
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            d.details
                .mig
                .as_ref()
                .filter(|m| m.enabled)
                .map(|m| (i, m.instances.len()))
        })
        .collect();
    if !mig.is_empty() {
        out.family(
            "pyxis_gpu_mig_instances",
            Kind::Gauge,
            "MIG instances on a MIG-enabled device.",
        );
        for (i, count) in mig {
            out.sample("pyxis_gpu_mig_instances", &borrow(&labelled[i]), count as f64);
        }
    }
    out.family(
        "pyxis_gpu_info",
        Kind::Gauge,
        "Device facts as labels (always 1): PCI bus id, NUMA node, architecture, driver.",
    );
    for (d, labels) in devices.iter().zip(&labelled) {
        let numa = d.details.numa_node.map(|n| n.to_string()).unwrap_or_default();
        let extra = [
            ("pci_bus_id", d.details.pci_bus_id.as_deref().unwrap_or("")),
            ("numa_node", numa.as_str()),
            ("architecture", d.details.architecture.as_deref().unwrap_or("")),
            ("driver_version", d.details.driver_version.as_deref().unwrap_or("")),
        ];
        out.sample("pyxis_gpu_info", &borrow(&with(labels, &extra)), 1.0);
    }
}

fn borrow<'a>(labels: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    labels.iter().map(|(k, v)| (*k, v.as_str())).collect()
}
