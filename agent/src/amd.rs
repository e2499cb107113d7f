//! AMD GPUs from the amdgpu driver's sysfs files (`/sys/class/drm/card*/device/`): the
//! fallback that works without ROCm. (ROCm SMI loaded at run time, for ECC/RAS counts,
//! comes with the hardware release.)
//!
//! Only cards whose PCI vendor is AMD (`0x1002`) and that expose `mem_info_vram_total` are
//! reported; unreadable optional files leave those facts absent.

use std::path::Path;

use pyxis_protocol::{Health, Vendor};

use crate::{
    devices::Device,
    hwclass::{self, ClassOverrides},
};

const AMD_PCI_VENDOR: &str = "0x1002";

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn read_u64(path: &Path) -> Option<u64> {
    read(path)?.parse().ok()
}

/// First `hwmon*/<file>` under the device, as a number.
fn hwmon(device: &Path, file: &str) -> Option<u64> {
    let entries = std::fs::read_dir(device.join("hwmon")).ok()?;
    entries.flatten().find_map(|e| read_u64(&e.path().join(file)))
}

/// AMD GPUs under `sys` (normally `/sys`), indexed from `first_index`.
pub fn sysfs_devices(sys: &Path, first_index: u32, overrides: &ClassOverrides) -> Vec<Device> {
    let drm = sys.join("class/drm");
    let mut cards: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(&drm)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let number = name.strip_prefix("card")?.parse::<u32>().ok()?;
                    Some((number, e.path().join("device")))
                })
                .collect()
        })
        .unwrap_or_default();
    cards.sort();
    let mut devices = Vec::new();
    for (_, device) in cards {
        if read(&device.join("vendor")).as_deref() != Some(AMD_PCI_VENDOR) {
            continue;
        }
        let Some(total) = read_u64(&device.join("mem_info_vram_total")) else {
            continue;
        };
        let pci = std::fs::canonicalize(&device)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "unknown".into());
        let model = read(&device.join("product_name")).unwrap_or_else(|| {
            format!(
                "AMD GPU (device {})",
                read(&device.join("device")).unwrap_or_else(|| "unknown".into())
            )
        });
        let uuid = match read(&device.join("unique_id")) {
            Some(id) => format!("AMD-{id}"),
            None => format!("AMD-PCI-{pci}"),
        };
        devices.push(Device {
            index: first_index + devices.len() as u32,
            vendor: Vendor::Amd,
            hardware_class: hwclass::derive(Vendor::Amd, &model, total, overrides),
            model,
            uuid,
            memory_bytes: total,
            memory_used_bytes: read_u64(&device.join("mem_info_vram_used")).unwrap_or(0),
            utilization_percent: read_u64(&device.join("gpu_busy_percent"))
                .map(|p| p.min(100) as u8)
                .unwrap_or(0),
            health: Health::Healthy,
            health_reason: String::new(),
            simulated: false,
            // hwmon: temperature in millidegrees, power in microwatts.
            temperature_celsius: hwmon(&device, "temp1_input").and_then(|m| u16::try_from(m / 1000).ok()),
            power_watts: hwmon(&device, "power1_average")
                .or_else(|| hwmon(&device, "power1_input"))
                .and_then(|uw| u32::try_from(uw / 1_000_000).ok()),
            power_limit_watts: hwmon(&device, "power1_cap").and_then(|uw| u32::try_from(uw / 1_000_000).ok()),
            details: Default::default(),
            telemetry: Default::default(),
        });
    }
    devices
}
