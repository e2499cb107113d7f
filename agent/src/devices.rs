//! Accelerators as the agent sees them, and `--simulate` fleets.
//!
//! Real probing (NVML, ROCm SMI, TPU) plugs in here; simulated devices are always marked
//! `simulated` so that nothing downstream can mistake them for real hardware.

use pyxis_protocol::{
    Accelerator, DeviceDetails, DeviceTelemetry, DeviceUsage, Health, Interconnect, PeerLink, Vendor,
};

/// One accelerator and its current state.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// Index on the node.
    pub index: u32,
    /// Vendor.
    pub vendor: Vendor,
    /// Model name.
    pub model: String,
    /// UUID or serial.
    pub uuid: String,
    /// Total memory; 0 when unknown (a device lost before its memory could be read).
    pub memory_bytes: u64,
    /// Memory in use; `None` when the backend does not read it or the device is lost.
    pub memory_used_bytes: Option<u64>,
    /// Utilization 0-100; `None` when the backend does not read it or the device is lost.
    pub utilization_percent: Option<u8>,
    /// Hardware class.
    pub hardware_class: String,
    /// Health tier.
    pub health: Health,
    /// Reason for the tier.
    pub health_reason: String,
    /// Whether this device is simulated.
    pub simulated: bool,
    /// Temperature, if known.
    pub temperature_celsius: Option<u16>,
    /// Power draw, if known.
    pub power_watts: Option<u32>,
    /// Power limit, if known.
    pub power_limit_watts: Option<u32>,
    /// Static facts beyond identity (PCI, NUMA, versions, MIG, interconnect).
    pub details: DeviceDetails,
    /// Clocks, throttling, ECC, XIDs.
    pub telemetry: DeviceTelemetry,
}

impl Device {
    /// Static description on the wire.
    pub fn to_wire(&self) -> Accelerator {
        Accelerator {
            index: self.index,
            vendor: self.vendor,
            model: self.model.clone(),
            uuid: self.uuid.clone(),
            memory_bytes: self.memory_bytes,
            hardware_class: self.hardware_class.clone(),
            health: self.health,
            health_reason: self.health_reason.clone(),
            simulated: self.simulated,
            details: self.details.clone(),
        }
    }

    /// Current usage on the wire.
    pub fn usage(&self) -> DeviceUsage {
        DeviceUsage {
            uuid: self.uuid.clone(),
            memory_used_bytes: self.memory_used_bytes,
            utilization_percent: self.utilization_percent,
            health: self.health,
            health_reason: self.health_reason.clone(),
            temperature_celsius: self.temperature_celsius,
            power_watts: self.power_watts,
            power_limit_watts: self.power_limit_watts,
            telemetry: self.telemetry.clone(),
        }
    }
}

/// Why a `--simulate` specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimulateError {
    /// An entry is not `COUNTxCLASS`.
    #[error("--simulate entry {entry:?} is not COUNTxCLASS (for example 2xH100-80GB,1xMI300X-192GB or 4xTPU-v5e)")]
    BadEntry {
        /// The offending entry.
        entry: String,
    },
    /// The class is not one the simulator knows.
    #[error("--simulate class {class:?} is unknown; known classes: {known}")]
    UnknownClass {
        /// The offending class.
        class: String,
        /// Known classes, comma separated.
        known: String,
    },
    /// Too many devices for one node.
    #[error("--simulate asks for {count} devices; at most 64 per node")]
    TooMany {
        /// Requested total.
        count: u64,
    },
}

/// A simulated hardware class.
struct SimClass {
    name: &'static str,
    vendor: Vendor,
    /// Model string as a driver would report it.
    model: &'static str,
    gib: u64,
    watts: u32,
    /// Compute capability, gfx target or TPU generation.
    arch: &'static str,
    /// Fabric between devices of this class on one node (HGX NVLink, MI300X xGMI), with
    /// the links per peer; `None` for PCIe-only cards and TPUs.
    fabric: Option<(Interconnect, u32)>,
}

const fn sim(
    name: &'static str,
    vendor: Vendor,
    model: &'static str,
    gib: u64,
    watts: u32,
    arch: &'static str,
    fabric: Option<(Interconnect, u32)>,
) -> SimClass {
    SimClass {
        name,
        vendor,
        model,
        gib,
        watts,
        arch,
        fabric,
    }
}

const NV: Vendor = Vendor::Nvidia;
const AMD: Vendor = Vendor::Amd;
const TPU: Vendor = Vendor::Google;
const NVLINK: Interconnect = Interconnect::NvLink;
const XGMI: Interconnect = Interconnect::XGmi;

/// Classes `--simulate` knows, shaped like the real parts (SXM boards on an NVLink fabric).
const SIMULATED_CLASSES: &[SimClass] = &[
    sim(
        "H100-80GB",
        NV,
        "NVIDIA H100 80GB HBM3",
        80,
        700,
        "9.0",
        Some((NVLINK, 18)),
    ),
    sim("H200-141GB", NV, "NVIDIA H200", 141, 700, "9.0", Some((NVLINK, 18))),
    sim(
        "A100-80GB",
        NV,
        "NVIDIA A100-SXM4-80GB",
        80,
        400,
        "8.0",
        Some((NVLINK, 12)),
    ),
    sim(
        "A100-40GB",
        NV,
        "NVIDIA A100-SXM4-40GB",
        40,
        400,
        "8.0",
        Some((NVLINK, 12)),
    ),
    sim("L40S-48GB", NV, "NVIDIA L40S", 48, 350, "8.9", None),
    sim("L4-24GB", NV, "NVIDIA L4", 24, 72, "8.9", None),
    sim("B200-192GB", NV, "NVIDIA B200", 192, 1000, "10.0", Some((NVLINK, 18))),
    sim(
        "MI300X-192GB",
        AMD,
        "AMD Instinct MI300X",
        192,
        750,
        "gfx942",
        Some((XGMI, 1)),
    ),
    sim(
        "MI250X-64GB",
        AMD,
        "AMD Instinct MI250X",
        64,
        280,
        "gfx90a",
        Some((XGMI, 1)),
    ),
    sim("TPU-v5e", TPU, "TPU v5 lite", 16, 200, "v5litepod", None),
    sim("TPU-v5p", TPU, "TPU v5p", 95, 350, "v5p", None),
    sim("TPU-v4", TPU, "TPU v4", 32, 250, "v4", None),
];

/// Parses `2xH100-80GB,1xMI300X-192GB` into simulated devices. UUIDs are derived from the
/// node name and index, so a restarted agent reports the same devices.
pub fn parse_simulate(spec: &str, node_name: &str) -> Result<Vec<Device>, SimulateError> {
    let mut devices = Vec::new();
    let mut total: u64 = 0;
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (count, class) = entry
            .split_once(['x', 'X'])
            .and_then(|(n, c)| n.trim().parse::<u64>().ok().map(|n| (n, c.trim())))
            .ok_or_else(|| SimulateError::BadEntry {
                entry: entry.to_string(),
            })?;
        if count == 0 || class.is_empty() {
            return Err(SimulateError::BadEntry {
                entry: entry.to_string(),
            });
        }
        total = total.saturating_add(count);
        if total > 64 {
            return Err(SimulateError::TooMany { count: total });
        }
        let sim = SIMULATED_CLASSES
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(class))
            .ok_or_else(|| SimulateError::UnknownClass {
                class: class.to_string(),
                known: SIMULATED_CLASSES.iter().map(|c| c.name).collect::<Vec<_>>().join(", "),
            })?;
        for _ in 0..count {
            let index = devices.len() as u32;
            devices.push(Device {
                index,
                vendor: sim.vendor,
                model: sim.model.to_string(),
                uuid: simulated_uuid(node_name, index),
                memory_bytes: sim.gib << 30,
                // A simulated device is an idle device, so these are read as zero.
                memory_used_bytes: Some(0),
                utilization_percent: Some(0),
                hardware_class: sim.name.to_string(),
                health: Health::Healthy,
                health_reason: String::new(),
                simulated: true,
                // An idle device: cool, drawing a tenth of its limit.
                temperature_celsius: Some(34),
                power_watts: Some(sim.watts / 10),
                power_limit_watts: Some(sim.watts),
                details: DeviceDetails {
                    pci_bus_id: Some(format!("0000:{:02x}:00.0", 0x18 + index * 0x10)),
                    architecture: Some(sim.arch.to_string()),
                    ..DeviceDetails::default()
                },
                telemetry: simulated_telemetry(sim.vendor),
            });
        }
    }
    link_simulated(&mut devices);
    Ok(devices)
}

/// Gives a simulated node the topology of the real platform: devices of one class share
/// its fabric (NVLink, xGMI), the first half of the devices sits on NUMA node 0 and the
/// rest on node 1, and devices of different classes meet over PCIe.
fn link_simulated(devices: &mut [Device]) {
    let count = devices.len() as u32;
    let half = count.div_ceil(2).max(1);
    let facts: Vec<(String, Option<(Interconnect, u32)>)> = devices
        .iter()
        .map(|d| {
            let fabric = SIMULATED_CLASSES
                .iter()
                .find(|c| c.name == d.hardware_class)
                .and_then(|c| c.fabric);
            (d.hardware_class.clone(), fabric)
        })
        .collect();
    for device in devices.iter_mut() {
        let me = device.index as usize;
        device.details.numa_node = Some(device.index / half);
        if device.vendor == Vendor::Google {
            // TPU chips talk over ICI, which the interconnect model does not describe.
            continue;
        }
        device.details.links = (0..count)
            .filter(|&peer| peer != device.index)
            .filter(|&peer| is_simulated_gpu(&facts[peer as usize].0))
            .map(|peer| {
                let same_class = facts[peer as usize].0 == facts[me].0;
                match facts[me].1.filter(|_| same_class) {
                    Some((kind, lanes)) => PeerLink { peer, kind, lanes },
                    None => PeerLink {
                        peer,
                        kind: if device.index / half == peer / half {
                            Interconnect::NumaNode
                        } else {
                            Interconnect::System
                        },
                        lanes: 0,
                    },
                }
            })
            .collect();
    }
}

/// What an idle device of `vendor` reports: NVIDIA GPUs have throttle reasons (none
/// active) and XIDs (none yet); other vendors' backends read neither, so neither is known.
fn simulated_telemetry(vendor: Vendor) -> DeviceTelemetry {
    match vendor {
        Vendor::Nvidia => DeviceTelemetry {
            throttle_reasons: Some(Vec::new()),
            xid_count: Some(0),
            ..DeviceTelemetry::default()
        },
        Vendor::Amd | Vendor::Google | Vendor::Other => DeviceTelemetry::default(),
    }
}

fn is_simulated_gpu(class: &str) -> bool {
    SIMULATED_CLASSES
        .iter()
        .any(|c| c.name == class && c.vendor != Vendor::Google)
}

fn simulated_uuid(node_name: &str, index: u32) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{node_name}/{index}").as_bytes());
    let h = hex::encode(&digest.as_ref()[..16]);
    format!(
        "SIM-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mixed_fleet() {
        let devices = parse_simulate("2xH100-80GB, 1xMI300X-192GB,4xTPU-v5e", "n1").unwrap();
        assert_eq!(devices.len(), 7);
        assert_eq!(devices[0].hardware_class, "H100-80GB");
        assert_eq!(devices[0].memory_bytes, 80 << 30);
        assert_eq!(devices[2].vendor, Vendor::Amd);
        assert_eq!(devices[6].vendor, Vendor::Google);
        assert!(devices.iter().all(|d| d.simulated));
        assert_eq!(
            devices.iter().map(|d| d.index).collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
        // Stable and distinct UUIDs.
        assert_eq!(devices[0].uuid, parse_simulate("1xH100-80GB", "n1").unwrap()[0].uuid);
        assert_ne!(devices[0].uuid, devices[1].uuid);
        assert_ne!(devices[0].uuid, parse_simulate("1xH100-80GB", "n2").unwrap()[0].uuid);
    }

    /// A simulated HGX node is all-to-all NVLink; a mixed node meets over PCIe; TPUs have
    /// no GPU interconnect.
    #[test]
    fn simulated_topology_follows_the_platform() {
        let devices = parse_simulate("4xH100-80GB,2xMI300X-192GB,1xTPU-v5e", "n").unwrap();
        let h100 = &devices[0];
        assert_eq!(h100.details.links.len(), 5);
        assert_eq!(
            h100.details.links[..3],
            [1, 2, 3].map(|peer| PeerLink {
                peer,
                kind: Interconnect::NvLink,
                lanes: 18
            })
        );
        assert_eq!(h100.details.links[3].kind, Interconnect::System);
        assert_eq!(
            devices[4].details.links.iter().find(|l| l.peer == 5).unwrap().kind,
            Interconnect::XGmi
        );
        assert_eq!(devices[4].details.numa_node, Some(1));
        assert_eq!(h100.details.architecture.as_deref(), Some("9.0"));
        assert!(devices[6].details.links.is_empty());
        assert!(devices.iter().all(|d| d.details.links.iter().all(|l| l.peer != 6)));
    }

    /// A simulated device is idle (usage read as zero), and reports what its vendor's
    /// backend reads: throttle reasons and XIDs for NVIDIA only, unknown for the others.
    #[test]
    fn simulated_devices_report_what_their_backend_would() {
        let devices = parse_simulate("1xH100-80GB,1xMI300X-192GB,1xTPU-v5e", "n").unwrap();
        assert!(devices
            .iter()
            .all(|d| d.memory_used_bytes == Some(0) && d.utilization_percent == Some(0)));
        let known = |d: &Device| (d.telemetry.throttle_reasons.clone(), d.telemetry.xid_count);
        assert_eq!(known(&devices[0]), (Some(vec![]), Some(0)));
        assert_eq!(known(&devices[1]), (None, None));
        assert_eq!(known(&devices[2]), (None, None));
    }

    /// Simulated devices carry the class the real derivation would give their model.
    #[test]
    fn simulated_classes_match_the_derivation_rules() {
        for c in SIMULATED_CLASSES {
            let derived = crate::hwclass::derive(c.vendor, c.model, c.gib << 30, &Default::default());
            assert_eq!(derived, c.name, "{}", c.model);
        }
    }

    #[test]
    fn rejects_bad_specs_with_reasons() {
        assert!(matches!(
            parse_simulate("H100", "n"),
            Err(SimulateError::BadEntry { .. })
        ));
        assert!(matches!(
            parse_simulate("0xH100-80GB", "n"),
            Err(SimulateError::BadEntry { .. })
        ));
        let err = parse_simulate("2xGTX-1080", "n").unwrap_err();
        assert!(err.to_string().contains("H100-80GB"), "{err}");
        assert!(matches!(
            parse_simulate("65xL4-24GB", "n"),
            Err(SimulateError::TooMany { count: 65 })
        ));
        assert_eq!(parse_simulate("", "n").unwrap(), vec![]);
    }
}
