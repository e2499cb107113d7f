//! NVIDIA GPUs through NVML (nvml-wrapper, which loads `libnvidia-ml.so.1` at run time).
//!
//! A host without the driver is not an error: [`NvmlProbe::open`] fails with
//! [`NvmlProbeError::Unavailable`] and the agent says once that no NVIDIA GPU is probed. A
//! device that fails (for example `NVML_ERROR_GPU_IS_LOST`) is reported as unhealthy with
//! the reason, never dropped silently and never fatal to the others. Optional facts
//! (temperature, clocks, ECC, MIG, topology) a driver or device does not provide are simply
//! absent: a missing symbol or `NVML_ERROR_NOT_SUPPORTED` never fails a device.
//!
//! XID errors arrive as NVML events: [`NvmlProbe::watch_xids`] registers every device that
//! can report them, and [`XidWatch::wait`] blocks, so it belongs on a thread of its own.
//! What an XID means for health is decided in `health.rs`; this module only reads.
//!
//! nvml-wrapper 0.13 binds neither row remapping nor the MIG instance ids; those three entry
//! points are resolved from the same loaded library in the private `raw` module, the only
//! `unsafe` code here.

use std::{
    collections::HashSet,
    ffi::OsStr,
    path::{Path, PathBuf},
    time::Duration,
};

use nvml_wrapper::{
    bitmasks::{device::ThrottleReasons, event::EventTypes},
    enum_wrappers::device::{Clock, EccCounter, MemoryError, RetirementCause, TemperatureSensor, TopologyLevel},
    enums::event::XidError,
    error::NvmlError,
    Device as NvmlDevice, EventSet, Nvml,
};
use pyxis_protocol::{EccCounts, Health, Interconnect, MigConfig, MigInstance, PeerLink, Vendor};

use crate::{
    devices::Device,
    hwclass::{self, ClassOverrides},
};

/// The library nvml-wrapper opens when no path is given (its `LIB_PATH`).
const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";
/// `NVML_NVLINK_MAX_LINKS`: links are numbered below this on every NVIDIA part so far.
const NVLINK_MAX_LINKS: u32 = 18;
/// `NVML_DEVICE_MIG_ENABLE`.
const MIG_ENABLED: u32 = 1;
/// The XID NVML reports when it does not know which XID occurred.
const UNKNOWN_XID: u64 = 999;

/// Throttle reasons by the names the health policy and the wire use. `USER_DEFINED_CLOCKS`
/// is the same bit as `APPLICATIONS_CLOCKS_SETTING`, so it is not listed twice.
const THROTTLE_REASONS: &[(ThrottleReasons, &str)] = &[
    (ThrottleReasons::GPU_IDLE, "gpu_idle"),
    (
        ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
        "applications_clocks_setting",
    ),
    (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
    (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
    (ThrottleReasons::SYNC_BOOST, "sync_boost"),
    (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
    (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
    (ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN, "hw_power_brake_slowdown"),
    (ThrottleReasons::DISPLAY_CLOCK_SETTING, "display_clocks_setting"),
];

/// Why NVML could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NvmlProbeError {
    /// No usable NVIDIA driver/library on this host.
    #[error("NVML is not available ({0}); no NVIDIA GPU is probed")]
    Unavailable(NvmlError),
    /// The library works but listing devices failed.
    #[error("NVML cannot list devices: {0}")]
    List(NvmlError),
    /// Neither the driver nor any device can deliver XID events, so none are watched.
    #[error("XID events are not supported by the driver or by any of the {devices} NVIDIA device(s)")]
    XidUnsupported {
        /// Devices NVML lists.
        devices: u32,
    },
    /// Creating an event set or waiting on it failed.
    #[error("NVML events failed: {0}")]
    Events(NvmlError),
}

/// An initialised NVML library.
pub struct NvmlProbe {
    nvml: Nvml,
    /// Entry points nvml-wrapper does not bind, from the same library.
    raw: raw::Extras,
    /// Where sysfs is mounted (`/sys`), for facts NVML does not give.
    sysfs: PathBuf,
    /// CUDA driver API version, `12.4`.
    cuda_version: Option<String>,
    /// Driver version, when the library reports it.
    pub driver_version: Option<String>,
}

impl std::fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlProbe")
            .field("driver_version", &self.driver_version)
            .field("cuda_version", &self.cuda_version)
            .field("sysfs", &self.sysfs)
            .finish_non_exhaustive()
    }
}

/// One XID error reported by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidEvent {
    /// NVML index of the device it happened on.
    pub index: u32,
    /// UUID of that device, when it can still be read (a GPU that fell off the bus cannot).
    pub uuid: Option<String>,
    /// The XID (999 when NVML does not know which).
    pub xid: u64,
}

/// XID events of every device that can report them. Borrows the probe, so it lives on the
/// thread that owns the [`NvmlProbe`]; [`XidWatch::wait`] blocks up to its timeout.
#[derive(Debug)]
pub struct XidWatch<'probe> {
    set: EventSet<'probe>,
    /// Registered devices: handle identity and index, so that an event on a GPU that can no
    /// longer answer `nvmlDeviceGetIndex` (XID 79, fallen off the bus) still has its index.
    watched: Vec<(usize, u32)>,
}

/// A device probed this round, with what the topology pass needs.
struct Probed<'nvml> {
    device: Device,
    /// Handle, unless the device failed.
    handle: Option<NvmlDevice<'nvml>>,
    /// Normalised PCI bus ids at the far end of each active NVLink.
    nvlink_remotes: Vec<String>,
}

impl NvmlProbe {
    /// Loads and initialises NVML, from `library` when given (tests, unusual installs).
    pub fn open(library: Option<&Path>) -> Result<Self, NvmlProbeError> {
        let mut builder = Nvml::builder();
        if let Some(path) = library {
            builder.lib_path(path.as_os_str());
        }
        let nvml = builder.init().map_err(NvmlProbeError::Unavailable)?;
        let raw = raw::Extras::resolve(library.map_or(OsStr::new(DEFAULT_LIBRARY), Path::as_os_str));
        let driver_version = nvml.sys_driver_version().ok();
        let cuda_version = nvml
            .sys_cuda_driver_version()
            .ok()
            .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
        Ok(Self {
            nvml,
            raw,
            sysfs: PathBuf::from("/sys"),
            cuda_version,
            driver_version,
        })
    }

    /// Reads sysfs facts (the NUMA node, when NVML does not say) under `root` instead of
    /// `/sys`.
    pub fn with_sysfs_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.sysfs = root.into();
        self
    }

    /// Every NVIDIA device with its details, topology and current usage.
    pub fn devices(&self, overrides: &ClassOverrides) -> Result<Vec<Device>, NvmlProbeError> {
        let count = self.nvml.device_count().map_err(NvmlProbeError::List)?;
        let mut probed: Vec<Probed<'_>> = (0..count).map(|index| self.device(index, overrides, true)).collect();
        self.link_peers(&mut probed);
        Ok(probed.into_iter().map(|p| p.device).collect())
    }

    /// Every NVIDIA device with its current usage, without the pairwise topology queries
    /// (for the periodic refresh: links do not change while the agent runs).
    pub fn readings(&self, overrides: &ClassOverrides) -> Result<Vec<Device>, NvmlProbeError> {
        let count = self.nvml.device_count().map_err(NvmlProbeError::List)?;
        Ok((0..count)
            .map(|index| self.device(index, overrides, false).device)
            .collect())
    }

    /// Registers for critical XID events on every device that supports them. A device that
    /// cannot register is logged and skipped; when none can, the error says so.
    pub fn watch_xids(&self) -> Result<XidWatch<'_>, NvmlProbeError> {
        let count = self.nvml.device_count().map_err(NvmlProbeError::List)?;
        let mut candidates = Vec::new();
        for index in 0..count {
            let device = match self.nvml.device_by_index(index) {
                Ok(device) => device,
                Err(e) => {
                    tracing::warn!(gpu = index, error = %e, "cannot watch this GPU's XID errors: no handle");
                    continue;
                }
            };
            match device.supported_event_types() {
                Ok(types) if types.contains(EventTypes::CRITICAL_XID_ERROR) => candidates.push((index, device)),
                Ok(_) => tracing::warn!(gpu = index, "this GPU does not report XID errors; they are not watched"),
                Err(e) => tracing::warn!(gpu = index, error = %e, "cannot tell whether this GPU reports XID errors"),
            }
        }
        // A failed registration frees the event set (NVML leaves it undefined), so start over
        // without that device.
        loop {
            if candidates.is_empty() {
                return Err(NvmlProbeError::XidUnsupported { devices: count });
            }
            match register_xids(&self.nvml, &candidates) {
                Ok(set) => {
                    let watched = candidates
                        .iter()
                        .map(|(index, device)| (raw::identity(device), *index))
                        .collect();
                    return Ok(XidWatch { set, watched });
                }
                Err(Registration::Create(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_))) => {
                    return Err(NvmlProbeError::XidUnsupported { devices: count })
                }
                Err(Registration::Create(e)) => return Err(NvmlProbeError::Events(e)),
                Err(Registration::Device(position, e)) => {
                    let (index, _) = candidates.remove(position);
                    tracing::warn!(gpu = index, error = %e, "cannot register for this GPU's XID errors; they are not watched");
                }
            }
        }
    }

    /// One device; `full` adds the static details and NVLink endpoints (start-up), which
    /// the periodic refresh skips (they do not change while the agent runs).
    fn device<'nvml>(&'nvml self, index: u32, overrides: &ClassOverrides, full: bool) -> Probed<'nvml> {
        let failed = |what: &str, e: NvmlError| {
            Device {
            index,
            vendor: Vendor::Nvidia,
            model: "unknown NVIDIA GPU".into(),
            uuid: format!("nvidia-index-{index}"),
            // Nothing could be read: a total of 0 means unknown (metrics leave it out), and
            // there is no usage rather than an idle device's zeros.
            memory_bytes: 0,
            memory_used_bytes: None,
            utilization_percent: None,
            hardware_class: "unknown".into(),
            health: Health::Unhealthy,
            health_reason: match e {
                NvmlError::GpuLost => {
                    "GPU is lost (NVML_ERROR_GPU_IS_LOST): it fell off the bus or needs a reset; reset it (nvidia-smi -r) or reboot the node, then restart the agent".into()
                }
                e => format!("NVML cannot read its {what}: {e}"),
            },
            simulated: false,
            temperature_celsius: None,
            power_watts: None,
            power_limit_watts: None,
            details: Default::default(),
            telemetry: xid_counted(),
        }
        };
        let unusable = |device: Device| Probed {
            device,
            handle: None,
            nvlink_remotes: Vec::new(),
        };
        let handle = match self.nvml.device_by_index(index) {
            Ok(handle) => handle,
            Err(e) => return unusable(failed("handle", e)),
        };
        let model = match handle.name() {
            Ok(name) => name,
            Err(e) => return unusable(failed("name", e)),
        };
        let uuid = match handle.uuid() {
            Ok(uuid) => uuid,
            Err(e) => return unusable(failed("UUID", e)),
        };
        let memory = match handle.memory_info() {
            Ok(memory) => memory,
            Err(e) => {
                return unusable(Device {
                    model,
                    uuid,
                    ..failed("memory", e)
                })
            }
        };
        let hardware_class = hwclass::derive(Vendor::Nvidia, &model, memory.total, overrides);
        let mut device = Device {
            index,
            vendor: Vendor::Nvidia,
            details: if full {
                self.details(&handle, &hardware_class)
            } else {
                pyxis_protocol::DeviceDetails {
                    ecc_enabled: handle.is_ecc_enabled().ok().map(|e| e.currently_enabled),
                    ..Default::default()
                }
            },
            hardware_class,
            model,
            uuid,
            memory_bytes: memory.total,
            memory_used_bytes: Some(memory.used),
            utilization_percent: handle.utilization_rates().ok().map(|u| u.gpu.min(100) as u8),
            health: Health::Healthy,
            health_reason: String::new(),
            simulated: false,
            temperature_celsius: handle
                .temperature(TemperatureSensor::Gpu)
                .ok()
                .and_then(|t| u16::try_from(t).ok()),
            power_watts: handle.power_usage().ok().map(|mw| mw / 1000),
            power_limit_watts: handle.enforced_power_limit().ok().map(|mw| mw / 1000),
            telemetry: xid_counted(),
        };
        device.telemetry.sm_clock_mhz = handle.clock_info(Clock::SM).ok();
        device.telemetry.memory_clock_mhz = handle.clock_info(Clock::Memory).ok();
        device.telemetry.throttle_reasons = handle.current_throttle_reasons().ok().map(|active| {
            THROTTLE_REASONS
                .iter()
                .filter(|(flag, _)| active.contains(*flag))
                .map(|(_, name)| (*name).to_string())
                .collect()
        });
        if device.details.ecc_enabled == Some(true) {
            device.telemetry.ecc = self.ecc(&handle);
        }
        Probed {
            device,
            nvlink_remotes: if full {
                active_nvlink_remotes(&handle)
            } else {
                Vec::new()
            },
            handle: Some(handle),
        }
    }

    /// Static facts; each is left empty when the driver or device cannot tell.
    fn details(&self, handle: &NvmlDevice<'_>, hardware_class: &str) -> pyxis_protocol::DeviceDetails {
        let pci_bus_id = handle.pci_info().ok().and_then(|pci| normalise_bus_id(&pci.bus_id));
        let numa_node = match handle.numa_node_id() {
            // Some drivers answer -1 (as unsigned) for "no NUMA affinity".
            Ok(node) => i32::try_from(node).ok(),
            Err(_) => pci_bus_id.as_deref().and_then(|bus| self.sysfs_numa_node(bus)),
        };
        pyxis_protocol::DeviceDetails {
            pci_bus_id,
            numa_node: numa_node.and_then(|n| u32::try_from(n).ok()),
            driver_version: self.driver_version.clone(),
            compute_api_version: self.cuda_version.clone(),
            architecture: handle
                .cuda_compute_capability()
                .ok()
                .map(|c| format!("{}.{}", c.major, c.minor)),
            max_sm_clock_mhz: handle.max_clock_info(Clock::SM).ok(),
            max_memory_clock_mhz: handle.max_clock_info(Clock::Memory).ok(),
            ecc_enabled: handle.is_ecc_enabled().ok().map(|mode| mode.currently_enabled),
            mig: self.mig(handle, hardware_class),
            links: Vec::new(),
        }
    }

    /// `/sys/bus/pci/devices/<bus id>/numa_node`; -1 means the device has no NUMA affinity.
    fn sysfs_numa_node(&self, bus_id: &str) -> Option<i32> {
        let path = self.sysfs.join("bus/pci/devices").join(bus_id).join("numa_node");
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// MIG mode and, when it is on, each MIG device. `None` when the GPU has no MIG.
    fn mig(&self, handle: &NvmlDevice<'_>, parent_class: &str) -> Option<MigConfig> {
        let mode = handle.mig_mode().ok()?;
        let enabled = mode.current == MIG_ENABLED;
        let mut instances = Vec::new();
        if enabled {
            for slot in 0..handle.mig_device_count().unwrap_or(0) {
                // Unpopulated slots answer NVML_ERROR_NOT_FOUND.
                let Ok(mig) = handle.mig_device_by_index(slot) else {
                    continue;
                };
                let Ok(uuid) = mig.uuid() else {
                    continue;
                };
                let name = mig.name().unwrap_or_default();
                let profile = mig_profile(&name).unwrap_or("unknown").to_string();
                instances.push(MigInstance {
                    hardware_class: format!("{parent_class}-MIG-{profile}"),
                    uuid,
                    profile,
                    memory_bytes: mig.memory_info().map(|m| m.total).unwrap_or(0),
                    gpu_instance_id: self.raw.gpu_instance_id(&mig).unwrap_or(0),
                    compute_instance_id: self.raw.compute_instance_id(&mig).unwrap_or(0),
                });
            }
        }
        Some(MigConfig {
            enabled,
            pending_enabled: mode.pending == MIG_ENABLED,
            instances,
        })
    }

    /// ECC counters of a device with ECC enabled; `None` when even the volatile counts cannot
    /// be read. Counters the device does not keep (page retirement after Volta, row remapping
    /// before Ampere: `NVML_ERROR_NOT_SUPPORTED`) or that cannot be read are `None`, never
    /// zero.
    fn ecc(&self, handle: &NvmlDevice<'_>) -> Option<EccCounts> {
        let total = |error, counter| handle.total_ecc_errors(error, counter).ok();
        let retired = |cause| handle.retired_pages(cause).map(|p| p.len() as u64).ok();
        let remapped = self.raw.remapped_rows(handle).ok();
        Some(EccCounts {
            volatile_corrected: total(MemoryError::Corrected, EccCounter::Volatile)?,
            volatile_uncorrected: total(MemoryError::Uncorrected, EccCounter::Volatile)?,
            aggregate_corrected: total(MemoryError::Corrected, EccCounter::Aggregate),
            aggregate_uncorrected: total(MemoryError::Uncorrected, EccCounter::Aggregate),
            retired_pages: retired(RetirementCause::MultipleSingleBitEccErrors)
                .zip(retired(RetirementCause::DoubleBitEccError))
                .map(|(single_bit, double_bit)| single_bit + double_bit),
            retired_pages_pending: handle.are_pages_pending_retired().ok(),
            remapped_rows: remapped.map(|r| u64::from(r.corrected) + u64::from(r.uncorrected)),
            remap_pending: remapped.map(|r| r.pending),
            remap_failed: remapped.map(|r| r.failed),
        })
    }

    /// Fills `details.links` of every usable device: NVLink when active links reach the
    /// peer directly or both reach NVSwitches, otherwise the PCIe path NVML reports.
    fn link_peers(&self, probed: &mut [Probed<'_>]) {
        let gpu_buses: HashSet<String> = probed
            .iter()
            .filter_map(|p| p.device.details.pci_bus_id.clone())
            .collect();
        let mut links: Vec<Vec<PeerLink>> = vec![Vec::new(); probed.len()];
        for a in 0..probed.len() {
            for b in a + 1..probed.len() {
                let (from, to) = (&probed[a], &probed[b]);
                let (Some(from_handle), Some(_)) = (&from.handle, &to.handle) else {
                    continue;
                };
                let nvlink = nvlink_lanes(from, to, &gpu_buses).zip(nvlink_lanes(to, from, &gpu_buses));
                let (kind, lanes_a, lanes_b) = match nvlink {
                    Some((lanes_a, lanes_b)) => (Interconnect::NvLink, lanes_a, lanes_b),
                    None => {
                        let Some(kind) = self
                            .nvml
                            .device_by_index(to.device.index)
                            .and_then(|peer| from_handle.topology_common_ancestor(peer))
                            .ok()
                            .map(pcie_interconnect)
                        else {
                            continue;
                        };
                        (kind, 0, 0)
                    }
                };
                links[a].push(PeerLink {
                    peer: to.device.index,
                    kind,
                    lanes: lanes_a,
                });
                links[b].push(PeerLink {
                    peer: from.device.index,
                    kind,
                    lanes: lanes_b,
                });
            }
        }
        for (probed, mut links) in probed.iter_mut().zip(links) {
            links.sort_by_key(|link| link.peer);
            probed.device.details.links = links;
        }
    }
}

impl XidWatch<'_> {
    /// Indices of the devices whose XIDs are watched.
    pub fn watched(&self) -> Vec<u32> {
        self.watched.iter().map(|(_, index)| *index).collect()
    }

    /// The next XID event, waiting up to `timeout`; `Ok(None)` when none came in time (NVML
    /// may also return early without one).
    pub fn wait(&self, timeout: Duration) -> Result<Option<XidEvent>, NvmlProbeError> {
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let event = match self.set.wait(timeout_ms) {
            Ok(event) => event,
            Err(NvmlError::Timeout) => return Ok(None),
            Err(e) => return Err(NvmlProbeError::Events(e)),
        };
        let xid = match event.event_data {
            Some(XidError::Value(xid)) => xid,
            Some(XidError::Unknown) => UNKNOWN_XID,
            // Only XID events are registered; anything else is not ours to report.
            None => return Ok(None),
        };
        let identity = raw::identity(&event.device);
        let index = match self.watched.iter().find(|(watched, _)| *watched == identity) {
            Some((_, index)) => *index,
            None => event.device.index().map_err(NvmlProbeError::Events)?,
        };
        Ok(Some(XidEvent {
            index,
            uuid: event.device.uuid().ok(),
            xid,
        }))
    }
}

/// Telemetry of a fresh reading: NVIDIA GPUs have XIDs, none seen yet. The health tracker
/// replaces the count with the XIDs it has seen since the agent started.
fn xid_counted() -> pyxis_protocol::DeviceTelemetry {
    pyxis_protocol::DeviceTelemetry {
        xid_count: Some(0),
        ..Default::default()
    }
}

/// Why registering devices for XID events stopped.
enum Registration {
    /// No event set could be created.
    Create(NvmlError),
    /// Registering the device at this position in the candidates failed (the set is gone).
    Device(usize, NvmlError),
}

fn register_xids<'nvml>(
    nvml: &'nvml Nvml,
    devices: &[(u32, NvmlDevice<'nvml>)],
) -> Result<EventSet<'nvml>, Registration> {
    let mut set = nvml.create_event_set().map_err(Registration::Create)?;
    for (position, (_, device)) in devices.iter().enumerate() {
        set = device
            .register_events(EventTypes::CRITICAL_XID_ERROR, set)
            .map_err(|e| Registration::Device(position, e.error))?;
    }
    Ok(set)
}

/// Normalised bus ids at the far end of each active NVLink; empty without NVLink.
fn active_nvlink_remotes(handle: &NvmlDevice<'_>) -> Vec<String> {
    let mut remotes = Vec::new();
    for link in 0..NVLINK_MAX_LINKS {
        let link = handle.link_wrapper_for(link);
        match link.is_active() {
            Ok(true) => {
                if let Some(bus) = link
                    .remote_pci_info()
                    .ok()
                    .and_then(|pci| normalise_bus_id(&pci.bus_id))
                {
                    remotes.push(bus);
                }
            }
            Ok(false) => {}
            // No NVLink on this device (or in this driver), or the device is gone.
            Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_) | NvmlError::GpuLost) => break,
            // Link numbers past this device's link count are invalid arguments.
            Err(_) => {}
        }
    }
    remotes
}

/// NVLink lanes from `from` towards `to`: links that reach `to` directly (or, when only `to`
/// sees them, the links `to` has towards `from`), else `from`'s links into NVSwitches when
/// both devices have some. `None` when NVLink does not join them.
fn nvlink_lanes(from: &Probed<'_>, to: &Probed<'_>, gpu_buses: &HashSet<String>) -> Option<u32> {
    let direct = |a: &Probed<'_>, b: &Probed<'_>| {
        let Some(bus) = b.device.details.pci_bus_id.as_deref() else {
            return 0;
        };
        a.nvlink_remotes.iter().filter(|remote| *remote == bus).count()
    };
    let to_switches = |p: &Probed<'_>| p.nvlink_remotes.iter().filter(|r| !gpu_buses.contains(*r)).count();
    let lanes = match (direct(from, to), direct(to, from)) {
        (0, 0) => match (to_switches(from), to_switches(to)) {
            (0, _) | (_, 0) => return None,
            (mine, _) => mine,
        },
        (0, theirs) => theirs,
        (mine, _) => mine,
    };
    u32::try_from(lanes).ok()
}

/// The PCIe path for NVML's common ancestor of two devices.
fn pcie_interconnect(level: TopologyLevel) -> Interconnect {
    match level {
        TopologyLevel::Internal | TopologyLevel::Single | TopologyLevel::Multiple => Interconnect::PcieSwitch,
        TopologyLevel::HostBridge => Interconnect::PcieHostBridge,
        TopologyLevel::Node => Interconnect::NumaNode,
        TopologyLevel::System => Interconnect::System,
    }
}

/// `00000000:17:00.0` (NVML, 8-digit domain) to `0000:17:00.0` (lower case, as sysfs names
/// devices; a domain above 0xffff keeps its extra digits, as there).
fn normalise_bus_id(bus_id: &str) -> Option<String> {
    let mut parts = bus_id.trim().trim_end_matches('\0').split(':');
    let (domain, bus, rest) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (device, function) = rest.split_once('.')?;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        hex(domain)?,
        hex(bus)?,
        hex(device)?,
        hex(function)?
    ))
}

/// The profile in a MIG device's name: `NVIDIA H100 80GB HBM3 MIG 1g.10gb` gives `1g.10gb`.
fn mig_profile(name: &str) -> Option<&str> {
    let mut words = name.split_whitespace();
    words.find(|w| *w == "MIG")?;
    words.next()
}

/// NVML entry points nvml-wrapper 0.13 does not bind, resolved from the very library
/// nvml-wrapper loaded (`RTLD_NOLOAD` never loads another copy).
#[allow(unsafe_code)]
mod raw {
    use std::ffi::{c_int, c_uint, c_void, OsStr};

    use libloading::os::unix::{Library, Symbol, RTLD_NOW};
    use nvml_wrapper::{error::NvmlError, Device};

    /// `RTLD_NOLOAD` (Linux, glibc and musl): only return a library that is already loaded.
    const RTLD_NOLOAD: c_int = 0x4;

    /// `nvmlReturn_t f(nvmlDevice_t, unsigned int *)`.
    type GetId = unsafe extern "C" fn(*mut c_void, *mut c_uint) -> c_uint;
    /// `nvmlDeviceGetRemappedRows(device, *corrRows, *uncRows, *isPending, *failureOccurred)`.
    type GetRemappedRows =
        unsafe extern "C" fn(*mut c_void, *mut c_uint, *mut c_uint, *mut c_uint, *mut c_uint) -> c_uint;

    /// Row remapping state (Ampere and later).
    #[derive(Debug, Clone, Copy)]
    pub(super) struct RemappedRows {
        pub(super) corrected: c_uint,
        pub(super) uncorrected: c_uint,
        pub(super) pending: bool,
        pub(super) failed: bool,
    }

    /// The extra entry points; each is `None` when the library lacks it.
    #[derive(Debug, Default)]
    pub(super) struct Extras {
        remapped_rows: Option<Symbol<GetRemappedRows>>,
        gpu_instance_id: Option<Symbol<GetId>>,
        compute_instance_id: Option<Symbol<GetId>>,
        /// Our reference on the library, which keeps the symbols above valid.
        _library: Option<Library>,
    }

    impl Extras {
        /// Resolves the extras from `library`, which nvml-wrapper has already loaded.
        pub(super) fn resolve(library: &OsStr) -> Self {
            // SAFETY: with RTLD_NOLOAD this only returns the library nvml-wrapper already
            // loaded, so no initialisation code runs; the reference is held in `_library`.
            let Ok(loaded) = (unsafe { Library::open(Some(library), RTLD_NOW | RTLD_NOLOAD) }) else {
                return Self::default();
            };
            // SAFETY: NVML exports these three symbols with exactly these prototypes (nvml.h;
            // nvml-wrapper-sys's bindings agree), and the symbols are stored next to the
            // library reference that keeps them valid.
            let remapped_rows = unsafe { loaded.get::<GetRemappedRows>(b"nvmlDeviceGetRemappedRows\0") }.ok();
            // SAFETY: as above.
            let gpu_instance_id = unsafe { loaded.get::<GetId>(b"nvmlDeviceGetGpuInstanceId\0") }.ok();
            // SAFETY: as above.
            let compute_instance_id = unsafe { loaded.get::<GetId>(b"nvmlDeviceGetComputeInstanceId\0") }.ok();
            Self {
                remapped_rows,
                gpu_instance_id,
                compute_instance_id,
                _library: Some(loaded),
            }
        }

        pub(super) fn remapped_rows(&self, device: &Device<'_>) -> Result<RemappedRows, NvmlError> {
            let f: GetRemappedRows = **self.remapped_rows.as_ref().ok_or(NvmlError::FunctionNotFound)?;
            let (mut corrected, mut uncorrected, mut pending, mut failed) = (0, 0, 0, 0);
            // SAFETY: `f` comes from the library `device` was obtained from, which our
            // reference keeps loaded; the handle is live while `device` borrows that library;
            // every out-pointer is valid for a write of `c_uint`.
            let code = unsafe {
                f(
                    device.handle().cast(),
                    &mut corrected,
                    &mut uncorrected,
                    &mut pending,
                    &mut failed,
                )
            };
            check(code)?;
            Ok(RemappedRows {
                corrected,
                uncorrected,
                pending: pending != 0,
                failed: failed != 0,
            })
        }

        pub(super) fn gpu_instance_id(&self, device: &Device<'_>) -> Result<u32, NvmlError> {
            get_id(self.gpu_instance_id.as_ref(), device)
        }

        pub(super) fn compute_instance_id(&self, device: &Device<'_>) -> Result<u32, NvmlError> {
            get_id(self.compute_instance_id.as_ref(), device)
        }
    }

    fn get_id(symbol: Option<&Symbol<GetId>>, device: &Device<'_>) -> Result<u32, NvmlError> {
        let f: GetId = **symbol.ok_or(NvmlError::FunctionNotFound)?;
        let mut id: c_uint = 0;
        // SAFETY: as in `remapped_rows`: a live handle from the same library, one valid
        // out-pointer.
        check(unsafe { f(device.handle().cast(), &mut id) })?;
        Ok(id)
    }

    fn check(code: c_uint) -> Result<(), NvmlError> {
        match code {
            0 => Ok(()),
            code => Err(NvmlError::from(code)),
        }
    }

    /// The identity of a device handle, to compare handles (never dereferenced).
    pub(super) fn identity(device: &Device<'_>) -> usize {
        // SAFETY: `handle` only returns the stored pointer; it is used as a number here.
        (unsafe { device.handle() }) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_are_normalised_as_sysfs_names_them() {
        assert_eq!(normalise_bus_id("00000000:17:00.0").as_deref(), Some("0000:17:00.0"));
        assert_eq!(normalise_bus_id("00000000:2A:00.1").as_deref(), Some("0000:2a:00.1"));
        assert_eq!(normalise_bus_id("0001:C1:1F.7").as_deref(), Some("0001:c1:1f.7"));
        assert_eq!(normalise_bus_id("00010000:01:00.0").as_deref(), Some("10000:01:00.0"));
        assert_eq!(normalise_bus_id("garbage"), None);
        assert_eq!(normalise_bus_id("0000:17:00"), None);
        assert_eq!(normalise_bus_id("0000:zz:00.0"), None);
    }

    #[test]
    fn mig_profiles_come_from_the_device_name() {
        assert_eq!(mig_profile("NVIDIA H100 80GB HBM3 MIG 1g.10gb"), Some("1g.10gb"));
        assert_eq!(mig_profile("NVIDIA A100-SXM4-40GB MIG 1c.3g.20gb"), Some("1c.3g.20gb"));
        assert_eq!(mig_profile("NVIDIA H100 80GB HBM3"), None);
        assert_eq!(mig_profile("NVIDIA H100 MIG"), None);
    }

    #[test]
    fn pcie_levels_map_to_interconnects() {
        for (level, kind) in [
            (TopologyLevel::Internal, Interconnect::PcieSwitch),
            (TopologyLevel::Single, Interconnect::PcieSwitch),
            (TopologyLevel::Multiple, Interconnect::PcieSwitch),
            (TopologyLevel::HostBridge, Interconnect::PcieHostBridge),
            (TopologyLevel::Node, Interconnect::NumaNode),
            (TopologyLevel::System, Interconnect::System),
        ] {
            assert_eq!(pcie_interconnect(level), kind, "{level:?}");
        }
    }
}
