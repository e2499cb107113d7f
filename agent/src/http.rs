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
    let families = [
        ("pyxis_gpu_memory_total_bytes", "Device memory in total."),
        ("pyxis_gpu_memory_used_bytes", "Device memory in use."),
        ("pyxis_gpu_utilization_ratio", "Device utilization, 0 to 1."),
        (
            "pyxis_gpu_health",
            "1 for the device's current health tier (label health).",
        ),
        ("pyxis_gpu_temperature_celsius", "Device temperature."),
        ("pyxis_gpu_power_watts", "Device power draw."),
        ("pyxis_gpu_power_limit_watts", "Device power limit."),
    ];
    for (name, help) in families {
        if devices.is_empty() {
            continue;
        }
        out.family(name, Kind::Gauge, help);
        for d in &devices {
            let index = d.index.to_string();
            let simulated = if d.simulated { "true" } else { "false" };
            let labels = [
                ("node", node),
                ("gpu", index.as_str()),
                ("uuid", d.uuid.as_str()),
                ("model", d.model.as_str()),
                ("vendor", d.vendor.as_str()),
                ("hardware_class", d.hardware_class.as_str()),
                ("simulated", simulated),
            ];
            match name {
                "pyxis_gpu_memory_total_bytes" => out.sample(name, &labels, d.memory_bytes as f64),
                "pyxis_gpu_memory_used_bytes" => out.sample(name, &labels, d.memory_used_bytes as f64),
                "pyxis_gpu_utilization_ratio" => out.sample(name, &labels, f64::from(d.utilization_percent) / 100.0),
                "pyxis_gpu_temperature_celsius" => {
                    if let Some(t) = d.temperature_celsius {
                        out.sample(name, &labels, f64::from(t));
                    }
                }
                "pyxis_gpu_power_watts" => {
                    if let Some(w) = d.power_watts {
                        out.sample(name, &labels, f64::from(w));
                    }
                }
                "pyxis_gpu_power_limit_watts" => {
                    if let Some(w) = d.power_limit_watts {
                        out.sample(name, &labels, f64::from(w));
                    }
                }
                _ => {
                    for tier in ["healthy", "degraded", "unhealthy"] {
                        let mut with = labels.to_vec();
                        with.push(("health", tier));
                        out.sample(name, &with, if d.health.as_str() == tier { 1.0 } else { 0.0 });
                    }
                }
            }
        }
    }
    out.finish()
}
