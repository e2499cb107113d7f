//! The agent's `/metrics` and `/healthz` listener.

use std::sync::Arc;

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use pyxis_protocol::{ReplicaPhase, ReplicaStatus};
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
    render_runtimes(&mut out, node, &shared.supervisor.statuses());
    out.finish()
}

/// The phases a replica can be in, for `pyxis_runtime_phase`.
const PHASES: [ReplicaPhase; 7] = [
    ReplicaPhase::Pending,
    ReplicaPhase::Starting,
    ReplicaPhase::Ready,
    ReplicaPhase::Unhealthy,
    ReplicaPhase::CrashLoop,
    ReplicaPhase::Stopping,
    ReplicaPhase::Failed,
];

/// Per-replica families. Every sample carries node, replica, deployment, tenant and
/// runtime; values a replica does not have (time to ready before it is ready, metrics a
/// runtime does not export) have no sample.
fn render_runtimes(out: &mut Exposition, node: &str, replicas: &[ReplicaStatus]) {
    if replicas.is_empty() {
        return;
    }
    let labelled: Vec<Vec<(&'static str, String)>> = replicas
        .iter()
        .map(|r| {
            vec![
                ("node", node.to_string()),
                ("replica", r.name.clone()),
                ("deployment", r.deployment.clone()),
                ("tenant", r.tenant.clone()),
                ("runtime", r.runtime_kind.clone()),
            ]
        })
        .collect();
    out.family(
        "pyxis_runtime_up",
        Kind::Gauge,
        "1 while the replica's runtime is ready to serve (phase Ready), else 0.",
    );
    for (r, labels) in replicas.iter().zip(&labelled) {
        let up = if r.phase == ReplicaPhase::Ready { 1.0 } else { 0.0 };
        out.sample("pyxis_runtime_up", &borrow(labels), up);
    }
    out.family(
        "pyxis_runtime_restarts_total",
        Kind::Counter,
        "Restarts of the replica's runtime on this node after a failure (exit, readiness deadline, liveness).",
    );
    for (r, labels) in replicas.iter().zip(&labelled) {
        out.sample("pyxis_runtime_restarts_total", &borrow(labels), f64::from(r.restarts));
    }
    out.family(
        "pyxis_runtime_phase",
        Kind::Gauge,
        "1 for the replica's current phase (label phase), 0 for the others.",
    );
    for (r, labels) in replicas.iter().zip(&labelled) {
        for phase in PHASES {
            let mut all = labels.clone();
            all.push(("phase", phase.as_str().to_string()));
            let v = if r.phase == phase { 1.0 } else { 0.0 };
            out.sample("pyxis_runtime_phase", &borrow(&all), v);
        }
    }
    type Value = fn(&ReplicaStatus) -> Option<f64>;
    let families: [(&str, Kind, &str, Value); 7] = [
        (
            "pyxis_runtime_ready_seconds",
            Kind::Gauge,
            "Time from start to ready of the runtime's current run.",
            |r| r.ready_after_ms.map(|ms| ms as f64 / 1000.0),
        ),
        (
            "pyxis_runtime_requests_running",
            Kind::Gauge,
            "Requests the runtime is processing now.",
            |r| r.metrics.and_then(|m| m.requests_running),
        ),
        (
            "pyxis_runtime_requests_waiting",
            Kind::Gauge,
            "Requests queued in the runtime, waiting for capacity.",
            |r| r.metrics.and_then(|m| m.requests_waiting),
        ),
        (
            "pyxis_runtime_kv_cache_usage_ratio",
            Kind::Gauge,
            "KV-cache use of the runtime, 0 to 1.",
            |r| r.metrics.and_then(|m| m.kv_cache_usage_ratio),
        ),
        (
            "pyxis_runtime_prompt_tokens_total",
            Kind::Counter,
            "Prompt tokens the runtime processed since it started.",
            |r| r.metrics.and_then(|m| m.prompt_tokens_total),
        ),
        (
            "pyxis_runtime_generation_tokens_total",
            Kind::Counter,
            "Tokens the runtime generated since it started.",
            |r| r.metrics.and_then(|m| m.generation_tokens_total),
        ),
        (
            "pyxis_runtime_prefix_cache_hit_ratio",
            Kind::Gauge,
            "Prefix-cache hits over queries since the runtime started, 0 to 1.",
            |r| r.metrics.and_then(|m| m.prefix_cache_hit_ratio),
        ),
    ];
    for (name, kind, help, value) in families {
        let samples: Vec<(usize, f64)> = replicas
            .iter()
            .enumerate()
            .filter_map(|(i, r)| value(r).filter(|v| v.is_finite()).map(|v| (i, v)))
            .collect();
        if samples.is_empty() {
            continue;
        }
        out.family(name, kind, help);
        for (i, v) in samples {
            out.sample(name, &borrow(&labelled[i]), v);
        }
    }
}

/// Per-device families. Every sample carries node, gpu (index), uuid, model, vendor,
/// hardware_class and simulated; facts a device does not report have no sample (never a
/// made-up zero): a TPU has no utilization, an AMD GPU no XID count, a lost GPU no usage.
fn render_devices(out: &mut Exposition, node: &str, devices: &[crate::devices::Device]) {
    if devices.is_empty() {
        return;
    }
    type Value = fn(&crate::devices::Device) -> Option<f64>;
    let gauges: [(&str, &str, Value); 11] = [
        // Zero means unknown here: a GPU lost at start-up before its memory was read.
        ("pyxis_gpu_memory_total_bytes", "Device memory in total.", |d| {
            (d.memory_bytes > 0).then_some(d.memory_bytes as f64)
        }),
        ("pyxis_gpu_memory_used_bytes", "Device memory in use.", |d| {
            d.memory_used_bytes.map(|b| b as f64)
        }),
        ("pyxis_gpu_utilization_ratio", "Device utilization, 0 to 1.", |d| {
            d.utilization_percent.map(|p| f64::from(p) / 100.0)
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
                let reasons = d.telemetry.throttle_reasons.as_ref()?;
                Some(if reasons.iter().any(|r| r != "gpu_idle") {
                    1.0
                } else {
                    0.0
                })
            },
        ),
        ("pyxis_gpu_retired_pages", "Memory pages retired for ECC errors.", |d| {
            d.telemetry.ecc.and_then(|e| e.retired_pages).map(|n| n as f64)
        }),
        ("pyxis_gpu_remapped_rows", "Memory rows remapped for ECC errors.", |d| {
            d.telemetry.ecc.and_then(|e| e.remapped_rows).map(|n| n as f64)
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
        .flat_map(|(i, d)| d.telemetry.throttle_reasons.iter().flatten().map(move |r| (i, r)))
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
                ("corrected", "volatile", Some(ecc.volatile_corrected)),
                ("uncorrected", "volatile", Some(ecc.volatile_uncorrected)),
                ("corrected", "aggregate", ecc.aggregate_corrected),
                ("uncorrected", "aggregate", ecc.aggregate_uncorrected),
            ] {
                let Some(count) = count else { continue };
                out.sample(
                    "pyxis_gpu_ecc_errors_total",
                    &borrow(&with(labels, &[("type", kind), ("scope", scope)])),
                    count as f64,
                );
            }
        }
    }
    if devices.iter().any(|d| d.telemetry.xid_count.is_some()) {
        out.family(
            "pyxis_gpu_xid_errors_total",
            Kind::Counter,
            "XID errors seen since the agent started (NVIDIA devices only; other vendors have no XIDs).",
        );
        for (d, labels) in devices.iter().zip(&labelled) {
            let Some(count) = d.telemetry.xid_count else { continue };
            out.sample("pyxis_gpu_xid_errors_total", &borrow(labels), count as f64);
        }
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
        "Device facts as labels (always 1): PCI bus id, NUMA node, architecture, driver; unknown ones are left out.",
    );
    for (d, labels) in devices.iter().zip(&labelled) {
        let numa = d.details.numa_node.map(|n| n.to_string());
        let extra: Vec<(&'static str, &str)> = [
            ("pci_bus_id", d.details.pci_bus_id.as_deref()),
            ("numa_node", numa.as_deref()),
            ("architecture", d.details.architecture.as_deref()),
            ("driver_version", d.details.driver_version.as_deref()),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| (key, v)))
        .collect();
        out.sample("pyxis_gpu_info", &borrow(&with(labels, &extra)), 1.0);
    }
}

fn borrow<'a>(labels: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    labels.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use pyxis_protocol::{EccCounts, Health, Vendor};

    use super::*;
    use crate::devices::{parse_simulate, Device};

    /// As the backends read real devices: an NVIDIA GPU through NVML (everything), an AMD
    /// GPU through amdgpu sysfs (usage and volatile RAS counts only), a TPU chip (identity
    /// only) and an NVIDIA GPU lost at start-up (nothing but its health).
    fn probed_devices() -> Vec<Device> {
        let mut devices = parse_simulate("2xA100-80GB,1xMI300X-192GB,1xTPU-v5e", "n1").unwrap();
        for d in &mut devices {
            d.simulated = false;
        }
        let [nvidia, lost, amd, tpu] = &mut devices[..] else {
            unreachable!("four devices were asked for")
        };
        nvidia.utilization_percent = Some(37);
        nvidia.memory_used_bytes = Some(1 << 30);
        nvidia.telemetry.throttle_reasons = Some(vec!["sw_power_cap".into()]);
        nvidia.telemetry.xid_count = Some(2);
        nvidia.telemetry.ecc = Some(EccCounts {
            volatile_corrected: 3,
            volatile_uncorrected: 0,
            aggregate_corrected: Some(12),
            aggregate_uncorrected: Some(1),
            retired_pages: Some(1),
            retired_pages_pending: Some(false),
            remapped_rows: Some(3),
            remap_pending: Some(false),
            remap_failed: Some(false),
        });
        *lost = Device {
            model: "unknown NVIDIA GPU".into(),
            hardware_class: "unknown".into(),
            memory_bytes: 0,
            memory_used_bytes: None,
            utilization_percent: None,
            health: Health::Unhealthy,
            health_reason: "GPU is lost".into(),
            temperature_celsius: None,
            power_watts: None,
            power_limit_watts: None,
            details: Default::default(),
            telemetry: pyxis_protocol::DeviceTelemetry {
                xid_count: Some(0),
                ..Default::default()
            },
            ..lost.clone()
        };
        amd.utilization_percent = Some(64);
        amd.memory_used_bytes = Some(3 << 30);
        amd.telemetry.ecc = Some(EccCounts {
            volatile_corrected: 5,
            volatile_uncorrected: 1,
            ..EccCounts::default()
        });
        tpu.utilization_percent = None;
        tpu.memory_used_bytes = None;
        // A real TPU chip reports neither (the simulator names a generation and a bus id).
        tpu.details.pci_bus_id = None;
        tpu.details.architecture = None;
        assert_eq!(
            devices.iter().map(|d| d.vendor).collect::<Vec<_>>(),
            [Vendor::Nvidia, Vendor::Nvidia, Vendor::Amd, Vendor::Google]
        );
        devices
    }

    fn render(devices: &[Device]) -> String {
        let mut out = Exposition::default();
        render_devices(&mut out, "n1", devices);
        out.finish()
    }

    /// The samples of family `name` (exactly that name) for device `gpu`.
    fn samples<'a>(text: &'a str, name: &str, gpu: u32) -> Vec<&'a str> {
        let gpu = format!("gpu=\"{gpu}\"");
        text.lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
            .filter(|l| l.contains(&gpu))
            .collect()
    }

    /// Facts a backend does not read have no sample; the old rendering gave the TPU and the
    /// AMD GPU zeros for utilization, XIDs, throttling and retired pages.
    #[test]
    fn unread_facts_have_no_sample() {
        let devices = probed_devices();
        let text = render(&devices);
        let has = |name: &str, gpu: u32| !samples(&text, name, gpu).is_empty();
        // (family, NVIDIA, lost NVIDIA, AMD, TPU)
        let expected: &[(&str, [bool; 4])] = &[
            ("pyxis_gpu_memory_total_bytes", [true, false, true, true]),
            ("pyxis_gpu_memory_used_bytes", [true, false, true, false]),
            ("pyxis_gpu_utilization_ratio", [true, false, true, false]),
            ("pyxis_gpu_throttled", [true, false, false, false]),
            ("pyxis_gpu_throttle_reason", [true, false, false, false]),
            ("pyxis_gpu_xid_errors_total", [true, true, false, false]),
            ("pyxis_gpu_retired_pages", [true, false, false, false]),
            ("pyxis_gpu_remapped_rows", [true, false, false, false]),
            ("pyxis_gpu_ecc_errors_total", [true, false, true, false]),
            ("pyxis_gpu_health", [true, true, true, true]),
            ("pyxis_gpu_info", [true, true, true, true]),
        ];
        for (name, present) in expected {
            let actual = [0, 1, 2, 3].map(|gpu| has(name, gpu));
            assert_eq!(actual, *present, "{name}\n{text}");
        }
        assert_eq!(
            samples(&text, "pyxis_gpu_utilization_ratio", 0),
            [format!(
                "pyxis_gpu_utilization_ratio{{node=\"n1\",gpu=\"0\",uuid=\"{}\",model=\"NVIDIA A100-SXM4-80GB\",\
                 vendor=\"nvidia\",hardware_class=\"A100-80GB\",simulated=\"false\"}} 0.37",
                devices[0].uuid
            )]
        );
        assert_eq!(samples(&text, "pyxis_gpu_xid_errors_total", 0).len(), 1);
        assert!(samples(&text, "pyxis_gpu_xid_errors_total", 0)[0].ends_with("} 2"));
        assert!(samples(&text, "pyxis_gpu_throttled", 0)[0].ends_with("} 1"));
        // AMD RAS counts are the volatile ones only: no aggregate samples.
        let amd_ecc = samples(&text, "pyxis_gpu_ecc_errors_total", 2);
        assert_eq!(amd_ecc.len(), 2, "{amd_ecc:?}");
        assert!(amd_ecc.iter().all(|l| l.contains("scope=\"volatile\"")), "{amd_ecc:?}");
        assert_eq!(samples(&text, "pyxis_gpu_ecc_errors_total", 0).len(), 4);
        // Unknown facts are left out of pyxis_gpu_info rather than given empty values.
        assert!(!text.contains("=\"\""), "{text}");
        let tpu_info = samples(&text, "pyxis_gpu_info", 3);
        assert!(tpu_info[0].contains("numa_node=\"1\""), "{tpu_info:?}");
        assert!(!tpu_info[0].contains("pci_bus_id"), "{tpu_info:?}");
        assert!(samples(&text, "pyxis_gpu_info", 0)[0].contains("pci_bus_id=\"0000:18:00.0\""));
    }

    /// Runtime families: up, restarts and phase for every replica; time to ready and the
    /// normalised metrics only where known.
    #[test]
    fn runtime_families_have_samples_only_when_known() {
        let ready = ReplicaStatus {
            name: "qwen-0".into(),
            deployment: "qwen".into(),
            tenant: "research".into(),
            runtime_kind: "vllm".into(),
            phase: ReplicaPhase::Ready,
            restarts: 2,
            ready_after_ms: Some(1500),
            metrics: Some(pyxis_protocol::RuntimeMetrics {
                requests_running: Some(3.0),
                kv_cache_usage_ratio: Some(0.25),
                generation_tokens_total: Some(1e6),
                ..Default::default()
            }),
            ..Default::default()
        };
        let crashing = ReplicaStatus {
            name: "qwen-1".into(),
            phase: ReplicaPhase::CrashLoop,
            ..ready.clone()
        };
        let crashing = ReplicaStatus {
            ready_after_ms: None,
            metrics: None,
            ..crashing
        };
        let mut out = Exposition::default();
        render_runtimes(&mut out, "n1", &[ready, crashing]);
        let text = out.finish();
        let labels = "node=\"n1\",replica=\"qwen-0\",deployment=\"qwen\",tenant=\"research\",runtime=\"vllm\"";
        for line in [
            format!("pyxis_runtime_up{{{labels}}} 1"),
            format!("pyxis_runtime_restarts_total{{{labels}}} 2"),
            format!("pyxis_runtime_phase{{{labels},phase=\"Ready\"}} 1"),
            format!("pyxis_runtime_phase{{{labels},phase=\"Starting\"}} 0"),
            format!("pyxis_runtime_ready_seconds{{{labels}}} 1.5"),
            format!("pyxis_runtime_requests_running{{{labels}}} 3"),
            format!("pyxis_runtime_kv_cache_usage_ratio{{{labels}}} 0.25"),
            format!("pyxis_runtime_generation_tokens_total{{{labels}}} 1000000"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(
            text.contains("pyxis_runtime_up{node=\"n1\",replica=\"qwen-1\""),
            "{text}"
        );
        assert!(text.contains(
            "replica=\"qwen-1\",deployment=\"qwen\",tenant=\"research\",runtime=\"vllm\",phase=\"CrashLoop\"} 1"
        ));
        assert!(
            !text.contains("pyxis_runtime_ready_seconds{node=\"n1\",replica=\"qwen-1\""),
            "{text}"
        );
        assert!(!text.contains("pyxis_runtime_requests_waiting"), "{text}");
        assert!(!text.contains("pyxis_runtime_prefix_cache_hit_ratio"), "{text}");
    }

    /// A node whose devices read no XIDs has no XID family at all (no HELP without samples).
    #[test]
    fn families_without_samples_are_left_out() {
        let devices: Vec<Device> = probed_devices().into_iter().skip(2).collect();
        let text = render(&devices);
        for name in [
            "pyxis_gpu_xid_errors_total",
            "pyxis_gpu_throttled",
            "pyxis_gpu_retired_pages",
        ] {
            assert!(!text.contains(name), "{name}\n{text}");
        }
        assert!(text.contains("# HELP pyxis_gpu_utilization_ratio"), "{text}");
    }
}
