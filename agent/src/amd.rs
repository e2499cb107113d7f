//! AMD GPUs from the amdgpu driver's sysfs files (`/sys/class/drm/card*/device/`): the
//! fallback when ROCm SMI is not available (see [`crate::rocm`] for the order).
//!
//! Only cards whose PCI vendor is AMD (`0x1002`) and that expose `mem_info_vram_total` are
//! reported; unreadable optional files leave those facts absent. Besides identity, memory,
//! utilization, temperature and power, it reads:
//! - the PCI address (the `device` link's target, else `PCI_SLOT_NAME` in `uevent`) and the
//!   NUMA node (`numa_node`, where `-1` means none);
//! - the gfx target (`gfx942`) from the KFD topology (`/sys/class/kfd/kfd/topology/nodes`);
//! - RAS error counts since boot, summed over `ras/*_err_count` (`ue: N` / `ce: M` per
//!   block), as the volatile ECC counts (sysfs has no lifetime counts, page retirement or
//!   row remapping, so those stay unknown);
//! - current and highest graphics and memory clocks from `pp_dpm_sclk` / `pp_dpm_mclk`;
//! - xGMI links: GPUs in the same hive (`xgmi_hive_info/xgmi_hive_id`, non-zero) are linked
//!   by xGMI.
//!
//! sysfs does not tell the PCIe path between two GPUs simply (it would mean walking the PCI
//! hierarchy for switches and root ports), so pairs outside an xGMI hive get no link entry
//! here; ROCm SMI reports those.

use std::path::{Path, PathBuf};

use pyxis_protocol::{EccCounts, Health, Interconnect, PeerLink, Vendor};

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

/// Splits a PCI address `dddd:bb:dd.f` into its domain and KFD location id
/// (`bus << 8 | device << 3 | function`). None if it is not such an address.
pub fn parse_pci_bus_id(address: &str) -> Option<(u32, u32)> {
    let (domain, rest) = address.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let hex = |s: &str, max: u32| {
        let value = (!s.is_empty() && s.len() <= 8)
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()?;
        (value <= max).then_some(value)
    };
    let domain = hex(domain, u32::MAX)?;
    let bus = hex(bus, 0xff)?;
    let device = hex(device, 0x1f)?;
    let function = hex(function, 0x7)?;
    Some((domain, (bus << 8) | (device << 3) | function))
}

/// LLVM's name for a KFD `gfx_target_version` (`major * 10000 + minor * 100 + stepping`):
/// 90402 is `gfx942`, 90010 is `gfx90a`, 110000 is `gfx1100`. None for 0 (a CPU node).
pub fn gfx_target_name(version: u64) -> Option<String> {
    if version == 0 {
        return None;
    }
    let major = version / 10_000;
    let minor = (version / 100) % 100;
    let stepping = version % 100;
    Some(format!("gfx{major}{minor:x}{stepping:x}"))
}

/// The gfx target of the GPU at PCI `domain` and `location_id`, from the KFD topology under
/// `sys` (normally `/sys`): the node whose `properties` have that `location_id` (and
/// `domain`, 0 when absent) and a non-zero `gfx_target_version`.
pub fn kfd_gfx_target(sys: &Path, domain: u32, location_id: u32) -> Option<String> {
    let nodes = std::fs::read_dir(sys.join("class/kfd/kfd/topology/nodes")).ok()?;
    nodes.flatten().find_map(|node| {
        let properties = std::fs::read_to_string(node.path().join("properties")).ok()?;
        let value = |key: &str| {
            properties.lines().find_map(|line| {
                let (name, value) = line.split_once(char::is_whitespace)?;
                (name == key).then(|| value.trim().parse::<u64>().ok()).flatten()
            })
        };
        if value("location_id")? != u64::from(location_id) || value("domain").unwrap_or(0) != u64::from(domain) {
            return None;
        }
        gfx_target_name(value("gfx_target_version")?)
    })
}

/// The card's PCI address: the `device` link's target if it names one, else `uevent`.
fn pci_address(device: &Path) -> Option<String> {
    let from_link = std::fs::canonicalize(device)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    from_link
        .filter(|name| parse_pci_bus_id(name).is_some())
        .or_else(|| {
            let uevent = std::fs::read_to_string(device.join("uevent")).ok()?;
            uevent
                .lines()
                .find_map(|line| line.strip_prefix("PCI_SLOT_NAME="))
                .map(|s| s.trim().to_string())
                .filter(|name| parse_pci_bus_id(name).is_some())
        })
        .map(|s| s.to_lowercase())
}

/// `numa_node`: `-1` (no NUMA affinity) is None.
fn numa_node(device: &Path) -> Option<u32> {
    read(&device.join("numa_node"))?.parse::<i64>().ok()?.try_into().ok()
}

/// Sums `ras/<block>_err_count` files (`ue: N` and `ce: M` lines, since boot; newer kernels
/// add `de:` for deferred errors, not counted) into the volatile counts. None without any
/// readable file.
fn ras_counts(device: &Path) -> Option<EccCounts> {
    let entries = std::fs::read_dir(device.join("ras")).ok()?;
    let mut counts = EccCounts::default();
    let mut any = false;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().ends_with("_err_count") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let Ok(n) = value.trim().parse::<u64>() else {
                continue;
            };
            match key.trim() {
                "ue" => counts.volatile_uncorrected = counts.volatile_uncorrected.saturating_add(n),
                "ce" => counts.volatile_corrected = counts.volatile_corrected.saturating_add(n),
                _ => continue,
            }
            any = true;
        }
    }
    any.then_some(counts)
}

/// Current (the level marked `*`) and highest MHz from a `pp_dpm_*` table such as
/// `0: 500Mhz\n1: 1300Mhz *\n2: 2100Mhz`.
fn dpm_clock(path: &Path) -> (Option<u32>, Option<u32>) {
    let Some(text) = read(path) else {
        return (None, None);
    };
    let mut current = None;
    let mut max = None;
    for line in text.lines() {
        let Some((_, rest)) = line.split_once(':') else {
            continue;
        };
        let rest = rest.trim();
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let Ok(mhz) = digits.parse::<u32>() else {
            continue;
        };
        if !rest[digits.len()..].to_lowercase().starts_with("mhz") {
            continue;
        }
        max = max.max(Some(mhz));
        if rest.ends_with('*') {
            current = Some(mhz);
        }
    }
    (current, max)
}

/// The xGMI hive the card is in, if any (`xgmi_hive_info/xgmi_hive_id`; 0 means none).
fn xgmi_hive(device: &Path) -> Option<String> {
    read(&device.join("xgmi_hive_info/xgmi_hive_id")).filter(|id| !id.trim_start_matches('0').is_empty())
}

/// AMD GPUs under `sys` (normally `/sys`), indexed from `first_index`.
pub fn sysfs_devices(sys: &Path, first_index: u32, overrides: &ClassOverrides) -> Vec<Device> {
    let drm = sys.join("class/drm");
    let mut cards: Vec<(u32, PathBuf)> = std::fs::read_dir(&drm)
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
    let mut hives = Vec::new();
    for (_, device) in cards {
        if read(&device.join("vendor")).as_deref() != Some(AMD_PCI_VENDOR) {
            continue;
        }
        let Some(total) = read_u64(&device.join("mem_info_vram_total")) else {
            continue;
        };
        let pci = pci_address(&device);
        let model = read(&device.join("product_name")).unwrap_or_else(|| {
            format!(
                "AMD GPU (device {})",
                read(&device.join("device")).unwrap_or_else(|| "unknown".into())
            )
        });
        let uuid = match (read(&device.join("unique_id")), &pci) {
            (Some(id), _) => format!("AMD-{id}"),
            (None, Some(pci)) => format!("AMD-PCI-{pci}"),
            (None, None) => format!("amd-index-{}", first_index + devices.len() as u32),
        };
        let (sm_clock, max_sm_clock) = dpm_clock(&device.join("pp_dpm_sclk"));
        let (memory_clock, max_memory_clock) = dpm_clock(&device.join("pp_dpm_mclk"));
        let ecc = ras_counts(&device);
        let architecture = pci
            .as_deref()
            .and_then(parse_pci_bus_id)
            .and_then(|(domain, location)| kfd_gfx_target(sys, domain, location));
        hives.push(xgmi_hive(&device));
        devices.push(Device {
            index: first_index + devices.len() as u32,
            vendor: Vendor::Amd,
            hardware_class: hwclass::derive(Vendor::Amd, &model, total, overrides),
            model,
            uuid,
            memory_bytes: total,
            memory_used_bytes: read_u64(&device.join("mem_info_vram_used")),
            utilization_percent: read_u64(&device.join("gpu_busy_percent")).map(|p| p.min(100) as u8),
            health: Health::Healthy,
            health_reason: String::new(),
            simulated: false,
            // hwmon: temperature in millidegrees, power in microwatts.
            temperature_celsius: hwmon(&device, "temp1_input").and_then(|m| u16::try_from(m / 1000).ok()),
            power_watts: hwmon(&device, "power1_average")
                .or_else(|| hwmon(&device, "power1_input"))
                .and_then(|uw| u32::try_from(uw / 1_000_000).ok()),
            power_limit_watts: hwmon(&device, "power1_cap").and_then(|uw| u32::try_from(uw / 1_000_000).ok()),
            details: pyxis_protocol::DeviceDetails {
                pci_bus_id: pci,
                numa_node: numa_node(&device),
                architecture,
                max_sm_clock_mhz: max_sm_clock,
                max_memory_clock_mhz: max_memory_clock,
                // RAS counters exist only for blocks with ECC enabled; without them, unknown.
                ecc_enabled: ecc.map(|_| true),
                ..Default::default()
            },
            telemetry: pyxis_protocol::DeviceTelemetry {
                sm_clock_mhz: sm_clock,
                memory_clock_mhz: memory_clock,
                ecc,
                ..Default::default()
            },
        });
    }
    for (i, device) in devices.iter_mut().enumerate() {
        let Some(hive) = &hives[i] else {
            continue;
        };
        device.details.links = hives
            .iter()
            .enumerate()
            .filter(|(j, other)| *j != i && other.as_ref() == Some(hive))
            .map(|(j, _)| PeerLink {
                peer: first_index + j as u32,
                kind: Interconnect::XGmi,
                lanes: 1,
            })
            .collect();
    }
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert_eq!(parse_pci_bus_id("0000:c1:00.0"), Some((0, 0xc100)));
        assert_eq!(parse_pci_bus_id("0001:0d:1e.3"), Some((1, 0x0d00 | (0x1e << 3) | 3)));
        for bad in [
            "card0",
            "0000:c1:00",
            "0000:c1:20.0",
            "0000:c1:00.8",
            "0000:100:00.0",
            ":c1:00.0",
        ] {
            assert_eq!(parse_pci_bus_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn gfx_target_names() {
        assert_eq!(gfx_target_name(90402).as_deref(), Some("gfx942"));
        assert_eq!(gfx_target_name(90010).as_deref(), Some("gfx90a"));
        assert_eq!(gfx_target_name(90008).as_deref(), Some("gfx908"));
        assert_eq!(gfx_target_name(110000).as_deref(), Some("gfx1100"));
        assert_eq!(gfx_target_name(0), None);
    }
}
