//! Google TPUs: chips appear as `/dev/accel*` (TPU v4 and later) or `/dev/vfio/<N>` (v5e,
//! v5p, v6e with VFIO); the accelerator type (`v5litepod-8`, `v4-8`, ...) comes from the GCE
//! metadata server, asked with `Metadata-Flavor: Google` and a short timeout.
//!
//! No device node means no TPU, without asking anybody. A metadata server that does not
//! answer leaves the chips reported with an unknown generation, never an error.

use std::{path::Path, time::Duration};

use pyxis_protocol::{Health, Vendor};

use crate::{
    devices::Device,
    hwclass::{self, ClassOverrides},
};

/// Default GCE metadata base URL.
pub const DEFAULT_METADATA_URL: &str = "http://metadata.google.internal/computeMetadata/v1";

/// TPU chip device nodes under `dev` (normally `/dev`): `accel*` files, or numbered VFIO
/// groups (`vfio/0`, `vfio/1`, ...; the `vfio/vfio` control node does not count).
pub fn chip_nodes(dev: &Path) -> Vec<String> {
    let mut nodes: Vec<String> = std::fs::read_dir(dev)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("accel") && n[5..].chars().all(|c| c.is_ascii_digit()) && n.len() > 5)
                .collect()
        })
        .unwrap_or_default();
    if nodes.is_empty() {
        nodes = std::fs::read_dir(dev.join("vfio"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
                    .map(|n| format!("vfio/{n}"))
                    .collect()
            })
            .unwrap_or_default();
    }
    nodes.sort_by_key(|n| {
        n.trim_start_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .unwrap_or(u32::MAX)
    });
    nodes
}

/// The accelerator type from the metadata server, or `None` if it does not answer.
pub fn accelerator_type(metadata_url: &str, timeout: Duration) -> Option<String> {
    let url = format!(
        "{}/instance/attributes/accelerator-type",
        metadata_url.trim_end_matches('/')
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut response = agent.get(&url).header("Metadata-Flavor", "Google").call().ok()?;
    let text = response.body_mut().read_to_string().ok()?;
    let text = text.trim();
    (!text.is_empty() && text.len() < 64).then(|| text.to_string())
}

/// Memory per chip by generation, in GiB (public figures).
fn chip_memory_gib(class: &str) -> u64 {
    match class {
        "TPU-v4" => 32,
        "TPU-v5e" => 16,
        "TPU-v5p" => 95,
        "TPU-v6e" => 32,
        _ => 0,
    }
}

/// TPU chips on this host, indexed from `first_index`.
pub fn probe(
    dev: &Path,
    metadata_url: &str,
    node_name: &str,
    first_index: u32,
    overrides: &ClassOverrides,
) -> Vec<Device> {
    let nodes = chip_nodes(dev);
    if nodes.is_empty() {
        return Vec::new();
    }
    let kind = accelerator_type(metadata_url, Duration::from_millis(800));
    let model = match &kind {
        Some(kind) => format!("TPU {kind}"),
        None => "TPU (type unknown: no GCE metadata)".to_string(),
    };
    let class = hwclass::derive(Vendor::Google, &model, 0, overrides);
    let memory = chip_memory_gib(&class) << 30;
    nodes
        .iter()
        .enumerate()
        .map(|(i, node)| Device {
            index: first_index + i as u32,
            vendor: Vendor::Google,
            model: model.clone(),
            uuid: format!("TPU-{node_name}-{}", node.replace('/', "-")),
            memory_bytes: memory,
            // Neither is read from TPU chips: unknown, not zero.
            memory_used_bytes: None,
            utilization_percent: None,
            hardware_class: class.clone(),
            health: Health::Healthy,
            health_reason: String::new(),
            simulated: false,
            temperature_celsius: None,
            power_watts: None,
            power_limit_watts: None,
            details: pyxis_protocol::DeviceDetails {
                // The generation, as the class names it (`TPU-v5e` is `v5e`).
                architecture: class.strip_prefix("TPU-").map(str::to_string),
                ..Default::default()
            },
            telemetry: Default::default(),
        })
        .collect()
}
