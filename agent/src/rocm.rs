//! AMD GPUs through ROCm SMI (`librocm_smi64`), loaded at run time with libloading.
//!
//! # ROCm SMI first, amdgpu sysfs as the fallback
//! The agent asks [`RocmProbe::open`] first. ROCm SMI knows what sysfs does not tell
//! simply: ECC/RAS counts per GPU block, the link type and hop count between every pair of
//! GPUs (xGMI or PCIe), the frequency tables. When it fails with
//! [`RocmProbeError::Unavailable`] (no library, a required symbol missing, `rsmi_init`
//! failing, or no GPU behind it), that is not an error: the agent reads the same GPUs from
//! the amdgpu sysfs files instead ([`crate::amd::sysfs_devices`]), with fewer facts. The two
//! are never mixed for one host, so every AMD GPU is reported once, by one backend.
//!
//! # Loading
//! The library is loaded at run time, never linked: the agent builds and starts on hosts
//! without ROCm (see `DECISIONS.md`). By default the dynamic loader looks for
//! `librocm_smi64.so.1` (Debian's name), then the sonames AMD's ROCm installs
//! (`librocm_smi64.so.7`, `.so.6`, `.so.5`), then `/opt/rocm/lib/librocm_smi64.so`.
//! Symbols are resolved once in [`RocmProbe::open`]. Required: `rsmi_init`,
//! `rsmi_shut_down`, `rsmi_num_monitor_devices`, `rsmi_dev_name_get`,
//! `rsmi_dev_memory_total_get`; a missing one makes ROCm SMI unavailable, naming it. Every
//! other symbol is optional: a library without it only lacks that fact.
//!
//! # ABI notes (checked against `rocm_smi.h` of ROCm SMI 5.2.3, Debian's
//! `librocm-smi-dev`, and of the ROCm 6 library)
//! - Status, memory/clock/temperature/component enums and `RSMI_IO_LINK_TYPE` are 32-bit;
//!   `rsmi_gpu_block_t` is 64-bit (its `RSMI_GPU_BLOCK_RESERVED` is `1 << 63`).
//! - `rsmi_frequencies_t` changed with the library's major version 6 (ROCm 6.0):
//!   5.x is `{ uint32_t num_supported; uint32_t current; uint64_t frequency[32]; }`
//!   (264 bytes), 6.x and later put `bool has_deep_sleep` first and hold 33 entries
//!   (280 bytes). The layout is chosen by `rsmi_version_get`'s major version, and the
//!   buffer handed to the library is always 280 bytes, so a wrong guess cannot overrun it.
//!   Debian's 5.2.3 library reports version 1.0.0 and uses the 5.x layout.
//! - Frequencies are in Hz, temperatures in millidegrees Celsius, power in microwatts.
//!
//! # Devices that fail
//! A device whose name or memory cannot be read is reported [`Health::Unhealthy`] with the
//! failing call and status in the reason, never dropped; the others are unaffected.
//! Uncorrectable RAS counts go to `telemetry.ecc.volatile_uncorrected`, where the health
//! tracker degrades a device on any increase. RAS counts are since boot. This backend
//! reads no lifetime (aggregate) counts, page retirement, row remapping, throttle reasons
//! or XIDs: those stay `None`, never a made-up zero.
#![allow(unsafe_code)] // FFI into ROCm SMI; every unsafe block says why it is sound.

use std::{
    ffi::{c_char, CStr},
    path::{Path, PathBuf},
};

use libloading::Library;
use pyxis_protocol::{EccCounts, Health, Interconnect, PeerLink, Vendor};

use crate::{
    amd,
    devices::Device,
    hwclass::{self, ClassOverrides},
};

/// Libraries tried in order when no path is configured.
pub const DEFAULT_LIBRARIES: &[&str] = &[
    "librocm_smi64.so.1",
    "librocm_smi64.so.7",
    "librocm_smi64.so.6",
    "librocm_smi64.so.5",
    "/opt/rocm/lib/librocm_smi64.so",
];

const RSMI_STATUS_SUCCESS: u32 = 0;
const RSMI_MEM_TYPE_VRAM: u32 = 0;
const RSMI_TEMP_TYPE_EDGE: u32 = 0;
const RSMI_TEMP_TYPE_JUNCTION: u32 = 1;
const RSMI_TEMP_CURRENT: u32 = 0;
const RSMI_CLK_TYPE_SYS: u32 = 0;
const RSMI_CLK_TYPE_MEM: u32 = 4;
const RSMI_SW_COMP_DRIVER: u32 = 0;
const RSMI_IOLINK_TYPE_PCIEXPRESS: u32 = 1;
const RSMI_IOLINK_TYPE_XGMI: u32 = 2;
/// `RSMI_GPU_BLOCK_UMC` (bit 0) to `RSMI_GPU_BLOCK_FUSE` (bit 13); later libraries add
/// blocks above, so every bit `rsmi_dev_ecc_enabled_get` sets below the reserved one is asked.
const RSMI_GPU_BLOCK_RESERVED: u64 = 1 << 63;

/// Bytes handed to `rsmi_dev_gpu_clk_freq_get`: the larger (ROCm 6) layout.
const FREQUENCIES_BUFFER_BYTES: usize = 280;
/// Room for names, serials and version strings.
const STRING_BUFFER_BYTES: usize = 256;

/// A status code returned by a ROCm SMI call that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsmiStatus(pub u32);

impl RsmiStatus {
    /// The `rsmi_status_t` name, when the code is one `rocm_smi.h` defines.
    pub fn name(&self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "RSMI_STATUS_SUCCESS",
            1 => "RSMI_STATUS_INVALID_ARGS",
            2 => "RSMI_STATUS_NOT_SUPPORTED",
            3 => "RSMI_STATUS_FILE_ERROR",
            4 => "RSMI_STATUS_PERMISSION",
            5 => "RSMI_STATUS_OUT_OF_RESOURCES",
            6 => "RSMI_STATUS_INTERNAL_EXCEPTION",
            7 => "RSMI_STATUS_INPUT_OUT_OF_BOUNDS",
            8 => "RSMI_STATUS_INIT_ERROR",
            9 => "RSMI_STATUS_NOT_YET_IMPLEMENTED",
            10 => "RSMI_STATUS_NOT_FOUND",
            11 => "RSMI_STATUS_INSUFFICIENT_SIZE",
            12 => "RSMI_STATUS_INTERRUPT",
            13 => "RSMI_STATUS_UNEXPECTED_SIZE",
            14 => "RSMI_STATUS_NO_DATA",
            15 => "RSMI_STATUS_UNEXPECTED_DATA",
            16 => "RSMI_STATUS_BUSY",
            17 => "RSMI_STATUS_REFCOUNT_OVERFLOW",
            0xFFFF_FFFF => "RSMI_STATUS_UNKNOWN_ERROR",
            _ => return None,
        })
    }
}

impl std::fmt::Display for RsmiStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "ROCm SMI status {}", self.0),
        }
    }
}

/// Why ROCm SMI cannot be used on this host.
#[derive(Debug, thiserror::Error)]
pub enum RocmUnavailable {
    /// No candidate library could be loaded.
    #[error("cannot load {}: {source}", .tried.join(", "))]
    Load {
        /// Libraries tried, in order.
        tried: Vec<String>,
        /// The loader's error for the last one.
        source: libloading::Error,
    },
    /// The library lacks a symbol the probe cannot work without.
    #[error("{library} has no {symbol} ({source})")]
    MissingSymbol {
        /// The library that was loaded.
        library: String,
        /// The required symbol.
        symbol: &'static str,
        /// The loader's error.
        source: libloading::Error,
    },
    /// `rsmi_init` failed (for example no amdgpu driver or no `/sys/class/drm`).
    #[error("rsmi_init failed: {0}")]
    Init(RsmiStatus),
    /// `rsmi_num_monitor_devices` failed.
    #[error("rsmi_num_monitor_devices failed: {0}")]
    Count(RsmiStatus),
    /// ROCm SMI works but monitors no GPU (for example the driver exposes no KFD node).
    #[error("it monitors no GPU")]
    NoDevices,
}

/// Why [`RocmProbe::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RocmProbeError {
    /// ROCm SMI cannot be used here; never fatal, the sysfs fallback takes over.
    #[error(
        "ROCm SMI is not available ({0}); no AMD GPU is probed through ROCm SMI, the amdgpu sysfs fallback is used"
    )]
    Unavailable(RocmUnavailable),
}

type StatusFn0 = unsafe extern "C" fn() -> u32;
type InitFn = unsafe extern "C" fn(u64) -> u32;
type CountFn = unsafe extern "C" fn(*mut u32) -> u32;
type NameSizeFn = unsafe extern "C" fn(u32, *mut c_char, usize) -> u32;
type NameU32Fn = unsafe extern "C" fn(u32, *mut c_char, u32) -> u32;
type DevU64Fn = unsafe extern "C" fn(u32, *mut u64) -> u32;
type DevU32Fn = unsafe extern "C" fn(u32, *mut u32) -> u32;
type DevKindU64Fn = unsafe extern "C" fn(u32, u32, *mut u64) -> u32;
type TempFn = unsafe extern "C" fn(u32, u32, u32, *mut i64) -> u32;
type ClockFn = unsafe extern "C" fn(u32, u32, *mut u8) -> u32;
type EccCountFn = unsafe extern "C" fn(u32, u64, *mut RsmiErrorCount) -> u32;
type LinkTypeFn = unsafe extern "C" fn(u32, u32, *mut u64, *mut u32) -> u32;
type VersionFn = unsafe extern "C" fn(*mut RsmiVersion) -> u32;
type VersionStrFn = unsafe extern "C" fn(u32, *mut c_char, u32) -> u32;

/// `rsmi_version_t`.
#[repr(C)]
struct RsmiVersion {
    major: u32,
    minor: u32,
    patch: u32,
    build: *const c_char,
}

/// `rsmi_error_count_t`.
#[repr(C)]
#[derive(Default)]
struct RsmiErrorCount {
    correctable_err: u64,
    uncorrectable_err: u64,
}

/// The resolved entry points. Plain function pointers copied out of the library: valid for
/// as long as `RocmProbe::_library` stays loaded, which outlives every use.
struct Api {
    shut_down: StatusFn0,
    dev_name_get: NameSizeFn,
    dev_memory_total_get: DevKindU64Fn,
    dev_market_name_get: Option<NameU32Fn>,
    dev_unique_id_get: Option<DevU64Fn>,
    dev_serial_number_get: Option<NameU32Fn>,
    dev_memory_usage_get: Option<DevKindU64Fn>,
    dev_busy_percent_get: Option<DevU32Fn>,
    dev_temp_metric_get: Option<TempFn>,
    dev_power_ave_get: Option<DevKindU64Fn>,
    dev_current_socket_power_get: Option<DevU64Fn>,
    dev_power_cap_get: Option<DevKindU64Fn>,
    dev_pci_id_get: Option<DevU64Fn>,
    topo_get_numa_node_number: Option<DevU32Fn>,
    dev_gpu_clk_freq_get: Option<ClockFn>,
    dev_ecc_enabled_get: Option<DevU64Fn>,
    dev_ecc_count_get: Option<EccCountFn>,
    topo_get_link_type: Option<LinkTypeFn>,
}

/// Which `rsmi_frequencies_t` the loaded library writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrequenciesLayout {
    /// Library major version below 6: no `has_deep_sleep`, 32 entries.
    V5,
    /// Library major version 6 and later: `has_deep_sleep` first, 33 entries.
    V6,
}

/// An initialised ROCm SMI library. `rsmi_shut_down` is called on drop.
pub struct RocmProbe {
    api: Api,
    device_count: u32,
    layout: FrequenciesLayout,
    sysfs_root: PathBuf,
    /// The library file or soname that was loaded.
    pub library: String,
    /// amdgpu driver version (`rsmi_version_str_get(RSMI_SW_COMP_DRIVER)`).
    pub driver_version: Option<String>,
    /// ROCm SMI library version (`rsmi_version_get`, `major.minor.patch`); reported as the
    /// device's `compute_api_version`. It is the library's own version, not the ROCm
    /// release (ROCm 6.2 ships ROCm SMI 7.3, Debian's 5.2.3 package reports 1.0.0).
    pub library_version: Option<String>,
    // Last field: dropped after `Drop::drop` has called `rsmi_shut_down`.
    _library: Library,
}

impl std::fmt::Debug for RocmProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocmProbe")
            .field("library", &self.library)
            .field("library_version", &self.library_version)
            .field("driver_version", &self.driver_version)
            .field("device_count", &self.device_count)
            .field("layout", &self.layout)
            .field("sysfs_root", &self.sysfs_root)
            .finish_non_exhaustive()
    }
}

impl Drop for RocmProbe {
    fn drop(&mut self) {
        // SAFETY: `shut_down` was resolved from `_library`, still loaded here (fields drop
        // after this), and `rsmi_init` succeeded in `open`, which pairs with this call.
        let status = unsafe { (self.api.shut_down)() };
        if status != RSMI_STATUS_SUCCESS {
            tracing::debug!(status = %RsmiStatus(status), "rsmi_shut_down failed");
        }
    }
}

fn unavailable(cause: RocmUnavailable) -> RocmProbeError {
    RocmProbeError::Unavailable(cause)
}

/// Loads the first library that loads.
fn load(library: Option<&Path>) -> Result<(Library, String), RocmProbeError> {
    let candidates: Vec<String> = match library {
        Some(path) => vec![path.display().to_string()],
        None => DEFAULT_LIBRARIES.iter().map(|s| s.to_string()).collect(),
    };
    let mut last = None;
    for name in &candidates {
        // SAFETY: loading runs the library's initialisers. ROCm SMI's only set up its
        // internal state; a file at a configured path is trusted like the agent binary.
        match unsafe { Library::new(name) } {
            Ok(lib) => return Ok((lib, name.clone())),
            Err(e) => last = Some(e),
        }
    }
    Err(unavailable(RocmUnavailable::Load {
        tried: candidates,
        // There is always at least one candidate, so `last` is set.
        source: last.unwrap_or(libloading::Error::DlOpenUnknown),
    }))
}

/// Resolves a symbol whose Rust type matches the C prototype in `rocm_smi.h`.
macro_rules! symbol {
    ($lib:expr, $name:literal, $ty:ty) => {{
        // SAFETY: `$ty` is the `extern "C"` signature `rocm_smi.h` declares for `$name`;
        // the copied pointer is only called while the library stays loaded.
        let found = unsafe { $lib.get::<$ty>(concat!($name, "\0").as_bytes()) };
        found.map(|s| *s)
    }};
}

impl RocmProbe {
    /// Loads ROCm SMI (from `library` when given, else [`DEFAULT_LIBRARIES`]), resolves its
    /// symbols and calls `rsmi_init(0)`. Any failure is [`RocmProbeError::Unavailable`].
    pub fn open(library: Option<&Path>) -> Result<Self, RocmProbeError> {
        let (lib, name) = load(library)?;
        let required = |symbol: &'static str| {
            let library = name.clone();
            move |source| {
                unavailable(RocmUnavailable::MissingSymbol {
                    library,
                    symbol,
                    source,
                })
            }
        };
        let init = symbol!(lib, "rsmi_init", InitFn).map_err(required("rsmi_init"))?;
        let shut_down = symbol!(lib, "rsmi_shut_down", StatusFn0).map_err(required("rsmi_shut_down"))?;
        let num_monitor_devices =
            symbol!(lib, "rsmi_num_monitor_devices", CountFn).map_err(required("rsmi_num_monitor_devices"))?;
        let dev_name_get = symbol!(lib, "rsmi_dev_name_get", NameSizeFn).map_err(required("rsmi_dev_name_get"))?;
        let dev_memory_total_get =
            symbol!(lib, "rsmi_dev_memory_total_get", DevKindU64Fn).map_err(required("rsmi_dev_memory_total_get"))?;
        let api = Api {
            shut_down,
            dev_name_get,
            dev_memory_total_get,
            dev_market_name_get: symbol!(lib, "rsmi_dev_market_name_get", NameU32Fn).ok(),
            dev_unique_id_get: symbol!(lib, "rsmi_dev_unique_id_get", DevU64Fn).ok(),
            dev_serial_number_get: symbol!(lib, "rsmi_dev_serial_number_get", NameU32Fn).ok(),
            dev_memory_usage_get: symbol!(lib, "rsmi_dev_memory_usage_get", DevKindU64Fn).ok(),
            dev_busy_percent_get: symbol!(lib, "rsmi_dev_busy_percent_get", DevU32Fn).ok(),
            dev_temp_metric_get: symbol!(lib, "rsmi_dev_temp_metric_get", TempFn).ok(),
            dev_power_ave_get: symbol!(lib, "rsmi_dev_power_ave_get", DevKindU64Fn).ok(),
            dev_current_socket_power_get: symbol!(lib, "rsmi_dev_current_socket_power_get", DevU64Fn).ok(),
            dev_power_cap_get: symbol!(lib, "rsmi_dev_power_cap_get", DevKindU64Fn).ok(),
            dev_pci_id_get: symbol!(lib, "rsmi_dev_pci_id_get", DevU64Fn).ok(),
            topo_get_numa_node_number: symbol!(lib, "rsmi_topo_get_numa_node_number", DevU32Fn).ok(),
            dev_gpu_clk_freq_get: symbol!(lib, "rsmi_dev_gpu_clk_freq_get", ClockFn).ok(),
            dev_ecc_enabled_get: symbol!(lib, "rsmi_dev_ecc_enabled_get", DevU64Fn).ok(),
            dev_ecc_count_get: symbol!(lib, "rsmi_dev_ecc_count_get", EccCountFn).ok(),
            topo_get_link_type: symbol!(lib, "rsmi_topo_get_link_type", LinkTypeFn).ok(),
        };
        let version_get = symbol!(lib, "rsmi_version_get", VersionFn).ok();
        let version_str_get = symbol!(lib, "rsmi_version_str_get", VersionStrFn).ok();

        // SAFETY: `init` has the `rsmi_init(uint64_t)` prototype; 0 asks for the default
        // (AMD GPUs only).
        let status = unsafe { init(0) };
        if status != RSMI_STATUS_SUCCESS {
            return Err(unavailable(RocmUnavailable::Init(RsmiStatus(status))));
        }
        // From here on, dropping `probe` calls `rsmi_shut_down`.
        let mut probe = Self {
            api,
            device_count: 0,
            layout: FrequenciesLayout::V5,
            sysfs_root: PathBuf::from("/sys"),
            library: name,
            driver_version: None,
            library_version: None,
            _library: lib,
        };
        let mut count = 0u32;
        // SAFETY: `rsmi_num_monitor_devices(uint32_t *)` with a valid pointer to a u32.
        let status = unsafe { num_monitor_devices(&mut count) };
        if status != RSMI_STATUS_SUCCESS {
            return Err(unavailable(RocmUnavailable::Count(RsmiStatus(status))));
        }
        if count == 0 {
            return Err(unavailable(RocmUnavailable::NoDevices));
        }
        probe.device_count = count;
        if let Some(version_get) = version_get {
            let mut version = RsmiVersion {
                major: 0,
                minor: 0,
                patch: 0,
                build: std::ptr::null(),
            };
            // SAFETY: `rsmi_version_get(rsmi_version_t *)` with a valid, writable struct of
            // the header's layout; the `build` pointer it sets is never read.
            if unsafe { version_get(&mut version) } == RSMI_STATUS_SUCCESS {
                probe.library_version = Some(format!("{}.{}.{}", version.major, version.minor, version.patch));
                if version.major >= 6 {
                    probe.layout = FrequenciesLayout::V6;
                }
            }
        }
        if let Some(version_str_get) = version_str_get {
            probe.driver_version = read_string(|buf, len| {
                // SAFETY: `rsmi_version_str_get(component, char *, uint32_t len)` with a
                // buffer of `len` writable bytes.
                unsafe { version_str_get(RSMI_SW_COMP_DRIVER, buf, len as u32) }
            })
            .ok();
        }
        Ok(probe)
    }

    /// Reads the KFD topology (gfx targets) and PCI files under `root` instead of `/sys`.
    pub fn with_sysfs_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.sysfs_root = root.into();
        self
    }

    /// GPUs ROCm SMI monitors (counted once, at `rsmi_init`).
    pub fn device_count(&self) -> u32 {
        self.device_count
    }

    /// Every AMD GPU with its current readings, indexed from `first_index` in ROCm SMI's
    /// order. A GPU whose name or memory cannot be read is reported unhealthy, not dropped.
    pub fn devices(&self, first_index: u32, overrides: &ClassOverrides) -> Vec<Device> {
        let numa: Vec<Option<u32>> = (0..self.device_count).map(|d| self.numa_node(d)).collect();
        (0..self.device_count)
            .map(|d| {
                let numa_node = numa.get(d as usize).copied().flatten();
                let mut device = self.device(d, first_index, numa_node, overrides);
                if device.health != Health::Unhealthy {
                    device.details.links = self.links(d, first_index, &numa);
                }
                device
            })
            .collect()
    }

    fn device(&self, d: u32, first_index: u32, numa_node: Option<u32>, overrides: &ClassOverrides) -> Device {
        let index = first_index + d;
        let pci_bus_id = self.pci_bus_id(d);
        let uuid = self.uuid(d, index, pci_bus_id.as_deref());
        let failed = |uuid: String, call: &str, status: RsmiStatus| Device {
            index,
            vendor: Vendor::Amd,
            model: "unknown AMD GPU".into(),
            uuid,
            memory_bytes: 0,
            memory_used_bytes: None,
            utilization_percent: None,
            hardware_class: "unknown".into(),
            health: Health::Unhealthy,
            health_reason: format!("ROCm SMI cannot read this GPU ({call} failed: {status})"),
            simulated: false,
            temperature_celsius: None,
            power_watts: None,
            power_limit_watts: None,
            details: pyxis_protocol::DeviceDetails {
                pci_bus_id: pci_bus_id.clone(),
                ..Default::default()
            },
            telemetry: Default::default(),
        };
        let model = match self.model(d, pci_bus_id.as_deref()) {
            Ok(model) => model,
            Err(status) => return failed(uuid, "rsmi_dev_name_get", status),
        };
        let mut total = 0u64;
        // SAFETY: `rsmi_dev_memory_total_get(dv_ind, rsmi_memory_type_t, uint64_t *)` with a
        // valid pointer to a u64.
        let status = unsafe { (self.api.dev_memory_total_get)(d, RSMI_MEM_TYPE_VRAM, &mut total) };
        if status != RSMI_STATUS_SUCCESS {
            return Device {
                model,
                ..failed(uuid, "rsmi_dev_memory_total_get", RsmiStatus(status))
            };
        }
        let (sm_clock, max_sm_clock) = self.clock(d, RSMI_CLK_TYPE_SYS).unzip();
        let (memory_clock, max_memory_clock) = self.clock(d, RSMI_CLK_TYPE_MEM).unzip();
        let enabled_blocks = self.ecc_enabled_blocks(d);
        let architecture = pci_bus_id
            .as_deref()
            .and_then(amd::parse_pci_bus_id)
            .and_then(|(domain, location)| amd::kfd_gfx_target(&self.sysfs_root, domain, location));
        Device {
            index,
            vendor: Vendor::Amd,
            hardware_class: hwclass::derive(Vendor::Amd, &model, total, overrides),
            model,
            uuid,
            memory_bytes: total,
            memory_used_bytes: self.api.dev_memory_usage_get.and_then(|f| {
                // SAFETY: `rsmi_dev_memory_usage_get(dv_ind, rsmi_memory_type_t,
                // uint64_t *)` with a valid pointer to a u64.
                read_value(|out| unsafe { f(d, RSMI_MEM_TYPE_VRAM, out) })
            }),
            utilization_percent: self
                .api
                .dev_busy_percent_get
                .and_then(|f| {
                    // SAFETY: `rsmi_dev_busy_percent_get(dv_ind, uint32_t *)`, valid pointer.
                    read_value(|out| unsafe { f(d, out) })
                })
                .map(|p| p.min(100) as u8),
            health: Health::Healthy,
            health_reason: String::new(),
            simulated: false,
            temperature_celsius: self.temperature(d),
            power_watts: self.power(d).and_then(|uw| u32::try_from(uw / 1_000_000).ok()),
            power_limit_watts: self
                .api
                .dev_power_cap_get
                .and_then(|f| {
                    // SAFETY: `rsmi_dev_power_cap_get(dv_ind, sensor_ind, uint64_t *)`,
                    // sensor 0, valid pointer.
                    read_value(|out| unsafe { f(d, 0, out) })
                })
                .and_then(|uw| u32::try_from(uw / 1_000_000).ok()),
            details: pyxis_protocol::DeviceDetails {
                pci_bus_id,
                numa_node,
                driver_version: self.driver_version.clone(),
                compute_api_version: self.library_version.clone(),
                architecture,
                max_sm_clock_mhz: max_sm_clock,
                max_memory_clock_mhz: max_memory_clock,
                ecc_enabled: enabled_blocks.map(|mask| mask != 0),
                mig: None,
                links: Vec::new(),
            },
            telemetry: pyxis_protocol::DeviceTelemetry {
                sm_clock_mhz: sm_clock,
                memory_clock_mhz: memory_clock,
                ecc: enabled_blocks.and_then(|mask| self.ecc_counts(d, mask)),
                ..Default::default()
            },
        }
    }

    /// `AMD-<unique id as 16 hex digits>` (as the sysfs fallback writes it, so a device
    /// keeps its identity whichever backend reads it), else the serial number, else the PCI
    /// address, else the index.
    fn uuid(&self, d: u32, index: u32, pci_bus_id: Option<&str>) -> String {
        let unique = self.api.dev_unique_id_get.and_then(|f| {
            // SAFETY: `rsmi_dev_unique_id_get(dv_ind, uint64_t *)`, valid pointer.
            read_value(|out| unsafe { f(d, out) })
        });
        if let Some(id) = unique.filter(|id| *id != 0) {
            return format!("AMD-{id:016x}");
        }
        let serial = self.api.dev_serial_number_get.and_then(|f| {
            read_string(|buf, len| {
                // SAFETY: `rsmi_dev_serial_number_get(dv_ind, char *, uint32_t len)` with a
                // buffer of `len` writable bytes.
                unsafe { f(d, buf, len as u32) }
            })
            .ok()
        });
        if let Some(serial) = serial {
            return format!("AMD-{serial}");
        }
        match pci_bus_id {
            Some(pci) => format!("AMD-PCI-{pci}"),
            None => format!("amd-index-{index}"),
        }
    }

    /// The marketing name (`rsmi_dev_market_name_get`, ROCm 6), else the board's
    /// `product_name` in sysfs, else `rsmi_dev_name_get` (the pci.ids name, or the device id
    /// in hex when pci.ids does not know it). Fails only when `rsmi_dev_name_get` fails.
    fn model(&self, d: u32, pci_bus_id: Option<&str>) -> Result<String, RsmiStatus> {
        let market = self.api.dev_market_name_get.and_then(|f| {
            read_string(|buf, len| {
                // SAFETY: `rsmi_dev_market_name_get(dv_ind, char *, uint32_t len)` with a
                // buffer of `len` writable bytes.
                unsafe { f(d, buf, len as u32) }
            })
            .ok()
        });
        if let Some(market) = market {
            return Ok(market);
        }
        let product = pci_bus_id.and_then(|pci| {
            std::fs::read_to_string(self.sysfs_root.join("bus/pci/devices").join(pci).join("product_name"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        });
        if let Some(product) = product {
            return Ok(product);
        }
        read_string(|buf, len| {
            // SAFETY: `rsmi_dev_name_get(dv_ind, char *, size_t len)` with a buffer of `len`
            // writable bytes.
            unsafe { (self.api.dev_name_get)(d, buf, len) }
        })
    }

    fn pci_bus_id(&self, d: u32) -> Option<String> {
        let f = self.api.dev_pci_id_get?;
        // SAFETY: `rsmi_dev_pci_id_get(dv_ind, uint64_t *)`, valid pointer.
        read_value(|out| unsafe { f(d, out) }).map(pci_bus_id_from_bdfid)
    }

    fn numa_node(&self, d: u32) -> Option<u32> {
        let f = self.api.topo_get_numa_node_number?;
        // SAFETY: `rsmi_topo_get_numa_node_number(dv_ind, uint32_t *)`, valid pointer.
        read_value(|out| unsafe { f(d, out) }).filter(|n| *n != u32::MAX)
    }

    /// Edge temperature, else junction (MI300 class GPUs have no edge sensor).
    fn temperature(&self, d: u32) -> Option<u16> {
        let f = self.api.dev_temp_metric_get?;
        [RSMI_TEMP_TYPE_EDGE, RSMI_TEMP_TYPE_JUNCTION]
            .iter()
            .find_map(|&sensor| {
                // SAFETY: `rsmi_dev_temp_metric_get(dv_ind, sensor_type, metric, int64_t *)`,
                // valid pointer.
                read_value(|out| unsafe { f(d, sensor, RSMI_TEMP_CURRENT, out) })
                    .and_then(|millidegrees| u16::try_from(millidegrees / 1000).ok())
            })
    }

    /// Average power, else current socket power (what MI300 class GPUs report), microwatts.
    fn power(&self, d: u32) -> Option<u64> {
        let average = self.api.dev_power_ave_get.and_then(|f| {
            // SAFETY: `rsmi_dev_power_ave_get(dv_ind, sensor_ind, uint64_t *)`, sensor 0,
            // valid pointer.
            read_value(|out| unsafe { f(d, 0, out) })
        });
        average.or_else(|| {
            let f = self.api.dev_current_socket_power_get?;
            // SAFETY: `rsmi_dev_current_socket_power_get(dv_ind, uint64_t *)`, valid pointer.
            read_value(|out| unsafe { f(d, out) })
        })
    }

    /// Current and maximum clock in MHz from the frequency table.
    fn clock(&self, d: u32, clock_type: u32) -> Option<(u32, u32)> {
        let f = self.api.dev_gpu_clk_freq_get?;
        let mut buffer = [0u8; FREQUENCIES_BUFFER_BYTES];
        // SAFETY: `rsmi_dev_gpu_clk_freq_get(dv_ind, rsmi_clk_type_t, rsmi_frequencies_t *)`
        // with a writable buffer as large as the largest layout (280 bytes). The library
        // writes plain integers (and a bool), so any byte pattern is decoded safely below.
        let status = unsafe { f(d, clock_type, buffer.as_mut_ptr()) };
        if status != RSMI_STATUS_SUCCESS {
            return None;
        }
        decode_frequencies(&buffer, self.layout)
    }

    fn ecc_enabled_blocks(&self, d: u32) -> Option<u64> {
        let f = self.api.dev_ecc_enabled_get?;
        // SAFETY: `rsmi_dev_ecc_enabled_get(dv_ind, uint64_t *)`, valid pointer.
        read_value(|out| unsafe { f(d, out) })
    }

    /// Corrected and uncorrected RAS errors (since boot) summed over the blocks with ECC
    /// enabled, as the volatile counts; the other counts stay unknown. None when no block's
    /// count could be read.
    fn ecc_counts(&self, d: u32, enabled: u64) -> Option<EccCounts> {
        let f = self.api.dev_ecc_count_get?;
        let mut counts = EccCounts::default();
        let mut any = false;
        for bit in 0..63 {
            let block = 1u64 << bit;
            if enabled & block == 0 || block == RSMI_GPU_BLOCK_RESERVED {
                continue;
            }
            let mut count = RsmiErrorCount::default();
            // SAFETY: `rsmi_dev_ecc_count_get(dv_ind, rsmi_gpu_block_t, rsmi_error_count_t *)`
            // with a 64-bit block value and a valid struct of the header's layout.
            if unsafe { f(d, block, &mut count) } == RSMI_STATUS_SUCCESS {
                any = true;
                counts.volatile_corrected = counts.volatile_corrected.saturating_add(count.correctable_err);
                counts.volatile_uncorrected = counts.volatile_uncorrected.saturating_add(count.uncorrectable_err);
            }
        }
        any.then_some(counts)
    }

    /// How GPU `d` reaches every other GPU. Pairs whose link ROCm SMI cannot tell are left
    /// out rather than guessed.
    fn links(&self, d: u32, first_index: u32, numa: &[Option<u32>]) -> Vec<PeerLink> {
        let Some(f) = self.api.topo_get_link_type else {
            return Vec::new();
        };
        (0..self.device_count)
            .filter(|&peer| peer != d)
            .filter_map(|peer| {
                let mut hops = 0u64;
                let mut link_type = 0u32;
                // SAFETY: `rsmi_topo_get_link_type(src, dst, uint64_t *hops,
                // RSMI_IO_LINK_TYPE *)` with valid pointers; the enum is 32-bit.
                let status = unsafe { f(d, peer, &mut hops, &mut link_type) };
                if status != RSMI_STATUS_SUCCESS {
                    return None;
                }
                let same_numa = match (numa.get(d as usize), numa.get(peer as usize)) {
                    (Some(Some(a)), Some(Some(b))) => Some(a == b),
                    _ => None,
                };
                let (kind, lanes) = link_kind(link_type, hops, same_numa)?;
                Some(PeerLink {
                    peer: first_index + peer,
                    kind,
                    lanes,
                })
            })
            .collect()
    }
}

/// Maps what `rsmi_topo_get_link_type` says to an [`Interconnect`] and a lane count.
///
/// ROCm SMI derives both from the KFD topology: a direct xGMI link is type XGMI with one
/// hop; any other path goes through CPU nodes, with 2 hops when both GPUs hang off the same
/// CPU (NUMA) node, 3 when the two CPU nodes are linked, 4 beyond. KFD has no notion of PCIe
/// switches, so a 2-hop PCIe path is reported as through the host bridge. Lanes: one xGMI
/// link per directly connected peer; `rsmi_topo_get_link_weight` is not used because it is a
/// routing cost (KFD sets 15 per xGMI hop), not a link count.
fn link_kind(link_type: u32, hops: u64, same_numa: Option<bool>) -> Option<(Interconnect, u32)> {
    if same_numa == Some(false) && !(link_type == RSMI_IOLINK_TYPE_XGMI && hops == 1) {
        return Some((Interconnect::System, 0));
    }
    match (link_type, hops) {
        (RSMI_IOLINK_TYPE_XGMI, 1) => Some((Interconnect::XGmi, 1)),
        (RSMI_IOLINK_TYPE_XGMI | RSMI_IOLINK_TYPE_PCIEXPRESS, 0..=1) => Some((Interconnect::PcieSwitch, 0)),
        (RSMI_IOLINK_TYPE_XGMI | RSMI_IOLINK_TYPE_PCIEXPRESS, 2) => Some((Interconnect::PcieHostBridge, 0)),
        (RSMI_IOLINK_TYPE_XGMI | RSMI_IOLINK_TYPE_PCIEXPRESS, _) => Some((Interconnect::System, 0)),
        _ => None,
    }
}

/// `dddd:bb:dd.f` from a BDFID (`domain << 32 | bus << 8 | device << 3 | function`; newer
/// libraries put a partition id in bits 28-31, which is not part of the address).
pub fn pci_bus_id_from_bdfid(bdfid: u64) -> String {
    let domain = (bdfid >> 32) & 0xffff_ffff;
    let bus = (bdfid >> 8) & 0xff;
    let device = (bdfid >> 3) & 0x1f;
    let function = bdfid & 0x7;
    format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}")
}

/// Current and maximum MHz from a `rsmi_frequencies_t` written in `layout`.
fn decode_frequencies(buffer: &[u8; FREQUENCIES_BUFFER_BYTES], layout: FrequenciesLayout) -> Option<(u32, u32)> {
    let u32_at = |offset: usize| -> Option<u32> {
        let bytes = buffer.get(offset..offset + 4)?;
        Some(u32::from_ne_bytes(bytes.try_into().ok()?))
    };
    let u64_at = |offset: usize| -> Option<u64> {
        let bytes = buffer.get(offset..offset + 8)?;
        Some(u64::from_ne_bytes(bytes.try_into().ok()?))
    };
    // Offsets follow C layout rules: V6 is bool (padded to 4), two u32, the u64 array
    // aligned to 8.
    let (num_offset, current_offset, table_offset, capacity) = match layout {
        FrequenciesLayout::V5 => (0, 4, 8, 32),
        FrequenciesLayout::V6 => (4, 8, 16, 33),
    };
    let supported = usize::try_from(u32_at(num_offset)?).ok()?.min(capacity);
    let current = usize::try_from(u32_at(current_offset)?).ok()?;
    let table: Vec<u64> = (0..supported).filter_map(|i| u64_at(table_offset + 8 * i)).collect();
    // A current index of -1 (none marked) or out of range means no current clock.
    let now = table.get(current)?;
    let max = table.iter().max()?;
    let mhz = |hz: u64| u32::try_from(hz / 1_000_000).ok();
    Some((mhz(*now)?, mhz(*max)?))
}

/// Calls `f` with a writable value; `Some` when it returned success.
fn read_value<T: Default>(f: impl FnOnce(*mut T) -> u32) -> Option<T> {
    let mut value = T::default();
    (f(&mut value as *mut T) == RSMI_STATUS_SUCCESS).then_some(value)
}

/// Calls `f` with a zeroed buffer and its length; the string up to the first NUL (the last
/// byte is forced to NUL, since a library may fill the whole buffer). Empty is `Err`.
fn read_string(f: impl FnOnce(*mut c_char, usize) -> u32) -> Result<String, RsmiStatus> {
    let mut buffer = [0u8; STRING_BUFFER_BYTES];
    let status = f(buffer.as_mut_ptr().cast::<c_char>(), STRING_BUFFER_BYTES - 1);
    if status != RSMI_STATUS_SUCCESS {
        return Err(RsmiStatus(status));
    }
    buffer[STRING_BUFFER_BYTES - 1] = 0;
    let text = CStr::from_bytes_until_nul(&buffer)
        .map(|s| s.to_string_lossy().trim().to_string())
        .unwrap_or_default();
    if text.is_empty() {
        // Success with nothing in it: as unusable as a failure.
        Err(RsmiStatus(14))
    } else {
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdfid_bit_layout() {
        assert_eq!(pci_bus_id_from_bdfid(0xc100), "0000:c1:00.0");
        let bdfid = (1u64 << 32) | (0x0d << 8) | (0x1e << 3) | 3;
        assert_eq!(pci_bus_id_from_bdfid(bdfid), "0001:0d:1e.3");
        // A partition id in bits 28-31 is not part of the address.
        assert_eq!(pci_bus_id_from_bdfid(0x3000_c100), "0000:c1:00.0");
    }

    fn frequencies(layout: FrequenciesLayout, supported: u32, current: u32, mhz: &[u64]) -> [u8; 280] {
        let mut buffer = [0u8; 280];
        let (num, cur, table) = match layout {
            FrequenciesLayout::V5 => (0, 4, 8),
            FrequenciesLayout::V6 => (4, 8, 16),
        };
        if layout == FrequenciesLayout::V6 {
            buffer[0] = 1;
        }
        buffer[num..num + 4].copy_from_slice(&supported.to_ne_bytes());
        buffer[cur..cur + 4].copy_from_slice(&current.to_ne_bytes());
        for (i, m) in mhz.iter().enumerate() {
            buffer[table + 8 * i..table + 8 * i + 8].copy_from_slice(&(m * 1_000_000).to_ne_bytes());
        }
        buffer
    }

    #[test]
    fn frequency_tables_in_both_layouts() {
        for layout in [FrequenciesLayout::V5, FrequenciesLayout::V6] {
            let b = frequencies(layout, 3, 1, &[500, 1300, 2100]);
            assert_eq!(decode_frequencies(&b, layout), Some((1300, 2100)), "{layout:?}");
            // No current level marked (-1), or an empty table: no reading.
            let b = frequencies(layout, 3, u32::MAX, &[500, 1300, 2100]);
            assert_eq!(decode_frequencies(&b, layout), None);
            let b = frequencies(layout, 0, 0, &[]);
            assert_eq!(decode_frequencies(&b, layout), None);
            // A count beyond the table is clamped, never read past the buffer.
            let b = frequencies(layout, 1000, 0, &[800]);
            assert_eq!(decode_frequencies(&b, layout), Some((800, 800)));
        }
    }

    #[test]
    fn link_kinds_follow_kfd_hops() {
        use Interconnect::*;
        let xgmi = RSMI_IOLINK_TYPE_XGMI;
        let pcie = RSMI_IOLINK_TYPE_PCIEXPRESS;
        assert_eq!(link_kind(xgmi, 1, Some(true)), Some((XGmi, 1)));
        // A direct xGMI link stays xGMI even between sockets.
        assert_eq!(link_kind(xgmi, 1, Some(false)), Some((XGmi, 1)));
        assert_eq!(link_kind(pcie, 1, Some(true)), Some((PcieSwitch, 0)));
        assert_eq!(link_kind(pcie, 2, Some(true)), Some((PcieHostBridge, 0)));
        assert_eq!(link_kind(pcie, 2, None), Some((PcieHostBridge, 0)));
        assert_eq!(link_kind(pcie, 3, Some(true)), Some((System, 0)));
        assert_eq!(link_kind(pcie, 2, Some(false)), Some((System, 0)));
        // GPUs reached through an xGMI-attached CPU: not a GPU-to-GPU fabric.
        assert_eq!(link_kind(xgmi, 2, Some(true)), Some((PcieHostBridge, 0)));
        assert_eq!(link_kind(0, 1, Some(true)), None);
    }

    #[test]
    fn status_names() {
        assert_eq!(RsmiStatus(3).to_string(), "RSMI_STATUS_FILE_ERROR (3)");
        assert_eq!(RsmiStatus(99).to_string(), "ROCm SMI status 99");
    }
}
